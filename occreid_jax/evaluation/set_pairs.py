"""Every image against both sets: the rows of the (Q+G) x (Q+G) distances re-ranking reads.

k-reciprocal re-ranking compares query-gallery pairs, and also query-query and
gallery-gallery pairs. Row a of M is image a as the probe, scored against the queries, then
against the gallery, by the distance that ranks the gallery:

    M[a, :Q] = distance(probe a, candidate set = queries)
    M[a, Q:] = distance(probe a, candidate set = gallery)

so M[q, Q:] is exactly the evaluation's own query-gallery distance. Two kinds of distance:

* `FeatureSetPairs`: cosine or squared Euclidean distances of global features (symmetric).
* `RuleSetPairs`: a model's own matching rule, written for query x gallery, applied as written
  to the four (probe set, candidate set) pairs: the probe plays the query's part and the
  candidate set the gallery's (our choice; the papers re-rank no such rule). For Pirt, each
  probe gets its part distance over its top-N within each candidate set, and the confidence
  modes "query" / "gallery" weight by the probe's / the candidate's confidences. MAT's rule is
  symmetric in the two images, so a same-set pair is scored like a query-gallery pair.

Rows are taken one probe set at a time (a slice of queries or of gallery images, never both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from occreid_jax.evaluation.distances import FeatureDistance, l2_normalize

DistanceBlock = Callable[[slice], np.ndarray]


def probe_slices(num_query: int, num_gallery: int, step: int) -> list[slice]:
    """Row blocks of at most `step` images over queries then gallery, none spanning both."""
    n = num_query + num_gallery
    starts = [*range(0, num_query, step), *range(num_query, n, step)]
    return [slice(s, min(s + step, num_query if s < num_query else n)) for s in starts]


class SetPairs:
    """Base: `block(rows) -> ([R, Q], [R, G])`, the rows of M for a slice of one probe set.

    Attributes:
        num_query, num_gallery: Q and G.
        bytes_per_distance: working memory per distance of a block (for the row count).
    """

    bytes_per_distance = 16

    def __init__(self, num_query: int, num_gallery: int):
        if num_query < 1 or num_gallery < 1:
            raise ValueError(f"need queries and gallery images, got {num_query} and {num_gallery}")
        self.num_query, self.num_gallery = int(num_query), int(num_gallery)

    @property
    def num_images(self) -> int:
        return self.num_query + self.num_gallery

    def _side(self, rows: slice) -> tuple[str, slice]:
        """("q" or "g", rows within that set) of a global row slice inside one set."""
        q = self.num_query
        if rows.start < q <= rows.stop - 1:
            raise ValueError(f"rows {rows} span queries and gallery; use probe_slices")
        if rows.start < q:
            return "q", rows
        return "g", slice(rows.start - q, rows.stop - q)

    def block(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def query_gallery(self, rows: slice) -> np.ndarray:
        """[R, G] M[rows, Q:] for a slice of queries: the evaluation's own distances."""
        raise NotImplementedError

    def pair_values(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
        """[E] float32 M[rows, cols] for scattered pairs, or None: read them from `block`."""
        return None


class FeatureSetPairs(SetPairs):
    """Cosine or squared Euclidean distances of [Q, D] and [G, D] features (no copy of them).

    Args:
        q_feats: [Q, D] query features.
        g_feats: [G, D] gallery features.
        metric: "cosine" or "euclidean".
    """

    def __init__(self, q_feats: Any, g_feats: Any, metric: str = "cosine"):
        to_gallery = FeatureDistance(q_feats, g_feats, metric)
        super().__init__(*to_gallery.shape)
        self.metric = metric
        self.q, self.g = to_gallery.q, to_gallery.g
        self._dist = {
            ("q", "q"): FeatureDistance(self.q, self.q, metric),
            ("q", "g"): to_gallery,
            ("g", "q"): FeatureDistance(self.g, self.q, metric),
            ("g", "g"): FeatureDistance(self.g, self.g, metric),
        }

    def query_gallery(self, rows: slice) -> np.ndarray:
        return self._dist[("q", "g")](rows)

    def block(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        side, local = self._side(rows)
        return self._dist[(side, "q")](local), self._dist[(side, "g")](local)

    def rows_of(self, index: np.ndarray) -> np.ndarray:
        """[E, D] features of images `index` (global indices, queries first)."""
        out = np.empty((index.shape[0], self.q.shape[1]), np.float32)
        in_q = index < self.num_query
        out[in_q] = self.q[index[in_q]]
        out[~in_q] = self.g[index[~in_q] - self.num_query]
        return out

    def pair_values(self, rows: np.ndarray, cols: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """M[rows, cols], the formulas of `FeatureDistance` one pair at a time (float32)."""
        out = np.empty(rows.shape[0], np.float32)
        for s in range(0, rows.shape[0], chunk):
            a, b = self.rows_of(rows[s : s + chunk]), self.rows_of(cols[s : s + chunk])
            if self.metric == "cosine":
                b_norm = np.sqrt(np.einsum("ed,ed->e", b, b, dtype=np.float64))
                d = np.einsum("ed,ed->e", l2_normalize(a), b)
                d *= (1.0 / np.maximum(b_norm, 1e-12)).astype(np.float32)
                out[s : s + chunk] = np.float32(1.0) - d
            else:
                d = np.einsum("ed,ed->e", a * np.float32(-2.0), b)
                d += np.einsum("ed,ed->e", b, b, dtype=np.float64).astype(np.float32)
                d += np.einsum("ed,ed->e", a, a, dtype=np.float64).astype(np.float32)
                out[s : s + chunk] = np.maximum(d, np.float32(0.0))
        return out


class RuleSetPairs(SetPairs):
    """A model's own rule over the four (probe set, candidate set) pairs (module docstring).

    Args:
        make_block: `(probe features, candidate features) -> distance_block`, the rule with its
            settings bound; `distance_block(rows: slice) -> [len(rows), num_candidates]`.
        q_features: the query embeddings dict ([Q, ...] arrays).
        g_features: the gallery embeddings dict ([G, ...] arrays).
    """

    bytes_per_distance = 32

    def __init__(
        self,
        make_block: Callable[[Mapping, Mapping], DistanceBlock],
        q_features: Mapping[str, Any],
        g_features: Mapping[str, Any],
    ):
        sizes = (
            {np.shape(v)[0] for v in q_features.values()},
            {np.shape(v)[0] for v in g_features.values()},
        )
        if len(sizes[0]) != 1 or len(sizes[1]) != 1:
            raise ValueError(f"features disagree on the number of images: {sizes}")
        super().__init__(sizes[0].pop(), sizes[1].pop())
        feats = {"q": q_features, "g": g_features}
        self._rule = {(a, b): make_block(feats[a], feats[b]) for a in "qg" for b in "qg"}

    def block(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        side, local = self._side(rows)
        return self._rule[(side, "q")](local), self._rule[(side, "g")](local)

    def query_gallery(self, rows: slice) -> np.ndarray:
        return self._rule[("q", "g")](rows)
