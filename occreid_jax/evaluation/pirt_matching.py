"""Pirt's test-time matching: global distances plus a part distance over each query's top-N.

The rule of the authors' released evaluator (docs/pirt-released-code.md, "Matching at test
time"; paper Section 3.4 "Matching strategy" and Table 5):

* `d_stripe`, `d_patch`: cosine distances (`1 - cos`) of the stripe and patch features (both
  after their BNNeck);
* part keys `k_p`: each part feature L2-normalised (per image, per part);
* for each query, only its top `N = min(top_n, G)` gallery images by `d_stripe` (paper and code:
  `top_n = 100`) get a local distance; every other gallery image gets 1000:

      d_local(q, g) = sum_p ||k_qp - k_gp||_2 * w_p,   w_p = sqrt(c_qp * c_gp),

  with `c` the 3 part confidences of an image (summing to 1);
* final `d = d_stripe + d_patch + d_local` (added in that order, in float32).

The paper's Table 5 compares four confidence combinations but defines only the first; the other
three weights are OUR choices (not in the paper, nor in the released code, which has only "Q & G"):

    confidence="query_and_gallery": w_p = sqrt(c_qp * c_gp)   (paper and code)
    confidence="query":             w_p = c_qp                (not in the paper)
    confidence="gallery":           w_p = c_gp                (not in the paper)
    confidence="none":              w_p = 1 / P               (not in the paper; uniform weights
                                                               that keep a confidence's scale)

The paper's text says local features "are measured by cosine distance"; the code uses the
Euclidean distance of unit keys, `||k_q - k_g|| = sqrt(2 (1 - cos))`. We follow the code.

Released-evaluator defect (`released_index_defect=True` reproduces it; off by default): the loop
over queries reads the gallery confidence with the QUERY's row index, `gallery_confs[i]`, instead
of each candidate's gallery index, so every candidate of query `i` (global query index) is
weighted with `c_g = gallery_confs[i]`. It only touches the modes that read the gallery
confidence ("query_and_gallery", "gallery"); with more queries than gallery images the released
code fails with an index error, here a ValueError is raised when the distance is built.

Ties: the released code takes the top-N with `np.argsort` (unstable, tie order unspecified); we
break ties by gallery index, as `np.argsort(kind="stable")` would, the convention of the rest of
the evaluation (ranking.py).

`pirt_distance(q, g, settings)` returns a callable `rows -> [len(rows), G]` float32, the
`distance_block` that `protocol.evaluate_distance_blocks` takes. Memory per block: a few
[rows, G] float32 arrays plus part-key gathers bounded by `chunk_elements` floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from occreid_jax.evaluation.distances import FeatureDistance, l2_normalize

CONFIDENCE_MODES = ("query_and_gallery", "query", "gallery", "none")
DEFAULT_SETTINGS = {
    "top_n": 100,  # paper ("e.g., N=100") and released code
    "confidence": "query_and_gallery",  # paper Table 5 row 1, released code
    "released_index_defect": False,  # True: the released evaluator's gallery-confidence index
}
REQUIRED_KEYS = ("stripe", "patch", "parts", "confidence")
# Distance given to the gallery images outside a query's top-N (released code).
FAR = 1000.0
# Floats per gathered part-key chunk ([queries, N, P, D] float32): 4M floats = 16 MiB.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def check_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings with defaults filled in, or a one-line ValueError.

    Args:
        settings: any of the keys of `DEFAULT_SETTINGS` (a dict or a ConfigDict); None: defaults.

    Returns:
        A new dict with exactly the keys of `DEFAULT_SETTINGS`.
    """
    given = dict(settings or {})
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown Pirt matching setting(s) {unknown}; known: {sorted(DEFAULT_SETTINGS)}"
        )
    out = {**DEFAULT_SETTINGS, **given}
    top_n = out["top_n"]
    if isinstance(top_n, bool) or not isinstance(top_n, int | np.integer) or top_n < 1:
        raise ValueError(f"top_n must be an integer >= 1, got {top_n!r}")
    out["top_n"] = int(top_n)
    if out["confidence"] not in CONFIDENCE_MODES:
        raise ValueError(
            f"unknown confidence {out['confidence']!r}; choose one of {CONFIDENCE_MODES}"
        )
    if not isinstance(out["released_index_defect"], bool | np.bool_):
        raise ValueError(
            f"released_index_defect must be True or False, got {out['released_index_defect']!r}"
        )
    out["released_index_defect"] = bool(out["released_index_defect"])
    return out


def pirt_global_feature(features: Mapping[str, Any]) -> np.ndarray:
    """[N, 2D]: concat(l2n(stripe), l2n(patch)) / sqrt(2).

    Its cosine distance is (d_stripe + d_patch) / 2, so it ranks exactly as Pirt's global
    distance (the first stage of the matching rule).
    """
    stripe = l2_normalize(np.asarray(features["stripe"], np.float32))
    patch = l2_normalize(np.asarray(features["patch"], np.float32))
    return np.concatenate([stripe, patch], axis=-1) / np.float32(np.sqrt(2.0))


def pirt_with_global(features: Mapping[str, Any], expanded: np.ndarray) -> dict:
    """The embeddings with stripe and patch = the two halves of a [N, 2D] global feature
    (after query expansion; the rule compares them by cosine, so their scale is irrelevant)."""
    dim = np.shape(features["stripe"])[1]
    return {**features, "stripe": expanded[:, :dim], "patch": expanded[:, dim:]}


def _check_features(name: str, feats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """float32 arrays of the required keys, shapes checked within one side (query or gallery)."""
    if not isinstance(feats, Mapping):
        raise ValueError(f"{name} must be a dict of arrays with keys {REQUIRED_KEYS}")
    missing = [k for k in REQUIRED_KEYS if k not in feats]
    if missing:
        raise ValueError(
            f"{name} features lack {missing}; Pirt matching needs {REQUIRED_KEYS} "
            f"(got {sorted(feats)})"
        )
    out = {k: np.asarray(feats[k], dtype=np.float32) for k in REQUIRED_KEYS}
    layouts = {"stripe": "[N, D]", "patch": "[N, D]", "parts": "[N, P, D]", "confidence": "[N, P]"}
    for k, layout in layouts.items():
        if out[k].ndim != layout.count(",") + 1:
            raise ValueError(f"{name}[{k!r}] must be {layout}, got shape {out[k].shape}")
    sizes = {k: out[k].shape[0] for k in REQUIRED_KEYS}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name} features disagree on the number of images: {sizes}")
    if out["confidence"].shape != out["parts"].shape[:2]:
        raise ValueError(
            f"{name}['confidence'] has shape {out['confidence'].shape}, expected [N, P] = "
            f"{out['parts'].shape[:2]} from {name}['parts']"
        )
    for k in REQUIRED_KEYS:
        if not np.isfinite(out[k]).all():
            raise ValueError(f"{name}[{k!r}] contains NaN or inf; check the model's outputs")
    if (out["confidence"] < 0).any():
        raise ValueError(f"{name}['confidence'] has negative values; confidences are >= 0")
    return out


class PirtDistance:
    """Pirt distance blocks: `dist(rows) -> [len(rows), G]` float32 (see the module docstring).

    Args:
        q: query features, a dict with "stripe" [Q, Ds], "patch" [Q, Dp], "parts" [Q, P, Dk]
            (the confidence-weighted part features; their scale does not matter, they are
            L2-normalised here) and "confidence" [Q, P] (>= 0, summing to 1 per image). Other
            keys are ignored.
        g: gallery features, the same keys with G images.
        settings: "top_n", "confidence", "released_index_defect" (see `DEFAULT_SETTINGS`).
        chunk_elements: float32 values per gathered part-key chunk (memory bound, not a result).
    """

    def __init__(
        self,
        q: Mapping[str, Any],
        g: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ):
        self.settings = check_settings(settings)
        qf, gf = _check_features("query", q), _check_features("gallery", g)
        for k in REQUIRED_KEYS:
            if qf[k].shape[1:] != gf[k].shape[1:]:
                raise ValueError(
                    f"query[{k!r}] has per-image shape {qf[k].shape[1:]}, gallery[{k!r}] "
                    f"{gf[k].shape[1:]}; both must come from the same model"
                )
        num_q, num_g = qf["stripe"].shape[0], gf["stripe"].shape[0]
        if num_g == 0:
            raise ValueError("the gallery is empty")
        self.defect_used = self.settings["released_index_defect"] and self.settings[
            "confidence"
        ] in ("query_and_gallery", "gallery")
        if self.defect_used and num_q > num_g:
            raise ValueError(
                f"released_index_defect=True reads the gallery confidence at the query's index, "
                f"but there are {num_q} queries and only {num_g} gallery images; turn the defect "
                f"off (released_index_defect=False)"
            )
        self.stripe = FeatureDistance(qf["stripe"], gf["stripe"], "cosine")
        self.patch = FeatureDistance(qf["patch"], gf["patch"], "cosine")
        self.q_keys = l2_normalize(qf["parts"])  # [Q, P, Dk]
        self.g_keys = l2_normalize(gf["parts"])  # [G, P, Dk]
        self.q_conf, self.g_conf = qf["confidence"], gf["confidence"]  # [Q, P], [G, P]
        self.top_n = min(self.settings["top_n"], num_g)
        self.chunk_elements = int(chunk_elements)

    @property
    def shape(self) -> tuple[int, int]:
        """(Q, G)."""
        return self.stripe.shape

    def top_candidates(self, d_stripe: np.ndarray) -> np.ndarray:
        """Each row's N smallest entries, ties by column index (as a stable argsort).

        Args:
            d_stripe: [R, G] distances.

        Returns:
            [R, N] int64 column indices, increasing along each row (a set, not a rank order).
        """
        num_r, num_g = d_stripe.shape
        n = self.top_n
        if n == num_g:
            return np.broadcast_to(np.arange(num_g), (num_r, num_g))
        kth = np.partition(d_stripe, n - 1, axis=1)[:, n - 1 : n]  # [R, 1] the N-th smallest
        take = d_stripe < kth
        need = n - take.sum(axis=1)  # how many entries equal to kth to add, >= 1
        tied = d_stripe == kth
        over = np.flatnonzero(tied.sum(axis=1) > need)  # rows with more ties than places
        if over.size:
            first = np.cumsum(tied[over], axis=1, dtype=np.int32) <= need[over, None]
            tied[over] &= first  # keep the tied entries with the smallest gallery indices
        take |= tied
        cols = np.nonzero(take)[1]
        return cols.reshape(num_r, n)

    def local_distance(self, q_index: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """`sum_p ||k_qp - k_gp|| w_p` of each query and its candidates.

        Args:
            q_index: [R] global query indices.
            cols: [R, N] gallery indices of each query's candidates.

        Returns:
            [R, N] float32.
        """
        num_r, n = cols.shape
        num_p, dim = self.g_keys.shape[1:]
        norms = np.empty((num_r, n, num_p), dtype=np.float32)
        step = max(1, self.chunk_elements // max(n * num_p * dim, 1))
        for s in range(0, num_r, step):  # sub-chunks of queries bound the [s, N, P, D] gather
            diff = self.g_keys[cols[s : s + step]]  # [s, N, P, D] (a copy)
            diff -= self.q_keys[q_index[s : s + step], None]
            np.square(diff, out=diff)
            np.sqrt(diff.sum(axis=-1), out=norms[s : s + step])
        mode = self.settings["confidence"]
        c_q = self.q_conf[q_index][:, None, :]  # [R, 1, P]
        # [R, N, P]; the released code reads gallery_confs[i] for every candidate: [R, 1, P].
        c_g = self.g_conf[q_index][:, None, :] if self.defect_used else self.g_conf[cols]
        if mode == "query_and_gallery":
            weights = np.sqrt(c_q * c_g)
        elif mode == "query":
            weights = c_q
        elif mode == "gallery":
            weights = c_g
        else:  # "none"
            weights = np.float32(1.0 / num_p)
        return (norms * weights).sum(axis=-1, dtype=np.float32)

    def __call__(self, rows: slice | np.ndarray) -> np.ndarray:
        """Distances of the queries `rows` (a slice or an index array) to the whole gallery.

        Returns:
            [R, G] float32: `d_stripe + d_patch + d_local`, with `d_local = 1000` outside each
            query's top-N by `d_stripe`.
        """
        q_index = np.arange(self.shape[0])[rows]
        d_stripe = self.stripe(q_index)  # [R, G]
        base = d_stripe + self.patch(q_index)
        cols = self.top_candidates(d_stripe)  # [R, N]
        del d_stripe
        local = self.local_distance(q_index, cols)  # [R, N]
        out = base + np.float32(FAR)
        r = np.arange(cols.shape[0])[:, None]
        out[r, cols] = base[r, cols] + local
        return out


def pirt_distance(
    q: Mapping[str, Any], g: Mapping[str, Any], settings: Mapping[str, Any] | None = None
) -> PirtDistance:
    """Pirt's matching rule as a `distance_block(rows: slice) -> [len(rows), G]` float32.

    Args:
        q: query features {"stripe": [Q, D], "patch": [Q, D], "parts": [Q, P, D],
            "confidence": [Q, P]} (extra keys ignored).
        g: gallery features, the same keys with G images.
        settings: "top_n" (100), "confidence" ("query_and_gallery" | "query" | "gallery" |
            "none"), "released_index_defect" (False); missing keys take these defaults.

    Returns:
        A `PirtDistance`, callable on a slice of query rows (its `.shape` is (Q, G)).

    Raises:
        ValueError: missing keys, mismatched shapes, non-finite features, negative
            confidences, unknown settings or values, or the defect with more queries than
            gallery images.

    Example:
        >>> dist = pirt_distance(q_feats, g_feats, {"top_n": 100})
        >>> metrics = evaluate_distance_blocks(dist, q_pids, g_pids, q_camids, g_camids)
    """
    return PirtDistance(q, g, settings)
