"""What decides a page's numbers, recorded beside them in its results JSON.

Given the same seeds, parameters, data bytes, library versions, CPU threads and CPU kernels, a
page computes the same numbers bit for bit (``tests/test_determinism.py`` checks two runs in
one process and in two). Change any of them and the trained numbers move: float32 training is
chaotic enough that a different thread count or a CPU with another vector width (AVX2 against
AVX-512 kernels) gives other values, of the size of the seed-to-seed spread after enough steps.
Nothing here is a time or a path, so two builds on one machine write identical bytes.
"""

from __future__ import annotations

import functools
import platform

SEED_PARAMETERS = ("seed", "seeds", "deep_seeds")


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Library versions, thread counts and the CPU kernels torch dispatches to."""
    import numpy
    import torch

    import trajlib

    versions = {"python": platform.python_version(), "trajlib": trajlib.__version__, "torch": torch.__version__,
                "numpy": numpy.__version__}
    for name in ("scipy", "sklearn", "pandas"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    cpu = {"machine": platform.machine(), "torch_capability": torch.backends.cpu.get_cpu_capability()}
    threads = {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()}
    return {"versions": versions, "threads": threads, "cpu": cpu}


@functools.lru_cache(maxsize=1)
def _inputs() -> dict:
    from .data import embedded_inputs

    return embedded_inputs()


def provenance(parameters: dict) -> dict:
    """The provenance block of a results JSON: the seeds the page's ``parameters`` name, the
    sha256 of every embedded data input, and :func:`environment`. Dataset folders (CIFAR-10,
    ImageNet) are named by the parameters; their bytes are not hashed here."""
    seeds = {k: parameters[k] for k in SEED_PARAMETERS if k in parameters}
    return {"seeds": seeds, "data": _inputs(), **environment()}
