"""The image-space flow probe: does reconstructing A from X reward body parts?

On pairs (A, X) of frames of one walk with ground-truth joints, X's pixels are brought into A's
frame by ground-truth flows (`limb_flows.py`) and scored against A by the L1 pyramid of the
image-reconstruction consistency (`losses/mat.l1_pyramid`, scales 1, 1/2, 1/4), with and
without the visibility map (`losses/mat.visibility_map`). The flows:

  no motion; the body affine everywhere (one global motion); the body as one region moving
  by its affine over a still background, or over a fitted background translation; each
  limb group moving by its own motion (`limb_flows.LIMB_GROUPS`), over either background.

The gate (`gate`): the per-limb flow scores at least `margin` below the body as one region on
average AND wins in at least `win_rate` of the pairs with moderate limb motion, and the loss
falls monotonically along `S_t = (1 - t) S_one + t S_parts` (no barrier between one region
and the parts). `sweep` repeats it for segmentations at several strides and part counts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax import motion
from occreid_jax.losses.mat import l1_pyramid, visibility_map
from occreid_jax.probes import limb_flows

# Pairs whose limbs move "moderately": the RMS residual of the visible joints after the body
# affine, in image heights (not in any paper: about 1.3 to 8 pixels at 128 pixels high).
MODERATE = (0.01, 0.06)
PATH_STEPS = 11


@dataclasses.dataclass
class Pairs:
    """Pairs of images of one person, A the target frame and X the source.

    Attributes:
      a, x: [N, H, W, 3] images (normalised as the model sees them).
      joints_a, joints_x: [N, 17, 2] ground-truth joints in [-1, 1].
      visible: [N, 17] bool, joints visible in both images.
    """

    a: np.ndarray
    x: np.ndarray
    joints_a: np.ndarray
    joints_x: np.ndarray
    visible: np.ndarray

    @property
    def aspect(self) -> float:
        return self.a.shape[2] / self.a.shape[1]


def articulation(pairs: Pairs) -> np.ndarray:
    """[N] RMS distance, in image heights, between X's visible joints and A's moved by the body
    affine: how much the limbs move beyond one motion of the whole body."""
    body = limb_flows.body_motion(pairs.joints_a, pairs.joints_x, pairs.visible, pairs.aspect)
    moved = np.einsum("nij,nkj->nki", body[:, 0, :, :2], pairs.joints_a) + body[:, 0, None, :, 2]
    residual = (moved - pairs.joints_x) * limb_flows.height_scale(pairs.aspect)
    err = np.sum(np.square(residual), -1)
    vis = pairs.visible.astype(np.float64)
    return np.sqrt(np.sum(err * vis, 1) / np.maximum(vis.sum(1), 1))


@jax.jit
def _scores(a, x, coords, weight):
    warped = motion.grid_sample(x, coords, padding="border")
    return l1_pyramid(a, warped, weight)


def score(pairs: Pairs, coords: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """[N] L1 pyramid of A against X read at `coords` [N, H, W, 2], weighted by `weight`
    [N, H, W, 1] (None: 1)."""
    if weight is None:
        weight = np.ones((*pairs.a.shape[:3], 1), np.float32)
    return np.asarray(
        _scores(
            jnp.asarray(pairs.a),
            jnp.asarray(pairs.x),
            jnp.asarray(coords, jnp.float32),
            jnp.asarray(weight, jnp.float32),
        ),
        np.float64,
    )


def fit_background(pairs: Pairs, background: np.ndarray, max_shift: int = 6) -> np.ndarray:
    """The integer-pixel translation of X that best explains A's background pixels (L1, exhaustive
    over [-max_shift, max_shift]^2), as motions [N, 1, 2, 3].

    Args:
      background: [N, H, W] bool, A's pixels outside the person.
    """
    height, width = pairs.a.shape[1:3]
    grid = np.asarray(motion.make_grid(height, width))
    weight = background[..., None].astype(np.float32)
    best = np.full(len(pairs.a), np.inf)
    shift = np.zeros((len(pairs.a), 2))
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            step = np.asarray([2.0 * dx / width, 2.0 * dy / height])
            coords = np.broadcast_to(grid + step, (len(pairs.a), height, width, 2))
            value = score(pairs, coords, weight)
            better = value < best
            best = np.where(better, value, best)
            shift[better] = step
    return limb_flows.translation_motion(shift)


@dataclasses.dataclass
class Segmentations:
    """Ground-truth segmentations of A and the motions they mix, for one part grouping.

    Attributes:
      parts: [N, H, W, K+1] one-hot limb groups of A (channel 0 background).
      one: [N, H, W, 2] the same person as one region.
      foreground_x: [N, H, W, 1] X's person mask (for the visibility map).
      limb_motions: [N, K, 2, 3]; body_motion: [N, 1, 2, 3].
    """

    parts: np.ndarray
    one: np.ndarray
    foreground_x: np.ndarray
    limb_motions: np.ndarray
    body_motion: np.ndarray


def segmentations(pairs: Pairs, groups) -> Segmentations:
    size = pairs.a.shape[1:3]
    labels = limb_flows.part_map(pairs.joints_a, size, groups)
    parts = limb_flows.one_hot(labels, len(groups) + 1)
    one = np.stack([parts[..., 0], 1.0 - parts[..., 0]], -1)
    labels_x = limb_flows.part_map(pairs.joints_x, size, groups)
    return Segmentations(
        parts=parts,
        one=one,
        foreground_x=(labels_x > 0)[..., None].astype(np.float32),
        limb_motions=limb_flows.group_motions(
            pairs.joints_a, pairs.joints_x, groups, pairs.visible, pairs.aspect
        ),
        body_motion=limb_flows.body_motion(
            pairs.joints_a, pairs.joints_x, pairs.visible, pairs.aspect
        ),
    )


def _resampled(seg: Segmentations, stride: int) -> Segmentations:
    return dataclasses.replace(
        seg,
        parts=limb_flows.resample_segmentation(seg.parts, stride),
        one=limb_flows.resample_segmentation(seg.one, stride),
        foreground_x=limb_flows.resample_segmentation(
            np.concatenate([1 - seg.foreground_x, seg.foreground_x], -1), stride
        )[..., 1:],
    )


def pair_scores(pairs: Pairs, seg: Segmentations, background: np.ndarray | None) -> dict:
    """{flow name: {"plain": [N], "visibility": [N]}} under the module docstring's flows.

    Args:
      seg: the segmentations (at the stride under test).
      background: the fitted background motion [N, 1, 2, 3], or None (only still rows).
    """
    size = pairs.a.shape[1:3]
    num = len(pairs.a)
    grid = np.broadcast_to(np.asarray(motion.make_grid(*size)), (num, *size, 2))
    flows = {
        "no motion": grid,
        "body affine everywhere": limb_flows.apply_motions(seg.body_motion, size)[:, 0],
        "body as one, still background": limb_flows.compose_flow(seg.one, seg.body_motion),
        "limbs, still background": limb_flows.compose_flow(seg.parts, seg.limb_motions),
    }
    if background is not None:
        flows["body as one, fitted background"] = limb_flows.compose_flow(
            seg.one, seg.body_motion, background
        )
        flows["limbs, fitted background"] = limb_flows.compose_flow(
            seg.parts, seg.limb_motions, background
        )
    visibility = np.asarray(
        visibility_map(jnp.asarray(seg.foreground_x), jnp.asarray(1.0 - seg.parts[..., :1]))
    )
    return {
        name: {"plain": score(pairs, coords, None), "visibility": score(pairs, coords, visibility)}
        for name, coords in flows.items()
    }


def path_scores(pairs: Pairs, seg: Segmentations, weighting: str) -> np.ndarray:
    """Mean loss along `S_t = (1 - t) S_one + t S_parts`, t in [0, 1] (`PATH_STEPS` values).

    Both segmentations share A's person mask, so S_t keeps the background channel and splits
    the person's mass between the body motion and the limb motions: [PATH_STEPS] float64.
    """
    motions = np.concatenate([seg.body_motion, seg.limb_motions], axis=1)
    visibility = None
    if weighting == "visibility":
        visibility = np.asarray(
            visibility_map(jnp.asarray(seg.foreground_x), jnp.asarray(1.0 - seg.parts[..., :1]))
        )
    out = []
    for t in np.linspace(0.0, 1.0, PATH_STEPS):
        mixed = np.concatenate(
            [seg.parts[..., :1], (1 - t) * seg.one[..., 1:], t * seg.parts[..., 1:]], -1
        )
        out.append(score(pairs, limb_flows.compose_flow(mixed, motions), visibility).mean())
    return np.asarray(out)


def gate(
    scores: dict,
    path: np.ndarray,
    moderate: np.ndarray,
    weighting: str,
    background: str = "still",
    margin: float = 0.05,
    win_rate: float = 0.8,
) -> dict:
    """The probe's verdict for one weighting ("plain" or "visibility") and background.

    Returns:
      {"gain": 1 - mean(limbs) / mean(body as one), "wins": fraction of moderate pairs where
      the limbs score lower, "moderate_pairs", "monotonic": the path never rises, "passed"}.
    """
    limbs = scores[f"limbs, {background} background"][weighting]
    body = scores[f"body as one, {background} background"][weighting]
    gain = 1.0 - limbs.mean() / body.mean()
    wins = float(np.mean(limbs[moderate] < body[moderate])) if moderate.any() else float("nan")
    monotonic = bool(np.all(np.diff(path) <= 1e-9 * abs(path[0])))
    return {
        "gain": float(gain),
        "wins": wins,
        "moderate_pairs": int(moderate.sum()),
        "monotonic": monotonic,
        "passed": bool(gain >= margin and wins >= win_rate and monotonic),
    }


def run(pairs: Pairs, strides=(1, 2, 4, 8), part_counts=(5, 10), fit_bg: bool = True) -> dict:
    """Everything the probe prints: per (K, stride) the mean scores of each flow under both
    weightings, the path and the gate; plus the articulation of the pairs.

    Returns:
      {"articulation": [N], "moderate": [N] bool, "background_shift": [N, 2] or None,
       "rows": [{"parts", "stride", "scores": {flow: {weighting: mean}}, "path": {weighting:
       [steps]}, "gate": {weighting: {background: verdict}}}]}.
    """
    amount = articulation(pairs)
    moderate = (amount >= MODERATE[0]) & (amount <= MODERATE[1])
    background = None
    if fit_bg:
        full = segmentations(pairs, limb_flows.LIMB_GROUPS[part_counts[0]])
        background = fit_background(pairs, full.parts[..., 0] > 0.5)
    rows = []
    for parts in part_counts:
        base = segmentations(pairs, limb_flows.LIMB_GROUPS[parts])
        for stride in strides:
            seg = _resampled(base, stride)
            scores = pair_scores(pairs, seg, background)
            paths = {w: path_scores(pairs, seg, w) for w in ("plain", "visibility")}
            verdicts = {
                w: {
                    bg: gate(scores, paths[w], moderate, w, bg)
                    for bg in (("still", "fitted") if background is not None else ("still",))
                }
                for w in ("plain", "visibility")
            }
            rows.append(
                {
                    "parts": parts,
                    "stride": stride,
                    "scores": {
                        name: {w: float(v.mean()) for w, v in by_weight.items()}
                        for name, by_weight in scores.items()
                    },
                    "path": {w: p.tolist() for w, p in paths.items()},
                    "gate": verdicts,
                }
            )
    shift = None if background is None else background[:, 0, :, 2]
    return {"articulation": amount, "moderate": moderate, "background_shift": shift, "rows": rows}


def table(result: dict) -> str:
    """Markdown: one line per (K, stride, weighting): each flow relative to no motion, the
    limbs' gain over the body as one region, their win rate on moderate pairs, the path."""
    lines = [
        "| K | stride | weighting | body affine everywhere | body as one | limbs | body as one, "
        "fitted bg | limbs, fitted bg | gain (still / fitted) | wins on moderate pairs | "
        "path falls | gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for weighting in ("plain", "visibility"):
            s = {name: v[weighting] for name, v in row["scores"].items()}
            base = s["no motion"]

            def rel(name, s=s, base=base):
                return f"{s[name] / base - 1:+.1%}" if name in s else "-"

            verdicts = row["gate"][weighting]
            gains = " / ".join(f"{v['gain']:+.1%}" for v in verdicts.values())
            wins = " / ".join(f"{v['wins']:.0%}" for v in verdicts.values())
            passed = " / ".join("pass" if v["passed"] else "fail" for v in verdicts.values())
            lines.append(
                f"| {row['parts']} | {row['stride']} | {weighting} | "
                f"{rel('body affine everywhere')} | {rel('body as one, still background')} | "
                f"{rel('limbs, still background')} | {rel('body as one, fitted background')} | "
                f"{rel('limbs, fitted background')} | {gains} | {wins} | "
                f"{'yes' if next(iter(verdicts.values()))['monotonic'] else 'no'} | {passed} |"
            )
    return "\n".join(lines)
