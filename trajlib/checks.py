"""What ``trajlib inspect`` reports about a trajectory: files whose hash differs from the
manifest, duplicate checkpoints (byte-identical weights, which public suites serve), and the
file, tensor and step of any NaN or Inf."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .formats import ST_DTYPES, sha256_file, to_float64


def find_nonfinite(traj, names: Iterable[str] | None = None, block: int = 1 << 22) -> tuple[int, str] | None:
    """(checkpoint index, tensor name) of the first NaN/Inf in ``traj``, or None. Reads everything
    in slabs of ``block`` elements."""
    for t in range(traj.T):
        for name in names or traj.names:
            n = traj.numel(name)
            for a in range(0, n, block):
                buf = np.empty(min(block, n - a), ST_DTYPES[traj.dtypes[name]])
                traj.read(t, name, a, a + buf.size, buf)
                if not np.isfinite(to_float64(buf, traj.dtypes[name])).all():
                    return t, name
    return None


def validate(traj, *, hashes: bool = True, finite: bool = True) -> list[str]:
    """Findings a user should know about, one line each naming the file or steps; [] if clean."""
    findings = []
    if hashes:
        for c in traj.checkpoints:
            path = c.reader.path
            if c.file_sha256 is not None:
                expect, got = c.file_sha256, sha256_file(path)
            elif c.content_sha256 is not None:
                expect, got = c.content_sha256, c.reader.content_sha256()
            else:
                continue
            if got != expect:
                findings.append(f"{path}: sha256 {got[:12]}… differs from the manifest's {expect[:12]}… "
                                f"(file changed or corrupt)")
        for ts in traj.duplicates():
            findings.append("duplicate checkpoints (identical weights): "
                            + ", ".join(f"step {traj.checkpoints[t].step}" for t in ts))
    if finite:
        bad = find_nonfinite(traj)
        if bad is not None:
            t, name = bad
            findings.append(f"{traj.file_of(t, name)}: tensor {name!r} of step {traj.checkpoints[t].step} "
                            f"holds NaN or Inf")
    return findings
