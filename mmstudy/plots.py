"""Figures that read faster than tables. Each function returns a matplotlib Figure; callers decide where it goes.

    >>> fig = bdhs_figure(stats); fig.savefig("prefs.stats.png")
"""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")  # no display needed: figures are written to files or shown inline by notebooks
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger(__name__)


def bdhs_figure(stats: dict):
    """BDHS run statistics: share of pairs accepted after each iteration (the paper's Fig. 10) and the histogram
    of final similarities, with the acceptance threshold marked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    accepted = stats["accepted_share_after_iteration"]
    left.plot(range(1, len(accepted) + 1), [100 * a for a in accepted], marker="o")
    left.set(xlabel="iteration", ylabel="% semantically different (accepted)", ylim=(0, 100),
             xticks=range(1, len(accepted) + 1), title=f"BDHS acceptance (n = {stats['n']})")
    left.grid(alpha=0.3)
    edges, counts = stats["similarity_histogram"]["edges"], stats["similarity_histogram"]["counts"]
    right.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", edgecolor="white")
    right.axvline(stats["config"]["epsilon"], color="black", linestyle="--", label="epsilon")
    right.set(xlabel="cosine(y-, y+)", ylabel="pairs", title="final similarity")
    right.legend()
    fig.tight_layout()
    return fig


def recipe_figure(rows: list[dict], base: dict, chosen: dict | None, tolerance: float):
    """The recipe grid on the selection split: each point's change of CHAIR_i against its change of recall (left)
    and of POPE F1 (right), the tolerance (dashed), the points the rule excludes in grey, the chosen one ringed.
    Points are labelled lr/epochs/beta/pairs."""
    from mmstudy.recipe import keeps

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, column, name in ((axes[0], "recall", "recall"), (axes[1], "pope_f1", "POPE F1 (macro)")):
        for r in rows:
            x, y = 100 * (r[column] - base[column]), 100 * (r["chair_i"] - base["chair_i"])
            ax.scatter(x, y, color="tab:blue" if keeps(r, base, tolerance) else "tab:gray", zorder=3)
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
