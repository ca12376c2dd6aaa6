"""Sharded runs: each rank records the parameter shards it holds; one manifest describes the whole.

Under FSDP (or any model whose parameters are split across ranks) no process holds θ_t whole,
and gathering it onto one host to save it is what a 12B run cannot afford. A sharded run is::

    run/manifest.json      format "trajlib-sharded-run": global tensors (names, shapes, dtypes),
                           world size, and the pieces: (rank, tensor, start, stop), flat element
                           ranges of each global tensor, which partition every tensor exactly
    run/rank-00000/        an ordinary trajlib run (Recorder: durability, lock, resume) of the
    run/rank-00001/ ...    rank's pieces, each stored as a 1-D tensor under the global name

:class:`ShardedRecorder` writes it (one collective at construction to agree on the layout, none
per step: uneven step counts cannot deadlock). :func:`open_sharded_run` (reached through
``open_trajectory``) presents the whole as one :class:`~trajlib.Trajectory` over the steps every
rank recorded; data files are opened lazily, per rank, on first read. Under ``torchrun`` with
the same world size, :func:`trajlib.gram` lets each rank stream only the pieces it wrote and
all-reduces the (T, T) Grams: the model is never gathered, and each rank reads P/world values
per checkpoint. :func:`fsdp_pieces` gives the pieces of an FSDP2 (``fully_shard``) module.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .formats import CheckpointReader, SafetensorsFile, dtype_code
from .manifest import MANIFEST, TrajectoryError, atomic_write, dumps, read_manifest
from .record import Recorder
from .store import Checkpoint, Trajectory

log = logging.getLogger("trajlib.shards")

FORMAT = "trajlib-sharded-run"
FORMAT_VERSION = 1

# One rank's piece of a global tensor: (local tensor, global shape, flat start of the local
# elements in the flattened global tensor). The local tensor's elements are contiguous there.
Piece = tuple[torch.Tensor, tuple[int, ...], int]


def rank_dir(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"rank-{rank:05d}"


def fsdp_pieces(module: torch.nn.Module) -> dict[str, Piece]:
    """This rank's pieces of an FSDP2 (``fully_shard``) module: DTensor parameters sharded on
    dim 0 over a 1-D mesh give one contiguous flat range each; plain parameters (replicated)
    are owned by rank 0."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard

    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, Piece] = {}
    for name, p in module.named_parameters():
        if isinstance(p, DTensor):
            if p.device_mesh.ndim != 1 or p.placements not in ((Shard(0),),):
                raise ValueError(f"parameter {name!r}: placements {p.placements} on a {p.device_mesh.ndim}-D mesh; "
                                 f"only dim-0 sharding on a 1-D mesh is supported")
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            local = p.to_local()
            _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
            row = math.prod(p.shape[1:])
            out[name] = (local, tuple(p.shape), int(offset[0]) * row if local.numel() else 0)
        elif rank == 0:
            out[name] = (p, tuple(p.shape), 0)
    return out


def _holder(pieces: Mapping[str, Piece]) -> torch.nn.Module:
    """A module whose parameters are flat views (sharing storage) of the local pieces, named by
    their global names, so a plain Recorder snapshots the live shards."""
    root = torch.nn.Module()
    for name, (local, _, _) in pieces.items():
        if not local.is_contiguous():
            raise ValueError(f"piece {name!r}: the local tensor must be contiguous (its flat range is recorded)")
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, torch.nn.Parameter(local.detach().view(-1), requires_grad=False))
    return root


def _check_partition(specs: list[dict], world: int) -> list[dict]:
    """Global tensor specs from every rank's pieces; raise naming the tensor that is not covered
    exactly once, or whose shape or dtype the ranks disagree on."""
    tensors: dict[str, dict] = {}
    ranges: dict[str, list[tuple[int, int, int]]] = {}
    for rank, rank_specs in enumerate(specs):
        for s in rank_specs:
            t = tensors.setdefault(s["name"], {"name": s["name"], "shape": s["shape"], "dtype": s["dtype"],
                                               "kind": "parameter"})
            if (t["shape"], t["dtype"]) != (s["shape"], s["dtype"]):
                raise ValueError(f"tensor {s['name']!r}: rank {rank} has it as {s['dtype']}{s['shape']}, "
                                 f"another rank as {t['dtype']}{t['shape']}")
            ranges.setdefault(s["name"], []).append((s["start"], s["stop"], rank))
    for name, rs in ranges.items():
        edge, numel = 0, math.prod(tensors[name]["shape"])
        for a, b, rank in sorted(rs):
            if a != edge:
                what = "overlap" if a < edge else "leave a gap"
                raise ValueError(f"tensor {name!r}: the pieces {what} at element {min(a, edge)} (rank {rank}); "
                                 f"each element must be held by exactly one rank")
            edge = b
        if edge != numel:
            raise ValueError(f"tensor {name!r}: the pieces cover {edge} of {numel} elements")
    return list(tensors.values())


class ShardedRecorder:
    """Record this rank's ``pieces`` (:data:`Piece` by global name) into ``run_dir``; a
    collective call: every rank of the process group constructs one, with the same arguments.

    ``recorder_kwargs`` (schedule, ``fresh``, ``fsync`` ...) go to each rank's Recorder; use
    ``step``/``save``/``close`` as with :class:`~trajlib.Recorder` (no collectives there)."""

    def __init__(self, pieces: Mapping[str, Piece], run_dir: str | Path, *, meta: dict | None = None,
                 groups: dict[str, list[str]] | None = None, **recorder_kwargs):
        import torch.distributed as dist

        self.run_dir = Path(run_dir)
        dist_on = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
        mine = [{"name": n, "shape": list(shape), "dtype": dtype_code(t.dtype), "start": int(start),
                 "stop": int(start) + t.numel()} for n, (t, shape, start) in pieces.items()]
        specs = [None] * self.world
        if dist_on:
            dist.all_gather_object(specs, mine)
        else:
            specs = [mine]
        tensors = _check_partition(specs, self.world)  # every rank raises alike: no one waits
        layout = {"format": FORMAT, "format_version": FORMAT_VERSION, "world_size": self.world,
                  "tensors": tensors, "groups": groups or {}, "meta": meta or {},
                  "pieces": [[r, s["name"], s["start"], s["stop"]] for r, rs in enumerate(specs) for s in rs]}
        error = None
        if self.rank == 0:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._write_layout(layout, recorder_kwargs.get("fresh", False))
            except (OSError, TrajectoryError) as exc:
                error = exc
        if dist_on:
            flag = [error is not None]
            dist.broadcast_object_list(flag, src=0)
            if flag[0] and error is None:
                raise TrajectoryError(f"{self.run_dir}: rank 0 could not write the sharded run's manifest")
        if error is not None:
            raise error
        rank_meta = {**(meta or {}), "rank": self.rank, "world_size": self.world}
        self.recorder = Recorder(_holder(pieces), rank_dir(self.run_dir, self.rank), meta=rank_meta, **recorder_kwargs)

    def _write_layout(self, layout: dict, fresh: bool) -> None:
        path = self.run_dir / MANIFEST
        if path.is_file() and not fresh:
            old = _read_layout(self.run_dir)
            same = {k: old[k] for k in ("world_size", "tensors", "pieces")} == \
                   {k: layout[k] for k in ("world_size", "tensors", "pieces")}
            if not same:
                raise TrajectoryError(f"{path}: cannot resume: the sharded layout differs (world size "
                                      f"{old['world_size']} → {layout['world_size']}, or the pieces moved); "
                                      f"pass fresh=True to start over")
            return
        atomic_write(path, dumps(layout).encode())

    @property
    def recorded_steps(self) -> list[int]:
        return self.recorder.recorded_steps

    def step(self, step: int, **kwargs) -> bool:
        return self.recorder.step(step, **kwargs)

    def save(self, step: int, **kwargs) -> None:
        self.recorder.save(step, **kwargs)

    def flush(self) -> None:
        self.recorder.flush()

    def close(self) -> None:
        self.recorder.close()

    def __enter__(self) -> "ShardedRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_layout(run_dir: Path) -> dict:
    import json

    path = Path(run_dir) / MANIFEST
    try:
        layout = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrajectoryError(f"{path}: unreadable sharded-run manifest ({exc})") from exc
    if not isinstance(layout, dict) or layout.get("format") != FORMAT:
        raise TrajectoryError(f"{path}: not a sharded trajlib run (format={layout.get('format')!r})")
    if layout.get("format_version", 0) > FORMAT_VERSION:
        raise TrajectoryError(f"{path}: sharded format {layout['format_version']} is newer than this trajlib reads")
    for key in ("world_size", "tensors", "pieces", "groups", "meta"):
        if key not in layout:
            raise TrajectoryError(f"{path}: the {key!r} entry is missing")
    return layout


def is_sharded_run(path: str | Path) -> bool:
    """Whether ``path`` holds a sharded run's manifest."""
    import json

    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class ShardedCheckpointReader(CheckpointReader):
    """One step of a sharded run: global tensors read piece by piece from the ranks' files,
    each rank's file opened (and its header checked) on the first read that needs it."""

    def __init__(self, files: list[Path], layout: dict, step: int):
        self.files, self.step = files, step
        self.path = files[0]
        self.names = [t["name"] for t in layout["tensors"]]
        self.shapes = {t["name"]: tuple(t["shape"]) for t in layout["tensors"]}
        self.dtypes = {t["name"]: t["dtype"] for t in layout["tensors"]}
        self.pieces: dict[str, list[tuple[int, int, int]]] = {}
        for r, name, a, b in layout["pieces"]:
            self.pieces.setdefault(name, []).append((a, b, r))
        for v in self.pieces.values():
            v.sort()
        self._open: dict[int, SafetensorsFile] = {}

    def _file(self, rank: int) -> SafetensorsFile:
        if rank not in self._open:
            f = SafetensorsFile(self.files[rank])
            for name, ps in self.pieces.items():
                for a, b, r in ps:
                    if r == rank and (f.shapes.get(name), f.dtypes.get(name)) != ((b - a,), self.dtypes[name]):
                        raise TrajectoryError(f"{f.path}: tensor {name!r} should be {self.dtypes[name]}[{b - a}] "
                                              f"(elements {a}..{b} of the global tensor), the file has "
                                              f"{f.dtypes.get(name)}{list(f.shapes.get(name) or [])}")
            self._open[rank] = f
        return self._open[rank]

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        for a, b, r in self.pieces[name]:
            lo, hi = max(start, a), min(stop, b)
            if lo < hi:
                self._file(r).read(name, lo - a, hi - a, out[lo - start: hi - start])

    def file_of(self, name: str) -> Path:
        return self.files[self.pieces[name][0][2]]

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


class ShardedTrajectory(Trajectory):
    """A Trajectory of a sharded run; ``world_size`` and :meth:`owned_segments` let the Gram
    engine under torch.distributed read on each rank only the pieces that rank wrote."""

    world_size: int = 1
    _pieces: list = []

    def owned_segments(self, rank: int) -> dict[str, list[tuple[int, int]]]:
        """Flat element ranges per tensor that ``rank`` wrote."""
        out: dict[str, list[tuple[int, int]]] = {}
        for r, name, a, b in self._pieces:
            if r == rank:
                out.setdefault(name, []).append((a, b))
        return out


def open_sharded_run(run_dir: str | Path) -> ShardedTrajectory:
    """Open a sharded run as one trajectory over the steps every rank recorded (a step some
    rank lacks, e.g. from a rank that died first, is left out with a warning)."""
    run_dir = Path(run_dir)
    layout = _read_layout(run_dir)
    world = layout["world_size"]
    per_rank = []
    for r in range(world):
        manifest = read_manifest(rank_dir(run_dir, r))
        per_rank.append({c["step"]: c for c in manifest["checkpoints"]})
    common = sorted(set.intersection(*(set(p) for p in per_rank)))
    partial = sorted(set().union(*(set(p) for p in per_rank)) - set(common))
    if partial:
        warnings.warn(f"{run_dir}: steps {partial[:5]} are missing on some rank and left out", stacklevel=2)
    if not common:
        raise TrajectoryError(f"{run_dir}: no step was recorded by all {world} ranks")
    checkpoints = []
    for step in common:
        files = []
        for r in range(world):
            entry = per_rank[r][step]
            path = rank_dir(run_dir, r) / entry["file"]
            if Path(entry["file"]).name != entry["file"]:
                raise TrajectoryError(f"{rank_dir(run_dir, r) / MANIFEST}: file {entry['file']!r} of step {step} "
                                      f"is not inside the rank's directory")
            files.append(path)
        epoch = per_rank[0][step].get("epoch")
        checkpoints.append(Checkpoint(ShardedCheckpointReader(files, layout, step), step,
                                      np.nan if epoch is None else float(epoch)))
    traj = ShardedTrajectory(checkpoints, names=[t["name"] for t in layout["tensors"]],
                             kinds={t["name"]: t["kind"] for t in layout["tensors"]}, groups=layout["groups"],
                             meta=layout["meta"], source=str(run_dir))
    traj.world_size, traj._pieces = world, layout["pieces"]
    return traj
