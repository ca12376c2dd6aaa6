"""trajlib: record, store and stream neural-network optimisation trajectories, and compute the
hallmarks of *Hallmarks of Optimization Trajectories in Neural Networks* (arXiv 2403.07379).

The library: :class:`Recorder` (record), :func:`open_trajectory` (sources), :func:`gram` (the
streamed fp64 Gram engine), :func:`hallmark_table` and :mod:`hallmarks` (the T×T algebra),
:func:`trajectory_pca` and :mod:`landscape` (the PCA view of a run and the loss on its plane),
:mod:`plot` (figures; imported lazily, so matplotlib loads only when plotting). The machinery
that reproduces the paper lives in :mod:`trajlib.paper` and is never imported from here.
"""

__version__ = "0.2.0"

from . import hallmarks, landscape, pca
from .gram import gram
from .hallmarks import hallmark_table
from .manifest import TrajectoryError
from .pca import trajectory_pca
from .record import Recorder, batchnorm_parameters, log_linear_steps, select_tensors
from .sources import open_trajectory
from .stats import GramStats
from .store import Checkpoint, Trajectory


def __getattr__(name):
    if name == "plot":  # matplotlib and seaborn load on first use
        import importlib

        return importlib.import_module(".plot", __name__)
    raise AttributeError(f"module 'trajlib' has no attribute {name!r}")


__all__ = ["Recorder", "open_trajectory", "gram", "hallmark_table", "hallmarks", "plot", "GramStats",
           "trajectory_pca", "pca", "landscape",
           "Trajectory", "Checkpoint", "TrajectoryError", "log_linear_steps", "select_tensors",
           "batchnorm_parameters"]
