"""Fuzzing the preference schema, every converter and the file readers with malformed input.
Run: pytest tests/test_convert_fuzz.py (100 examples per test); pytest -m slow -k fuzz (1,000 per test).

Each converter test starts from a valid record in the dataset's released format and applies 1-3 random mutations
(delete a field or list item anywhere, or replace it with any JSON value, bytes or a nasty string). Every
outcome must be one of: a `DataError` whose message names the file, the record and a field; a counted skip; or an
output record that passes the schema, whose texts come from the input and whose image exists under the image
root. Any other exception (KeyError, TypeError, ...) fails the test. Examples are derandomized: the same ones on
every run.
"""

import copy
import io as _bytes_io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmstudy import io
from mmstudy.converters import ConvertConfig
from mmstudy.converters.common import collect
from mmstudy.converters.ha_dpo import DESC_PROMPTS, ha_dpo_desc_pair, ha_dpo_pope_pair
from mmstudy.converters.llava_instruct import convert_llava_instruct
from mmstudy.converters.povid import povid_pair
from mmstudy.converters.rlhf_v import rlaif_v_pair, rlhf_v_pair
from mmstudy.converters.trl_prefs import trl_pair
from mmstudy.converters.vlfeedback import vlfeedback_pair
from mmstudy.data.preferences import PREFERENCE, SFT, check_preference, check_record, load_preferences

# The default tier runs a fast seeded sample; the slow tier (`test_fuzz_full_tier`) runs this module again with
# MMSTUDY_FUZZ_EXAMPLES=1000.
EXAMPLES = int(os.environ.get("MMSTUDY_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _png(color) -> bytes:
    buf = _bytes_io.BytesIO()
    Image.new("RGB", (2, 2), color).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png((10, 20, 30))
IMAGE_FILES = ["a.jpg", "VG_100K/1.jpg", "VG_100K_2/2.jpg", "pets/cat.jpg"]
NASTY = ["", "   ", "<image>", " <image> \n", "\ud800", "N/A", "nan", "1e999", "4", "../a.jpg", "/a.jpg", "a\x00b",
         "a.jpg", "pets/cat.jpg", "x" * 300, "human", "gpt", "user", "assistant", "text", "image", 10**30, -1, 0, 1,
         True, False, None, 4.5, float("inf"), float("nan"), [], {}, b"", b"not an image", PNG]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=6),
                    st.sampled_from(NASTY), st.binary(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                                              inner, max_size=3),
                      max_leaves=6)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _apply(record, path, new, delete: bool):
    if not path:
        return new
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return record


@st.composite
def malformed(draw, bases):
    """A deep copy of one of `bases` with 1-3 random deletions or replacements anywhere in it."""
    record = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(record))))
        record = _apply(record, path, draw(values), delete=bool(path) and draw(st.booleans()))
    return record


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_images")
    for name in IMAGE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(PNG)
    return root


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):      # the LLaVA fuzz test writes bytes into its JSON as latin-1 text
        yield value.decode("latin-1")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _from_input(text: str, record) -> bool:
    """Every non-empty line of an output text is part of some string of the input (JSON inside strings too)."""
    pool = list(_strings(record))
    for s in list(pool):
        try:
            pool.extend(_strings(json.loads(s)))
        except (ValueError, RecursionError):
            pass
    return all(any(line in s for s in pool) for line in text.split("\n") if line.strip())


def _check(make, record, image_root, schema=PREFERENCE, id_of=None, fixed_prompts=()):
    """Run one record through the real conversion loop and check the outcome (see the module docstring)."""
    cfg = ConvertConfig(image_root=image_root, seed=0)
    kwargs = {"id_of": id_of} if id_of else {}
    try:
        result = collect(Path("fuzz/file.json"), [record], make, cfg, schema, "fuzz", **kwargs)
    except io.DataError as e:
        message = str(e)
        assert message.startswith("fuzz/file.json, record 0 (id="), message
        assert re.search(r"field ['\"]", message) or "expected a JSON object" in message, message
        event("DataError")
        return
    if not result.records:
        assert any(k.startswith("skipped_") for k in result.stats), result.stats
        event("skipped")
        return
    event("converted")
    (out,) = result.records
    check_record(out, "output", schema)
    assert (image_root / out["image"]).is_file() and ".." not in Path(out["image"]).parts
    texts = ["chosen"] + (["rejected"] if schema is PREFERENCE else [])
    assert out["prompt"] in fixed_prompts or _from_input(out["prompt"], record), (out, record)
    assert all(_from_input(out[k], record) for k in texts), (out, record)


# ---------------------------------------------------------------- the schema validator

PAIR = {"id": "a", "image": "a.jpg", "prompt": "Q?", "chosen": "Yes.", "rejected": "No.", "source": "s",
        "rejected_2": "Maybe.", "chosen_score": 4.5, "rejected_score": 2, "provenance": {"seed": 0}}


def _valid_pair(r) -> bool:
    def text(v):
        return isinstance(v, str) and v.strip() and not any(0xD800 <= ord(c) <= 0xDFFF for c in v)

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")

    def inside(v):      # a relative image path that stays inside the image root
        return "\x00" not in v and not Path(v).is_absolute() and ".." not in Path(v).parts

    return (isinstance(r, dict) and all(k in r and text(r[k]) for k in PREFERENCE.required) and inside(r["image"])
            and ("rejected_2" not in r or text(r["rejected_2"]))
            and all(k not in r or number(r[k]) for k in ("chosen_score", "rejected_score"))
            and not ("chosen_score" in r and "rejected_score" in r and not r["chosen_score"] > r["rejected_score"])
            and ("provenance" not in r or isinstance(r["provenance"], dict)))


@FUZZ
@given(malformed([PAIR, {k: PAIR[k] for k in PREFERENCE.required}]))
def test_fuzz_schema_validator(record):
    try:
        check_preference(record, "f.jsonl, record 3")
    except io.DataError as e:
        assert str(e).startswith("f.jsonl, record 3: ") and ("field" in str(e) or "JSON object" in str(e)), str(e)
        assert not _valid_pair(record), record
        return
    assert _valid_pair(record), record


# ---------------------------------------------------------------- the converters

CONV = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "Yes."}]
POVID = [{"id": "9", "image": "a.jpg", "conversations": CONV,
          "rejected_conversations": [CONV[0], {"from": "gpt", "value": "No."}]},
         {"id": 9, "image": "a.jpg", "conversations": CONV + CONV, "rejected": "No."}]


@FUZZ
@given(malformed(POVID))
def test_fuzz_povid(image_root, record):
    _check(povid_pair, record, image_root)


LLAVA = [{"id": "1", "image": "a.jpg", "conversations": CONV},
         {"id": 2, "image": "pets/cat.jpg", "conversations": CONV + [{"from": "human", "value": "More?"},
                                                                   {"from": "gpt", "value": "No."}]}]


@FUZZ
@given(malformed(LLAVA))
def test_fuzz_llava_instruct(image_root, record):
    path = image_root.parent / "fuzz_llava.json"
    text = json.dumps([record], default=lambda b: b.decode("latin-1"))  # a JSON file holds no bytes
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        result = convert_llava_instruct(path, ConvertConfig(image_root=image_root))
    except io.DataError as e:
        message = str(e)
        assert message.startswith(f"{path}, record 0") or message.startswith(f"{path}: "), message
        # mmstudy.data.llava names a turn as "conversations[k]: field 'from' ..." or "conversations[0]: <image> in
        # ..."; the file as a whole: NaN or Infinity (json.dumps writes them) are not JSON
        named = ("field", "JSON object", "conversations[", "UTF-8", "malformed JSON")
        assert any(s in message for s in named), message
        return
    for out in result.records:
        check_record(out, "output", SFT)
        assert _from_input(out["prompt"], record) and _from_input(out["chosen"], record)
        assert (image_root / out["image"]).is_file()


def _rlhf_v_rows(text):
    return {"ds_name": "RLHF-V", "image": {"bytes": PNG, "path": "p.jpg"}, "text": text, "origin_dataset": "x",
            "origin_split": None, "idx": 0, "image_path": "p.jpg"}


RLHF_V = [_rlhf_v_rows(json.dumps({"question": "<image> Q?", "chosen": "Yes.", "rejected": "No."})),
          dict(_rlhf_v_rows(json.dumps({"question": "Q?", "chosen": "A.", "rejected": "B."})),
               image={"bytes": None, "path": "a.jpg"})]


@st.composite
def rlhf_v_rows(draw):
    """RLHF-V rows whose `text` JSON is itself malformed half of the time."""
    row = draw(malformed(RLHF_V))
    if isinstance(row, dict) and draw(st.booleans()):
        inner = draw(malformed([{"question": "Q?", "chosen": "Yes.", "rejected": "No."}]))
        try:
            row["text"] = json.dumps(inner)
        except (TypeError, ValueError):  # bytes in it: not JSON
            row["text"] = repr(inner)
    return row


@FUZZ
@given(rlhf_v_rows())
def test_fuzz_rlhf_v(image_root, record):
    _check(rlhf_v_pair, record, image_root, id_of=lambda r: r.get("idx") if isinstance(r, dict) else None)


RLAIF_V = [{"ds_name": "RLAIF-V", "image": {"bytes": PNG, "path": "c/x.png"}, "question": "Q?", "chosen": "Yes.",
            "rejected": "No.", "origin_dataset": "COCO", "origin_split": "{}", "idx": "m_0", "image_path": "c/x.png"},
           {"image": {"bytes": None, "path": "a.jpg"}, "question": "Q?", "chosen": "A.", "rejected": "B.",
            "idx": "m_1"}]


@FUZZ
@given(malformed(RLAIF_V))
def test_fuzz_rlaif_v(image_root, record):
    _check(rlaif_v_pair, record, image_root, id_of=lambda r: r.get("idx") if isinstance(r, dict) else None)


def _note(rating):
    return {"Helpfulness": {"Rating": rating, "Rationale": "r"}, "Visual Faithfulness": {"Rating": "4"},
            "Ethical Considerations": {"Rating": "5", "Rationale": "r"}}


VLFEEDBACK = [
    {"id": "v1", "prompt": "Q?", "models": ["m1", "m2", "m3"], "img_path": "a.jpg",
     "completions": {"annotations": [_note("5"), _note("2"), _note("3")], "model": ["m1", "m2", "m3"],
                     "response": ["Best.", "Worst.", "Middle."]}},
    {"id": "v2", "prompt": "<image>Q?", "img_path": "pets/cat.jpg",
     "completions": [{"annotations": _note(4), "model": "m1", "response": "Good."},
                     {"annotations": _note("N/A"), "model": "m2", "response": "Unrated."},
                     {"annotations": _note(1.5), "model": None, "response": "Bad."}]},
]


@FUZZ
@given(malformed(VLFEEDBACK))
def test_fuzz_vlfeedback(image_root, record):
    _check(vlfeedback_pair, record, image_root)


HA_DPO_DESC = [["1", {"chosen": ["A.", "A2."], "rejected": ["B."]}], ["2", {"chosen": ["C."], "rejected": ["D."]}]]


@FUZZ
@given(malformed(HA_DPO_DESC))
def test_fuzz_ha_dpo_desc(image_root, item):
    """desc_data.json entries: (image id, {"chosen": [...], "rejected": [...]}); a mutation may break the pair."""
    if not (isinstance(item, list) and len(item) == 2):
        item = ["1", item]

    def id_of(it):
        return it[0]

    _check(ha_dpo_desc_pair, tuple(item), image_root, id_of=id_of, fixed_prompts=DESC_PROMPTS)


HA_DPO_POPE = [{"image_id": 1, "question": "Is there a dog?", "chosen": "No.", "reject": "Yes.", "answer": "no",
                "correct": False},
               {"image_id": "2", "question": "Is there a cat?", "chosen": "Yes.", "reject": "No.", "correct": True}]


@FUZZ
@given(malformed(HA_DPO_POPE))
def test_fuzz_ha_dpo_pope(image_root, record):
    _check(ha_dpo_pope_pair, record, image_root,
           id_of=lambda r: r.get("image_id") if isinstance(r, dict) else None)


TRL = [{"id": "c1", "images": ["pets/cat.jpg"],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Cat."}]}],
        "rejected": [{"role": "assistant", "content": "Dog."}]},
       {"image": {"bytes": PNG, "path": None}, "prompt": "<image>Q?", "chosen": "Cat.", "rejected": "Dog."}]


@FUZZ
@given(malformed(TRL))
def test_fuzz_trl(image_root, record):
    _check(trl_pair, record, image_root)


# ---------------------------------------------------------------- the file readers, byte by byte

VALID_LINE = json.dumps({k: PAIR[k] for k in PREFERENCE.required}).encode()
CORRUPTIONS = [b"", b"\n", b"[" * 5000, b"{" * 3000, b"9" * 5000, b'"\\ud800"', b"\xff\xfe", b"\xe9", b"NaN",
               b'{"id": 1e999}', b"\x00", b'{"a": "\xe2\x80\xa8"}', b"}", b'"', b"\r\n"]


@st.composite
def corrupted_file(draw):
    """A preference file of valid lines with bytes inserted, deleted or replaced at random places."""
    data = bytearray(b"\n".join([VALID_LINE] * draw(st.integers(0, 3))))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        piece = draw(st.sampled_from(CORRUPTIONS) | st.binary(max_size=6))
        cut = draw(st.integers(0, 4))
        data[at:at + cut] = piece
    return bytes(data)


@FUZZ
@given(corrupted_file())
def test_fuzz_preference_files(image_root, tmp_path_factory, data):
    """Any bytes: the loader returns valid records or raises a DataError naming the file; nothing else."""
    path = tmp_path_factory.mktemp("fuzz_files") / "prefs.jsonl"
    path.write_bytes(data)
    try:
        records = load_preferences(path, image_root=image_root)
    except io.DataError as e:
        assert str(e).startswith(str(path)), str(e)
        event("DataError")
        return
    event("loaded")
    assert records and all(_valid_pair(r) for r in records)


@pytest.mark.slow
def test_fuzz_full_tier():
    """The slow tier: every fuzz test of this module with 1,000 examples."""
    env = {**os.environ, "MMSTUDY_FUZZ_EXAMPLES": "1000"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
