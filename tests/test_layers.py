"""Two layers: the library never imports the paper harness (import-linter contracts in
pyproject.toml), and the core installs and runs alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_import_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", out.stdout)


def test_the_contract_covers_every_library_module():
    """A new library module cannot slip past the first contract: it lists them all."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    library = {f"trajlib.{p.stem}" for p in (ROOT / "trajlib").glob("*.py") if not p.stem.startswith("__")}
    library |= {f"trajlib.{p.name}" for p in (ROOT / "trajlib").iterdir() if p.is_dir() and p.name != "paper"
                and (p / "__init__.py").exists()}
    assert set(contracts[0]["source_modules"]) == library
    assert contracts[0]["forbidden_modules"] == ["trajlib.paper"]


def test_the_contract_would_catch_a_library_module_importing_the_harness(tmp_path):
    """The check can fail: a copy of the package whose store.py imports the harness breaks it."""
    shutil.copytree(ROOT / "trajlib", tmp_path / "trajlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    store = tmp_path / "trajlib" / "store.py"
    store.write_text(store.read_text() + "\nfrom .paper import ledger  # noqa\n")
    exe = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(exe)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "BROKEN" in out.stdout


def test_core_dependencies_are_only_the_library_s():
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in PROJECT["dependencies"]}
    assert names == {"torch", "numpy", "pandas", "tqdm"}
    paper = " ".join(PROJECT["optional-dependencies"]["paper"])
    for heavy in ("papermill", "jupyter-book", "transformers", "torchvision"):
        assert heavy in paper and heavy not in " ".join(PROJECT["dependencies"])


@pytest.mark.slow
def test_core_installs_alone_and_runs_the_readme_example(tmp_path):
    """A fresh venv with trajlib (no deps) plus the core's declared dependencies and the
    ``plot`` extra, from the local index: the README's own-run example runs; the harness'
    dependencies are absent."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "book", "build", "*.egg-info",
                                                             "__pycache__", "runs", "results"))
    subprocess.run([*pip, "--no-deps", str(src)], check=True, capture_output=True, timeout=600)
    deps = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["plot"]
    subprocess.run([*pip, *deps], check=True, capture_output=True, timeout=1200)
    readme = (ROOT / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "Recorder" in b)
    (tmp_path / "example.py").write_text(example)
    out = subprocess.run([py, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "mds" in out.stdout and (tmp_path / "map.png").stat().st_size > 1000
    absent = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('papermill', 'transformers', "
                             "'torchvision', 'jupyter_book', 'sklearn', 'yaml', 'huggingface_hub') if u.find_spec(m)])"],
                            capture_output=True, text=True, check=True)
    assert absent.stdout.strip() == "[]"
    cli = subprocess.run([str(venv / "bin" / "trajlib"), "inspect", "runs/mine"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "valid" in cli.stdout, cli.stdout + cli.stderr
    optional = subprocess.run([py, "-c", "import trajlib.shards, trajlib.integrations.session\n"
                               "try:\n    import trajlib.integrations.hf\nexcept ImportError as e:\n    print(e)"],
                              cwd=tmp_path, capture_output=True, text=True)
    assert optional.returncode == 0 and "pip install 'trajlib[hf]'" in optional.stdout, optional.stderr
    hub = subprocess.run([py, "-c", "import trajlib.sources as s; s.open_hub('a/b', ['step0'])"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert "pip install 'trajlib[hub]'" in hub.stderr
