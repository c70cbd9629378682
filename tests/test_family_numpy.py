"""bnlab.numpy's normalization family: LayerNorm, GroupNorm, InstanceNorm, RMSNorm against
torch.nn.functional; Batch Renorm and Ghost BatchNorm, which torch lacks, against
independent implementations written here from the papers; all against central finite
differences; properties; errors. Always a random upstream gradient.
"""

from math import prod

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import bnlab.numpy as bnp
from bnlab.numerical import numerical_gradient
from bnlab.tolerances import tolerance
from conftest import make_inputs

FD = dict(rtol=1e-6, atol=1e-8)  # central differences with h=1e-5 in float64


def rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def shifted(rng, shape, dtype=np.float64):
    return (5 * rng.standard_normal(shape) + 12).astype(dtype)


def torch_grads(fn, x, params, dy):
    """y and gradients of sum(fn(x, *params) * dy) by torch autograd, as NumPy arrays."""
    ts = [None if p is None else torch.tensor(p, requires_grad=True) for p in (x, *params)]
    y = fn(*ts)
    y.backward(torch.tensor(dy))
    return [y.detach().numpy()] + [None if t is None else t.grad.numpy() for t in ts]


def centring_factor(rows):
    """bnlab.tolerances: centring rows with |mean| >> std loses log10(|mean| / std) digits
    in any implementation, so tolerances scale by 1 + |mean| / std. Small reductions of
    5 * randn + 12 (LayerNorm over 2 numbers) can have a small std. rows: (R, m)."""
    std = rows.std(axis=1)
    ratio = np.abs(rows.mean(axis=1))[std > 0] / std[std > 0]
    return 1.0 + (ratio.max() if ratio.size else 0.0)


def assert_case(case, dtype):
    """case: (ours, theirs, reduction length, centring factor) from a *_case function."""
    ours, theirs, m, factor = case
    assert_close_all(ours, theirs, dtype, m, factor)


def assert_close_all(actual, expected, dtype, m, factor=1.0):
    assert len(actual) == len(expected)
    tol = {k: v * factor for k, v in tolerance(dtype, m).items()}
    for i, (a, e) in enumerate(zip(actual, expected)):
        if e is None:
            assert a is None, i
            continue
        assert a.dtype == np.dtype(dtype) and a.shape == e.shape, i
        np.testing.assert_allclose(a, e, err_msg=f"output {i}", **tol)


# --- the four with a torch.nn.functional twin: (numpy forward/backward, torch twin) --------

def layer_norm_case(rng, shape, k, dtype, affine=True):
    ns = shape[len(shape) - k:]
    x, dy = shifted(rng, shape, dtype), rand(rng, shape, dtype)
    g = (1 + 0.5 * rand(rng, ns)).astype(dtype) if affine else None
    b = rand(rng, ns, dtype) if affine else None
    ours_y, cache = bnp.layer_norm_forward(x, ns, g, b)
    ours = [ours_y, *bnp.layer_norm_backward(dy, cache)]
    theirs = torch_grads(lambda x_, g_, b_: F.layer_norm(x_, ns, g_, b_), x, (g, b), dy)
    return ours, theirs, prod(ns), centring_factor(x.reshape(-1, prod(ns)))


def group_norm_case(rng, shape, groups, dtype, affine=True):
    x, gamma, beta, dy = make_inputs(rng, shape, dtype)
    g, b = (gamma, beta) if affine else (None, None)
    ours_y, cache = bnp.group_norm_forward(x, groups, g, b)
    ours = [ours_y, *bnp.group_norm_backward(dy, cache)]
    theirs = torch_grads(lambda x_, g_, b_: F.group_norm(x_, groups, g_, b_), x, (g, b), dy)
    return ours, theirs, prod(shape[1:]) // groups, centring_factor(x.reshape(
        shape[0] * groups, -1))  # (N, C, *spatial) -> (N * G, C // G * prod(spatial))


def rms_norm_case(rng, shape, k, dtype, affine=True):
    ns = shape[len(shape) - k:]
    x, dy = shifted(rng, shape, dtype), rand(rng, shape, dtype)
    g = (1 + 0.5 * rand(rng, ns)).astype(dtype) if affine else None
    ours_y, cache = bnp.rms_norm_forward(x, ns, g)
    ours = [ours_y, *bnp.rms_norm_backward(dy, cache)]
    theirs = torch_grads(lambda x_, g_: F.rms_norm(x_, ns, g_), x, (g,), dy)
    return ours, theirs, prod(ns), 1.0  # nothing is centred


SHAPES = [(6, 12), (4, 6, 5), (2, 6, 3, 4), (2, 6, 2, 3, 2)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2])
def test_layer_norm_matches_torch(rng, shape, k, dtype):
    assert_case(layer_norm_case(rng, shape, k, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm_matches_torch(rng, shape, groups, dtype):
    ours, theirs, m, factor = group_norm_case(rng, shape, groups, dtype)
    assert_close_all(ours, theirs, dtype, m, factor)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2])
def test_rms_norm_matches_torch(rng, shape, k, dtype):
    assert_case(rms_norm_case(rng, shape, k, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_default_eps_is_the_dtypes_machine_epsilon(rng, dtype):
    """With mean(x^2) ~ 1e-14, eps = finfo(dtype).eps changes the output: compare to torch."""
    x = (1e-7 * rng.standard_normal((3, 8))).astype(dtype)
    y, _ = bnp.rms_norm_forward(x, (8,), None)
    expected = F.rms_norm(torch.tensor(x), [8]).numpy()
    np.testing.assert_allclose(y, expected, **tolerance(dtype, 8))
    explicit = x / np.sqrt(np.square(x).mean(-1, keepdims=True) + np.finfo(dtype).eps)
    np.testing.assert_allclose(y, explicit, **tolerance(dtype, 8))
    without_eps = x / np.sqrt(np.square(x).mean(-1, keepdims=True))
    assert np.abs(y - without_eps).max() > 1e-3 * np.abs(y).max()  # eps matters here


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2)])
@pytest.mark.parametrize("mode", ["batch", "running", "eval"])
def test_instance_norm_matches_torch_with_running_statistics(rng, shape, dtype, mode):
    """batch: no buffers; running: buffers updated over 3 steps; eval: use_input_stats=False."""
    c = shape[1]
    _, gamma, beta, _ = make_inputs(rng, shape, dtype)
    rm, rv = rand(rng, c, dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    running = mode != "batch"
    use_input_stats = mode != "eval"
    for _ in range(3):
        x, dy = shifted(rng, shape, dtype), rand(rng, shape, dtype)
        y, cache = bnp.instance_norm_forward(
            x, gamma, beta, running_mean=rm if running else None,
            running_var=rv if running else None, use_input_stats=use_input_stats, momentum=0.3)
        ours = [y, *bnp.instance_norm_backward(dy, cache)]
        theirs = torch_grads(
            lambda x_, g_, b_: F.instance_norm(x_, rm_t if running else None,
                                               rv_t if running else None, g_, b_,
                                               use_input_stats, 0.3), x, (gamma, beta), dy)
        assert_close_all(ours, theirs, dtype, prod(shape[2:]))
    np.testing.assert_allclose(rm, rm_t.numpy(), **tolerance(dtype, 100))
    np.testing.assert_allclose(rv, rv_t.numpy(), **tolerance(dtype, 100))
    if mode == "running":
        assert np.abs(rv - rv_t.numpy()).max() < 1e-3 and not np.allclose(rm, 0)


def test_instance_norm_running_update_is_the_batch_average_of_instance_statistics(rng):
    """eq-in-running written out by hand: average over N of each instance's mean and
    unbiased variance (spatial size L, factor L / (L - 1))."""
    x = shifted(rng, (5, 3, 4))
    rm, rv = np.zeros(3), np.ones(3)
    bnp.instance_norm_forward(x, None, None, running_mean=rm, running_var=rv, momentum=0.25)
    np.testing.assert_allclose(rm, 0.25 * x.mean(axis=2).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(axis=2, ddof=1).mean(axis=0), rtol=1e-12)


@settings(max_examples=25)
@given(n=st.integers(1, 4), c=st.sampled_from([1, 2, 4, 6]), spatial=st.lists(
    st.integers(1, 3), max_size=3), groups_pick=st.integers(0, 5), k=st.integers(1, 2),
       eps=st.sampled_from([1e-5, 1e-2]), affine=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_layer_group_rms_match_torch(n, c, spatial, groups_pick, k, eps, affine,
                                                seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    divisors = [g for g in range(1, c + 1) if c % g == 0]
    groups = divisors[groups_pick % len(divisors)]
    k = min(k, len(shape) - 1)
    # Centred reductions of ONE number are degenerate (x - mu = 0 exactly here, while torch's
    # x * rstd - mu * rstd leaves rounding amplified by 1/sqrt(eps)): compared separately.
    if c // groups * prod(spatial) > 1:
        assert_case(group_norm_case(rng, shape, groups, np.float64, affine), np.float64)
    if prod(shape[len(shape) - k:]) > 1:
        assert_case(layer_norm_case(rng, shape, k, np.float64, affine), np.float64)
    assert_case(rms_norm_case(rng, shape, k, np.float64, affine), np.float64)


def test_groups_of_one_number_give_beta_and_zero_dx(rng):
    """GroupNorm with C groups on (N, C): each group is one number, x - mu = 0 exactly."""
    x, gamma, beta, dy = make_inputs(rng, (4, 3))
    y, cache = bnp.group_norm_forward(x, 3, gamma, beta)
    np.testing.assert_array_equal(y, np.broadcast_to(beta, y.shape))
    dx, dgamma, dbeta = bnp.group_norm_backward(dy, cache)
    np.testing.assert_array_equal(dx, 0)
    np.testing.assert_array_equal(dgamma, 0)
    np.testing.assert_allclose(dbeta, dy.sum(0), rtol=1e-15)
    torch_y = F.group_norm(torch.tensor(x), 3, torch.tensor(gamma), torch.tensor(beta))
    np.testing.assert_allclose(y, torch_y.numpy(), atol=1e-10)  # torch: rounding * 316


# --- finite differences (float64), every member ------------------------------------------

def check_fd(forward, backward_grads, x, params, dy):
    """Compare each analytic gradient with central differences of L = sum(forward * dy)."""
    arrays = [x, *params]
    for i, analytic in enumerate(backward_grads):
        if analytic is None:
            continue

        def f(v, i=i):
            args = list(arrays)
            args[i] = v
            return forward(*args)

        np.testing.assert_allclose(analytic, numerical_gradient(f, arrays[i].copy(), dy),
                                   err_msg=f"gradient {i}", **FD)


FD_CASES = {
    "layer_norm": (lambda x, g, b: bnp.layer_norm_forward(x, x.shape[-2:], g, b),
                   bnp.layer_norm_backward, "trailing2"),
    "group_norm": (lambda x, g, b: bnp.group_norm_forward(x, 2, g, b),
                   bnp.group_norm_backward, "channel"),
    "instance_norm": (lambda x, g, b: bnp.instance_norm_forward(x, g, b),
                      bnp.instance_norm_backward, "channel"),
    "ghost_batch_norm": (lambda x, g, b: bnp.ghost_batch_norm_forward(
        x, g, b, virtual_batch_size=2), bnp.ghost_batch_norm_backward, "channel"),
}


@pytest.mark.parametrize("name", FD_CASES)
@pytest.mark.parametrize("shape", [(4, 4, 3), (4, 2, 2, 3)])
def test_backward_matches_finite_differences(rng, name, shape):
    forward, backward, params = FD_CASES[name]
    pshape = shape[-2:] if params == "trailing2" else (shape[1],)
    x, dy = shifted(rng, shape), rand(rng, shape)
    g, b = 1 + 0.5 * rand(rng, pshape), rand(rng, pshape)
    _, cache = forward(x, g, b)
    check_fd(lambda *a: forward(*a)[0], backward(dy, cache), x, (g, b), dy)


@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 4)])
def test_rms_norm_backward_matches_finite_differences(rng, shape):
    x, dy = shifted(rng, shape), rand(rng, shape)
    g = 1 + 0.5 * rand(rng, shape[-1])
    forward = lambda x_, g_: bnp.rms_norm_forward(x_, shape[-1], g_, eps=1e-6)[0]
    _, cache = bnp.rms_norm_forward(x, shape[-1], g, eps=1e-6)
    check_fd(forward, bnp.rms_norm_backward(dy, cache), x, (g,), dy)


def test_instance_norm_eval_backward_matches_finite_differences(rng):
    x, dy = shifted(rng, (3, 2, 4)), rand(rng, (3, 2, 4))
    g, b, rm, rv = 1 + rand(rng, 2), rand(rng, 2), rand(rng, 2), rng.uniform(0.5, 2, 2)

    def forward(x_, g_, b_):
        return bnp.instance_norm_forward(x_, g_, b_, running_mean=rm, running_var=rv,
                                         use_input_stats=False)

    check_fd(lambda *a: forward(*a)[0], bnp.instance_norm_backward(dy, forward(x, g, b)[1]),
             x, (g, b), dy)


# --- properties ------------------------------------------------------------------------

def test_each_group_has_zero_mean_unit_variance(rng):
    x = shifted(rng, (3, 6, 4, 5))
    y, _ = bnp.group_norm_forward(x, 3, None, None, eps=1e-12)
    groups = y.reshape(3, 3, -1)  # (N, C, H, W) -> (N, G, C // G * H * W)
    np.testing.assert_allclose(groups.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(groups.var(-1), 1, rtol=1e-9)


def test_layer_norm_is_invariant_to_scaling_and_shifting_each_sample(rng):
    x, g, b = shifted(rng, (4, 3, 5)), rand(rng, (3, 5)), rand(rng, (3, 5))
    scale, shift = rng.uniform(0.5, 3, (4, 1, 1)), rng.standard_normal((4, 1, 1))
    y, _ = bnp.layer_norm_forward(x, (3, 5), g, b, eps=1e-12)
    y2, _ = bnp.layer_norm_forward(scale * x + shift, (3, 5), g, b, eps=1e-12)
    np.testing.assert_allclose(y2, y, rtol=1e-8, atol=1e-8)


def test_rms_norm_rows_have_unit_mean_square_and_are_not_shift_invariant(rng):
    x = shifted(rng, (4, 8))
    y, _ = bnp.rms_norm_forward(x, 8, None, eps=1e-12)
    np.testing.assert_allclose(np.square(y).mean(-1), 1, rtol=1e-9)
    y_scaled, _ = bnp.rms_norm_forward(3.0 * x, 8, None, eps=1e-12)
    np.testing.assert_allclose(y_scaled, y, rtol=1e-9)
    y_shifted, _ = bnp.rms_norm_forward(x + 1.0, 8, None, eps=1e-12)
    assert np.abs(y_shifted - y).max() > 1e-3  # no mean is removed: a shift shows


def test_centered_backward_is_orthogonal_to_ones_and_x_hat_per_group(rng):
    x, g, b, dy = make_inputs(rng, (3, 6, 5))
    _, cache = bnp.group_norm_forward(x, 2, None, None, eps=1e-12)
    dx, _, _ = bnp.group_norm_backward(dy, cache)
    rows = lambda a: a.reshape(3, 2, -1)  # (N, C, L) -> (N, G, C // G * L)
    np.testing.assert_allclose(rows(dx).sum(-1), 0, atol=1e-10)
    np.testing.assert_allclose((rows(dx) * rows(cache.x_hat)).sum(-1), 0, atol=1e-10)
    assert np.abs(dx).max() > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_and_gradients_keep_the_input_dtype(rng, dtype):
    x, g, b, dy = make_inputs(rng, (4, 2, 3), dtype)
    g64, b64 = g.astype(np.float64), b.astype(np.float64)
    rm, rv = np.zeros(2), np.ones(2)
    results = [
        (bnp.layer_norm_forward(x, 3, None, None), bnp.layer_norm_backward),
        (bnp.group_norm_forward(x, 2, g64, b64), bnp.group_norm_backward),
        (bnp.instance_norm_forward(x, g64, b64), bnp.instance_norm_backward),
        (bnp.rms_norm_forward(x, (2, 3), np.ones((2, 3))), bnp.rms_norm_backward),
        (bnp.ghost_batch_norm_forward(x, g64, b64, virtual_batch_size=2),
         bnp.ghost_batch_norm_backward),
        (bnp.batch_renorm_forward(x, g64, b64, running_mean=rm, running_var=rv),
         bnp.batch_renorm_backward),
    ]
    for (y, cache), backward in results:
        assert y.dtype == dtype
        assert all(gr is None or gr.dtype == dtype for gr in backward(dy, cache))


# --- Batch Renormalization: against the paper, written here ------------------------------

def paper_batch_renorm(x, gamma, beta, mu, var, rmax, dmax, eps, r=None, d=None):
    """Ioffe (2017), Algorithm 1, per channel on (C, m) rows. mu, var: running statistics.
    With r and d given, they are used as they are (the function with r, d frozen)."""
    rows = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)  # (N, C, *spatial) -> (C, m)
    mu_b = rows.mean(axis=1)
    sigma_b = np.sqrt(((rows - mu_b[:, None]) ** 2).mean(axis=1) + eps)
    sigma = np.sqrt(var + eps)
    if r is None:
        r = np.clip(sigma_b / sigma, 1 / rmax, rmax)
        d = np.clip((mu_b - mu) / sigma, -dmax, dmax)
    x_hat = (rows - mu_b[:, None]) / sigma_b[:, None] * r[:, None] + d[:, None]
    y_rows = gamma[:, None] * x_hat + beta[:, None]
    y = np.moveaxis(y_rows.reshape((x.shape[1], x.shape[0]) + x.shape[2:]), 0, 1)
    return y, r, d


def renorm_setup(rng, shape, spread=1.0):
    """Input, parameters, dy and running statistics near the batch's (r, d unclipped)."""
    x, gamma, beta, dy = make_inputs(rng, shape)
    c = shape[1]
    rows = np.moveaxis(x, 1, 0).reshape(c, -1)
    rm = rows.mean(axis=1) + spread * rng.uniform(-1, 1, c) * rows.std(axis=1)
    rv = rows.var(axis=1) * rng.uniform(0.6, 1.6, c) ** (2 * spread)
    return x, gamma, beta, dy, rm, rv


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 3)])
def test_batch_renorm_matches_the_paper_and_updates_running_statistics(rng, shape):
    x, gamma, beta, _, rm, rv = renorm_setup(rng, shape, spread=2.0)
    rm0, rv0 = rm.copy(), rv.copy()
    y, cache = bnp.batch_renorm_forward(x, gamma, beta, running_mean=rm, running_var=rv,
                                        momentum=0.05, rmax=1.5, dmax=0.5)
    expected, r, d = paper_batch_renorm(x, gamma, beta, rm0, rv0, 1.5, 0.5, 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.r, r, rtol=1e-12)
    np.testing.assert_allclose(cache.d, d, rtol=1e-12, atol=1e-14)
    assert np.any(np.abs(r - 1) > 0.05) and np.any(np.abs(d) > 0.05)
    assert np.any(r == 1.5) or np.any(r == 1 / 1.5) or np.any(np.abs(d) == 0.5)  # some clip
    rows = np.moveaxis(x, 1, 0).reshape(shape[1], -1)
    np.testing.assert_allclose(rm, 0.95 * rm0 + 0.05 * rows.mean(1), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.95 * rv0 + 0.05 * rows.var(1, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4), (2, 2, 3, 2)])
def test_batch_renorm_backward_is_the_gradient_with_r_and_d_frozen(rng, shape):
    """Finite differences of the paper's function with r and d fixed at the forward's values:
    exactly what 'r and d are constants in the backward pass' means."""
    x, gamma, beta, dy, rm, rv = renorm_setup(rng, shape)
    y, cache = bnp.batch_renorm_forward(x, gamma, beta, running_mean=rm.copy(),
                                        running_var=rv.copy(), rmax=10.0, dmax=10.0)
    r, d = cache.r, cache.d
    assert np.all((r > 1 / 10) & (r < 10) & (np.abs(d) < 10))  # unclipped: r, d depend on x
    assert np.all(np.abs(r - 1) > 1e-3)

    def frozen(x_, g_=gamma, b_=beta):
        return paper_batch_renorm(x_, g_, b_, rm, rv, None, None, 1e-5, r, d)[0]

    np.testing.assert_allclose(frozen(x), y, rtol=1e-12, atol=1e-12)  # same point, same value
    dx, dgamma, dbeta = bnp.batch_renorm_backward(dy, cache)
    check_fd(frozen, (dx, dgamma, dbeta), x, (gamma, beta), dy)

    # The full derivative (r and d following x) is different: the test can tell them apart.
    def unfrozen(x_):
        return bnp.batch_renorm_forward(x_, gamma, beta, running_mean=rm.copy(),
                                        running_var=rv.copy(), rmax=10.0, dmax=10.0)[0]

    assert np.abs(numerical_gradient(unfrozen, x.copy(), dy) - dx).max() > 1e-3


def test_batch_renorm_when_clipped_r_and_d_are_constant_so_plain_fd_applies(rng):
    """Running statistics far from the batch's: r = 1/rmax and d = +-dmax, locally constant,
    so finite differences of bnlab's own forward must equal the backward (r != 1, d != 0)."""
    x, gamma, beta, dy = make_inputs(rng, (5, 3, 2))
    rm, rv = np.array([-500.0, 600.0, 400.0]), np.full(3, 1e4)

    def forward(x_, g_=gamma, b_=beta):
        return bnp.batch_renorm_forward(x_, g_, b_, running_mean=rm.copy(),
                                        running_var=rv.copy(), rmax=2.0, dmax=1.5)

    _, cache = forward(x)
    np.testing.assert_array_equal(cache.r, 0.5)
    np.testing.assert_array_equal(np.abs(cache.d), 1.5)
    check_fd(lambda *a: forward(*a)[0], bnp.batch_renorm_backward(dy, cache), x,
             (gamma, beta), dy)


def test_batch_renorm_eval_is_batch_norm_eval_and_leaves_buffers(rng):
    x, gamma, beta, dy, rm, rv = renorm_setup(rng, (4, 3, 2))
    rm0, rv0 = rm.copy(), rv.copy()
    y, cache = bnp.batch_renorm_forward(x, gamma, beta, running_mean=rm, running_var=rv,
                                        training=False)
    col = lambda v: v.reshape(1, 3, 1)  # (C,) -> (1, C, 1)
    np.testing.assert_allclose(y, col(gamma) * (x - col(rm0)) / np.sqrt(col(rv0) + 1e-5)
                               + col(beta), rtol=1e-12)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    dx, _, _ = bnp.batch_renorm_backward(dy, cache)
    np.testing.assert_allclose(dx, dy * col(gamma) / np.sqrt(col(rv0) + 1e-5), rtol=1e-12)


def test_batch_renorm_schedule_follows_the_paper():
    assert bnp.batch_renorm_schedule(0) == (1.0, 0.0)
    assert bnp.batch_renorm_schedule(5000) == (1.0, 0.0)
    rmax, dmax = bnp.batch_renorm_schedule(15000)
    assert rmax == pytest.approx(1 + 2 * 10000 / 35000) and dmax == pytest.approx(2.5)
    assert bnp.batch_renorm_schedule(25000)[1] == 5.0
    assert bnp.batch_renorm_schedule(40000) == (3.0, 5.0)
    assert bnp.batch_renorm_schedule(10**6) == (3.0, 5.0)
    assert bnp.batch_renorm_schedule(20, warmup=10, rmax_steps=30, dmax_steps=20) == (2.0, 5.0)
    with pytest.raises(ValueError, match="warmup < rmax_steps"):
        bnp.batch_renorm_schedule(0, warmup=10, rmax_steps=5)


# --- Ghost BatchNorm: against torch's batch_norm applied to each virtual batch -----------

def chunked_torch_batch_norm(x, gamma, beta, dy, rm, rv, v, momentum):
    """The definition: F.batch_norm on each run of v samples in turn (torch autograd)."""
    xt, gt, bt_ = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    y = torch.cat([F.batch_norm(chunk, rm, rv, gt, bt_, training=True, momentum=momentum)
                   for chunk in xt.split(v)])
    y.backward(torch.tensor(dy))
    return [y.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt_.grad.numpy()]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, v", [((12, 3), 4), ((8, 3, 5), 2), ((6, 3, 2, 3), 3),
                                      ((4, 2, 2, 2, 3), 2)])
def test_ghost_batch_norm_is_batch_norm_per_virtual_batch(rng, shape, v, dtype):
    c = shape[1]
    _, gamma, beta, _ = make_inputs(rng, shape, dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    rm_t, rv_t = torch.zeros(c, dtype=torch.from_numpy(rm).dtype), torch.ones(
        c, dtype=torch.from_numpy(rv).dtype)
    for _ in range(2):
        x, dy = shifted(rng, shape, dtype), rand(rng, shape, dtype)
        y, cache = bnp.ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size=v,
                                                running_mean=rm, running_var=rv,
                                                momentum=0.2)
        ours = [y, *bnp.ghost_batch_norm_backward(dy, cache)]
        theirs = chunked_torch_batch_norm(x, gamma, beta, dy, rm_t, rv_t, v, 0.2)
        assert_close_all(ours, theirs, dtype, v * prod(shape[2:]))
    np.testing.assert_allclose(rm, rm_t.numpy(), **tolerance(dtype, 100))
    np.testing.assert_allclose(rv, rv_t.numpy(), **tolerance(dtype, 100))
    # eval: BatchNorm's, with any batch size
    x = shifted(rng, (5,) + shape[1:], dtype)
    y, _ = bnp.ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size=v,
                                        running_mean=rm, running_var=rv, training=False)
    expected = F.batch_norm(torch.tensor(x), rm_t, rv_t, torch.tensor(gamma),
                            torch.tensor(beta), training=False).numpy()
    np.testing.assert_allclose(y, expected, **tolerance(dtype, 100))


def test_ghost_batch_norm_virtual_batches_are_normalized_separately(rng):
    x = shifted(rng, (8, 2, 3))
    x[4:] = 100 * x[4:] - 300  # the second virtual batch lives elsewhere
    y, _ = bnp.ghost_batch_norm_forward(x, None, None, virtual_batch_size=4, eps=1e-12)
    for chunk in (y[:4], y[4:]):
        np.testing.assert_allclose(chunk.mean(axis=(0, 2)), 0, atol=1e-10)
        np.testing.assert_allclose(chunk.var(axis=(0, 2)), 1, rtol=1e-9)


# --- errors ------------------------------------------------------------------------------

X = np.random.default_rng(0).standard_normal((4, 6, 5))
RUNNING = dict(running_mean=np.zeros(6), running_var=np.ones(6))
ERRORS = [
    (lambda: bnp.layer_norm_forward(X, (6,), None, None),
     r"last 1 dimension.*\(\*, 6\).*got shape \(4, 6, 5\)"),
    (lambda: bnp.layer_norm_forward(X, (), None, None), "at least one dimension"),
    (lambda: bnp.layer_norm_forward(X, (6, 5), np.ones(5), None),
     r"gamma of shape \(6, 5\).*got shape \(5,\)"),
    (lambda: bnp.layer_norm_forward(X.astype(np.int64), 5, None, None), "floating-point"),
    (lambda: bnp.rms_norm_forward(X, (4,), None), r"normalized_shape=\(4,\)"),
    (lambda: bnp.group_norm_forward(X, 4, None, None),
     r"num_groups to divide.*C = x.shape\[1\] = 6.*got num_groups=4.*\[1, 2, 3, 6\]"),
    (lambda: bnp.group_norm_forward(X, 0, None, None), "num_groups=0"),
    (lambda: bnp.group_norm_forward(np.ones((1, 2)), 2, None, None),
     "more than 1 value per channel"),
    (lambda: bnp.group_norm_forward(np.ones(4), 1, None, None), "rank at least 2"),
    (lambda: bnp.group_norm_forward(X, 2, np.ones(3), None), r"gamma of shape \(6,\)"),
    (lambda: bnp.instance_norm_forward(np.ones((4, 6)), None, None),
     "more than 1 spatial element"),
    (lambda: bnp.instance_norm_forward(X, None, None, use_input_stats=False),
     "use_input_stats=False"),
    (lambda: bnp.instance_norm_forward(X, None, None, running_mean=np.zeros(6)),
     "no running_var"),
    (lambda: bnp.batch_renorm_forward(X, None, None), "corrects the batch statistics"),
    (lambda: bnp.batch_renorm_forward(X, None, None, **RUNNING, rmax=0.5),
     "rmax >= 1.*got rmax=0.5"),
    (lambda: bnp.batch_renorm_forward(X, None, None, **RUNNING, dmax=-1),
     "dmax >= 0.*got dmax=-1"),
    (lambda: bnp.batch_renorm_forward(np.ones((1, 6)), None, None, **RUNNING),
     "more than 1 value per channel"),
    (lambda: bnp.ghost_batch_norm_forward(X, None, None, virtual_batch_size=3),
     r"divisible by virtual_batch_size=3.*got N = 4.*drop_last"),
    (lambda: bnp.ghost_batch_norm_forward(X, None, None, virtual_batch_size=1),
     "virtual_batch_size >= 2.*got virtual_batch_size=1"),
    (lambda: bnp.ghost_batch_norm_forward(X, None, None, virtual_batch_size=2,
                                          training=False), "running_mean=None"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "got" in str(info.value) or "Got" in str(info.value)


def test_backward_rejects_wrong_dy_and_wrong_cache(rng):
    x, g, b, _ = make_inputs(rng, (4, 6, 5))
    _, cache = bnp.group_norm_forward(x, 2, g, b)
    with pytest.raises(ValueError, match=r"dy of shape \(4, 6, 5\).*got shape \(4, 6\)"):
        bnp.group_norm_backward(np.ones((4, 6)), cache)
    _, bn_cache = bnp.batch_norm_forward(x, g, b)
    with pytest.raises(ValueError, match="got batch_norm_forward's cache"):
        bnp.layer_norm_backward(np.ones_like(x), bn_cache)
    with pytest.raises(ValueError, match="got NormCache"):
        bnp.batch_renorm_backward(np.ones_like(x), cache)


def test_ghost_eval_accepts_any_batch_size_and_one_value_per_channel():
    y, _ = bnp.ghost_batch_norm_forward(np.ones((1, 3)), None, None, virtual_batch_size=4,
                                        running_mean=np.zeros(3), running_var=np.ones(3),
                                        training=False)
    np.testing.assert_allclose(y, 1 / np.sqrt(1 + 1e-5))
