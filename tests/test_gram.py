"""The Gram engine against a dense float64 oracle: accuracy bars, groups, blocks, cache, devices."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import SHAPES, oracle, random_walk, stacked, write_run

import trajlib
from trajlib import hallmarks as H
from trajlib.stats import GramStats

COSINES = ("trajectory_map", "relative_map", "update_map", "consecutive_update_cos", "update_param_cos")
NORMS = ("param_norm", "step_norm", "distance_from_init")


def assert_matches_oracle(G: np.ndarray, X: np.ndarray, *, cos_tol=1e-6, norm_tol=1e-6, skip=()):
    ref = oracle(X)
    for name in COSINES:
        if name in skip:
            continue
        got = getattr(H, name)(G)
        err = np.max(np.abs(got - ref[name]))
        assert err <= cos_tol, f"{name}: max abs error {err:.2e} > {cos_tol}"
    for name in NORMS:
        got, want = getattr(H, name)(G), ref[name]
        mask = want > 0
        err = np.max(np.abs(got[mask] - want[mask]) / want[mask])
        assert err <= norm_tol, f"{name}: max rel error {err:.2e} > {norm_tol}"


def test_random_walk_matches_dense_oracle(walk_run):
    run, thetas = walk_run
    stats = trajlib.gram(trajlib.open_trajectory(run), cache=False, progress=False)
    assert_matches_oracle(stats["all"], stacked(thetas), cos_tol=1e-9, norm_tol=1e-9)


def test_constructed_angles_give_known_map(tmp_path):
    """θ_t = cos(α_t) e + sin(α_t) f with orthonormal e, f: C_ij = cos(α_i − α_j) exactly."""
    rng = np.random.default_rng(1)
    P = 5000
    e, f = np.linalg.qr(rng.standard_normal((P, 2)))[0].T
    alphas = np.radians([0, 3, 10, 25, 40, 70, 90])
    thetas = [{"w": (np.cos(a) * e + np.sin(a) * f).astype(np.float32)} for a in alphas]
    stats = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "r", thetas)), cache=False, progress=False)
    want = np.cos(alphas[:, None] - alphas[None, :])
    assert np.max(np.abs(H.trajectory_map(stats["all"]) - want)) < 1e-6
    assert np.allclose(H.angle_from_init(stats["all"]), np.degrees(alphas), atol=1e-4)


def test_oscillating_updates_have_negative_consecutive_cosines(tmp_path):
    rng = np.random.default_rng(2)
    base, v = rng.standard_normal(4000), rng.standard_normal(4000)
    thetas = [{"w": (base + (0.1 * (t % 2)) * v + 0.001 * t * base).astype(np.float32)} for t in range(10)]
    stats = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "r", thetas)), cache=False, progress=False)
    cuc = H.consecutive_update_cos(stats["all"])
    assert np.all(cuc < -0.9)
    assert_matches_oracle(stats["all"], stacked(thetas))


def test_tiny_steps_stay_exact_where_gram_subtraction_fails(tmp_path):
    """‖u‖/‖θ‖ = 1e-5: the engine meets the 1e-6 bar; deriving updates from a float32 Gram of
    raw checkpoints (the cancellation pitfall) does not, so this test can tell them apart."""
    rng = np.random.default_rng(3)
    P = 20000
    theta = rng.standard_normal(P)
    thetas = []
    for _ in range(8):
        thetas.append({"w": theta.astype(np.float32)})
        theta = theta + 1e-5 * np.linalg.norm(theta) / np.sqrt(P) * rng.standard_normal(P)
    X = stacked(thetas)
    stats = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "r", thetas)), cache=False, progress=False)
    assert_matches_oracle(stats["all"], X)
    K32 = (X.astype(np.float32) @ X.astype(np.float32).T).astype(np.float64)
    uu = np.diag(K32)[1:] - 2 * np.diag(K32, 1) + np.diag(K32)[:-1]
    cross = np.diag(K32, 1)[1:] - np.diag(K32, 1)[:-1] - np.diag(K32)[1:-1] + np.diag(K32, 2)
    with np.errstate(invalid="ignore"):
        naive = cross / np.sqrt(np.abs(uu[:-1] * uu[1:]))
    assert np.nanmax(np.abs(naive - oracle(X)["consecutive_update_cos"])) > 1e-2


def test_real_training_run_matches_oracle(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with trajlib.Recorder(model, tmp_path / "r", every=10, optimizer=opt) as rec:
        for step in range(1, 301):
            x = torch.randn(64, 12)
            loss = torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step)
    traj = trajlib.open_trajectory(tmp_path / "r")
    stats = trajlib.gram(traj, groups=["all", "bn"], cache=False, progress=False)
    X = np.stack([traj.flat(t) for t in range(traj.T)])
    assert traj.T == 31
    assert_matches_oracle(stats["all"], X)
    bn = [n for n in traj.names if n in traj.groups["bn"]]
    Xbn = np.stack([traj.flat(t, bn) for t in range(traj.T)])
    assert_matches_oracle(stats["bn"], Xbn)


def test_groups_add_up_to_whole_and_blocks_do_not_matter(walk_run):
    run, thetas = walk_run
    traj = trajlib.open_trajectory(run)
    ref = trajlib.gram(traj, groups=["all", "layers", "modules"], cache=False, progress=False)
    layers = [g for g in ref.groups if g in ("conv", "bn", "fc")]
    assert sorted(layers) == ["bn", "conv", "fc"]
    np.testing.assert_allclose(sum(ref[g] for g in layers), ref["all"], rtol=1e-12, atol=1e-12)
    for block_bytes in (64, 1000, 4096, 1 << 20):
        other = trajlib.gram(traj, groups=["all"], block_bytes=block_bytes, cache=False, progress=False)
        np.testing.assert_allclose(other["all"], ref["all"], rtol=1e-12, atol=1e-12)


def test_parameter_order_does_not_matter(tmp_path, rng):
    thetas = random_walk(rng, SHAPES, 6)
    reordered = [dict(reversed(list(th.items()))) for th in thetas]
    a = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "a", thetas)), cache=False, progress=False)
    b = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "b", reordered)), cache=False, progress=False)
    np.testing.assert_allclose(a["all"], b["all"], rtol=1e-12)


def test_lower_triangle_product_is_symmetric_and_exact(tmp_path, rng):
    """The default CPU product computes the lower triangle; the mirrored upper one must be exact."""
    thetas = random_walk(rng, {"w": (300,), "v": (7, 11)}, 30)
    stats = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "r", thetas)), cache=False,
                         progress=False, block_bytes=2000)
    G = stats["all"]
    np.testing.assert_array_equal(G, G.T)
    assert_matches_oracle(G, stacked(thetas), cos_tol=1e-9)


def test_worker_count_does_not_change_the_answer(walk_run):
    from trajlib.gram.engine import _accumulate_cpu
    from trajlib.groups import plan_blocks, resolve_groups

    traj = trajlib.open_trajectory(walk_run[0])
    plan = plan_blocks(traj, resolve_groups(traj, ["all", "layers"]), block_cols=50)
    one = _accumulate_cpu(traj, plan, list(range(len(plan.blocks))), _NullBar(), workers=1)
    three = _accumulate_cpu(traj, plan, list(range(len(plan.blocks))), _NullBar(), workers=3)
    np.testing.assert_allclose(one.numpy(), three.numpy(), rtol=1e-12, atol=1e-12)


class _NullBar:
    def update(self, n):
        pass


def test_gram_is_cached_beside_the_run_and_reused(walk_run, monkeypatch):
    run, _ = walk_run
    traj = trajlib.open_trajectory(run)
    first = trajlib.gram(traj, groups=["all", "layers"], progress=False)
    assert list(run.glob("gram-*.npz"))
    monkeypatch.setattr(trajlib.Trajectory, "read", lambda *a, **k: pytest.fail("re-read checkpoints"))
    again = trajlib.gram(trajlib.open_trajectory(run), groups=["all", "layers"], progress=False)
    for g in first.groups:
        np.testing.assert_array_equal(first[g], again[g])
    monkeypatch.undo()
    other = trajlib.gram(trajlib.open_trajectory(run), groups=["all"], progress=False)
    assert other.groups == ["all"]


def test_stats_roundtrip_and_select(walk_run, tmp_path):
    run, thetas = walk_run
    stats = trajlib.gram(trajlib.open_trajectory(run), groups=["all", "layers"], cache=False, progress=False)
    path = stats.save(tmp_path / "s.npz")
    back = GramStats.load(path)
    assert back.groups == stats.groups and back.n_params == stats.n_params
    np.testing.assert_array_equal(back.steps, stats.steps)
    idx = [0, 2, 3, 7]
    sub = stats.select(idx)
    X = stacked(thetas)[idx]
    assert_matches_oracle(sub["all"], X, cos_tol=1e-9)
    with pytest.raises(ValueError, match="increasing"):
        stats.select([3, 1])


def test_unknown_group_and_bad_regex_are_named(walk_run):
    traj = trajlib.open_trajectory(walk_run[0])
    with pytest.raises(ValueError, match="unknown parameter group 'nope'.*valid: all"):
        trajlib.gram(traj, groups=["nope"], cache=False)
    with pytest.raises(ValueError, match="matches no tensor"):
        trajlib.gram(traj, groups=["x=^zzz"], cache=False)


def test_nan_is_reported_with_file_tensor_and_step(tmp_path, rng):
    thetas = random_walk(rng, SHAPES, 5)
    thetas[3]["fc.weight"][2, 5] = np.nan
    run = write_run(tmp_path / "r", thetas)
    with pytest.raises(trajlib.TrajectoryError, match=r"ckpt-000000003\.safetensors.*'fc\.weight'.*step 3.*NaN"):
        trajlib.gram(trajlib.open_trajectory(run), cache=False, progress=False)
    assert not list(run.glob("gram-*.npz"))


def test_qkv_groups_follow_the_interleaved_head_layout(tmp_path):
    """Q/K/V of GPT-NeoX are rows (h, part) of view(heads, 3, head_size, H), not thirds."""
    from trajlib.paper.models import tiny_gpt_neox

    model = tiny_gpt_neox(vocab_size=11, width=16, layers=2, heads=4, context=8, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with trajlib.Recorder(model, tmp_path / "lm", every=1, meta={"config": model.config.to_dict()}) as rec:
        for step in range(1, 5):
            ids = torch.randint(0, 11, (4, 8))
            loss = model(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step)
    traj = trajlib.open_trajectory(tmp_path / "lm")
    stats = trajlib.gram(traj, groups=["qkv", "qkv_heads"], cache=False, progress=False)
    name = "gpt_neox.layers.1.attention.query_key_value"
    W = [traj.tensor(t, f"{name}.weight").reshape(4, 3, 4, 16) for t in range(traj.T)]
    b = [traj.tensor(t, f"{name}.bias").reshape(4, 3, 4) for t in range(traj.T)]
    for p, part in enumerate("qkv"):
        X = np.stack([np.concatenate([W[t][:, p].ravel(), b[t][:, p].ravel()]) for t in range(traj.T)])
        np.testing.assert_allclose(H.trajectory_map(stats[f"gpt_neox.layers.1.attention.{part}"]),
                                   oracle(X)["trajectory_map"], atol=1e-9)
        Xh = np.stack([np.concatenate([W[t][2, p].ravel(), b[t][2, p].ravel()]) for t in range(traj.T)])
        np.testing.assert_allclose(H.trajectory_map(stats[f"gpt_neox.layers.1.attention.h2.{part}"]),
                                   oracle(Xh)["trajectory_map"], atol=1e-9)
    parts = [stats[f"gpt_neox.layers.1.attention.h{h}.{p}"] for h in range(4) for p in "qkv"]
    whole = trajlib.gram(traj, groups=[{"qkv": "layers\\.1\\.attention\\.query_key_value"}], cache=False,
                         progress=False)["qkv"]
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_matches_cpu(walk_run):
    traj = trajlib.open_trajectory(walk_run[0])
    cpu = trajlib.gram(traj, groups=["all", "layers"], cache=False, progress=False)
    gpu = trajlib.gram(traj, groups=["all", "layers"], device="cuda", cache=False, progress=False,
                       block_bytes=512)
    for g in cpu.groups:
        np.testing.assert_allclose(gpu[g], cpu[g], rtol=1e-12, atol=1e-12)


def test_cuda_request_without_gpu_is_a_clear_error(walk_run):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        trajlib.gram(trajlib.open_trajectory(walk_run[0]), device="cuda", cache=False)


def test_a_pass_leaves_other_threads_torch_settings_alone(walk_run, monkeypatch):
    """The CPU workers run single-threaded BLAS in their own threads only: a thread that starts
    using torch during the pass gets the process's thread count (torch.set_num_threads(1) in a
    worker would hand it 1 for good), and the caller's count is unchanged afterwards."""
    import threading

    engine = sys.modules["trajlib.gram.engine"]

    torch.set_num_threads(2)
    seen = []
    original = engine._block_gram

    def probe(*args, **kwargs):
        if not seen:
            th = threading.Thread(target=lambda: (torch.ones(4).sum(), seen.append(torch.get_num_threads())))
            th.start()
            th.join()
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_block_gram", probe)
    traj = trajlib.open_trajectory(walk_run[0])
    trajlib.gram(traj, cache=False, progress=False, block_bytes=4096)
    assert seen and set(seen) == {2} and torch.get_num_threads() == 2


@pytest.mark.parametrize("product", ["square", "tiles", "syrk"])
def test_every_cpu_product_matches_the_oracle(tmp_path, monkeypatch, product):
    """The lower-triangle products (row tiles with a ragged last tile, numpy's dsyrk) and the
    full square give the same Gram; T = 150 spans three row tiles of 64."""
    engine = sys.modules["trajlib.gram.engine"]
    if product == "syrk" and not engine.has_syrk():
        pytest.skip("numpy's BLAS is not an OpenBLAS with CBLAS this process can hold at one thread")
    monkeypatch.setattr(engine, "_product", lambda T, workers=2: product)
    rng = np.random.default_rng(11)
    thetas = random_walk(rng, {"w": (700,), "v": (9, 13)}, 150)
    stats = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "r", thetas)), cache=False,
                         progress=False, block_bytes=150 * 4 * 300)
    G = stats["all"]
    np.testing.assert_array_equal(G, G.T)
    assert_matches_oracle(G, stacked(thetas), cos_tol=1e-9, norm_tol=1e-9)


def test_numpy_blas_is_restored_after_a_pass(walk_run):
    from trajlib.gram import blas

    api = blas.numpy_openblas()
    if api is None:
        pytest.skip("numpy's BLAS is not a controllable OpenBLAS")
    get = api.get_threads
    before = get()
    seen = []
    with blas.numpy_blas_single_threaded():
        seen.append(get())
        with blas.numpy_blas_single_threaded():  # overlapping passes: restored after the last
            seen.append(get())
        seen.append(get())
    assert seen == [1, 1, 1] and get() == before
    trajlib.gram(trajlib.open_trajectory(walk_run[0]), cache=False, progress=False)
    assert get() == before
