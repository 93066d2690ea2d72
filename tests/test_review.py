"""The data review: word-level edit distance, kinds of difference, lengths, objects, Table 1, and `mmstudy review`.

Run: pytest tests/test_review.py
"""

import json
import logging

import numpy as np
import pytest

from mmstudy import io
from mmstudy.cli import main
from mmstudy.data.review import (
    classify_difference,
    exact_kinds,
    length_stats,
    markdown_table,
    review,
    review_figures,
    source_info,
    table1,
)
from mmstudy.textdiff import diff_words, edit_distance, word_similarity, words


def pair(i, chosen, rejected, source="t", prompt="Describe the image.", **extra):
    return {"id": f"p{i}", "image": f"img{i}.png", "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "source": source, **extra}


# Hand-made world pairs, as mmstudy.editions.povid writes them (provenance "edits").
WORLD = [
    pair(0, "There is a small cup at the top left.", "There is a large cup at the top left.", "world_povid",
         provenance={"edits": ["size"]}),
    pair(1, "There is one laptop in the image.", "There is one mouse in the image.", "world_povid",
         prompt="How many laptops are there in the image?", provenance={"edits": ["object"]}),
    pair(2, "No, there is no bird in the image.", "Yes, there is a bird in the image.", "world_povid",
         prompt="Is there a bird in the image?", provenance={"edits": ["partner"]}),
    pair(3, "There are two forks in the image.", "There are four forks in the image.", "world_povid",
         provenance={"edits": ["count"]}),
    pair(4, "This is a kitchen scene. There is a fork on the left.",
         "This is a kitchen scene. There is a fork on the left. There is a knife at the top.", "world_povid",
         provenance={"edits": ["add", "size"]}),
]


# ---------------------------------------------------------------- edit distance


def _naive_distance(a, b):
    d = [[i + j if not i * j else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_words_lowercase_without_punctuation():
    assert words("Yes, it isn\u2019t a Cup.") == ["yes", "it", "isn't", "a", "cup"]
    assert words("  ") == []


@pytest.mark.parametrize("a, b, distance", [
    ("the cat sat", "the cat sat", 0),
    ("a b c", "a x c", 1),
    ("the small dog runs", "a small dog runs fast", 2),
    ("k i t t e n", "s i t t i n g", 3),  # the textbook Levenshtein example, one letter per word
    ("", "a b", 2),
    ("a b c d", "", 4),
    ("A cup.", "a CUP", 0),
])
def test_edit_distance_golden(a, b, distance):
    assert edit_distance(a, b) == distance


def test_diff_is_a_minimal_edit_script():
    assert diff_words(["a", "b", "c"], ["a", "c", "d"]) == [("delete", "b", None), ("insert", None, "d")]
    assert diff_words(["x", "y"], ["x", "z"]) == [("substitute", "y", "z")]
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = (list(rng.choice(list("abcd"), size=rng.integers(0, 9))) for _ in range(2))
        ops = diff_words(a, b)
        assert len(ops) == _naive_distance(a, b)
        n = {op: sum(o == op for o, _, _ in ops) for op in ("substitute", "delete", "insert")}
        assert len(a) - n["delete"] - n["substitute"] == len(b) - n["insert"] - n["substitute"]  # the kept words
        assert all((op == "insert") == (x is None) and (op == "delete") == (y is None) for op, x, y in ops)


def test_word_similarity_golden():
    assert word_similarity("a b c d", "a x c d") == 0.75
    assert word_similarity("a b", "c d e f") == 0.0
    assert word_similarity("", "") == 1.0


# ---------------------------------------------------------------- kinds of difference


@pytest.mark.parametrize("chosen, rejected, vocabulary, kinds", [
    ("There is a cup at the top left.", "There is a mouse at the top left.", "world", ["object"]),
    ("There is a small cup.", "There is a large cup.", "world", ["attribute"]),
    ("There is a cup on the left.", "There is a cup on the right.", "world", ["attribute"]),
    ("There are two dogs.", "There are three dogs.", "world", ["count"]),
    ("Yes, there is a bird in the image.", "No, there is no bird in the image.", "world", ["existence"]),
    ("There is a cup.", "There is a cup. There is a knife at the left.", "world", ["object", "attribute"]),
    ("A man rides a bike.", "A man rides a horse.", "coco", ["object"]),
    ("A man rides a bike.", "A woman rides a bike.", "coco", ["other"]),  # both are the class "person"
    ("I see 3 cars.", "I see 4 cars.", "coco", ["count"]),
    ("The cat is on a red sofa.", "The cat isn't on a blue sofa.", "coco", ["existence", "attribute"]),
    ("A cat sleeps on the sofa.", "A cat sleeps on the sofa happily.", "coco", ["other"]),
])
def test_classify_difference(chosen, rejected, vocabulary, kinds):
    assert classify_difference(chosen, rejected, vocabulary) == kinds


def test_exact_kinds_from_world_edits():
    assert exact_kinds(WORLD[4]) == ["object", "attribute"]
    assert exact_kinds({"provenance": {"edits": ["yes/no"]}}) == ["existence"]
    assert exact_kinds({"provenance": {"edits": ["swirl"]}}) == ["other"]
    assert exact_kinds(pair(9, "a", "b")) is None
    with pytest.raises(io.DataError, match=r"prefs.jsonl, record 3: field 'provenance.edits'"):
        exact_kinds({"provenance": {"edits": "size"}}, "prefs.jsonl, record 3")
    # ranked world pairs: the kinds of the false claims only the rejected response makes
    assert exact_kinds({"provenance": {"error_kinds": ["object", "count"]}}) == ["object", "count"]
    assert exact_kinds({"provenance": {"error_kinds": []}}) == ["other"]
    with pytest.raises(io.DataError, match=r"field 'provenance.error_kinds' must be a list"):
        exact_kinds({"provenance": {"error_kinds": ["colour"]}}, "prefs.jsonl, record 4")


# ---------------------------------------------------------------- lengths, objects, Table 1


class CharTokenizer:
    """One token per character: a stand-in for a Hugging Face tokenizer."""

    name_or_path = "chars"

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [list(t) for t in texts]}


def test_length_stats_golden():
    records = [pair(0, "a b c d", "a b", prompt="What is this?"), pair(1, "a b", "a b c d e f", prompt="Why?")]
    stats = length_stats(records)
    assert stats["unit"] == "words"
    assert stats["prompt"] == pytest.approx({"n": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "p5": 1.1, "median": 2.0,
                                             "p95": 2.9, "max": 3.0})
    assert stats["chosen"]["mean"] == 3.0 and stats["rejected"]["mean"] == 4.0
    assert stats["rejected_over_chosen"]["mean"] == pytest.approx((0.5 + 3.0) / 2)
    tokens = length_stats(records, tokenizer=CharTokenizer())
    assert tokens["unit"] == "tokens (chars)"
    assert tokens["chosen"]["max"] == len("a b c d") and tokens["prompt"]["min"] == len("Why?")


def test_review_of_world_pairs_is_exact():
    result = review({"world": WORLD})
    assert result["vocabulary"] == {"world": "world"}
    rows = {(r["method"], r["kind"]): r for r in result["differences"]}
    assert rows["exact", "attribute"]["pairs"] == 1 and rows["exact", "object"]["pairs"] == 2
    assert rows["exact_any", "attribute"]["pairs"] == 2
    assert rows["exact", "existence"]["share"] == pytest.approx(0.2) and rows["exact", "count"]["pairs"] == 1
    assert [r["share"] for r in result["agreement"] if r["rule"] == "same"] == [1.0]
    assert {r["edit"]: r["pairs"] for r in result["edits"]} == {"size": 2, "object": 1, "partner": 1, "count": 1,
                                                                 "add": 1}
    objects = result["objects"][0]
    assert objects["pairs_with_rejected_only_object"] == 2
    assert objects["chosen_mentions_mean"] == pytest.approx(5 / 5) and objects["rejected_mentions_mean"] == 6 / 5
    assert {r["object"] for r in result["candidates"]} == {"mouse", "knife"}
    assert result["similarity"][0]["edit_distance_mean"] == pytest.approx((1 + 1 + 2 + 1 + 7) / 5)
    assert [p["kind"] for p in result["pairs"]] == ["attribute", "object", "existence", "count", "object"]
    assert result["table1"] == [{"dataset": "world", "source": "world_povid", **source_info("world_povid"),
                                 "size": 5}]


def test_review_with_an_embedder_and_errors():
    class Embedder:
        def similarity(self, a, b):
            return np.array([0.5] * len(a))

    result = review({"world": WORLD[:2]}, embedder=Embedder())
    assert result["similarity"][0]["embed_similarity_mean"] == 0.5
    assert "embed_similarity_mean" not in review({"world": WORLD[:2]})["similarity"][0]
    with pytest.raises(io.DataError, match=r"bad, record 2: .*'rejected'"):
        review({"bad": [WORLD[0], {k: v for k, v in WORLD[1].items() if k != "rejected"}]})
    with pytest.raises(ValueError, match="no pairs"):
        review({"empty": []})


def test_table1_rows_from_sources():
    rows = table1({"mix": [pair(0, "a", "b", "povid"), pair(1, "a", "c", "povid"), pair(2, "a", "d", "bdhs_noise")],
                   "mine": [pair(3, "a", "b", "my_data")]})
    assert [(r["dataset"], r["name"], r["size"]) for r in rows] == [("mix", "POVID", 2), ("mix", "BDHS (noise)", 1),
                                                                    ("mine", "my_data", 1)]
    assert rows[0]["annotator"] == "GPT-4V" and rows[0]["signal"] == "construction" and rows[0]["type"] == "synthetic"
    assert rows[2]["prompt"] == "unknown" and rows[2]["signal"] == "unknown"
    assert source_info("rlhf_v")["type"] == "human" and source_info("vlfeedback")["signal"] == "ranking"


def test_markdown_table_golden():
    text = markdown_table([{"a": 1234, "b": 0.5, "c": "x|y"}, {"a": 2, "b": None, "c": "z"}])
    assert text == "| a | b | c |\n|---|---|---|\n| 1,234 | 0.500 | x\\|y |\n| 2 |  | z |\n"
    assert markdown_table([]) == "(none)\n"


def test_figures_are_drawn():
    figures = review_figures(review({"world": WORLD, "other": [pair(0, "A dog on grass.", "A cat on grass.")]}))
    assert set(figures) == {"lengths", "similarity", "differences", "objects"}
    assert all(len(f.axes) >= 1 for f in figures.values())


# ---------------------------------------------------------------- the command


def _write_real_style(path):
    records = [
        pair(0, "A man rides a bike down the street.", "A man rides a horse down the street.", "povid",
             provenance={"dataset": "YiyangAiLab/POVID_preference_data_for_VLLMs", "original_id": "9"}),
        pair(1, "Two dogs play with a frisbee.", "Three dogs play with a frisbee.", "povid"),
        pair(2, "The clock on the wall is white.", "The clock on the wall is black.", "rlhf_v"),
        pair(3, "There is no car in the picture.", "There is a car and a bus in the picture.", "bdhs_attn"),
    ]
    io.write_jsonl(path, records)


def test_review_command(tmp_path, caplog):
    real, world, out = tmp_path / "real.jsonl", tmp_path / "world.jsonl", tmp_path / "review"
    _write_real_style(real)
    io.write_jsonl(world, WORLD)
    assert main(["-q", "review", str(real), str(world), "--out", str(out), "--names", "mixed", "world edition"]) == 0
    result = json.loads((out / "review.json").read_text())
    assert result["vocabulary"] == {"mixed": "coco", "world edition": "world"}
    assert result["unit"] == "words" and "git" in result["manifest"]
    kinds = {r["id"]: r["kind"] for r in map(json.loads, (out / "pairs.jsonl").read_text().splitlines())
             if r["dataset"] == "mixed"}
    assert kinds == {"p0": "object", "p1": "count", "p2": "attribute", "p3": "existence"}
    assert [(r["name"], r["size"]) for r in result["table1"]] == [
        ("POVID", 2), ("RLHF-V", 1), ("BDHS (attn)", 1), ("POVID-like (world)", 5)]
    table = (out / "table1.md").read_text()
    assert table.startswith("# Table 1") and "| mixed | rlhf_v | human | RLHF-V | 1 |" in table
    assert "## Objects only in the rejected" in (out / "mixed.md").read_text()
    assert "| exact | attribute | 1 | 5 | 0.200 |" in (out / "world_edition.md").read_text()
    for name in ("lengths", "similarity", "differences", "objects"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")

    caplog.set_level(logging.ERROR)
    assert main(["-q", "review", str(real), "--out", str(tmp_path / "x"), "--names", "a", "b"]) == 2
    assert main(["-q", "review", str(real), str(real), "--out", str(tmp_path / "x")]) == 2, "same names"
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({k: v for k, v in WORLD[0].items() if k != "chosen"}) + "\n")
    assert main(["-q", "review", str(broken), "--out", str(tmp_path / "x")]) == 2
    assert str(broken) in caplog.text and "record 1" in caplog.text and "'chosen'" in caplog.text
    assert not (tmp_path / "x").exists()
