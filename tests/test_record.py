"""Recorder: schedules, selection, metadata, durability, resume, and a SIGKILL mid-run."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import trajlib
from trajlib.manifest import TrajectoryError
from trajlib.record import log_linear_steps


def bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train(model, rec, steps, *, start=1, opt=None):
    opt = opt or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for step in range(start, start + steps):
        x = torch.randn(16, 4)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(step, epoch=step / 10, metrics={"loss": loss.item()})
    return opt


def test_theta0_then_every_n_steps_with_full_metadata(tmp_path):
    model = bn_net()
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    with trajlib.Recorder(model, tmp_path / "r", every=5, optimizer=opt, seed=7, meta={"note": "x"}) as rec:
        train(model, rec, 20, opt=opt)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 5, 10, 15, 20]
    assert manifest["meta"]["model"] == "Sequential" and manifest["meta"]["seed"] == 7
    assert manifest["meta"]["optimizer"]["class"] == "SGD"
    assert manifest["meta"]["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    assert manifest["meta"]["note"] == "x" and "torch" in manifest["meta"]["versions"]
    assert manifest["groups"]["bn"] == ["1.weight", "1.bias"]
    for c in manifest["checkpoints"]:
        data = (tmp_path / "r" / c["file"]).read_bytes()
        header = 8 + int.from_bytes(data[:8], "little")
        assert c["bytes"] == len(data) and c["content_sha256"] == hashlib.sha256(data[header:]).hexdigest()
        assert isinstance(c["wall_time"], float)
    assert manifest["checkpoints"][2]["metrics"]["loss"] > 0 and manifest["checkpoints"][2]["epoch"] == 1.0
    traj = trajlib.open_trajectory(tmp_path / "r")
    for name, value in theta0.items():
        np.testing.assert_array_equal(traj.tensor(0, name), value.numpy())
    assert not np.array_equal(traj.tensor(4, "0.weight"), theta0["0.weight"].numpy())


def test_files_load_with_the_safetensors_library(tmp_path):
    """Our writer lays out the format itself; the reference reader must agree, dtypes mixed."""
    from safetensors.torch import load_file

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.randn(3, dtype=torch.float16))
            self.b = torch.nn.Parameter(torch.randn(2, 5))
            self.c = torch.nn.Parameter(torch.randn(7, dtype=torch.bfloat16))
            self.d = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))

    model = Mixed()
    with trajlib.Recorder(model, tmp_path / "r"):
        pass
    loaded = load_file(next((tmp_path / "r").glob("ckpt-*.safetensors")))
    for name, p in model.named_parameters():
        assert loaded[name].dtype == p.dtype
        torch.testing.assert_close(loaded[name], p.detach(), rtol=0, atol=0)


def test_explicit_and_log_linear_schedules(tmp_path):
    assert log_linear_steps(3000, every=1000) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    model = bn_net()
    with trajlib.Recorder(model, tmp_path / "r", steps=log_linear_steps(30, every=10)) as rec:
        train(model, rec, 30)
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0, 1, 2, 4, 8, 10, 20, 30]
    with pytest.raises(ValueError, match="either every= or steps="):
        trajlib.Recorder(model, tmp_path / "x", every=2, steps=[1])


def test_include_exclude_buffers_tied_and_frozen(tmp_path):
    model = bn_net()
    model[0].weight.requires_grad_(False)
    with trajlib.Recorder(model, tmp_path / "a", exclude=r"^3\.") as rec:
        train(model, rec, 2)
    names = trajlib.open_trajectory(tmp_path / "a").names
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]  # frozen 0.weight kept, head excluded
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["groups"]["frozen"] == ["0.weight"]
    with trajlib.Recorder(bn_net(), tmp_path / "b", include=r"^1\.", buffers=True):
        pass
    traj = trajlib.open_trajectory(tmp_path / "b")
    assert traj.names == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert traj.kinds["1.running_mean"] == "buffer" and traj.P == 16  # buffers are not parameters

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    with trajlib.Recorder(Tied(), tmp_path / "c"):
        pass
    assert trajlib.open_trajectory(tmp_path / "c").names == ["emb.weight"]
    with pytest.raises(ValueError, match="select no tensor"):
        trajlib.Recorder(bn_net(), tmp_path / "d", include="nothing-matches")


def test_resume_appends_and_refuses_a_different_model(tmp_path):
    model = bn_net()
    with trajlib.Recorder(model, tmp_path / "r", every=5) as rec:
        opt = train(model, rec, 10)
    with trajlib.Recorder(model, tmp_path / "r", every=5) as rec:
        assert rec.recorded_steps == [0, 5, 10]
        train(model, rec, 10, start=11, opt=opt)
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0, 5, 10, 15, 20]
    other = torch.nn.Sequential(torch.nn.Linear(4, 9))
    with pytest.raises(TrajectoryError, match="cannot resume"):
        trajlib.Recorder(other, tmp_path / "r")


def test_training_does_not_wait_for_the_disk_but_flush_does(tmp_path, monkeypatch):
    """Snapshots are copied on the caller's thread and written by the background thread: with
    every write held until released, training steps still return; flush waits for the writes."""
    import threading

    from trajlib.writer import SnapshotLayout

    real, gate, started = SnapshotLayout.write, threading.Event(), threading.Event()

    def held(self, path, buf, **kwargs):
        started.set()
        gate.wait()
        return real(self, path, buf, **kwargs)

    monkeypatch.setattr(SnapshotLayout, "write", held)
    model = bn_net()
    rec = trajlib.Recorder(model, tmp_path / "r", every=1, flush_interval=0.0)
    train(model, rec, 3)  # returns although no write has finished
    assert started.wait(60) and not (tmp_path / "r" / "ckpt-000000003.safetensors").exists()
    flusher = threading.Thread(target=rec.flush)
    flusher.start()
    flusher.join(0.5)
    assert flusher.is_alive(), "flush returned before the held writes finished"
    gate.set()
    flusher.join(60)
    rec.close()
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0, 1, 2, 3]


def test_write_errors_surface_on_the_training_thread(tmp_path, monkeypatch):
    from trajlib.writer import SnapshotLayout

    model = bn_net()
    rec = trajlib.Recorder(model, tmp_path / "r", every=1)
    rec.flush()

    def broken(self, path, buf, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SnapshotLayout, "write", broken)
    rec.save(1)
    with pytest.raises(TrajectoryError, match="step 1 not saved: .*No space left"):
        rec.flush()
    monkeypatch.undo()
    rec.save(2)  # the failed snapshot's buffer came back: recording goes on
    rec.close()
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == [0, 2]  # what was saved stays


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch, trajlib
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    rec = trajlib.Recorder(model, sys.argv[1], every=1, max_pending_bytes=2 << 20)
    print("pool", rec.layout.max_buffers, flush=True)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        rec.step(step)
        print("saved", step, flush=True)  # save() returned: the snapshot is in the writer's hands
""")


def test_sigkill_while_recording_leaves_a_valid_run(tmp_path):
    """SIGKILL mid-run: every listed checkpoint is intact, the listed steps are a prefix of those
    saved, and at most the snapshot pool (max_pending_bytes / snapshot size) is lost: the
    documented loss window, measured."""
    script = tmp_path / "rec.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    pool = int(proc.stdout.readline().split()[1])
    saved = []
    while len(saved) < 40:
        saved.append(int(proc.stdout.readline().split()[1]))
    proc.send_signal(signal.SIGKILL)
    saved += [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("saved")]
    proc.wait()
    listed = [c["step"] for c in json.loads((tmp_path / "r" / "manifest.json").read_text())["checkpoints"]]
    assert listed == [0] + saved[: len(listed) - 1]
    assert len(saved) - (len(listed) - 1) <= pool, (pool, len(saved), len(listed))
    traj = trajlib.open_trajectory(tmp_path / "r", verify=True)  # every listed checkpoint is intact
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert traj.T == len(manifest["checkpoints"]) >= 5
    assert traj.validate() == []
    stats = trajlib.gram(traj, cache=False, progress=False)
    assert np.isfinite(stats["all"]).all()
    with trajlib.Recorder(torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256)),
                          tmp_path / "r", every=1) as rec:  # and the run resumes
        rec.save(10**6)
    assert trajlib.open_trajectory(tmp_path / "r").steps[-1] == 10**6


class _SyncLog:
    """Logs fsyncs and renames in order (a patched os)."""

    def __init__(self, monkeypatch):
        import os

        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, *a, **k):
            self.events.append(("replace", str(dst)))
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def fsyncs(self, prefix: str) -> list[str]:
        """Names of the files fsynced, in order, that start with ``prefix``."""
        return [p.rsplit("/", 1)[-1] for kind, p in self.events
                if kind == "fsync" and p.rsplit("/", 1)[-1].startswith(prefix)]

    def check_listed_only_after_fsync(self, run):
        """Every manifest rename lists only checkpoint files fsynced before it (a machine crash
        can never leave the manifest pointing at lost data)."""
        synced, n_manifests = set(), 0
        for kind, path in self.events:
            name = path.rsplit("/", 1)[-1]
            if kind == "fsync" and name.startswith("ckpt-"):
                synced.add(name)
            elif kind == "fsync" and name.startswith(".ckpt-"):  # "always": fsync before the rename
                synced.add(name[1:].split(".safetensors")[0] + ".safetensors")
            elif kind == "replace" and name == "manifest.json":
                n_manifests += 1
        listed = {c["file"] for c in json.loads((run / "manifest.json").read_text())["checkpoints"]}
        assert listed <= synced, f"listed without fsync: {sorted(listed - synced)[:3]}"
        return n_manifests


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names fds through /proc/self/fd")
def test_default_policy_fsyncs_each_file_once_at_the_group_commit_and_at_close(tmp_path, monkeypatch):
    log = _SyncLog(monkeypatch)
    model = bn_net()
    rec = trajlib.Recorder(model, tmp_path / "r", every=1, flush_interval=3600.0)  # "interval"
    rec.flush()  # θ_0 is committed at once
    train(model, rec, 6)
    assert [p.rsplit("/", 1)[-1] for p in log.fsyncs("ckpt-")] == ["ckpt-000000000.safetensors"]
    assert not log.fsyncs(".ckpt-")  # no per-file fsync before the rename
    rec.close()  # the pending group: written, fsynced together, then listed
    names = [p.rsplit("/", 1)[-1] for p in log.fsyncs("ckpt-")]
    assert sorted(names) == [f"ckpt-{s:09d}.safetensors" for s in range(7)]  # each exactly once
    assert log.fsyncs(".manifest.json.") and log.fsyncs("r")  # the manifest (before its rename), the directory
    log.check_listed_only_after_fsync(tmp_path / "r")
    assert list(trajlib.open_trajectory(tmp_path / "r").steps) == list(range(7))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names fds through /proc/self/fd")
def test_default_policy_commits_on_its_bounded_interval(tmp_path, monkeypatch):
    """With a short flush_interval, checkpoints are fsynced and listed while training goes on."""
    log = _SyncLog(monkeypatch)
    model = bn_net()
    rec = trajlib.Recorder(model, tmp_path / "r", every=1, flush_interval=0.05)
    for step in range(1, 9):
        time.sleep(0.03)
        train(model, rec, 1, start=step)
    deadline = time.monotonic() + 5
    while len(rec.recorded_steps) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    before_close = len(log.fsyncs("ckpt-"))
    assert len(rec.recorded_steps) >= 4 and before_close >= 4  # committed without close or flush
    log.check_listed_only_after_fsync(tmp_path / "r")
    rec.close()
    assert len(log.fsyncs("ckpt-")) == 9
    assert log.check_listed_only_after_fsync(tmp_path / "r") >= 3  # several group commits


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names fds through /proc/self/fd")
def test_always_policy_fsyncs_every_file_before_its_rename_and_lists_it_alone(tmp_path, monkeypatch):
    log = _SyncLog(monkeypatch)
    model = bn_net()
    with trajlib.Recorder(model, tmp_path / "r", every=1, fsync="always", flush_interval=3600.0) as rec:
        train(model, rec, 5)
    tmp_names = log.fsyncs(".ckpt-")
    assert len(tmp_names) == 6 and not log.fsyncs("ckpt-")  # on the temporary name, never after
    manifests = log.check_listed_only_after_fsync(tmp_path / "r")
    assert manifests >= 1 + 6  # the new run's, then one commit per checkpoint


def test_never_policy_skips_file_fsyncs_and_bad_policies_are_refused(tmp_path, monkeypatch):
    import os

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    model = bn_net()
    with trajlib.Recorder(model, tmp_path / "r", every=1, fsync=False) as rec:
        train(model, rec, 3)
    assert calls and not [c for c in calls if "ckpt-" in c]
    with pytest.raises(ValueError, match="fsync='sometimes'"):
        trajlib.Recorder(model, tmp_path / "q", fsync="sometimes")


def test_group_commits_append_to_the_manifest_and_match_a_whole_rewrite(tmp_path, monkeypatch):
    """After the first commit each group is appended (the kernel copies the history), and the
    file is byte for byte what rewriting it whole would give; resuming appends too."""
    from trajlib import record
    from trajlib.manifest import MANIFEST, read_manifest, write_manifest

    rewrites = []
    real = record.write_manifest
    monkeypatch.setattr(record, "write_manifest", lambda *a, **k: rewrites.append(1) or real(*a, **k))
    model = bn_net()
    for part in range(2):  # a new run, then a resumed one
        with pytest.warns(UserWarning, match="resuming") if part else contextlib.nullcontext():
            rec = trajlib.Recorder(model, tmp_path / "run", every=1, flush_interval=0.0)
        rec.flush()  # a new run's first commit (θ_0, on the writer thread) is its one whole rewrite
        rewrites.clear()
        for k in range(1, 41):
            train(model, rec, 1, start=40 * part + k)
            if k % 4 == 0:
                rec.flush()  # one group commit
        rec.close()
        assert len(rewrites) == part, "every group commit after a Recorder's first must append, not rewrite"
    manifest = read_manifest(tmp_path / "run")
    assert [c["step"] for c in manifest["checkpoints"]] == list(range(81))
    write_manifest(tmp_path, manifest)
    assert (tmp_path / "run" / MANIFEST).read_bytes() == (tmp_path / MANIFEST).read_bytes()
    assert list(trajlib.open_trajectory(tmp_path / "run", verify=True).steps) == list(range(81))


def test_a_manifest_changed_behind_the_recorder_is_rewritten_whole_not_appended_to(tmp_path, caplog):
    """Appending trusts only the file this writer wrote: one rewritten by someone else (here
    re-indented) is detected by its size and rewritten whole, listing every checkpoint."""
    from trajlib.manifest import MANIFEST

    model = bn_net()
    rec = trajlib.Recorder(model, tmp_path / "run", every=1)
    train(model, rec, 5)
    rec.flush()
    path = tmp_path / "run" / MANIFEST
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1))
    train(model, rec, 5, start=6)
    with caplog.at_level("WARNING", logger="trajlib.record"):
        rec.close()
    assert "rewriting it whole" in caplog.text
    assert list(trajlib.open_trajectory(tmp_path / "run", verify=True).steps) == list(range(11))


def test_a_failed_directory_sync_after_the_manifest_rename_loses_no_listed_checkpoint(tmp_path, monkeypatch, caplog):
    """Once the new manifest is in place its checkpoints are listed: a directory sync failing
    after the rename (EIO) is logged naming the steps, their files stay, the run reopens."""
    from trajlib import record

    real, failed = record.fsync_dir, []

    def failing_after_rename(directory):
        if not failed and "ckpt-000000003" in (tmp_path / "run" / "manifest.json").read_text():
            failed.append(1)  # the sync right after the manifest listing step 3 was renamed into place
            raise OSError(errno.EIO, "Input/output error")
        real(directory)

    model = bn_net()
    rec = trajlib.Recorder(model, tmp_path / "run", every=1, flush_interval=3600.0)
    rec.flush()
    monkeypatch.setattr(record, "fsync_dir", failing_after_rename)
    train(model, rec, 3)
    with caplog.at_level("ERROR", logger="trajlib.record"):
        rec.flush()  # no TrajectoryError: nothing was lost
    rec.close()
    assert failed, "the fault was not injected"
    assert "step(s) 1..3" in caplog.text and "Input/output error" in caplog.text
    assert list(trajlib.open_trajectory(tmp_path / "run", verify=True).steps) == [0, 1, 2, 3]
