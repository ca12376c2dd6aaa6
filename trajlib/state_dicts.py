"""State dicts as trainers save them: where the weights sit in the saved object, the wrapper
prefixes around their names, which names are buffers, and which are aliases of one tensor.

A ``torch.save`` file may hold a bare state dict, a Lightning checkpoint (``state_dict`` beside
``optimizer_states``), a nanoGPT checkpoint (``model`` beside ``optimizer``, ``iter_num``) or a
similar loop's dict. Compiled and DDP-wrapped models prefix every name with ``_orig_mod.`` or
``module.``. A tied embedding appears under two names that share one storage: it is kept once,
under the first name, so the map and the parameter count see it once.
"""

from __future__ import annotations

import re

# Keys under which trainers nest the model's weights, tried in this order.
WEIGHT_KEYS = ("state_dict", "model", "model_state_dict", "module")
# Integer fields naming the step a checkpoint was saved at (Lightning, nanoGPT, plain loops).
STEP_FIELDS = ("global_step", "iter_num", "step", "iteration")
# Prefixes that wrappers add to every name: torch.compile, DistributedDataParallel / DeepSpeed.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Float tensors of saved models that are not trained parameters: BatchNorm running statistics,
# GPT-NeoX rotary frequencies and attention constants. Kept out of the default "all" group.
BUFFER_PATTERN = re.compile(r"(running_mean|running_var|inv_freq|masked_bias|attention\.bias)$")


def is_tensor_dict(obj) -> bool:
    """A non-empty dict whose values are all tensors (a state dict)."""
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_weights(obj, source: str) -> tuple[dict, dict]:
    """(state dict, scalar fields) of a loaded checkpoint object.

    The state dict is ``obj`` itself when it maps names to tensors, else the first of
    :data:`WEIGHT_KEYS` that does; the fields are ``obj``'s top-level int/float entries
    (``global_step``, ``epoch``, ``iter_num``). A flat dict of tensors with a few other values
    beside them (a step, ``_extra_state``) is a state dict too. Raises ``ValueError`` naming
    ``source`` when no state dict is found."""
    import torch

    if not isinstance(obj, dict):
        raise ValueError(f"{source}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    if is_tensor_dict(obj):
        return obj, {}
    fields = {k: v for k, v in obj.items() if isinstance(k, str) and type(v) in (int, float)}
    for key in WEIGHT_KEYS:
        inner = obj.get(key)
        if is_tensor_dict(inner):
            return inner, fields
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and not any(isinstance(v, dict) and is_tensor_dict(v) for v in obj.values()):
        return tensors, fields  # a flat save with a few extras beside the tensors ({**sd, "step": 5})
    raise ValueError(f"{source}: no state dict in it (looked for a dict of tensors at the top level and "
                     f"under {', '.join(repr(k) for k in WEIGHT_KEYS)}; keys: {', '.join(map(str, list(obj)[:8]))})")


def strip_wrappers(name: str) -> str:
    """``name`` without the wrapper prefixes of :data:`WRAPPER_PREFIXES`, wherever they occur
    at the start (``module._orig_mod.fc.weight`` → ``fc.weight``)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def unwrapped(state: dict, source: str) -> dict:
    """``state`` with wrapper prefixes stripped from every name; two names that collide after
    stripping are an error naming both."""
    out, origin = {}, {}
    for name, tensor in state.items():
        bare = strip_wrappers(name)
        if bare in out:
            raise ValueError(f"{source}: {origin[bare]!r} and {name!r} both name tensor {bare!r} once "
                             f"the wrapper prefixes ({', '.join(WRAPPER_PREFIXES)}) are removed")
        out[bare], origin[bare] = tensor, name
    return out


def shared_aliases(state: dict) -> dict[str, str]:
    """{alias: kept name} for tensors that view the same memory as an earlier name (same storage,
    offset, shape and strides): tied weights, saved once by ``torch.save``."""
    seen, aliases = {}, {}
    for name, t in state.items():
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def kinds_of(names) -> dict[str, str]:
    """name → "parameter" | "buffer", by :data:`BUFFER_PATTERN`."""
    return {n: "buffer" if BUFFER_PATTERN.search(n) else "parameter" for n in names}


def step_field(fields: dict) -> int | None:
    """The step a checkpoint records in one of :data:`STEP_FIELDS`, or None."""
    for key in STEP_FIELDS:
        if type(fields.get(key)) is int:
            return fields[key]
    return None
