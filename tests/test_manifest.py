"""trajlib.manifest: appending checkpoints to a manifest equals rewriting it whole, and only the
file this writer wrote is ever appended to."""

from __future__ import annotations

import errno
import os
import time

import pytest

from trajlib.manifest import MANIFEST, ManifestStamp, StaleManifest, append_checkpoints, dumps, new_manifest, write_manifest


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
    stamp = write_manifest(tmp_path, manifest)  # no checkpoint yet: "checkpoints":[]
    for first, n in [(0, 1), (1, 3), (4, 250)]:
        new = [entry(s) for s in range(first, first + n)]
        stamp = append_checkpoints(tmp_path, stamp, [dumps(e) for e in new])
        manifest["checkpoints"] += new
        assert stamp == ManifestStamp.of((tmp_path / MANIFEST).stat())
    got = (tmp_path / MANIFEST).read_bytes()
    write_manifest(tmp_path, manifest)
    assert got == (tmp_path / MANIFEST).read_bytes()


def test_only_the_file_this_writer_wrote_is_appended_to(tmp_path):
    """Replaced, edited in place at the same size, truncated, not ending as written, a planted
    symlink or FIFO: each is stale (the Recorder then rewrites the manifest whole), and a FIFO
    does not block."""
    path = tmp_path / MANIFEST
    stamp = write_manifest(tmp_path, {**new_manifest([], {}, {}), "checkpoints": [entry(0)]})
    before = path.read_bytes()
    append = lambda s: append_checkpoints(tmp_path, s, [dumps(entry(1))])  # noqa: E731
    time.sleep(0.02)  # past the timestamp granularity of kernels without fine-grained mtimes
    path.write_bytes(before.replace(b'"step":0', b'"step":7'))  # in place, same size
    with pytest.raises(StaleManifest, match="not the manifest"):
        append(stamp)
    path.write_bytes(before[:-2] + b"}]")  # same size, trusted stamp, not this writer's ending
    with pytest.raises(StaleManifest, match="does not end"):
        append(ManifestStamp.of(path.stat()))
    path.write_bytes(b"")
    with pytest.raises(StaleManifest):
        append(ManifestStamp.of(path.stat()))
    path.unlink()
    (tmp_path / "elsewhere.json").write_bytes(before)
    path.symlink_to(tmp_path / "elsewhere.json")  # a planted link is never followed
    with pytest.raises(StaleManifest):
        append(ManifestStamp.of((tmp_path / "elsewhere.json").stat()))
    assert (tmp_path / "elsewhere.json").read_bytes() == before
    path.unlink()
    os.mkfifo(path)  # opening a FIFO for reading would wait for a writer forever
    with pytest.raises(StaleManifest, match="not the manifest"):
        append(stamp)


def test_a_copy_of_the_wrong_size_is_never_renamed_into_place(tmp_path, monkeypatch):
    stamp = write_manifest(tmp_path, {**new_manifest([], {}, {}), "checkpoints": [entry(0)]})
    before = (tmp_path / MANIFEST).read_bytes()

    def overlong(src, dst, count, offset_src, offset_dst):  # a file system bug: a stray byte far past the end
        os.pwrite(dst, os.pread(src, count, offset_src), offset_dst)
        os.pwrite(dst, b"\0", offset_dst + count + 4096)
        return count
    monkeypatch.setattr(os, "copy_file_range", overlong)
    with pytest.raises(StaleManifest, match="the copy came out at"):
        append_checkpoints(tmp_path, stamp, [dumps(entry(1))])
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temporary file left behind
