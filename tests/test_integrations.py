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
    rg = RunningGram()
    for t, th in enumerate(thetas):
        rg.add(t, [torch.as_tensor(v) for v in th.values()])
        if t >= 1:  # each prefix equals the Gram of that prefix
            ref = trajlib.gram(trajlib.open_trajectory(run).select(range(t + 1)), cache=False, progress=False)["all"]
            np.testing.assert_allclose(rg.G, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert rg.T == 10 and rg.steps == list(range(10))


def test_running_gram_refuses_bad_input_and_stops_at_its_budget():
    rg = RunningGram(max_bytes=3 * 80)
    rg.add(0, torch.zeros(10))
    with pytest.raises(ValueError, match="step 0 is not after"):
        rg.add(0, torch.ones(10))
    with pytest.raises(ValueError, match="step 1 has 11"):
        rg.add(1, torch.ones(11))
    assert rg.add(1, torch.ones(10)) and rg.add(2, 2 * torch.ones(10))
    with pytest.warns(UserWarning, match="4 rows of 10 float64 values exceed max_bytes=240; the live map stops at step 2"):
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


def test_recorder_saves_a_step_it_saw_and_rewind_drops_later_checkpoints(tmp_path):
    from trajlib.record import rewind

    model = torch.nn.Linear(3, 2)
    with trajlib.Recorder(model, tmp_path / "run", every=4) as rec:
        assert not rec.step(1) and not rec.step(2)
        rec.save(2)  # a framework's own save at a step the schedule skipped
        with pytest.raises(ValueError, match="step 2 is not after"):
            rec.save(2)
        with pytest.raises(ValueError, match="step 1 is not after"):
            rec.step(1)
        for s in range(3, 10):
            rec.step(s)
    assert rec.recorded_steps == [0, 2, 4, 8]
    with pytest.warns(UserWarning, match=r"dropped 1 checkpoint\(s\) recorded after it \(steps 8..8\)"):
        assert rewind(tmp_path / "run", 5) == [8]
    assert list(trajlib.open_trajectory(tmp_path / "run").steps) == [0, 2, 4]
    assert not (tmp_path / "run" / "ckpt-000000008.safetensors").exists()


# -- transformers.Trainer -------------------------------------------------------------------------
def _lm_dataset(n: int = 64, context: int = 8, vocab: int = 17):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, context), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x} for x in ids]


def _hf_trainer(out, callback, *, max_steps=12, save_steps=6, report_to=("tensorboard",), extra=()):
    from transformers import Trainer, TrainingArguments

    from trajlib.paper.models import tiny_gpt_neox

    model = tiny_gpt_neox(vocab_size=17, width=16, layers=2, heads=2, context=8, seed=0)
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=3e-3, save_steps=save_steps, logging_steps=2, report_to=list(report_to),
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0, save_strategy="steps")
    return Trainer(model=model, args=args, train_dataset=_lm_dataset(), callbacks=[callback, *extra])


def test_hf_trainer_records_on_schedule_at_saves_and_logs_live_hallmarks(tmp_path):
    from trajlib.integrations.hf import TrajectoryCallback

    cb = TrajectoryCallback(every=4, at_saves=True, image_every=2)
    trainer = _hf_trainer(tmp_path / "out", cb, max_steps=12, save_steps=6)
    trainer.train()
    run = tmp_path / "out" / "trajectory"
    traj = trajlib.open_trajectory(run)
    assert list(traj.steps) == [0, 4, 6, 8, 12]  # every 4, plus the Trainer's save at 6
    assert traj.meta["framework"] == "transformers.Trainer"
    # θ_t is the model after optimizer step t: equal to the Trainer's own checkpoint of that step
    ckpts = trajlib.open_trajectory(tmp_path / "out")  # checkpoint-6/, checkpoint-12/
    assert list(ckpts.steps) == [6, 12]
    for t_ck, t_run in ((0, 2), (1, 4)):
        for name in ("gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.embed_in.weight"):
            np.testing.assert_array_equal(ckpts.tensor(t_ck, name), traj.tensor(t_run, name))
    # live hallmarks: TensorBoard event files beside the Trainer's own, read back
    acc = _events(tmp_path / "out" / "runs" / "trajectory")
    mds = acc.Scalars("trajectory/mds")
    assert [e.step for e in mds] == [4, 6, 8, 12]
    G = _gram(run)
    stats = trajlib.gram(traj, cache=False, progress=False)
    for e, T in zip(mds, range(2, 6)):
        assert e.value == pytest.approx(H.mds(stats.select(range(T))["all"]), abs=1e-6)  # float32 events
    assert mds[-1].value == pytest.approx(H.mds(G), abs=1e-6)
    images = acc.Images("trajectory/map")
    assert [e.step for e in images] == [6, 12] and images[0].width == 256


def test_hf_trainer_resume_replays_and_appends(tmp_path):
    from transformers import TrainerCallback

    from trajlib.integrations.hf import TrajectoryCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 9:
                raise KeyboardInterrupt("simulated kill at step 9")

    out = tmp_path / "out"
    first = TrajectoryCallback(every=4, live=None)
    with pytest.raises(KeyboardInterrupt):
        _hf_trainer(out, first, report_to=(), extra=[Crash()]).train()
    first.session.close()  # what the dead process' exit would do (flush, drop the lock)
    assert list(trajlib.open_trajectory(out / "trajectory").steps) == [0, 4, 8]
    with pytest.raises(trajlib.TrajectoryError, match="training starts at step 0; pass fresh=True"):
        _hf_trainer(out, TrajectoryCallback(every=4, live=None), report_to=()).train()
    second = TrajectoryCallback(every=4, live=None)
    trainer = _hf_trainer(out, second, report_to=())
    with pytest.warns(UserWarning, match=r"resuming at step 6: dropped 1 checkpoint\(s\).*steps 8..8"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    traj = trajlib.open_trajectory(out / "trajectory")
    assert list(traj.steps) == [0, 4, 8, 12]
    final = {n: p.detach().numpy() for n, p in trainer.model.named_parameters()}
    for name in ("gpt_neox.embed_in.weight", "lm_head.weight"):
        np.testing.assert_array_equal(traj.tensor(3, name), final[name])


def test_hf_callback_writes_nothing_off_process_zero(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from trajlib.integrations.hf import TrajectoryCallback

    cb = TrajectoryCallback(tmp_path / "run", every=1)
    state = TrainerState(is_world_process_zero=False, max_steps=3)
    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True)
    cb.on_train_begin(args, state, TrainerControl(), model=torch.nn.Linear(2, 2))
    for s in (1, 2, 3):
        state.global_step = s
        cb.on_step_end(args, state, TrainerControl())
    cb.on_train_end(args, state, TrainerControl())
    assert not (tmp_path / "run").exists() and cb.session is None


# -- PyTorch Lightning ----------------------------------------------------------------------------
def _lightning_parts():
    import lightning.pytorch as L

    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    data = torch.utils.data.TensorDataset(x, x[:, :1] * 2 - x[:, 1:2])
    return L, Regressor, lambda: torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)


def _lightning_trainer(L, root, callbacks, *, max_steps, logger=True, ckpt_every=None, accumulate=1):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    cbs = list(callbacks)
    if ckpt_every:
        cbs.append(ModelCheckpoint(dirpath=root / "ckpts", every_n_train_steps=ckpt_every, save_top_k=-1))
    return L.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1, callbacks=cbs,
                     logger=TensorBoardLogger(root, name="tb", version=0) if logger else False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     enable_checkpointing=bool(ckpt_every), accumulate_grad_batches=accumulate)


def test_lightning_records_per_optimizer_step_and_logs_to_tensorboard(tmp_path):
    from trajlib.integrations.lightning import TrajectoryCallback

    L, Regressor, loader = _lightning_parts()
    cb = TrajectoryCallback(every=3, at_saves=True, image_every=2)
    module = Regressor()
    trainer = _lightning_trainer(L, tmp_path, [cb], max_steps=10, ckpt_every=5, accumulate=2)
    trainer.fit(module, loader())
    traj = trajlib.open_trajectory(tmp_path / "trajectory")
    assert list(traj.steps) == [0, 3, 5, 6, 9, 10]  # optimizer steps (2 batches each), + saves at 5, 10
    final = dict(module.named_parameters())
    np.testing.assert_array_equal(traj.tensor(traj.T - 1, "net.0.weight"), final["net.0.weight"].detach().numpy())
    acc = _events(tmp_path / "tb" / "version_0")
    mds = acc.Scalars("trajectory/mds")
    assert [e.step for e in mds] == [3, 5, 6, 9, 10]
    assert mds[-1].value == pytest.approx(H.mds(_gram(tmp_path / "trajectory")), abs=1e-6)
    assert [e.step for e in acc.Images("trajectory/map")] == [5, 9]


def test_lightning_resume_from_ckpt_path_appends(tmp_path):
    from trajlib.integrations.lightning import TrajectoryCallback

    L, Regressor, loader = _lightning_parts()

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 7:
                raise RuntimeError("simulated failure at step 7")

    with pytest.raises(RuntimeError, match="simulated failure"):
        _lightning_trainer(L, tmp_path, [TrajectoryCallback(every=2, live=None), Crash()], max_steps=10,
                           ckpt_every=4, logger=False).fit(Regressor(), loader())
    assert list(trajlib.open_trajectory(tmp_path / "trajectory").steps) == [0, 2, 4, 6]
    module = Regressor()
    trainer = _lightning_trainer(L, tmp_path, [TrajectoryCallback(every=2, live=None)], max_steps=10,
                                 logger=False)
    with pytest.warns(UserWarning, match=r"resuming at step 4: dropped 1 checkpoint"):
        trainer.fit(module, loader(), ckpt_path=str(tmp_path / "ckpts" / "epoch=0-step=4.ckpt"))
    traj = trajlib.open_trajectory(tmp_path / "trajectory")
    assert list(traj.steps) == [0, 2, 4, 6, 8, 10]
    np.testing.assert_array_equal(traj.tensor(5, "net.2.weight"), module.net[2].weight.detach().numpy())
