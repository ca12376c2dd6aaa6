"""Public checkpoint suites: which repositories a suite has, how a revision name maps to a step
(and tokens seen), the step schedule the suite promises, and the formats it ships.

``SUITES`` is the registry; :func:`suite_of` finds a repository's suite. Adding a suite is one
:class:`Suite` entry: its repositories, a regular expression whose named groups ``step`` (and
optionally ``tokens`` with a unit ``unit``) read a revision name, and the expected schedule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


@dataclass(frozen=True)
class Suite:
    """A public checkpoint suite.

    ``repos``: its repositories (``owner/name``); ``revision``: a regex over a branch name with
    named groups ``step`` and optionally ``tokens`` (+ ``unit``: K, M, B, T) — branches it does not
    match (``main``) are not checkpoints; ``schedule``: the steps the suite promises (None when it
    does not promise one); ``tokens_per_step``: tokens per optimiser step where fixed;
    ``formats``: the weight files it ships. Suites with one repository per step (MultiBERTs,
    TinyLlama's intermediate checkpoints) are not registered: their audit would list repositories,
    not branches.
    """

    name: str
    repos: tuple[str, ...]
    revision: str
    schedule: Callable[[], list[int]] | None = None
    tokens_per_step: int | None = None
    formats: tuple[str, ...] = ("model.safetensors",)
    notes: str = ""
    _pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_pattern", re.compile(self.revision))

    def parse(self, name: str) -> tuple[int, int | None] | None:
        """(step, tokens seen or None) of a revision name; None when it names no checkpoint."""
        m = self._pattern.fullmatch(name)
        if m is None:
            return None
        step = int(m.group("step"))
        tokens = None
        if m.groupdict().get("tokens"):
            tokens = round(float(m.group("tokens")) * _UNITS[(m.groupdict().get("unit") or "").upper()])
        elif self.tokens_per_step:
            tokens = step * self.tokens_per_step
        return step, tokens

    def expected_steps(self) -> list[int] | None:
        return None if self.schedule is None else sorted(set(self.schedule()))


def _pythia() -> list[int]:
    """Pythia's 154 checkpoints: step 0, the ten powers of two 1..512, then every 1000 to 143000."""
    return [0] + [2**k for k in range(10)] + list(range(1000, 143001, 1000))


def _crfm_gpt2() -> list[int]:
    """Stanford CRFM Mistral GPT-2 runs: 609 checkpoints, denser early (0, every 10 to 100, every
    50 to 2000, every 100 to 20000, every 1000 to 400000)."""
    return ([0] + list(range(10, 101, 10)) + list(range(150, 2001, 50)) + list(range(2100, 20001, 100))
            + list(range(21000, 400001, 1000)))


def _amber() -> list[int]:
    return list(range(360))  # ckpt_000 .. ckpt_359, one per 1/360 of training


PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")

SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("pythia", tuple(f"EleutherAI/pythia-{s}" for s in PYTHIA_SIZES), r"step(?P<step>\d+)", _pythia,
          tokens_per_step=2_097_152, formats=("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
          notes="154 step branches, log then linear spacing; 2M tokens a step"),
    Suite("pythia-deduped", tuple(f"EleutherAI/pythia-{s}-deduped" for s in PYTHIA_SIZES), r"step(?P<step>\d+)",
          _pythia, tokens_per_step=2_097_152,
          formats=("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")),
    Suite("olmo", ("allenai/OLMo-1B-hf", "allenai/OLMo-7B-hf"),
          r"step(?P<step>\d+)-tokens(?P<tokens>\d+)(?P<unit>[KMBT]?)",
          formats=("model.safetensors", "model.safetensors.index.json"),
          notes="stepN-tokensMB branches; no promised schedule (OLMo 1 has large gaps)"),
    Suite("olmo2", ("allenai/OLMo-2-1124-7B", "allenai/OLMo-2-1124-13B"),
          r"stage1-step(?P<step>\d+)-tokens(?P<tokens>\d+)(?P<unit>[KMBT]?)",
          formats=("model.safetensors", "model.safetensors.index.json"),
          notes="stage-1 pretraining branches; stage-2 ingredients are separate runs with their own steps"),
    Suite("amber", ("LLM360/Amber",), r"ckpt_(?P<step>\d+)", _amber, formats=("pytorch_model.bin",
          "pytorch_model.bin.index.json"), notes="ckpt_NNN: checkpoint number, not optimiser step"),
    Suite("crystal", ("LLM360/CrystalCoder",), r"CrystalCoder_phase\d+_checkpoint_(?P<step>\d+)",
          formats=("pytorch_model.bin", "pytorch_model.bin.index.json")),
    Suite("crfm-gpt2", ("stanford-crfm/alias-gpt2-small-x21", "stanford-crfm/battlestar-gpt2-small-x49",
                        "stanford-crfm/caprica-gpt2-small-x81", "stanford-crfm/darkmatter-gpt2-small-x343",
                        "stanford-crfm/expanse-gpt2-small-x777"),
          r"checkpoint-(?P<step>\d+)", _crfm_gpt2, formats=("pytorch_model.bin",), notes="609 checkpoints each"),
)}


def suite_of(repo_id: str) -> Suite | None:
    """The registered suite a repository belongs to, or None."""
    for suite in SUITES.values():
        if repo_id in suite.repos:
            return suite
    return None


def resolve(name: str) -> tuple[Suite, list[str]]:
    """(suite, repositories) for a suite name or one of its repositories; an unknown repository
    with Pythia-style ``stepN`` branches falls back to a suite of its own with no schedule."""
    if name in SUITES:
        return SUITES[name], list(SUITES[name].repos)
    suite = suite_of(name)
    if suite is not None:
        return suite, [name]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ValueError(f"{name!r}: not a registered suite ({', '.join(SUITES)}) nor a repository owner/name")
    return Suite(name, (name,), r"(?:.*?)step[-_]?(?P<step>\d+)"), [name]
