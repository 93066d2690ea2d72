"""Unit tests for mmstudy.benchmarks.llava_bench (LLaVA-Bench in the wild): the released file formats, the
reference review prompt and score parser, and hand-computed relative scores in both modes, end to end on the
fixtures in tests/fixtures/llava_bench/ (a few invented records in the released formats; `rule.json` holds the
three llava_bench_* rules of LLaVA's llava/eval/table/rule.json, verbatim, Apache-2.0, github.com/haotian-liu/LLaVA).

Run: pytest tests/test_llava_bench.py
"""

import json
import math
from pathlib import Path

import pytest

from mmstudy.benchmarks import llava_bench as lb
from mmstudy.io import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "llava_bench"


@pytest.fixture(scope="module")
def bench():
    return (lb.load_questions(FIXTURES / "questions.jsonl"), lb.load_context(FIXTURES / "context.jsonl"),
            lb.load_answers(FIXTURES / "answers_gpt4.jsonl"), lb.load_answers(FIXTURES / "answers_model.jsonl"))


@pytest.fixture(scope="module")
def review_texts():
    return [r["content"] for r in lb.load_reviews(FIXTURES / "reviews.jsonl")]


def _write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- files and rules


def test_reference_rules_match_the_released_rule_file():
    assert lb.load_rules(FIXTURES / "rule.json") == {k: dict(v) for k, v in lb.REFERENCE_RULES.items()}
    assert lb.JUDGE_SYSTEM_PROMPT == "You are a helpful and precise assistant for checking the quality of the answer."


def test_load_fixture_files(bench):
    questions, contexts, reference, model = bench
    assert [q["category"] for q in questions] == ["conv", "detail", "complex", "complex"]
    assert sorted(contexts) == ["001.jpg", "002.jpg"]
    assert reference[0]["model_id"] == "gpt-4-0314" and model[3]["text"] == "They could advertise."


@pytest.mark.parametrize(
    "loader, good, bad, message",
    [
        (lb.load_questions, {"question_id": 0, "image": "a.jpg", "text": "q", "category": "conv"},
         {"question_id": 1, "image": "a.jpg", "text": "q", "category": "chat"}, r"line 2, field 'category'"),
        (lb.load_questions, {"question_id": 0, "image": "a.jpg", "text": "q", "category": "conv"},
         {"question_id": 0, "image": "a.jpg", "text": "q", "category": "conv"}, r"line 2, field 'question_id': dup"),
        (lb.load_questions, {"question_id": 0, "image": "a.jpg", "text": "q", "category": "conv"},
         {"question_id": 1, "image": "a.jpg", "category": "conv"}, r"line 2: missing field\(s\) 'text'"),
        (lb.load_context, {"id": "1", "image": "a.jpg", "caption": "c"},
         {"id": "2", "image": "b.jpg", "caption": 3}, r"line 2, field 'caption'"),
        (lb.load_context, {"id": "1", "image": "a.jpg", "caption": "c"},
         {"id": "2", "image": "a.jpg", "caption": "c"}, r"line 2, field 'image': duplicate"),
        (lb.load_answers, {"question_id": 0, "text": "a"}, {"question_id": True, "text": "a"},
         r"line 2, field 'question_id'"),
        (lb.load_answers, {"question_id": 0, "text": "a"}, {"question_id": 1, "text": None}, r"line 2, field 'text'"),
        (lb.load_reviews, {"question_id": 0, "category": "llava_bench_conv", "content": "8 9"},
         {"question_id": 1, "category": "llava_bench_conv"}, r"line 2: missing field\(s\) 'content'"),
    ],
)
def test_malformed_records_name_file_line_field(tmp_path, loader, good, bad, message):
    path = _write(tmp_path, "f.jsonl", [good, bad])
    with pytest.raises(DataError, match=message) as err:
        loader(path)
    assert "f.jsonl" in str(err.value)


def test_malformed_rule_file(tmp_path):
    path = tmp_path / "rule.json"
    path.write_text(json.dumps({"llava_bench_conv": {"role": "Assistant"}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"rule.json, rule 'llava_bench_conv': missing field 'prompt'"):
        lb.load_rules(path)


# ---------------------------------------------------------------- prompt and parsing


def test_review_prompt_layout():
    prompt = lb.build_review_prompt("A cat on a bench.", "What animal?", "A grey cat.", "A cat.", "conv")
    assert prompt == ("[Context]\nA cat on a bench.\n\n[Question]\nWhat animal?\n\n"
                      "[Assistant 1]\nA grey cat.\n\n[End of Assistant 1]\n\n"
                      "[Assistant 2]\nA cat.\n\n[End of Assistant 2]\n\n"
                      f"[System]\n{lb.REFERENCE_RULES['llava_bench_conv']['prompt']}\n\n")
    assert lb.build_review_prompt(["one.", "two."], "q", "a", "b", "detail").startswith("[Context]\none.\ntwo.\n\n")
    with pytest.raises(ValueError, match="llava_bench_chat"):
        lb.build_review_prompt("c", "q", "a", "b", "chat")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8 10\nBoth are fine.", (8.0, 10.0)),
        ("9,6.5", (9.0, 6.5)),
        ("8, 9\nexplanation", None),  # the reference turns "," into " ": three parts
        ("8 9 ", None),
        ("Assistant 1: 8", None),
        ("\n8 9", None),  # only the first line counts
        ("nan 8", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_review(text, expected):
    assert lb.parse_review(text) == expected


# ---------------------------------------------------------------- metrics, hand-computed

# Fixture reviews: conv (8, 10), detail (9, 6.5), complex (8, 6), complex unparseable ("Assistant 1: 9, ...").


def test_strict_mode_leaves_unparseable_reviews_out(bench, review_texts):
    metrics, records = lb.score_llava_bench(*bench, reviews=review_texts, n_boot=200)
    assert metrics["relative_score"] == pytest.approx(100 * 22.5 / 25)
    assert metrics["reference_score"] == pytest.approx(25 / 3) and metrics["model_score"] == pytest.approx(7.5)
    assert metrics["conv/relative_score"] == pytest.approx(125.0)
    assert metrics["detail/relative_score"] == pytest.approx(100 * 6.5 / 9)
    assert metrics["complex/relative_score"] == pytest.approx(75.0)
    assert (metrics["n"], metrics["n_questions"], metrics["n_unparseable"], metrics["n_failed"]) == (3, 4, 1, 0)
    assert (metrics["complex/n"], metrics["complex/n_unparseable"]) == (1, 1)
    assert metrics["relative_score_ci95_low"] <= metrics["relative_score"] <= metrics["relative_score_ci95_high"]
    assert metrics["mode"] == "strict" and metrics["version"] == lb.LLAVA_BENCH_VERSION
    assert records[3]["unparseable"] and records[3]["scores"] is None and records[0]["scores"] == [8.0, 10.0]


def test_reference_mode_averages_failures_in_as_minus_one(bench, review_texts):
    metrics, _ = lb.score_llava_bench(*bench, reviews=review_texts, mode="reference", n_boot=200)
    assert metrics["relative_score"] == pytest.approx(100 * (22.5 - 1) / (25 - 1))
    assert metrics["complex/relative_score"] == pytest.approx(100 * 5 / 7)  # means (8-1)/2 and (6-1)/2
    assert metrics["complex/reference_score"] == pytest.approx(3.5)
    assert (metrics["n"], metrics["n_unparseable"]) == (4, 1)


def test_review_file_rescored_like_the_reference_summary():
    reviews = lb.load_reviews(FIXTURES / "reviews.jsonl")
    metrics = lb.score_reviews(reviews, mode="reference", n_boot=10)
    # summarize_gpt_review.py: mean of the stored tuples ([-1, -1] for the failure), 100 * model / reference
    tuples = [r["tuple"] for r in reviews]
    reference = sum(t[0] for t in tuples) / 4
    model = sum(t[1] for t in tuples) / 4
    assert metrics["relative_score"] == pytest.approx(100 * model / reference)


def test_ask_gets_the_reference_prompts_and_judge_failures_are_never_scored(bench):
    sent = []

    def ask(prompts):
        sent.extend(prompts)
        return ["8 10", "9 6.5", None, "7 7\nok"]

    metrics, records = lb.score_llava_bench(*bench, ask=ask, mode="reference", n_boot=10)
    assert len(sent) == 4
    assert sent[0].startswith("[Context]\nA grey cat sits on a wooden park bench next to a red umbrella.\n\n"
                              "[Question]\nWhat animal is sitting on the bench?\n\n"
                              "[Assistant 1]\nThe animal sitting on the bench is a grey cat.\n\n")
    assert "[Assistant 2]\nA cat.\n\n[End of Assistant 2]" in sent[0]
    assert sent[2].startswith("[Context]\nAn empty street at dawn.\nA small bakery has its lights on.\n\n")
    assert (metrics["n_failed"], metrics["n_unparseable"], metrics["n"]) == (1, 0, 3)
    assert records[2]["failed"] and not records[2]["unparseable"]
    assert metrics["complex/relative_score"] == pytest.approx(100.0)


def test_missing_answers_and_contexts_are_reported(bench):
    questions, contexts, reference, model = bench
    partial = {k: v for k, v in model.items() if k != 2}
    with pytest.raises(DataError, match=r"no model answer for question_id\(s\) \[2\]"):
        lb.score_llava_bench(questions, contexts, reference, partial, reviews=["8 9"] * 4)
    with pytest.raises(DataError, match=r"no context for image\(s\) \['002.jpg'\]"):
        lb.score_llava_bench(questions, {"001.jpg": contexts["001.jpg"]}, reference, model, reviews=["8 9"] * 4)
    with pytest.raises(ValueError, match="exactly one"):
        lb.score_llava_bench(questions, contexts, reference, model)


def test_empty_category_gives_nan():
    metrics = lb.llava_bench_metrics(["conv"], [(8.0, 4.0)], n_boot=10)
    assert metrics["conv/relative_score"] == pytest.approx(50.0)
    assert math.isnan(metrics["detail/relative_score"]) and metrics["detail/n"] == 0
    with pytest.raises(ValueError, match="mode"):
        lb.llava_bench_metrics(["conv"], [(8.0, 4.0)], mode="lenient")
