"""Atomic outputs: files and folders appear whole or not at all, the old one stands until the swap, and both get
the permissions the umask gives a normal file or folder."""

import os

import pytest

from mmstudy import io


def test_written_files_get_the_umask_permissions_not_the_temp_files(tmp_path):
    io.write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert (tmp_path / "a" / "r.json").stat().st_mode & 0o777 == io.default_mode()
    assert io.default_mode() == 0o666 & ~io._UMASK and io.default_mode(directory=True) == 0o777 & ~io._UMASK
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "old.txt").read_text() == "old"
    with io.atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("whole")
        assert (out / "old.txt").is_file()                  # still there while the new one is written
    assert sorted(os.listdir(out)) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    assert out.stat().st_mode & 0o777 == io.default_mode(directory=True)


def test_json_outputs_are_strict_undefined_numbers_become_null(tmp_path):
    """NaN and infinities (an undefined metric) are written as null: any strict JSON reader parses the files."""
    import json
    import math

    import numpy as np

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    record = {"a": math.nan, "b": [1.5, -math.inf, {"c": np.float64("nan")}], "d": (math.inf,), "e": "NaN"}
    want = {"a": None, "b": [1.5, None, {"c": None}], "d": [None], "e": "NaN"}
    io.write_json(tmp_path / "m.json", record)
    assert strict((tmp_path / "m.json").read_text()) == want == io.read_json(tmp_path / "m.json")
    io.write_jsonl(tmp_path / "s.jsonl", [record])
    io.append_jsonl(tmp_path / "s.jsonl", [record, {"x": 1}])
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert [strict(line) for line in lines] == [want, want, {"x": 1}]


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "malformed JSON: nested too deeply"),
    ('{"n": ' + "9" * 5000 + "}", "malformed JSON: Exceeds the limit"),
    ('{"a": {"b": ["ok", "\\ud800"]}}', r"field 'a.b\[1\]' holds a lone surrogate"),
    ('{"a": 1', "malformed JSON at column 8"),
])
def test_readers_turn_every_bad_json_into_an_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(io.DataError, match=rf"bad.json: {message}"):
        io.read_json(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"ok": "\\ud83d\\ude00 \u2028 paired escapes and a line separator are text"}\n' + text + "\n")
    with pytest.raises(io.DataError, match=rf"bad.jsonl, line 2: {message}"):
        io.read_jsonl(lines)


def test_readers_refuse_bytes_that_are_not_utf8_and_writers_refuse_lone_surrogates(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"a": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(io.DataError, match="latin1.jsonl: not UTF-8 text"):
        io.read_jsonl(tmp_path / "latin1.jsonl")
    bad = {"text": "ok \ud800 not ok"}
    for write in (io.write_json, io.write_jsonl, io.append_jsonl):
        out = tmp_path / f"{write.__name__}.json"
        message = rf"{write.__name__}.json: cannot write a lone surrogate .* after .*ok '"
        with pytest.raises(io.DataError, match=message):
            write(out, bad if write is io.write_json else [bad])
        assert not out.exists()


def test_a_folder_left_aside_by_a_kill_mid_swap_is_put_back(tmp_path):
    """A kill between replace_dir's two renames leaves the old folder aside and none in place: the next writer
    (or `recover_dir`) puts it back before anything else."""
    aside = tmp_path / ".model.x1.old"
    (aside / "model").mkdir(parents=True)
    (aside / "model" / "w.bin").write_text("old weights")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_text("half")
            raise RuntimeError("killed while writing the new one")
    assert (tmp_path / "model" / "w.bin").read_text() == "old weights" and not aside.exists()
    assert not io.recover_dir(tmp_path / "model")


@pytest.mark.parametrize("text, message", [("[NaN]", "NaN is not JSON"), ('{"a": -Infinity}', "-Infinity is not JSON"),
                                           ("[1e400]", "the number 1e400 is beyond a float's range")])
def test_readers_are_strict_about_numbers(tmp_path, text, message):
    (tmp_path / "n.json").write_text(text)
    with pytest.raises(io.DataError, match=f"n.json: malformed JSON: {message}"):
        io.read_json(tmp_path / "n.json")


def _png_header(width: int, height: int) -> bytes:
    """The signature and header chunk of a PNG of the given size, and no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_image_checks_decode_the_pixels_and_bound_their_number(tmp_path):
    """What PIL's verify lets through: a PNG without pixel data, a truncated JPEG, a header of a huge image."""
    from PIL import Image

    Image.new("RGB", (64, 48), "red").save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    (tmp_path / "noidat.png").write_bytes(_png_header(8, 8))
    (tmp_path / "huge.png").write_bytes(_png_header(13000, 13000))
    assert io.image_problem(tmp_path / "ok.jpg") is None
    assert io.image_problem(tmp_path / "cut.jpg").startswith("not a readable image")
    assert io.image_problem(tmp_path / "noidat.png").startswith("not a readable image")
    assert io.image_problem(tmp_path / "huge.png").startswith("too large (13000 x 13000 pixels")
    with pytest.raises(io.DataError, match="has 13000 x 13000 pixels"):
        io.load_image(tmp_path / "huge.png")
    with pytest.raises(io.DataError, match="corrupt or unreadable image .*noidat.png"):
        io.load_image(tmp_path / "noidat.png")


def test_fingerprints_follow_contents_not_order(tmp_path):
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "b.png").write_bytes(b"two")
    digest = io.files_digest(tmp_path, ["b.png", "a.png", "a.png"])
    assert digest == io.files_digest(tmp_path, ["a.png", "b.png"])          # a set of files, in name order
    assert digest != io.files_digest(tmp_path, ["a.png"])
    (tmp_path / "b.png").write_bytes(b"TWO")                                  # same size, other bytes
    assert digest != io.files_digest(tmp_path, ["a.png", "b.png"])
    assert io.files_digest(tmp_path, ["gone.png"]) != io.files_digest(tmp_path, ["a.png"])
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = io.fingerprint(model)
    (model / "config.json").write_text('{"a": 1}')
    assert io.fingerprint(model) != before
