"""Page 11's harness: the MLP's initialisations and μP, per-parameter learning rates in the
training loop, and the width-family statistics."""

import numpy as np
import pytest
import torch

import trajlib
from trajlib.paper.data import TensorData
from trajlib.paper.models import MLP
from trajlib.paper.runs import run_classification
from trajlib.paper.scale_families import travel, width_rise
from trajlib.paper.train import train_classifier


def _linears(m):
    return [x for x in m.net if isinstance(x, torch.nn.Linear)]


@pytest.mark.parametrize("init, gain", [("he", lambda i, o: (2 / i) ** 0.5), ("glorot", lambda i, o: (2 / (i + o)) ** 0.5)])
def test_initialisation_schemes_have_their_variance_and_zero_biases(init, gain):
    torch.manual_seed(0)
    m = MLP(512, depth=2, in_features=512, init=init)
    hidden = _linears(m)[1]
    assert hidden.weight.std().item() == pytest.approx(gain(512, 512), rel=0.02)  # 262,144 draws, seeded
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in _linears(m))
    with pytest.raises(ValueError, match="init='lecun'; valid: torch, he, glorot"):
        MLP(8, init="lecun")


def test_mup_equals_standard_at_its_base_width_and_scales_the_output_and_the_rates_away_from_it():
    torch.manual_seed(1)
    sp = MLP(16)
    torch.manual_seed(1)
    mup = MLP(16, parametrisation="mup", base_width=16)
    assert all(torch.equal(a, b) for a, b in zip(sp.parameters(), mup.parameters()))
    assert [r for _, r in mup.lr_multipliers()] == [1.0, 1.0, 1.0, 1.0]
    torch.manual_seed(2)
    sp = MLP(64)
    torch.manual_seed(2)
    mup = MLP(64, parametrisation="mup", base_width=16)
    assert torch.equal(_linears(mup)[-1].weight, _linears(sp)[-1].weight * 0.5)  # √(16/64)
    assert torch.equal(_linears(mup)[0].weight, _linears(sp)[0].weight)
    groups = mup.lr_multipliers()
    assert [r for _, r in groups] == [4.0, 1.0, 0.25, 1.0]
    assert sorted(id(p) for ps, _ in groups for p in ps) == sorted(id(p) for p in mup.parameters())
    with pytest.raises(ValueError, match="needs base_width"):
        MLP(8, parametrisation="mup")


def test_the_training_loop_steps_each_group_at_its_own_rate(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    data = TensorData(x, y, x, y, num_classes=10)
    torch.manual_seed(3)
    model = MLP(32, parametrisation="mup", base_width=8)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = dict(zip(start, torch.autograd.grad(loss, list(model.parameters()))))
    train_classifier(model, data, run_dir=tmp_path / "r", epochs=1, batch_size=32, lr=0.05, momentum=0.0,
                     weight_decay=0.0, schedule="constant")
    mult = {"net.1.weight": 4.0, "net.1.bias": 4.0, "net.3.bias": 4.0, "net.3.weight": 1.0,
            "net.5.weight": 0.25, "net.5.bias": 1.0}
    for name, p in model.named_parameters():  # one step on the whole (permuted) batch
        assert torch.allclose(p.detach() - start[name], -0.05 * mult[name] * grads[name], atol=1e-6), name


def test_travel_is_the_dense_relative_distance_and_width_rise_pairs_by_seed(tmp_path):
    run = run_classification(tmp_path, name="11-t", seed=0, model="mlp", model_kwargs={"width": 8}, epochs=2,
                             batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4)
    traj = trajlib.open_trajectory(run.run_dir)
    flat = [np.concatenate([traj.tensor(t, n).ravel() for n in traj.names]).astype(np.float64) for t in (0, traj.T - 1)]
    dense = np.linalg.norm(flat[1] - flat[0]) / np.linalg.norm(flat[0])
    assert travel(run.stats()) == pytest.approx(dense, rel=1e-9)
    import pandas as pd

    table = pd.DataFrame({"family": ["a"] * 4 + ["b"] * 2, "width": [8, 64, 8, 64, 8, 64], "seed": [0, 0, 1, 1, 0, 0],
                          "mds": [0.5, 0.7, 0.6, 0.5, 0.1, 0.9]})
    assert width_rise(table, "a").tolist() == pytest.approx([0.2, -0.1])


def test_mup_groups_keep_the_base_shrink_per_step_and_refuse_adamw():
    from trajlib.paper.train import _lr_groups, trainable

    model = MLP(32, parametrisation="mup", base_width=8)
    groups = _lr_groups(model, trainable(model), weight_decay=1e-3, optimizer="sgd")
    assert [(g["lr_mult"], g["weight_decay"]) for g in groups] == [(4.0, 2.5e-4), (1.0, 1e-3), (0.25, 4e-3), (1.0, 1e-3)]
    assert all(g["lr_mult"] * g["weight_decay"] == pytest.approx(1e-3) for g in groups)
    with pytest.raises(ValueError, match="optimizer='adamw' would apply them unchanged"):
        _lr_groups(model, trainable(model), weight_decay=1e-3, optimizer="adamw")
    standard = MLP(32)
    assert _lr_groups(standard, trainable(standard), weight_decay=1e-3, optimizer="adamw") == trainable(standard)
