"""The command line: inspect, gram, reproduce argument errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import random_walk, write_run

from trajlib.cli import main


def test_inspect_summarises_and_flags_problems(walk_run, capsys):
    run, _ = walk_run
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "T=9" in out and "valid" in out and "parameters" in out


def test_inspect_exit_status_reports_findings(tmp_path, rng, capsys):
    thetas = random_walk(rng, {"w": (5, 5)}, 4)
    thetas[2]["w"][1, 1] = np.nan
    run = write_run(tmp_path / "r", thetas)
    assert main(["inspect", str(run)]) == 1
    assert "NaN or Inf" in capsys.readouterr().out


def test_gram_prints_the_hallmarks_table_and_caches(walk_run, capsys):
    run, _ = walk_run
    assert main(["gram", str(run), "--group", "all", "--group", "layers"]) == 0
    out = capsys.readouterr().out
    assert "mds" in out and "conv" in out and "relative_mds" in out
    assert list(run.glob("gram-*.npz"))


def test_errors_name_the_culprit(walk_run, tmp_path, capsys):
    run, _ = walk_run
    assert main(["gram", str(run), "--group", "bogus"]) == 2
    assert "unknown parameter group 'bogus'" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 4
    assert "no such run directory" in capsys.readouterr().err
    (run / "manifest.json").write_text("[1, 2]")
    assert main(["inspect", str(run)]) == 3
    err = capsys.readouterr().err
    assert "invalid data" in err and "manifest.json" in err and len(err.strip().splitlines()) == 1
    from trajlib.paper.__main__ import main as paper_main

    with pytest.raises(SystemExit):
        paper_main(["reproduce", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_python_dash_m_entry_point(walk_run):
    out = subprocess.run([sys.executable, "-m", "trajlib", "inspect", str(walk_run[0]), "--no-hash"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Trajectory(" in out.stdout
