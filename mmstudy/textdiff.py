"""Word-level text comparison: tokens, the Levenshtein alignment of two word sequences and its edit script, and
the similarity it gives. Pure functions, used by the data review and the inspector's diffs."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_WORD = re.compile(r"\w+(?:'\w+)*")


def words(text: str) -> list[str]:
    """Lower-cased words without punctuation ("Yes, it isn't." -> ["yes", "it", "isn't"]): the unit of the diff."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _levenshtein_table(a: Sequence[int], b: Sequence[int]) -> list[list[int]]:
    """The (len(a)+1) x (len(b)+1) Levenshtein table. Each row comes from the previous one in numpy: substitution
    and deletion elementwise, then insertions as a running minimum, D[i, j] = j + min over k <= j of (T[k] - k)."""
    b_arr, cols = np.asarray(b, dtype=np.int64), np.arange(len(b) + 1)
    rows = [cols]
    for i, x in enumerate(a, start=1):
        prev, row = rows[-1], np.empty(len(b) + 1, dtype=np.int64)
        row[0] = i
        row[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (b_arr != x))
        rows.append(np.minimum.accumulate(row - cols) + cols)
    return [r.tolist() for r in rows]


def _backtrace(a: Sequence[str], b: Sequence[str], table: list[list[int]]) -> list[tuple]:
    """The edit script of a filled table. On ties a match comes first, then a deletion or insertion, then a
    substitution, so that "a b c" -> "a c d" keeps "c" (delete b, insert d) rather than substituting twice."""
    ops, i, j = [], len(a), len(b)
    while i or j:
        if i and j and a[i - 1] == b[j - 1] and table[i][j] == table[i - 1][j - 1]:
            i, j = i - 1, j - 1
        elif i and table[i][j] == table[i - 1][j] + 1:
            ops.append(("delete", a[i - 1], None))
            i -= 1
        elif j and table[i][j] == table[i][j - 1] + 1:
            ops.append(("insert", None, b[j - 1]))
            j -= 1
        else:
            ops.append(("substitute", a[i - 1], b[j - 1]))
            i, j = i - 1, j - 1
    return ops[::-1]


def diff_words(a: Sequence[str], b: Sequence[str]) -> list[tuple]:
    """A minimal word-level edit script from `a` to `b` (Levenshtein, unit costs): ("substitute", x, y),
    ("delete", x, None), ("insert", None, y). Its length is the edit distance. The common prefix and suffix are
    cut first, so a corruption of a long answer costs only its changed middle."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[len(a) - 1 - end] == b[len(b) - 1 - end]:
        end += 1
    a, b = a[start:len(a) - end], b[start:len(b) - end]
    ids: dict[str, int] = {}
    table = _levenshtein_table([ids.setdefault(w, len(ids)) for w in a], [ids.setdefault(w, len(ids)) for w in b])
    return _backtrace(a, b, table)


def edit_distance(a: str, b: str) -> int:
    """Word-level Levenshtein distance of two texts (see `words`)."""
    return len(diff_words(words(a), words(b)))


def similarity_from_distance(distance: int, len_a: int, len_b: int) -> float:
    """1 - distance / max(len_a, len_b): 1.0 for the same words, 0.0 when no word could be kept; 1.0 if both empty."""
    return 1.0 - distance / max(len_a, len_b) if max(len_a, len_b) else 1.0


def word_similarity(a: str, b: str) -> float:
    """`similarity_from_distance` of two texts' words."""
    wa, wb = words(a), words(b)
    return similarity_from_distance(len(diff_words(wa, wb)), len(wa), len(wb))
