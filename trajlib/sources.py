"""Where trajectories come from: :func:`open_trajectory` and one opener per kind of source.

* a trajlib run directory (``manifest.json`` + ``ckpt-*.safetensors``, written by ``Recorder``);
* a directory of Hugging Face checkpoints, one subdirectory per step, each holding
  ``model.safetensors``, a sharded safetensors index, or ``pytorch_model.bin`` (weights only);
* a sharded run (``trajlib.shards``: one manifest, one run directory per rank);
* a ``transformers.Trainer`` output folder (``checkpoint-N/`` subfolders; steps and epochs from
  each ``trainer_state.json``);
* a folder of ``torch.distributed.checkpoint`` saves, one subdirectory per step (``trajlib.dcp``);
* ``torch.save`` files, a folder or a glob of them: a loop's ``ckpt_{step}.pt``, nanoGPT's
  ``ckpt.pt`` (weights under ``model``), Lightning ``.ckpt`` files (under ``state_dict``);
  steps from a field (``global_step``, ``iter_num``) or the file name; loaded weights-only;
* a Hugging Face hub repository and its revisions (``"EleutherAI/pythia-70m"``,
  ``revisions=["step0", "step1000"]``), fetched through ``huggingface_hub`` (an optional
  dependency, imported only here) into its cache.

Steps are integers from the manifest, from ``steps=``, from a field the checkpoint records, or
from the trailing integer of a subdirectory, file or revision name; files named by a manifest
must lie inside the run directory. A folder that mixes two of these kinds is refused, naming a
file of each.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .formats import HF_FILES, TORCH_SUFFIXES, SafetensorsFile, TorchSaveFile, open_checkpoint_dir, sha256_file
from .manifest import MANIFEST, TrajectoryError, read_manifest
from .state_dicts import kinds_of, step_field
from .store import Checkpoint, Trajectory

log = logging.getLogger("trajlib.sources")

# Files a trainer writes beside its checkpoints that hold no weights (optimizer and scheduler
# state, RNG state, pickled arguments): never part of a trajectory.
TRAINER_SIDECARS = re.compile(r"^(training_args\.bin|optimizer\.(pt|bin)|scheduler\.(pt|bin)|scaler\.(pt|bin)"
                              r"|rng_state.*\.pth|random_states_\d+\.pkl)$")
# A final save_model() beside checkpoint subfolders: one file, or shards and their index.
LOOSE_MODEL = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)$|.*\.index\.json$")


def open_run(run_dir: str | Path, *, verify: bool = False) -> Trajectory:
    """Open a run written by ``Recorder``; ``verify`` re-hashes every file against the manifest."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    entries = manifest["checkpoints"]
    if not entries:
        raise TrajectoryError(f"{run_dir / MANIFEST}: the run holds no checkpoints yet")
    v1 = manifest.get("format_version", 1) < 2  # v1's content_sha256 hashed the whole file
    root = run_dir.resolve()
    checkpoints = []
    for entry in entries:
        path = run_dir / entry["file"]
        if path.resolve().parent != root:
            raise TrajectoryError(f"{run_dir / MANIFEST}: checkpoint of step {entry['step']} names "
                                  f"{entry['file']!r}, which resolves outside the run directory")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint of step {entry['step']} is listed in the manifest but missing")
        if path.stat().st_size != entry["bytes"]:
            raise TrajectoryError(f"{path}: {path.stat().st_size} bytes, the manifest records "
                                  f"{entry['bytes']} (truncated or replaced)")
        reader = SafetensorsFile(path)
        file_sha = entry.get("sha256")
        content = None if v1 else entry.get("content_sha256")
        if verify:
            for expect, got in ((file_sha, sha256_file), (content, lambda _: reader.content_sha256())):
                if expect is not None and got(path) != expect:
                    raise TrajectoryError(f"{path}: sha256 differs from the manifest (corrupt file)")
        epoch = entry.get("epoch")
        checkpoints.append(Checkpoint(reader, entry["step"], np.nan if epoch is None else float(epoch),
                                      content_sha256=content, file_sha256=file_sha))
    expected = {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in manifest["tensors"]}
    for c in checkpoints:
        reader = c.reader
        for name, (shape, code) in expected.items():
            if name not in reader.shapes:
                raise TrajectoryError(f"{reader.path}: lacks tensor {name!r} listed in the manifest")
            if (reader.shapes[name], reader.dtypes[name]) != (shape, code):
                raise TrajectoryError(f"{reader.path}: tensor {name!r} is {reader.dtypes[name]}"
                                      f"{list(reader.shapes[name])}, the manifest says {code}{list(shape)}")
    return Trajectory(checkpoints, names=list(expected), kinds={t["name"]: t["kind"] for t in manifest["tensors"]},
                      groups=manifest["groups"], meta=manifest["meta"], source=str(run_dir))


def _step_of(label: str) -> int:
    match = re.search(r"(\d+)(\.[A-Za-z]+)?$", label)
    if match is None:
        raise TrajectoryError(f"cannot tell the step of checkpoint {label!r}; pass steps=")
    return int(match.group(1))


def _hf_trajectory(dirs: Sequence[Path], labels: Sequence[str], steps, source: str) -> Trajectory:
    readers = [open_checkpoint_dir(d) for d in dirs]
    if steps is None:
        steps = [_step_of(lab) for lab in labels]
    elif isinstance(steps, dict):
        steps = [steps[lab] for lab in labels]
    if len(steps) != len(readers):
        raise TrajectoryError(f"{source}: {len(steps)} steps given for {len(readers)} checkpoints")
    kinds = kinds_of(readers[0].names)
    meta = {}
    config = Path(dirs[0]) / "config.json"
    if config.is_file():
        meta["config"] = json.loads(config.read_text())
    checkpoints = [Checkpoint(r, int(s), epoch, label=lab)
                   for r, s, lab, epoch in zip(readers, steps, labels, _trainer_epochs(dirs))]
    return Trajectory(checkpoints, kinds=kinds, meta=meta, source=source)


def _trainer_state(directory: Path) -> dict | None:
    path = Path(directory) / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrajectoryError(f"{path}: unreadable trainer state ({exc})") from exc


def _trainer_epochs(dirs) -> list[float]:
    states = [_trainer_state(d) for d in dirs]
    return [float(s["epoch"]) if s and isinstance(s.get("epoch"), (int, float)) else float("nan") for s in states]


def open_hf_dir(directory: str | Path, *, steps=None) -> Trajectory:
    """Open a directory holding one Hugging Face checkpoint subdirectory per step.

    Steps come from ``steps`` (a list in sorted-subdirectory order, or a dict by subdirectory
    name); otherwise from ``global_step`` in a subdirectory's ``trainer_state.json`` (a
    ``transformers.Trainer`` output folder), else from the trailing integer of its name
    (``step1000``, ``checkpoint-500``).
    """
    directory = Path(directory)
    subdirs = sorted(p for p in directory.iterdir() if _is_hf_dir(p))
    if not subdirs:
        raise FileNotFoundError(f"{directory}: no checkpoint subdirectories (each needs one of {', '.join(HF_FILES)})")
    if steps is None:
        states = [_trainer_state(d) for d in subdirs]
        if all(s and type(s.get("global_step")) is int for s in states):
            steps = [s["global_step"] for s in states]
    return _hf_trajectory(subdirs, [p.name for p in subdirs], steps, str(directory))


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in HF_FILES)


def _steps_for(labels, steps, found, source) -> list[int]:
    """Steps given (a list in order, or a dict by label), else those ``found`` (None where a
    checkpoint records none), else each label's trailing integer."""
    if steps is None:
        return [f if f is not None else _step_of(lab) for lab, f in zip(labels, found)]
    steps = [steps[lab] for lab in labels] if isinstance(steps, dict) else list(steps)
    if len(steps) != len(labels):
        raise TrajectoryError(f"{source}: {len(steps)} steps given for {len(labels)} checkpoints")
    return [int(s) for s in steps]


def _one_per_step(checkpoints: list[Checkpoint], source: str) -> list[Checkpoint]:
    """Checkpoints with distinct steps: a second file at one step is dropped when its weights are
    identical (Lightning's ``last.ckpt`` beside ``step=N.ckpt``) and an error otherwise."""
    by_step: dict[int, Checkpoint] = {}
    for c in checkpoints:
        first = by_step.get(c.step)
        if first is None:
            by_step[c.step] = c
        elif first.content_hash() == c.content_hash():
            log.info("%s: %s repeats %s (step %d, identical weights); reading it once",
                     source, c.reader.path.name, first.reader.path.name, c.step)
        else:
            raise TrajectoryError(f"{source}: {first.reader.path} and {c.reader.path} are both at step {c.step} "
                                  f"with different weights; pass steps= or remove one")
    return list(by_step.values())


def open_torch_files(paths: Sequence[str | Path], *, steps=None, prefix: str | None = None,
                     source: str = "") -> Trajectory:
    """Open ``torch.save`` (or ``.safetensors``) files, one checkpoint each, as a trajectory.

    Steps: ``steps`` (a list in sorted-path order, or a dict by file name), else the file's
    ``global_step`` / ``iter_num`` / ``step`` field, else the trailing integer of its name
    (``ckpt_1000.pt``, ``epoch=0-step=500.ckpt``). Epochs from an ``epoch`` field. ``prefix``
    keeps only tensors under it, stripped (a LightningModule's ``model.``).
    """
    paths = sorted(Path(p) for p in paths)
    source = source or (str(paths[0].parent) if paths else "")
    if not paths:
        raise FileNotFoundError(f"{source or 'open_torch_files'}: no checkpoint files given")
    readers = [SafetensorsFile(p) if p.suffix == ".safetensors" else TorchSaveFile(p, prefix=prefix) for p in paths]
    fields = [getattr(r, "fields", {}) for r in readers]
    labels = [p.name for p in paths]
    found = [step_field(f) for f in fields]
    step_list = _steps_for(labels, steps, found, source)
    epochs = [float(f["epoch"]) if "epoch" in f else float("nan") for f in fields]
    checkpoints = _one_per_step([Checkpoint(r, s, e, label=lab)
                                 for r, s, e, lab in zip(readers, step_list, epochs, labels)], source)
    aliases = {a: k for r in readers for a, k in getattr(r, "aliases", {}).items()}
    meta = {"tied": aliases} if aliases else {}
    return Trajectory(checkpoints, kinds=kinds_of(readers[0].names), meta=meta, source=source)


def open_dcp_dir(directory: str | Path, *, steps=None, prefix: str | None = None) -> Trajectory:
    """Open a folder of ``torch.distributed.checkpoint`` saves, one subdirectory per step
    (torchtitan's ``step-N``): steps from ``steps`` or each name's trailing integer.

    Tensors that hold the same bytes under two names in the first, a middle and the last
    checkpoint are a tied weight (DCP writes each name; it keeps no record of sharing) and are
    read once, under the first name; with fewer than three checkpoints none are merged."""
    from .dcp import DCPCheckpoint, is_dcp_dir

    directory = Path(directory)
    subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and is_dcp_dir(p))
    if not subdirs:
        raise FileNotFoundError(f"{directory}: no torch.distributed.checkpoint subdirectories (none holds .metadata)")
    readers = [DCPCheckpoint(d, prefix=prefix) for d in subdirs]
    labels = [d.name for d in subdirs]
    step_list = _steps_for(labels, steps, [None] * len(labels), str(directory))
    checkpoints = [Checkpoint(r, s, label=lab) for r, s, lab in zip(readers, step_list, labels)]
    order = sorted(range(len(checkpoints)), key=lambda i: checkpoints[i].step)
    aliases = equal_tensors([readers[order[0]], readers[order[len(order) // 2]], readers[order[-1]]]
                            if len(order) >= 3 else [])
    for r in readers:
        r.names = [n for n in r.names if n not in aliases]
    meta = {"tied": aliases} if aliases else {}
    return Trajectory(checkpoints, kinds=kinds_of(readers[0].names), meta=meta, source=str(directory))


def equal_tensors(readers) -> dict[str, str]:
    """{alias: kept name} for tensors of equal shape and dtype whose bytes are equal in each of
    ``readers`` (the first, a middle and the last checkpoint of one run): tied weights saved under
    two names. Tensors are hashed one at a time (memory: one tensor); fewer than three
    checkpoints say nothing (equal initialisations such as LayerNorm gains would look tied)."""
    import hashlib

    if len(readers) < 3:
        return {}
    first = readers[0]
    by_kind: dict[tuple, list[str]] = {}
    for n in first.names:
        by_kind.setdefault((first.shapes[n], first.dtypes[n]), []).append(n)
    aliases: dict[str, str] = {}
    for names in by_kind.values():
        if len(names) < 2:
            continue
        kept: list[tuple[str, tuple]] = []
        for n in names:
            digest = tuple(hashlib.sha256(r.tensor(n).tobytes()).hexdigest() for r in readers)
            match = next((k for k, d in kept if d == digest), None)
            if match is None:
                kept.append((n, digest))
            else:
                aliases[n] = match
    return aliases


def open_folder(directory: str | Path, *, steps=None, prefix: str | None = None) -> Trajectory:
    """Open a folder of checkpoints of one kind: Hugging Face / Trainer subfolders, DCP
    subfolders, or ``torch.save`` / safetensors files. Trainer sidecars (``optimizer.pt``,
    ``training_args.bin``, ...) are ignored; a folder holding two kinds is refused."""
    from .dcp import is_dcp_dir

    directory = Path(directory)
    entries = sorted(directory.iterdir())
    hf = [p for p in entries if _is_hf_dir(p)]
    dcp = [p for p in entries if p.is_dir() and is_dcp_dir(p)]
    files = [p for p in entries if p.is_file() and (p.suffix in TORCH_SUFFIXES or p.suffix == ".safetensors")
             and not TRAINER_SIDECARS.match(p.name)]
    if hf or dcp:
        loose = [p for p in files if LOOSE_MODEL.match(p.name)]  # a Trainer's final save_model() beside its checkpoints
        for p in loose:
            log.info("%s: %s lies beside the checkpoint subfolders; not part of the trajectory", directory, p.name)
        files = [p for p in files if p not in loose]
    kinds = {"Hugging Face / Trainer checkpoint folders": hf, "torch.distributed.checkpoint folders": dcp,
             "checkpoint files": files}
    present = {k: v for k, v in kinds.items() if v}
    if len(present) > 1:
        raise TrajectoryError(f"{directory}: mixes checkpoint formats: "
                              + "; ".join(f"{k} ({v[0].name}{', ...' if len(v) > 1 else ''})" for k, v in present.items())
                              + ". Point at one kind (a glob selects files)")
    if hf:
        return open_hf_dir(directory, steps=steps)
    if dcp:
        return open_dcp_dir(directory, steps=steps, prefix=prefix)
    if files:
        return open_torch_files(files, steps=steps, prefix=prefix, source=str(directory))
    raise FileNotFoundError(f"{directory}: no checkpoints (looked for a trajlib manifest, checkpoint-N/ or step "
                            f"subfolders holding {', '.join(HF_FILES)} or .metadata, and "
                            f"{', '.join(TORCH_SUFFIXES)} / .safetensors files)")


def open_hub(repo_id: str, revisions: Sequence[str], *, steps=None, cache_dir: str | Path | None = None,
             local_files_only: bool | None = None) -> Trajectory:
    """Open checkpoints of a hub repository at the given revisions (e.g. Pythia's ``step1000``).

    Each revision's weights are fetched once into the ``huggingface_hub`` cache (safetensors
    when the revision has them, else ``pytorch_model.bin``, loaded weights-only), then read in
    place. With ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` only the cache is used.
    """
    import warnings

    try:
        with warnings.catch_warnings():  # tqdm.auto warns in notebooks without ipywidgets
            warnings.filterwarnings("ignore", message="IProgress not found")
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:
        raise ImportError("opening hub revisions needs huggingface_hub: pip install 'trajlib[hub]'") from None

    kwargs = dict(repo_id=repo_id, cache_dir=cache_dir)
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    dirs = []
    for rev in revisions:
        path = None
        for fname in ("model.safetensors", "pytorch_model.bin"):
            try:
                path = Path(hf_hub_download(filename=fname, revision=rev, **kwargs))
                break
            except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
                last = exc
        if path is None:
            raise FileNotFoundError(f"{repo_id}@{rev}: no model.safetensors or pytorch_model.bin ({last})")
        try:
            hf_hub_download(filename="config.json", revision=rev, **kwargs)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            pass
        dirs.append(path.parent)
    return _hf_trajectory(dirs, list(revisions), steps, f"{repo_id}")


def open_trajectory(source: str | Path, *, revisions: Sequence[str] | None = None, steps=None,
                    prefix: str | None = None, drop_duplicates: bool = False, verify: bool | None = None,
                    **hub_kwargs) -> Trajectory:
    """Open a trajectory from a run directory, a folder or glob of checkpoints, or the hub.

    ``source``: a trajlib run, a Trainer / Hugging Face folder, a folder of DCP saves, a folder,
    glob (``"out/ckpt_*.pt"``) or single ``torch.save`` file, a hub repository with
    ``revisions`` (downloaded to the cache), or ``"hub:owner/name"``: audited first and streamed by
    range reads (:func:`trajlib.hub.open_hub_suite`; ``steps`` selects branches). ``steps``: override the steps (a list in sorted order, or a dict by name).
    ``prefix``: keep only tensors under it, stripped (``"model."`` of a LightningModule).
    ``drop_duplicates``: keep one of each set of byte-identical checkpoints (logged).
    ``verify``: re-hash a run's files against its manifest (default off); for ``"hub:"``, hash
    each file against the hub's LFS sha256 before use (default on; ``False`` skips it).
    """
    if isinstance(source, str) and source.startswith("hub:"):  # audited, streamed by range reads
        from .hub import open_hub_suite

        traj = open_hub_suite(source[4:], steps=steps, verify=verify is not False, **hub_kwargs)
        return traj.drop_duplicates()[0] if drop_duplicates else traj
    path = Path(source)
    from .shards import is_sharded_run, open_sharded_run

    if is_sharded_run(path):  # one manifest over per-rank runs (trajlib.shards)
        traj = open_sharded_run(path)
    elif (path / MANIFEST).is_file():
        traj = open_run(path, verify=bool(verify))
    elif path.is_dir():
        traj = open_folder(path, steps=steps, prefix=prefix)
    elif path.is_file():
        traj = open_torch_files([path], steps=steps, prefix=prefix, source=str(path))
    elif glob.has_magic(str(source)):
        matches = sorted(Path(p) for p in glob.glob(str(source)) if Path(p).is_file())
        if not matches:
            raise FileNotFoundError(f"{source}: the pattern matches no file")
        traj = open_torch_files(matches, steps=steps, prefix=prefix, source=str(source))
    elif revisions is not None and re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        traj = open_hub(str(source), revisions, steps=steps, **hub_kwargs)
    else:
        raise FileNotFoundError(f"{source}: no such run directory or checkpoint folder "
                                f"(for a hub repository, pass revisions=)")
    if drop_duplicates:
        traj, _ = traj.drop_duplicates()
    return traj
