"""Parameter groups as flat element ranges, and the block plan the Gram engine streams.

A group is a list of segments ``(tensor, start, stop)`` of flattened tensors. Group specs:

* ``"all"``: every recorded parameter (buffers excluded);
* ``"matrices"``: parameters with two or more dimensions (weights and embeddings: no biases,
  no normalisation gains);
* ``"bn"``: BatchNorm scale and shift parameters (recorded by ``Recorder`` from module types);
* ``"layers"``: one group per layer: the name up to its first integer component
  (``layer1.0``, ``gpt_neox.layers.3``), else the module (``conv1``);
* ``"modules"``: one group per module (the name without its last component);
* ``"qkv"`` / ``"qkv_heads"``: Q, K and V of each GPT-NeoX attention layer (per head for the
  second). GPT-NeoX fuses them in ``query_key_value`` of shape (3H, H), interleaved per head:
  ``view(heads, 3, head_size, H)``; the first H rows are *not* Q. The number of heads comes
  from the run's config (``num_attention_heads``) or the spec itself: ``"qkv:8"``;
* ``{"name": regex}`` or ``"name=regex"``: tensors whose names match ``regex``.

:func:`plan_blocks` splits the parameter vector into *atoms* (ranges whose group membership is
constant), so overlapping groups (``all`` ⊃ ``layers``) cost one read and one product; the
groups' Grams are sums over their atoms' Grams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from .formats import ST_DTYPES

Segment = tuple[str, int, int]
NAMED_SPECS = ("all", "matrices", "bn", "layers", "modules", "qkv", "qkv_heads", "qkv:<heads>")


def _whole(traj, names) -> list[Segment]:
    return [(n, 0, traj.numel(n)) for n in names]


def _layer_of(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def _heads(traj, heads: int | None) -> int:
    if heads is not None:
        return heads
    config = traj.meta.get("config") or {}
    if "num_attention_heads" in config:
        return int(config["num_attention_heads"])
    raise ValueError(f"{traj.source}: the number of attention heads is unknown (no config with "
                     f"num_attention_heads); give it in the group spec, e.g. 'qkv:8'")


def _qkv(traj, heads: int | None, per_head: bool) -> dict[str, list[Segment]]:
    out: dict[str, list[Segment]] = {}
    fused = [n for n in traj.parameters if re.search(r"attention\.query_key_value\.(weight|bias)$", n)]
    if not fused:
        raise ValueError(f"{traj.source}: no GPT-NeoX query_key_value tensors for the qkv groups")
    n_heads = _heads(traj, heads)
    for name in fused:
        shape = traj.shapes[name]
        if shape[0] % (3 * n_heads):
            raise ValueError(f"{traj.source}: tensor {name!r} of shape {list(shape)} does not split "
                             f"into 3 × {n_heads} heads")
        head_size = shape[0] // (3 * n_heads)
        row = traj.numel(name) // shape[0]  # elements per row: H for the weight, 1 for the bias
        prefix = name.rsplit(".query_key_value.", 1)[0]
        for h in range(n_heads):
            for p, part in enumerate("qkv"):
                start = (h * 3 + p) * head_size * row
                key = f"{prefix}.h{h}.{part}" if per_head else f"{prefix}.{part}"
                out.setdefault(key, []).append((name, start, start + head_size * row))
    return out


def resolve_groups(traj, groups=None) -> dict[str, list[Segment]]:
    """Expand group specs (see module docstring) into named segment lists, in a stable order."""
    if groups is None:
        groups = ["all"]
    if isinstance(groups, (str, Mapping)):
        groups = [groups]
    out: dict[str, list[Segment]] = {}
    for spec in groups:
        if isinstance(spec, Mapping):
            for gname, pattern in spec.items():
                out[gname] = _regex_group(traj, gname, pattern)
        elif "=" in spec:
            gname, pattern = spec.split("=", 1)
            out[gname] = _regex_group(traj, gname, pattern)
        elif spec == "all":
            out["all"] = _whole(traj, traj.parameters)
        elif spec == "matrices":
            out["matrices"] = _whole(traj, [n for n in traj.parameters if len(traj.shapes[n]) >= 2])
        elif spec == "bn":
            if "bn" not in traj.groups:
                raise ValueError(f"{traj.source}: no BatchNorm group recorded (only trajlib runs "
                                 f"record one); define it with a regex, e.g. 'bn=bn|norm'")
            if not traj.groups["bn"]:
                raise ValueError(f"{traj.source}: the model has no BatchNorm parameters")
            out["bn"] = _whole(traj, [n for n in traj.names if n in set(traj.groups["bn"])])
        elif spec in ("layers", "modules"):
            key = _layer_of if spec == "layers" else (lambda n: ".".join(n.split(".")[:-1]) or n)
            for n in traj.parameters:
                out.setdefault(key(n), []).extend(_whole(traj, [n]))
        elif (m := re.fullmatch(r"(qkv|qkv_heads)(?::(\d+))?", spec)):
            out.update(_qkv(traj, None if m.group(2) is None else int(m.group(2)), m.group(1) == "qkv_heads"))
        else:
            raise ValueError(f"unknown parameter group {spec!r}; valid: {', '.join(NAMED_SPECS)}, "
                             f"'name=regex' or a {{name: regex}} dict")
    return out


def _regex_group(traj, gname: str, pattern: str) -> list[Segment]:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"group {gname!r}: invalid regex {pattern!r} ({exc})") from exc
    names = [n for n in traj.names if rx.search(n)]
    if not names:
        raise ValueError(f"group {gname!r}: regex {pattern!r} matches no tensor of {traj.source}")
    return _whole(traj, names)


@dataclass
class Block:
    """One read unit: ``pieces`` (tensor, start, stop, column offset) of one signature."""

    signature: int
    dtype: str
    ncols: int
    pieces: list[tuple[str, int, int, int]] = field(default_factory=list)


@dataclass
class BlockPlan:
    groups: list[str]                # group names, in order
    n_params: list[int]              # elements per group
    members: list[frozenset[int]]    # per signature: the group indices it belongs to
    blocks: list[Block]

    @property
    def max_cols(self) -> int:
        return max((b.ncols for b in self.blocks), default=0)


def plan_blocks(traj, groups: dict[str, list[Segment]], *, block_cols: int) -> BlockPlan:
    """Split the union of the groups into blocks of ≤ ``block_cols`` columns of one signature.

    A signature is (set of groups, dtype): every column of a block adds to exactly the same
    groups, so one product per block serves all of them.
    """
    names = list(groups)
    by_tensor: dict[str, list[tuple[int, int, int]]] = {}
    for gi, gname in enumerate(names):
        for tensor, a, b in groups[gname]:
            by_tensor.setdefault(tensor, []).append((a, b, gi))
    sig_index: dict[tuple[frozenset[int], str], int] = {}
    atoms_by_sig: dict[int, list[Segment]] = {}
    for tensor in traj.names:  # manifest order keeps reads sequential within each file
        segs = by_tensor.get(tensor)
        if not segs:
            continue
        cuts = sorted({x for a, b, _ in segs for x in (a, b)})
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            member = frozenset(gi for a, b, gi in segs if a <= lo and hi <= b)
            if not member:
                continue
            key = (member, traj.dtypes[tensor])
            s = sig_index.setdefault(key, len(sig_index))
            atoms_by_sig.setdefault(s, []).append((tensor, lo, hi))
    blocks: list[Block] = []
    for (member, dtype), s in sig_index.items():
        block = Block(s, dtype, 0)
        for tensor, lo, hi in atoms_by_sig[s]:
            while lo < hi:
                take = min(hi - lo, block_cols - block.ncols)
                block.pieces.append((tensor, lo, lo + take, block.ncols))
                block.ncols += take
                lo += take
                if block.ncols == block_cols:
                    blocks.append(block)
                    block = Block(s, dtype, 0)
        if block.ncols:
            blocks.append(block)
    members = [m for (m, _), _ in sorted(sig_index.items(), key=lambda kv: kv[1])]
    n_params = [sum(b - a for _, a, b in groups[g]) for g in names]
    return BlockPlan(names, n_params, members, blocks)


def block_nbytes(traj, block: Block) -> int:
    """Bytes read from disk for one block over all T checkpoints."""
    return traj.T * block.ncols * ST_DTYPES[block.dtype].itemsize
