"""trajlib: record, store and stream neural-network optimisation trajectories, and compute the
hallmarks of *Hallmarks of Optimization Trajectories in Neural Networks* (arXiv 2403.07379).

Public API: :class:`Recorder`, :func:`open_trajectory`, :func:`gram`, :mod:`hallmarks`,
:mod:`plot` (imported lazily: matplotlib is loaded only when plotting).
"""

__version__ = "0.1.0"

from . import hallmarks
from .gram import gram
from .manifest import TrajectoryError
from .record import Recorder, log_linear_steps
from .stats import GramStats
from .store import Trajectory, open_trajectory


_LAZY = ("plot", "pythia", "theory", "experiment", "data", "models", "train", "ledger")


def __getattr__(name):
    if name in _LAZY:  # heavier modules (matplotlib, transformers) load on first use
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'trajlib' has no attribute {name!r}")


__all__ = ["Recorder", "open_trajectory", "gram", "hallmarks", "plot", "GramStats", "Trajectory",
           "TrajectoryError", "log_linear_steps"]
