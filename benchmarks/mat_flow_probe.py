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
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax
from absl import app, flags
from ml_collections import config_flags

from occreid_jax import families
from occreid_jax.data import datasets
from occreid_jax.errors import UserError
from occreid_jax.losses.objectives import MatLossConfig
from occreid_jax.nets.mat import COCO_GROUPS
from occreid_jax.probes import flow_probe, reference_flows
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
    out = _OUT.value or (os.path.join(_WORKDIR.value, "flow_probe.json") if _WORKDIR.value else "")
    if out:
        with open(out, "w") as f:
            json.dump({"scores": scores, "gate": verdict, "groups": _GROUPS.value}, f, indent=2)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
