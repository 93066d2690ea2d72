"""The synthetic image world: scenes with exact ground truth, a co-occurrence prior, and their rendering.

Every image is a 3x3 grid of cells over a context background (kitchen, street, park, office). Objects are
glyphs (shape + colour + texture) named with COCO nouns. Objects come in context-specific *pairs* that co-occur
strongly (fork with knife, car with traffic light, ...): that prior is what a language model learns from the
captions, and what makes it name an absent partner when the image is ambiguous -- the hallucinations the paper
studies and POPE's adversarial split probes. Difficulty knobs (small objects, faint or occluded objects,
look-alike clutter, pixel noise) decide how often the image is ambiguous. Two more knobs put the prior into the
instruction data itself, as in LLaVA's: `p_drift` (long descriptions that end by naming an absent partner) and
`p_prior_yes` (questions about an absent partner answered "yes"). The defaults keep the glyphs clear and the
instruction data prior-driven, so that the base model's hallucinations are its language model's, against
evidence its image tokens hold (measured by `mmstudy.evaluation.headroom`; docs/sensitivity.md).

    >>> spec = WorldSpec.for_profile("smoke"); scene = sample_scene(spec, seed=0, split="train", index=0)
    >>> image = render_scene(spec, scene, seed=0)          # a PIL image, exact boxes in scene.objects
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from mmstudy.runs import derive_seed

logger = logging.getLogger(__name__)

WORLD_VERSION = 3   # 2: clearer glyphs, prior-driven errors in the instruction data (the headroom issue); 3: 3,000
#                     caption images (the power of CHAIR_i, docs/sensitivity.md); training scenes as in 2
SUPERSAMPLE = 4  # glyphs are drawn at 4x and box-filtered down, so small objects stay anti-aliased

COLOURS = {
    "red": (214, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (40, 170, 60),
    "cyan": (40, 205, 220), "blue": (50, 80, 225), "purple": (150, 60, 205), "pink": (245, 120, 185),
    "white": (240, 240, 240), "brown": (140, 85, 35), "grey": (150, 150, 150),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "hbar", "vbar", "hexagon")
TEXTURES = ("solid", "striped", "dotted")


@dataclass(frozen=True)
class ObjectClass:
    name: str             # canonical COCO noun, may be two words ("traffic light")
    plural: str           # plural form used in captions
    shape: str            # one of SHAPES
    colour: str           # key of COLOURS
    texture: str          # one of TEXTURES
    synonyms: tuple = ()  # other nouns captions may use for it (listed in the world's synonyms.txt)


# The 24 classes. Look-alikes inside a context (white utensils, grey office items) are deliberate: when an
# object is small or faint the glyph alone is ambiguous and the co-occurrence prior decides.
CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("fork", "forks", "cross", "white", "solid"),
    ObjectClass("knife", "knives", "vbar", "white", "solid"),
    ObjectClass("spoon", "spoons", "ring", "white", "solid"),
    ObjectClass("bowl", "bowls", "circle", "orange", "striped"),
    ObjectClass("cup", "cups", "square", "cyan", "solid", ("mug",)),
    ObjectClass("bottle", "bottles", "vbar", "green", "solid"),
    ObjectClass("car", "cars", "square", "red", "solid", ("automobile", "sedan")),
    ObjectClass("bus", "buses", "hbar", "yellow", "solid"),
    ObjectClass("bicycle", "bicycles", "ring", "blue", "solid", ("bike",)),
    ObjectClass("traffic light", "traffic lights", "vbar", "yellow", "dotted"),
    ObjectClass("stop sign", "stop signs", "hexagon", "red", "solid"),
    ObjectClass("person", "people", "diamond", "pink", "solid", ("man", "woman")),
    ObjectClass("dog", "dogs", "circle", "brown", "solid", ("puppy",)),
    ObjectClass("frisbee", "frisbees", "circle", "yellow", "solid"),
    ObjectClass("bench", "benches", "hbar", "brown", "solid"),
    ObjectClass("bird", "birds", "triangle", "blue", "solid"),
    ObjectClass("kite", "kites", "diamond", "orange", "solid"),
    ObjectClass("umbrella", "umbrellas", "triangle", "purple", "striped"),
    ObjectClass("laptop", "laptops", "square", "grey", "solid", ("computer",)),
    ObjectClass("keyboard", "keyboards", "hbar", "grey", "dotted"),
    ObjectClass("mouse", "mice", "circle", "grey", "solid"),
    ObjectClass("book", "books", "square", "purple", "striped"),
    ObjectClass("chair", "chairs", "cross", "brown", "solid"),
    ObjectClass("clock", "clocks", "star", "cyan", "solid"),
)
CLASS_INDEX = {c.name: i for i, c in enumerate(CLASSES)}


@dataclass(frozen=True)
class Context:
    name: str
    background: tuple     # base RGB of the background
    pattern: str          # "tiles", "lanes", "grass", "carpet": the visual cue of the context
    pairs: tuple          # ((anchor, partner, weight), ...): strongly co-occurring pairs, weight = how common


CONTEXTS: tuple[Context, ...] = (
    Context("kitchen", (120, 100, 80), "tiles", (("fork", "knife", 0.45), ("bowl", "spoon", 0.35),
                                                  ("cup", "bottle", 0.20))),
    Context("street", (70, 70, 78), "lanes", (("car", "traffic light", 0.45), ("bus", "stop sign", 0.35),
                                               ("bicycle", "person", 0.20))),
    Context("park", (60, 115, 60), "grass", (("dog", "frisbee", 0.45), ("bench", "bird", 0.35),
                                              ("kite", "umbrella", 0.20))),
    Context("office", (85, 95, 125), "carpet", (("keyboard", "mouse", 0.45), ("laptop", "book", 0.35),
                                                 ("chair", "clock", 0.20))),
)
CONTEXT_INDEX = {c.name: i for i, c in enumerate(CONTEXTS)}

POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


@dataclass(frozen=True)
class WorldSpec:
    """Everything that decides what a world looks like. `for_profile` gives the shipped profiles."""

    image_size: int = 48            # px, square; a 3x3 grid of cells of image_size/3 px
    n_train: int = 20000            # training images
    n_val: int = 3200               # held-out images (benchmarks draw from these)
    min_groups: int = 1             # co-occurrence groups per scene, inclusive range
    max_groups: int = 3
    p_both: float = 0.62            # a group shows both anchor and partner ...
    p_anchor_only: float = 0.23     # ... only the anchor (else only the partner)
    p_outlier: float = 0.15         # chance of one extra object from another context
    p_duplicate: float = 0.2        # chance that one object appears twice (counting)
    p_small: float = 0.35           # share of small objects
    large_radius: tuple = (0.36, 0.46)   # glyph radius as a fraction of the cell, uniform range
    small_radius: tuple = (0.18, 0.26)
    p_faint: float = 0.2            # share of faint objects (blended into the background)
    faint_alpha: tuple = (0.5, 0.85)     # opacity range of faint objects
    p_occluded: float = 0.15        # share of objects partly covered by an occluder
    occlusion: tuple = (0.15, 0.4)  # covered share of the glyph's box, uniform range
    max_clutter: int = 2            # look-alike distractor marks per scene, uniform 0..max_clutter
    noise_std: float = 6.0          # Gaussian pixel noise, in 0..255 units
    jitter: float = 0.12            # glyph centre jitter as a fraction of the cell
    p_drift: float = 0.6            # share of instruction-data descriptions ending with a prior-driven hallucination
    p_prior_yes: float = 0.45       # share of instruction-data questions about an absent partner answered "yes"
    p_symbolic: float = 0.7         # share of text-only records that state their scene as words (see world.files)
    symbolic_grid: int = 6          # side of the symbolic scene grid: match the model's image_size / patch_size
    pope_images: int = 500          # images per POPE split (POPE's img_num)
    caption_images: int = 3000      # images in the caption-evaluation prompt set (CHAIR, recall)
    references_per_image: int = 5   # COCO-style reference captions per image
    judged_images: int = 24         # LLaVA-Bench images (MMHal gets 4x as many items: 96, 8 types x 12)
    amber_images: int = 300         # AMBER world edition: images (generative + yes/no questions)
    objhal_images: int = 300        # Object HalBench world edition: images, one description prompt each

    def __post_init__(self):
        if self.image_size % 3 or self.image_size < 24:
            raise ValueError(f"image_size must be a multiple of 3 and >= 24, got {self.image_size}")
        if self.n_train < 1 or self.n_val < 1:
            raise ValueError("n_train and n_val must be positive")
        if not 1 <= self.min_groups <= self.max_groups <= 3:
            raise ValueError("need 1 <= min_groups <= max_groups <= 3 (three pairs per context)")
        if self.p_both + self.p_anchor_only > 1:
            raise ValueError("p_both + p_anchor_only must be <= 1")
        for name in ("p_outlier", "p_duplicate", "p_small", "p_faint", "p_occluded", "p_drift", "p_prior_yes",
                     "p_symbolic"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        for name in ("pope_images", "caption_images", "amber_images", "objhal_images"):
            if not 1 <= getattr(self, name) <= self.n_val:
                raise ValueError(f"{name} must be in [1, n_val={self.n_val}], got {getattr(self, name)}")
        if self.judged_images < 2 or 4 * self.judged_images > self.n_val:
            raise ValueError(f"judged_images must be >= 2 with 4 x judged_images <= n_val, got {self.judged_images}")

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "WorldSpec":
        if profile not in PROFILES:
            raise ValueError(f"unknown world profile {profile!r}; choose one of {sorted(PROFILES)}")
        return dataclasses.replace(cls(), **{**PROFILES[profile], **overrides})

    @property
    def cell(self) -> int:
        return self.image_size // 3


PROFILES = {
    "default": {},
    "smoke": {"n_train": 300, "n_val": 60, "pope_images": 20, "caption_images": 30, "judged_images": 8,
              "amber_images": 20, "objhal_images": 20},
}


@dataclass
class SceneObject:
    name: str              # class name
    cell: int              # 0..8, row-major
    size: str              # "small" | "large"
    bbox: list             # [x, y, w, h] in pixels of the rendered image
    alpha: float = 1.0     # opacity; < 1 means faint
    occluded: float = 0.0  # share of the box covered by an occluder

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass
class Scene:
    image_id: str
    split: str
    context: str
    objects: list = field(default_factory=list)   # list[SceneObject], in cell order
    clutter: int = 0

    def classes(self) -> list[str]:
        """Distinct classes present, in reading order of their first instance."""
        return list(dict.fromkeys(o.name for o in self.objects))

    @classmethod
    def from_record(cls, record: dict) -> "Scene":
        """Inverse of `to_record` (TypeError on unknown or missing object fields)."""
        objects = [SceneObject(**o) for o in record["objects"]]
        return cls(record["image_id"], record["split"], record["context"], objects, record["clutter"])

    def to_record(self) -> dict:
        return {"image_id": self.image_id, "split": self.split, "context": self.context, "clutter": self.clutter,
                "objects": [dataclasses.asdict(o) for o in self.objects]}


def scene_rng(seed: int, split: str, index: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, split, index, purpose))


def image_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _sample_classes(spec: WorldSpec, context: Context, rng: np.random.Generator) -> list[str]:
    pairs = context.pairs
    weights = np.array([w for _, _, w in pairs])
    n_groups = int(rng.integers(spec.min_groups, spec.max_groups + 1))
    chosen = rng.choice(len(pairs), size=n_groups, replace=False, p=weights / weights.sum())
    names = []
    for i in sorted(chosen):
        anchor, partner, _ = pairs[i]
        u = rng.random()
        if u < spec.p_both:
            names += [anchor, partner]
        else:
            names.append(anchor if u < spec.p_both + spec.p_anchor_only else partner)
    if rng.random() < spec.p_outlier:
        others = [c.name for c in CLASSES if c.name not in {n for a, b, _ in pairs for n in (a, b)}]
        names.append(str(rng.choice(others)))
    if rng.random() < spec.p_duplicate:
        names.append(names[int(rng.integers(len(names)))])
    return names


def _box(spec: WorldSpec, cell: int, radius_frac: float, rng: np.random.Generator) -> list:
    c = spec.cell
    r = radius_frac * c
    jx, jy = (rng.uniform(-spec.jitter, spec.jitter, size=2) * c).tolist()
    cx, cy = (cell % 3 + 0.5) * c + jx, (cell // 3 + 0.5) * c + jy
    return [round(cx - r, 2), round(cy - r, 2), round(2 * r, 2), round(2 * r, 2)]


def sample_scene(spec: WorldSpec, seed: int, split: str, index: int) -> Scene:
    """Draw one scene: context, objects with cells, sizes, visibility and occlusion, clutter count."""
    rng = scene_rng(seed, split, index, "scene")
    context = CONTEXTS[int(rng.integers(len(CONTEXTS)))]
    names = _sample_classes(spec, context, rng)
    cells = rng.choice(9, size=len(names), replace=False)
    objects = []
    for name, cell in zip(names, cells.tolist()):
        small = rng.random() < spec.p_small
        radius = rng.uniform(*(spec.small_radius if small else spec.large_radius))
        alpha = float(rng.uniform(*spec.faint_alpha)) if rng.random() < spec.p_faint else 1.0
        occluded = float(rng.uniform(*spec.occlusion)) if rng.random() < spec.p_occluded else 0.0
        objects.append(SceneObject(name, cell, "small" if small else "large", _box(spec, cell, radius, rng),
                                   round(alpha, 3), round(occluded, 3)))
    objects.sort(key=lambda o: o.cell)
    clutter = int(rng.integers(0, spec.max_clutter + 1))
    return Scene(image_id(split, index), split, context.name, objects, clutter)


# --- rendering -------------------------------------------------------------------------------------------------

def _shape_points(shape: str, cx: float, cy: float, r: float) -> list:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                 cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
    if shape == "hexagon":
        return [(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)]
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, round(r * 0.38)))
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif shape == "cross":
        w = r * 0.32
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "hbar":
        draw.rectangle([cx - r, cy - r * 0.4, cx + r, cy + r * 0.4], fill=fill)
    elif shape == "vbar":
        draw.rectangle([cx - r * 0.4, cy - r, cx + r * 0.4, cy + r], fill=fill)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r), fill=fill)


def _glyph(cls: ObjectClass, size_px: int) -> Image.Image:
    """The class glyph on a transparent square canvas of `size_px` (supersampled pixels)."""
    canvas = Image.new("RGBA", (size_px, size_px), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    r = size_px / 2
    colour = COLOURS[cls.colour]
    _draw_shape(draw, cls.shape, r, r, r * 0.98, colour + (255,))
    if cls.texture != "solid":
        dark = tuple(int(v * 0.45) for v in colour) + (255,)
        overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        od = ImageDraw.Draw(overlay)
        step = max(2, size_px // 5)
        for k in range(step // 2, size_px, step):
            if cls.texture == "striped":
                od.rectangle([0, k, size_px, k + max(1, step // 3)], fill=dark)
            else:
                for j in range(step // 2, size_px, step):
                    od.ellipse([j - step / 4, k - step / 4, j + step / 4, k + step / 4], fill=dark)
        mask = ImageChops.multiply(canvas.getchannel("A"), overlay.getchannel("A"))
        canvas.paste(overlay.convert("RGB"), (0, 0), mask)
    return canvas


def _background(spec: WorldSpec, context: Context, rng: np.random.Generator) -> Image.Image:
    n = spec.image_size * SUPERSAMPLE
    base = np.array(context.background, dtype=np.float32)
    img = np.broadcast_to(base, (n, n, 3)).copy()
    yy, xx = np.mgrid[0:n, 0:n]
    if context.pattern == "tiles":
        period = n // 6
        img[(xx % period < 3) | (yy % period < 3)] = base * 1.35
    elif context.pattern == "lanes":
        img[(np.abs(yy - n // 2) < 3) & ((xx // (n // 8)) % 2 == 0)] = (200, 200, 200)
    elif context.pattern == "grass":
        img += rng.normal(0, 14, size=(n // 8, n // 8, 1)).repeat(8, 0).repeat(8, 1)
    elif context.pattern == "carpet":
        img[((xx + yy) // (n // 12)) % 2 == 0] = base * 1.2
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _draw_clutter(spec: WorldSpec, canvas: Image.Image, n: int, rng: np.random.Generator) -> None:
    """Distractor marks that share a colour with some class but not its shape: partial look-alikes."""
    draw = ImageDraw.Draw(canvas)
    s = SUPERSAMPLE
    for _ in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        x, y = rng.uniform(0, spec.image_size, size=2) * s
        length = rng.uniform(0.15, 0.35) * spec.cell * s
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle) * length, math.sin(angle) * length
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=COLOURS[cls.colour], width=max(1, int(s * 1.2)))


def render_scene(spec: WorldSpec, scene: Scene, seed: int) -> Image.Image:
    """Render a scene to an RGB image of spec.image_size px; deterministic for (seed, scene id)."""
    rng = scene_rng(seed, scene.split, int(scene.image_id.rsplit("_", 1)[1]), "render")
    s = SUPERSAMPLE
    context = CONTEXTS[CONTEXT_INDEX[scene.context]]
    canvas = _background(spec, context, rng).convert("RGBA")
    _draw_clutter(spec, canvas, scene.clutter, rng)
    for obj in scene.objects:
        x, y, w, _ = obj.bbox
        size_px = max(2, round(w * s))
        glyph = _glyph(CLASSES[CLASS_INDEX[obj.name]], size_px)
        if obj.alpha < 1:
            glyph.putalpha(glyph.getchannel("A").point(lambda a, k=obj.alpha: int(a * k)))
        canvas.alpha_composite(glyph, (round(x * s), round(y * s)))
        if obj.occluded > 0:
            _occlude(canvas, obj, context, rng)
    small = canvas.convert("RGB").resize((spec.image_size, spec.image_size), Image.BOX)
    arr = np.asarray(small, dtype=np.float32) + rng.normal(0, spec.noise_std, size=(spec.image_size,) * 2 + (3,))
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


def _occlude(canvas: Image.Image, obj: SceneObject, context: Context, rng: np.random.Generator) -> None:
    """Cover `obj.occluded` of the object's box with a background-coloured band from a random side."""
    s = SUPERSAMPLE
    x, y, w, h = (v * s for v in obj.bbox)
    frac = obj.occluded
    side = int(rng.integers(4))
    box = [(x, y, x + w * frac, y + h), (x + w * (1 - frac), y, x + w, y + h),
           (x, y, x + w, y + h * frac), (x, y + h * (1 - frac), x + w, y + h)][side]
    shade = tuple(int(v * 0.8) for v in context.background) + (255,)
    ImageDraw.Draw(canvas).rectangle(box, fill=shade)


def cell_labels(scene: Scene) -> tuple[list[int], list[int]]:
    """Per grid cell: class index + 1 (0 = empty) and size (0 = empty, 1 = small, 2 = large)."""
    classes, sizes = [0] * 9, [0] * 9
    for o in scene.objects:
        classes[o.cell] = CLASS_INDEX[o.name] + 1
        sizes[o.cell] = 1 if o.size == "small" else 2
    return classes, sizes


def pair_partners() -> dict[str, str]:
    """Each paired class -> its partner (both directions)."""
    out = {}
    for ctx in CONTEXTS:
        for a, b, _ in ctx.pairs:
            out[a], out[b] = b, a
    return out
