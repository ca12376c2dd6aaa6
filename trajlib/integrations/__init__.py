"""Where users train: callbacks for ``transformers.Trainer`` (:mod:`.hf`) and PyTorch Lightning
(:mod:`.lightning`), live hallmarks in their loggers (:mod:`.live`), and the framework-neutral
recording session both callbacks share (:mod:`.session`).

Each framework is an optional extra (``trajlib[hf]``, ``trajlib[lightning]``,
``trajlib[tensorboard]``); nothing here is imported by ``import trajlib``, and importing a
submodule imports only its own framework.
"""
