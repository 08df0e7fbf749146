"""The flow probe on a model: L_fc under reference flows, and MAT's part report.

`collect_groups` draws identity groups as training does, `flow_scores` scores L_fc on them
under the flows of `reference_flows.py` (no motion, global motions fitted to ground-truth
joints, the learned flow, a uniform segmentation, each single part, the ground-truth part
flow), and `part_report` is what every evaluation of a MAT run logs (`kind: "parts"` in
metrics.jsonl). `benchmarks/mat_flow_probe.py` is the command line.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax.data import pipeline
from occreid_jax.data.sampler import IdentitySampler
from occreid_jax.losses.consistency_inputs import consistency_maps, flow_jacobians
from occreid_jax.losses.mat import reconstruction_terms
from occreid_jax.probes import landmarks
from occreid_jax.probes.reference_flows import (
    BACKGROUND_RADIUS,
    constant_segmentation,
    global_affine,
    global_translation,
    joint_part_flow,
    no_motion,
    part_statistics,
    score,
    segmentation_flow,
    soft_joint_part_flow,
    to_unit,
    upsample_flow,
)


@dataclasses.dataclass
class Groups:
    """Training groups as L_fc sees them: G images of one identity each, A first.

    Attributes:
      images: [N, G, H, W, 3] ImageNet-normalised (augmented as in training, or not).
      joints: [N, G, 17, 2] ground-truth joints in [-1, 1], or None (no keypoints).
      visible: [N, G, 17] bool, the joints' visibility, or None.
    """

    images: np.ndarray
    joints: np.ndarray | None
    visible: np.ndarray | None = None


def collect_groups(config, split, num_groups: int, augment: bool = True) -> Groups:
    """The first `num_groups` identity groups the training sampler and pipeline would give.

    Args:
      config: a run config (data and sampler settings, seed).
      split: the train `datasets.Split` (with keypoints for the ground-truth flows).
      num_groups: N.
      augment: apply the training augmentation (pad-and-crop, flip, erasing) or none.
    """
    data = config.data
    sampler = IdentitySampler(
        split.labels,
        data.batch_size,
        data.instances_per_id,
        1,
        seed=config.seed,
        camids=split.camids,
        same_camera_pairs=data.same_camera_pairs,
    )
    with_keypoints = split.keypoints is not None
    batches = pipeline.train_batches(
        split,
        sampler,
        start_step=0,
        image_size=data.image_size,
        num_devices=1,
        pad=data.pad if augment else 0,
        flip_prob=data.flip_prob if augment else 0.0,
        erasing_prob=data.erasing_prob if augment else 0.0,
        seed=config.seed,
        with_keypoints=with_keypoints,
        pair_geometry=data.same_camera_pairs,
    )
    images, joints, visible = [], [], []
    while sum(len(x) for x in images) < num_groups * data.instances_per_id:
        batch = next(batches)
        images.append(batch["images"][0])
        if with_keypoints:
            joints.append(to_unit(batch["keypoints"][0], data.image_size))
            visible.append(batch["keypoints"][0][..., 2] > 0)
    size = data.image_size
    take = num_groups * data.instances_per_id
    grouped = np.concatenate(images)[:take].reshape(num_groups, -1, *size, 3)
    if not with_keypoints:
        return Groups(grouped, None)
    return Groups(
        grouped,
        np.concatenate(joints)[:take].reshape(num_groups, -1, 17, 2),
        np.concatenate(visible)[:take].reshape(num_groups, -1, 17),
    )


def model_outputs(
    apply_fn, variables: dict, images: np.ndarray, chunk: int = 64, heatmaps=None
) -> dict:
    """Eval-mode aux of images [M, H, W, 3] (with their pose heatmaps [M, H/4, W/4, 17] for a
    model that reads them), as numpy, in chunks of `chunk` images."""
    run = jax.jit(lambda x, h: apply_fn(variables, x, train=False, heatmaps=h)[1])
    parts = [
        jax.device_get(
            run(images[i : i + chunk], None if heatmaps is None else heatmaps[i : i + chunk])
        )
        for i in range(0, len(images), chunk)
    ]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def flow_scores(
    aux: dict,
    groups: Groups,
    settings,
    image_size,
    ground_truth_groups,
    background_radius: float = BACKGROUND_RADIUS,
) -> dict:
    """Mean over groups of L_fc's sum over pairs, under every reference flow.

    Args:
      aux: eval-mode aux of the groups' images, flattened group-major ([N * G, ...]).
      groups: the `Groups` (for the joints).
      settings: a `MatLossConfig` (what is compared, which pairs).
      image_size: (H, W) of the images.
      ground_truth_groups: joint groups of the ground-truth part flow.
      background_radius: its static background's distance from the joints (image heights).

    Returns:
      {flow name: L_fc}, plus "best single part" (the part whose motion alone scores best
      over all groups) and its index under "best single part index".
    """
    num, size_g = groups.images.shape[:2]
    others = 1 if settings.consistency_pairs == "first" else size_g - 1
    aspect = image_size[1] / image_size[0]
    flows: dict[str, dict[int, list]] = {}

    def per_image(values):
        return np.asarray(values).reshape(num, size_g, *np.shape(values)[1:])

    # One entry per (level, pair): levels are averaged, pairs summed, as L_fc does.
    levels = consistency_maps(jax.tree.map(jnp.asarray, aux), settings)
    for index, level in enumerate(levels):
        maps = per_image(level)
        size = maps.shape[2:4]
        for pair in range(1, 1 + others):

            def add(name, coords, pair=pair, maps=maps, index=index):
                kl = score(maps[:, 0], maps[:, pair], coords)
                flows.setdefault(name, {}).setdefault(index, []).append(kl)

            add("no motion", no_motion(num, size))
            if groups.joints is not None:
                a, x = groups.joints[:, 0], groups.joints[:, pair]
                add("global translation (joints)", global_translation(a, x, size))
                add("global affine (joints)", global_affine(a, x, size))
                for name, flow in (
                    ("ground-truth parts (joints)", joint_part_flow),
                    ("ground-truth parts, soft (joints)", soft_joint_part_flow),
                ):
                    add(name, flow(a, x, size, ground_truth_groups, background_radius, aspect))
                whole_body = (tuple(range(a.shape[1])),)
                body = soft_joint_part_flow(a, x, size, whole_body, background_radius, aspect)
                add("ground-truth body as one part, soft (joints)", body)
                if "segmentation" in aux and aux["segmentation"].shape[1:3] != size:
                    coarse_size = aux["segmentation"].shape[1:3]
                    coarse = soft_joint_part_flow(
                        a, x, coarse_size, ground_truth_groups, background_radius, aspect
                    )
                    add("ground-truth parts, soft, coarse", upsample_flow(coarse, size))
            if "keypoints" in aux and "segmentation" in aux:
                kp = per_image(aux["keypoints"])
                jac = per_image(flow_jacobians(aux, settings))
                seg = per_image(aux["segmentation"])
                motions = (kp[:, 0], jac[:, 0], kp[:, pair], jac[:, pair])
                add("learned", segmentation_flow(seg[:, 0], *motions, size))
                channels = seg.shape[-1]
                uniform = constant_segmentation(num, channels, None)
                add("uniform segmentation", segmentation_flow(uniform, *motions, size))
                for k in range(1, channels):
                    single = constant_segmentation(num, channels, k)
                    add(f"part {k}", segmentation_flow(single, *motions, size))
    scores = {
        name: float(np.mean([np.mean(np.sum(pairs, axis=0)) for pairs in by_level.values()]))
        for name, by_level in flows.items()
    }
    singles = {int(n.split()[1]): v for n, v in scores.items() if n.startswith("part ")}
    if singles:
        best = min(singles, key=singles.get)
        scores = {n: v for n, v in scores.items() if not n.startswith("part ")}
        scores["best single part"] = singles[best]
        scores["best single part index"] = best
    return scores


# What the eval-time part report looks at: the first gallery images of the split, and
# training groups drawn as the first batches of training draw them.
GALLERY_LIMIT = 256
REPORT_GROUPS = 32


def reports_parts(config) -> bool:
    """Whether evaluations also report MAT's part statistics (a MAT with both branches; with
    keypoints from pose heatmaps, the gallery's statistics only, measured with its heatmaps)."""
    model = config.model
    return model.name == "mat" and model.segmentation and model.keypoints != "none"


def gallery_subset(gallery, image_size, with_heatmaps: bool = False) -> tuple:
    """(the first `GALLERY_LIMIT` gallery images as a `datasets.Split`, their eval-pipeline
    images [M, H, W, 3], their pose heatmaps [M, H/4, W/4, 17] with `with_heatmaps` (the
    split's) or None): the held-out images of the part report."""
    count = min(len(gallery), GALLERY_LIMIT)
    subset = dataclasses.replace(
        gallery,
        **{
            f.name: getattr(gallery, f.name)[:count]
            for f in dataclasses.fields(gallery)
            if getattr(gallery, f.name) is not None
        },
    )
    batches = list(
        pipeline.eval_batches(
            subset, image_size=image_size, batch_size=64, num_devices=1,
            with_heatmaps=with_heatmaps,
        )
    )  # fmt: skip
    images = np.concatenate([b["images"][0][b["mask"][0]] for b in batches])
    if not with_heatmaps:
        return subset, images, None
    return subset, images, np.concatenate([b["heatmaps"][0][b["mask"][0]] for b in batches])


def part_report(
    apply_fn, variables: dict, gallery, groups: Groups, settings, image_size
) -> dict[str, float]:
    """MAT's parts at evaluation time (eval mode), for metrics.jsonl.

    `part_statistics` of the first `GALLERY_LIMIT` gallery images (keys prefixed
    `gallery_`); L_fc on the training `groups` under the learned flow, no motion, the
    learned motions under a uniform segmentation and the best single part's motion
    (`lfc_learned`, `lfc_no_motion`, `lfc_uniform_segmentation`, `lfc_best_single_part`),
    measured as the config's L_fc measures (feature KL, or the image reconstruction); and,
    where both splits have ground-truth joints, `keypoint_joint_error` and
    `template_joint_error` (`landmarks.joint_errors`: fitted on the groups' images, measured
    on the gallery images).
    """
    # A model whose keypoints come from pose heatmaps gets the gallery's, as retrieval does
    # (its keypoint prior shapes the segmentation).
    feed = settings.keypoints == "heatmaps" and gallery.heatmaps is not None
    subset, images, heatmaps = gallery_subset(gallery, image_size, with_heatmaps=feed)
    gallery_aux = model_outputs(apply_fn, variables, images, heatmaps=heatmaps)
    stats = part_statistics(gallery_aux["segmentation"], gallery_aux.get("keypoints"))
    report = {f"gallery_{k}": float(v) for k, v in stats.items()}
    flat_images = groups.images.reshape(-1, *groups.images.shape[2:])
    aux = model_outputs(apply_fn, variables, flat_images)
    if "keypoints" not in aux:  # keypoints from pose heatmaps: none at evaluation
        return report
    if settings.consistency_target == "image":
        scores = image_flow_scores(aux, flat_images, settings, groups.images.shape[1])
    else:
        scores = flow_scores(aux, Groups(groups.images, None), settings, image_size, ())
    for name in ("learned", "no motion", "uniform segmentation", "best single part"):
        report["lfc_" + name.replace(" ", "_")] = scores[name]
    if (
        "keypoints" in aux
        and groups.joints is not None
        and groups.visible is not None
        and subset.keypoints is not None
    ):
        aspect = image_size[1] / image_size[0]
        train = (
            aux["keypoints"],
            groups.joints.reshape(-1, 17, 2),
            groups.visible.reshape(-1, 17),
        )
        held_out = (
            gallery_aux["keypoints"],
            to_unit(subset.keypoints, image_size),
            subset.keypoints[..., 2] > 0,
        )
        report.update(landmarks.joint_errors(train, held_out, aspect))
    return report


def image_flow_scores(aux: dict, images: np.ndarray, settings, group_size: int) -> dict:
    """The image-reconstruction L_fc (`losses/mat.reconstruction_terms`) of the groups under
    the learned flow and the reference flows, the visibility map always the learned one.

    Args:
      aux: eval-mode aux of `images`, group-major.
      images: [N * G, H, W, 3] the groups' images.
      settings: a `MatLossConfig` (pairs, visibility, Jacobians).
      group_size: G.

    Returns:
      {"learned", "no motion", "uniform segmentation", "best single part",
      "best single part index"}: mean over groups of the sum over pairs.
    """
    seg = jnp.asarray(aux["segmentation"])
    channels = seg.shape[-1]

    @jax.jit
    def terms(flow_segmentation):
        values = reconstruction_terms(
            jnp.asarray(images),
            seg,
            jnp.asarray(aux["keypoints"]),
            flow_jacobians(jax.tree.map(jnp.asarray, aux), settings),
            group_size,
            settings.consistency_pairs,
            settings.consistency_visibility,
            flow_segmentation,
        )
        return jnp.mean(jnp.sum(values, axis=1))

    def constant(channel):
        one = constant_segmentation(len(images), channels, channel)
        return jnp.broadcast_to(one, seg.shape)

    scores = {
        "learned": float(terms(seg)),
        "no motion": float(terms(constant(0))),
        "uniform segmentation": float(terms(constant(None))),
    }
    singles = [float(terms(constant(k))) for k in range(1, channels)]
    best = int(np.argmin(singles))
    scores["best single part"] = singles[best]
    scores["best single part index"] = best + 1
    return scores


# ----------------------------------------------------------------------------- the gate

GLOBAL_MOTIONS = ("global translation (joints)", "global affine (joints)")
GROUND_TRUTH = ("ground-truth parts (joints)", "ground-truth parts, soft (joints)")


WHOLE_BODY = "ground-truth body as one part, soft (joints)"


def gate(scores: dict, margin: float) -> dict | None:
    """The gate: can a loss that rewards these scores produce parts at all?

    `gain` = 1 - (better ground-truth part flow) / (better global motion); the gate passes
    when it is at least `margin`. `body_gain` compares the soft part flow with the whole body
    moving as one part over the static background: below 0, the loss prefers one segment for
    the person to a split of the body.

    Returns:
      {"gain", "body_gain", "margin", "passed"}, or None without ground-truth joints.
    """
    if GROUND_TRUTH[0] not in scores:
        return None
    best_global = min(scores[name] for name in GLOBAL_MOTIONS)
    gain = 1.0 - min(scores[name] for name in GROUND_TRUTH) / best_global
    body_gain = 1.0 - scores[GROUND_TRUTH[1]] / scores[WHOLE_BODY]
    return {"gain": gain, "body_gain": body_gain, "margin": margin, "passed": gain >= margin}


def table(scores: dict) -> str:
    """Markdown table of the scores, relative to no motion."""
    base = scores["no motion"]
    lines = ["| flow | L_fc | vs no motion |", "|---|---|---|"]
    for name, value in scores.items():
        if name.endswith("index"):
            continue
        if name == "best single part":
            name = f"{name} ({scores['best single part index']})"
        lines.append(f"| {name} | {value:.4f} | {value / base - 1:+.1%} |")
    return "\n".join(lines)
