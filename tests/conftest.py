"""Test setup: two fake CPU devices, XLA's quick-compile mode, and shared tiny-run fixtures.

* Two CPU devices for every test, so pmap paths run as on a multi-GPU host.
* `jax_disable_most_optimizations` (as flax's tests): the tiny models compile in about half
  the time. No test asserts a speed, and every comparison is either between two computations
  compiled the same way or within a tolerance that XLA's fusion choices do not reach.
  Subprocesses started by tests inherit it through JAX_DISABLE_MOST_OPTIMIZATIONS. Tests
  marked `full_xla` compile with every optimisation: on jax 0.10 (CPU) the unoptimised
  compile of Pirt's pose-guided train step returns NaN gradients where the optimised one
  (and the same computation without jit) returns finite ones.
* JAX's persistent compilation cache, in a folder of this test session (or the one
  JAX_COMPILATION_CACHE_DIR names): the same tiny models compile in test after test, and in
  the subprocesses some tests start; an executable whose HLO and compile options were seen
  before is loaded instead of compiled again. Removed at the end of the session.
* `tiny_data_dir`: the "tiny" synthetic build, made once per session.
* `tiny_config(model)`: `configs/<model>.py:synthetic,size=tiny` reading that build.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # also for subprocesses
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # pytest-xdist workers inherit the folder
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="occreid-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every executable
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

# Must happen before any JAX computation creates the CPU backend.
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _xla_optimizations(request):
    """Full XLA optimisations for tests marked `full_xla` (see the module docstring)."""
    if request.node.get_closest_marker("full_xla") is None:
        yield
        return
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """A tfds data_dir holding the "tiny" synthetic build (built once per session)."""
    from occreid_jax.data import datasets

    path = str(tmp_path_factory.mktemp("tfds_tiny"))
    datasets.prepare("synthetic", "tiny", path)
    return path


@pytest.fixture
def tiny_config(tiny_data_dir):
    """`make(model="baseline")` -> that model's size=tiny synthetic config on the shared build."""
    from occreid_jax.config_files import load_config_file

    def make(model: str = "baseline"):
        module = load_config_file(os.path.join(ROOT, "configs", f"{model}.py"))
        config = module.get_config("synthetic,size=tiny")
        config.data.data_dir = tiny_data_dir
        return config

    return make


@pytest.fixture
def dense_rule_rerank():
    """`rerank(make_block, q, g, ids, k1=20, k2=6) -> metrics`: the dense reference of
    re-ranking by a matching rule, on the whole (Q+G)^2 matrix (row a: image a as the probe)."""
    import numpy as np

    from occreid_jax.evaluation import evaluate_rank
    from occreid_jax.evaluation.rerank import k_reciprocal_rerank

    def rerank(make_block, q, g, ids, k1=20, k2=6):
        sets = {"q": q, "g": g}
        sizes = {name: len(next(iter(feats.values()))) for name, feats in sets.items()}
        rows = [
            np.concatenate([make_block(sets[a], sets[b])(slice(0, sizes[a])) for b in "qg"], axis=1)
            for a in "qg"
        ]
        whole = np.concatenate(rows)
        final = k_reciprocal_rerank(np.ascontiguousarray(whole.T), sizes["q"], k1, k2)
        return evaluate_rank(final, *ids)

    return rerank


@pytest.fixture
def pirt_embeddings():
    """`make(rng, n, stripe=8, patch=8, parts=3, part_dim=8)` -> random Pirt embeddings of n
    images (confidences summing to 1)."""

    def make(rng, n, stripe=8, patch=8, parts=3, part_dim=8):
        conf = rng.random((n, parts)).astype("float32")
        return {
            "stripe": rng.normal(size=(n, stripe)).astype("float32"),
            "patch": rng.normal(size=(n, patch)).astype("float32"),
            "parts": rng.normal(size=(n, parts, part_dim)).astype("float32"),
            "confidence": conf / conf.sum(axis=1, keepdims=True),
        }

    return make


TINY_BUNDLE_KWARGS = {"num_classes": 6, "backbone": "resnet_tiny", "last_stride": 1}
TINY_BUNDLE_IMAGE = (64, 32)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory) -> str:
    """An export bundle of an untrained tiny baseline (64 x 32 inputs), written once per session.

    Its batch statistics are made non-trivial so that normalisation errors would show."""
    import numpy as np

    from occreid_jax import families
    from occreid_jax.bundles import export

    kwargs = dict(TINY_BUNDLE_KWARGS, dtype="float32")
    model = families.build_model("baseline", **kwargs)
    images = np.random.default_rng(0).normal(size=(2, *TINY_BUNDLE_IMAGE, 3)).astype("float32")
    variables = jax.device_get(model.init(jax.random.PRNGKey(0), images, train=False))
    rng = np.random.default_rng(1)
    variables["batch_stats"] = jax.tree.map(
        lambda x: x + rng.uniform(0, 0.1, x.shape).astype(x.dtype), variables["batch_stats"]
    )
    return export.write(
        str(tmp_path_factory.mktemp("bundle") / "export"),
        model_name="baseline",
        model_kwargs=kwargs,
        variables=variables,
        image_size=TINY_BUNDLE_IMAGE,
        matching={"metric": "cosine", "flip": True},
    )
