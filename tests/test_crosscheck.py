"""Four implementations that must agree: bnlab.numpy, bnlab.torch, torch.nn.functional and
central finite differences. Outputs, dx, dgamma, dbeta and the running buffers after several
steps, every rank, float64 tightly and float32 within bnlab.tolerances, always with a random
upstream gradient.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import bnlab.numpy as bnp
from bnlab.numerical import numerical_gradient
from bnlab.tolerances import tolerance
from bnlab.torch.functional import batch_norm as bnlab_batch_norm
from conftest import SHAPES, make_inputs


def run_numpy(steps, gamma, beta, training, momentum, eps, running):
    """Forward/backward every step; returns the last step's outputs and the buffers."""
    c, dtype = steps[0][0].shape[1], steps[0][0].dtype
    rm, rv = (np.zeros(c, dtype), np.ones(c, dtype)) if running else (None, None)
    for x, dy in steps:
        y, cache = bnp.batch_norm_forward(x, gamma, beta, running_mean=rm, running_var=rv,
                                          training=training, momentum=momentum, eps=eps)
        dx, dgamma, dbeta = bnp.batch_norm_backward(dy, cache)
    return dict(y=y, dx=dx, dgamma=dgamma, dbeta=dbeta, running_mean=rm, running_var=rv)


def run_torch(fn, steps, gamma, beta, training, momentum, eps, running):
    """The same with a torch function of F.batch_norm's signature, gradients by autograd."""
    g, b = (None if v is None else torch.tensor(v, requires_grad=True) for v in (gamma, beta))
    c, dtype = steps[0][0].shape[1], torch.from_numpy(steps[0][0]).dtype
    rm, rv = (torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)) if running else (None, None)
    for x, dy in steps:
        xt = torch.tensor(x, requires_grad=True)
        y = fn(xt, rm, rv, g, b, training=training, momentum=momentum, eps=eps)
        for t in (g, b):
            if t is not None:
                t.grad = None
        y.backward(torch.tensor(dy))
    grad = lambda t: None if t is None else t.grad
    out = dict(y=y, dx=xt.grad, dgamma=grad(g), dbeta=grad(b), running_mean=rm, running_var=rv)
    return {k: None if v is None else v.detach().numpy() for k, v in out.items()}


def assert_all_close(actual, expected, dtype, m):
    for key, value in expected.items():
        if value is None:
            assert actual[key] is None, key
            continue
        assert actual[key].dtype == value.dtype, key
        np.testing.assert_allclose(actual[key], value, err_msg=key, **tolerance(dtype, m))


def make_steps(rng, shape, dtype, n_steps=3):
    return [make_inputs(rng, shape, dtype)[::3] for _ in range(n_steps)]  # (x, dy) pairs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_numpy_bnlab_torch_and_torch_nn_agree(rng, shape, dtype, training):
    _, gamma, beta, _ = make_inputs(rng, shape, dtype)
    steps = make_steps(rng, shape, dtype)
    args = (steps, gamma, beta, training, 0.2, 1e-5, True)
    m = np.prod(shape) // shape[1]
    reference = run_torch(F.batch_norm, *args)
    if not training:  # eval with the default buffers (0, 1): nothing to update
        assert np.all(reference["running_var"] == 1)
    assert_all_close(run_torch(bnlab_batch_norm, *args), reference, dtype, m)
    assert_all_close(run_numpy(*args), reference, dtype, m)


@pytest.mark.parametrize("shape", SHAPES)
def test_bnlab_torch_gradients_match_finite_differences(rng, shape):
    x, gamma, beta, dy = make_inputs(rng, shape)
    torch_out = run_torch(bnlab_batch_norm, [(x, dy)], gamma, beta, True, 0.1, 1e-5, False)

    def forward(x_, g_=gamma, b_=beta):
        return bnlab_batch_norm(torch.tensor(x_), None, None, torch.tensor(g_),
                                torch.tensor(b_), training=True).numpy()

    fd = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(torch_out["dx"], numerical_gradient(forward, x.copy(), dy), **fd)
    np.testing.assert_allclose(torch_out["dgamma"],
                               numerical_gradient(lambda g: forward(x, g), gamma.copy(), dy), **fd)
    np.testing.assert_allclose(torch_out["dbeta"],
                               numerical_gradient(lambda b: forward(x, gamma, b), beta.copy(), dy),
                               **fd)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_torch_autograd_gradcheck(rng, shape, training):
    x, gamma, beta, _ = make_inputs(rng, shape)
    c = shape[1]
    rm, rv = torch.tensor(rng.standard_normal(c)), torch.tensor(rng.uniform(0.5, 2, c))
    inputs = tuple(torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):  # 1st, 2nd order
        assert check(lambda x_, g_, b_: bnlab_batch_norm(x_, rm.clone(), rv.clone(), g_, b_,
                                                         training=training), inputs)


@given(n=st.integers(2, 4), c=st.integers(1, 4), spatial=st.lists(st.integers(1, 3), max_size=3),
       momentum=st.floats(0.0, 1.0), eps=st.sampled_from([1e-5, 1e-3, 0.5]),
       affine=st.booleans(), training=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_three_implementations_agree(n, c, spatial, momentum, eps, affine,
                                                 training, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    _, gamma, beta, _ = make_inputs(rng, shape)
    if not affine:
        gamma = beta = None
    steps = make_steps(rng, shape, np.float64, n_steps=2)
    args = (steps, gamma, beta, training, momentum, eps, True)
    reference = run_torch(F.batch_norm, *args)
    m = np.prod(shape) // c
    assert_all_close(run_torch(bnlab_batch_norm, *args), reference, np.float64, m)
    assert_all_close(run_numpy(*args), reference, np.float64, m)
