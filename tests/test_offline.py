"""Real-dataset builders never touch the network: build and read with every socket refused."""

import socket

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from occreid_jax.data import reid_builders as rb


class NetworkUsed(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkUsed(f"network access attempted: {args[:2]!r}")


@pytest.fixture
def no_network(monkeypatch):
    """Sockets, DNS and the TFDS bucket all raise; GCS starts 'enabled' as in a fresh setup."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    gcs = tfds.core.utils.gcs_utils
    monkeypatch.setattr(gcs, "_is_gcs_disabled", False)  # the builders must switch it off
    for name in ("exists", "gcs_listdir", "download_gcs_dataset"):
        monkeypatch.setattr(gcs, name, _refuse)


def _partial_ilids(root) -> None:
    for i, rel in enumerate(
        ["partial_body_images/001.jpg", "partial_body_images/002.jpg", "whole_body_images/001.jpg"]
        + ["whole_body_images/002.jpg"]
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (16, 8, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / rel), pixels)


@pytest.mark.filterwarnings("ignore::occreid_jax.data.reid_builders.SizeMismatchWarning")
def test_build_and_load_without_network(no_network, tmp_path):
    with pytest.raises(NetworkUsed):  # the guard itself works
        socket.create_connection(("storage.googleapis.com", 443), timeout=1)
    _partial_ilids(tmp_path / "Partial_iLIDS")
    data_dir = str(tmp_path / "tfds")
    builder = rb.prepare("partial_ilids", str(tmp_path), data_dir=data_dir)
    for split, pids in (("query", [1, 2]), ("gallery", [1, 2])):
        examples = list(builder.as_dataset(split=split).as_numpy_iterator())
        assert [int(e["pid"]) for e in examples] == pids
        assert examples[0]["image"].shape == (16, 8, 3)
    # a second process-level call reuses the prepared copy, also offline
    again = rb.prepare("partial_ilids", None, data_dir=data_dir)
    assert rb.split_summary(again) == {
        "query": {"images": 2, "ids": 2, "cams": 1},
        "gallery": {"images": 2, "ids": 2, "cams": 1},
    }
    assert len(list(again.as_dataset(split="gallery"))) == 2
