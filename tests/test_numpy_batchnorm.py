"""bnlab.numpy on its own: properties, finite differences, running statistics, errors.

The torch comparisons live in test_crosscheck.py; here the oracles are the definition's
properties and central finite differences, neither of which uses the code under test.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from bnlab.numerical import numerical_gradient
from bnlab.numpy import batch_norm_backward, batch_norm_forward
from bnlab.tolerances import tolerance
from conftest import SHAPES, make_inputs


def per_channel(a):
    """(N, C, *spatial) -> (C, m): each row holds one channel's m values."""
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_output_has_zero_mean_unit_variance_then_gamma_beta(rng, shape):
    x, gamma, beta, _ = make_inputs(rng, shape)
    y, _ = batch_norm_forward(x, None, None, eps=0.0 + 1e-12)
    rows = per_channel(y)
    np.testing.assert_allclose(rows.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(rows.var(axis=1), 1, rtol=1e-9)
    y_affine, _ = batch_norm_forward(x, gamma, beta, eps=1e-12)
    np.testing.assert_allclose(per_channel(y_affine).mean(axis=1), beta, atol=1e-12)
    np.testing.assert_allclose(per_channel(y_affine).std(axis=1), np.abs(gamma), rtol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_output_is_invariant_to_scaling_and_shifting_each_channel(rng, shape):
    x, gamma, beta, _ = make_inputs(rng, shape)
    scale = rng.uniform(0.5, 3.0, shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    y, _ = batch_norm_forward(x, gamma, beta, eps=1e-12)
    y2, _ = batch_norm_forward(scale * x + 7.0, gamma, beta, eps=1e-12)
    np.testing.assert_allclose(y2, y, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_backward_matches_central_finite_differences(rng, shape, training):
    x, gamma, beta, dy = make_inputs(rng, shape)
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])

    def forward(x_, gamma_=gamma, beta_=beta):
        return batch_norm_forward(x_, gamma_, beta_, running_mean=rm.copy(),
                                  running_var=rv.copy(), training=training)[0]

    _, cache = batch_norm_forward(x, gamma, beta, running_mean=rm.copy(),
                                  running_var=rv.copy(), training=training)
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    fd = dict(rtol=1e-6, atol=1e-8)  # central differences with h=1e-5 in float64
    np.testing.assert_allclose(dx, numerical_gradient(forward, x.copy(), dy), **fd)
    np.testing.assert_allclose(
        dgamma, numerical_gradient(lambda g: forward(x, g, beta), gamma.copy(), dy), **fd)
    np.testing.assert_allclose(
        dbeta, numerical_gradient(lambda b: forward(x, gamma, b), beta.copy(), dy), **fd)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_dx_is_orthogonal_to_ones_and_x_hat(rng, shape):
    """Per channel, sum(dx) = 0 and sum(dx * x_hat) = 0 for any dy (eq-bn-dx).

    The second identity is exact only as eps -> 0 (with eps, mean(x_hat^2) = var/(var+eps)),
    so eps is tiny here.
    """
    x, gamma, beta, dy = make_inputs(rng, shape)
    _, cache = batch_norm_forward(x, gamma, beta, eps=1e-12)
    dx, _, _ = batch_norm_backward(dy, cache)
    scale = np.abs(dx).max()
    np.testing.assert_allclose(per_channel(dx).sum(axis=1), 0, atol=1e-12 * scale * dx.size)
    np.testing.assert_allclose(per_channel(dx * cache.x_hat).sum(axis=1), 0,
                               atol=1e-12 * scale * dx.size)
    assert scale > 1e-3  # a random dy gives a dx that is far from zero


def test_dy_ones_gives_zero_dx_so_tests_must_use_random_dy(rng):
    x, gamma, beta, dy = make_inputs(rng, (8, 3))
    _, cache = batch_norm_forward(x, gamma, beta)
    dx_ones, _, _ = batch_norm_backward(np.ones_like(x), cache)
    np.testing.assert_allclose(dx_ones, 0, atol=1e-12)
    dx_random, _, _ = batch_norm_backward(dy, cache)
    assert np.abs(dx_random).max() > 0.01


def test_running_statistics_follow_torch_semantics(rng):
    """Several steps of eq-bn-running-mean / eq-bn-running-var, written out by hand."""
    momentum = 0.3
    rm, rv = np.zeros(3), np.ones(3)
    expected_rm, expected_rv = np.zeros(3), np.ones(3)
    for _ in range(4):
        x, gamma, beta, _ = make_inputs(rng, (2, 3, 4, 5))
        batch_norm_forward(x, gamma, beta, running_mean=rm, running_var=rv, momentum=momentum)
        values = per_channel(x)  # (C, m), m = 40
        expected_rm = (1 - momentum) * expected_rm + momentum * values.mean(axis=1)
        expected_rv = (1 - momentum) * expected_rv + momentum * values.var(axis=1, ddof=1)
    np.testing.assert_allclose(rm, expected_rm, rtol=1e-12)
    np.testing.assert_allclose(rv, expected_rv, rtol=1e-12)


def test_eval_uses_running_statistics_and_leaves_them_alone(rng):
    x, gamma, beta, _ = make_inputs(rng, (5, 3, 4))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    rm0, rv0 = rm.copy(), rv.copy()
    y, _ = batch_norm_forward(x, gamma, beta, running_mean=rm, running_var=rv, training=False)
    col = lambda v: v.reshape(1, 3, 1)  # (C,) -> (1, C, 1)
    expected = col(gamma) * (x - col(rm0)) / np.sqrt(col(rv0) + 1e-5) + col(beta)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_keeps_input_dtype(rng, dtype):
    x, gamma, beta, dy = make_inputs(rng, (4, 3, 2), dtype)
    y, cache = batch_norm_forward(x, gamma.astype(np.float64), beta)
    grads = batch_norm_backward(dy, cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)


def test_no_affine_returns_none_gradients_for_gamma_and_beta(rng):
    x, _, _, dy = make_inputs(rng, (6, 3))
    _, cache = batch_norm_forward(x, None, None)
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    assert dgamma is None and dbeta is None and dx.shape == x.shape


def test_float32_at_large_mean_matches_float64():
    """Two-pass statistics: the one-pass E[x^2] - E[x]^2 gives garbage at mean 1e4."""
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((64, 4, 8, 8)) + 1e4
    x32 = x64.astype(np.float32)
    y32, _ = batch_norm_forward(x32, None, None)
    y64, _ = batch_norm_forward(x32.astype(np.float64), None, None)
    assert np.abs(y32 - y64).max() < 1e-2
    one_pass_var = (x32 ** 2).mean(axis=(0, 2, 3)) - x32.mean(axis=(0, 2, 3)) ** 2
    assert np.abs(one_pass_var - 1).max() > 0.1  # the failure the two-pass form avoids


@given(n=st.integers(2, 5), c=st.integers(1, 4), spatial=st.lists(st.integers(1, 3), max_size=3),
       momentum=st.floats(0.0, 1.0), eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       affine=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_backward_matches_finite_differences(n, c, spatial, momentum, eps, affine, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    x, gamma, beta, dy = make_inputs(rng, shape)
    if not affine:
        gamma = beta = None
    rm, rv = np.zeros(c), np.ones(c)
    y, cache = batch_norm_forward(x, gamma, beta, running_mean=rm, running_var=rv,
                                  momentum=momentum, eps=eps)
    m = x.size // c
    mu = per_channel(x).mean(axis=1)
    np.testing.assert_allclose(rm, momentum * mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        rv, (1 - momentum) + momentum * per_channel(x).var(axis=1) * m / (m - 1), rtol=1e-12)
    dx, _, _ = batch_norm_backward(dy, cache)
    fd = numerical_gradient(lambda x_: batch_norm_forward(x_, gamma, beta, eps=eps)[0],
                            x.copy(), dy)
    np.testing.assert_allclose(dx, fd, rtol=1e-5, atol=1e-7)


# --- bad input: a ValueError that names what was expected and what came ---------------

BAD_INPUTS = [
    (dict(x=np.zeros(5)), "rank 2 to 5"),
    (dict(x=np.zeros((2, 3, 1, 1, 1, 1))), "rank 2 to 5"),
    (dict(x=np.zeros((4, 3), dtype=np.int64)), "floating-point"),
    (dict(gamma=np.ones(4)), r"gamma of shape \(3,\)"),
    (dict(beta=np.ones((3, 1))), r"beta of shape \(3,\)"),
    (dict(running_mean=np.zeros(2), running_var=np.ones(3)), r"running_mean of shape \(3,\)"),
    (dict(running_mean=np.zeros(3), running_var=np.ones(5)), r"running_var of shape \(3,\)"),
    (dict(running_mean=np.zeros(3)), "no running_var"),
    (dict(x=np.ones((1, 3))), "Expected more than 1 value per channel when training"),
    (dict(x=np.ones((1, 3, 1, 1))), "Expected more than 1 value per channel when training"),
    (dict(training=False), "got running_mean=None and running_var=None"),
    (dict(eps=0.0), "eps > 0"),
    (dict(eps=-1e-5), "eps > 0"),
    (dict(running_mean=[0.0, 0.0, 0.0], running_var=np.ones(3)), "NumPy array"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS)
def test_bad_input_raises_clear_value_error(overrides, message):
    args = dict(x=np.random.default_rng(0).standard_normal((4, 3)), gamma=np.ones(3),
                beta=np.zeros(3))
    args.update(overrides)
    kwargs = {k: args[k] for k in ("running_mean", "running_var", "training", "eps") if k in args}
    with pytest.raises(ValueError, match=message) as info:
        batch_norm_forward(args["x"], args["gamma"], args["beta"], **kwargs)
    assert "got" in str(info.value)


def test_backward_rejects_dy_of_another_shape(rng):
    x, gamma, beta, _ = make_inputs(rng, (4, 3))
    _, cache = batch_norm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match=r"dy of shape \(4, 3\).*got shape \(1, 3\)"):
        batch_norm_backward(np.ones((1, 3)), cache)


def test_one_value_per_channel_is_fine_in_eval():
    y, _ = batch_norm_forward(np.ones((1, 3)), None, None, running_mean=np.zeros(3),
                              running_var=np.ones(3), training=False)
    np.testing.assert_allclose(y, 1 / np.sqrt(1 + 1e-5))


def test_tolerance_grows_with_reduction_length_and_dtype():
    assert tolerance(np.float32, 4096)["rtol"] > tolerance(np.float32, 64)["rtol"]
    assert tolerance("float32")["rtol"] > 1000 * tolerance(np.float64)["rtol"]
    with pytest.raises(ValueError, match="float32 or float64"):
        tolerance(np.int32)
