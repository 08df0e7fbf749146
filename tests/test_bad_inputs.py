"""What a hostile but realistic user can get wrong, through the CLI (in process) and the API.

Each case asserts the exit status 2, one line on stderr naming the problem (no traceback) and
that nothing was written where nothing should be. One tiny trained run (module fixture) serves
every case that needs a workdir, a checkpoint or an export.
"""

import contextlib
import io
import json
import os
import shutil
import sys

import pytest
from absl import flags

from occreid_jax import main

TINY = "--config=configs/baseline.py:synthetic,size=tiny"


def cli(*args: str) -> tuple[int, str, str]:
    """Runs `python -m occreid_jax.main ARGS` in this process: (exit status, stderr, stdout)."""
    for name in list(flags.FLAGS):  # the previous run's --config.* override flags
        if name.startswith("config."):
            delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    err, out = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["occreid_jax.main", *args]
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            main.main()
    except SystemExit as stop:
        code = stop.code or 0
    finally:
        sys.argv = argv
    return code, err.getvalue(), out.getvalue()


def assert_one_line_error(code: int, stderr: str, expected: str) -> str:
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    return last


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data_dir):
    """A tiny baseline run: 2 epochs x 2 steps, checkpoints at steps 2 and 4, one evaluation."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    code, stderr, _ = cli(TINY, f"--workdir={workdir}", f"--config.data.data_dir={tiny_data_dir}")
    assert code == 0, stderr[-3000:]
    return {"workdir": workdir, "data_dir": tiny_data_dir}


def _copy_run(trained, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(trained["workdir"], workdir)
    return workdir


def _read(workdir: str, name: str) -> str:
    with open(os.path.join(workdir, name)) as f:
        return f.read()


def _steps(workdir: str, kind: str = "train") -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["step"] for r in map(json.loads, f) if r["kind"] == kind]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--config.train.lr=-0.001", "train.lr=-0.001 must be a finite number > 0"),
        ("--config.train.lr=nan", "train.lr=nan must be a finite number > 0"),
        ("--config.train.momentum=1.5", "train.momentum=1.5 must be a finite number >= 0 and"),
        ("--config.loss.ce_weight=-1", "loss.ce_weight=-1.0 must be a finite number >= 0"),
        ("--config.data.erasing_prob=2", "data.erasing_prob=2.0 must be"),
        ("--config.train.learning_rate=0.1", "unknown config field train.learning_rate; the"),
        ("--config.train.lr.x=1", "config field train.lr is a value, not a group"),
        ("--config.data.image_size=(0,0)", "image_size=(0, 0) must be two whole numbers from 32"),
        ("--config.data.image_size=(100000,64)", "must be two whole numbers from 32 to 2048"),
        ("--config.eval.memory_mib=inf", "eval.memory_mib=inf must be a finite number > 0"),
        ("--config.data.pad=-1", "data.pad=-1 must be a whole number >= 0"),
        ("--config.seed=-3", "seed=-3 must be a whole number >= 0"),
    ],
)
def test_config_values_are_refused_before_any_data_is_read(tmp_path, override, expected):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    code, stderr, _ = cli(
        TINY, f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", override
    )
    assert_one_line_error(code, stderr, expected)
    assert not workdir.exists() and not data_dir.exists()


@pytest.mark.slow
def test_divergence_stops_before_saving_and_keeps_the_last_good_checkpoint(trained, tmp_path):
    # Resume the trained run (checkpoint at step 4) for a third epoch at a huge rate: step 5
    # logs the loss of the good weights, step 6 that of the diverged ones; step 6 would save
    # and evaluate, neither happens.
    workdir = _copy_run(trained, tmp_path)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    results = _read(workdir, "results.json")
    code, stderr, _ = cli(
        TINY, f"--workdir={workdir}", f"--config.data.data_dir={trained['data_dir']}",
        "--config.train.epochs=3", "--config.train.lr=1e6",
    )  # fmt: skip
    last = assert_one_line_error(code, stderr, "training diverged at step 6: loss ")
    assert "the last good checkpoint (step 4) stays the latest" in last
    assert "lower --config.train.lr" in last
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    assert _read(workdir, "results.json") == results
    assert _steps(workdir) == [1, 2, 3, 4, 5]  # the diverged step is not logged either


def _break_step(workdir: str, step: int) -> None:
    """Truncates the largest array file of a checkpoint step (a disk that filled up)."""
    folder = os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d")
    largest = max((os.path.join(folder, f) for f in os.listdir(folder)), key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(100)


@pytest.mark.slow
def test_a_truncated_checkpoint_falls_back_to_the_newest_intact_step(trained, tmp_path):
    workdir = _copy_run(trained, tmp_path)
    _break_step(workdir, 4)
    common = (TINY, f"--workdir={workdir}", f"--config.data.data_dir={trained['data_dir']}")
    code, stderr, out = cli(*common, "--mode=eval")
    assert code == 0 and "Traceback" not in stderr, stderr[-3000:]
    warning = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "unreadable checkpoint at step 4" in warning[0], stderr[-2000:]
    assert "OUT_OF_RANGE" in warning[0] and warning[0].endswith(("...)", ")"))
    assert "Event loop is closed" not in stderr
    assert "occluded queries" in out
    # Training resumes from step 2, sets the broken step aside, saves step 4 again, and every
    # step is logged once although steps 3 and 4 ran twice.
    code, stderr, _ = cli(*common)
    assert code == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "4.broken"]
    assert _steps(workdir) == [1, 2, 3, 4] and _steps(workdir, "eval") == [4]
    history = json.loads(_read(workdir, "results.json"))["history"]
    assert [h["step"] for h in history] == [4]


def test_a_workdir_whose_every_checkpoint_is_broken_is_one_line(trained, tmp_path):
    workdir = _copy_run(trained, tmp_path)
    for step in (2, 4):
        os.remove(os.path.join(workdir, "checkpoints", str(step), "signature", "metadata"))
    code, stderr, _ = cli(
        TINY, f"--workdir={workdir}", f"--config.data.data_dir={trained['data_dir']}", "--mode=eval"
    )
    assert_one_line_error(code, stderr, f"no checkpoint in {workdir}/checkpoints")
    assert "Event loop is closed" not in stderr


@pytest.fixture(scope="module")
def bundle_dir(trained, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("bundle") / "export")
    code, stderr, out = cli(
        TINY, f"--workdir={trained['workdir']}", f"--config.data.data_dir={trained['data_dir']}",
        "--mode=export", f"--output={path}",
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    return path


def _edit_bundle(bundle_dir, tmp_path, edit) -> str:
    path = str(tmp_path / "bundle")
    shutil.copytree(bundle_dir, path)
    edit(path)
    return path


def _truncate(name: str, size: int):
    def edit(path):
        with open(os.path.join(path, name), "r+b") as f:
            f.truncate(size)

    return edit


def _kwargs(**changes):
    def edit(path):
        with open(os.path.join(path, "model.json")) as f:
            description = json.load(f)
        description["model_kwargs"].update(changes)
        with open(os.path.join(path, "model.json"), "w") as f:
            json.dump(description, f)

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: os.remove(os.path.join(p, "model.json")), "is not an export bundle (no model"),
        (_truncate("model.json", 40), "model.json is not valid JSON"),
        (lambda p: os.remove(os.path.join(p, "variables.msgpack")), "has no variables.msgpack"),
        (_truncate("variables.msgpack", 5000), "variables.msgpack is truncated or not a flax"),
        (_kwargs(num_classes=99), "do not fit the model its model.json describes"),
        (_kwargs(backbone="resnet50"), "do not fit the model"),
        (_kwargs(no_such_argument=1), "has bad model_kwargs"),
    ],
)
def test_a_broken_bundle_fails_at_load_in_one_line(bundle_dir, tmp_path, edit, expected):
    from occreid_jax.bundles import export
    from occreid_jax.errors import UserError

    path = _edit_bundle(bundle_dir, tmp_path, edit)
    with pytest.raises(UserError) as error:
        export.load(path)
    message = str(error.value)
    assert expected in message and "\n" not in message, message


def test_a_truncated_bundle_through_the_cli(trained, bundle_dir, tmp_path):
    path = _edit_bundle(bundle_dir, tmp_path, _truncate("variables.msgpack", 100))
    code, stderr, _ = cli(
        TINY, f"--workdir={trained['workdir']}", f"--config.data.data_dir={trained['data_dir']}",
        "--mode=eval", f"--export={path}",
    )  # fmt: skip
    assert_one_line_error(code, stderr, f"{path}/variables.msgpack is truncated")


def test_embed_checks_the_image_size(bundle_dir):
    import numpy as np

    from occreid_jax.bundles import export
    from occreid_jax.errors import UserError

    bundle = export.load(bundle_dir)
    assert bundle.image_size == (64, 32)
    with pytest.raises(UserError, match=r"embeds \[B, 64, 32, 3\] images, got \[2, 128, 64, 3\]"):
        bundle.embed(np.zeros((2, 128, 64, 3), np.uint8))


def test_write_is_atomic(bundle_dir, tmp_path, monkeypatch):
    """A write that fails midway leaves the previous bundle whole and no partial folder."""
    import flax.serialization

    from occreid_jax.bundles import export
    from occreid_jax.errors import UserError

    bundle = export.load(bundle_dir)
    path = str(tmp_path / "bundle")
    settings = dict(
        model_name=bundle.model_name, model_kwargs=bundle.model_kwargs,
        image_size=bundle.image_size, matching=bundle.matching,
    )  # fmt: skip
    export.write(path, variables=bundle.variables, **settings)

    def fail(_):
        raise OSError("disk full")

    monkeypatch.setattr(flax.serialization, "msgpack_serialize", fail)
    with pytest.raises(OSError, match="disk full"):
        export.write(path, variables=bundle.variables, **settings)
    assert sorted(os.listdir(tmp_path)) == ["bundle"]  # no staging folder left behind
    assert export.load(path).model_kwargs == bundle.model_kwargs
    monkeypatch.undo()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a bundle folder"):
        export.write(str(tmp_path / "file"), variables=bundle.variables, **settings)


def test_a_workdir_that_is_a_file(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    workdir.write_text("not a folder")
    code, stderr, _ = cli(TINY, f"--workdir={workdir}", f"--config.data.data_dir={data_dir}")
    assert_one_line_error(code, stderr, f"--workdir={workdir} is a file, not a folder")
    assert workdir.read_text() == "not a folder" and not data_dir.exists()


def test_nan_distances_are_a_user_error():
    import numpy as np

    from occreid_jax.errors import UserError
    from occreid_jax.evaluation import evaluate_features, evaluate_rank

    dist = np.array([[0.1, np.nan, 0.3]])
    with pytest.raises(UserError, match="the distance matrix contains NaN"):
        evaluate_rank(dist, [1], [1, 2, 1], [0], [1, 1, 1])
    q = np.ones((1, 4), np.float32)
    g = np.ones((3, 4), np.float32)
    g[1, 0] = np.nan
    for backend in ("numpy", "jax"):
        with pytest.raises(UserError, match="contains NaN"):
            evaluate_features(q, g, [1], [1, 2, 1], [0], [1, 1, 1], backend=backend)


def test_a_bundle_with_nan_weights_evaluates_to_one_line(trained, bundle_dir, tmp_path):
    import jax
    import numpy as np

    from occreid_jax.bundles import export

    bundle = export.load(bundle_dir)
    nan = jax.tree.map(lambda x: np.full_like(x, np.nan), bundle.variables)
    path = export.write(
        str(tmp_path / "nan"), model_name=bundle.model_name, model_kwargs=bundle.model_kwargs,
        variables=nan, image_size=bundle.image_size, matching=bundle.matching,
    )  # fmt: skip
    code, stderr, _ = cli(
        TINY, f"--workdir={trained['workdir']}", f"--config.data.data_dir={trained['data_dir']}",
        "--mode=eval", f"--export={path}",
    )  # fmt: skip
    assert_one_line_error(code, stderr, "features of 15 of 15 query images are NaN or inf")


def test_the_projects_warnings_print_as_one_line(capsys):
    """A collapsed model's evaluation warns in one line on the command line."""
    from occreid_jax.evaluation.ranking import TiedDistancesWarning

    main._show_warning(TiedDistancesWarning("15 of 15 queries tie"), TiedDistancesWarning, "f", 1)
    assert capsys.readouterr().err == "warning: 15 of 15 queries tie\n"
    main._show_warning(UserWarning("other"), UserWarning, "f.py", 3)
    assert "f.py:3: UserWarning: other" in capsys.readouterr().err


def test_the_divergence_guard_by_hand():
    from occreid_jax.errors import UserError
    from occreid_jax.training.divergence import DivergenceGuard

    guard = DivergenceGuard()
    guard.check(1, 2.0, 0.1, None)  # the first loss becomes the start
    guard.check(2, 200.0, 0.1, None)  # exactly 100x: still allowed
    with pytest.raises(
        UserError, match=r"step 3: loss 200.1 \(over 100x the start 2\) at learning"
    ):
        guard.check(3, 200.1, 0.1, 2)
    with pytest.raises(UserError, match=r"loss nan \(not finite\).*checkpoint \(step 2\) stays"):
        guard.check(4, float("nan"), 0.1, 2)
    with pytest.raises(UserError, match="loss inf .*no checkpoint was saved"):
        DivergenceGuard(start_loss=5.0).check(1, float("inf"), 1.0, None)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("configs/mat.py", "runs/mat"),
        ("configs/mat.py:synthetic", "runs/mat-synthetic"),
        ("/abs/path/pirt.py:synthetic,size=tiny", "runs/pirt-synthetic-size-tiny"),
        ("baseline:occluded_duke", "runs/baseline-occluded_duke"),
    ],
)
def test_the_default_workdir_names_the_config_and_variant(spec, expected):
    from occreid_jax.config_files import default_workdir

    assert default_workdir(spec) == expected


def test_the_cards_command_runs_without_a_workdir(tmp_path, monkeypatch):
    """`python -m occreid_jax.main --config=configs/mat.py` as written: the default workdir is
    printed first and, on a machine without Occluded-Duke, the run stops with the one-line
    message about the dataset, having written nothing."""
    monkeypatch.chdir(tmp_path)
    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "mat.py")
    code, stderr, stdout = cli(f"--config={config}", f"--config.data.data_dir={tmp_path / 'tfds'}")
    assert stdout.splitlines()[0].startswith("workdir: runs/mat (the default"), stdout
    assert_one_line_error(code, stderr, "Occluded-Duke not found")
    assert not (tmp_path / "runs").exists()


def test_a_rerun_past_its_schedule_says_there_is_nothing_to_train(trained, tmp_path):
    workdir = _copy_run(trained, tmp_path)
    results = _read(workdir, "results.json")
    code, stderr, stdout = cli(
        TINY, f"--workdir={workdir}", f"--config.data.data_dir={trained['data_dir']}",
        "--config.train.epochs=1",
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    assert "at step 4, at or past the 2 steps of this schedule: nothing to train" in stdout
    assert _steps(workdir) == _steps(trained["workdir"])  # no step trained again
    assert results  # (the earlier record was read, not lost)
