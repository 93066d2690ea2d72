"""The preference schema: validation, JSON lines / Parquet / Arrow round trips, seeded subsample, mix and split, and
the export to TRL's format.   Run: pytest tests/test_preferences.py
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmstudy import io
from mmstudy.data.preferences import SFT as SFT_SCHEMA
from mmstudy.data.preferences import (
    check_preference,
    check_sft,
    load_preferences,
    load_sft,
    mix,
    save_preferences,
    save_trl,
    split,
    subsample,
    to_trl,
    trl_dataset,
    write_records,
)

PAIRS = [
    {"id": "a", "image": "x.png", "prompt": "What is it?", "chosen": "A cat.", "rejected": "A dog.", "source": "t"},
    {"id": "b", "image": "sub/y.png", "prompt": "Describe it.", "chosen": "Two cups on a table.",
     "rejected": "Three cups.", "rejected_2": "Two cups and a fork.", "source": "bdhs_attn",
     "provenance": {"generator": "bdhs_attn", "seed": 0, "similarity": 0.91, "edits": ["add", "yes/no"],
                    "nested": {"k": [1, None, True]}, "ünï": "çödé"}},
    {"id": "c", "image": "x.png", "prompt": "Color?", "chosen": "Red.", "rejected": "Blue.", "source": "vlfeedback",
     "chosen_score": 4.666666666666667, "rejected_score": 3.0, "provenance": {"chosen_model": "gpt-4v"}},
]


def test_jsonl_parquet_arrow_round_trip_is_exact(tmp_path):
    first = tmp_path / "a.jsonl"
    save_preferences(PAIRS, first)
    save_preferences(load_preferences(first), tmp_path / "b.parquet")
    save_preferences(load_preferences(tmp_path / "b.parquet"), tmp_path / "c_arrow")
    save_preferences(load_preferences(tmp_path / "c_arrow"), tmp_path / "d.jsonl")
    assert (tmp_path / "d.jsonl").read_bytes() == first.read_bytes()
    assert load_preferences(tmp_path / "c_arrow") == PAIRS
    save_preferences([dict(PAIRS[2], rejected_score=3)], tmp_path / "int.parquet")  # scores are float64 columns
    assert load_preferences(tmp_path / "int.parquet")[0]["rejected_score"] == 3.0


def test_arrow_folder_is_a_datasets_dataset_and_files_are_reproducible(tmp_path):
    import datasets

    for k in range(2):
        save_preferences(PAIRS, tmp_path / f"p{k}.parquet")
        save_preferences(PAIRS, tmp_path / f"arrow{k}")
    assert (tmp_path / "p0.parquet").read_bytes() == (tmp_path / "p1.parquet").read_bytes()
    for name in ("data-00000-of-00001.arrow", "state.json", "dataset_info.json"):
        assert (tmp_path / "arrow0" / name).read_bytes() == (tmp_path / "arrow1" / name).read_bytes()
    ds = datasets.load_from_disk(str(tmp_path / "arrow0"))
    assert ds.column_names == ["id", "image", "prompt", "chosen", "rejected", "source", "rejected_2", "chosen_score",
                               "rejected_score", "provenance"]
    assert ds[0]["rejected_2"] is None and json.loads(ds[1]["provenance"])["seed"] == 0
    save_preferences(PAIRS[:1], tmp_path / "arrow0")  # overwriting a folder replaces it
    assert len(load_preferences(tmp_path / "arrow0")) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sft_records_round_trip(tmp_path):
    sft = [{"id": "1", "image": "x.png", "prompt": "Q?", "chosen": "A.", "source": "llava_instruct"}]
    write_records(tmp_path / "s.parquet", sft, SFT_SCHEMA)
    assert load_sft(tmp_path / "s.parquet") == sft
    with pytest.raises(io.DataError, match=r"s.parquet, record 1: missing field\(s\) 'rejected'"):
        load_preferences(tmp_path / "s.parquet")
    with pytest.raises(io.DataError, match="field 'chosen' must be a non-empty string"):
        check_sft(dict(sft[0], chosen=" "), "w")


def test_columnar_files_cannot_hold_unknown_fields(tmp_path):
    with pytest.raises(io.DataError, match=r"record 1 \(id='a'\): field 'extra': not in the preference schema"):
        save_preferences([dict(PAIRS[0], extra=1)], tmp_path / "p.parquet")
    assert not (tmp_path / "p.parquet").exists()
    save_preferences([dict(PAIRS[0], extra=1)], tmp_path / "p.jsonl")  # JSON lines keep them


@pytest.mark.parametrize("change, message", [
    ({"chosen": ""}, "field 'chosen' must be a non-empty string"),
    ({"prompt": 3}, "field 'prompt' must be a non-empty string, got 3"),
    ({"rejected_2": None}, "field 'rejected_2' must be a non-empty string"),
    ({"rejected": "bad \ud800 text"}, "field 'rejected': not valid Unicode text"),
    ({"provenance": ["seed", 0]}, "field 'provenance' must be an object"),
    ({"chosen_score": "4"}, "field 'chosen_score' must be a finite number"),
    ({"chosen_score": float("nan")}, "field 'chosen_score' must be a finite number"),
    ({"rejected_score": True}, "field 'rejected_score' must be a finite number"),
    ({"chosen_score": 2.0, "rejected_score": 2.0}, "field 'rejected_score': 2.0 is not below chosen_score 2.0"),
])
def test_validation_names_the_field(change, message):
    with pytest.raises(io.DataError, match="^file.jsonl, record 7: " + message.replace("(", r"\(")):
        check_preference(dict(PAIRS[0], **change), "file.jsonl, record 7")


def test_load_errors_name_file_record_and_field(tmp_path):
    table = pa.table({k: [v] for k, v in PAIRS[0].items()} | {"provenance": ["{not json"]})
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(io.DataError, match=r"p.parquet, record 1: field 'provenance': not a JSON object text"):
        load_preferences(tmp_path / "p.parquet")
    (tmp_path / "q.parquet").write_text("nope")
    with pytest.raises(io.DataError, match="q.parquet: not a Parquet file"):
        load_preferences(tmp_path / "q.parquet")
    io.write_jsonl(tmp_path / "p.jsonl", [PAIRS[0], dict(PAIRS[1], provenance="bdhs")])
    with pytest.raises(io.DataError, match=r"p.jsonl, record 2: field 'provenance' must be an object"):
        load_preferences(tmp_path / "p.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"id": "caf\xe9"}\n')
    with pytest.raises(io.DataError, match="latin.jsonl: not UTF-8 text"):
        load_preferences(tmp_path / "latin.jsonl")
    io.write_jsonl(tmp_path / "img.jsonl", [dict(PAIRS[0], image="gone.png")])
    with pytest.raises(io.DataError, match=r"img.jsonl, record 1: field 'image': file not found"):
        load_preferences(tmp_path / "img.jsonl", image_root=tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(io.DataError, match="empty.jsonl: holds no preference records"):
        load_preferences(tmp_path / "empty.jsonl")


@pytest.mark.parametrize("image", ["/etc/hostname", "../x.png", "sub/../../x.png", "a\x00b.png"])
def test_image_paths_must_stay_inside_the_image_root(image):
    with pytest.raises(io.DataError, match="record 7: field 'image' must be a path inside the image root"):
        check_preference(dict(PAIRS[0], image=image), "file.jsonl, record 7")


def test_images_must_be_readable_image_files_inside_the_root(tmp_path):
    """What the converters and loaders refuse: empty, truncated and non-image files, and links leading out."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "good.png")
    png = (root / "good.png").read_bytes()
    (root / "empty.png").write_bytes(b"")
    (root / "cut.png").write_bytes(png[:20])
    (root / "text.png").write_text("hello")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "inner.png").symlink_to(root / "good.png")                 # a link inside the root is fine
    for name in ("good.png", "inner.png"):
        io.write_jsonl(tmp_path / "p.jsonl", [dict(PAIRS[0], image=name)])
        assert load_preferences(tmp_path / "p.jsonl", image_root=root)
    for name, problem in [("empty.png", "not a readable image"), ("cut.png", "not a readable image"),
                          ("text.png", "not a readable image"), ("link.png", "leads outside the image root")]:
        io.write_jsonl(tmp_path / "p.jsonl", [PAIRS[0] | {"id": "z", "image": "good.png"}, dict(PAIRS[0], image=name)])
        with pytest.raises(io.DataError, match=rf"p.jsonl, record 2: field 'image': {problem}.*{name}"):
            load_preferences(tmp_path / "p.jsonl", image_root=root)


def _records(n):
    return [dict(PAIRS[0], id=f"r{k}") for k in range(n)]


def test_subsample_is_seeded_and_keeps_order():
    records = _records(50)
    sub = subsample(records, 10, seed=0)
    assert sub == subsample(records, 10, seed=0) and len(sub) == 10
    assert [r["id"] for r in sub] == sorted((r["id"] for r in sub), key=lambda i: int(i[1:]))
    assert sub != subsample(records, 10, seed=1)
    assert subsample(records, None, seed=0) == records and subsample(records, 50, seed=0) == records
    with pytest.raises(io.DataError, match="povid.jsonl: asked for 51 records, but there are 50"):
        subsample(records, 51, seed=0, name="povid.jsonl")
    assert subsample(records, 10, seed=0, stream=1) != sub


def test_mix_and_split():
    a, b = _records(6), [dict(r, id=f"b{k}") for k, r in enumerate(_records(4))]
    mixed = mix([("a.jsonl", a, 3), ("b.jsonl", b, None)], seed=0)
    assert len(mixed) == 7 and mixed[3:] == b and all(r in a for r in mixed[:3])
    assert mixed == mix([("a.jsonl", a, 3), ("b.jsonl", b, None)], seed=0)
    assert mixed[:3] == subsample(a, 3, seed=0)  # the first source draws stream 0, as `convert --n` does
    with pytest.raises(io.DataError, match="b.jsonl: field 'id': 'r0' is also an id in a.jsonl"):
        mix([("a.jsonl", a, None), ("b.jsonl", a[:1], None)], seed=0)
    train, val = split(mixed, 2, seed=0)
    assert len(val) == 2 and len(train) == 5
    assert sorted(r["id"] for r in train + val) == sorted(r["id"] for r in mixed)
    assert (train, val) == split(mixed, 2, seed=0)
    with pytest.raises(io.DataError, match="asked for 8 records, but there are 7"):
        split(mixed, 8, seed=0)
    with pytest.raises(ValueError, match="a .jsonl or .parquet file, or to a folder"):
        save_preferences(mixed, "prefs.json")


def test_to_trl_is_tr_ls_conversational_vision_format():
    from trl.data_utils import is_conversational, prepare_multimodal_messages

    example = to_trl(PAIRS[1], image_root="/data/images")
    assert example == {
        "images": ["/data/images/sub/y.png"],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Two cups on a table."}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Three cups."}]}],
    }
    assert is_conversational(example)
    filled = prepare_multimodal_messages(example["prompt"] + example["chosen"], images=["IMG"])
    assert filled[0]["content"][0] == {"type": "image", "image": "IMG"}
    assert to_trl(PAIRS[0])["images"] == ["x.png"]


def test_trl_dataset_decodes_images_and_save_trl_writes_lines(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "x.png")
    ds = trl_dataset([PAIRS[0]], image_root=tmp_path)
    assert isinstance(ds[0]["images"][0], Image.Image) and ds[0]["prompt"][0]["role"] == "user"
    save_trl(PAIRS, tmp_path / "trl.jsonl", image_root=tmp_path)
    lines = io.read_jsonl(tmp_path / "trl.jsonl")
    assert lines[2] == to_trl(PAIRS[2], tmp_path)
    with pytest.raises(io.DataError, match="field 'image': file not found"):
        trl_dataset([PAIRS[1]], image_root=tmp_path)


def test_what_an_independent_fuzzer_found_is_refused_by_name(tmp_path):
    """Scores beyond a float, Parquet strings that are not UTF-8, provenance nested too deeply."""
    with pytest.raises(io.DataError, match="field 'chosen_score' must be a finite number"):
        check_preference(dict(PAIRS[0], chosen_score=10**4000, rejected_score=1), "f.jsonl, record 1")
    bad = pa.array([b"ok\xff"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({k: [v] for k, v in PAIRS[0].items()} | {"chosen": bad}), tmp_path / "u.parquet")
    with pytest.raises(io.DataError, match="u.parquet: a string column holds bytes that are not UTF-8"):
        load_preferences(tmp_path / "u.parquet")
    deep = "[" * 100_000 + "]" * 100_000
    pq.write_table(pa.table({k: [v] for k, v in PAIRS[0].items()} | {"provenance": [deep]}), tmp_path / "d.parquet")
    with pytest.raises(io.DataError, match="d.parquet, record 1: field 'provenance': not a JSON object text: "
                                           "malformed JSON: nested too deeply"):
        load_preferences(tmp_path / "d.parquet")
