"""A hub repository's checkpoints as one trajectory: audited first, then streamed by range reads.

:func:`open_hub_suite` audits the repository from its file metadata (:mod:`trajlib.audit`),
keeps the usable branches (identical ones dropped and named, defective ones named), and opens
each branch's safetensors weights in place on the server (:mod:`trajlib.remote`): a Gram pass
reads the headers and then exactly the byte ranges of its blocks. Branches that ship only
``pytorch_model.bin`` cannot be range-read and go through the local cache
(:func:`trajlib.sources.open_hub`). Steps are the suite's (from the branch names), tokens where
the suite states them; coverage is the fraction of the schedule that was usable.
"""

from __future__ import annotations

import json
import logging

from .audit import Audit, audit as run_audit, hf_api
from .manifest import TrajectoryError
from .remote import RangeClient, remote_checkpoint, resolve_url
from .state_dicts import kinds_of
from .store import Checkpoint, Trajectory

log = logging.getLogger("trajlib.hub")


class CorruptBlob(TrajectoryError):
    """A file whose bytes do not hash to the LFS sha256 the hub lists for it."""


def _branch_reader(api, repo_id: str, revision: str, metas, client: RangeClient, *, verify: bool, cache_dir):
    """The reader of one branch: its safetensors streamed by ranges, else its ``pytorch_model.bin``
    (or sharded ``.bin`` files) fetched into the local cache (a pickle cannot be read by ranges),
    each checked against its LFS sha256 and loaded weights-only."""
    paths = {m.path: m for m in metas}
    index = None
    try:
        if "model.safetensors" not in paths and "model.safetensors.index.json" in paths:
            meta = paths["model.safetensors.index.json"]
            url = resolve_url(api.endpoint, repo_id, revision, meta.path)
            index = json.loads(client.read(url, 0, meta.size, f"{repo_id}@{revision}/{meta.path}"))
        if "model.safetensors" in paths or index is not None:
            return remote_checkpoint(api.endpoint, repo_id, revision, metas, client, index=index, verify=verify)
    except TrajectoryError as exc:
        if "corrupt blob" in str(exc):
            raise CorruptBlob(str(exc)) from None
        raise
    if "pytorch_model.bin" in paths or "pytorch_model.bin.index.json" in paths:
        from pathlib import Path

        from huggingface_hub import hf_hub_download

        from .formats import ShardedCheckpoint, TorchSaveFile, sha256_file

        def fetch(path: str) -> Path:
            local = Path(hf_hub_download(repo_id, path, revision=revision, endpoint=api.endpoint, cache_dir=cache_dir))
            meta = paths.get(path)
            if verify and meta is not None and meta.sha256 and sha256_file(local) != meta.sha256:
                raise CorruptBlob(f"{repo_id}@{revision}/{path}: its bytes do not hash to the hub's LFS sha256 "
                                  f"(corrupt blob): not used")
            return local

        if "pytorch_model.bin" in paths:
            return TorchSaveFile(fetch("pytorch_model.bin"))
        index = fetch("pytorch_model.bin.index.json")
        weight_map = json.loads(index.read_text())["weight_map"]
        return ShardedCheckpoint(index, weight_map=weight_map, open_shard=lambda shard: TorchSaveFile(fetch(shard)))
    raise TrajectoryError(f"{repo_id}@{revision}: no model.safetensors, shard index or pytorch_model.bin")


def open_hub_suite(repo_id: str, *, steps=None, endpoint: str | None = None, verify: bool = True,
                   audit: Audit | None = None, client: RangeClient | None = None, api=None,
                   cache_dir=None) -> Trajectory:
    """Open ``repo_id``'s step branches (all usable ones, or those at ``steps``) as a trajectory.

    ``endpoint``: the hub's address (default ``HF_ENDPOINT`` / huggingface.co); ``verify``: hash
    each file against its LFS sha256 before use (streamed, never stored): a mismatching branch is
    dropped and named; ``audit``: a finished audit to reuse; ``client``: the :class:`RangeClient`
    (its counters say what the pass read); ``cache_dir``: where ``.bin``-only branches are cached. ``meta["audit"]`` records coverage, the branches dropped and why, and the
    tokens seen at each step."""
    api = api or hf_api(endpoint)
    endpoint = api.endpoint
    result = audit or run_audit(repo_id, api=api)
    table = result.table[result.table.repo == repo_id]
    usable = result.usable(repo_id)
    if steps is not None:
        wanted = {int(s) for s in steps}
        absent = sorted(wanted - set(usable.step.astype(int)))
        if absent:
            why = {int(r.step): f"{r.revision or 'no branch'}: {r.status} ({r.detail})"
                   for r in table.itertuples() if int(r.step) in absent}
            raise TrajectoryError(f"{repo_id}: steps {absent} are not usable: "
                                  + "; ".join(why.get(s, "not in the repository") for s in absent))
        usable = usable[usable.step.isin(wanted)]
    if usable.empty:
        raise TrajectoryError(f"{repo_id}: no usable step branch (audit: {result.table.status.value_counts().to_dict()})")
    for r in table[~table.status.isin(Audit.USABLE)].itertuples():
        log.warning("%s: %s (step %d) left out: %s %s", repo_id, r.revision or "-", r.step, r.status, r.detail)
    client = client or RangeClient()
    checkpoints, corrupt = [], {}
    for r in usable.itertuples():
        try:
            reader = _branch_reader(api, repo_id, r.revision, result.listings[repo_id][r.revision], client,
                                    verify=verify, cache_dir=cache_dir)
        except CorruptBlob as exc:  # named, never used; the branch counts against coverage
            log.warning("%s", exc)
            corrupt[r.revision] = f"corrupt: {exc}"
            continue
        checkpoints.append(Checkpoint(reader, int(r.step), label=r.revision))
    if not checkpoints:
        raise TrajectoryError(f"{repo_id}: every usable branch failed verification: {corrupt}")
    dropped = {str(r.revision or r.step): f"{r.status}: {r.detail}"
               for r in table[~table.status.isin(Audit.USABLE)].itertuples()} | corrupt
    present = {c.step for c in checkpoints}
    wanted = set(result.expected or []) if steps is None else {int(x) for x in steps}
    coverage = len(present & wanted) / len(wanted) if wanted else None  # of the schedule, or of the steps asked for
    meta = {"audit": {"suite": result.suite.name, "coverage": coverage, "dropped": dropped,
                      "tokens": {str(int(r.step)): (None if r.tokens != r.tokens or r.tokens is None else int(r.tokens))
                                 for r in usable.itertuples() if int(r.step) in present}},
            "streamed": {"endpoint": endpoint, "verified": verify}}
    traj = Trajectory(checkpoints, kinds=kinds_of(checkpoints[0].reader.names), meta=meta, source=f"hub:{repo_id}")
    return traj
