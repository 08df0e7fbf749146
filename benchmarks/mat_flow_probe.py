"""The flow probe: which motion does MAT's feature consistency (L_fc) reward on this data?

Scores L_fc, as the config computes it (what it compares, which pairs), on N training groups
drawn by the training sampler and pipeline, under the flows of
`occreid_jax/probes/reference_flows.py`:
no motion, one global translation and one global affine fitted to ground-truth joints, the
learned flow of a checkpoint, the learned motions under a uniform segmentation, the best
single part's motion, and the ground-truth part flow (nearest-joint partition of A, one
translation per joint group, a static background). The compared features come from the
checkpoint in --workdir (eval mode), or from the untrained model.

  python -m benchmarks.mat_flow_probe --config=configs/mat.py:synthetic --workdir=runs/mat
  python -m benchmarks.mat_flow_probe --config=configs/mat.py:synthetic --workdir=runs/mat \
      --config.loss.consistency_target=encoder --groups=64 --augment=false

The gate: parts can only pay off when the ground-truth part flow scores at least
`--gate` (5%) below the better of the two global motions. Prints a table and the verdict and
writes them to `<workdir>/flow_probe.json` (or --out).

Probe v2 (`--image`, the default; `occreid_jax/probes/image_probe.py`) scores the images
themselves on the (A, B) pairs: B's pixels brought into A's frame by ground-truth flows at
image resolution (the body affine everywhere; the body as one region over a still or a fitted
background; each limb group with its own motion), by the L1 pyramid of the image
reconstruction (scales 1, 1/2, 1/4) with and without the visibility map, for part maps at
`--strides` and `--parts`. Its gate: limbs >= 5% below the body as one region on average,
winning in >= 80% of the pairs with moderate limb motion, and a loss that falls all along
`S_t = (1 - t) S_one + t S_parts`. It needs no checkpoint.

  python -m benchmarks.mat_flow_probe --config=configs/mat.py:synthetic --groups=64
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from occreid_jax import families
from occreid_jax.data import datasets
from occreid_jax.errors import UserError
from occreid_jax.losses.objectives import MatLossConfig
from occreid_jax.nets.mat import COCO_GROUPS
from occreid_jax.probes import flow_probe, image_probe, reference_flows
from occreid_jax.training.run import Run

_CONFIG = config_flags.DEFINE_config_file("config", None, "MAT config file and variant.")
_WORKDIR = flags.DEFINE_string("workdir", "", "run whose latest checkpoint gives the features")
_GROUPS = flags.DEFINE_integer("groups", 32, "identity groups scored")
_AUGMENT = flags.DEFINE_bool("augment", True, "augment the groups as training does")
_GATE = flags.DEFINE_float("gate", 0.05, "relative margin the ground-truth part flow needs")
_GT_PARTS = flags.DEFINE_integer(
    "gt_parts", 0, "joint groups of the ground-truth flow (3, 6, 10, 17; 0: the model's K)"
)
_RADIUS = flags.DEFINE_float(
    "background_radius", reference_flows.BACKGROUND_RADIUS, "static beyond this (image heights)"
)
_OUT = flags.DEFINE_string("out", "", "JSON output (default <workdir>/flow_probe.json)")
_IMAGE = flags.DEFINE_bool("image", True, "also run probe v2 on the images (no model needed)")
_STRIDES = flags.DEFINE_list("strides", ["1", "2", "4", "8"], "probe v2: part-map strides")
_PARTS = flags.DEFINE_list("parts", ["5", "10"], "probe v2: limb groups K (5 or 10)")
_FIT_BACKGROUND = flags.DEFINE_bool(
    "fit_background", True, "probe v2: also score a fitted background translation"
)


def main(argv):
    del argv
    config = _CONFIG.value
    if config.model.name != "mat":
        raise UserError("the flow probe needs a MAT config (configs/mat.py)")
    run = Run(config, _WORKDIR.value or "/tmp/mat_flow_probe_untrained")
    split = datasets.load_split(run.builder, "train", with_heatmaps=False)
    settings = MatLossConfig.from_run_config(config)
    groups = flow_probe.collect_groups(config, split, _GROUPS.value, _AUGMENT.value)
    if _WORKDIR.value:
        model, _, state = run.restored_state()
        variables = {"params": state.params, "batch_stats": state.batch_stats}
    else:
        model = families.build_model("mat", **families.model_kwargs(config, split.num_classes))
        dummy = groups.images[0, :1]
        variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(config.seed), x, train=False))(
            dummy
        )
    images = groups.images.reshape(-1, *groups.images.shape[2:])
    aux = flow_probe.model_outputs(model.apply, variables, images)
    parts = COCO_GROUPS.get(_GT_PARTS.value or config.model.num_parts, COCO_GROUPS[10])
    scores = flow_probe.flow_scores(
        aux, groups, settings, config.data.image_size, parts, _RADIUS.value
    )
    verdict = flow_probe.gate(scores, _GATE.value)
    print(
        f"L_fc on {_GROUPS.value} training groups ({settings.consistency_target} maps, pairs "
        f"{settings.consistency_pairs}, augment {_AUGMENT.value}, "
        f"{'checkpoint ' + _WORKDIR.value if _WORKDIR.value else 'untrained model'}):"
    )
    print(flow_probe.table(scores))
    if "segmentation" in aux:
        stats = reference_flows.part_statistics(aux["segmentation"], aux.get("keypoints"))
        print("parts: " + ", ".join(f"{k} {v:.3g}" for k, v in stats.items()))
    if verdict:
        word = "PASSED" if verdict["passed"] else "FAILED"
        print(
            f"gate {word}: the better ground-truth part flow scores {verdict['gain']:+.1%} below "
            f"the better global motion (needs +{verdict['margin']:.0%}); the soft part flow "
            f"scores {verdict['body_gain']:+.1%} below the whole body as one part"
        )
    record = {"scores": scores, "gate": verdict, "groups": _GROUPS.value}
    if _IMAGE.value:
        record["image"] = _image_probe(groups)
    out = _OUT.value or (os.path.join(_WORKDIR.value, "flow_probe.json") if _WORKDIR.value else "")
    if out:
        with open(out, "w") as f:
            json.dump(record, f, indent=2)


def _image_probe(groups) -> dict:
    """Probe v2 on the groups' (A, B) pairs: prints its table and verdicts, returns them."""
    if groups.joints is None:
        raise UserError("probe v2 needs ground-truth joints: use the synthetic dataset")
    strides = [_positive_int(s, "--strides") for s in _STRIDES.value]
    parts = [_positive_int(p, "--parts") for p in _PARTS.value]
    known = sorted(image_probe.limb_flows.LIMB_GROUPS)
    unknown = sorted(set(parts) - set(known))
    if unknown:
        raise UserError(f"--parts {unknown} has no limb grouping; use {known}")
    visible = groups.visible[:, 0] & groups.visible[:, 1]
    pairs = image_probe.Pairs(
        groups.images[:, 0], groups.images[:, 1], groups.joints[:, 0], groups.joints[:, 1], visible
    )
    result = image_probe.run(pairs, strides, parts, _FIT_BACKGROUND.value)
    amount = result["articulation"]
    print(
        f"\nprobe v2 on {len(amount)} (A, B) pairs: limb motion beyond the body affine "
        f"(image heights) median {np.median(amount):.4f}, 90th percentile "
        f"{np.percentile(amount, 90):.4f}; {int(result['moderate'].sum())} pairs moderate "
        f"({image_probe.MODERATE[0]}-{image_probe.MODERATE[1]})"
    )
    if result["background_shift"] is not None:
        moved = np.abs(result["background_shift"]).max(-1) > 0
        print(f"fitted background translation non-zero in {int(moved.sum())} pairs")
    print(image_probe.table(result))
    return {
        "rows": result["rows"],
        "articulation_median": float(np.median(amount)),
        "moderate_pairs": int(result["moderate"].sum()),
    }


def _positive_int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{flag} takes positive integers, got {text!r}")
    return value


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
