"""bfloat16 compute trains like float32 on the tiny models; what must stay float32 does.

30 steps of each tiny model on the same synthetic batches (the shared tiny build, the real
augmentation), once with `train.dtype=float32`, once with bfloat16. Stated tolerance
(`TOLERANCE`): the loss of every step, and their mean, within a fraction of float32's; the
same top-1 (classifier) accuracy on 4 held-out batches, give or take two images (after 30
steps the tiny baseline is at 25-31% over 8 identities, so near-ties flip: 8 vs 10 of 32 when
this was written); parameters, BatchNorm statistics, optimiser state, logits, every softmax
and the loss in float32.
"""

import jax
import numpy as np
import pytest

from occreid_jax import families, optim
from occreid_jax.data import pipeline
from occreid_jax.data.sampler import IdentitySampler
from occreid_jax.run import Run

STEPS, HELD_OUT = 30, 4


def _batches(config, split, devices):
    sampler = IdentitySampler(
        split.labels, config.data.batch_size, config.data.instances_per_id, devices, seed=0
    )
    it = pipeline.train_batches(
        split, sampler, start_step=0, image_size=config.data.image_size, num_devices=devices,
        pad=config.data.pad, flip_prob=config.data.flip_prob,
        erasing_prob=config.data.erasing_prob, seed=0,
        with_heatmaps=config.pose.source in ("ground_truth", "precomputed"),
    )  # fmt: skip
    return [next(it) for _ in range(STEPS + HELD_OUT)]


def _train(config, split, batches, dtype):
    """(losses [STEPS], state, model) after STEPS steps in `dtype`."""
    from occreid_jax.train import create_train_state, parallel_train_step

    config.train.dtype = dtype
    family = families.get(config.model.name)
    model = family.module(**families.model_kwargs(config, split.num_classes))
    tx = optim.make_optimizer(config.train, optim.make_schedule(config.train, 10))
    state = create_train_state(
        model.clone(bn_axis_name="batch"), tx, jax.random.PRNGKey(0), config.data.image_size
    )
    settings = family.loss_settings(config)
    step = parallel_train_step(family.bound_objective(settings), forward=family.forward(settings))
    losses = []
    for batch in batches[:STEPS]:
        state, metrics = step(state, batch)
        assert metrics["loss"].dtype == np.float32
        losses.append(float(metrics["loss"][0]))
    return np.asarray(losses), state, model


def _top1(model, state, batches) -> tuple[float, int]:
    """(top-1 accuracy of the logits on the held-out batches, number of images)."""
    correct, total = 0, 0
    for batch in batches:
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
        inputs = {"heatmaps": flat["heatmaps"]} if "heatmaps" in flat else {}
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        _, aux = model.apply(variables, flat["images"], train=False, **inputs)
        logits = aux["logits"]
        logits = logits["stripe"] if isinstance(logits, dict) else logits  # Pirt: per branch
        assert logits.dtype == np.float32  # heads and losses stay float32
        correct += int((np.argmax(logits, -1) == flat["labels"]).sum())
        total += len(flat["labels"])
    return correct / total, total


def _exp_input_dtypes(jaxpr) -> set:
    """Dtypes of every `exp` input in a jaxpr and its sub-jaxprs (softmax's exponential)."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "exp":
            found.add(eqn.invars[0].aval.dtype)
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= _exp_input_dtypes(inner)
    return found


@pytest.mark.parametrize("model_name", ["pirt", "mat"])
def test_bfloat16_models_take_every_softmax_in_float32(model_name, tiny_config):
    config = tiny_config(model_name)
    config.train.dtype = "bfloat16"
    model = families.get(model_name).module(**families.model_kwargs(config, 4))
    height, width = config.data.image_size
    images = np.zeros((2, height, width, 3), np.float32)
    heatmaps = np.zeros((2, height // 4, width // 4, 17), np.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), images, heatmaps=heatmaps, train=False)
    )
    jaxpr = jax.make_jaxpr(
        lambda v: model.apply(
            v, images, heatmaps=heatmaps, train=True, mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(1)},
        )
    )(variables).jaxpr  # fmt: skip
    assert _exp_input_dtypes(jaxpr) == {np.dtype(np.float32)}  # attention, parts, segmentation


# (max, mean) of |loss_bf16 - loss_f32| / loss_f32 over the 30 steps. Measured on jax 0.10.2
# CPU (2026-12-03): baseline 3.8% / 1.2%, Pirt 5.9% / 1.3% (its first 4 steps within 0.1%: the
# two trajectories part slowly, as any two runs whose roundings differ do), MAT 4.8% / 1.8%.
# MAT drifted up to 14% (9% at step 5) when this test was written, most likely before the
# feature L_fc (stop-gradient backbone maps) replaced the segmentation L_fc; it was not
# re-measured which change removed the drift.
TOLERANCE = {"baseline": (0.05, 0.015), "pirt": (0.08, 0.02), "mat": (0.08, 0.02)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_name",
    [
        "baseline",
        pytest.param("pirt", marks=pytest.mark.full_xla),
        "mat",
    ],
)
def test_bfloat16_tracks_float32_for_30_steps(model_name, tiny_config, tmp_path):
    config = tiny_config(model_name)
    config.train.warmup_epochs = 0  # learn from the first step, so 30 steps move the loss
    run = Run(config, str(tmp_path))
    split = run.train_split()
    batches = _batches(config, split, jax.local_device_count())
    f32_losses, f32_state, model = _train(config, split, batches, "float32")
    bf16_losses, bf16_state, bf16_model = _train(config, split, batches, "bfloat16")

    for leaf in jax.tree.leaves((bf16_state.params, bf16_state.batch_stats, bf16_state.opt_state)):
        assert leaf.dtype in (np.float32, np.int32), leaf.dtype  # master weights stay float32
    relative = np.abs(bf16_losses - f32_losses) / np.abs(f32_losses)
    max_tolerance, mean_tolerance = TOLERANCE[model_name]
    assert relative.max() < max_tolerance and relative.mean() < mean_tolerance, relative
    if model_name == "baseline":  # it trained (Pirt's loss moves little in 30 tiny steps)
        assert f32_losses[-5:].mean() < f32_losses[:5].mean()
    f32_top1, images = _top1(model, f32_state, batches[STEPS:])
    bf16_top1, _ = _top1(bf16_model, bf16_state, batches[STEPS:])
    assert abs(bf16_top1 - f32_top1) <= 2 / images + 1e-9, (f32_top1, bf16_top1)
