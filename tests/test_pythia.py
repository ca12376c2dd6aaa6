"""The Pythia schedule as data, and the hub path of notebooks 04/05 on a local stand-in cache."""

from __future__ import annotations

import numpy as np
import pytest

from trajlib import hallmarks as H
from trajlib.paper import pythia
from conftest import fake_hub


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


def test_suite_stats_streams_each_size_and_drops_duplicate_revisions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRAJLIB_CACHE", str(tmp_path / "grams"))
    revs = ["step0", "step1", "step2", "step1000"]
    fake_hub(tmp_path / "hub", "EleutherAI/pythia-a", 8, revs, {})
    fake_hub(tmp_path / "hub", "EleutherAI/pythia-b", 16, revs, {"step2": "step1"})
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
