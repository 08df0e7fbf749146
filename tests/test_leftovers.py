"""Folders a killed dataset preparation left are removed by the next; a live one is kept."""

import os
import pathlib
import time
import types

from occreid_jax.data import leftovers


def test_idle_incomplete_folders_beside_a_version_are_removed(tmp_path, capsys):
    config = tmp_path / "synthetic_occluded_reid" / "tiny"
    version = config / "1.0.0"
    old = config / "incomplete.AB12CD_1.0.0"
    live = config / "incomplete.ZZ99ZZ_1.0.0"
    other = config / "notes"
    for folder in (old / "sub", live, other):
        folder.mkdir(parents=True)
    (old / "sub" / "shard.tfrecord").write_bytes(b"x")
    (live / "shard.tfrecord").write_bytes(b"y")
    hour_ago = time.time() - 3600
    for path in (old / "sub" / "shard.tfrecord", old / "sub", old):
        os.utime(path, (hour_ago, hour_ago))
    builder = types.SimpleNamespace(data_path=pathlib.Path(version))  # not prepared yet

    assert leftovers.remove_incomplete(builder) == [str(old)]
    assert sorted(p.name for p in config.iterdir()) == ["incomplete.ZZ99ZZ_1.0.0", "notes"]
    assert f"removed {old}, left by an interrupted dataset preparation" in capsys.readouterr().err
    assert leftovers.remove_incomplete(builder, idle_seconds=0) == [str(live)]
    missing = types.SimpleNamespace(data_path=pathlib.Path(tmp_path / "none" / "x" / "1.0.0"))
    assert leftovers.remove_incomplete(missing) == []
