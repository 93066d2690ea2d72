"""The dataset converters on hand-written fixtures in each release's format.   Run: pytest tests/test_convert.py

Each fixture (tests/fixtures/datasets/<dataset>/) holds valid records, one whose image is missing, and a second file
with a malformed record. The expected outputs (expected*.jsonl) were checked by hand against the fixtures; after an
intended change of a converter, rewrite them with MMSTUDY_WRITE_EXPECTED=1 and review the diff.
"""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from mmstudy import io
from mmstudy.cli import main
from mmstudy.converters import CONVERTERS, ConvertConfig, convert, write_result
from mmstudy.converters.common import make_ids_unique
from mmstudy.data.preferences import load_preferences, load_sft

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"
IMAGES = FIXTURES / "images"
EMBEDDED = None  # image root: a fresh temp folder (the converter writes the embedded images there)

# dataset, input, image root, expected output, statistics with on_missing="skip" and seed 0
CASES = [
    ("llava_instruct", "llava_instruct/llava_instruct.json", "coco_train2017", "llava_instruct/expected.jsonl",
     {"first_turn_only": 1, "read": 5, "renamed_duplicate_ids": 1, "skipped_missing_image": 1,
      "skipped_text_only": 1, "written": 3}),
    ("povid", "povid/POVID_preference_data_for_VLLMs.json", "coco_train2014", "povid/expected.jsonl",
     {"first_turn_only": 1, "read": 4, "renamed_duplicate_ids": 1, "skipped_missing_image": 1, "written": 3}),
    ("rlhf_v", "rlhf_v/RLHF-V-Dataset.parquet", EMBEDDED, "rlhf_v/expected.jsonl",
     {"images_reused": 1, "images_written": 2, "read": 4, "renamed_duplicate_ids": 0, "skipped_missing_image": 1,
      "written": 3}),
    ("rlaif_v", "rlaif_v/RLAIF-V-Dataset.parquet", EMBEDDED, "rlaif_v/expected.jsonl",
     {"images_written": 2, "read": 3, "renamed_duplicate_ids": 0, "skipped_missing_image": 1, "written": 2}),
    ("vlfeedback", "vlfeedback/vlfeedback.jsonl", "vlfeedback", "vlfeedback/expected.jsonl",
     {"completions_empty": 1, "completions_unrated": 2, "read": 5, "renamed_duplicate_ids": 0, "skipped_all_tied": 1,
      "skipped_fewer_than_two_rated": 1, "skipped_missing_image": 1, "written": 2}),
    ("vlfeedback", "vlfeedback/vlfeedback.parquet", "vlfeedback", "vlfeedback/expected.jsonl",
     {"completions_empty": 1, "completions_unrated": 2, "read": 5, "renamed_duplicate_ids": 0, "skipped_all_tied": 1,
      "skipped_fewer_than_two_rated": 1, "skipped_missing_image": 1, "written": 2}),
    ("ha_dpo", "ha_dpo/desc_data.json", "VG", "ha_dpo/expected_desc.jsonl",
     {"read": 3, "renamed_duplicate_ids": 0, "skipped_missing_image": 1, "written": 2}),
    ("ha_dpo", "ha_dpo/pope_data.json", "VG", "ha_dpo/expected_pope.jsonl",
     {"read": 4, "renamed_duplicate_ids": 0, "skipped_answered_correctly": 1, "skipped_missing_image": 1,
      "written": 2}),
    ("trl", "trl/conversational.jsonl", "trl", "trl/expected_conversational.jsonl",
     {"read": 3, "renamed_duplicate_ids": 0, "skipped_missing_image": 1, "written": 2}),
    ("trl", "trl/standard.parquet", "trl", "trl/expected_standard.jsonl",
     {"images_written": 1, "read": 3, "renamed_duplicate_ids": 0, "skipped_missing_image": 1, "written": 2}),
]

# dataset, input, image root, the record and field the error must name, and the missing image
MISSING = [
    ("llava_instruct", "llava_instruct/llava_instruct.json", "coco_train2017", r"record 3 \(id='000000000030'\)",
     "image", "000000000030.jpg"),
    ("povid", "povid/POVID_preference_data_for_VLLMs.json", "coco_train2014", r"record 2 \(id='30'\)", "image",
     "COCO_train2014_000000000030.jpg"),
    ("rlhf_v", "rlhf_v/RLHF-V-Dataset.parquet", EMBEDDED, r"record 2 \(id=2\)", "image.path",
     "RLHF-V-Hall_v0/404.jpg"),
    ("rlaif_v", "rlaif_v/RLAIF-V-Dataset.parquet", EMBEDDED, r"record 1 \(id='OmniLMM-12B_COCO_1'\)", "image.path",
     "coco/missing.png"),
    ("vlfeedback", "vlfeedback/vlfeedback.jsonl", "vlfeedback", r"record 3 \(id='m3it-404'\)", "img_path",
     "m3it-404.jpg"),
    ("ha_dpo", "ha_dpo/desc_data.json", "VG", r"record 2 \(id='3'\)", "image_id", "VG_100K_2/3.jpg"),
    ("ha_dpo", "ha_dpo/pope_data.json", "VG", r"record 3 \(id=3\)", "image_id", "VG_100K/3.jpg"),
    ("trl", "trl/conversational.jsonl", "trl", r"record 2 \(id='fox-1'\)", "images[0]", "pets/fox.jpg"),
    ("trl", "trl/standard.parquet", "trl", r"record 2 \(id=None\)", "images[0].path", "pets/fox.jpg"),
]

MALFORMED = [
    ("llava_instruct", "llava_instruct/malformed.json", "coco_train2017",
     r"record 1 \(id='000000000025'\), conversations\[1\]: field 'from' is 'human', expected 'gpt'"),
    ("povid", "povid/malformed.json", "coco_train2014",
     r"record 1 \(id='25'\): field 'rejected_conversations\[1\].value': must be a string, got int"),
    ("rlhf_v", "rlhf_v/malformed.parquet", EMBEDDED, r"record 1 \(id=1\): field 'text': malformed JSON"),
    ("rlaif_v", "rlaif_v/malformed.parquet", EMBEDDED,
     r"record 1 \(id='OmniLMM-12B_VQAv2_2'\): field 'chosen': is empty"),
    ("vlfeedback", "vlfeedback/malformed.jsonl", "vlfeedback",
     r"record 1 \(id='m3it-404'\): field 'completions\[1\].annotations.Visual Faithfulness.Rating': must be a number"),
    ("ha_dpo", "ha_dpo/malformed_desc.json", "VG",
     r"record 1 \(id='2'\): field 'chosen': must be a non-empty list of descriptions"),
    ("ha_dpo", "ha_dpo/malformed_pope.json", "VG", r"record 1 \(id=2\): field 'correct': must be true or false"),
    ("trl", "trl/malformed.jsonl", "trl", r"record 1 \(id='dog-1'\): field 'prompt': must be a string or a list of "
                                          r"one user message"),
]


def _root(name, tmp_path) -> Path:
    """A temp copy of the fixture image root (converters write embedded images into it)."""
    root = tmp_path / "images"
    if name is not EMBEDDED:
        shutil.copytree(IMAGES / name, root, dirs_exist_ok=True)
    return root


def _run(dataset, rel, root, tmp_path, **kw):
    return convert(dataset, FIXTURES / rel, ConvertConfig(image_root=_root(root, tmp_path), **kw))


def test_every_converter_has_a_fixture_case():
    assert {c[0] for c in CASES} == set(CONVERTERS) == {m[0] for m in MISSING} == {m[0] for m in MALFORMED}


@pytest.mark.parametrize("dataset, rel, root, expected, stats", CASES, ids=[c[1] for c in CASES])
def test_converter_matches_the_expected_output(dataset, rel, root, expected, stats, tmp_path):
    result = _run(dataset, rel, root, tmp_path, on_missing="skip")
    out = tmp_path / "out.jsonl"
    write_result(result, out)
    if os.environ.get("MMSTUDY_WRITE_EXPECTED"):
        shutil.copyfile(out, FIXTURES / expected)
    assert out.read_bytes() == (FIXTURES / expected).read_bytes()
    assert result.stats == stats
    loader = load_sft if dataset == "llava_instruct" else load_preferences
    assert loader(out, image_root=_root(root, tmp_path)) == result.records  # every image resolves


@pytest.mark.parametrize("dataset, rel, root, where, field, image", MISSING, ids=[m[1] for m in MISSING])
def test_missing_image_is_an_error_naming_file_record_field_and_image(dataset, rel, root, where, field, image,
                                                                       tmp_path):
    with pytest.raises(io.DataError) as e:
        _run(dataset, rel, root, tmp_path)
    message = str(e.value)
    assert message.startswith(str(FIXTURES / rel)), message
    assert re.search(where + f": field '{re.escape(field)}': image file not found: ", message), message
    assert image in message


@pytest.mark.parametrize("dataset, rel, root, pattern", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_malformed_record_is_an_error_naming_file_record_and_field(dataset, rel, root, pattern, tmp_path):
    with pytest.raises(io.DataError, match=re.escape(str(FIXTURES / rel)) + ", " + pattern):
        _run(dataset, rel, root, tmp_path, on_missing="skip")


def test_embedded_images_are_written_once_with_content_hashed_names(tmp_path):
    first = _run("rlhf_v", "rlhf_v/RLHF-V-Dataset.parquet", EMBEDDED, tmp_path, on_missing="skip")
    files = sorted((tmp_path / "images").rglob("*"))
    files = [f for f in files if f.is_file()]
    assert [f.relative_to(tmp_path / "images").as_posix() for f in files] == \
        ["rlhf_v/955bb1b8724079e5.jpg", "rlhf_v/991b801103fef205.png"]
    for f in files:  # sha256 prefix of the bytes; the extension from the original path, or from the format
        assert hashlib.sha256(f.read_bytes()).hexdigest()[:16] == f.stem
    assert not [f for f in (tmp_path / "images").rglob("*") if f.name.startswith(".")]  # no temp files left
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = _run("rlhf_v", "rlhf_v/RLHF-V-Dataset.parquet", EMBEDDED, tmp_path, on_missing="skip")
    assert again.records == first.records
    assert again.stats["images_reused"] == 3 and "images_written" not in again.stats
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes


def test_conversion_is_deterministic_and_seeded(tmp_path):
    outs = []
    for k in range(2):
        result = _run("vlfeedback", "vlfeedback/vlfeedback.jsonl", "vlfeedback", tmp_path, on_missing="skip")
        write_result(result, tmp_path / f"v{k}.jsonl")
        outs.append((tmp_path / f"v{k}.jsonl").read_bytes())
    assert outs[0] == outs[1]
    # HA-DPO's description pairs are seeded picks (2 x 2 descriptions x 4 prompts for image 1): seeds differ
    picks = {json.dumps(_run("ha_dpo", "ha_dpo/desc_data.json", "VG", tmp_path, on_missing="skip",
                             seed=seed).records[0], sort_keys=True) for seed in range(8)}
    assert len(picks) > 1


def test_vlfeedback_rule_best_against_a_lower_rated(tmp_path):
    """svit-conversation-1219: gpt-4v rated 5 is the only best; the other three (4, 3.33, 3) are all lower, so the
    rejected is one of them whatever the seed, and the scores are the mean ratings."""
    lower = {"He is throwing a ball.": 4.0, "He is playing with a cat.": 10 / 3, "A man.": 3.0}
    seen = set()
    for seed in range(12):
        pair = _run("vlfeedback", "vlfeedback/vlfeedback.jsonl", "vlfeedback", tmp_path, on_missing="skip",
                    seed=seed).records[0]
        assert pair["chosen"] == "He is throwing a frisbee to a dog." and pair["chosen_score"] == 5.0
        assert pair["rejected_score"] == pytest.approx(lower[pair["rejected"]])
        seen.add(pair["rejected"])
    assert len(seen) > 1


def test_limit_stops_early(tmp_path):
    result = _run("povid", "povid/POVID_preference_data_for_VLLMs.json", "coco_train2014", tmp_path, limit=1)
    assert [r["id"] for r in result.records] == ["povid-9"] and result.stats["read"] == 1


def test_source_override_names_records_and_image_folder(tmp_path):
    result = _run("trl", "trl/standard.parquet", "trl", tmp_path, on_missing="skip", source="rlaif_v_trl")
    assert [r["id"] for r in result.records] == ["rlaif_v_trl-0", "rlaif_v_trl-1"]
    assert {r["source"] for r in result.records} == {"rlaif_v_trl"}
    assert result.records[0]["image"].startswith("rlaif_v_trl/")
    assert (tmp_path / "images" / result.records[0]["image"]).is_file()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="on_missing"):
        ConvertConfig(image_root=".", on_missing="ignore")
    with pytest.raises(ValueError, match="source"):
        ConvertConfig(image_root=".", source="../x")
    with pytest.raises(ValueError, match="unknown dataset"):
        convert("llava_rlhf", FIXTURES / "povid" / "malformed.json", ConvertConfig(image_root="."))


def test_unreadable_inputs_are_data_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(io.DataError, match="bad.parquet: not a readable Parquet file"):
        convert("rlhf_v", bad, ConvertConfig(image_root=tmp_path))
    lines = tmp_path / "bad.jsonl"
    lines.write_bytes(b'\n{"id": \n')
    with pytest.raises(io.DataError, match=r"bad.jsonl, record 0 \(line 2\): malformed JSON"):
        convert("trl", lines, ConvertConfig(image_root=tmp_path))
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'[{"id": "caf\xe9"}]')
    with pytest.raises(io.DataError, match="latin.json: not UTF-8 text"):
        convert("povid", latin, ConvertConfig(image_root=tmp_path))
    with pytest.raises(io.DataError, match="expected desc_data.json"):
        io.write_json(tmp_path / "x.json", "a string")
        convert("ha_dpo", tmp_path / "x.json", ConvertConfig(image_root=tmp_path))


def test_make_ids_unique():
    records = [{"id": "a"}, {"id": "a~2"}, {"id": "a"}, {"id": "b"}, {"id": "a"}]
    assert make_ids_unique(records) == 2
    assert [r["id"] for r in records] == ["a", "a~2", "a~3", "b", "a~4"]


def test_cli_convert_and_mix(tmp_path):
    out = tmp_path / "povid.jsonl"
    args = ["-q", "convert", "povid", "--input", str(FIXTURES / "povid" / "POVID_preference_data_for_VLLMs.json"),
            "--image-root", str(IMAGES / "coco_train2014"), "--out", str(out)]
    assert main(args) == 2 and not out.exists()  # the missing image stops it, nothing half-written
    assert main(args + ["--skip-missing-images", "--n", "2", "--seed", "3"]) == 0
    assert load_preferences(out, image_root=IMAGES / "coco_train2014")
    pairs = load_preferences(out)
    assert len(pairs) == 2
    stats = io.read_json(tmp_path / "povid.convert.json")
    assert stats["stats"]["skipped_missing_image"] == 1 and stats["records"] == 2 and stats["manifest"]["seed"] == 3
    rlhf = tmp_path / "rlhf.parquet"
    assert main(["-q", "convert", "rlhf_v", "--input", str(FIXTURES / "rlhf_v" / "RLHF-V-Dataset.parquet"),
                 "--image-root", str(tmp_path / "images"), "--out", str(rlhf), "--skip-missing-images"]) == 0
    mixed, val = tmp_path / "mix.jsonl", tmp_path / "val.jsonl"
    assert main(["-q", "prefs-mix", str(out), f"{rlhf}:2", "--out", str(mixed), "--val", "1", "--val-out",
                 str(val), "--seed", "0"]) == 0
    train, held = load_preferences(mixed), load_preferences(val)
    assert len(train) == 3 and len(held) == 1
    assert {r["source"] for r in train + held} == {"povid", "rlhf_v"}
    assert main(["-q", "prefs-mix", str(out), str(out), "--out", str(mixed)]) == 2  # duplicate ids across inputs


def _povid_record(image: str) -> dict:
    turn = lambda answer: [{"from": "human", "value": "<image>\nWhat is it?"},  # noqa: E731
                           {"from": "gpt", "value": answer}]
    return {"id": "1", "image": image, "conversations": turn("A cup."), "rejected_conversations": turn("A fork.")}


@pytest.mark.parametrize("name, problem", [("empty.jpg", "not a readable image"), ("cut.jpg", "not a readable image"),
                                           ("text.jpg", "not a readable image"),
                                           ("link.jpg", "leads outside the image root")])
def test_converters_refuse_unreadable_images_and_links_out_of_the_root(tmp_path, name, problem):
    root = _root("coco_train2014", tmp_path)
    good = (root / "COCO_train2014_000000000009.jpg").read_bytes()
    (root / "empty.jpg").write_bytes(b"")
    (root / "cut.jpg").write_bytes(good[:64])
    (root / "text.jpg").write_text("hello")
    (tmp_path / "secret.jpg").write_bytes(good)
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    io.write_json(tmp_path / "povid.json", [_povid_record(name)])
    with pytest.raises(io.DataError, match=rf"povid.json, record 0 \(id='1'\): field 'image': .*{name}: {problem}"):
        convert("povid", tmp_path / "povid.json", ConvertConfig(image_root=root))
    result = convert("povid", tmp_path / "povid.json", ConvertConfig(image_root=root, on_missing="skip"))
    assert result.records == [] and result.stats["skipped_unreadable_image"] == 1


def test_empty_inputs_and_ratings_off_the_scale_are_data_errors(tmp_path):
    for name, text in (("empty.jsonl", ""), ("empty.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(io.DataError, match=f"{name}: holds no records"):
            convert("vlfeedback" if name.endswith("l") else "povid", tmp_path / name,
                    ConvertConfig(image_root=tmp_path))
    line = json.loads((FIXTURES / "vlfeedback" / "vlfeedback.jsonl").read_text().splitlines()[0])
    for rating in ("42", "-1", "1e30", 0):
        line["completions"]["annotations"][1]["Helpfulness"]["Rating"] = rating
        io.write_jsonl(tmp_path / "v.jsonl", [line])
        with pytest.raises(io.DataError, match=r"completions\[1\].annotations.Helpfulness.Rating': must be a "
                                               r"rating from 1 to 5"):
            convert("vlfeedback", tmp_path / "v.jsonl", ConvertConfig(image_root=_root("vlfeedback", tmp_path)))


def test_vlfeedback_checks_every_rating_and_the_model_column(tmp_path):
    line = json.loads((FIXTURES / "vlfeedback" / "vlfeedback.jsonl").read_text().splitlines()[0])
    root = _root("vlfeedback", tmp_path)
    notes = line["completions"]["annotations"][1]
    notes["Helpfulness"], notes["Visual Faithfulness"]["Rating"] = None, "9"     # a rating after a missing one
    io.write_jsonl(tmp_path / "v.jsonl", [line])
    with pytest.raises(io.DataError, match=r"Visual Faithfulness.Rating': must be a rating from 1 to 5, got '9'"):
        convert("vlfeedback", tmp_path / "v.jsonl", ConvertConfig(image_root=root))
    line = json.loads((FIXTURES / "vlfeedback" / "vlfeedback.jsonl").read_text().splitlines()[0])
    line["completions"]["model"] = 5
    io.write_jsonl(tmp_path / "m.jsonl", [line])
    with pytest.raises(io.DataError, match=r"field 'completions.model': must be a list, got int"):
        convert("vlfeedback", tmp_path / "m.jsonl", ConvertConfig(image_root=root))
