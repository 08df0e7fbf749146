"""`--mode=visualize`: keypoints and part segmentation of a trained model as PNGs (MAT Fig. 1, 3).

For the first few queries of the evaluated dataset and, for each, a gallery image of the same
person, one strip of four panels:

    image | image with keypoints | part segmentation | image with segmentation overlay

written to `<workdir>/visualize/<split>_<index>_pid<pid>.png`, plus all strips stacked in
`<workdir>/visualize/sheet.png`. Part k and keypoint k share a colour; the background segment
is black. The segmentation is drawn soft (each pixel the probability-weighted mix of the part
colours), upsampled bilinearly to the image.
"""

from __future__ import annotations

import colorsys
import os

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from occreid_jax import motion
from occreid_jax.bundles import atomic
from occreid_jax.data import IMAGENET_MEAN, IMAGENET_STD, datasets, pipeline
from occreid_jax.errors import UserError


def palette(num_parts: int) -> np.ndarray:
    """[K+1, 3] uint8 RGB colours: black for the background, evenly spaced hues for parts."""
    colours = [(0, 0, 0)]
    for k in range(num_parts):
        r, g, b = colorsys.hsv_to_rgb(k / max(num_parts, 1), 0.85, 1.0)
        colours.append((int(255 * r), int(255 * g), int(255 * b)))
    return np.asarray(colours, np.uint8)


def render_strip(
    image: np.ndarray,
    segmentation: np.ndarray,
    keypoints: np.ndarray | None = None,
    scale: int = 2,
    alpha: float = 0.55,
) -> np.ndarray:
    """The four panels of one image, side by side.

    Args:
      image: [H, W, 3] uint8 RGB.
      segmentation: [h, w, K+1] part probabilities (channel 0 background).
      keypoints: [K, 2] in [-1, 1] (`occreid_jax.motion` coordinates), or None (panel 2 then
        shows the plain image).
      scale: integer upscaling of every panel (nearest neighbour), for small Re-ID crops.
      alpha: opacity of the overlay's part colours.

    Returns:
      [H * scale, 4 * W * scale, 3] uint8 RGB.
    """
    height, width = image.shape[:2]
    colours = palette(segmentation.shape[-1] - 1).astype(np.float32)
    soft = np.einsum("hwk,kc->hwc", segmentation.astype(np.float32), colours)
    seg_image = cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR)
    foreground = cv2.resize(
        1.0 - segmentation[..., 0].astype(np.float32), (width, height), cv2.INTER_LINEAR
    )[..., None]
    overlay = image * (1 - alpha * foreground) + alpha * foreground * seg_image
    big = [
        cv2.resize(p.clip(0, 255).astype(np.uint8), None, fx=scale, fy=scale,
                   interpolation=cv2.INTER_NEAREST)
        for p in (image, image, seg_image, overlay)
    ]  # fmt: skip
    if keypoints is not None:
        points = np.asarray(motion.to_pixels(jnp.asarray(keypoints), height, width)) * scale
        radius = max(2, (width * scale) // 32)
        panel = np.ascontiguousarray(big[1])
        for k, (x, y) in enumerate(points):
            centre = (int(round(x)), int(round(y)))
            cv2.circle(panel, centre, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(
                panel, centre, radius, tuple(int(c) for c in colours[k + 1]), -1, cv2.LINE_AA
            )
        big[1] = panel
    return np.concatenate(big, axis=1)


def _pick(query: datasets.Split, gallery: datasets.Split, num: int) -> list[tuple[str, int]]:
    """The first `num` queries, each followed by a gallery image of the same person."""
    picks: list[tuple[str, int]] = []
    for q in range(min(num, len(query))):
        picks.append(("query", q))
        same = np.flatnonzero(gallery.pids == query.pids[q])
        other_camera = same[gallery.camids[same] != query.camids[q]]
        candidates = other_camera if len(other_camera) else same
        if len(candidates):
            picks.append(("gallery", int(candidates[0])))
    return picks


def _subset(split: datasets.Split, indices: list[int]) -> datasets.Split:
    idx = np.asarray(indices, np.int64)
    return datasets.Split(
        images=split.images[idx],
        pids=split.pids[idx],
        camids=split.camids[idx],
        labels=split.labels[idx],
        filenames=split.filenames[idx],
        heatmaps=None if split.heatmaps is None else np.asarray(split.heatmaps[idx]),
    )


def visualize(config: ml_collections.ConfigDict, workdir: str, num_queries: int = 4) -> list[str]:
    """Writes the strips of the workdir's latest checkpoint; returns the PNG paths."""
    from occreid_jax.evaluation.features import eval_dataset
    from occreid_jax.training.run import Run

    exp = Run(config, workdir)
    model, _, state = exp.restored_state()
    rows = datasets.eval_sets(eval_dataset(config))
    query_name, gallery_name = next(iter(rows.values()))
    splits = {"query": exp.eval_splits[query_name], "gallery": exp.eval_splits[gallery_name]}
    picks = _pick(splits["query"], splits["gallery"], num_queries)
    chosen = {name: _subset(splits[name], [i for n, i in picks if n == name]) for name in splits}
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    @jax.jit
    def apply(variables, images, heatmaps):
        inputs = {} if heatmaps is None else {"heatmaps": heatmaps}
        return model.apply(variables, images, train=False, **inputs)[1]

    out_dir = os.path.join(exp.workdir, "visualize")
    os.makedirs(out_dir, exist_ok=True)
    paths, strips = [], {}
    for name, split in chosen.items():
        if not len(split):
            continue
        batch = next(
            pipeline.eval_batches(
                split,
                image_size=config.data.image_size,
                batch_size=len(split),
                num_devices=1,
                with_heatmaps=split.heatmaps is not None,  # keypoints fed by pose heatmaps
            )
        )
        images = batch["images"][0]
        heatmaps = batch["heatmaps"][0] if "heatmaps" in batch else None
        aux = jax.device_get(apply(variables, images, heatmaps))
        if "segmentation" not in aux:
            raise UserError(
                f"model {config.model.name!r} has no part segmentation to draw; "
                "--mode=visualize is for MAT (with model.segmentation=True)"
            )
        pixels = images * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN)
        pixels = pixels.clip(0, 255).astype(np.uint8)
        for row, index in enumerate([i for n, i in picks if n == name]):
            keypoints = aux["keypoints"][row] if "keypoints" in aux else None
            strip = render_strip(pixels[row], aux["segmentation"][row], keypoints)
            path = os.path.join(out_dir, f"{name}_{index}_pid{int(split.pids[row])}.png")
            atomic.write_image(path, strip)
            paths.append(path)
            strips[(name, index)] = strip
    sheet = np.concatenate([strips[p] for p in picks if p in strips], axis=0)
    sheet_path = os.path.join(out_dir, "sheet.png")
    atomic.write_image(sheet_path, sheet)
    return [*paths, sheet_path]
