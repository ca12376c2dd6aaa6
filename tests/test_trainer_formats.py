"""The checkpoints users' trainers already write, opened in place: torch.save series (plain and
nanoGPT-style, compiled-model prefixes), Lightning .ckpt files, transformers.Trainer output folders
and torch.distributed.checkpoint saves of two gloo ranks. Each written by the real library; each
Gram against a float64 reference of the same tensors captured while training; a tied embedding
counted once in every format; refusals named."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import trajlib
from trajlib.manifest import TrajectoryError

HERE = Path(__file__).resolve().parent


class TiedLM(nn.Module):
    """A tiny language model whose output head is its embedding (tied, as nanoGPT and GPT-2)."""

    def __init__(self, vocab=17, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(self.norm(torch.tanh(self.mix(self.emb(x)))))


def _unique_params(model: nn.Module) -> dict[str, np.ndarray]:
    """name → float64 copy of each parameter, tied ones once (named_parameters dedups)."""
    return {n.removeprefix("_orig_mod."): p.detach().double().numpy().copy() for n, p in model.named_parameters()}


def _train_steps(model, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        x = torch.randint(0, 17, (32,), generator=g)
        nn.functional.cross_entropy(model(x), x).backward()
        opt.step()
        opt.zero_grad()
    return opt


def _reference_gram(snapshots: list[dict[str, np.ndarray]], names) -> np.ndarray:
    """Dense float64 Gram of [θ_0; u_0; …; u_{T−2}] over ``names``."""
    X = np.stack([np.concatenate([s[n].ravel() for n in names]) for s in snapshots])
    R = np.vstack([X[:1], np.diff(X, axis=0)])
    return R @ R.T


def _assert_gram_matches(traj, snapshots):
    G = trajlib.gram(traj, cache=False, progress=False)["all"]
    ref = _reference_gram(snapshots, traj.parameters)
    assert np.max(np.abs(G - ref)) <= 1e-12 * np.abs(ref).max()
    return G


# -- torch.save series --------------------------------------------------------------------------
def test_nanogpt_style_checkpoints_open_by_their_iter_num_with_the_tied_embedding_once(tmp_path):
    """nanoGPT's dict (``model`` of a compiled model, ``optimizer``, ``iter_num``, ``config``):
    steps from ``iter_num`` (not the file names), ``_orig_mod.`` stripped, the head read once."""
    torch.manual_seed(0)
    model = TiedLM()
    compiled = torch.compile(model)  # its state_dict names carry _orig_mod. (compiled lazily: never run)
    snapshots = []
    for k in range(4):
        opt = _train_steps(model, 3, seed=k)
        snapshots.append(_unique_params(model))
        torch.save({"model": compiled.state_dict(), "optimizer": opt.state_dict(), "iter_num": 100 * k,
                    "best_val_loss": 1.5, "config": {"n_embd": 8}, "model_args": {"vocab_size": 17}},
                   tmp_path / f"ckpt_{chr(97 + k)}.pt")
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    traj = trajlib.open_trajectory(tmp_path)
    assert list(traj.steps) == [0, 100, 200, 300]
    assert "head.weight" not in traj.names and traj.meta["tied"] == {"head.weight": "emb.weight"}
    assert set(traj.parameters) == set(snapshots[0]) and traj.P == \
        sum(p.numel() for p in model.parameters())
    assert {traj.kinds[n] for n in ("norm.running_mean", "norm.running_var")} == {"buffer"}
    _assert_gram_matches(traj, snapshots)


def test_a_glob_of_plain_state_dicts_takes_steps_from_the_file_names(tmp_path):
    torch.manual_seed(1)
    model = TiedLM()
    snapshots, steps = [], [0, 5, 50, 500]
    for s in steps:
        _train_steps(model, 2, seed=s)
        snapshots.append(_unique_params(model))
        torch.save(model.state_dict(), tmp_path / f"ckpt_{s}.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    traj = trajlib.open_trajectory(str(tmp_path / "ckpt_*.pt"))
    assert list(traj.steps) == steps and "head.weight" not in traj.names
    _assert_gram_matches(traj, snapshots)
    one = trajlib.open_trajectory(tmp_path / "ckpt_50.pt")
    assert one.T == 1 and list(one.steps) == [50]


def test_a_pickle_that_needs_more_than_weights_is_refused_and_never_run(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "ckpt_10.pt", "wb") as f:
        pickle.dump({"model": Exploit(), "iter_num": 10}, f, protocol=2)
    with pytest.raises(TrajectoryError, match=r"ckpt_10\.pt: refused: .*weights-only"):
        trajlib.open_trajectory(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_torch_save_file_is_named(tmp_path):
    model = TiedLM()
    for s in (1, 2):
        torch.save(model.state_dict(), tmp_path / f"ckpt_{s}.pt")
    data = (tmp_path / "ckpt_2.pt").read_bytes()
    (tmp_path / "ckpt_2.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrajectoryError, match=r"ckpt_2\.pt: cannot load .*truncated"):
        trajlib.open_trajectory(tmp_path)


def test_a_dict_without_weights_and_two_different_files_at_one_step_are_named(tmp_path):
    torch.save({"iter_num": 3, "notes": "no weights"}, tmp_path / "a.pt")
    with pytest.raises(TrajectoryError, match=r"a\.pt: no state dict in it"):
        trajlib.open_trajectory(tmp_path / "a.pt")
    model = TiedLM()
    (tmp_path / "b").mkdir()
    torch.save({"model": model.state_dict(), "iter_num": 7}, tmp_path / "b" / "x.pt")
    _train_steps(model, 1)
    torch.save({"model": model.state_dict(), "iter_num": 7}, tmp_path / "b" / "y.pt")
    with pytest.raises(TrajectoryError, match=r"x\.pt and .*y\.pt are both at step 7"):
        trajlib.open_trajectory(tmp_path / "b")


def test_a_folder_mixing_formats_is_refused_naming_a_file_of_each(tmp_path):
    model = TiedLM()
    torch.save(model.state_dict(), tmp_path / "ckpt_1.pt")
    (tmp_path / "checkpoint-2").mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "head.weight"},
              tmp_path / "checkpoint-2" / "model.safetensors")
    with pytest.raises(TrajectoryError, match=r"mixes checkpoint formats: .*checkpoint-2.*ckpt_1\.pt"):
        trajlib.open_trajectory(tmp_path)


# -- Lightning ----------------------------------------------------------------------------------
def test_lightning_checkpoints_open_by_global_step_and_last_ckpt_is_read_once(tmp_path):
    """A real Lightning Trainer with ModelCheckpoint(every_n_train_steps=2, save_last=True): steps
    from ``global_step``, epochs from ``epoch``, ``last.ckpt`` (a copy of the latest) read once,
    the tied head once, BatchNorm statistics as buffers, ``prefix="net."`` to the bare names."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    snapshots = {}

    class Capture(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            snapshots[trainer.global_step] = {n: p.detach().double().numpy().copy()
                                             for n, p in pl_module.named_parameters()}

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters()
            self.net = TiedLM()

        def training_step(self, batch, _):
            (x,) = batch
            return nn.functional.cross_entropy(self.net(x), x)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(0, 17, (128,))), batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(max_steps=6, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu",
                            callbacks=[Capture(), ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2,
                                                                  save_top_k=-1, save_last=True)])
        trainer.fit(Module(), data)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert "last.ckpt" in files and len(files) == 4, files
    traj = trajlib.open_trajectory(tmp_path / "ck")
    assert list(traj.steps) == [2, 4, 6] and np.all(np.isfinite(traj.epochs))
    assert "net.head.weight" not in traj.names and traj.kinds["net.norm.running_mean"] == "buffer"
    _assert_gram_matches(traj, [snapshots[s] for s in (2, 4, 6)])
    bare = trajlib.open_trajectory(tmp_path / "ck", prefix="net.")
    assert "emb.weight" in bare.names and not any(n.startswith("net.") for n in bare.names)


# -- transformers.Trainer -----------------------------------------------------------------------
def test_a_transformers_trainer_output_folder_is_one_trajectory(tmp_path):
    """A real ``transformers.Trainer`` on a tiny GPT-2 (tied embeddings), saving every 2 steps and
    a final ``save_model``: the ``checkpoint-N`` folders are the trajectory (steps and epochs from
    ``trainer_state.json``), the root's final model and ``training_args.bin`` are left out."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    snapshots = {}

    class Capture(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kw):
            snapshots[state.global_step] = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=31, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    ids = torch.randint(0, 31, (32, 8))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, save_steps=2, per_device_train_batch_size=8,
                             learning_rate=1e-2, report_to=[], logging_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Capture()])
        trainer.train()
        trainer.save_model()
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "training_args.bin").is_file()
    traj = trajlib.open_trajectory(out)
    assert list(traj.steps) == [2, 4, 6] and list(traj.epochs) == [0.5, 1.0, 1.5]
    assert traj.P == sum(p.numel() for p in model.parameters())  # tied head once
    _assert_gram_matches(traj, [snapshots[s] for s in (2, 4, 6)])


# -- torch.distributed.checkpoint ---------------------------------------------------------------
DCP_WRITER = HERE / "dcp_writer.py"


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory):
    """FSDP2 over two gloo processes, one DCP save per step (each rank writes its own shard
    file), and the full parameters gathered at each step as the reference."""
    root = tmp_path_factory.mktemp("dcp")
    out = subprocess.run([sys.executable, str(DCP_WRITER), str(root)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_dcp_saves_of_two_ranks_open_in_place_and_match_the_gathered_reference(dcp_run):
    runs = dcp_run / "run"
    assert sorted(p.name for p in (runs / "step-0").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    traj = trajlib.open_trajectory(runs)
    refs = [torch.load(dcp_run / "reference" / f"step-{s}.pt", weights_only=True) for s in traj.steps]
    assert list(traj.steps) == [0, 1, 2, 3]
    assert "head.weight" not in traj.names and traj.meta["tied"] == {"head.weight": "emb.weight"}
    assert not any(n.startswith(("optimizer", "model.")) for n in traj.names)  # optimizer state kept out
    snapshots = [{n: v.double().numpy() for n, v in r.items()} for r in refs]
    _assert_gram_matches(traj, snapshots)
    assert traj.P == sum(v.numel() for n, v in refs[0].items() if n != "head.weight")


def test_a_truncated_dcp_shard_and_a_missing_one_are_named(dcp_run, tmp_path):
    import shutil

    runs = tmp_path / "run"
    shutil.copytree(dcp_run / "run", runs)
    shard = runs / "step-2" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(TrajectoryError, match=r"step-2/__1_0\.distcp: truncated"):
        trajlib.open_trajectory(runs)
    shard.unlink()
    with pytest.raises(TrajectoryError, match=r"step-2/__1_0\.distcp: storage file .* is missing"):
        trajlib.open_trajectory(runs)


def test_a_flat_save_with_a_step_beside_the_tensors_opens_with_that_step(tmp_path):
    """``torch.save({**model.state_dict(), "step": 5})``: the tensors are the state dict, the
    number is its step (not a dict the reader refuses)."""
    model = TiedLM()
    for s in (5, 9):
        _train_steps(model, 1, seed=s)
        torch.save({**model.state_dict(), "step": s, "note": None}, tmp_path / f"snap-{s}.pt")
    traj = trajlib.open_trajectory(tmp_path)
    assert list(traj.steps) == [5, 9] and "head.weight" not in traj.names and "step" not in traj.names
