"""World editions of the ranking and correction datasets and the Table 4 variants (mmstudy.editions.sampled)."""

import shutil

import pytest

from mmstudy import io
from mmstudy.converters.common import ConvertConfig
from mmstudy.converters.vlfeedback import convert_vlfeedback
from mmstudy.data.preferences import check_records
from mmstudy.editions import sampled as we
from mmstudy.judges.oracle import check_answer
from mmstudy.world.scene import Scene, SceneObject

PARK = Scene("p1", "val", "park", [SceneObject("frisbee", 0, "large", [0, 0, 8, 8]),
                                   SceneObject("dog", 4, "small", [16, 16, 8, 8]),
                                   SceneObject("dog", 8, "small", [32, 32, 8, 8])])
REF = "The image shows a park. There is a large frisbee at the top left. There are two dogs."


@pytest.mark.parametrize("wrong, fixed, edits", [
    ("There is a large frisbee at the bottom right.", "There is a large frisbee at the top left.", ["fix_position"]),
    ("There is a small frisbee at the top left.", "There is a large frisbee at the top left.", ["fix_size"]),
    ("There are three dogs.", "There are two dogs.", ["fix_count"]),
    ("The image shows a kitchen. There are two dogs.", "The image shows a park. There are two dogs.",
     ["fix_context"]),
    ("There are two dogs. There is a knife at the top.", "There are two dogs.", ["drop_sentence"]),
    ("Yes, there is a knife in the image.", "No, there is no knife in the image.", ["yes/no"]),
    ("yes, there is a knife in the image.", "no, there is no knife in the image.", ["yes/no"]),  # the model's case
])
def test_correct_fixes_each_false_claim(wrong, fixed, edits):
    reference = "No, there is no knife in the image." if wrong.lower().startswith("yes") else REF
    assert check_answer(wrong, PARK, reference).hallucinated
    assert we.correct(wrong, PARK, reference) == (fixed, edits)
    assert not check_answer(fixed, PARK, reference).hallucinated


def test_correct_leaves_right_answers_and_gives_up_when_nothing_true_remains():
    assert we.correct(REF, PARK, REF) is None
    assert we.correct("There is a knife at the top.", PARK, REF) is None


@pytest.mark.parametrize("spec, expected", [
    ("gpt=reference", we.Responder("gpt")),
    ("weak=models/base,t=1.3", we.Responder("weak", "models/base", 1.3)),
    ("blind=m,rho=0.9,t=0.7", we.Responder("blind", "m", 0.7, 0.9)),
])
def test_parse_responder(spec, expected):
    assert we.parse_responder(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("models/base", "expected NAME="), ("a=m,temp=1", "unknown option 'temp'"), ("a=m,t=x", "is not a number"),
    ("a=m,t=0", "temperature must be > 0"), ("a=m,rho=1", r"rho_th must be in \[0, 1\)"), ("a b=m", "responder name"),
])
def test_parse_responder_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        we.parse_responder(spec)


def _row(*completions) -> dict:
    rows = [{"id": "r1", "image": "p1.png", "prompt": "Describe the image.", "reference": REF,
             "completions": [{"model": m, "response": t} for m, t in completions]}]
    return we.rate_completions(rows, {"p1.png": PARK})[0]


def test_ratings_and_the_editions_of_one_row():
    row = _row(("reference", REF), ("strong", "The image shows a park. There are two dogs."),
               ("weak", "The image shows a park. There is a knife at the top. There are three dogs."))
    scores = {c["model"]: c["score"] for c in row["completions"]}
    assert scores["reference"] == 5 and scores["reference"] > scores["strong"] > scores["weak"]
    ranking = we.edition_pair("ranking", row, PARK, seed=0)
    assert ranking["chosen"] == REF and ranking["rejected"] != REF and ranking["chosen_score"] == 5
    expected = [] if ranking["rejected"] == row["completions"][1]["response"] else ["count", "object"]
    assert ranking["provenance"]["error_kinds"] == expected
    assert we.error_kinds(REF, "There is a small frisbee at the top left. Yes.", PARK, REF) == ["attribute"]
    assert we.edition_pair("model_chosen", row, PARK, 0)["provenance"]["chosen_model"] == "strong"
    assert we.edition_pair("reference_chosen", row, PARK, 0)["chosen"] == REF
    corrupted = we.edition_pair("ranked_corrupted", row, PARK, 0)
    assert corrupted["chosen"] == REF and check_answer(corrupted["rejected"], PARK, REF).hallucinated
    correction = we.edition_pair("correction", row, PARK, 0)
    assert correction["rejected"] == row["completions"][2]["response"]
    assert correction["chosen"] == "The image shows a park. There are two dogs."
    assert correction["provenance"]["edits"] == ["drop_sentence", "fix_count"]
    tied = _row(("a", REF), ("b", REF))
    assert we.edition_pair("ranking", tied, PARK, 0) is None and we.edition_pair("correction", tied, PARK, 0) is None
    with pytest.raises(ValueError, match="unknown edition 'povid'"):
        we.build_edition("povid", [row], {"p1.png": PARK})


@pytest.fixture(scope="module")
def editions(smoke_world, base_dir, tmp_path_factory):
    world = tmp_path_factory.mktemp("editions") / "world"   # a copy: novel scenes add images to the world
    shutil.copytree(smoke_world, world)
    responders = we.default_responders(base_dir)
    return world, we.world_editions(list(we.EDITIONS), world, responders, n=24, seed=1, max_new_tokens=48,
                                    progress=False)


def test_every_edition_on_the_smoke_world(editions):
    world, (pairs, rows) = editions
    assert set(pairs) == set(we.EDITIONS) and set(rows) == {"novel", "sft"}
    assert len(rows["novel"]) == 24 and all(len(r["completions"]) == 4 for r in rows["novel"])
    assert all(r["image"].startswith("pref1_") for r in rows["novel"])
    assert not any(r["image"].startswith("pref") for r in rows["sft"])
    scenes = {}
    from mmstudy.editions.povid import fresh_records
    from mmstudy.world.layout import load_scenes
    scenes.update({f"{s.image_id}.png": s for s in load_scenes(world, "train")})
    scenes.update(fresh_records(world, 24, 1)[1])
    for kind, made in pairs.items():
        assert made, kind
        check_records(made, f"{kind} edition", image_root=world / "images")
        assert all(p["source"] == f"world_{kind}" and p["chosen"] != p["rejected"] for p in made)
        if kind not in ("ranking", "oracle"):      # constructed: the rejected side is false for the scene
            assert all(check_answer(p["rejected"], scenes[p["image"]]).hallucinated or
                       check_answer(p["rejected"], scenes[p["image"]], p["chosen"]).hallucinated for p in made), kind
    assert all(not check_answer(p["chosen"], scenes[p["image"]]).hallucinated for p in pairs["correction"])
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs["ranking"])
    assert all(p["chosen_score"] > p["rejected_score"] and we.REFERENCE not in (
        p["provenance"]["chosen_model"], p["provenance"]["rejected_model"]) for p in pairs["oracle"])
    by_id = {r["id"]: r for r in rows["novel"]}
    for p in pairs["oracle"]:   # the best against the worst of the model's completions
        row = by_id[p["id"].removesuffix("_oracle")]
        scores = [c["score"] for c in row["completions"] if c["model"] != we.REFERENCE]
        assert (p["chosen_score"], p["rejected_score"]) == (max(scores), min(scores))


def test_world_ranking_rows_convert_with_the_vlfeedback_converter(editions, tmp_path):
    world, (pairs, rows) = editions
    path = tmp_path / "rows.jsonl"
    io.write_jsonl(path, we.vlfeedback_rows(rows["novel"]))
    converted = convert_vlfeedback(path, ConvertConfig(image_root=world / "images", seed=1)).records
    # the world edition and the converter apply one rule (best_vs_lower), with their own seeded picks: same scores
    ours = {p["id"].removesuffix("_ranking"): (p["chosen_score"], p["rejected_score"] < p["chosen_score"])
            for p in pairs["ranking"]}
    theirs = {p["id"].removeprefix("vlfeedback-"): (p["chosen_score"], p["rejected_score"] < p["chosen_score"])
              for p in converted}
    assert ours == theirs


def test_world_prefs_cli_builds_editions(smoke_world, base_dir, tmp_path):
    from mmstudy.cli import main

    world = tmp_path / "world"
    shutil.copytree(smoke_world, world)
    out = tmp_path / "editions"
    args = ["-q", "world-prefs", "--world", str(world), "--kind", "ranking,correction", "--out", str(out),
            "--responder", "ref=reference", "--responder", f"hot={base_dir},t=1.5", "--prompts", "8",
            "--max-new-tokens", "32", "--rows-out", str(out), "--seed", "2"]
    assert main(args) == 0
    first = {k: io.read_jsonl(out / f"{k}.jsonl") for k in ("ranking", "correction")}
    assert (out / "novel_vlfeedback.jsonl").is_file()
    assert main(args) == 0
    assert first == {k: io.read_jsonl(out / f"{k}.jsonl") for k in ("ranking", "correction")}
    assert main(["-q", "world-prefs", "--world", str(world), "--kind", "ranking", "--out", str(out / "x.jsonl")]) == 2
    assert main(["-q", "world-prefs", "--world", str(world), "--kind", "povid,ranking", "--out", str(out)]) == 2
    assert not (out / "x.jsonl").exists()
