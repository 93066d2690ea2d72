"""Co-occurrence in the world: how often one class appears given another over training scenes, and what share of
hallucinated mentions follow that prior (against chance)."""

from __future__ import annotations

from collections import Counter
from itertools import permutations
from pathlib import Path

import numpy as np

from mmstudy import io
from mmstudy.world.scene import Scene


def cooccurrence(scenes: list[Scene]) -> dict:
    """P(b present | a present) over `scenes`, for every ordered class pair, and class frequencies."""
    n_with = Counter()
    n_pair = Counter()
    for s in scenes:
        classes = set(s.classes())
        n_with.update(classes)
        n_pair.update(permutations(sorted(classes), 2))
    cond = {a: {b: round(n_pair[(a, b)] / n_with[a], 4) for b in sorted(n_with) if b != a and n_pair[(a, b)]}
            for a in sorted(n_with)}
    return {"n_scenes": len(scenes), "frequency": {a: round(n_with[a] / len(scenes), 4) for a in sorted(n_with)},
            "p_given": cond}

COOCCUR_THRESHOLD = 0.3   # "co-occurs frequently": P(hallucinated | present object) >= this, over training scenes


def world_cooccurrence(world_dir: Path) -> dict | None:
    path = world_dir / "world.json"
    return io.read_json(path)["cooccurrence"]["p_given"] if path.is_file() else None


def cooccurrence_shares(samples: list[dict], p_given: dict, threshold: float = COOCCUR_THRESHOLD) -> dict:
    """Share of hallucinated mentions that co-occur frequently with a present object, against chance.

    chance = the same share for every absent class of every image (what uniform guessing would give).
    """
    def linked(obj: str, present) -> bool:
        return any(p_given.get(p, {}).get(obj, 0.0) >= threshold for p in present)

    hallucinated = [(cls, s["gt"]) for s in samples for _, cls in s["hallucinated"]]
    vocab = sorted(p_given)
    absent = [(c, s["gt"]) for s in samples for c in vocab if c not in s["gt"]]
    share = lambda pairs: float(np.mean([linked(o, gt) for o, gt in pairs])) if pairs else 0.0  # noqa: E731
    return {"hallucinated_cooccurring_share": share(hallucinated), "absent_cooccurring_share_chance": share(absent),
            "cooccur_threshold": threshold}
