"""Where users train: the running Gram, the Trainer and Lightning callbacks (real Trainers on a
tiny model, including a resume), live hallmarks read back from TensorBoard event files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import random_walk, write_run

import trajlib
from trajlib import hallmarks as H
from trajlib.integrations.live import LiveHallmarks, RunningGram, attach, map_image


def _gram(run) -> np.ndarray:
    return trajlib.gram(trajlib.open_trajectory(run), cache=False, progress=False)["all"]


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


# -- the running Gram ---------------------------------------------------------------------------
def test_running_gram_equals_the_streamed_gram(tmp_path, rng):
    thetas = random_walk(rng, {"a.weight": (30, 20), "a.bias": (30,), "b.weight": (5, 30)}, 10)
    run = write_run(tmp_path / "r", thetas)
    rg = RunningGram(chunk=97)  # slabs that cut tensors
    for t, th in enumerate(thetas):
        rg.add(t, [torch.as_tensor(v) for v in th.values()])
        if t >= 1:  # each prefix equals the Gram of that prefix
            ref = trajlib.gram(trajlib.open_trajectory(run).select(range(t + 1)), cache=False, progress=False)["all"]
            np.testing.assert_allclose(rg.G, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert rg.T == 10 and rg.steps == list(range(10))


def test_running_gram_refuses_bad_input_and_stops_at_its_budget():
    rg = RunningGram(max_bytes=3 * 40)
    rg.add(0, torch.zeros(10))
    with pytest.raises(ValueError, match="step 0 is not after"):
        rg.add(0, torch.ones(10))
    with pytest.raises(ValueError, match="step 1 has 11"):
        rg.add(1, torch.ones(11))
    assert rg.add(1, torch.ones(10)) and rg.add(2, 2 * torch.ones(10))
    with pytest.warns(UserWarning, match="exceeds max_bytes"):
        assert not rg.add(3, 3 * torch.ones(10))
    assert rg.T == 3 and rg.full


def test_map_image_orders_rows_and_colours():
    C = np.array([[1.0, 0.0], [0.0, 1.0]])
    img = map_image(C, size=4)
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8
    assert (img[0, 0] == img[3, 3]).all() and (img[0, 3] == img[3, 0]).all()
    assert img[0, 0].astype(int).sum() > img[0, 3].astype(int).sum()  # 1.0 is bright, 0.0 dark


def test_plain_recorder_hook_logs_the_live_mds(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    logged = []
    live = LiveHallmarks(lambda values, step: logged.append((step, values)), every=2)
    with trajlib.Recorder(model, tmp_path / "run", every=3) as rec:
        step_fn = attach(rec, live)
        for step in range(1, 25):
            loss = model(torch.randn(16, 6)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            step_fn(step)
    G = _gram(tmp_path / "run")
    assert [s for s, _ in logged] == [6, 12, 18, 24]  # every second checkpoint after θ_0
    assert logged[-1][1]["trajectory/mds"] == pytest.approx(H.mds(G), abs=1e-12)
    prefix = H.mds(trajlib.gram(trajlib.open_trajectory(tmp_path / "run").select(range(5)), cache=False,
                                progress=False)["all"])
    assert logged[1][1]["trajectory/mds"] == pytest.approx(prefix, abs=1e-12)
