"""trajlib.gram.blas: numpy's OpenBLAS ``dsyrk`` called directly (64-bit integer builds included)."""

import numpy as np
import pytest
import torch

from trajlib.gram import blas

pytestmark = pytest.mark.skipif(not blas.has_syrk(), reason="numpy's BLAS is not an OpenBLAS with CBLAS")


@pytest.mark.parametrize("T,m", [(1, 5), (7, 300), (64, 4096), (130, 33)])
def test_syrk_adds_the_lower_triangle_and_leaves_the_upper_alone(T, m):
    rng = np.random.default_rng(T)
    R = torch.from_numpy(rng.standard_normal((T, m)))
    G0 = rng.standard_normal((T, T))
    G = torch.from_numpy(G0.copy())
    blas.syrk_lower_add(R, G)
    blas.syrk_lower_add(R, G)  # accumulates (β = 1), as the engine does sub-block after sub-block
    want = G0 + 2 * (R.numpy() @ R.numpy().T)
    low = np.tril_indices(T)
    np.testing.assert_allclose(G.numpy()[low], want[low], rtol=1e-12, atol=1e-10)
    up = np.triu_indices(T, 1)
    np.testing.assert_array_equal(G.numpy()[up], G0[up])


def test_syrk_refuses_what_it_would_misread():
    G = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        blas.syrk_lower_add(torch.ones(4, 8, dtype=torch.float32), G)
    with pytest.raises(ValueError, match="C-contiguous"):
        blas.syrk_lower_add(torch.ones(8, 4, dtype=torch.float64).T, G)  # a transposed view
    with pytest.raises(ValueError, match="CPU"):  # a pointer that is not host memory would crash the process
        blas.syrk_lower_add(torch.ones(4, 8, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match=r"G \(3, 3\)"):
        blas.syrk_lower_add(torch.ones(4, 8, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64))
