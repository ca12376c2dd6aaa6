"""The fused Triton Gram kernel: run by Triton's interpreter on the CPU (no GPU needed) against
the float64 oracle, and on a GPU when one is present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import random_walk, write_run

import trajlib

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import trajlib
    from trajlib import hallmarks as H
    sys.path.insert(0, sys.argv[2])
    from conftest import oracle
    out = {}
    for run in sys.argv[1].split(","):
        traj = trajlib.open_trajectory(run)
        st = trajlib.gram(traj, groups=["all", "layers"], device="cpu", kernel="triton", cache=False,
                          progress=False, block_bytes=1 << 14)
        X = np.stack([traj.flat(t) for t in range(traj.T)])
        ref = oracle(X)
        G = st["all"]
        err = {k: float(np.max(np.abs(getattr(H, k)(G) - ref[k]))) for k in
               ("trajectory_map", "relative_map", "update_map", "consecutive_update_cos", "update_param_cos")}
        err.update({k: float(np.max(np.abs(getattr(H, k)(G) / ref[k] - 1))) for k in ("param_norm", "step_norm")})
        err["groups_sum"] = float(np.max(np.abs(sum(st[g] for g in st.groups if g != "all") - G) / np.abs(G).max()))
        err["kernel"] = st.meta["kernel"]
        out[run] = err
    print(json.dumps(out))
""")


def test_kernel_matches_fp64_oracle_under_the_interpreter(tmp_path, rng):
    """Random walk, a long T that spans several row tiles, and steps of 1e-5 of ‖θ‖."""
    walk = write_run(tmp_path / "walk", random_walk(rng, {"a.w": (30, 50), "a.b": (30,), "b.w": (700,)}, 9))
    long = write_run(tmp_path / "long", random_walk(rng, {"a.w": (40, 30), "b.w": (333,)}, 70))
    theta, tiny = rng.standard_normal(5000), []
    for _ in range(8):
        tiny.append({"w.x": theta.astype(np.float32)})
        theta = theta + 1e-5 * np.linalg.norm(theta) / np.sqrt(theta.size) * rng.standard_normal(theta.size)
    tiny_run = write_run(tmp_path / "tiny", tiny)
    script = tmp_path / "kernel_check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, str(script), f"{walk},{long},{tiny_run}", str(os.path.dirname(__file__))],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for run, err in out.items():
        assert err.pop("kernel") == "triton"
        assert err.pop("groups_sum") < 1e-12, run
        for name, e in err.items():
            assert e <= 1e-6, f"{run}: {name} error {e:.2e}"


def test_kernel_option_errors_without_a_gpu_or_interpreter(walk_run):
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("a GPU or the interpreter is present")
    with pytest.raises(ValueError, match="kernel='triton' cannot run on cpu"):
        trajlib.gram(trajlib.open_trajectory(walk_run[0]), kernel="triton", cache=False)
    with pytest.raises(ValueError, match="kernel='fast'"):
        trajlib.gram(trajlib.open_trajectory(walk_run[0]), kernel="fast", cache=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_on_the_gpu_matches_the_cpu_reference(walk_run):
    traj = trajlib.open_trajectory(walk_run[0])
    cpu = trajlib.gram(traj, groups=["all", "layers"], cache=False, progress=False)
    gpu = trajlib.gram(traj, groups=["all", "layers"], device="cuda", kernel="triton", cache=False, progress=False)
    from trajlib import hallmarks as H

    for g in cpu.groups:
        assert np.max(np.abs(H.trajectory_map(gpu[g]) - H.trajectory_map(cpu[g]))) < 1e-6
        assert np.max(np.abs(H.update_map(gpu[g]) - H.update_map(cpu[g]))) < 1e-6


@pytest.mark.parametrize("arch", [80, 90])
def test_kernel_compiles_to_tensor_core_code_without_a_gpu(arch):
    """Triton compiles for a CUDA target with no device present: the tf32x3 path must lower to
    tensor-core mma instructions and float64 atomics (Ampere and Hopper)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trajlib.gram import triton_kernel as triton_gram

    sig = {"x_ptr": "*fp32", "g_ptr": "*fp64", "T": "i32", "n": "i32", "stride_x": "i32",
           "BT": "constexpr", "BK": "constexpr", "CH": "constexpr", "PRECISION": "constexpr"}
    src = ASTSource(fn=triton_gram._kernel(), signature=sig,
                    constexprs={"BT": triton_gram.BLOCK_T, "BK": triton_gram.BLOCK_K, "CH": triton_gram.CHUNK,
                                "PRECISION": "tf32x3"})
    ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm["ptx"]
    assert "mma" in ptx and "atom.global" in ptx and ".f64" in ptx
