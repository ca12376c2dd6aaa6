"""Presets: which parameters each notebook runs with (ci, laptop, paper).

``ci`` is each notebook's own ``parameters`` cell (cheap; used by the tests). ``laptop`` (the
default of ``make book``) and ``paper`` are override files in ``notebooks/presets.yml``: plain
data, one mapping per notebook, each value commented with why it differs. Every run records
the preset it used (the ``preset`` parameter), so each page can say what produced it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PRESETS = ("ci", "laptop", "paper")


def load_presets(path: str | Path) -> dict:
    """The override file as {preset: {notebook: {parameter: value}}}, checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: preset file is missing")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - set(PRESETS))
    if unknown:
        raise ValueError(f"{path}: unknown preset {unknown[0]!r}; valid: {', '.join(PRESETS)}")
    for preset, per_nb in data.items():
        if not isinstance(per_nb, dict) or not all(isinstance(v, dict) for v in per_nb.values()):
            raise ValueError(f"{path}: preset {preset!r} must map notebook names to parameter mappings")
    return data


def parameters_for(notebook: Path, preset: str, presets_file: str | Path) -> dict:
    """The papermill parameters of ``notebook`` under ``preset`` (``preset`` itself included).

    Keys that the notebook's ``parameters`` cell does not define are an error (typos would
    otherwise be injected silently).
    """
    import papermill

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    notebook = Path(notebook)
    overrides = {} if preset == "ci" else dict(load_presets(presets_file).get(preset, {}).get(notebook.stem, {}))
    declared = papermill.inspect_notebook(str(notebook))
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ValueError(f"{presets_file}: preset {preset!r} sets {unknown[0]!r} for {notebook.stem}, "
                         f"which its parameters cell does not define; defined: {', '.join(declared)}")
    return {**overrides, "preset": preset}
