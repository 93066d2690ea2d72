"""Figures that read faster than tables. Each function returns a matplotlib Figure; callers decide where it goes.

    >>> fig = bdhs_figure(stats); fig.savefig("prefs.stats.png")
"""

from __future__ import annotations

import io
import logging

import matplotlib

matplotlib.use("Agg")  # no display needed: figures are written to files or shown inline by notebooks
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

logger = logging.getLogger(__name__)


def png(fig) -> bytes:
    """A figure as PNG bytes, and the figure closed. Notebooks show them (`IPython.display.Image`: the Agg backend
    set here draws nothing by itself) and the caller writes them (`io.write_bytes`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()

# Headline shares of an evaluation's results (all in [0, 1]), as `metrics_figure` shows them.
HEADLINE_SHARES = {
    "POPE accuracy, random": "pope/random/accuracy", "POPE accuracy, popular": "pope/popular/accuracy",
    "POPE accuracy, adversarial": "pope/adversarial/accuracy", "POPE F1 (macro)": "pope/macro/f1",
    "CHAIR_i": "chair/chair_i", "CHAIR_s": "chair/chair_s", "recall": "chair/recall",
    "probe POPE accuracy": "headroom/probe_pope_accuracy", "recoverable POPE": "headroom/recoverable_pope",
    "recoverable CHAIR": "headroom/recoverable_chair",
}


def bdhs_figure(stats: dict):
    """BDHS run statistics: share of pairs accepted after each iteration (the paper's Fig. 10) and the histogram
    of final similarities, with the acceptance threshold marked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    accepted = stats["accepted_share_after_iteration"]
    curve = pd.DataFrame({"iteration": range(1, len(accepted) + 1), "accepted": [100 * a for a in accepted]})
    sns.lineplot(data=curve, x="iteration", y="accepted", marker="o", ax=left)
    left.set(ylabel="% semantically different (accepted)", ylim=(0, 100), xticks=curve["iteration"],
             title=f"BDHS acceptance (n = {stats['n']})")
    left.grid(alpha=0.3)
    edges, counts = stats["similarity_histogram"]["edges"], stats["similarity_histogram"]["counts"]
    sns.histplot(x=edges[:-1], weights=counts, bins=list(edges), ax=right)
    right.axvline(stats["config"]["epsilon"], color="black", linestyle="--", label="epsilon")
    right.set(xlabel="cosine(y-, y+)", ylabel="pairs", title="final similarity")
    right.legend()
    fig.tight_layout()
    return fig


def metrics_figure(metrics: dict, keys: dict[str, str], title: str, xlabel: str = ""):
    """One bar per `keys` entry (label -> metric key) that `metrics` holds: a run's headline numbers at a glance."""
    shown = pd.DataFrame([{"metric": label, "value": metrics[key]} for label, key in keys.items()
                          if metrics.get(key) is not None])          # null: undefined (no items)
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(shown), 4) + 1))
    if not shown.empty:
        sns.barplot(data=shown, y="metric", x="value", ax=ax, color="tab:blue")
        ax.bar_label(ax.containers[0], fmt="%.3g", padding=2, fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel="")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


DPO_PANELS = ("loss", "rewards/margins", "rewards/accuracies")
RL_PANELS = ("reward", "kl", "length", "oracle/hallucination_rate", "oracle/recall")   # an RL run's rl_curve.jsonl


def training_figure(log: list[dict], keys: tuple[str, ...] = DPO_PANELS):
    """A trainer's log per step (a preference trainer's metrics.jsonl, an RL run's rl_curve.jsonl), one panel per
    key it holds."""
    frame = pd.DataFrame(log)
    present = [k for k in keys if k in frame]
    fig, axes = plt.subplots(1, max(len(present), 1), figsize=(4 * max(len(present), 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present):
        sns.lineplot(data=frame, x="step", y=key, ax=ax)
        ax.set(title=key, ylabel="")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def comparison_figure(comparisons: dict, metrics: dict[str, str]):
    """Each model minus the reference on the chosen `metrics` (label -> comparison key), per item paired, with
    the 95 % bootstrap interval (`mmstudy.evaluation.compare`); an interval that excludes zero is filled."""
    rows = [{"model": model, "metric": label, **rows[key]} for model, rows in comparisons.items()
            for label, key in metrics.items() if key in rows]
    frame = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.2 * max(len(metrics), 1), 3.2), squeeze=False)
    for ax, label in zip(axes[0], metrics):
        part = frame[frame["metric"] == label] if not frame.empty else frame
        for y, r in enumerate(part.itertuples()):
            decided = r.low > 0 or r.high < 0
            ax.errorbar(r.diff, y, xerr=[[r.diff - r.low], [r.high - r.diff]], fmt="o", capsize=3,
                        mfc=None if decided else "white", color=sns.color_palette()[y % 10])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set(title=label, yticks=range(len(part)), yticklabels=list(part["model"]) if len(part) else [],
               xlabel="B - A")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def recipe_figure(rows: list[dict], base: dict, chosen: dict | None, tolerance: float, kept: list[bool]):
    """The recipe grid on the selection split: each point's change of CHAIR_i against its change of recall (left)
    and of POPE F1 (right), the tolerance (dashed), the points the rule excludes in grey, the chosen one ringed.
    Points are labelled lr/epochs/beta/pairs; `kept[i]` says whether the rule keeps `rows[i]`."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, column, name in ((axes[0], "recall", "recall"), (axes[1], "pope_f1", "POPE F1 (macro)")):
        for r, keep in zip(rows, kept):
            x, y = 100 * (r[column] - base[column]), 100 * (r["chair_i"] - base["chair_i"])
            ax.scatter(x, y, color="tab:blue" if keep else "tab:gray", zorder=3)
            ax.annotate(f"{r['lr']:.0e}/{r['epochs']}/{r['beta']:g}/{r['max_pairs'] or 'all'}", (x, y), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
            if r is chosen:
                ax.scatter(x, y, s=180, facecolors="none", edgecolors="tab:red", zorder=4, label="chosen")
        ax.axvline(-100 * tolerance, color="black", linestyle="--", linewidth=0.8, label="tolerance")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set(xlabel=f"{name} - base (points)")
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="CHAIR_i - base (points)")
    axes[0].legend(fontsize=8)
    fig.suptitle("recipe grid on the selection split (lr/epochs/beta/pairs; grey: loses recall or POPE F1)")
    fig.tight_layout()
    return fig
