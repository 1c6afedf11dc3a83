"""Model repository helpers: version directories, policies, label files, uploads."""

from __future__ import annotations

import pytest

from pyserve.config import parse_config
from pyserve.errors import ServerError
from pyserve.repository import read_labels, select_versions, version_dirs, write_upload, remove_upload


def test_version_directories_and_policies(tmp_path):
    for name in ("1", "2", "10", "07", "latest", "0"):
        (tmp_path / name).mkdir()
    assert sorted(version_dirs(tmp_path)) == [1, 2, 10]
    policy = parse_config("version_policy { latest { num_versions: 2 } }").version_policy
    assert select_versions(policy, [1, 2, 10]) == [2, 10]


def test_label_files_are_read_and_confined_to_the_model(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    config = parse_config('output { name: "p" label_filename: "labels.txt" } output { name: "q" }')
    assert read_labels(tmp_path, config) == {"p": ["cat", "dog"]}
    for name in ("missing.txt", "../labels.txt"):
        bad = parse_config(f'output {{ name: "p" label_filename: "{name}" }}')
        with pytest.raises(ServerError, match="failed to open label file"):
            read_labels(tmp_path / "sub" if name.startswith("..") else tmp_path, bad)


def test_uploads_stay_inside_their_model_directory(tmp_path):
    root = write_upload("m", {"file:1/model.onnx": b"x", "file:1/data/w.bin": b"y"})
    try:
        assert (root / "1" / "model.onnx").read_bytes() == b"x"
        assert (root / "1" / "data" / "w.bin").read_bytes() == b"y"
    finally:
        remove_upload(root)
    assert not root.exists()
    for key in ("file:../m2/1/model.onnx", "file:/etc/passwd", "file:model.onnx", "file:1/../../x"):
        with pytest.raises(ServerError, match="invalid file path"):
            write_upload("m", {key: b"x"})
