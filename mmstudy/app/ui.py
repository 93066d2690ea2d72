"""The Gradio inspector: where a model hallucinates, and what preference alignment changed (`mmstudy app`).

    Preference pairs  any preference file under the runs directory: image, prompt, chosen and rejected with a
                      word-level diff, objects checked against the ground truth, the pair's provenance and, for
                      BDHS pairs, the image patches the rejected response was generated from; the file's BDHS
                      acceptance per iteration
    Live              one image (a world image or an upload), one or two models, answers with and without image
                      attention masking (rho_th), each object checked against the ground truth
    Compare runs      two evaluations of one benchmark item by item, filtered to "hallucinated by A, not by B" and
                      back, with the paired metric differences and their 95 % intervals on top
    Benchmarks        any samples.jsonl item by item, with the judge's rationale where a judge scored it
    RL runs           an RLOO or GRPO run's sampled responses step by step, each checked against the ground
                      truth, beside its training curve and collapse flags: what a collapsing policy writes

A thin view over mmstudy: discovery and display helpers live in `mmstudy.app.views`; every check, score and
interval comes from the module that owns it (oracle, benchmarks, compare, bdhs, generation). It binds 127.0.0.1 by
default, reads only the runs directory and the world's images (`mmstudy.app.views.resolve_under` / `find_image` refuse
any other path that comes from the page), loads models only from safetensors Hugging Face directories, and shows
a broken run as a message in the page.

    mmstudy app --runs runs --world world        # then open http://127.0.0.1:7860
    >>> demo = build_demo("runs", world_dir="world"); launch(demo, port=7861)
"""

from __future__ import annotations

import functools
import io as stdio
import logging
from collections import Counter, OrderedDict
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from mmstudy import io, plots
from mmstudy.app import render, views
from mmstudy.data.bdhs import VARIANTS, BDHSConfig, kept_image_tokens
from mmstudy.evaluation.compare import compare_runs
from mmstudy.judges.oracle import check_answer
from mmstudy.models.decoding import Decoding, decode, noise_transforms, parse_decoding
from mmstudy.models.generation import chat_prompt, generate, image_token_counts, sample_image_keep
from mmstudy.models.llava import load_llava
from mmstudy.world.layout import load_scenes
from mmstudy.world.text import CAPTION_EVAL_PROMPT

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_IMAGE_TOKENS = 36        # the default world model: 48 px images, 8 px patches, a 6 x 6 grid
DEFAULT_RHO = 0.99               # BDHSConfig's default
MAX_ROWS = 500                   # rows of an item table sent to the page (the item number reaches all)
MAX_IMAGE_CHOICES = 2000         # world images offered in the Live tab (val first; any other can be uploaded)
# Bounds of what a request may ask for (the page's widgets have them too, but the API takes any value).
MAX_IMAGE_TOKENS = 4096          # LLaVA-NeXT's largest grids stay below 3,000
MAX_NEW_TOKENS = 512
MAX_QUESTION_CHARS = 2000
MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_STEP = 10**9                 # step and row numbers of the RL tab


def _bounded(name: str, value, low, high, kind=float):
    """`value` as `kind` when it lies in [low, high]; otherwise an error the page shows."""
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise io.DataError(f"{name}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise io.DataError(f"{name} must be between {low} and {high}, got {value}")
    return number
MODELS_IN_MEMORY = 2
NONE = "(none)"
_SHOWN_ERRORS = (ValueError, OSError, KeyError, TypeError, RuntimeError)   # io.DataError is a ValueError


def _guarded(*empty):
    """Run a handler; an error becomes a message in its last output (a status line) instead of a traceback, and
    the other outputs get `empty` (one value each: the handler has len(empty) + 1 outputs, `n_outputs`, which
    tests/test_app.py checks against the outputs it is wired to)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*args)
            except _SHOWN_ERRORS as e:
                (logger.warning if isinstance(e, io.DataError) else logger.exception)("%s: %s", fn.__name__, e)
                return (*empty, f"⚠️ {e}")
        run.n_outputs = len(empty) + 1
        return run
    return wrap


def _figure_image(fig) -> Image.Image | None:
    """A matplotlib figure as a PIL image; the figure is closed (no pyplot registry growing per request)."""
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buf = stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


class Inspector:
    """The state behind the page (the run index, ground truth, loaded models) and one method per view. Every
    relative path a method gets comes from the page and goes through `path` or `image` (no traversal)."""

    def __init__(self, runs_dir, world_dir=None, coco_dir=None, device: str = "cpu"):
        self.runs_dir, self.world_arg, self.device = Path(runs_dir), world_dir, device
        self.coco_dir = Path(coco_dir) if coco_dir else None
        self._models: OrderedDict = OrderedDict()
        self.rescan()

    def rescan(self) -> None:
        self.index = views.discover_runs(self.runs_dir, self.world_arg)
        self.truth = views.Truth(self.index.world, self.coco_dir)

    def path(self, relative: str) -> Path:
        if not relative:
            raise io.DataError("nothing selected")
        return views.resolve_under(self.index.root, relative)

    def image(self, name: str, near: Path | None = None) -> Path:
        world = [self.index.world / "images"] if self.index.world else []
        local = [near, near / "images"] if near is not None else []
        return views.find_image(name, world + local + [self.index.root], self.index.allowed_roots())

    def world_images(self) -> list[str]:
        if self.index.world is None:
            return []

        scenes = sorted(load_scenes(self.index.world), key=lambda s: (s.split != "val", s.image_id))
        return [f"{s.image_id}.png" for s in scenes[:MAX_IMAGE_CHOICES]]

    def _overlay(self, pixels: Image.Image, scene, view: views.AnswerView, keep=None, named_in: str = "the text"):
        return render.render_image(pixels, scene, view.named, view.claimed_cells(self.truth.synonyms), keep, named_in)

    def _checks(self, title: str, view: views.AnswerView, scene) -> str:
        line = f"**{title}** objects: {view.marks()}"
        if scene is not None:
            line += f"; oracle's false claims: {'; '.join(check_answer(view.text, scene).hallucinations) or 'none'}"
        return line

    def _ground_truth(self, present) -> str:
        return f"ground truth ({self.truth.kind}): " + (", ".join(sorted(present)) if present is not None else "none")

    # ------------------------------------------------------------ preference pairs

    def _bdhs_defaults(self, path: Path, records: list[dict]) -> tuple[float, int, dict | None, str]:
        """rho_th, the number of image tokens, the BDHS config and a note, for a BDHS file: the config from
        <stem>.stats.json (written by `mmstudy bdhs`) when its hash is the pairs' config_hash, the token count
        from the generating model's config.json (found under the runs directory by its fingerprint)."""
        prov = next((r["provenance"] for r in records if str(r["source"]).startswith("bdhs_")
                     and isinstance(r.get("provenance"), dict)), None)
        if prov is None:
            return DEFAULT_RHO, DEFAULT_IMAGE_TOKENS, None, ""
        rho, tokens, notes = DEFAULT_RHO, DEFAULT_IMAGE_TOKENS, []
        stats_path = path.with_name(path.stem + ".stats.json")
        config = io.read_json(stats_path).get("stats", {}).get("config") if stats_path.is_file() else None
        fields = set(BDHSConfig.__dataclass_fields__)
        if isinstance(config, dict) and BDHSConfig(**{k: v for k, v in config.items() if k in fields}) \
                .config_hash() == prov.get("config_hash"):
            rho = config["rho_th"]
            notes.append(f"ρ_th {rho} from {stats_path.name}")
        else:
            config = None
            notes.append(f"ρ_th: no {stats_path.name} with this config hash, default {DEFAULT_RHO} assumed")
        found = [rel for rel in self.index.models if io.fingerprint(self.path(rel)) == prov.get("model_revision")]
        if found:
            tokens = int(io.read_json(self.path(found[0]) / "config.json").get("image_seq_length", tokens))
            notes.append(f"{tokens} image tokens from the generating model `{found[0]}`")
        else:
            notes.append(f"generating model not under the runs directory: {tokens} image tokens assumed")
        return rho, tokens, config, "; ".join(notes)

    def pairs(self, relative: str) -> tuple[Path, list[dict]]:
        path = self.path(relative)
        if relative not in self.index.preferences:
            raise io.DataError(f"{relative!r} is not a preference file found under the runs directory")
        return path, views.load_pairs(path)

    @_guarded(gr.skip(), gr.skip(), gr.skip(), "", None)
    def open_pairs(self, relative: str):
        """-> pair number, rho, image tokens, file summary, BDHS figure, status."""
        path, records = self.pairs(relative)
        rho, tokens, config, note = self._bdhs_defaults(path, records)
        sources = ", ".join(f"{s} ({n})" for s, n in Counter(r["source"] for r in records).most_common())
        summary = f"**{len(records)} pairs** in `{relative}` · sources: {sources}" + \
            (f"  \nBDHS mask: {note}" if note else "")
        figure = _figure_image(render.bdhs_figure(records, config))
        return 0, rho, tokens, summary, gr.update(value=figure, visible=figure is not None), ""

    @_guarded(gr.skip(), None, "", "", None, None, "", "")
    def show_pair(self, relative: str, index: float, rho: float, tokens: float):
        """-> pair number, image, legend, prompt, chosen spans, rejected spans, objects, provenance, status."""
        rho, tokens = _bounded("ρ_th", rho, 0.0, 1.0), _bounded("image tokens", tokens, 1, MAX_IMAGE_TOKENS, int)
        path, records = self.pairs(relative)
        index = min(max(0, int(index or 0)), len(records) - 1)
        r = records[index]
        scene, present = self.truth.scene(r["image"]), self.truth.classes(r["image"])
        chosen, rejected = (views.AnswerView(r[side], self.truth, present) for side in ("chosen", "rejected"))
        chosen_spans, rejected_spans = render.diff_spans(r["chosen"], r["rejected"], chosen.status, rejected.status,
                                                        self.truth.synonyms)
        image, legend, status = None, "", ""
        try:
            pixels = io.load_image(self.image(r["image"], near=path.parent))
        except io.DataError as e:
            pixels, status = None, f"⚠️ {e}"
        if pixels is not None:
            image, legend = self._overlay(pixels, scene, rejected, named_in="the rejected response")
            keep, note = self._bdhs_keep(r, rho, tokens)
            if keep is not None:
                masked, masked_legend = render.render_image(pixels, keep=keep)
                image = render.side_by_side(image, masked)
                legend = f"left: {legend or 'the image'}  \nright: what the masked model saw: {masked_legend}, {note}"
            elif note:
                legend = f"{legend}  \n{note}"
        prompt = (f"**Pair {index} of {len(records)}** · id `{r['id']}` · source `{r['source']}` · image "
                  f"`{r['image']}`\n\n**Prompt:** {r['prompt']}")
        objects = "\n\n".join([f"**{self._ground_truth(present).capitalize()}** · objects named: ✓ in the image, ✗ "
                                "not (a hallucination unless negated: see the oracle's claims)",
                                self._checks("chosen", chosen, scene), self._checks("rejected", rejected, scene)])
        meta = "\n".join(f"- **{k}**: {v}" for k, v in sorted(r.get("provenance", {}).items())) or "no provenance"
        return index, image, legend, prompt, chosen_spans, rejected_spans, objects, meta, status

    def _bdhs_keep(self, record: dict, rho: float, tokens: float):
        """The kept image tokens of a BDHS pair (`bdhs.kept_image_tokens`) and a note comparing their share with
        the recorded mask_kept; (None, "") for other pairs."""
        prov, variant = record.get("provenance", {}), str(record["source"]).removeprefix("bdhs_")
        if not str(record["source"]).startswith("bdhs_") or variant not in VARIANTS or "iterations" not in prov:
            return None, ""
        cfg = BDHSConfig(variant=variant, rho_th=float(rho), seed=int(prov.get("seed", 0)))
        keep = kept_image_tokens(record["id"], int(prov["iterations"]), int(tokens), cfg)
        if keep is None:
            return None, f"BDHS {variant}: no attention mask (the image was noised)"
        share, recorded = float(keep.float().mean()), prov.get("mask_kept")
        check = "" if recorded is None or abs(share - recorded) < 1e-5 else \
            f" — ⚠️ differs from the recorded mask_kept {recorded}: ρ_th or the token count is not the run's"
        return keep.tolist(), f"the mask of iteration {prov['iterations']} at ρ_th {rho}{check}"

    # ------------------------------------------------------------ live

    def model(self, relative: str):
        if relative not in self.index.models:
            raise io.DataError(f"{relative!r} is not a model directory found under the runs directory")
        if relative not in self._models:
            while len(self._models) >= MODELS_IN_MEMORY:
                self._models.popitem(last=False)
            self._models[relative] = load_llava(self.path(relative), device=self.device)
        self._models.move_to_end(relative)
        return self._models[relative]

    @_guarded(None, None, "", None, None, None, None, "")
    def live(self, name, upload, question, model_a, model_b, rho, seed, max_new_tokens, decoding="greedy"):
        """-> full image, masked image, legend, 4 answers (A, A masked, B, B masked), checks, status. `decoding`
        (`mmstudy eval --decoding`'s text) decodes the full-image answers; the masked ones stay greedy."""
        rho, seed = _bounded("ρ_th", rho, 0.0, 1.0), _bounded("mask seed", seed or 0, 0, 2**31 - 1, int)
        decoding = parse_decoding(decoding or "greedy")
        max_new_tokens = _bounded("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS, int)
        if len(question or "") > MAX_QUESTION_CHARS:
            raise io.DataError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
        if upload is not None and upload.width * upload.height > MAX_UPLOAD_PIXELS:
            raise io.DataError(f"the uploaded image has {upload.width} x {upload.height} pixels; at most "
                               f"{MAX_UPLOAD_PIXELS} in all")
        if upload is not None:
            image, scene, present, label = upload.convert("RGB"), None, None, "the uploaded image"
        elif name:
            image, label = io.load_image(self.image(name)), f"`{name}`"
            scene, present = self.truth.scene(name), self.truth.classes(name)
        else:
            raise io.DataError("pick a world image or upload one")
        if not model_a:
            raise io.DataError("no model selected (none was found under the runs directory)")
        answers, checks, drawn = [], [f"**Image** {label}; {self._ground_truth(present)}"], []
        for rel in [model_a] + ([model_b] if model_b and model_b != NONE else []):
            texts, keep = self._generate(rel, image, question, rho, seed, max_new_tokens, decoding)
            full = "full image" + ("" if decoding.method == "greedy" else f", {decoding}")
            for text, how, mask in zip(texts, (full, f"masked, ρ_th {rho}"), (None, keep)):
                view = views.AnswerView(text, self.truth, present)
                answers.append(view.spans(self.truth.synonyms))
                checks.append(self._checks(f"{rel} ({how})", view, scene))
                if rel == model_a:
                    drawn.append(self._overlay(image, scene, view, mask))
        answers += [None] * (4 - len(answers))
        legend = f"left: model A, full image — {drawn[0][1]}  \nright: model A, masked — {drawn[1][1]}"
        return (drawn[0][0], drawn[1][0], legend, *answers, "\n\n".join(checks), "")

    def _generate(self, rel, image, question, rho, seed, max_new_tokens, decoding: Decoding
                  ) -> tuple[list[str], list[bool]]:
        """Model `rel`'s answers with the full image (decoded by `decoding`; VCD's noise seeded by the mask seed)
        and, greedy, with image tokens kept iff u_i >= rho."""
        model, processor = self.model(rel)
        prompt = chat_prompt(processor, question)
        n = image_token_counts(processor, [image], [prompt])[0]
        keep = sample_image_keep(n, float(rho), int(seed))
        if decoding.method == "greedy":
            texts = generate(model, processor, [image, image], [prompt, prompt], max_new_tokens=int(max_new_tokens),
                             batch_size=2, image_keep=[torch.ones(n, dtype=torch.bool), keep], progress=False)
            return texts, keep.tolist()
        full = decode(model, processor, [image], [prompt], decoding, max_new_tokens=int(max_new_tokens),
                      contrast_pixels=noise_transforms(decoding.noise_steps, [int(seed)]), progress=False)
        masked = generate(model, processor, [image], [prompt], max_new_tokens=int(max_new_tokens), image_keep=[keep],
                          progress=False)
        return full + masked, keep.tolist()

    # ------------------------------------------------------------ compare runs and benchmarks

    def samples(self, relative: str) -> tuple[dict | None, list[dict]]:
        if relative not in self.index.evals:
            raise io.DataError(f"{relative!r} is not an evaluation found under the runs directory")
        return views.load_eval(self.path(relative))

    def _benchmarks(self, run: str) -> list[str]:
        return views.benchmark_order({s["benchmark"] for s in self.samples(run)[1]})

    @_guarded(gr.skip())
    def compare_benchmarks(self, run_a: str, run_b: str):
        common = [x for x in self._benchmarks(run_a) if x in self._benchmarks(run_b)]
        return gr.update(choices=common, value=common[0] if common else None), \
            "" if common else "⚠️ the two runs share no benchmark"

    @functools.lru_cache(maxsize=8)
    def _compare(self, run_a: str, run_b: str, stamp: tuple) -> dict:
        return compare_runs(self.samples(run_a)[1], self.samples(run_b)[1])

    @_guarded(None, None, "", None)
    def compare(self, run_a: str, run_b: str, benchmark: str, mode: str):
        """-> metric deltas, metric bars, count, items table, status."""
        if not (run_a and run_b and benchmark):
            return None, None, "", None, "pick two evaluations that share a benchmark"
        (metrics_a, samples_a), (metrics_b, samples_b) = self.samples(run_a), self.samples(run_b)
        stamp = tuple((self.path(r) / "samples.jsonl").stat().st_mtime_ns for r in (run_a, run_b))
        deltas = views.delta_rows(self._compare(run_a, run_b, stamp), benchmark)
        keys = [k for k in views.headline_metrics(metrics_a or {}, benchmark)
                if k in views.headline_metrics(metrics_b or {}, benchmark)]
        figure = _figure_image(render.metric_figure({f"A: {run_a}": metrics_a, f"B: {run_b}": metrics_b}, keys)) \
            if keys else None
        pairs = views.paired_items(samples_a, samples_b, benchmark)
        shown = views.filter_pairs(pairs, mode)
        table = [[i, views.sample_question(a)[:80], views.sample_answer(a)[:120], views.sample_answer(b)[:120],
                  views.is_hallucinated(a), views.is_hallucinated(b)] for i, (a, b) in enumerate(shown[:MAX_ROWS])]
        return deltas, figure, f"**{len(shown)} of {len(pairs)} paired items**: {mode}", table, ""

    @_guarded(gr.skip(), None, "", "", None, None, "")
    def compare_item(self, run_a: str, run_b: str, benchmark: str, mode: str, row: float):
        """-> item number, image, legend, question, answer A, answer B, details, status."""
        pairs = views.filter_pairs(views.paired_items(self.samples(run_a)[1], self.samples(run_b)[1], benchmark),
                                   mode) if run_a and run_b and benchmark else []
        if not pairs:
            return 0, None, "", "no item matches", None, None, "", ""
        row = min(max(0, int(row or 0)), len(pairs) - 1)
        a, b = pairs[row]
        image, legend, view_a = self._sample_view(a)
        view_b = self._answer_view(b)
        details = f"**A** ({run_a})\n\n{views.sample_details(a)}\n\n---\n\n**B** ({run_b})\n\n" + \
            views.sample_details(b)
        question = f"**Item {row} of {len(pairs)}** · {views.sample_question(a)}"
        synonyms = self.truth.synonyms
        return row, image, legend, question, view_a.spans(synonyms), view_b.spans(synonyms), details, ""

    def _answer_view(self, sample: dict) -> views.AnswerView:
        name = sample.get("image")
        return views.AnswerView(views.sample_answer(sample), self.truth, self.truth.classes(name) if name else None)

    def _sample_view(self, sample: dict) -> tuple[Image.Image | None, str, views.AnswerView]:
        """(image with its overlay, legend, answer view) of one evaluation sample."""
        view, name = self._answer_view(sample), sample.get("image")
        if not name:
            return None, "this sample names no image file", view
        return (*self._overlay(io.load_image(self.image(name)), self.truth.scene(name), view), view)

    @_guarded(gr.skip())
    def bench_names(self, run: str):
        names = self._benchmarks(run)
        return gr.update(choices=names, value=names[0] if names else None), ""

    def _bench_items(self, run: str, benchmark: str, only: bool) -> list[dict]:
        items = [s for s in self.samples(run)[1] if s["benchmark"] == benchmark] if run and benchmark else []
        return [s for s in items if views.is_hallucinated(s)] if only else items

    @_guarded(None, "", None, gr.skip())
    def bench(self, run: str, benchmark: str, only: bool):
        """-> metric bars, count, items table, item number, status."""
        if not (run and benchmark):
            return None, "", None, 0, "pick an evaluation"
        metrics, samples = self.samples(run)
        keys = views.headline_metrics(metrics or {}, benchmark)
        figure = _figure_image(render.metric_figure({run: metrics}, keys)) if keys else None
        items = self._bench_items(run, benchmark, only)
        total = sum(s["benchmark"] == benchmark for s in samples)
        count = f"**{len(items)} of {total} items** of {benchmark}" + (" (hallucinated only)" if only else "") + \
            ("" if metrics is not None else " · no results.json: no metrics")
        table = [[i, views.sample_question(s)[:80], views.sample_answer(s)[:120], views.is_hallucinated(s)]
                 for i, s in enumerate(items[:MAX_ROWS])]
        return figure, count, table, 0, ""

    @_guarded(gr.skip(), None, "", "", None, "")
    def bench_item(self, run: str, benchmark: str, only: bool, index: float):
        """-> item number, image, legend, question, answer spans, details, status."""
        items = self._bench_items(run, benchmark, only)
        if not items:
            return 0, None, "", "no item", None, "", ""
        index = min(max(0, int(index or 0)), len(items) - 1)
        image, legend, view = self._sample_view(items[index])
        question = f"**Item {index} of {len(items)}** · {views.sample_question(items[index])}"
        return index, image, legend, question, view.spans(self.truth.synonyms), views.sample_details(items[index]), ""


    # ------------------------------------------------------------ RL runs

    def rl_run(self, relative: str) -> tuple[Path, list[dict]]:
        if relative not in self.index.rl_runs:
            raise io.DataError(f"{relative!r} is not an RL run found under the runs directory")
        path = self.path(relative)
        return path, views.load_rl_samples(path)

    @_guarded(None, "", gr.skip())
    def open_rl(self, relative: str):
        """-> training-curve figure, summary (steps, collapse flags), step number, status."""
        if not relative:
            return None, "", 0, "pick an RL run"
        path, samples = self.rl_run(relative)
        steps = sorted({s["step"] for s in samples})
        curve = path / "rl_curve.jsonl"
        source = curve if curve.is_file() else path / "metrics.jsonl"
        log = io.read_jsonl(source) if source.is_file() else []
        figure = _figure_image(plots.training_figure(log, plots.RL_PANELS if source == curve else views.RL_METRICS)) \
            if log else None
        summary = f"**{len(samples)} samples** over {len(steps)} logged step(s) ({steps[0]}-{steps[-1]})"
        if (path / "collapse.json").is_file():
            flags = io.read_json(path / "collapse.json")
            summary += " · " + views.collapse_text(flags)
        return figure, summary, steps[0], ""

    @_guarded("", None, gr.skip(), gr.skip())
    def rl_step(self, relative: str, step: float):
        """-> count, samples table, step shown (the nearest logged one), row, status."""
        if not relative:
            return "", None, 0, 0, "pick an RL run"
        _, samples = self.rl_run(relative)
        step, rows = views.rl_step_samples(samples, _bounded("step", step or 0, 0, MAX_STEP, int))
        table = [[i, str(s["id"]), s["sample"], views.rounded(s.get("reward")), s["response"][:120],
                  views.sample_hallucinated(s, self.truth)] for i, s in enumerate(rows[:MAX_ROWS])]
        return f"**Step {step}**: {len(rows)} samples", table, step, 0, ""

    @_guarded(gr.skip(), None, "", "", None, "")
    def rl_item(self, relative: str, step: float, row: float):
        """-> row, image, legend, prompt, response spans, details, status."""
        if not relative:
            return 0, None, "", "", None, "", "pick an RL run"
        _, samples = self.rl_run(relative)
        step, rows = views.rl_step_samples(samples, _bounded("step", step or 0, 0, MAX_STEP, int))
        row = min(_bounded("sample #", row or 0, 0, MAX_STEP, int), len(rows) - 1)
        s = rows[row]
        name = s.get("image")
        present = self.truth.classes(name) if name else None
        view = views.AnswerView(s["response"], self.truth, present)
        scene = self.truth.scene(name) if name else None
        image, legend = None, "this sample names no image (written before samples carried one)"
        if name:
            image, legend = self._overlay(io.load_image(self.image(name)), scene, view)
        prompt = f"**Step {step}, sample {row} of {len(rows)}** · id `{s['id']}` · image `{name}`\n\n" \
                 f"**Prompt:** {s.get('prompt', '(not logged)')}"
        details = self._checks("response", view, scene) + "\n\n" + \
            "\n".join(f"- **{k}**: {v}" for k, v in s.items() if k not in ("response", "prompt"))
        return row, image, legend, prompt, view.spans(self.truth.synonyms), details, ""


def _row_of(evt: gr.SelectData) -> int:
    return int(evt.index[0])


def _dropdown(label, choices, elem_id, value=None, **kw):
    return gr.Dropdown(choices=choices, value=value if value is not None else (choices[0] if choices else None),
                       label=label, elem_id=elem_id, **kw)


def _spans_box(label: str, elem_id: str, diff: bool = False):
    colors = render.SPAN_COLORS if diff else {k: render.SPAN_COLORS[k] for k in render.OBJECT_LABELS}
    return gr.HighlightedText(label=label, elem_id=elem_id, color_map=colors, show_legend=True)


def _image_box(label: str, elem_id: str, **kw):
    return gr.Image(label=label, elem_id=elem_id, type="pil", format="png", interactive=False, height=400, **kw)


def _figure_box(label: str, elem_id: str, **kw):
    return gr.Image(label=label, elem_id=elem_id, type="pil", format="png", interactive=False, **kw)


def _item_view(prefix: str, image_label: str, answers: list[tuple[str, str]]):
    """One item's view: the image and its legend beside the question, the answers (label, id suffix) as
    highlighted spans and the details -> (image, legend, question, answers, details)."""
    with gr.Row():
        with gr.Column(scale=2):
            image = _image_box(image_label, f"{prefix}-image")
            legend = gr.Markdown()
        with gr.Column(scale=3):
            question = gr.Markdown(elem_id=f"{prefix}-question")
            boxes = tuple(_spans_box(label, f"{prefix}-{suffix}") for label, suffix in answers)
            details = gr.Markdown(elem_id=f"{prefix}-details")
    return image, legend, question, boxes, details


def _table(headers: list[str], label: str, elem_id: str, widths: list[str]):
    return gr.Dataframe(headers=headers, label=label, elem_id=elem_id, interactive=False, wrap=True,
                        column_widths=widths, max_height=320)


def build_demo(runs_dir, world_dir=None, coco_dir=None, device: str = "cpu") -> gr.Blocks:
    """The inspector's Blocks over the runs under `runs_dir` (not launched). `world_dir` gives images and ground
    truth (default: a world found under the runs directory); `coco_dir`, COCO annotations for COCO images."""
    app = Inspector(runs_dir, world_dir, coco_dir, device)
    with gr.Blocks(title="mmstudy inspector", analytics_enabled=False) as demo:
        gr.Markdown("# mmstudy inspector\nWhere a model hallucinates, and what preference alignment changed.")
        summary = gr.Markdown(app.index.summary_markdown(), elem_id="summary")
        with gr.Row():
            rescan = gr.Button("Rescan the runs directory", size="sm", scale=0, min_width=220)
        with gr.Tab("Preference pairs"):
            pair_file = _pairs_tab(demo, app)
        with gr.Tab("Live"):
            model_a, model_b = _live_tab(app)
        with gr.Tab("Compare runs"):
            run_a, run_b = _compare_tab(demo, app)
        with gr.Tab("Benchmarks"):
            run = _bench_tab(demo, app)
        with gr.Tab("RL runs"):
            rl = _rl_tab(demo, app)

        def rescanned():
            app.rescan()
            index = app.index
            return (index.summary_markdown(), gr.update(choices=index.preferences),
                    gr.update(choices=index.models), gr.update(choices=[NONE] + index.models),
                    *[gr.update(choices=index.evals)] * 3, gr.update(choices=index.rl_runs))

        rescan.click(rescanned, outputs=[summary, pair_file, model_a, model_b, run_a, run_b, run, rl])
    return demo


def _pairs_tab(demo, app: Inspector):
    with gr.Row():
        file = _dropdown("preference file", app.index.preferences, "pair-file", scale=3)
        index = gr.Number(0, label="pair #", precision=0, minimum=0, elem_id="pair-index", scale=1)
        prev, nxt = gr.Button("◀ previous", scale=1), gr.Button("next ▶", scale=1)
    status = gr.Markdown(elem_id="pair-status")
    file_summary = gr.Markdown(elem_id="pair-summary")
    with gr.Row():
        with gr.Column(scale=1):
            image = _image_box("image (upscaled; overlays explained below)", "pair-image")
            legend = gr.Markdown(elem_id="pair-legend")
            with gr.Accordion("BDHS mask (recomputed from the pair's seed)", open=False):
                rho = gr.Number(DEFAULT_RHO, label="ρ_th", minimum=0, maximum=1)
                tokens = gr.Number(DEFAULT_IMAGE_TOKENS, label="image tokens", precision=0, minimum=1,
                                   maximum=MAX_IMAGE_TOKENS)
        with gr.Column(scale=1):
            prompt = gr.Markdown(elem_id="pair-prompt")
            chosen = _spans_box("chosen (y+)", "pair-chosen", diff=True)
            rejected = _spans_box("rejected (y-)", "pair-rejected", diff=True)
            objects = gr.Markdown(elem_id="pair-objects")
            with gr.Accordion("provenance", open=True):
                meta = gr.Markdown(elem_id="pair-meta")
    plot = _figure_box("BDHS acceptance per iteration (from the pairs' provenance)", "pair-plot", visible=False)
    shown = [index, image, legend, prompt, chosen, rejected, objects, meta, status]
    inputs = [file, index, rho, tokens]
    opened = [index, rho, tokens, file_summary, plot, status]
    file.change(app.open_pairs, file, opened).then(app.show_pair, inputs, shown)
    demo.load(app.open_pairs, file, opened).then(app.show_pair, inputs, shown)
    for box in (index, rho, tokens):
        box.submit(app.show_pair, inputs, shown)
    prev.click(lambda i: max(0, int(i or 0) - 1), index, index).then(app.show_pair, inputs, shown)
    nxt.click(lambda i: int(i or 0) + 1, index, index).then(app.show_pair, inputs, shown)
    return file


def _live_tab(app: Inspector):
    images, models = app.world_images(), app.index.models
    with gr.Row():
        with gr.Column(scale=2):
            name = _dropdown("world image", images, "live-image-name")
            upload = gr.Image(label="…or upload an image (used when present)", type="pil", sources=["upload"],
                              height=160, elem_id="live-upload")
            question = gr.Textbox(CAPTION_EVAL_PROMPT, label="question", elem_id="live-question")
        with gr.Column(scale=2):
            model_a = _dropdown("model A", models, "live-model-a")
            model_b = _dropdown("model B (optional)", [NONE] + models, "live-model-b",
                                value=models[1] if len(models) > 1 else NONE)
            rho = gr.Slider(0, 1, value=DEFAULT_RHO, step=0.01, label="ρ_th of the masked answer (keep image token "
                            "i iff u_i ≥ ρ_th; 0 keeps all)", elem_id="live-rho")
            with gr.Row():
                seed = gr.Number(0, label="mask seed", precision=0)
                tokens = gr.Slider(8, MAX_NEW_TOKENS, value=64, step=8, label="max new tokens")
            decoding = gr.Textbox("greedy", label="decoding of the full-image answers: greedy, vcd[:alpha=1,...], "
                                  "pai[:alpha=0.2,...] (docs/decoding.md)", elem_id="live-decoding")
            run = gr.Button("Generate", variant="primary", elem_id="live-run")
    status = gr.Markdown(elem_id="live-status")
    with gr.Row():
        full = _image_box("model A, full image", "live-image-full")
        masked = _image_box("model A, image tokens masked (kept patches outlined)", "live-image-masked")
    legend = gr.Markdown(elem_id="live-legend")
    with gr.Row():
        a_full, a_masked = _spans_box("A: full image", "live-a-full"), _spans_box("A: masked", "live-a-masked")
    with gr.Row():
        b_full, b_masked = _spans_box("B: full image", "live-b-full"), _spans_box("B: masked", "live-b-masked")
    checks = gr.Markdown(elem_id="live-checks")
    run.click(app.live, [name, upload, question, model_a, model_b, rho, seed, tokens, decoding],
              [full, masked, legend, a_full, a_masked, b_full, b_masked, checks, status])
    return model_a, model_b


def _compare_tab(demo, app: Inspector):
    evals = app.index.evals
    with gr.Row():
        run_a = _dropdown("run A (e.g. the base model)", evals, "cmp-a")
        run_b = _dropdown("run B (e.g. the aligned model)", evals, "cmp-b", value=evals[1] if len(evals) > 1 else None)
        bench = gr.Dropdown(label="benchmark", elem_id="cmp-bench")
    mode = gr.Radio(list(views.FILTERS), value="all items", label="items", elem_id="cmp-filter")
    status = gr.Markdown(elem_id="cmp-status")
    deltas = _table(["metric", "A", "B", "B - A", "95% CI of B - A", "n"], "paired differences B - A "
                    "(compare_runs, items both runs answered)", "cmp-deltas",
                    ["28%", "12%", "12%", "12%", "26%", "10%"])
    plot = _figure_box("metrics of each run with 95% intervals (results.json)", "cmp-plot")
    count = gr.Markdown(elem_id="cmp-count")
    items = _table(["#", "question", "answer A", "answer B", "A halluc.", "B halluc."], "items (click a row)",
                   "cmp-items", ["5%", "23%", "29%", "29%", "7%", "7%"])
    row = gr.Number(0, label="item #", precision=0, minimum=0, elem_id="cmp-row")
    image, legend, question, (answer_a, answer_b), details = _item_view(
        "cmp", "image (objects; red: A's hallucinations)", [("answer A", "answer-a"), ("answer B", "answer-b")])
    table_outputs = [deltas, plot, count, items, status]
    item_inputs = [run_a, run_b, bench, mode, row]
    item_outputs = [row, image, legend, question, answer_a, answer_b, details, status]
    for source in (run_a, run_b):
        source.change(app.compare_benchmarks, [run_a, run_b], [bench, status])
    for source in (bench, mode):
        source.change(app.compare, [run_a, run_b, bench, mode], table_outputs).then(
            lambda: 0, None, row).then(app.compare_item, item_inputs, item_outputs)
    demo.load(app.compare_benchmarks, [run_a, run_b], [bench, status])
    items.select(_row_of, None, row).then(app.compare_item, item_inputs, item_outputs)
    row.submit(app.compare_item, item_inputs, item_outputs)
    return run_a, run_b


def _bench_tab(demo, app: Inspector):
    with gr.Row():
        run = _dropdown("evaluation", app.index.evals, "bench-run")
        bench = gr.Dropdown(label="benchmark", elem_id="bench-name")
        only = gr.Checkbox(False, label="hallucinated items only", elem_id="bench-only")
    status = gr.Markdown(elem_id="bench-status")
    plot = _figure_box("metrics with 95% intervals (results.json)", "bench-plot")
    count = gr.Markdown(elem_id="bench-count")
    items = _table(["#", "question", "answer", "hallucinated"], "items (click a row)", "bench-items",
                   ["6%", "34%", "50%", "10%"])
    with gr.Row():
        index = gr.Number(0, label="item #", precision=0, minimum=0, elem_id="bench-index", scale=2)
        prev, nxt = gr.Button("◀ previous", scale=1), gr.Button("next ▶", scale=1)
    image, legend, question, (answer,), details = _item_view("bench", "image", [("answer", "answer")])
    item_inputs = [run, bench, only, index]
    item_outputs = [index, image, legend, question, answer, details, status]
    run.change(app.bench_names, run, [bench, status])
    demo.load(app.bench_names, run, [bench, status])
    for source in (bench, only):
        source.change(app.bench, [run, bench, only], [plot, count, items, index, status]).then(
            app.bench_item, item_inputs, item_outputs)
    index.submit(app.bench_item, item_inputs, item_outputs)
    prev.click(lambda i: max(0, int(i or 0) - 1), index, index).then(app.bench_item, item_inputs, item_outputs)
    nxt.click(lambda i: int(i or 0) + 1, index, index).then(app.bench_item, item_inputs, item_outputs)
    items.select(_row_of, None, index).then(app.bench_item, item_inputs, item_outputs)
    return run


def _rl_tab(demo, app: Inspector):
    with gr.Row():
        run = _dropdown("RL run (RLOO, GRPO)", app.index.rl_runs, "rl-run", scale=3)
        step = gr.Number(1, label="step", precision=0, minimum=0, elem_id="rl-step", scale=1)
        prev, nxt = gr.Button("◀ step", scale=1), gr.Button("step ▶", scale=1)
    status = gr.Markdown(elem_id="rl-status")
    summary = gr.Markdown(elem_id="rl-summary")
    plot = _figure_box("training curve (rl_curve.jsonl, else metrics.jsonl)", "rl-plot")
    count = gr.Markdown(elem_id="rl-count")
    items = _table(["#", "prompt id", "sample", "reward", "response", "hallucinated"], "samples (click a row)",
                   "rl-items", ["5%", "15%", "7%", "8%", "55%", "10%"])
    row = gr.Number(0, label="sample #", precision=0, minimum=0, elem_id="rl-row")
    image, legend, prompt, (response,), details = _item_view(
        "rl", "image (objects; red: the response's hallucinations)", [("response", "response")])
    item_inputs, item_outputs = [run, step, row], [row, image, legend, prompt, response, details, status]
    step_outputs = [count, items, step, row, status]
    for trigger in (run.change, demo.load):
        trigger(app.open_rl, run, [plot, summary, step, status]).then(app.rl_step, [run, step], step_outputs).then(
            app.rl_item, item_inputs, item_outputs)
    step.submit(app.rl_step, [run, step], step_outputs).then(app.rl_item, item_inputs, item_outputs)
    for button, move in ((prev, -1), (nxt, 1)):
        button.click(lambda s, d=move: int(s or 0) + d, step, step).then(
            app.rl_step, [run, step], step_outputs).then(app.rl_item, item_inputs, item_outputs)
    items.select(_row_of, None, row).then(app.rl_item, item_inputs, item_outputs)
    row.submit(app.rl_item, item_inputs, item_outputs)
    return run


def launch(demo: gr.Blocks, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True):
    """Serve the inspector on host:port (127.0.0.1 by default: the page shows local files; expose it on purpose).
    No extra file paths are allowed for Gradio's file route: images reach the page as pixels."""
    if host != DEFAULT_HOST:
        logger.warning("serving the inspector on %s: anyone who can reach it sees the runs directory", host)
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                       ssr_mode=False, quiet=not block, footer_links=[], max_file_size="20mb")
