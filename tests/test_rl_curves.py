"""An RL run's curve and collapse flags (mmstudy.training.rl_curves): the oracle's counts per step by hand, and
each flag on curves built to trip it or not.   Run: pytest tests/test_rl_curves.py"""

import pytest

from mmstudy.training.rl_curves import collapse_flags, rl_curve
from mmstudy.world.scene import Scene, SceneObject

SCENE = Scene("val_00001", "val", "kitchen", [SceneObject("cup", 0, "small", [0, 0, 4, 4]),
                                              SceneObject("bowl", 4, "large", [8, 8, 8, 8])])
RECORDS = [{"id": "d", "image": "val_00001.png", "prompt": "Describe the image.", "chosen": "A cup and a bowl."},
           {"id": "q", "image": "val_00001.png", "prompt": "Is there a cup?", "chosen": "Yes, there is a cup."}]
SCENES = {"val_00001.png": SCENE}


def test_the_curve_counts_what_the_oracle_counts_per_step():
    samples = [
        {"step": 1, "id": "d", "response": "There is a cup and a bowl.", "tokens": 8},     # 2 right
        {"step": 1, "id": "d", "response": "There is a cup and a fork.", "tokens": 8},     # 1 right, 1 false
        {"step": 1, "id": "q", "response": "Yes.", "tokens": 2},                           # right
        {"step": 1, "id": "q", "response": "No.", "tokens": 2},                            # wrong
        {"step": 2, "id": "d", "response": "", "tokens": 0},                               # names nothing
        {"step": 2, "id": "q", "response": "Yes, there is a cup.", "tokens": 6},
    ]
    metrics = [{"step": 1, "rewards/raw_mean": 0.5, "kl": 0.0}, {"step": 2, "rewards/raw_mean": 1.5, "kl": 0.2}]
    first, second = rl_curve(samples, metrics, RECORDS, SCENES)
    assert first["step"] == 1 and first["samples"] == 4
    assert first["oracle/hallucination_rate"] == pytest.approx(1 / 4)      # 1 false of 3 right + 1 false
    assert first["oracle/recall"] == pytest.approx(3 / 4)                  # 3 named of 2 + 2 present
    assert first["oracle/yes_no_accuracy"] == pytest.approx(0.5)
    assert (first["reward"], first["kl"], first["length"], first["empty_share"]) == (0.5, 0.0, 5.0, 0.0)
    assert second["oracle/hallucination_rate"] is None                     # no mention at all: undefined
    assert second["oracle/recall"] == 0.0 and second["empty_share"] == 0.5
    assert second["oracle/yes_no_accuracy"] == 1.0


def test_grpo_metrics_of_one_round_are_averaged():
    samples = [{"step": 1, "id": "q", "response": "Yes.", "tokens": 2}]
    metrics = [{"step": 1, "round": 1, "rewards/mean": 0.2, "kl": 0.0},
               {"step": 2, "round": 1, "rewards/mean": 0.2, "kl": 0.4}]
    (row,) = rl_curve(samples, metrics, RECORDS, SCENES)
    assert row["reward"] == pytest.approx(0.2) and row["kl"] == pytest.approx(0.2)


def _curve(n=8, reward=(0.0, 1.0), hall=(0.1, 0.1), recall=(0.8, 0.8), yes_no=(0.9, 0.9), length=(20, 20),
           trigrams=(1.0, 1.0), empty=(0.0, 0.0)):
    """n steps whose first half has the first value of each pair and whose second half the second."""
    def at(pair, i):
        return pair[0] if i < n // 2 else pair[1]
    return [{"step": i + 1, "reward": at(reward, i), "kl": 0.0, "length": at(length, i),
             "distinct_3grams": at(trigrams, i), "empty_share": at(empty, i),
             "oracle/hallucination_rate": at(hall, i), "oracle/recall": at(recall, i),
             "oracle/yes_no_accuracy": at(yes_no, i)} for i in range(n)]


@pytest.mark.parametrize("curve, hacking, degenerate", [
    (_curve(), False, False),                                       # reward up, the oracle content: learning
    (_curve(hall=(0.1, 0.2)), True, False),                         # reward up, hallucinating more
    (_curve(recall=(0.8, 0.7)), True, False),                       # reward up, naming less
    (_curve(yes_no=(0.9, 0.5)), True, False),                       # reward up, yes to everything
    (_curve(reward=(1.0, 0.0), hall=(0.1, 0.3)), False, False),     # worse, but the reward fell too: not hacking
    (_curve(hall=(0.1, 0.115)), False, False),                      # within the 2-point margin
    (_curve(length=(20, 9)), False, True),                          # shrinking below half
    (_curve(trigrams=(1.0, 0.7)), False, True),                     # looping
    (_curve(empty=(0.0, 0.25)), False, True),                       # one in four empty
])
def test_collapse_flags(curve, hacking, degenerate):
    flags = collapse_flags(curve)
    assert (flags["reward_hacking"], flags["degenerate"]) == (hacking, degenerate)
    assert flags["collapsed"] == (hacking or degenerate)
    assert flags["steps"] == 8 and flags["reward/first"] == curve[0]["reward"]


def test_a_curve_of_one_step_flags_nothing():
    assert collapse_flags(_curve(n=1, hall=(0.9, 0.9)))["collapsed"] is False
    assert collapse_flags([])["steps"] == 0
