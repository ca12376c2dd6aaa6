"""The Pythia schedule as data, and the hub path of notebooks 04/05 on a local stand-in cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trajlib import hallmarks as H
from trajlib import pythia
from trajlib.models import tiny_gpt_neox


def test_revisions_and_parameter_counts():
    revs = pythia.revisions()
    assert len(revs) == 154 and revs[0] == "step0" and revs[10] == "step512" and revs[-1] == "step143000"
    assert [pythia.revision_step(r) for r in revs] == sorted(pythia.revision_step(r) for r in revs)
    assert pythia.parameter_count("70m") == 70_426_624       # the Pythia README's total
    assert pythia.parameter_count("12b") == 11_846_072_320
    assert abs(pythia.suite_bytes(["12b"], 154) / 1e12 - 3.65) < 0.01  # "3.7 TB"
    with pytest.raises(ValueError, match="unknown Pythia size '7b'"):
        pythia.repo_id("7b")
    with pytest.raises(ValueError, match="not a Pythia revision"):
        pythia.revision_step("main")


def _fake_hub(cache, repo: str, width: int, revs: list[str], duplicate_of: dict[str, str]):
    model = tiny_gpt_neox(vocab_size=17, width=width, layers=2, heads=2, context=8, seed=width)
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    (root / "refs").mkdir(parents=True)
    states = {}
    for i, rev in enumerate(revs):
        if rev in duplicate_of:
            state = states[duplicate_of[rev]]
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            state = {k: v.detach().clone().half() for k, v in model.state_dict().items()}
        states[rev] = state
        commit = f"{width:08x}{i:032x}"
        (root / "refs" / rev).write_text(commit)
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        save_file(state, snap / "model.safetensors")
        (snap / "config.json").write_text(json.dumps(model.config.to_dict()))


def test_suite_stats_streams_each_size_and_drops_duplicate_revisions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRAJLIB_CACHE", str(tmp_path / "grams"))
    revs = ["step0", "step1", "step2", "step1000"]
    _fake_hub(tmp_path / "hub", "EleutherAI/pythia-a", 8, revs, {})
    _fake_hub(tmp_path / "hub", "EleutherAI/pythia-b", 16, revs, {"step2": "step1"})
    out = pythia.suite_stats({"a": "EleutherAI/pythia-a", "b": "EleutherAI/pythia-b"}, revs,
                             groups=["all", "matrices", "qkv"], device="cpu", cache_dir=tmp_path / "hub")
    stats_a, dropped_a = out["a"]
    stats_b, dropped_b = out["b"]
    assert dropped_a == [] and stats_a.T == 4
    assert dropped_b == ["step2"] and list(stats_b.steps) == [0, 1, 1000]
    assert stats_b.n_params["matrices"] < stats_b.n_params["all"]
    assert "gpt_neox.layers.1.attention.v" in stats_b.groups   # heads came from config.json
    C = H.trajectory_map(stats_b["all"])
    assert np.all(np.isfinite(C)) and np.allclose(np.diag(C), 1)
