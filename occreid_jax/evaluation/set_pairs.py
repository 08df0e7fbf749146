"""Every image against both sets: the rows of the (Q+G) x (Q+G) distances re-ranking reads.

k-reciprocal re-ranking compares query-gallery pairs, and also query-query and
gallery-gallery pairs. Row a of M is image a as the probe, scored against the queries, then
against the gallery, by the distance that ranks the gallery:

    M[a, :Q] = distance(probe a, candidate set = queries)
    M[a, Q:] = distance(probe a, candidate set = gallery)

so M[q, Q:] is the evaluation's own query-gallery distance. Two kinds of distance:

* `FeatureSetPairs`: cosine or squared Euclidean distances of global features, symmetric;
  computed as the dense reference reads them (which may differ from the plain evaluation's
  values in the last bit).
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

    def pair_values(
        self, rows: np.ndarray, cols: np.ndarray, memory_bytes: int = 1 << 24
    ) -> np.ndarray | None:
        """[E] float32 M[rows, cols] for scattered pairs, or None: read them from `block`."""
        return None


class FeatureSetPairs(SetPairs):
    """Cosine or squared Euclidean distances of [Q, D] and [G, D] features.

    Row a of M is column a of `pairwise_distance(X, X)` (X: queries then gallery), the values
    `rerank.k_reciprocal_rerank` reads for image a, bit for bit: the candidates take the
    query's role in the formulas of `FeatureDistance` (for cosine, a unit-norm copy of all
    features: memory of the features once more; euclidean makes no copy).

    Args:
        q_feats: [Q, D] query features.
        g_feats: [G, D] gallery features.
        metric: "cosine" or "euclidean".
    """

    def __init__(self, q_feats: Any, g_feats: Any, metric: str = "cosine"):
        to_gallery = FeatureDistance(q_feats, g_feats, metric)  # checks shapes and metric
        super().__init__(*to_gallery.shape)
        self.metric = metric
        self.q, self.g = to_gallery.q, to_gallery.g
        # Per image: 1/|x| (cosine) or |x|^2 (euclidean), as `FeatureDistance` computes them.
        sq = [np.einsum("nd,nd->n", x, x, dtype=np.float64) for x in (self.q, self.g)]
        if metric == "cosine":
            sq = [1.0 / np.maximum(np.sqrt(v), 1e-12) for v in sq]
            self.cands = [_unit_rows(self.q), _unit_rows(self.g)]
        else:
            self.cands = [self.q, self.g]
        self.terms = np.concatenate(sq).astype(np.float32)  # [N]

    def _features(self, rows: slice) -> np.ndarray:
        """[R, D] features of a slice of one set (global indices)."""
        side, local = self._side(rows)
        return (self.q if side == "q" else self.g)[local]

    def _products(self, rows: slice, sides: tuple[int, ...]) -> list[np.ndarray]:
        """M[rows, set] for each candidate set in `sides` (0: queries, 1: gallery)."""
        probes = self._features(rows)
        if probes.shape[0] == 1:  # a matrix-vector product would sum in another order
            probes = np.concatenate([probes, probes])
        if self.metric == "euclidean":
            probes = probes * np.float32(-2.0)  # exact scaling
        terms = self.terms[rows, None]
        out = []
        for side in sides:
            d = (probes @ self.cands[side].T)[: rows.stop - rows.start]
            if self.metric == "cosine":
                d *= terms
                np.subtract(np.float32(1.0), d, out=d)
            else:
                d += terms
                d += self.terms[: self.num_query] if side == 0 else self.terms[self.num_query :]
                np.maximum(d, np.float32(0.0), out=d)
            out.append(d)
        return out

    def block(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        to_q, to_g = self._products(rows, (0, 1))
        return to_q, to_g

    def query_gallery(self, rows: slice) -> np.ndarray:
        return self._products(rows, (1,))[0]

    def pair_values(
        self, rows: np.ndarray, cols: np.ndarray, memory_bytes: int = 1 << 24
    ) -> np.ndarray:
        """M[rows, cols] by the formulas of `block`, one pair at a time (float32; the sums
        may round differently from the matrix products'), gathering `memory_bytes` at once."""
        out = np.empty(rows.shape[0], np.float32)
        chunk = max(1, memory_bytes // (12 * self.q.shape[1]))  # two gathers and a product
        for s in range(0, rows.shape[0], chunk):
            a, b = rows[s : s + chunk], cols[s : s + chunk]
            d = np.einsum("ed,ed->e", _take(self.q, self.g, a), _take(*self.cands, b))
            if self.metric == "cosine":
                d *= self.terms[a]
                out[s : s + chunk] = np.float32(1.0) - d
            else:
                d *= np.float32(-2.0)
                d += self.terms[a]
                d += self.terms[b]
                out[s : s + chunk] = np.maximum(d, np.float32(0.0))
        return out


def _unit_rows(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """`l2_normalize(x)` row block by row block (bounded temporaries)."""
    out = np.empty_like(x)
    for s in range(0, x.shape[0], chunk):
        out[s : s + chunk] = l2_normalize(x[s : s + chunk])
    return out


def _take(q: np.ndarray, g: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[E, D] rows `index` of the stacked [q; g] (no stacked copy)."""
    out = np.empty((index.shape[0], q.shape[1]), q.dtype)
    in_q = np.flatnonzero(index < q.shape[0])
    in_g = np.flatnonzero(index >= q.shape[0])
    out[in_q] = np.take(q, index[in_q], axis=0)
    out[in_g] = np.take(g, index[in_g] - q.shape[0], axis=0)
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
