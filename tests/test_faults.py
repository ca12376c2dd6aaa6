"""Faults injected for real on the writing path and malformed input on the reading path: a full
disk, failing writes, a second writer process, a kill, planted symlinks, steps that repeat, every
malformed header and manifest field, a corrupt Gram cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHAPES, random_walk, write_run

import trajlib
from trajlib.manifest import TrajectoryError
from trajlib.writer import SnapshotLayout

ROOT = Path(__file__).resolve().parents[1]


def net(width: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 4))


def nudge(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))


# -- writing -----------------------------------------------------------------------------------
FULL_DISK = textwrap.dedent("""
    import json, os, sys, torch, trajlib
    run, filler = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 128))  # ~130 kB a file
    failed, steps = [], list(range(1, 31))
    rec = trajlib.Recorder(model, run, every=1, flush_interval=0.0)
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        try:
            rec.step(step)
            rec.flush()
        except trajlib.TrajectoryError as exc:
            failed.append(step)
            msg = msg if failed[1:] else str(exc)
            if os.path.exists(filler):  # catch, free space, continue
                os.unlink(filler)
    rec.close()
    print(json.dumps({"failed": failed, "message": msg, "recorded": rec.recorded_steps}))
""")


def _tmpfs_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="needs root and unshare -m to mount a small tmpfs")
def test_a_full_disk_keeps_every_finished_checkpoint_and_recording_continues(tmp_path):
    """ENOSPC for real: a 1.5 MB tmpfs in a private mount namespace, filled up by checkpoints.
    The failed steps are named; every checkpoint finished before stays listed; after space is
    freed, recording goes on in the same Recorder; the run opens and verifies."""
    (tmp_path / "script.py").write_text(FULL_DISK)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    cmd = (f"mount -t tmpfs -o size=1536k tmpfs {mnt} && "
           f"head -c 600000 /dev/zero > {mnt}/filler && "
           f"{sys.executable} {tmp_path / 'script.py'} {mnt / 'run'} {mnt / 'filler'} && "
           f"cp -r {mnt / 'run'} {tmp_path / 'copy'}")
    out = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failed"], "the disk never filled: the test did not inject the fault"
    assert "No space left" in report["message"] and f"step {report['failed'][0]}" in report["message"]
    recorded = report["recorded"]
    assert set(recorded) | set(report["failed"]) == set(range(0, 31))
    assert not set(recorded) & set(report["failed"])
    assert max(recorded) > min(report["failed"]), "recording did not continue after space was freed"
    traj = trajlib.open_trajectory(tmp_path / "copy", verify=True)
    assert list(traj.steps) == recorded


FULL_DISK_GROUP = textwrap.dedent("""
    import json, sys, torch, trajlib
    from trajlib.manifest import TrajectoryError
    torch.manual_seed(0)
    model = torch.nn.Linear(100, 100)  # 40 KB a checkpoint
    rec = trajlib.Recorder(model, sys.argv[1], every=1, flush_interval=3600.0)  # one group for all
    rec.flush()
    for step in range(1, 81):
        with torch.no_grad():
            model.weight.add_(0.01)
        rec.step(step)
    try:
        rec.flush()
        message = ""
    except TrajectoryError as exc:
        message = str(exc)
    rec.close()
    print(json.dumps({"recorded": [int(s) for s in trajlib.open_trajectory(sys.argv[1], verify=True).steps],
                      "message": message}))
""")


@pytest.mark.skipif(not _tmpfs_available(), reason="needs root and unshare -m to mount a small tmpfs")
def test_a_full_disk_inside_one_group_keeps_the_checkpoints_that_fit(tmp_path):
    """One group of 80 checkpoints (3.2 MB) on a 2 MB tmpfs: the files that fit are written,
    then the manifest cannot be: the group's newest files are dropped until it fits, so the first
    ones stay listed (not the whole group lost); the dropped steps are named."""
    (tmp_path / "script.py").write_text(FULL_DISK_GROUP)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    cmd = f"mount -t tmpfs -o size=2m tmpfs {mnt} && {sys.executable} {tmp_path / 'script.py'} {mnt / 'run'}"
    out = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "No space left" in report["message"], "the disk never filled: the test did not inject the fault"
    recorded = report["recorded"]
    assert recorded == list(range(len(recorded))) and len(recorded) > 20, recorded  # θ_0 and the group's first
    named = report["message"].split("checkpoint(s) of step ", 1)[1].split(" not saved", 1)[0]
    assert {int(x) for x in named.split(", ")} == set(range(len(recorded), 81))  # each lost step named


def test_caught_write_errors_never_hang_training(tmp_path, monkeypatch):
    """Failed snapshots give their buffers back: with a pool of two buffers, twenty failing
    saves caught by the caller and then good ones all return."""
    model = net(256)
    rec = trajlib.Recorder(model, tmp_path / "r", every=1, max_pending_bytes=1)  # pool of 2
    rec.flush()
    real = SnapshotLayout.write

    def failing(self, path, buf, **kwargs):
        raise OSError(5, "Input/output error")

    def train():
        monkeypatch.setattr(SnapshotLayout, "write", failing)
        for step in range(1, 21):
            try:
                rec.save(step)
                rec.flush()
            except TrajectoryError:
                pass
        monkeypatch.setattr(SnapshotLayout, "write", real)
        for step in range(21, 25):
            rec.save(step)
        rec.close()

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    worker.join(timeout=120)  # a hang guard, not a speed bound
    assert not worker.is_alive(), "training hung after caught write errors"
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0, 21, 22, 23, 24]


def test_a_failing_group_sync_names_its_steps_and_lists_none_of_them(tmp_path, monkeypatch):
    """The group's data could not be made durable (EIO from fsync): its steps are named, their
    files removed and never listed; earlier groups stay."""
    import trajlib.writer

    model = net()
    rec = trajlib.Recorder(model, tmp_path / "r", every=1, flush_interval=3600.0)
    rec.flush()
    monkeypatch.setattr(trajlib.writer, "fsync_file", lambda path: (_ for _ in ()).throw(OSError(5, "EIO")))
    for step in (1, 2, 3):
        nudge(model)
        rec.step(step)
    with pytest.raises(TrajectoryError, match=r"step 1, 2, 3 not saved"):
        rec.flush()
    monkeypatch.undo()
    rec.close()
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0]
    assert sorted(p.name for p in (tmp_path / "r").glob("ckpt-*")) == ["ckpt-000000000.safetensors"]


SECOND_WRITER = textwrap.dedent("""
    import sys, time, torch, trajlib
    rec = trajlib.Recorder(torch.nn.Linear(4, 4), sys.argv[1], every=1)
    rec.flush()
    print("holding", flush=True)
    time.sleep(600)
""")


def test_a_second_writer_process_is_refused_and_a_killed_one_does_not_block_resume(tmp_path):
    (tmp_path / "hold.py").write_text(SECOND_WRITER)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "hold.py"), str(tmp_path / "r")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(TrajectoryError, match=f"another Recorder \\(pid {holder.pid}\\)"):
            trajlib.Recorder(torch.nn.Linear(4, 4), tmp_path / "r", every=1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with pytest.warns(UserWarning, match="resuming"):
        with trajlib.Recorder(torch.nn.Linear(4, 4), tmp_path / "r", every=1) as rec:
            rec.save(7)
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0, 7]


def test_two_recorders_in_one_process_are_refused_too(tmp_path):
    with trajlib.Recorder(net(), tmp_path / "r", every=1):
        with pytest.raises(TrajectoryError, match="another Recorder"):
            trajlib.Recorder(net(), tmp_path / "r", every=1)


def test_planted_symlinks_are_never_followed(tmp_path):
    """Symlinks at the old predictable temporary name and at a checkpoint's final name: the
    files they point at stay untouched, and the run holds regular files."""
    run = tmp_path / "r"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / ".ckpt-000000001.safetensors.tmp").symlink_to(victim)
    (run / "ckpt-000000002.safetensors").symlink_to(victim)
    model = net()
    with trajlib.Recorder(model, run, every=1) as rec:
        for step in (1, 2):
            nudge(model)
            rec.step(step)
    assert victim.read_text() == "precious"
    for step in (0, 1, 2):
        path = run / f"ckpt-{step:09d}.safetensors"
        assert path.is_file() and not path.is_symlink()
    assert list(trajlib.open_trajectory(run, verify=True).steps) == [0, 1, 2]


def test_steps_that_repeat_or_go_backwards_are_refused(tmp_path):
    model = net()
    with trajlib.Recorder(model, tmp_path / "a", every=1) as rec:
        for step in (1, 2, 3):
            rec.step(step)
        with pytest.raises(ValueError, match="step 1 is not after the last step seen \\(3\\)"):
            rec.step(1)  # a counter reset each epoch
    with trajlib.Recorder(model, tmp_path / "b", every=1) as rec:
        rec.step(torch.tensor(2))
        with pytest.raises(ValueError, match="step 2 is not after"):
            rec.step(torch.tensor(2))
        rec.save(3)
        with pytest.raises(ValueError, match="step 3 is not after"):
            rec.save(3)
    assert list(trajlib.open_trajectory(tmp_path / "b").steps) == [0, 2, 3]


def test_resume_removes_what_a_killed_writer_left_unlisted(tmp_path):
    run = write_run(tmp_path / "r", random_walk(np.random.default_rng(0), SHAPES, 3))
    (run / ".ckpt-000000009.safetensors.ab12cd34.tmp").write_bytes(b"partial")
    shutil.copy(run / "ckpt-000000002.safetensors", run / "ckpt-000000009.safetensors")  # unlisted
    model = trajlib.open_trajectory(run)
    from conftest import module_with

    m = module_with({n: model.shapes[n] for n in model.names})
    with pytest.warns(UserWarning, match="resuming"):
        with trajlib.Recorder(m, run, steps=[10]) as rec:
            rec.step(10)
    names = sorted(p.name for p in run.iterdir())
    assert ".ckpt-000000009.safetensors.ab12cd34.tmp" not in names and "ckpt-000000009.safetensors" not in names
    assert list(trajlib.open_trajectory(run).steps) == [0, 1, 2, 10]


def test_fresh_starts_the_run_over(tmp_path):
    model = net()
    with trajlib.Recorder(model, tmp_path / "r", every=1) as rec:
        rec.step(1)
        rec.step(2)
    with trajlib.Recorder(model, tmp_path / "r", every=1, fresh=True) as rec:
        rec.step(1)
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0, 1]
    assert not (tmp_path / "r" / "ckpt-000000002.safetensors").exists()


# -- reading -----------------------------------------------------------------------------------
def _rewrite_header(path: Path, mutate) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    header = mutate(header)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data[8 + n:])


def _first(h):
    return next(k for k in h if k != "__metadata__")


def _second(h):
    return [k for k in h if k != "__metadata__"][1]


HEADER_FAULTS = {
    "negative offset": (lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": [-8, h[_first(h)]["data_offsets"][1] - 8]}},
                        "data_offsets"),
    "overlap": (lambda h: {**h, _second(h): {**h[_second(h)], "data_offsets": [
        h[_second(h)]["data_offsets"][0] - 4, h[_second(h)]["data_offsets"][1] - 4]}}, "data_offsets"),
    "negative dim": (lambda h: {**h, _first(h): {**h[_first(h)], "shape": [-1, 4]}}, "shape"),
    "overflowing shape": (lambda h: {**h, _first(h): {**h[_first(h)], "shape": [2**62, 2**62]}}, "spans"),
    "not an object": (lambda h: [1, 2, 3], "not an object"),
    "entry not an object": (lambda h: {**h, _first(h): "x"}, "entry"),
    "unknown dtype": (lambda h: {**h, _first(h): {**h[_first(h)], "dtype": "F128"}}, "dtype"),
    "offsets of the wrong form": (lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": [0]}}, "data_offsets"),
    "string dims": (lambda h: {**h, _first(h): {**h[_first(h)], "shape": ["4", 4]}}, "shape"),
}


@pytest.mark.parametrize("fault", list(HEADER_FAULTS))
def test_each_malformed_header_field_is_named(walk_run, fault):
    run, _ = walk_run
    mutate, field = HEADER_FAULTS[fault]
    victim = run / "ckpt-000000003.safetensors"
    _rewrite_header(victim, mutate)
    manifest = json.loads((run / "manifest.json").read_text())
    for c in manifest["checkpoints"]:
        if c["file"] == victim.name:
            c["bytes"] = victim.stat().st_size
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrajectoryError, match=field) as err:
        trajlib.gram(trajlib.open_trajectory(run), cache=False, progress=False)
    assert victim.name in str(err.value)


MANIFEST_FAULTS = {
    "file outside the run": (lambda m: m["checkpoints"][1].update(file="../elsewhere.safetensors"), "checkpoints\\[1\\].file"),
    "absolute file": (lambda m: m["checkpoints"][1].update(file="/etc/passwd"), "checkpoints\\[1\\].file"),
    "file in a subfolder": (lambda m: m["checkpoints"][1].update(file="sub/x.safetensors"), "checkpoints\\[1\\].file"),
    "string step": (lambda m: m["checkpoints"][2].update(step="2"), "checkpoints\\[2\\].step"),
    "negative bytes": (lambda m: m["checkpoints"][0].update(bytes=-1), "checkpoints\\[0\\].bytes"),
    "tensors not a list": (lambda m: m.update(tensors={"a": 1}), "'tensors' entry"),
    "missing checkpoints": (lambda m: m.pop("checkpoints"), "'checkpoints' entry is missing"),
    "bad shape": (lambda m: m["tensors"][0].update(shape="4x4"), "tensors\\[0\\].shape"),
    "repeated step": (lambda m: m["checkpoints"][2].update(step=1), "step 1 more than once"),
    "groups of numbers": (lambda m: m["groups"].update(bn=[1, 2]), "groups\\['bn'\\]"),
    "string version": (lambda m: m.update(format_version="2"), "format_version"),
}


@pytest.mark.parametrize("fault", list(MANIFEST_FAULTS))
def test_each_malformed_manifest_field_is_named(walk_run, fault):
    run, _ = walk_run
    mutate, field = MANIFEST_FAULTS[fault]
    manifest = json.loads((run / "manifest.json").read_text())
    mutate(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrajectoryError, match=field) as err:
        trajlib.open_trajectory(run)
    assert "manifest.json" in str(err.value)


def test_a_symlinked_checkpoint_pointing_outside_the_run_is_refused(walk_run, tmp_path):
    run, _ = walk_run
    outside = tmp_path / "outside.safetensors"
    shutil.move(run / "ckpt-000000001.safetensors", outside)
    (run / "ckpt-000000001.safetensors").symlink_to(outside)
    with pytest.raises(TrajectoryError, match="outside the run directory"):
        trajlib.open_trajectory(run)


def test_a_corrupt_gram_cache_is_reported_and_recomputed(walk_run, caplog):
    run, _ = walk_run
    traj = trajlib.open_trajectory(run)
    first = trajlib.gram(traj, progress=False)
    (cache,) = run.glob("gram-*.npz")
    cache.write_bytes(b"PK\x03\x04 torn")
    with caplog.at_level("WARNING", logger="trajlib.gram"):
        again = trajlib.gram(traj, progress=False)
    assert cache.name in caplog.text and "recomputing" in caplog.text
    np.testing.assert_array_equal(again["all"], first["all"])
    assert trajlib.stats.GramStats.load(cache).meta["key"] == again.meta["key"]  # rewritten whole


def test_the_gram_cache_does_not_grow_without_bound(walk_run):
    import importlib

    engine = importlib.import_module("trajlib.gram.engine")
    run, _ = walk_run
    traj = trajlib.open_trajectory(run)
    names = traj.parameters
    for k in range(engine.MAX_CACHED + 4):
        trajlib.gram(traj, groups=[f"g{k}=^{names[k % len(names)].replace('.', '[.]')}$"], progress=False)
    assert len(list(run.glob("gram-*.npz"))) == engine.MAX_CACHED
