"""Packaging: environment.yml mirrors pyproject, the README example runs, CI runs the README command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(spec: str) -> str:
    return re.sub(r"[-_.]+", "-", spec.replace(" ", "").lower())


def _expand(project: dict, extra: str) -> list[str]:
    """The requirements of an extra, with ``trajlib[...]`` self-references expanded."""
    out = []
    for req in project["optional-dependencies"][extra]:
        m = re.fullmatch(r"trajlib\[(.*)\]", req)
        out += [r for e in m.group(1).split(",") for r in _expand(project, e)] if m else [req]
    return out


def test_environment_yml_mirrors_pyproject():
    """environment.yml holds what `make test` installs: the core, and the dev extra expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = sorted(set(project["dependencies"] + _expand(project, "dev")))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(map(_norm, pip)) == sorted(map(_norm, declared))
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.replace("python", "") == project["requires-python"]


def test_readme_opens_with_the_two_commands_and_its_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert first_block.splitlines()[0].startswith("make book") and "make test" in first_block
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(b for b in blocks if "Recorder" in b)
    assert len(example.strip().splitlines()) <= 14
    step_level = next(b for b in blocks if "sketches()" in b)  # continues the example's session
    (tmp_path / "example.py").write_text(example + step_level)
    for _ in range(2):  # a re-run starts afresh: never analyses (or appends to) the old run silently
        out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "mds" in out.stdout and (tmp_path / "map.png").stat().st_size > 1000
        assert "consecutive_update_cos" in out.stdout and (tmp_path / "dense-map.png").stat().st_size > 1000
        assert len(list((tmp_path / "runs" / "mine").glob("ckpt-*.safetensors"))) == 11
    shell = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "trajlib inspect" in b)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for line in [ln.split("#")[0].strip() for ln in shell.splitlines()]:
        if line:  # each shell line of the README, verbatim, on the run the example recorded
            out = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
            assert out.returncode == 0, f"{line}: {out.stderr}"
            assert "mds" in out.stdout or "valid" in out.stdout


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "passed" in ci
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\n\t\$\(PY\) -m pytest", make, re.M)
    assert re.search(r"-m venv", make) and "pip install" in make
