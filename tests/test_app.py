"""Tests of the Gradio inspector: the view helpers (mmstudy.app.views), the BDHS mask it redraws, the Blocks built
without launching, and one end-to-end run in headless Chromium (Playwright driving Debian's /usr/bin/chromium) over
a smoke runs directory, with a screenshot of every tab saved into $MMSTUDY_APP_SCREENSHOTS (default: a pytest tmp
dir).

    python -m pytest -q tests/test_app.py -p no:cacheprovider
    MMSTUDY_APP_SCREENSHOTS=app_shots python -m pytest -q tests/test_app.py -k browser
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmstudy import io
from mmstudy.app import render, views
from mmstudy.textdiff import diff_words, words
from mmstudy.world.scene import Scene, SceneObject

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ---------------------------------------------------------------- path safety


def test_resolve_under_refuses_paths_out_of_the_root(tmp_path):
    root = tmp_path / "runs"
    (root / "a").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    assert views.resolve_under(root, "a") == (root / "a").resolve()
    for crafted in ("../secret.txt", "a/../../secret.txt", str(tmp_path / "secret.txt"), "link", "a\x00b"):
        with pytest.raises(views.PathRefused):
            views.resolve_under(root, crafted)


def test_find_image_refuses_traversal_and_reports_missing_files(tmp_path):
    runs, world_images = tmp_path / "runs", tmp_path / "world" / "images"
    runs.mkdir()
    world_images.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(world_images / "a.png")
    bases, allowed = [world_images, runs], [runs, world_images]
    assert views.find_image("a.png", bases, allowed) == (world_images / "a.png").resolve()
    with pytest.raises(views.PathRefused, match="refused"):
        views.find_image("../../../../../../etc/hostname", bases, allowed)
    with pytest.raises(views.PathRefused):
        views.find_image("/etc/hostname", bases, allowed)
    with pytest.raises(io.DataError, match="not found") as missing:
        views.find_image("b.png", bases, allowed)
    assert not isinstance(missing.value, views.PathRefused)


# ---------------------------------------------------------------- discovery


def _pair(i: int, **kw) -> dict:
    return {"id": f"p{i}", "image": "a.png", "prompt": "What is there?", "chosen": "A dog.", "rejected": "A bird.",
            "source": "test", **kw}


def test_discover_runs_lists_runs_and_reports_broken_ones(tmp_path):
    runs = tmp_path / "runs"
    io.write_jsonl(runs / "prefs" / "good.jsonl", [_pair(0), _pair(1)])
    io.write_jsonl(runs / "prefs" / "bad.jsonl", [{k: v for k, v in _pair(0).items() if k != "source"}])
    io.write_jsonl(runs / "prefs" / "notes.jsonl", [{"step": 1, "loss": 0.5}])       # not pairs: ignored
    io.write_jsonl(runs / "ok_eval" / "samples.jsonl", [{"benchmark": "pope", "answer": "yes"}])
    io.write_json(runs / "ok_eval" / "results.json", {"metrics": {"pope/macro/f1": 0.5}})
    (runs / "bad_eval").mkdir()
    (runs / "bad_eval" / "results.json").write_text("{not json")
    io.write_json(runs / "no_samples" / "results.json", {"metrics": {}})
    io.write_json(runs / "model" / "config.json", {"model_type": "llava"})
    (runs / "model" / "model.safetensors").write_bytes(b"")
    io.write_json(runs / "pickled" / "config.json", {"model_type": "llava"})
    (runs / "pickled" / "pytorch_model.bin").write_bytes(b"")
    io.write_json(runs / "tokenizer_only" / "config.json", {"model_type": "bert"})  # not a LLaVA: ignored
    io.write_jsonl(runs / ".hidden" / "p.jsonl", [_pair(0)])
    io.write_json(runs / "w" / "world.json", {"version": 1})
    io.write_jsonl(runs / "w" / "inside_world.jsonl", [_pair(0)])                   # worlds are not searched
    from mmstudy.data.preferences import save_preferences

    save_preferences([_pair(0), _pair(1)], runs / "prefs" / "arrow")                  # a datasets Arrow folder
    index = views.discover_runs(runs)
    assert sorted(index.preferences) == ["prefs/arrow", "prefs/good.jsonl"]
    assert [r["id"] for r in views.load_pairs(runs / "prefs" / "arrow")] == [_pair(0)["id"], _pair(1)["id"]]
    assert index.evals == ["ok_eval"]
    assert index.models == ["model"]
    assert index.world is None
    problems = dict(index.problems)
    assert set(problems) == {"prefs/bad.jsonl", "bad_eval", "no_samples", "pickled", "w"}
    assert "missing field" in problems["w"]
    assert "source" in problems["prefs/bad.jsonl"]
    assert "malformed JSON" in problems["bad_eval"]
    assert "without samples.jsonl" in problems["no_samples"]
    assert "safetensors only" in problems["pickled"]
    summary = index.summary_markdown()
    assert "5 problem(s)" in summary and "`bad_eval`" in summary


def test_discover_runs_finds_a_world_inside_or_takes_the_given_one(smoke_world, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "world").symlink_to(smoke_world)                       # a symlinked directory is not followed
    assert views.discover_runs(runs).world is None
    assert views.discover_runs(runs, world_dir=smoke_world).world == smoke_world.resolve()
    shutil.copytree(smoke_world, runs / "copy", ignore=shutil.ignore_patterns("images"))
    index = views.discover_runs(runs)
    assert index.world is None and "without images" in dict(index.problems)["copy"]
    (runs / "copy" / "images").symlink_to(smoke_world / "images", target_is_directory=True)
    assert views.discover_runs(runs).world == (runs / "copy").resolve()


def test_discover_runs_of_a_missing_directory_is_a_message_not_an_error(tmp_path):
    index = views.discover_runs(tmp_path / "nope", world_dir=tmp_path / "no_world")
    assert not (index.preferences or index.evals or index.models) and index.world is None
    summary = index.summary_markdown()
    assert "does not exist" in summary and "no world.json" in summary


# ---------------------------------------------------------------- word diff


def test_diff_spans_marks_changed_words_and_absent_objects():
    chosen_spans, rejected_spans = render.diff_spans(
        "There is a dog on the left.", "There is a bird on the left, and a large cup.",
        rejected_objects={"bird": views.ABSENT, "cup": views.PRESENT}, synonyms=views.Truth().synonyms)
    assert "".join(t for t, _ in chosen_spans) == "There is a dog on the left."
    assert ("dog", render.CHANGED) in chosen_spans
    labels = {t.strip(): label for t, label in rejected_spans if label}
    assert labels["bird"] == views.ABSENT            # an object's ground truth wins over the diff label
    assert labels["cup"] == views.PRESENT
    assert labels["and a large"] == render.ONLY_REJECTED   # equally labelled words read as one phrase
    assert ("There is a ", None) in rejected_spans


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("a b c dog the cat".split()), max_size=9),
       st.lists(st.sampled_from("a b c dog the cat".split()), max_size=9))
def test_aligned_labels_replays_the_minimal_word_diff(a, b):
    la, lb = render.aligned_labels(a, b)
    assert [w for w, x in zip(a, la) if x is None] == [w for w, x in zip(b, lb) if x is None]
    n_ops = len(diff_words(a, b))
    assert sum(x is not None for x in la) + sum(x == render.ONLY_REJECTED for x in lb) == n_ops
    assert sum(x == render.CHANGED for x in la) == sum(x == render.CHANGED for x in lb)


def test_spans_keep_the_original_text():
    for text in ("Yes, it isn’t a DOG!  Two dogs…", "", "no words ...", "naïve café"):
        assert "".join(t for t, _ in render.spans(text)) == text
    assert [t for t, _ in render.spans("it isn’t", ["x", "y"])] == ["it", " ", "isn’t"]   # review.words' unit
    assert "stanbul" in "".join(t for t, _ in render.spans("İstanbul"))   # lower() reshapes İ: words shown alone


# ---------------------------------------------------------------- images and ground truth


def test_render_image_upscales_and_draws_patches_and_boxes():
    image = Image.new("RGB", (48, 48), (100, 100, 100))
    scene = Scene("t", "val", "kitchen", [SceneObject("dog", 4, "large", [16, 16, 16, 16])])
    keep = [True] + [False] * 35
    out, legend = render.render_image(image, scene, {"dog"}, {"bird": 0}, keep)
    assert out.size == (384, 384)                       # 8x nearest, readable
    assert out.getpixel((32 + 10, 32 + 10)) == (100, 100, 100)      # inside the kept patch: untouched
    assert max(out.getpixel((64 + 32, 20))) < 80                    # a hidden patch: darkened
    assert out.getpixel((1, 40)) == (255, 221, 0)                   # the kept patch's outline
    assert out.getpixel((128, 200)) == (60, 220, 90)                # the dog's box (named: green)
    assert "1 of 36 image patches kept" in legend and "**bird**" in legend


def test_claimed_cells_finds_where_an_object_was_claimed():
    synonyms = views.Truth().synonyms
    text = "There is a bird at the top left. There is a dog in the center and a dog on the left. A cup."
    assert views.claimed_cells(text, {"bird", "dog", "cup"}, synonyms) == {"bird": 0, "dog": None, "cup": None}


def test_object_mentions_against_ground_truth():
    truth = views.Truth()
    rows = views.object_mentions("Two dogs and a bird, no cup.", truth, {"dog"})
    assert rows == [("dog", "dog", views.PRESENT), ("bird", "bird", views.ABSENT), ("cup", "cup", views.ABSENT)]
    assert {s for *_, s in views.object_mentions("A dog.", truth, None)} == {views.UNCHECKED}
    view = views.AnswerView("There is a bird at the top right and a dog.", truth, {"dog"})
    assert view.marks() == "bird ✗; dog ✓" and view.claimed_cells() == {"bird": 2}
    assert ("dog", views.PRESENT) in view.spans() and ("bird", views.ABSENT) in view.spans()


def test_truth_from_coco_annotations(smoke_world):
    from mmstudy.world.layout import load_scenes

    truth = views.Truth(coco_dir=smoke_world / "annotations")
    scene = load_scenes(smoke_world, "val")[0]
    assert truth.kind == "COCO annotations" and truth.scene(f"{scene.image_id}.png") is None
    assert set(scene.classes()) <= truth.classes(f"{scene.image_id}.png")


# ---------------------------------------------------------------- evaluation samples


POPE = [{"benchmark": "pope", "split": "random", "question_id": i, "label": label, "pred": pred, "answer": pred,
         "question": "Is there a dog?", "image": "a.png"}
        for i, (label, pred) in enumerate([("no", "yes"), ("yes", "no"), ("no", "no"), ("no", "yes")])]


def test_is_hallucinated_reads_each_benchmarks_scored_fields():
    assert [views.is_hallucinated(s) for s in POPE] == [True, False, False, True]   # a miss is no hallucination
    assert views.is_hallucinated({"benchmark": "chair", "reference": {"hallucinated": [["cat", "cat"]]}})
    assert views.is_hallucinated({"benchmark": "mmhal", "rating": 2}) is True
    assert views.is_hallucinated({"benchmark": "mmhal", "rating": None}) is None
    assert views.is_hallucinated({"benchmark": "llava_w", "scores": [8, 6]}) is None


def test_paired_items_and_filters():
    b = [dict(s, pred="no") for s in reversed(POPE)]                   # B says "no" everywhere, other order
    pairs = views.paired_items(POPE, b, "pope")
    assert [(x["question_id"], y["question_id"]) for x, y in pairs] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert len(views.filter_pairs(pairs, "hallucinated by A, not by B")) == 2
    assert len(views.filter_pairs(pairs, "hallucinated by B, not by A")) == 0
    assert len(views.filter_pairs(pairs, "hallucinated by neither")) == 2
    assert len(views.filter_pairs(pairs, "all items")) == 4


def test_sample_details_show_the_judges_rationale():
    text = views.sample_details({"benchmark": "mmhal", "rating": 1, "judge_text": "It invents a cat.\nRating: 1",
                                 "judge_error": None})
    assert "judge's rationale" in text and "> It invents a cat." in text and "**hallucinated** yes" in text


def test_metric_figure_and_benchmark_order():
    fig = render.metric_figure({"a": {"pope/macro/f1": 0.5, "pope/macro/f1_ci95_low": 0.4,
                                     "pope/macro/f1_ci95_high": 0.6}, "b": {"pope/macro/f1": 0.7}}, ["pope/macro/f1"])
    assert len(fig.axes[0].patches) == 2
    assert views.benchmark_order({"mmhal", "zzz", "chair", "pope"}) == ["pope", "chair", "mmhal", "zzz"]


# ---------------------------------------------------------------- the BDHS mask the app redraws


def test_kept_image_tokens_is_the_mask_bdhs_drew():
    from mmstudy.data.bdhs import BDHSConfig, Example, draw_iteration, kept_image_tokens

    ex = Example("train_000001_0", "a.png", "Describe.", "There is a dog. Yes, there is a cup.")
    for rho, seed, iteration, n in ((0.99, 0, 1, 36), (0.5, 3, 2, 36), (0.8, 1, 5, 577)):
        cfg = BDHSConfig(rho_th=rho, seed=seed, iterations=5)
        drawn = draw_iteration(ex, iteration, n, cfg, guided=True).keep
        assert torch.equal(kept_image_tokens(ex.id, iteration, n, cfg), drawn)
    assert kept_image_tokens(ex.id, 1, 36, BDHSConfig(variant="noise")) is None


# ---------------------------------------------------------------- the app without a browser


def test_app_command_defaults_to_localhost():
    from mmstudy.app.ui import DEFAULT_HOST, DEFAULT_PORT
    from mmstudy.cli import build_parser

    args = build_parser().parse_args(["app", "--runs", "runs"])
    assert (args.host, args.port, args.runs, args.world) == (DEFAULT_HOST, DEFAULT_PORT, Path("runs"), None)
    assert args.host == "127.0.0.1" and callable(args.func)


def test_build_demo_on_a_missing_runs_directory_shows_a_message(tmp_path):
    import gradio as gr

    from mmstudy.app.ui import build_demo

    demo = build_demo(tmp_path / "missing")
    assert isinstance(demo, gr.Blocks)
    summary = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "summary")
    assert "does not exist" in summary.value


def test_handlers_refuse_crafted_paths_with_a_message(tmp_path):
    from mmstudy.app.ui import Inspector

    runs = tmp_path / "runs"
    io.write_jsonl(runs / "crafted.jsonl", [_pair(0, image="../../../../../../../etc/hostname")])
    io.write_jsonl(tmp_path / "outside.jsonl", [_pair(0)])
    io.write_jsonl(runs / "scores.jsonl", [{"step": 1}])
    app = Inspector(runs)
    assert app.index.preferences == []                      # refused when found, the reason listed
    assert [(p, "must be a path inside the image root" in m) for p, m in app.index.problems] == [
        ("crafted.jsonl", True)]
    out = app.show_pair("crafted.jsonl", 0, 0.99, 36)
    assert out[1] is None and "not a preference file" in out[-1]          # no image, the reason in the page
    out = app.show_pair("../outside.jsonl", 0, 0.99, 36)
    assert "outside" in out[-1] and out[1] is None
    assert "not a preference file" in app.show_pair("scores.jsonl", 0, 0.99, 36)[-1]
    assert "not an evaluation" in app.bench("../x", "pope", False)[-1]
    assert "not a model directory" in app.live(None, Image.new("RGB", (8, 8)), "q", "../m", None, 0.9, 0, 8)[-1]


def test_handlers_refuse_requests_beyond_their_bounds(tmp_path):
    """What the page's widgets bound, the API does not: each handler checks its inputs before any work."""
    from mmstudy.app.ui import Inspector

    runs = tmp_path / "runs"
    io.write_jsonl(runs / "p.jsonl", [_pair(0)])
    app = Inspector(runs)
    assert "image tokens must be between 1 and 4096, got 100000000" in app.show_pair("p.jsonl", 0, 0.99, 10**8)[-1]
    assert "ρ_th must be between" in app.show_pair("p.jsonl", 0, 7, 36)[-1]
    assert "expected a number" in app.show_pair("p.jsonl", 0, "x", 36)[-1]
    small = Image.new("RGB", (8, 8))
    assert "max new tokens must be between" in app.live(None, small, "q", "m", None, 0.9, 0, 10**6)[-1]
    assert "longer than 2000 characters" in app.live(None, small, "q" * 5000, "m", None, 0.9, 0, 8)[-1]
    assert "at most" in app.live(None, Image.new("RGB", (5000, 5000)), "q", "m", None, 0.9, 0, 8)[-1]


def test_the_rl_tab_shows_each_steps_samples_checked_against_the_ground_truth(smoke_world, tmp_path):
    from mmstudy.app.ui import Inspector
    from mmstudy.world.layout import load_scenes
    from mmstudy.world.scene import CLASSES

    scene = load_scenes(smoke_world, split="val")[0]
    present = scene.classes()[0]
    absent = next(c.name for c in CLASSES if c.name not in scene.classes())
    image, run = f"{scene.image_id}.png", tmp_path / "runs" / "rl" / "s0"
    samples = [{"step": step, "id": "p0", "image": image, "prompt": "Describe the image.", "sample": k,
                "response": f"There is a {name}.", "reward": 0.5 * step + k}
               for step in (2, 4) for k, name in enumerate((present, absent))]
    io.write_jsonl(run / "samples.jsonl", samples)
    io.write_jsonl(run / "rl_curve.jsonl", [{"step": s, "reward": float(s), "kl": 0.1 * s, "length": 5.0,
                                             "oracle/hallucination_rate": 0.5, "oracle/recall": 0.5} for s in (2, 4)])
    io.write_json(run / "collapse.json", {"collapsed": True, "reward_hacking": True, "degenerate": False,
                                          "reward/first": 2.0, "reward/last": 4.0})
    app = Inspector(tmp_path / "runs", world_dir=smoke_world)
    assert app.index.rl_runs == ["rl/s0"] and app.index.evals == [] and app.index.preferences == []
    figure, summary, step, status = app.open_rl("rl/s0")
    assert figure is not None and status == "" and step == 2
    assert "**4 samples** over 2 logged step(s)" in summary and "**collapsed** (reward_hacking)" in summary
    count, table, step, row, status = app.rl_step("rl/s0", 3)                 # the nearest logged step
    assert (step, count, status) == (2, "**Step 2**: 2 samples", "")
    assert [r[5] for r in table] == [False, True] and table[1][3] == 2.0
    row, shown, legend, prompt, spans, details, status = app.rl_item("rl/s0", 4, 1)
    assert shown is not None and status == "" and "Step 4, sample 1 of 2" in prompt
    assert absent in details and "oracle's false claims" in details
    assert "expected a number" in app.rl_step("rl/s0", float("inf"))[-1]
    assert "not an RL run" in app.rl_item("../rl", 1, 0)[-1]


def test_every_guarded_handler_returns_what_it_is_wired_to(tmp_path):
    """An error's message lands in the status output: a handler returns as many values as it has outputs."""
    from mmstudy.app.ui import build_demo

    demo = build_demo(tmp_path / "runs")
    checked = 0
    for block_fn in demo.fns.values():
        n = getattr(block_fn.fn, "n_outputs", None)
        if n is not None:
            assert n == len(block_fn.outputs), (block_fn.fn.__name__, n, len(block_fn.outputs))
            checked += 1
    assert checked >= 12


# ---------------------------------------------------------------- end to end, in headless Chromium


class _WordOverlap:
    """BDHS's similarity filter for the smoke run (the MiniLM embedder takes ~10 s to load): word Jaccard."""

    def similarity(self, a, b):
        return np.array([len(set(x.split()) & set(y.split())) / max(1, len(set(x.split()) | set(y.split())))
                         for x, y in zip(a, b)])


@pytest.fixture(scope="module")
def smoke_runs(smoke_world, base_dir, tmp_path_factory):
    """A runs directory: POVID-like pairs, BDHS pairs of the smoke model (+ stats.json), a pair with a crafted
    image path, two models (the smoke model and a noised copy), their evaluations (POPE, CHAIR, MMHal with the
    oracle judge), and an evaluation directory with a broken results.json. The world stays outside (--world)."""
    from mmstudy import cli
    from mmstudy.data.bdhs import BDHSConfig, ImageLoader, load_examples, run_bdhs
    from mmstudy.data.preferences import save_preferences
    from mmstudy.editions.povid import povid_like_pairs
    from mmstudy.models.llava import load_llava, save_llava

    runs = tmp_path_factory.mktemp("runs")
    save_preferences(povid_like_pairs(smoke_world, n=20, seed=0, progress=False), runs / "prefs" / "world_povid.jsonl")
    io.write_jsonl(runs / "prefs" / "crafted.jsonl", [_pair(0, image="../../../../../../../etc/hostname")])
    shutil.copytree(base_dir, runs / "models" / "base")
    model, processor = load_llava(base_dir)
    examples = load_examples(smoke_world / "llava_instruct_train.json", smoke_world / "images", n=5, seed=0)
    cfg = BDHSConfig(iterations=2, epsilon=0.5, max_sentence_tokens=12, max_response_tokens=24)
    out = runs / "prefs" / "bdhs.jsonl"
    stats = run_bdhs(model, processor, examples, cfg, _WordOverlap(), ImageLoader(smoke_world / "images"), out,
                     {"model": "models/base", "model_revision": io.fingerprint(base_dir)}, progress=False)
    io.write_json(out.with_name("bdhs.stats.json"), {"stats": stats})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn_like(p)) if p.numel() > 1 else None
    save_llava(model, processor, runs / "models" / "noised")
    for name in ("base", "noised"):
        assert cli.main(["-q", "eval", "--model", str(runs / "models" / name), "--data", str(smoke_world),
                         "--benchmarks", "pope,chair,mmhal", "--judge", "oracle", "--limit", "6",
                         "--out", str(runs / "evals" / name / "results.json")]) == 0
    (runs / "evals" / "broken").mkdir()
    (runs / "evals" / "broken" / "results.json").write_text("{not json")
    return runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.click(f'li[role="option"][aria-label="{option}"]')


def _text(page, selector: str) -> str:
    return " ".join(page.locator(selector).inner_text().split())


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium; "
                    ".ci/run installs it)")
def test_inspector_in_browser(smoke_runs, smoke_world, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from mmstudy.app.ui import build_demo, launch

    expect.set_options(timeout=60_000)   # the VM can be slow for minutes; every wait ends as soon as it holds

    shots = Path(os.environ.get("MMSTUDY_APP_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    demo = build_demo(smoke_runs, world_dir=smoke_world)
    launch(demo, port=port, block=False)
    try:
        for raw in ("/etc/hostname", str(smoke_runs / "prefs" / "world_povid.jsonl")):   # no raw file is served
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/file={raw}")
            assert refused.value.code == 403
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/")
            _check_pairs(page, smoke_runs, smoke_world, shots)
            _check_live(page, smoke_runs, smoke_world, shots)
            _check_compare(page, smoke_runs, shots)
            _check_benchmarks(page, smoke_runs, shots)
            browser.close()
    finally:
        demo.close()


def _check_pairs(page, runs, world, shots):
    from playwright.sync_api import expect

    from mmstudy.benchmarks.chair import extract_objects
    from mmstudy.data.preferences import load_preferences
    from mmstudy.judges.oracle import world_synonyms
    from mmstudy.training.online import world_scenes

    expect(page.locator("#summary")).to_contain_text("evals/broken")           # the broken run, as a message
    bdhs = load_preferences(runs / "prefs" / "bdhs.jsonl")                     # the first file, shown on load
    expect(page.locator("#pair-prompt")).to_contain_text(bdhs[0]["prompt"])
    expect(page.locator("#pair-legend")).to_contain_text(f"{round(36 * bdhs[0]['provenance']['mask_kept'])} of 36 "
                                                         "image patches kept")
    expect(page.locator("#pair-summary")).to_contain_text("from bdhs.stats.json")
    expect(page.locator("#pair-plot img")).to_be_visible()
    page.screenshot(path=str(shots / "1_pairs_bdhs.png"), full_page=True)

    pairs = load_preferences(runs / "prefs" / "world_povid.jsonl")
    scenes = world_scenes(world)
    k, absent = next((i, a) for i, r in enumerate(pairs)
                     if (a := [c for _, c in extract_objects(r["rejected"], world_synonyms())
                               if c not in scenes(r["image"]).classes()]))
    _pick(page, "pair-file", "prefs/world_povid.jsonl")
    expect(page.locator("#pair-prompt")).to_contain_text("of 20")
    page.fill("#pair-index input", str(k))
    page.press("#pair-index input", "Enter")
    expect(page.locator("#pair-prompt")).to_contain_text(f"Pair {k} of 20")
    expect(page.locator("#pair-prompt")).to_contain_text(pairs[k]["prompt"])
    expect(page.locator("#pair-chosen")).to_contain_text(pairs[k]["chosen"].split()[-1])
    highlighted = " ".join(page.locator("#pair-rejected .token.highlighted").all_inner_texts()).lower()
    changed = [y for _, _, y in diff_words(words(pairs[k]["chosen"]), words(pairs[k]["rejected"])) if y]
    assert changed and all(w in highlighted for w in changed), (changed, highlighted)
    expect(page.locator("#pair-objects")).to_contain_text(f"{absent[0]} ✗")
    page.screenshot(path=str(shots / "1_pairs_povid.png"), full_page=True)

    expect(page.locator("#summary")).to_contain_text("prefs/crafted.jsonl")    # refused when found, with the reason
    expect(page.locator("#summary")).to_contain_text("must be a path inside the image root")


def _check_live(page, runs, world, shots):
    from playwright.sync_api import expect

    from mmstudy.models.generation import chat_prompt, generate, image_token_counts, sample_image_keep
    from mmstudy.models.llava import load_llava
    from mmstudy.training.online import world_scenes
    from mmstudy.world.text import CAPTION_EVAL_PROMPT

    page.get_by_role("tab", name="Live").click()
    name = page.locator("#live-image-name input").input_value()
    page.click("#live-run")
    expect(page.locator("#live-checks")).to_contain_text("oracle's false claims", timeout=120_000)
    scene = world_scenes(world)(name)
    expect(page.locator("#live-checks")).to_contain_text(f"ground truth (world): {', '.join(sorted(scene.classes()))}")
    expect(page.locator("#live-checks")).to_contain_text("models/noised (masked, ρ_th 0.99) objects:")
    model, processor = load_llava(runs / "models" / "base")   # what mmstudy.models.generation answers, independently
    image, prompt = io.load_image(world / "images" / name), chat_prompt(processor, CAPTION_EVAL_PROMPT)
    n = image_token_counts(processor, [image], [prompt])[0]
    expected = generate(model, processor, [image, image], [prompt, prompt], max_new_tokens=64, batch_size=2,
                        image_keep=[torch.ones(n, dtype=torch.bool), sample_image_keep(n, 0.99, 0)], progress=False)
    for elem_id, text in zip(("live-a-full", "live-a-masked"), expected):
        assert "".join(_text(page, f"#{elem_id} .textfield").split()) == "".join(text.split())
    expect(page.locator("#live-image-masked img")).to_be_visible()
    page.screenshot(path=str(shots / "2_live.png"), full_page=True)


def _check_compare(page, runs, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Compare runs").click()
    expect(page.locator("#cmp-count")).to_contain_text("paired items")
    expect(page.locator("#cmp-deltas")).to_contain_text("adversarial/accuracy")
    a, b = ({(s["split"], s["question_id"]): s for s in io.read_jsonl(runs / "evals" / r / "samples.jsonl")
             if s["benchmark"] == "pope"} for r in ("base", "noised"))
    yes_to_absent = lambda s: s["pred"] == "yes" and s["label"] == "no"  # noqa: E731
    both = sum(yes_to_absent(a[k]) and yes_to_absent(b[k]) for k in a if k in b)
    page.locator("#cmp-filter").get_by_text("hallucinated by both").click()
    expect(page.locator("#cmp-count")).to_contain_text(f"{both} of {len(a)} paired items: hallucinated by both")
    expect(page.locator("#cmp-plot img")).to_be_visible()
    if both > 1:                                                      # a click on a row shows that item
        page.click('#cmp-items [data-testid="cell-1-1"]')
        expect(page.locator("#cmp-question")).to_contain_text(f"Item 1 of {both}")
    page.screenshot(path=str(shots / "3_compare.png"), full_page=True)


def _check_benchmarks(page, runs, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Benchmarks").click()
    expect(page.locator("#bench-question")).to_contain_text("Item 0 of 18")          # POPE first, 3 x 6 items
    page.get_by_role("button", name="next ▶").last.click()
    expect(page.locator("#bench-question")).to_contain_text("Item 1 of 18")
    _pick(page, "bench-name", "mmhal")
    mmhal = [s for s in io.read_jsonl(runs / "evals" / "base" / "samples.jsonl") if s["benchmark"] == "mmhal"]
    expect(page.locator("#bench-question")).to_contain_text(mmhal[0]["question"])
    expect(page.locator("#bench-details")).to_contain_text("judge's rationale")
    expect(page.locator("#bench-details")).to_contain_text(mmhal[0]["judge_text"].splitlines()[-1])
    expect(page.locator("#bench-plot img")).to_be_visible()
    assert _text(page, "#bench-status") == ""
    page.screenshot(path=str(shots / "4_benchmarks.png"), full_page=True)


def test_live_answers_about_an_uploaded_image(smoke_runs):
    from mmstudy.app.ui import NONE, Inspector

    app = Inspector(smoke_runs)                           # no world: an upload has no ground truth
    out = app.live(None, Image.new("RGB", (48, 48), (0, 120, 0)), "What is in the image?", "models/base", NONE,
                   0.5, 0, 8)
    full, masked, legend, a_full, a_masked, b_full, b_masked, checks, status = out
    assert status == "" and full.size == masked.size == (384, 384)
    assert a_full and a_masked and b_full is None and b_masked is None
    assert "the uploaded image; ground truth (none): none" in checks and "models/base (masked, ρ_th 0.5)" in checks
    assert "image patches kept" in legend
    vcd = app.live(None, Image.new("RGB", (48, 48), (0, 120, 0)), "What is in the image?", "models/base", NONE,
                   0.5, 0, 8, "vcd:alpha=2")
    assert vcd[-1] == "" and "models/base (full image, vcd:alpha=2,beta=0.1,noise_steps=500)" in vcd[-2]
    assert vcd[4] == a_masked                                    # the masked answer stays greedy
    assert "unknown method 'beam'" in app.live(None, Image.new("RGB", (8, 8)), "q", "models/base", NONE, 0.5, 0, 8,
                                               "beam")[-1]


def test_two_word_object_names_are_highlighted_whole():
    from mmstudy.judges.oracle import world_synonyms

    objects = {"traffic light": "in the image", "car": "in the image", "stop sign": "not in the image"}
    got = render.spans("i see a traffic light. a car and a stop sign.", objects=objects, synonyms=world_synonyms())
    assert ("traffic light", "in the image") in got and ("stop sign", "not in the image") in got
    assert ("car", "in the image") in got
    assert "".join(t for t, _ in got) == "i see a traffic light. a car and a stop sign."


def _refused(call) -> str:
    """The reason a request beyond a bound is refused: Gradio's own check of the component's maximum (an
    AppError), or, where Gradio has none, the handler's message in the status output."""
    from gradio_client.exceptions import AppError

    try:
        out = call()
    except AppError as e:
        assert "greater than maximum" in str(e), str(e)
        return f"{e} (new tokens, image tokens)"
    assert "must be between" in out[-1], out[-1]
    return out[-1]


def _peak_rss_gb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in GiB."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


@pytest.mark.slow      # about 30 s: the app in its own process
def test_the_api_serves_its_largest_allowed_inputs_in_bounded_memory(smoke_runs, smoke_world, tmp_path):
    """As an outside caller would, through gradio_client against `mmstudy app` in its own process: the largest
    inputs each handler allows (image tokens, an upload of the most pixels, the longest question, the most new
    tokens) and inputs beyond them (refused in the page) keep the app's peak memory under 2 GB."""
    import subprocess
    import sys
    import time

    from gradio_client import Client, handle_file

    from mmstudy.app.ui import MAX_IMAGE_TOKENS, MAX_NEW_TOKENS, MAX_QUESTION_CHARS, MAX_UPLOAD_PIXELS

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mmstudy", "-q", "--threads", "1", "app", "--runs",
                             str(smoke_runs), "--world", str(smoke_world), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, "the app exited"
                time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        side = int(MAX_UPLOAD_PIXELS ** 0.5)
        big = tmp_path / "big.png"
        Image.new("RGB", (side, side), (120, 30, 200)).save(big)
        shown = client.predict("prefs/bdhs.jsonl", 0, 0.99, MAX_IMAGE_TOKENS, api_name="/show_pair")
        assert shown[1] is not None and not shown[-1], shown[-1]
        assert "image tokens" in _refused(lambda: client.predict("prefs/bdhs.jsonl", 0, 0.99, 10**8,
                                                                  api_name="/show_pair"))
        live = client.predict(None, handle_file(big), "q" * MAX_QUESTION_CHARS, "models/base", None, 0.9, 0,
                              MAX_NEW_TOKENS, api_name="/live")
        assert live[3] and not live[-1].startswith("⚠️"), live[-1]
        assert "new tokens" in _refused(lambda: client.predict(None, handle_file(big), "q", "models/base", None, 0.9,
                                                                0, 10**6, api_name="/live"))
        peak = _peak_rss_gb(proc.pid)
        print(f"inspector peak memory {peak:.2f} GiB")  # noqa: T201
        assert peak < 2.0, peak
    finally:
        proc.terminate()
        proc.wait(timeout=30)
