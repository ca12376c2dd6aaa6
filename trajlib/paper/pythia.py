"""The Pythia suite, written once as data: sizes, architectures, the 154 checkpoint revisions,
and a helper that streams every size's checkpoints from the Hugging Face hub through the engine.

Pythia (Biderman et al., 2023) saves each model at ``step0``, at ``step1, step2, step4, ...,
step512`` and every 1,000 steps from ``step1000`` to ``step143000``: 154 revisions. Steps are
taken from this schedule, not parsed from arbitrary names. Parameter counts follow from the
architecture (GPT-NeoX: 12d² + 13d per layer, untied input and output embeddings), e.g.
70,426,624 for pythia-70m. Notebooks 04 and 05 use this at the ``paper`` preset.
"""

from __future__ import annotations

import logging

from ..record import log_linear_steps

log = logging.getLogger("trajlib.paper.pythia")

# size: (hidden size d, layers, attention heads, vocabulary)
ARCHITECTURES = {
    "14m": (128, 6, 4, 50304), "31m": (256, 6, 8, 50304), "70m": (512, 6, 8, 50304),
    "160m": (768, 12, 12, 50304), "410m": (1024, 24, 16, 50304), "1b": (2048, 16, 8, 50304),
    "1.4b": (2048, 24, 16, 50304), "2.8b": (2560, 32, 32, 50304), "6.9b": (4096, 32, 32, 50432),
    "12b": (5120, 36, 40, 50688),
}
SIZES = tuple(ARCHITECTURES)


def parameter_count(size: str) -> int:
    """Total parameters of ``pythia-<size>`` (embeddings included)."""
    d, layers, _, vocab = ARCHITECTURES[size]
    return 2 * vocab * d + layers * (12 * d * d + 13 * d) + 2 * d


LAST_STEP, EVERY = 143000, 1000  # the schedule, as data: log-spaced up to 512, then every 1,000


def revisions(every: int = 1) -> list[str]:
    """The 154 checkpoint revisions in step order (``every``: keep every k-th linear one).
    The schedule is :func:`trajlib.log_linear_steps` (0, 1, 2, 4, ..., 512, 1000, 2000, ...)."""
    steps = log_linear_steps(LAST_STEP, every=EVERY)
    return [f"step{s}" for s in steps if s < EVERY or (s // EVERY - 1) % every == 0]


def revision_step(revision: str) -> int:
    if not revision.startswith("step") or not revision[4:].isdigit():
        raise ValueError(f"{revision!r} is not a Pythia revision (step<N>)")
    return int(revision[4:])


def repo_id(size: str, *, deduped: bool = False) -> str:
    if size not in ARCHITECTURES:
        raise ValueError(f"unknown Pythia size {size!r}; valid: {', '.join(SIZES)}")
    return f"EleutherAI/pythia-{size}{'-deduped' if deduped else ''}"


def suite_bytes(sizes, n_revisions: int, *, bytes_per_param: int = 2) -> int:
    """Bytes to read for ``n_revisions`` checkpoints of each size (float16 on the hub)."""
    return sum(parameter_count(s) for s in sizes) * n_revisions * bytes_per_param


def suite_stats(repos: dict[str, str], revs: list[str], *, groups=("all",), device="auto",
                cache_dir=None, local_files_only=None, drop_duplicates: bool = True):
    """Gram statistics of each repository's checkpoints at ``revs``, one streamed pass each.

    Returns {label: (GramStats, dropped revision labels)}. Duplicate revisions (byte-identical
    weights, which some public branches serve) are reported and, by default, dropped.
    """
    from ..gram import gram
    from ..sources import open_hub

    out = {}
    for label, repo in repos.items():
        traj = open_hub(repo, revs, steps=[revision_step(r) for r in revs], cache_dir=cache_dir,
                        local_files_only=local_files_only)
        dropped = []
        if drop_duplicates:
            traj, dropped = traj.drop_duplicates()
            if dropped:
                log.warning("%s: dropped duplicate revisions %s", repo, dropped)
        out[label] = (gram(traj, groups=list(groups), device=device), dropped)
        traj.close()
    return out


def suite(sizes, *, revision_every: int = 1, groups=("all",), device="auto", cache_dir=None, endpoint=None):
    """Gram statistics of ``pythia-<size>`` for each size at every ``revision_every``-th linear
    revision, as ({(size, 0): GramStats}, {size: dropped revisions}) (notebooks 04, 05).

    With ``cache_dir`` the revisions are read from (or fetched into) that ``huggingface_hub``
    cache and byte-identical ones dropped; without it each repository goes through the suite
    registry: audited from the hub's metadata first (``endpoint``: the hub's address), its
    flagged branches dropped (named), the rest streamed by range reads."""
    revs = revisions(every=revision_every)
    if cache_dir is not None:
        out = suite_stats({s: repo_id(s) for s in sizes}, revs, groups=groups, device=device, cache_dir=cache_dir)
        return {(s, 0): st for s, (st, _) in out.items()}, {s: d for s, (_, d) in out.items()}
    return registry_suite(sizes, revs, groups=groups, device=device, endpoint=endpoint)


def registry_suite(sizes, revs: list[str], *, groups=("all",), device="auto", endpoint=None):
    """:func:`suite` through the registry: for each size, the audit's usable branches among
    ``revs`` (the others dropped, named: missing, identical, mismatched shards, corrupt),
    streamed by range reads. Returns ({(size, 0): GramStats}, {size: dropped revisions})."""
    from huggingface_hub import HfApi

    from ..audit import audit
    from ..gram import gram
    from ..hub import open_hub_suite

    api = HfApi(endpoint=endpoint)
    stats, dropped = {}, {}
    for size in sizes:
        repo = repo_id(size)
        result = audit(repo, api=api)
        usable = {int(s) for s in result.usable(repo).step}
        want = [revision_step(r) for r in revs]
        traj = open_hub_suite(repo, steps=[s for s in want if s in usable], audit=result, api=api)
        kept = {int(s) for s in traj.steps}
        dropped[size] = [r for r, s in zip(revs, want) if s not in kept]
        if dropped[size]:
            log.warning("%s: left out %s (audit: %s)", repo, dropped[size], traj.meta["audit"]["dropped"])
        stats[(size, 0)] = gram(traj, groups=list(groups), device=device)
    return stats, dropped


def blocked_reason(dropped: dict, n_requested: int, *, max_dropped: float = 0.25) -> str | None:
    """Why a claim over the suite cannot stand, or None: some size had more than ``max_dropped``
    of its ``n_requested`` revisions rejected by the audit (``dropped``: size → revisions)."""
    bad = {s: len(v) for s, v in dropped.items() if len(v) > max_dropped * n_requested}
    if not bad:
        return None
    return "; ".join(f"pythia-{s}: {k} of {n_requested} revisions rejected by the audit" for s, k in bad.items())
