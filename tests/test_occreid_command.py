"""The `occreid` command: subcommands dispatch to the tools; shipped configs found by name."""

import os
import subprocess
import sys

from occreid_jax import cli, config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_configs_are_found_by_name():
    assert set(config_files.shipped_configs()) >= {"baseline", "mat", "pirt"}
    path = config_files.resolve_config_arg("mat:synthetic,size=tiny")
    assert path.endswith(os.path.join("configs", "mat.py") + ":synthetic,size=tiny")
    assert os.path.isfile(path.partition(":")[0])
    assert config_files.resolve_config_arg("pirt") == os.path.join(
        config_files.configs_dir(), "pirt.py"
    )
    for unchanged in ("configs/mat.py:synthetic", "nope:synthetic", "/abs/x.py"):
        assert config_files.resolve_config_arg(unchanged) == unchanged


def test_occreid_mode_from_another_directory_reads_the_shipped_config(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "occreid_jax.cli", "train", "--config=baseline:nope",
         f"--workdir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "unknown variant nope" in last, last  # file was read


def test_tools_dispatch_and_bad_commands_are_one_line(tmp_path, capsys):
    assert cli.main([]) == 2 and "usage: occreid" in capsys.readouterr().err
    assert cli.main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err
    args = [f"--bundle={tmp_path}", "--query=q", "--gallery=g", f"--out={tmp_path / 'o'}"]
    assert cli.main(["search", *args]) == 2
    assert "not an export bundle" in capsys.readouterr().err
    assert cli.main(["prepare", "folder", "--data-dir", str(tmp_path)]) == 2
    assert "manual_dir" in capsys.readouterr().err
