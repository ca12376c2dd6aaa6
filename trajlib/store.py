"""Trajectories on disk: T checkpoints of one model, opened from any source through one call.

:func:`open_trajectory` accepts

* a trajlib run directory (``manifest.json`` + ``ckpt-*.safetensors``, written by ``Recorder``);
* a directory of Hugging Face checkpoints, one subdirectory per step, each holding
  ``model.safetensors``, a sharded safetensors index, or ``pytorch_model.bin``;
* a Hugging Face hub repository and its revisions (``"EleutherAI/pythia-70m"``,
  ``revisions=["step0", "step1000"]``), fetched through ``huggingface_hub`` into its cache.

All give a :class:`Trajectory`: ordered tensor names, shapes and dtypes checked equal across
checkpoints (errors name the file and tensor), integer steps, and ``read`` for block-major
streaming by the Gram engine (``trajlib.gram``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .checkpoint_file import (
    FLOAT_CODES, HF_FILES, ST_DTYPES, CheckpointReader, SafetensorsFile, open_checkpoint_dir, sha256_file,
)
from .manifest import MANIFEST, TrajectoryError, read_manifest

log = logging.getLogger("trajlib.store")

# Float tensors in public checkpoints that are not trained parameters (GPT-NeoX rotary
# frequencies and attention mask constants): kept out of the default "all" group.
HF_BUFFER_PATTERN = re.compile(r"(inv_freq|masked_bias|attention\.bias)$")


class Trajectory:
    """T checkpoints θ_0..θ_{T-1} of one model, sorted by step.

    ``names``: the float tensors, in flattening order; ``kinds[name]`` is "parameter" or
    "buffer"; ``steps``: int64 (T,); ``epochs``: float64 (T,), NaN where unknown.
    """

    def __init__(self, readers: Sequence[CheckpointReader], *, steps: Sequence[int],
                 epochs: Sequence[float] | None = None, labels: Sequence[str] | None = None,
                 kinds: dict[str, str] | None = None, groups: dict[str, list[str]] | None = None,
                 meta: dict | None = None, hashes: Sequence[str | None] | None = None,
                 file_hashes: Sequence[str | None] | None = None, names: Sequence[str] | None = None,
                 source: str = ""):
        if len(readers) == 0:
            raise TrajectoryError(f"{source}: no checkpoints")
        order = np.argsort(np.asarray(steps, dtype=np.int64), kind="stable")
        self.readers = [readers[i] for i in order]
        self.steps = np.asarray(steps, dtype=np.int64)[order]
        self.epochs = (np.full(len(order), np.nan) if epochs is None
                       else np.asarray(epochs, dtype=np.float64)[order])
        self.labels = [str(s) for s in self.steps] if labels is None else [labels[i] for i in order]
        self.hashes = [None] * len(order) if hashes is None else [hashes[i] for i in order]
        self.file_hashes = ([None] * len(order) if file_hashes is None
                            else [file_hashes[i] for i in order])
        self.source = source
        self.meta = meta or {}
        first = self.readers[0]
        self.names = [n for n in (names or first.names) if first.dtypes[n] in FLOAT_CODES]
        self.shapes = {n: first.shapes[n] for n in self.names}
        self.dtypes = {n: first.dtypes[n] for n in self.names}
        kinds = kinds or {}
        self.kinds = {n: kinds.get(n, "parameter") for n in self.names}
        self.groups = groups or {}
        self._check_consistent()

    # -- shape of the data -------------------------------------------------------------------
    @property
    def T(self) -> int:
        return len(self.readers)

    def numel(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    @property
    def P(self) -> int:
        """Number of recorded parameters (buffers excluded)."""
        return sum(self.numel(n) for n in self.names if self.kinds[n] == "parameter")

    @property
    def nbytes(self) -> int:
        """Bytes of float tensor data over all T checkpoints."""
        return self.T * sum(self.numel(n) * ST_DTYPES[self.dtypes[n]].itemsize for n in self.names)

    def _check_consistent(self) -> None:
        for reader in self.readers[1:]:
            ours = [n for n in reader.names if reader.dtypes[n] in FLOAT_CODES]
            missing = sorted(set(self.names) - set(ours))
            extra = sorted(set(ours) - set(self.names))
            if missing or extra:
                what = f"lacks tensor {missing[0]!r}" if missing else f"has extra tensor {extra[0]!r}"
                raise TrajectoryError(
                    f"{reader.path}: {what} (tensor names differ from {self.readers[0].path})"
                )
            for n in self.names:
                if reader.shapes[n] != self.shapes[n] or reader.dtypes[n] != self.dtypes[n]:
                    raise TrajectoryError(
                        f"{reader.file_of(n)}: tensor {n!r} is {reader.dtypes[n]}{list(reader.shapes[n])}, "
                        f"but {self.dtypes[n]}{list(self.shapes[n])} in {self.readers[0].file_of(n)}"
                    )

    # -- reading -----------------------------------------------------------------------------
    def read(self, t: int, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy flat elements [start, stop) of tensor ``name`` of checkpoint ``t`` into ``out``."""
        self.readers[t].read(name, start, stop, out)

    def tensor(self, t: int, name: str) -> np.ndarray:
        """One tensor of checkpoint ``t`` as float64, in its shape."""
        return _to_float64(self.readers[t].tensor(name), self.dtypes[name])

    def flat(self, t: int, names: Iterable[str] | None = None) -> np.ndarray:
        """Checkpoint ``t`` flattened in manifest order, float64 (P,): for tests and small runs."""
        names = [n for n in self.names if self.kinds[n] == "parameter"] if names is None else names
        return np.concatenate([self.tensor(t, n).ravel() for n in names])

    def file_of(self, t: int, name: str) -> Path:
        return self.readers[t].file_of(name)

    # -- selection and duplicates ------------------------------------------------------------
    def select(self, indices: Sequence[int] | slice) -> "Trajectory":
        """A trajectory over a subset of checkpoints (indices into the step-sorted order)."""
        idx = list(range(self.T))[indices] if isinstance(indices, slice) else [int(i) for i in indices]
        if not idx:
            raise TrajectoryError(f"{self.source}: selection keeps no checkpoint")
        return Trajectory([self.readers[i] for i in idx], steps=self.steps[idx],
                          epochs=self.epochs[idx], labels=[self.labels[i] for i in idx],
                          kinds=self.kinds, groups=self.groups, meta=self.meta,
                          hashes=[self.hashes[i] for i in idx],
                          file_hashes=[self.file_hashes[i] for i in idx], names=self.names,
                          source=self.source)

    def content_hashes(self) -> list[str]:
        """sha256 of each checkpoint's tensor data (from the manifest when recorded there)."""
        for t, reader in enumerate(self.readers):
            if self.hashes[t] is None:
                self.hashes[t] = (reader.data_sha256() if isinstance(reader, SafetensorsFile)
                                  else reader.content_sha256())
        return list(self.hashes)

    def duplicates(self) -> list[list[int]]:
        """Groups (≥ 2) of checkpoint indices whose weights are byte-identical."""
        by_hash = defaultdict(list)
        for t, h in enumerate(self.content_hashes()):
            by_hash[h].append(t)
        return [ts for ts in by_hash.values() if len(ts) > 1]

    def drop_duplicates(self) -> tuple["Trajectory", list[str]]:
        """Keep the first checkpoint of each duplicate set; returns it and the dropped labels."""
        drop = {t for ts in self.duplicates() for t in ts[1:]}
        for ts in self.duplicates():
            log.warning("%s: checkpoints %s hold identical weights; keeping %s",
                        self.source, [self.labels[t] for t in ts], self.labels[ts[0]])
        keep = [t for t in range(self.T) if t not in drop]
        return self.select(keep), [self.labels[t] for t in sorted(drop)]

    # -- validation --------------------------------------------------------------------------
    def find_nonfinite(self, names: Iterable[str] | None = None, block: int = 1 << 22) -> tuple[int, str] | None:
        """(checkpoint index, tensor name) of the first NaN/Inf found, or None. Reads everything."""
        for t in range(self.T):
            for name in names or self.names:
                n = self.numel(name)
                for a in range(0, n, block):
                    buf = np.empty(min(block, n - a), ST_DTYPES[self.dtypes[name]])
                    self.read(t, name, a, a + buf.size, buf)
                    if not np.isfinite(_to_float64(buf, self.dtypes[name])).all():
                        return t, name
        return None

    def validate(self, *, hashes: bool = True, finite: bool = True) -> list[str]:
        """Findings a user should know about (duplicates, NaN/Inf, hash mismatches); [] if clean."""
        findings = []
        if hashes:
            for t, expect in enumerate(self.file_hashes):
                if expect is not None:
                    got = sha256_file(self.readers[t].path)
                    if got != expect:
                        findings.append(f"{self.readers[t].path}: sha256 {got[:12]}… differs from the "
                                        f"manifest's {expect[:12]}… (file changed or corrupt)")
            for ts in self.duplicates():
                findings.append("duplicate checkpoints (identical weights): "
                                + ", ".join(f"step {self.steps[t]}" for t in ts))
        if finite:
            bad = self.find_nonfinite()
            if bad is not None:
                t, name = bad
                findings.append(f"{self.file_of(t, name)}: tensor {name!r} holds NaN or Inf")
        return findings

    def fingerprint(self) -> str:
        """A digest of what a Gram depends on: files, sizes, modification times, steps, tensors."""
        h = hashlib.sha256()
        for t, reader in enumerate(self.readers):
            st = Path(reader.path).stat()
            h.update(f"{reader.path}|{st.st_size}|{st.st_mtime_ns}|{self.steps[t]}|{self.hashes[t]}".encode())
        for n in self.names:
            h.update(f"{n}|{self.shapes[n]}|{self.dtypes[n]}|{self.kinds[n]}".encode())
        return h.hexdigest()

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

    def __repr__(self) -> str:
        return (f"Trajectory({self.source!r}, T={self.T}, P={self.P:,}, tensors={len(self.names)}, "
                f"steps={self.steps[0]}..{self.steps[-1]})")


def _to_float64(arr: np.ndarray, code: str) -> np.ndarray:
    if code == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return arr.astype(np.float64)


# -- sources ---------------------------------------------------------------------------------
def open_run(run_dir: str | Path, *, verify: bool = False) -> Trajectory:
    """Open a run written by ``Recorder``; ``verify`` re-hashes every file against the manifest."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    entries = manifest["checkpoints"]
    if not entries:
        raise TrajectoryError(f"{run_dir / MANIFEST}: the run holds no checkpoints yet")
    readers = []
    for entry in entries:
        path = run_dir / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint of step {entry['step']} is listed in "
                                    f"the manifest but missing")
        if path.stat().st_size != entry["bytes"]:
            raise TrajectoryError(f"{path}: {path.stat().st_size} bytes, the manifest records "
                                  f"{entry['bytes']} (truncated or replaced)")
        if verify and sha256_file(path) != entry["sha256"]:
            raise TrajectoryError(f"{path}: sha256 differs from the manifest (corrupt file)")
        readers.append(SafetensorsFile(path))
    expected = {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in manifest["tensors"]}
    for reader in readers:
        for name, (shape, code) in expected.items():
            if name not in reader.shapes:
                raise TrajectoryError(f"{reader.path}: lacks tensor {name!r} listed in the manifest")
            if (reader.shapes[name], reader.dtypes[name]) != (shape, code):
                raise TrajectoryError(f"{reader.path}: tensor {name!r} is {reader.dtypes[name]}"
                                      f"{list(reader.shapes[name])}, the manifest says {code}{list(shape)}")
    return Trajectory(
        readers, steps=[e["step"] for e in entries],
        epochs=[np.nan if e.get("epoch") is None else e["epoch"] for e in entries],
        kinds={t["name"]: t["kind"] for t in manifest["tensors"]}, groups=manifest["groups"],
        meta=manifest["meta"], hashes=[e.get("content_sha256") for e in entries],
        file_hashes=[e["sha256"] for e in entries], names=list(expected), source=str(run_dir),
    )


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
        import json

        meta["config"] = json.loads(config.read_text())
    return Trajectory(readers, steps=steps, labels=list(labels), kinds=kinds, meta=meta, source=source)


def open_hf_dir(directory: str | Path, *, steps=None) -> Trajectory:
    """Open a directory holding one Hugging Face checkpoint subdirectory per step.

    Steps come from ``steps`` (a list in sorted-subdirectory order, or a dict by subdirectory
    name); otherwise from the trailing integer of each name (``step1000``, ``checkpoint-500``).
    """
    directory = Path(directory)
    subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and any((p / f).exists() for f in HF_FILES))
    if not subdirs:
        raise FileNotFoundError(f"{directory}: no checkpoint subdirectories (each needs one of "
                                f"{', '.join(HF_FILES)})")
    return _hf_trajectory(subdirs, [p.name for p in subdirs], steps, str(directory))


def open_hub(repo_id: str, revisions: Sequence[str], *, steps=None, cache_dir: str | Path | None = None,
             local_files_only: bool | None = None) -> Trajectory:
    """Open checkpoints of a hub repository at the given revisions (e.g. Pythia's ``step1000``).

    Each revision's weights are fetched once into the ``huggingface_hub`` cache (safetensors
    when the revision has them, else ``pytorch_model.bin``, loaded weights-only), then read in
    place. With ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` only the cache is used.
    """
    import warnings

    with warnings.catch_warnings():  # tqdm.auto warns in notebooks without ipywidgets
        warnings.filterwarnings("ignore", message="IProgress not found")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

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
            raise FileNotFoundError(f"{repo_id}@{rev}: no model.safetensors or pytorch_model.bin "
                                    f"({last})")
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
    if (path / MANIFEST).is_file():
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
