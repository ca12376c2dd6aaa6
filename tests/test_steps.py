"""Step statistics: against an fp64 reference from every-step checkpoints, directions, resume
after SIGKILL without gaps or duplicates, bad input, and 'off costs nothing'."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import trajlib
from trajlib import hallmarks as H
from trajlib.manifest import TrajectoryError


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 3))


def train(model, rec, steps, *, start=1, opt=None, lr=0.05):
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-3)
    g = torch.Generator().manual_seed(start)
    for step in range(start, start + steps):
        x = torch.randn(16, 12, generator=g)
        loss = (model(x) - x[:, :3]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(step)
    return opt


def reference(traj, names):
    """fp64 per-step quantities from every-step checkpoints: u_s = θ_s − θ_{s-1}."""
    X = np.stack([traj.flat(t, names) for t in range(traj.T)])  # (T, P) float64
    U = np.diff(X, axis=0)
    un = np.linalg.norm(U, axis=1)
    return {"step_norm": un, "param_norm": np.linalg.norm(X[1:], axis=1),
            "consecutive_update_cos": np.r_[np.nan, (U[1:] * U[:-1]).sum(1) / (un[1:] * un[:-1])],
            "update_param_cos": (U * X[:-1]).sum(1) / (un * np.linalg.norm(X[:-1], axis=1)), "U": U}


def test_step_statistics_match_every_step_checkpoints_in_fp64(tmp_path):
    model = net()
    v = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    with trajlib.Recorder(model, tmp_path / "r", every=1, step_stats=["all", "layers", "w=weight"],
                          directions={"rand": v}) as rec:
        train(model, rec, 60)
    traj = trajlib.open_trajectory(tmp_path / "r")
    table = traj.steps_table()
    assert set(table.group) == {"all", "0", "1", "3", "w"} and len(table) == 60 * 5
    for group, names in (("all", traj.parameters), ("1", ["1.weight", "1.bias"]),
                         ("w", [n for n in traj.names if "weight" in n])):
        rows = table[table.group == group]
        ref = reference(traj, names)
        assert (rows.step.to_numpy() == traj.steps[1:]).all()
        for col in ("step_norm", "param_norm"):
            np.testing.assert_allclose(rows[col], ref[col], rtol=1e-6, atol=0)
        for col in ("consecutive_update_cos", "update_param_cos"):
            np.testing.assert_allclose(rows[col], ref[col], rtol=0, atol=1e-6, equal_nan=True)
        vflat = np.concatenate([v[n].double().numpy().ravel() for n in names])
        proj = ref["U"] @ vflat
        np.testing.assert_allclose(rows["proj:rand"], proj, rtol=1e-6, atol=1e-12 * np.abs(proj).max())
        np.testing.assert_allclose(rows["cos:rand"], proj / (ref["step_norm"] * np.linalg.norm(vflat)), atol=1e-6)
    # the same numbers as the checkpoint-level hallmarks of the Gram engine
    G = trajlib.gram(traj, cache=False, progress=False)["all"]
    rows = table[table.group == "all"]
    np.testing.assert_allclose(rows.consecutive_update_cos.to_numpy()[1:], H.consecutive_update_cos(G), atol=1e-6)
    np.testing.assert_allclose(rows.update_param_cos, H.update_param_cos(G), atol=1e-6)
    assert np.isnan(rows.consecutive_update_cos.iloc[0])  # no u_{t-1} at the first step


def test_every_step_statistics_without_every_step_checkpoints(tmp_path):
    """Step rows every step, checkpoints every 10: the step norms add up to the path length
    between checkpoints, never less than the checkpoint-level displacement."""
    model = net()
    with trajlib.Recorder(model, tmp_path / "r", every=10, step_stats=True) as rec:
        train(model, rec, 40)
    traj = trajlib.open_trajectory(tmp_path / "r")
    table = traj.steps_table()
    assert list(table.step) == list(range(1, 41)) and traj.T == 5
    G = trajlib.gram(traj, cache=False, progress=False)["all"]
    per_interval = table.step_norm.to_numpy().reshape(4, 10).sum(1)
    assert (per_interval >= H.step_norm(G) * (1 - 1e-9)).all()


def test_listeners_and_last_row(tmp_path):
    model = net()
    seen = []
    with trajlib.Recorder(model, tmp_path / "r", every=100, step_stats=True, flush_interval=0.0) as rec:
        rec.step_log.stats.listeners.append(seen.append)
        train(model, rec, 5)
        last = rec.step_log.stats.last_row()
    assert sum(len(f) for f in seen) == 5 and list(seen[0].columns[:2]) == ["step", "group"]
    assert last["all"]["step_norm"] == pytest.approx(trajlib.open_trajectory(tmp_path / "r").steps_table().step_norm.iloc[-1])


def test_off_costs_nothing_and_bad_input_is_named(tmp_path):
    model = net()
    with trajlib.Recorder(model, tmp_path / "off", every=5) as rec:
        train(model, rec, 5)
        assert rec.step_log is None
    assert sorted(p.name for p in (tmp_path / "off").iterdir() if p.suffix == ".f64") == []
    with pytest.raises(TrajectoryError, match="no step statistics"):
        trajlib.open_trajectory(tmp_path / "off").steps_table()
    with pytest.raises(ValueError, match="'nope'"):
        trajlib.Recorder(model, tmp_path / "a", step_stats=True, directions={"d": {"nope": torch.zeros(3)}})
    with pytest.raises(ValueError, match="tensor '0.weight' has 3 elements"):
        trajlib.Recorder(model, tmp_path / "b", step_stats=True, directions={"d": {"0.weight": torch.zeros(3)}})
    with pytest.raises(ValueError, match="unknown parameter group 'bogus'"):
        trajlib.Recorder(model, tmp_path / "c", step_stats=["bogus"])
    with trajlib.Recorder(model, tmp_path / "d", step_stats=["all"]) as rec:
        train(model, rec, 2)
    with pytest.raises(TrajectoryError, match="groups="), pytest.warns(UserWarning, match="resuming"):
        trajlib.Recorder(model, tmp_path / "d", step_stats=["layers"])


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch, trajlib
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    with trajlib.Recorder(model, sys.argv[1], every=1, step_stats=True, sketch=64, flush_interval=0.05) as rec:
        for step in range(1, 10**6):
            x = torch.randn(8, 64)
            loss = model(x).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            rec.step(step)
            if step == 5:
                print("recording", flush=True)
""")


def test_sigkill_then_resume_appends_step_rows_without_gaps_or_duplicates(tmp_path):
    script = tmp_path / "rec.py"
    script.write_text(KILL_SCRIPT)
    run = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "recording"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    traj = trajlib.open_trajectory(run)
    last = int(traj.steps[-1])
    before = traj.steps_table()
    assert last >= 5 and before.step.iloc[-1] >= last  # every listed checkpoint's step has its row
    assert list(before.step) == list(range(1, len(before) + 1))
    # resume from the last checkpoint: rows after it are dropped and recorded again
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(traj.tensor(traj.T - 1, n)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    with pytest.warns(UserWarning, match="resuming"):
        rec = trajlib.Recorder(model, run, every=1, step_stats=True, sketch=64)
    with rec:
        for step in range(last + 1, last + 11):
            loss = model(torch.randn(8, 64)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step)
    traj = trajlib.open_trajectory(run)
    table = traj.steps_table()
    assert list(table.step) == list(range(1, last + 11)) == list(traj.steps[1:])  # no gap, no duplicate
    ref = reference(traj, traj.parameters)
    np.testing.assert_allclose(table.step_norm, ref["step_norm"], rtol=1e-6)
    np.testing.assert_allclose(table.update_param_cos, ref["update_param_cos"], atol=1e-6)
    cons = table.consecutive_update_cos.to_numpy()
    assert np.isnan(cons[last])  # the first step after the restart has no u_{t-1}
    ok = ~np.isnan(cons)
    np.testing.assert_allclose(cons[ok], ref["consecutive_update_cos"][ok], atol=1e-6)
    sk = traj.sketches()
    assert list(sk.steps) == list(traj.steps)  # one sketch per step, θ_0 included
