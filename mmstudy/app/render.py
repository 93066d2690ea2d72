"""How the inspector (`mmstudy.app.ui`) draws things: highlighted text spans and word diffs, upscaled images with
object boxes and BDHS patches, and the metric and BDHS figures. Plain functions over plain data (no Gradio); the
runs, paths and samples they draw come from `mmstudy.app.views`.

    >>> chosen_spans, rejected_spans = diff_spans(pair["chosen"], pair["rejected"])
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from mmstudy.benchmarks import chair as chair_lib
from mmstudy.data.bdhs import BDHSConfig, bdhs_statistics
from mmstudy.plots import bdhs_figure as draw
from mmstudy.plots import plt
from mmstudy.textdiff import diff_words, words
from mmstudy.world.scene import Scene

DISPLAY_PX = 384            # small images (the world's 48 px) are upscaled, nearest neighbour, to about this size
CHANGED, ONLY_CHOSEN, ONLY_REJECTED = "changed", "only in chosen", "only in rejected"
ABSENT, PRESENT, UNCHECKED = "not in the image", "in the image", "object (no ground truth)"
OBJECT_LABELS = (ABSENT, PRESENT, UNCHECKED)
SPAN_COLORS = {CHANGED: "#f5c542", ONLY_CHOSEN: "#7fb3ff", ONLY_REJECTED: "#ff9f5a", ABSENT: "#ff4d4d",
               PRESENT: "#4ccf6a", UNCHECKED: "#c0c0c0"}
_TOKEN = re.compile(r"\w+(?:['\u2019]\w+)*")   # `review.words`' unit, found in the original text

# ---------------------------------------------------------------- text spans


def _tokens(text: str) -> list[re.Match] | None:
    """Matches of `review.words`' words in the original text, or None when the two tokenizations disagree."""
    found = list(_TOKEN.finditer(text))
    return found if [m.group().lower().replace("\u2019", "'") for m in found] == words(text) else None


def aligned_labels(a: Sequence[str], b: Sequence[str]) -> tuple[list[str | None], list[str | None]]:
    """Per-word labels of `review.diff_words(a, b)`: for a, None (kept), CHANGED or ONLY_CHOSEN; for b, None,
    CHANGED or ONLY_REJECTED. diff_words leaves matches implicit; the script is replayed from the end, matching
    equal words first, as its backtrace does (equal last words are always matched by a minimal script)."""
    ops = diff_words(a, b)
    la, lb = [None] * len(a), [None] * len(b)
    i, j, k = len(a), len(b), len(ops) - 1
    while i or j:
        if i and j and a[i - 1] == b[j - 1]:
            i, j = i - 1, j - 1
            continue
        kind = ops[k][0] if k >= 0 else None
        if kind is None or (kind != "insert" and not i) or (kind != "delete" and not j):
            raise ValueError("the word diff could not be replayed")   # not for a script from diff_words
        k -= 1
        if kind in ("substitute", "delete"):
            i -= 1
            la[i] = CHANGED if kind == "substitute" else ONLY_CHOSEN
        if kind in ("substitute", "insert"):
            j -= 1
            lb[j] = CHANGED if kind == "substitute" else ONLY_REJECTED
    return la, lb


def spans(text: str, labels: Sequence[str | None] | None = None,
          objects: dict[str, str] | None = None, synonyms=None) -> list[tuple[str, str | None]]:
    """The text cut into (segment, label) pieces for a highlighted view: word i gets labels[i]; a word naming an
    object class in `objects` (class -> status) gets that status instead (objects matter most)."""
    found = _tokens(text)
    if found is None:   # exotic Unicode that lower() reshapes: show the words alone
        ws = words(text)
        return [(w + " ", (labels or [None] * len(ws))[i]) for i, w in enumerate(ws)]
    named = _object_tokens(text, found, objects, synonyms) if objects and synonyms is not None else {}
    out, pos = [], 0
    for i, m in enumerate(found):
        if m.start() > pos:
            out.append((text[pos:m.start()], None))
        label = named.get(i, labels[i] if labels is not None else None)
        out.append((m.group(), label))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], None))
    return merge_spans(out)


def _object_tokens(text: str, found: Sequence, objects: dict[str, str], synonyms) -> dict[int, str]:
    """Token index -> status of the object class it names; a two-word noun ("traffic light") labels both words."""
    named: dict[int, str] = {}
    for i, m in enumerate(found):
        if i + 1 < len(found):
            two = chair_lib.extract_objects(text[m.start():found[i + 1].end()], synonyms)
            if any(" " in w and c in objects for w, c in two):
                cls = next(c for w, c in two if " " in w)
                named[i] = named[i + 1] = objects[cls]
                continue
        hit = chair_lib.extract_objects(m.group(), synonyms)
        if i not in named and hit and hit[0][1] in objects:
            named[i] = objects[hit[0][1]]
    return named


def merge_spans(pieces: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Adjacent pieces with the same label joined, white space between two equally labelled words included, so
    a changed phrase reads as one highlight."""
    pieces = list(pieces)
    for k in range(1, len(pieces) - 1):
        text, label = pieces[k]
        if label is None and not text.strip() and pieces[k - 1][1] is not None \
                and pieces[k - 1][1] == pieces[k + 1][1]:
            pieces[k] = (text, pieces[k - 1][1])
    out: list[tuple[str, str | None]] = []
    for text, label in pieces:
        if out and out[-1][1] == label:
            out[-1] = (out[-1][0] + text, label)
        else:
            out.append((text, label))
    return out


def diff_spans(chosen: str, rejected: str, chosen_objects: dict[str, str] | None = None,
               rejected_objects: dict[str, str] | None = None, synonyms=None) -> tuple[list, list]:
    """Highlighted (segment, label) pieces of chosen and rejected: the word-level diff, with object words labelled
    by their ground-truth status."""
    la, lb = aligned_labels(words(chosen), words(rejected))
    return (spans(chosen, la, chosen_objects, synonyms), spans(rejected, lb, rejected_objects, synonyms))


# ---------------------------------------------------------------- images


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):   # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def display_scale(image: Image.Image) -> int:
    """The integer factor that brings a small image to about DISPLAY_PX (1 for images already that large)."""
    return max(1, round(DISPLAY_PX / max(image.size)))


def draw_patches(canvas: Image.Image, keep: Sequence[bool]) -> str:
    """Darken the image patches hidden from the LM and outline the kept ones, on an already upscaled canvas; the
    keep vector is read row-major over a square grid. Returns a note for the legend."""
    n = len(keep)
    side = math.isqrt(n)
    if side * side != n or n == 0:
        return f"({n} image tokens do not form a square grid: patches not drawn)"
    w, h = canvas.size
    shade = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    dim, draw = ImageDraw.Draw(shade), ImageDraw.Draw(canvas)
    boxes = [(c * w / side, r * h / side, (c + 1) * w / side - 1, (r + 1) * h / side - 1)
             for r in range(side) for c in range(side)]
    for box, kept in zip(boxes, keep):
        if not kept:
            dim.rectangle(box, fill=(0, 0, 0, 110))
    canvas.alpha_composite(shade)
    for box, kept in zip(boxes, keep):
        if kept:
            draw.rectangle(box, outline=(255, 221, 0, 255), width=3)
    return f"{int(sum(bool(k) for k in keep))} of {n} image patches kept (outlined); the dark ones were hidden"


def render_image(image: Image.Image, scene: Scene | None = None, mentioned: set[str] = frozenset(),
                 hallucinated: dict[str, int | None] | None = None, keep: Sequence[bool] | None = None,
                 named_in: str = "the text") -> tuple[Image.Image, str]:
    """The image upscaled (nearest) for display, with BDHS's kept patches, the scene's objects boxed (green when
    named in the text, white otherwise) and each hallucinated object's claimed cell (`claimed_cells`) in red.
    Returns (image, legend in Markdown)."""
    scale = display_scale(image)
    canvas = image.convert("RGBA").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    legend = [draw_patches(canvas, [bool(k) for k in keep])] if keep is not None else []
    draw, font = ImageDraw.Draw(canvas), _font(max(11, 2 * scale))
    for obj in scene.objects if scene is not None else []:
        x, y, w, h = (v * scale for v in obj.bbox)
        color = (60, 220, 90, 255) if obj.name in mentioned else (255, 255, 255, 255)
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=color, width=2)
        draw.text((x + 2, y + 1), obj.name, fill=color, font=font, stroke_width=2, stroke_fill=(0, 0, 0, 255))
    if scene is not None:
        legend.append(f"boxes: the scene's objects (green: named in {named_in})")
    cell = canvas.width / 3   # the world's 3 x 3 grid of positions
    for cls, where in (hallucinated or {}).items():
        if where is not None:
            r, c = divmod(where, 3)
            box = (c * cell + 3, r * cell + 3, (c + 1) * cell - 4, (r + 1) * cell - 4)
            draw.rectangle(box, outline=(255, 40, 40, 255), width=3)
            draw.text((box[0] + 4, box[3] - 2), f"{cls}?", fill=(255, 40, 40, 255), font=font, anchor="ld",
                      stroke_width=2, stroke_fill=(0, 0, 0, 255))
    if hallucinated:
        legend.append("not in the image: " + ", ".join(
            f"**{c}**" + (" (red: the cell it was claimed at)" if w is not None else " (no position claimed)")
            for c, w in hallucinated.items()))
    return canvas.convert("RGB"), "; ".join(legend)


def side_by_side(*images: Image.Image, gap: int = 12) -> Image.Image:
    """Images next to each other on a white strip (the pair view: objects | BDHS's view of the image)."""
    out = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1),
                            max(im.height for im in images)), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


# ---------------------------------------------------------------- figures


def metric_figure(runs: dict[str, dict], keys: Sequence[str]):
    """Small multiples, one panel per metric: a bar per run with its 95 % interval (the `<metric>_ci95_low` /
    `_high` keys of results.json) as an error bar, and its value written above it."""
    ncols = min(5, max(1, len(keys)))
    nrows = math.ceil(len(keys) / ncols) if keys else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.5 * nrows), squeeze=False)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    names = list(runs)
    for ax, key in zip(axes.flat, keys):
        top = 0.0
        for i, name in enumerate(names):
            value = runs[name].get(key)
            if not isinstance(value, (int, float)):
                continue
            low, high = runs[name].get(f"{key}_ci95_low"), runs[name].get(f"{key}_ci95_high")
            err = [[max(0.0, value - low)], [max(0.0, high - value)]] if low is not None and high is not None else None
            ax.bar(i, value, color=colors[i % len(colors)], yerr=err, capsize=4)
            top = max(top, value, high if high is not None else value)
            ax.annotate(f"{value:.3g}", (i, value), textcoords="offset points", xytext=(9, 3), fontsize=8)
        if 0.0 <= top <= 1.0:   # shares and rates: the whole [0, 1] range, so that 0 shows as nothing
            ax.set_ylim(0, 1.05)
        ax.set_title(key, fontsize=9)
        ax.set_xticks(range(len(names)), [n if len(n) <= 18 else "…" + n[-17:] for n in names], fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("bar: value · whiskers: 95 % bootstrap interval", fontsize=9)
    fig.tight_layout()
    return fig


def bdhs_figure(records: Sequence[dict], config: dict | None):
    """BDHS acceptance per iteration and final similarities (`plots.bdhs_figure`) of a file's BDHS pairs, from
    their provenance; `config` is the run's BDHS config (stats.json) or None (defaults, iterations from the data)."""
    pairs = [r for r in records if str(r.get("source", "")).startswith("bdhs_") and "iterations"
             in r.get("provenance", {})]
    if not pairs:
        return None
    fields = set(BDHSConfig.__dataclass_fields__)
    cfg = BDHSConfig(**{k: v for k, v in (config or {}).items() if k in fields})
    most = max(r["provenance"]["iterations"] for r in pairs)
    if cfg.iterations < most:
        cfg = BDHSConfig(**{**cfg.__dict__, "iterations": most})
    return draw(bdhs_statistics(pairs, cfg))
