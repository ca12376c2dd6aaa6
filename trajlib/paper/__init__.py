"""The paper harness: everything that exists only to reproduce *Hallmarks of Optimization
Trajectories in Neural Networks* (arXiv 2403.07379) on top of the :mod:`trajlib` library.

Runs and sweeps (:mod:`.runs`), training loops (:mod:`.train`), models (:mod:`.models`), data
(:mod:`.data`), the oscillation theory (:mod:`.theory`), the Pythia suite (:mod:`.pythia`), the
Q/K/V tables (:mod:`.qkv`), paper-only figures (:mod:`.figures`), the claims ledger
(:mod:`.ledger`), presets (:mod:`.presets`) and the book build (:mod:`.book`;
``python -m trajlib.paper reproduce``). It imports the library; the library never imports it.
Its dependencies come with the ``paper`` extra: ``pip install 'trajlib[paper]'``.
"""
