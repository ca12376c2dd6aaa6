"""Audit a checkpoint suite from the hub's file metadata alone, before a byte of weights is read.

Per branch: present or missing against the suite's schedule, byte-identical to another branch
(equal LFS sha256 of every weight file), shard sets that disagree with their own names
(``model-00002-of-00003.safetensors`` without its siblings, or two shard counts), no weight file.
The result's table is what a Gram pass over the suite reads first: identical branches are
dropped (named) and gaps count against coverage, the fraction of the schedule present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from .suites import Suite, resolve

SHARD = re.compile(r"(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.(?P<ext>safetensors|bin)$")
WEIGHT_FILE = re.compile(r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)$|.*\.index\.json$")


@dataclass(frozen=True)
class FileMeta:
    """One file of a branch as the hub lists it: path, size in bytes, LFS sha256 (None if not LFS)."""

    path: str
    size: int
    sha256: str | None = None


class MissingExtra(ImportError):
    """An optional extra of trajlib is not installed; the message says how to install it."""


def hf_api(endpoint: str | None = None):
    """A ``huggingface_hub.HfApi`` for ``endpoint`` (default ``HF_ENDPOINT`` / huggingface.co);
    without the ``hub`` extra, :class:`MissingExtra` saying how to install it."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise MissingExtra("reading hub suites needs huggingface_hub: pip install 'trajlib[hub]'") from None
    return HfApi(endpoint=endpoint)


def hub_listing(repo_id: str, *, api=None) -> dict[str, list[FileMeta]]:
    """{branch: its files} from the hub's metadata endpoints (refs, then each branch's tree);
    ``huggingface_hub`` honours ``HF_ENDPOINT``."""
    api = api or hf_api()
    out = {}
    for branch in api.list_repo_refs(repo_id).branches:
        files = [FileMeta(f.path, int(f.size), f.lfs.sha256 if f.lfs else None)
                 for f in api.list_repo_tree(repo_id, revision=branch.name, recursive=True)
                 if hasattr(f, "size")]
        out[branch.name] = files
    return out


def _weights(files: list[FileMeta]) -> list[FileMeta]:
    return sorted((f for f in files if WEIGHT_FILE.fullmatch(f.path.rsplit("/", 1)[-1])), key=lambda f: f.path)


def _shard_problem(weights: list[FileMeta]) -> str | None:
    """Why a branch's shard sets are inconsistent, or None. Each set (``model-*.safetensors``,
    ``pytorch_model-*.bin``) is checked on its own: one shard count, every shard present, and its
    index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``) beside it."""
    names = [f.path.rsplit("/", 1)[-1] for f in weights]
    shards = [m for m in map(SHARD.fullmatch, names) if m]
    indexes = {n for n in names if n.endswith(".index.json")}
    sets: dict[tuple[str, str], set[int]] = {}
    for m in shards:
        sets.setdefault((m["stem"], m["ext"]), set()).add(int(m["n"]))
    for index in sorted(indexes):
        stem, ext = index[: -len(".index.json")].rsplit(".", 1)
        if (stem, ext) not in sets:
            return f"an index ({index}) but no {stem}-*-of-*.{ext} shards"
    for (stem, ext), counts in sorted(sets.items()):
        if len(counts) > 1:
            return f"{stem}-*.{ext} shards of different sets: " + ", ".join(f"of-{n:05d}" for n in sorted(counts))
        (n,) = counts
        have = {int(m["i"]) for m in shards if (m["stem"], m["ext"]) == (stem, ext)}
        lacking = sorted(set(range(1, n + 1)) - have)
        if lacking:
            return (f"{len(lacking)} of {n} shards missing "
                    f"({', '.join(f'{stem}-{i:05d}-of-{n:05d}.{ext}' for i in lacking[:3])})")
        if f"{stem}.{ext}.index.json" not in indexes:
            return f"{n} {stem}-*.{ext} shards but no {stem}.{ext}.index.json"
    return None


@dataclass
class Audit:
    """The audit of one suite: ``table`` (one row per branch or missing step: repo, revision,
    step, tokens, status, detail, files, bytes) and the file ``listings`` it read; statuses ``ok``, ``identical``,
    ``shard mismatch``, ``no weights``, ``missing``, ``unscheduled`` (present but off the schedule;
    still usable)."""

    suite: Suite
    table: pd.DataFrame
    expected: list[int] | None = None
    listings: dict[str, dict[str, list[FileMeta]]] = field(default_factory=dict)  # repo → branch → files

    USABLE = ("ok", "unscheduled")

    def usable(self, repo: str) -> pd.DataFrame:
        """Rows of ``repo`` a pass may read, sorted by step."""
        t = self.table
        return t[(t.repo == repo) & t.status.isin(self.USABLE)].sort_values("step")

    def coverage(self, repo: str) -> float | None:
        """Fraction of the schedule's steps that are usable (None without a schedule)."""
        if not self.expected:
            return None
        steps = set(self.usable(repo).step.astype(int))
        return len(steps & set(self.expected)) / len(self.expected)

    def flagged(self) -> pd.DataFrame:
        return self.table[~self.table.status.isin(("ok",))]


def audit(name: str, *, listings: dict[str, dict[str, list[FileMeta]]] | None = None, api=None) -> Audit:
    """Audit a registered suite (``"pythia"``), one of its repositories, or any repository with
    step branches. ``listings``: {repo: {branch: files}} to audit instead of asking the hub."""
    suite, repos = resolve(name)
    expected = suite.expected_steps()
    rows, seen = [], {}
    for repo in repos:
        listing = seen[repo] = listings[repo] if listings is not None else hub_listing(repo, api=api)
        branches = []
        for branch, files in listing.items():
            parsed = suite.parse(branch)
            if parsed is None:
                continue  # main, docs branches: not checkpoints
            weights = _weights(files)
            branches.append((parsed[0], parsed[1], branch, weights))
        by_hash: dict[tuple, list[tuple[int, str]]] = {}
        for step, _, branch, weights in branches:
            blobs = tuple(f.sha256 for f in weights if f.sha256)  # LFS files: an index JSON is plain git
            if blobs:
                by_hash.setdefault(blobs, []).append((step, branch))
        # a defect copies a later model into earlier branches (pythia #205): keep the latest
        twin = {b: max(group)[1] for group in by_hash.values() if len(group) > 1 for s, b in group if (s, b) != max(group)}
        for step, tokens, branch, weights in sorted(branches):
            status, detail = "ok", ""
            if not weights:
                status, detail = "no weights", "no model.safetensors, shards or pytorch_model.bin"
            elif (problem := _shard_problem(weights)) is not None:
                status, detail = "shard mismatch", problem
            elif branch in twin:
                status, detail = "identical", f"same weight blobs as {twin[branch]}"
            elif expected is not None and step not in expected:
                status, detail = "unscheduled", "a step the suite's schedule does not list"
            rows.append(dict(repo=repo, revision=branch, step=step, tokens=tokens, status=status, detail=detail,
                             files=len(weights), bytes=sum(f.size for f in weights)))
        if expected is not None:
            present = {s for s, *_ in branches}
            for step in sorted(set(expected) - present):
                tokens = step * suite.tokens_per_step if suite.tokens_per_step else None
                rows.append(dict(repo=repo, revision="", step=step, tokens=tokens, status="missing",
                                 detail="in the schedule, no branch", files=0, bytes=0))
    table = pd.DataFrame(rows, columns=["repo", "revision", "step", "tokens", "status", "detail", "files", "bytes"])
    table = table.sort_values(["repo", "step"], kind="stable").reset_index(drop=True)
    return Audit(suite, table, expected, seen)
