"""Expected AP, INP and rank-k hits when gallery entries tie: the mean over all orders of a tie.

A query's kept gallery entries (junk removed) at exactly the same distance form a tie group.
Every metric is scored as its expectation over all orders of every group, each order equally
likely, so neither the gallery's storage order nor a sort's tie rule can move a figure. A
group is described, for the query, by

* s: kept entries strictly closer than the group (the group holds 1-based ranks s+1 .. s+t);
* t: kept entries in the group (t >= 1; t = 1 is no tie, and every formula below reduces to
  the plain one);
* p: positives in the group; b: positives strictly closer than the group.

Average precision (McSherry and Najork, "Computing information retrieval performance measures
efficiently in the presence of tied scores", ECIR 2008, Sec. 3): a positive of the group
lands on rank s+r with probability 1/t; the other p-1 positives of the group fill the other
t-1 places uniformly, so the expected number of positives at or before it is
b + 1 + (r-1)(p-1)/(t-1). Its expected precision is

    E[prec] = (1/t) * sum_{r=1..t} (b + 1 + (r-1)(p-1)/(t-1)) / (s+r)
            = (1/t) * [(b+1) dH + (p-1)/(t-1) * (t - (s+1) dH)],   dH = H(s+t) - H(s),

with H the harmonic numbers; AP is the mean of this over the positives.

Rank-k hit (CMC): the first positive sits in the first group that holds positives. Its rank
inside the group is the minimum of p distinct places drawn from 1..t, so
P(first positive within rank k) = 1 - C(t-j, p) / C(t, p) for j = k - s in 1..t
(0 for j <= 0, 1 for j > t - p), and C(t-j, p) / C(t, p) = prod_{i<j} (t-p-i) / (t-i).

INP = npos / (rank of the last positive): the last positive sits in the last group that holds
positives, at s + M with M the maximum of p distinct places from 1..t,
P(M = m) = C(m-1, p-1) / C(t, p) for m = p..t, so E[INP] = npos * sum_m P(M = m) / (s+m).
"""

from __future__ import annotations

import numpy as np


def harmonic_gaps(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """dH = sum_{r=1..t} 1/(s+r), for [N] int arrays s >= 0, t >= 1 (float64 [N])."""
    top = int((s + t).max(initial=0))
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, top + 1))])
    return harmonic[s + t] - harmonic[s]


def expected_precision(s: np.ndarray, t: np.ndarray, p: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Expected precision at a positive of a tie group (module docstring), [N] arrays -> [N].

    Args:
        s: [N] kept entries strictly closer than the group.
        t: [N] kept entries in the group (>= 2 here; t = 1 is (b+1)/(s+1)).
        p: [N] positives in the group.
        b: [N] positives strictly closer than the group.
    """
    gap = harmonic_gaps(s, t)
    others = (p - 1) / np.maximum(t - 1, 1)
    return ((b + 1) * gap + others * (t - (s + 1) * gap)) / t


def expected_inverse_last_rank(s: int, t: int, p: int) -> float:
    """E[1 / (s + M)], M the maximum of p distinct places drawn from 1..t (t >= p >= 1)."""
    m = np.arange(t, p - 1, -1)  # t, t-1, .., p
    # P(M = t) = p / t; P(M = m-1) / P(M = m) = (m - p) / (m - 1).
    ratios = (m[:-1] - p) / (m[:-1] - 1.0)
    weights = (p / t) * np.concatenate([[1.0], np.cumprod(ratios)])
    return float(np.sum(weights / (s + m)))


def expected_hits(s: np.ndarray, t: np.ndarray, p: np.ndarray, max_rank: int) -> np.ndarray:
    """P(a positive within the first k ranks), k = 1..max_rank, for the first group of positives.

    Args:
        s, t, p: [N] the group of each query's first positive (module docstring).
        max_rank: K.

    Returns:
        [N, K] float64 expected hits.
    """
    i = np.arange(max_rank)[None, :]
    t2, p2 = t[:, None].astype(np.float64), p[:, None]
    # C(t-j, p) / C(t, p) for j = 1..K: a running product of (t-p-i) / (t-i), 0 once j > t-p.
    factors = np.where(i < t2 - p2, (t2 - p2 - i) / np.maximum(t2 - i, 1.0), 0.0)
    miss = np.cumprod(factors, axis=1)  # miss[:, j-1] = P(no positive in the first j places)
    j = np.arange(1, max_rank + 1)[None, :] - s[:, None]
    inside = np.clip(j, 1, max_rank) - 1
    return np.where(j <= 0, 0.0, 1.0 - np.take_along_axis(miss, inside, axis=1))
