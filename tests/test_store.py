"""Opening trajectories from every source, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHAPES, random_walk, stacked, write_run
from safetensors.torch import save_file

import trajlib
from trajlib import hallmarks as H
from trajlib.manifest import TrajectoryError


def test_run_opens_with_manifest_order_steps_and_hashes(walk_run):
    run, thetas = walk_run
    traj = trajlib.open_trajectory(run)
    assert traj.T == len(thetas)
    assert traj.names == list(SHAPES)
    assert traj.P == sum(int(np.prod(s)) for s in SHAPES.values())
    assert traj.steps.dtype == np.int64 and list(traj.steps) == list(range(len(thetas)))
    np.testing.assert_array_equal(np.stack([traj.flat(t) for t in range(traj.T)]), stacked(thetas))
    assert traj.validate() == []
    assert trajlib.open_trajectory(run, verify=True).T == traj.T


def test_missing_run_and_unknown_source_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        trajlib.open_trajectory(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no checkpoints \(looked for a trajlib manifest"):
        trajlib.open_trajectory(tmp_path / "empty")


def test_truncated_checkpoint_is_named(walk_run):
    run, _ = walk_run
    victim = sorted(run.glob("ckpt-*.safetensors"))[4]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100])
    with pytest.raises(TrajectoryError, match=f"{victim.name}.*truncated"):
        trajlib.open_trajectory(run)


def test_corrupt_header_is_named(walk_run):
    run, _ = walk_run
    victim = sorted(run.glob("ckpt-*.safetensors"))[2]
    data = bytearray(victim.read_bytes())
    data[10:20] = b"\x00" * 10
    victim.write_bytes(bytes(data))
    with pytest.raises(TrajectoryError, match=f"{victim.name}.*(corrupt|truncated)"):
        trajlib.open_trajectory(run)


def test_corrupted_bytes_are_caught_by_hash_verification(walk_run):
    run, _ = walk_run
    victim = sorted(run.glob("ckpt-*.safetensors"))[1]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    traj = trajlib.open_trajectory(run)  # sizes still agree
    assert any(victim.name in f and "sha256" in f for f in traj.validate(finite=False))
    with pytest.raises(TrajectoryError, match=f"{victim.name}.*sha256"):
        trajlib.open_trajectory(run, verify=True)


def test_missing_checkpoint_file_is_named(walk_run):
    run, _ = walk_run
    victim = sorted(run.glob("ckpt-*.safetensors"))[3]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"{victim.name}.*step 3.*missing"):
        trajlib.open_trajectory(run)


def test_manifest_that_is_not_json_is_named(walk_run):
    run, _ = walk_run
    (run / "manifest.json").write_text("{ not json")
    with pytest.raises(TrajectoryError, match="manifest.json.*not valid JSON"):
        trajlib.open_trajectory(run)


def _hf_dir(root: Path, thetas, fmt: str) -> Path:
    for t, theta in enumerate(thetas):
        d = root / f"step{100 * t}"
        d.mkdir(parents=True)
        tensors = {k: torch.tensor(v) for k, v in theta.items()}
        if fmt == "safetensors":
            save_file(tensors, d / "model.safetensors")
        elif fmt == "sharded":
            names = list(tensors)
            half = len(names) // 2
            shards = {"model-00001-of-00002.safetensors": names[:half],
                      "model-00002-of-00002.safetensors": names[half:]}
            for fname, keys in shards.items():
                save_file({k: tensors[k] for k in keys}, d / fname)
            index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
            (d / "model.safetensors.index.json").write_text(json.dumps(index))
        else:
            torch.save(tensors, d / "pytorch_model.bin")
        (d / "config.json").write_text(json.dumps({"num_attention_heads": 2}))
    return root


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
def test_hugging_face_checkpoint_folders(tmp_path, rng, fmt):
    thetas = random_walk(rng, SHAPES, 5)
    root = _hf_dir(tmp_path / "hf", thetas, fmt)
    traj = trajlib.open_trajectory(root)
    assert list(traj.steps) == [0, 100, 200, 300, 400]
    assert traj.meta["config"]["num_attention_heads"] == 2
    stats = trajlib.gram(traj, cache=False, progress=False)
    X = stacked(thetas)
    C = (X @ X.T) / np.outer(np.linalg.norm(X, axis=1), np.linalg.norm(X, axis=1))
    np.testing.assert_allclose(H.trajectory_map(stats["all"]), C, atol=1e-9)
    np.testing.assert_array_equal(traj.tensor(3, "fc.weight"), thetas[3]["fc.weight"])


def test_explicit_steps_override_names(tmp_path, rng):
    root = _hf_dir(tmp_path / "hf", random_walk(rng, SHAPES, 3), "safetensors")
    traj = trajlib.open_trajectory(root, steps={"step0": 5, "step100": 7, "step200": 9})
    assert list(traj.steps) == [5, 7, 9]


def test_bin_checkpoints_refuse_pickled_code(tmp_path):
    """A .bin that would run code when unpickled is rejected by weights_only loading."""
    d = tmp_path / "hf" / "step0"
    d.mkdir(parents=True)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Exploit()}, f, protocol=2)
    with pytest.raises(TrajectoryError, match="pytorch_model.bin.*weights-only"):
        trajlib.open_trajectory(tmp_path / "hf")
    assert not (tmp_path / "pwned").exists()


def test_mismatched_shapes_between_checkpoints_are_named(tmp_path, rng):
    thetas = random_walk(rng, SHAPES, 3)
    root = _hf_dir(tmp_path / "hf", thetas, "safetensors")
    bad = {k: torch.tensor(v) for k, v in thetas[2].items()}
    bad["fc.weight"] = torch.zeros(10, 31)
    save_file(bad, root / "step200" / "model.safetensors")
    with pytest.raises(TrajectoryError, match=r"step200/model\.safetensors.*'fc\.weight'.*\[10, 31\]"):
        trajlib.open_trajectory(root)
    del bad["fc.weight"]
    save_file(bad, root / "step200" / "model.safetensors")
    with pytest.raises(TrajectoryError, match=r"step200.*lacks tensor 'fc\.weight'"):
        trajlib.open_trajectory(root)


def test_duplicates_are_reported_and_dropped(tmp_path, rng):
    thetas = random_walk(rng, SHAPES, 5)
    thetas[3] = {k: v.copy() for k, v in thetas[2].items()}  # a branch serving identical weights
    run = write_run(tmp_path / "r", thetas)
    traj = trajlib.open_trajectory(run)
    assert traj.duplicates() == [[2, 3]]
    assert any("duplicate" in f and "step 2" in f and "step 3" in f for f in traj.validate(finite=False))
    kept, dropped = traj.drop_duplicates()
    assert kept.T == 4 and dropped == ["3"]
    assert list(trajlib.open_trajectory(run, drop_duplicates=True).steps) == [0, 1, 2, 4]
    hf = trajlib.open_trajectory(_hf_dir(tmp_path / "hf", thetas, "safetensors"))
    assert hf.duplicates() == [[2, 3]]


def test_validate_finds_nan_by_file_and_tensor(tmp_path, rng):
    thetas = random_walk(rng, SHAPES, 4)
    thetas[2]["bn.bias"][0] = np.inf
    traj = trajlib.open_trajectory(write_run(tmp_path / "r", thetas))
    findings = traj.validate(hashes=False)
    assert len(findings) == 1 and "ckpt-000000002" in findings[0] and "'bn.bias'" in findings[0]


def test_hub_revisions_through_huggingface_hub_cache(tmp_path, rng, monkeypatch):
    """A local stand-in of the hub cache layout (models--org--name/refs, snapshots) read with
    huggingface_hub itself in offline mode: the same code path as a real download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    thetas = random_walk(rng, SHAPES, 3)
    repo = tmp_path / "hub" / "models--EleutherAI--pythia-tiny"
    revisions = ["step0", "step1", "step2"]
    for t, rev in enumerate(revisions):
        commit = f"{t:040x}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        fmt_file = snap / ("model.safetensors" if t != 1 else "pytorch_model.bin")
        tensors = {k: torch.tensor(v) for k, v in thetas[t].items()}
        save_file(tensors, fmt_file) if t != 1 else torch.save(tensors, fmt_file)
        (snap / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    traj = trajlib.open_trajectory("EleutherAI/pythia-tiny", revisions=revisions, cache_dir=tmp_path / "hub")
    assert list(traj.steps) == [0, 1, 2] and traj.labels == revisions
    assert traj.meta["config"]["num_attention_heads"] == 4
    for name in SHAPES:
        np.testing.assert_array_equal(traj.tensor(1, name), thetas[1][name])
    with pytest.raises(FileNotFoundError, match="pythia-tiny@step9"):
        trajlib.open_trajectory("EleutherAI/pythia-tiny", revisions=["step9"], cache_dir=tmp_path / "hub")


def test_bf16_and_fp16_checkpoints_convert_exactly(tmp_path):
    rng = np.random.default_rng(5)
    for dtype in (torch.bfloat16, torch.float16):
        root = tmp_path / str(dtype)
        ws = []
        for t in range(4):
            w = torch.tensor(rng.standard_normal(300), dtype=torch.float32).to(dtype)
            ws.append(w.double().numpy())
            (root / f"step{t}").mkdir(parents=True)
            save_file({"w": w}, root / f"step{t}" / "model.safetensors")
        traj = trajlib.open_trajectory(root)
        np.testing.assert_array_equal(traj.flat(2), ws[2])
        stats = trajlib.gram(traj, cache=False, progress=False)
        X = np.stack(ws)
        np.testing.assert_allclose(H.param_norm(stats["all"]), np.linalg.norm(X, axis=1), rtol=1e-12)
