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
