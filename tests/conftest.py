import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU, bnlab.kernels' Triton kernels run in Triton's interpreter on CPU tensors
# (tests/test_kernels.py). Triton reads TRITON_INTERPRET where a kernel is defined
# (@triton.jit), i.e. when bnlab.kernels is first imported, so it is set here, before any test
# module; a value the user set (e.g. TRITON_INTERPRET=0) is kept. Nothing else here uses
# triton: "auto" picks the kernels only for CUDA inputs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Deterministic property tests with no per-example deadline (torch's first call is slow).
settings.register_profile(
    "bnlab", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bnlab")

# Shapes of every rank BatchNorm accepts: (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W).
SHAPES = [(16, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 4)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_inputs(rng, shape, dtype=np.float64):
    """Shifted, scaled input, random gamma/beta and a RANDOM upstream gradient."""
    c = shape[1]
    x = (5 * rng.standard_normal(shape) + 12).astype(dtype)
    gamma = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


def pytest_terminal_summary(terminalreporter):
    """The mistake catalog's catch rate, when tests/test_grade_catalog.py graded it."""
    module = next((m for name, m in list(sys.modules.items())
                   if name.rsplit(".", 1)[-1] == "test_grade_catalog"), None)
    result = getattr(module, "CATCH_RATE", None)
    if result:
        terminalreporter.write_sep("-", "mistake catalog")
        terminalreporter.write_line(result["line"])
