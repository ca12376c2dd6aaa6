"""trajlib.manifest: appending checkpoints to a manifest equals rewriting it whole."""

from __future__ import annotations

import errno
import os

import pytest

from trajlib.manifest import MANIFEST, StaleManifest, append_checkpoints, dumps, new_manifest, write_manifest


def entry(step: int) -> dict:
    return {"step": step, "epoch": step / 10, "time": 1.5 * step, "file": f"ckpt-{step:09d}.safetensors",
            "bytes": 1234, "content_sha256": f"{step:064x}"}


@pytest.mark.parametrize("copy", ["kernel", "refused"])
def test_appending_gives_the_bytes_of_a_whole_rewrite(tmp_path, monkeypatch, copy):
    if copy == "refused":  # a file system where copy_file_range does not work: the pread/pwrite copy
        def refuse(*a, **k):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    manifest = new_manifest([{"name": "w", "shape": [3], "dtype": "F32", "kind": "parameter"}], {"bn": []},
                            {"model": "M"})
    size = write_manifest(tmp_path, manifest)  # no checkpoint yet: "checkpoints":[]
    for first, n in [(0, 1), (1, 3), (4, 250)]:
        new = [entry(s) for s in range(first, first + n)]
        size = append_checkpoints(tmp_path, size, [dumps(e) for e in new])
        manifest["checkpoints"] += new
        assert size == (tmp_path / MANIFEST).stat().st_size
    got = (tmp_path / MANIFEST).read_bytes()
    write_manifest(tmp_path, manifest)
    assert got == (tmp_path / MANIFEST).read_bytes()


def test_a_manifest_of_another_size_or_ending_is_stale(tmp_path):
    manifest = new_manifest([], {}, {})
    size = write_manifest(tmp_path, {**manifest, "checkpoints": [entry(0)]})
    before = (tmp_path / MANIFEST).read_bytes()
    with pytest.raises(StaleManifest, match="not the"):
        append_checkpoints(tmp_path, size + 1, [dumps(entry(1))])
    (tmp_path / MANIFEST).write_bytes(before[:-2] + b"}]")  # same size, not this writer's ending
    with pytest.raises(StaleManifest, match="not the"):
        append_checkpoints(tmp_path, size, [dumps(entry(1))])
    (tmp_path / MANIFEST).unlink()
    (tmp_path / MANIFEST).symlink_to(tmp_path / "elsewhere.json")  # a planted link is never followed
    (tmp_path / "elsewhere.json").write_bytes(before)
    with pytest.raises(StaleManifest):
        append_checkpoints(tmp_path, size, [dumps(entry(1))])
    assert (tmp_path / "elsewhere.json").read_bytes() == before
