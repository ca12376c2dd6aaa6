"""Where trajectories come from: :func:`open_trajectory` and one opener per kind of source.

* a trajlib run directory (``manifest.json`` + ``ckpt-*.safetensors``, written by ``Recorder``);
* a directory of Hugging Face checkpoints, one subdirectory per step, each holding
  ``model.safetensors``, a sharded safetensors index, or ``pytorch_model.bin`` (weights only);
* a sharded run (``trajlib.shards``: one manifest, one run directory per rank);
* a Hugging Face hub repository and its revisions (``"EleutherAI/pythia-70m"``,
  ``revisions=["step0", "step1000"]``), fetched through ``huggingface_hub`` (an optional
  dependency, imported only here) into its cache.

Steps are integers from the manifest, from ``steps=``, or from the trailing integer of a
subdirectory or revision name; files named by a manifest must lie inside the run directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .formats import HF_FILES, SafetensorsFile, open_checkpoint_dir, sha256_file
from .manifest import MANIFEST, TrajectoryError, read_manifest
from .store import Checkpoint, Trajectory

# Float tensors in public checkpoints that are not trained parameters (GPT-NeoX rotary
# frequencies and attention mask constants): kept out of the default "all" group.
HF_BUFFER_PATTERN = re.compile(r"(inv_freq|masked_bias|attention\.bias)$")


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
    match = re.search(r"(\d+)$", label)
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
    names = readers[0].names
    kinds = {n: "buffer" if HF_BUFFER_PATTERN.search(n) else "parameter" for n in names}
    meta = {}
    config = Path(dirs[0]) / "config.json"
    if config.is_file():
        meta["config"] = json.loads(config.read_text())
    checkpoints = [Checkpoint(r, int(s), label=lab) for r, s, lab in zip(readers, steps, labels)]
    return Trajectory(checkpoints, kinds=kinds, meta=meta, source=source)


def open_hf_dir(directory: str | Path, *, steps=None) -> Trajectory:
    """Open a directory holding one Hugging Face checkpoint subdirectory per step.

    Steps come from ``steps`` (a list in sorted-subdirectory order, or a dict by subdirectory
    name); otherwise from the trailing integer of each name (``step1000``, ``checkpoint-500``).
    """
    directory = Path(directory)
    subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and any((p / f).exists() for f in HF_FILES))
    if not subdirs:
        raise FileNotFoundError(f"{directory}: no checkpoint subdirectories (each needs one of {', '.join(HF_FILES)})")
    return _hf_trajectory(subdirs, [p.name for p in subdirs], steps, str(directory))


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
                    drop_duplicates: bool = False, verify: bool = False, **hub_kwargs) -> Trajectory:
    """Open a trajectory from a run directory, a Hugging Face checkpoint directory, or the hub.

    ``drop_duplicates``: keep one of each set of byte-identical checkpoints (logged).
    ``verify``: re-hash a run's files against its manifest.
    """
    path = Path(source)
    from .shards import is_sharded_run, open_sharded_run

    if is_sharded_run(path):  # one manifest over per-rank runs (trajlib.shards)
        traj = open_sharded_run(path)
    elif (path / MANIFEST).is_file():
        traj = open_run(path, verify=verify)
    elif path.is_dir():
        traj = open_hf_dir(path, steps=steps)
    elif revisions is not None and re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        traj = open_hub(str(source), revisions, steps=steps, **hub_kwargs)
    else:
        raise FileNotFoundError(f"{source}: no such run directory or checkpoint folder "
                                f"(for a hub repository, pass revisions=)")
    if drop_duplicates:
        traj, _ = traj.drop_duplicates()
    return traj
