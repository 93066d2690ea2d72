"""The headroom scores: given a probe's probability that each class is present in each image (fit on the model's
own image-token features by `mmstudy.evaluation.headroom`), how often the probe is right on POPE and what share
of the model's POPE errors and hallucinated caption mentions it could recover. Pure functions."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from mmstudy.benchmarks.stats import bootstrap_ci

HEADROOM_VERSION = 1

_POPE_OBJECT = re.compile(r"^is there an? (.+?) in the image\?*$", re.IGNORECASE)


def pope_object(question: str) -> str:
    """The object a POPE question asks about ("Is there an oven in the image?" -> "oven")."""
    found = _POPE_OBJECT.match(question.strip())
    if not found:
        raise ValueError(f"not a POPE question: {question!r}")
    return found.group(1).lower()


def recoverable_scores(p_present: dict[str, np.ndarray], classes: Sequence[str], pope_samples: Sequence[dict],
                       chair_samples: Sequence[dict], threshold: float = 0.9) -> dict:
    """Pure scores from the probe's P(present) per image file name (a vector over `classes`):

    probe_pope_accuracy  the probe's answer (P >= 0.5) against each POPE label (each with `<key>_ci95_low` /
                         `_high`, a bootstrap interval over the questions, errors or mentions it is a share of)
    recoverable_pope     of the POPE questions the model answered wrongly, the share where the probe gives the
                         true answer probability >= threshold
    recoverable_chair    of the hallucinated caption mentions (CHAIR, reference scoring), the share where the
                         probe gives "absent" probability >= threshold
    """
    index = {c: i for i, c in enumerate(classes)}
    probe_right, wrong_recoverable = [], []
    for s in pope_samples:
        p = float(p_present[s["image"]][index[pope_object(s["question"])]])
        p_truth = p if s["label"] == "yes" else 1 - p
        probe_right.append(p_truth > 0.5)
        if s["pred"] != s["label"]:
            wrong_recoverable.append(p_truth >= threshold)
    hallucinated = [float(1 - p_present[s["image"]][index[cls]]) >= threshold
                    for s in chair_samples for _, cls in s["reference"]["hallucinated"]]
    out = {"pope_wrong": len(wrong_recoverable), "chair_hallucinated": len(hallucinated), "threshold": threshold}
    for key, values in (("probe_pope_accuracy", probe_right), ("recoverable_pope", wrong_recoverable),
                        ("recoverable_chair", hallucinated)):
        ci = bootstrap_ci(np.asarray(values, dtype=float))   # over questions / errors / mentions; NaN when none
        out |= {key: ci["value"], f"{key}_ci95_low": ci["low"], f"{key}_ci95_high": ci["high"]}
    return out
