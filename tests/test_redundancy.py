"""Page 12's harness: the shifted test set, BatchNorm re-estimation, rank correlations with a
bootstrap interval and their verdicts, and training in the span of the early trajectory."""

import json

import numpy as np
import pytest
import torch

import trajlib
from trajlib.paper.data import TensorData
from trajlib.paper.generalisation import (accuracy, collect_runs, final_model, rank_correlation,
                                          recalibrate_batchnorm, rotated)
from trajlib.paper.ledger import claim
from trajlib.paper.runs import build_model, load_data, run_classification
from trajlib.paper.subspace import early_basis, run_subspace
from trajlib.paper.verdict import judge_interval


def _images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return TensorData(x.clone(), torch.arange(n) % 10, x, torch.arange(n) % 10, num_classes=10)


def test_rotating_by_a_quarter_turn_is_rot90_in_opposite_senses_and_a_full_turn_is_identity():
    data = _images()
    turned = rotated(data, 90).x_test
    senses = []
    for i in range(len(turned)):
        match = [k for k in (1, -1) if torch.allclose(turned[i], torch.rot90(data.x_test[i], k, dims=(1, 2)), atol=1e-5)]
        assert len(match) == 1, i
        senses.append(match[0])
    assert senses == [senses[0], -senses[0]] * (len(turned) // 2)  # half each way
    assert torch.allclose(rotated(data, 360).x_test, data.x_test, atol=1e-4)
    assert torch.equal(rotated(data, 20).x_train, data.x_train)  # the shift touches the test split only
    assert not torch.allclose(rotated(data, 20).x_test, data.x_test, atol=1e-2)


def test_rank_correlation_is_spearman_with_a_seeded_interval_around_it():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = np.round(-0.5 * x + rng.normal(size=40), 1)  # ties included
    r = rank_correlation(x, y, n_boot=500, seed=1)
    assert r["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12) and r["n"] == 40
    assert r["low"] <= r["rho"] <= r["high"] and r["high"] < 0
    assert rank_correlation(x, y, n_boot=500, seed=1) == r  # deterministic given its seed
    x[3] = np.nan
    assert rank_correlation(x, y, n_boot=50)["n"] == 39  # pairs with a NaN dropped
    mono = rank_correlation(np.arange(10.0), np.arange(10.0) ** 2, n_boot=100)
    assert mono["rho"] == mono["low"] == mono["high"] == pytest.approx(1.0)
    few = rank_correlation([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])
    assert np.isnan(few["low"]) and np.isnan(few["high"])


@pytest.mark.parametrize("interval, direction, verdict", [
    ((-0.4, -0.6, -0.2, 30), -1, "agrees"), ((-0.4, -0.6, -0.2, 30), +1, "disagrees"),
    ((-0.1, -0.3, 0.1, 30), -1, "inconclusive"), ((0.3, float("nan"), float("nan"), 3), +1, "inconclusive")])
def test_a_row_with_a_bootstrap_interval_is_judged_by_the_same_rule(interval, direction, verdict):
    row = claim("ρ", paper="p", source="ours", kind="extension", direction=direction, interval=interval)
    assert row["verdict"] == verdict and row["effect"]["n"] == interval[3] and row["ours"] == interval[0]
    with pytest.raises(ValueError, match="outside its interval"):
        judge_interval(0.5, -0.1, 0.1, n=10, direction=1)
    with pytest.raises(ValueError, match="not both"):
        claim("ρ", paper="p", source="ours", direction=1, interval=interval, effects=[1.0, 2.0])


def test_recalibrated_batchnorm_holds_the_training_split_statistics():
    data = _images(n=64, seed=1)
    data = TensorData(data.x_train * 3 + 1, data.y_train, data.x_test, data.y_test, 10)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(5.0)
    recalibrate_batchnorm(model, data, batch_size=64)  # one batch: exactly the split's moments
    with torch.no_grad():
        h = model[0](data.x_train).transpose(0, 1).reshape(4, -1)
    assert torch.allclose(bn.running_mean, h.mean(1), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var(1, unbiased=True), rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training


def _tiny(tmp_path, **kw):
    common = dict(model="mlp", model_kwargs={"width": 16}, dataset="digits", epochs=2, batch_size=64, lr=0.1,
                  momentum=0.9, weight_decay=0.01, record_every=2)
    return run_classification(tmp_path / "runs", name="12-test", seed=0, **{**common, **kw})


def test_final_model_is_the_last_checkpoint_and_scores_what_the_run_scored(tmp_path):
    run = _tiny(tmp_path)
    model, config = final_model(run.run_dir)
    traj = trajlib.open_trajectory(run.run_dir)
    last = traj.T - 1
    for name, p in model.named_parameters():
        assert np.array_equal(p.detach().numpy(), traj.tensor(last, name).reshape(p.shape)), name
    data = load_data("digits", seed=0)
    assert accuracy(model, data.x_test, data.y_test) == run.final_accuracy  # an MLP: no BatchNorm to re-estimate
    assert config["seed"] == 0
    (tmp_path / "runs" / "02-x-seed0-0").mkdir()  # unfinished: no history.csv
    (tmp_path / "runs" / "02-x-seed0-0" / "config.json").write_text(json.dumps({"task": "classification",
                                                                               "dataset": "digits"}))
    assert collect_runs(tmp_path / "runs", pages=["12"]) == [run.run_dir]
    with pytest.raises(FileNotFoundError, match=r"no finished digits runs of page\(s\) 02 10"):
        collect_runs(tmp_path / "runs", pages=["02", "10", "12"])


def test_subspace_training_replays_the_full_run_then_stays_in_the_early_span(tmp_path):
    full = _tiny(tmp_path)
    sub = run_subspace(tmp_path / "runs", full, k=3, from_epoch=1, name="12-test")
    until = int(full.history.loc[full.history["epoch"] == 1, "step"].iloc[0])
    a, b = trajlib.open_trajectory(full.run_dir), trajlib.open_trajectory(sub.run_dir)
    assert list(a.steps) == list(b.steps)
    K = list(a.steps).index(until)
    for t in range(K + 1):  # identical up to the switch (same seed, same batches)
        assert all(np.array_equal(a.tensor(t, n), b.tensor(t, n)) for n in a.names), t
    basis, ratio = early_basis(full.run_dir, until_step=until, k=3)
    V = torch.cat([basis[n].reshape(3, -1) for n in a.names], 1).double()
    assert torch.allclose(V @ V.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert 0 < ratio[-1] <= ratio[0] < 1
    flat = lambda traj, t: torch.from_numpy(np.concatenate([traj.tensor(t, n).ravel() for n in a.names])).double()
    theta_k = flat(b, K)
    moved = 0.0
    for t in range(K + 1, b.T):
        d = flat(b, t) - theta_k
        residual = d - (V @ d) @ V
        assert residual.norm() <= 1e-6 * max(1.0, float(theta_k.norm())), t  # float32 storage of θ_K + Vᵀc
        moved = max(moved, float(d.norm()))
    assert moved > 1e-3  # it trained
    assert json.loads((sub.run_dir / "config.json").read_text())["subspace"] == \
        {"k": 3, "from_epoch": 1, "basis_of": full.run_dir.name}
    assert run_subspace(tmp_path / "runs", full, k=3, from_epoch=1, name="12-test").run_dir == sub.run_dir
    from trajlib.paper.train import train_classifier

    with pytest.raises(ValueError, match="no checkpoint at step 21"):
        early_basis(full.run_dir, until_step=21, k=2)
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        train_classifier(build_model("mlp", seed=0, dataset="digits", width=16), load_data("digits"), epochs=1,
                         run_dir=tmp_path / "adamw", optimizer="adamw", subspace={"from_epoch": 1, "basis": basis})
