"""What an RL run's samples say, step by step: the learned reward against the world's oracle, and whether the
policy collapsed (pure functions of samples.jsonl and metrics.jsonl, for RLOO and GRPO alike).

    curve       per sampling step: the trainer's reward (the reward model's raw score for RLOO, the oracle's for
                GRPO), the KL to the reference, the response length in tokens, the share of distinct word trigrams,
                and the oracle's counts on the step's descriptions (hallucination rate: false claims over correct
                and false ones; recall: correct objects over objects in the image) and yes/no answers (accuracy)
    collapse    fixed beforehand, from the first and last quarter of the steps: *reward hacking* when the reward
                rises while the oracle's hallucination rate rises, or its recall or yes/no accuracy falls, by more
                than `MARGIN` (a yes to every existence question is how a POVID-like reward model was gamed here
                before, docs/alignment.md);
                *degeneration* when the responses repeat themselves (distinct trigrams below 80 % of the start's),
                shrink below half their starting length, or one in five comes out empty

    >>> curve = rl_curve(io.read_jsonl(run / "samples.jsonl"), io.read_jsonl(run / "metrics.jsonl"), records, scenes)
    >>> collapse_flags(curve)["collapsed"]
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from mmstudy.world.scene import Scene

MARGIN = 0.02            # hacking: an oracle rate worsening by more than 2 points while the reward rises
REPEAT_FLOOR = 0.8       # degeneration: distinct trigrams below 80 % of the first quarter's
LENGTH_FLOOR = 0.5       # degeneration: responses shorter than half the first quarter's
EMPTY_CEILING = 0.2      # degeneration: more than one response in five empty
CURVE_KEYS = ("reward", "kl", "length", "distinct_3grams", "empty_share", "oracle/hallucination_rate",
              "oracle/recall", "oracle/yes_no_accuracy")


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(known) / len(known) if known else None


def step_of(metric: dict) -> int:
    """The sampling step a metrics record belongs to: GRPO logs several optimizer steps per sampling round."""
    return int(metric.get("round", metric["step"]))


def rl_curve(samples: Sequence[dict], metrics: Sequence[dict], records: Sequence[dict],
             scenes: dict[str, Scene]) -> list[dict]:
    """One row per sampling step with samples (`CURVE_KEYS` and "step", "samples"): the samples' oracle counts
    (`world_reward` against the record's image scene and its chosen response as the reference) and the step's
    reward and KL from the metrics (their mean over the step's optimizer steps)."""
    from mmstudy.training.grpo import world_reward  # here: the report imports CURVE_KEYS without torch
    from mmstudy.training.rloo import distinct_trigram_ratio

    by_id = {str(r["id"]): r for r in records}
    per_step: dict[int, list[dict]] = defaultdict(list)
    for s in samples:
        per_step[int(s["step"])].append(s)
    logged: dict[int, list[dict]] = defaultdict(list)
    for m in metrics:
        logged[step_of(m)].append(m)
    rows = []
    for step in sorted(per_step):
        described = {"correct": 0, "false": 0, "present": 0}
        yes_no = []
        texts = [s["response"] for s in per_step[step]]
        for s in per_step[step]:
            record = by_id[str(s["id"])]
            scene = scenes[record["image"]]
            found = world_reward(s["response"], scene, record.get("chosen", ""))
            if found["kind"] == "yes/no":
                yes_no.append(found["correct"])
            else:
                described["correct"] += found["correct"]
                described["false"] += found["false"]
                described["present"] += len(set(scene.classes()))
        step_metrics = logged.get(step, [])
        rows.append({
            "step": step, "samples": len(texts),
            "reward": _mean([m.get("rewards/raw_mean", m.get("rewards/mean")) for m in step_metrics]),
            "kl": _mean([m.get("kl") for m in step_metrics]),
            "length": _mean([s.get("tokens") for s in per_step[step]]),
            "distinct_3grams": _mean([distinct_trigram_ratio(t) for t in texts]),
            "empty_share": sum(not t.strip() for t in texts) / len(texts),
            "oracle/hallucination_rate": _ratio(described["false"], described["correct"] + described["false"]),
            "oracle/recall": _ratio(described["correct"], described["present"]),
            "oracle/yes_no_accuracy": _mean(yes_no),
        })
    return rows


def _window(curve: Sequence[dict], key: str, last: bool) -> float | None:
    n = max(1, len(curve) // 4)
    part = curve[-n:] if last else curve[:n]
    return _mean([row.get(key) for row in part])


def collapse_flags(curve: Sequence[dict]) -> dict:
    """The collapse indicators of a run's curve (the module docstring): {"collapsed", "reward_hacking",
    "degenerate"} and the first and last quarter's values they were decided on ("<key>/first", "<key>/last").
    Flags are False when the curve has fewer than 2 steps (nothing to compare)."""
    found = {f"{k}/{side}": _window(curve, k, side == "last") for k in CURVE_KEYS for side in ("first", "last")}
    if len(curve) < 2:
        return {"collapsed": False, "reward_hacking": False, "degenerate": False, "steps": len(curve), **found}

    def moved(key: str, up: bool) -> bool:
        a, b = found[f"{key}/first"], found[f"{key}/last"]
        return a is not None and b is not None and ((b - a) if up else (a - b)) > MARGIN

    reward_up = (found["reward/first"] is not None and found["reward/last"] is not None
                 and found["reward/last"] > found["reward/first"])
    hacking = reward_up and (moved("oracle/hallucination_rate", up=True) or moved("oracle/recall", up=False)
                             or moved("oracle/yes_no_accuracy", up=False))
    first_len, last_len = found["length/first"], found["length/last"]
    first_rep, last_rep = found["distinct_3grams/first"], found["distinct_3grams/last"]
    degenerate = bool((first_rep is not None and last_rep is not None and last_rep < REPEAT_FLOOR * first_rep)
                      or (first_len and last_len is not None and last_len < LENGTH_FLOOR * first_len)
                      or (found["empty_share/last"] or 0) > EMPTY_CEILING)
    return {"collapsed": bool(hacking or degenerate), "reward_hacking": bool(hacking), "degenerate": degenerate,
            "steps": len(curve), **found}
