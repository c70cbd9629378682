"""bnlab.numerics: the ways to compute a mean and a variance, against float64 truth.

Truth is the two-pass formula evaluated in float64 on the SAME stored values (the float32
input converted exactly to float64), so a difference is the algorithm's rounding, not the
rounding of the data.

Tolerances (eq-num-error in book/speed.md): ``variance_error_scale(method, dtype, m, kappa)`` is
the first-order size of the relative error of each method, built from the unit roundoff u
(u = 2^-24 for float32, 2^-53 for float64), the error of the sums it makes (u * log2 m for
NumPy's pairwise sums along a contiguous axis, u * sqrt(m) for its sequential sums along axis 0
of an (m, C) array) and kappa = sqrt(1 + mean^2 / var). We allow
SAFETY = 10 times it: the scales are estimates of the typical error, not worst-case bounds
(those grow like m * u and are useless at m = 1e5), and measured over means 0..1e5 and
m = 10..1e5 the largest ratio of error to scale was below 2. A real mistake (the one-pass
formula, a merge with the wrong weights) is off by orders of magnitude more.
"""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from bnlab.numerics import (chan_merge, chunked_moments, condition_number, one_pass_moments,
                            summation_error, two_pass_moments, unit_roundoff,
                            variance_error_scale, welford_moments)

SAFETY = 10.0


def truth(x, axis=None):
    """Mean and biased variance of the stored values, two-pass in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=axis, keepdims=True)
    var = np.square(x64 - mean).mean(axis=axis)
    return (mean.reshape(var.shape), var)


def rel_err(got, want):
    return np.max(np.abs(np.asarray(got, dtype=np.float64) - want) / np.abs(want))


def assert_within_scale(method, x, var, m, summation="pairwise", factor=SAFETY):
    t_mean, t_var = truth(x, axis=0)
    kappa = condition_number(t_mean, t_var)
    allowed = factor * variance_error_scale(method, x.dtype, m, kappa, summation)
    err = np.abs(np.asarray(var, dtype=np.float64) - t_var) / t_var
    assert np.all(err <= allowed), (method, x.dtype, m, err.max(), allowed)


def sample(rng, m, mean, dtype, std=1.0):
    return (mean + std * rng.standard_normal(m)).astype(dtype)


# --- each method against truth -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mean", [0.0, 12.0, 1e3, 1e4])
@pytest.mark.parametrize("m", [7, 1000, 100_000])
def test_stable_methods_match_float64_truth_within_their_error_scale(rng, dtype, mean, m):
    x = sample(rng, m, mean, dtype)
    t_mean, t_var = truth(x)
    results = {"two_pass": two_pass_moments(x), "welford": welford_moments(x),
               "chunked": chunked_moments(x, min(m, 64))}
    for method, (mu, var) in results.items():
        assert np.asarray(mu).dtype == dtype and np.asarray(var).dtype == dtype, method
        assert np.shape(mu) == np.shape(var) == ()
        assert_within_scale(method, x, var, m)
        # the mean: a sum of m values of size |mean|, error about u * log2(m) (pairwise) or
        # sqrt(m) * u (sequential) relative to |mean| + std
        u = unit_roundoff(dtype)
        allowed = SAFETY * u * (math.log2(m) + math.sqrt(m)) * (abs(mean) + 1.0)
        assert abs(float(mu) - t_mean) <= allowed, (method, float(mu), t_mean, allowed)


def test_welford_with_chunks_of_welford_pieces(rng):
    x = sample(rng, 10_000, 1e3, np.float32)
    _, var = chunked_moments(x, 37, method="welford")  # uneven pieces of 270 and 271
    assert var.dtype == np.float32
    assert_within_scale("welford", x, var, 10_000)


@pytest.mark.parametrize("axis", [0, 1, (0, 2), None])
def test_two_pass_and_one_pass_reduce_over_any_axes(rng, axis):
    x = 5 * rng.standard_normal((6, 5, 4)) + 12
    t_mean, t_var = truth(x, axis=axis)
    for moments in (two_pass_moments, one_pass_moments):
        mu, var = moments(x, axis=axis)
        assert np.shape(mu) == np.shape(var) == np.shape(t_var)
        np.testing.assert_allclose(mu, t_mean, rtol=1e-13)
        # one pass at mean 12, std 5 in float64: kappa^2 u ~ 1e-15, still fine
        np.testing.assert_allclose(var, t_var, rtol=1e-12)


def test_welford_and_chunked_vectorize_over_trailing_axes_without_changing_a_stream(rng):
    x = (1e3 + rng.standard_normal((500, 3, 2))).astype(np.float32)  # 6 streams of m = 500
    mu, var = welford_moments(x)
    assert mu.shape == var.shape == (3, 2) and var.dtype == np.float32
    for i in range(3):
        for j in range(2):
            mu_ij, var_ij = welford_moments(x[:, i, j])  # the scalar path, one stream
            assert mu_ij == mu[i, j] and var_ij == var[i, j]  # bit for bit
    mu_c, var_c = chunked_moments(x, 8)
    t_mean, t_var = truth(x, axis=0)
    assert mu_c.shape == var_c.shape == (3, 2)
    # NumPy sums along axis 0 of (m, ...) with one accumulator per position: sequential
    assert_within_scale("chunked", x, var_c, 500, summation="sequential")
    np.testing.assert_allclose(mu_c, t_mean, rtol=1e-5)


def test_chunked_with_one_chunk_is_two_pass_and_with_m_chunks_is_a_merge_of_singletons(rng):
    x = sample(rng, 257, 5.0, np.float64)
    mu1, var1 = chunked_moments(x, 1)
    mu2, var2 = two_pass_moments(x)
    np.testing.assert_allclose([mu1, var1], [mu2, var2], rtol=1e-15)
    mu_s, var_s = chunked_moments(x, 257)  # every piece one value, m2 = 0
    np.testing.assert_allclose([mu_s, var_s], truth(x), rtol=1e-13)


# --- the one-pass formula fails -------------------------------------------------------------

@pytest.mark.parametrize("m", [1000, 4096, 100_000])
def test_one_pass_fails_in_float32_at_mean_1e4(rng, m):
    """kappa^2 * u = 1e8 * 6e-8 = 6: relative error of order one, or a negative variance."""
    x = sample(rng, m, 1e4, np.float32)
    _, t_var = truth(x)
    _, var = one_pass_moments(x)
    with np.errstate(invalid="ignore"):
        rstd = 1 / np.sqrt(var + np.float32(1e-5))
    assert np.isnan(rstd) or rel_err(var, t_var) > 0.1, (var, t_var)
    # the same data, the stable methods: within their scale (checked above), far below 0.1
    for moments in (two_pass_moments, welford_moments):
        assert rel_err(moments(x)[1], t_var) < 1e-2


def test_one_pass_fails_in_many_channels_and_the_error_follows_kappa_squared(rng):
    # 64 channels, m = 4096; NumPy sums along axis 0 sequentially (one accumulator per channel)
    x = (1e4 + rng.standard_normal((4096, 64))).astype(np.float32)
    t_mean, t_var = truth(x, axis=0)
    _, var = one_pass_moments(x, axis=0)
    err = np.abs(var - t_var) / t_var
    assert np.median(err) > 0.1
    with np.errstate(invalid="ignore"):
        broken = np.isnan(1 / np.sqrt(var + np.float32(1e-5)))
    assert broken.any() or np.all(err > 0.1)
    # and at mean 10 (kappa^2 * u * sqrt(m) ~ 4e-4) it is merely imprecise: the trouble is the
    # size of the mean, which the formula squares
    x10 = (10 + rng.standard_normal((4096, 64))).astype(np.float32)
    _, var10 = one_pass_moments(x10, axis=0)
    _, t10 = truth(x10, axis=0)
    kappa = condition_number(truth(x10, axis=0)[0], t10)
    assert np.all(np.abs(var10 - t10) / t10 <= SAFETY * variance_error_scale(
        "one_pass", np.float32, 4096, kappa, summation="sequential"))
    # the two-pass formula on the same channels, same sequential sums: float32 accuracy
    _, var2 = two_pass_moments(x, axis=0)
    assert_within_scale("two_pass", x, var2, 4096, summation="sequential")
    assert np.all(np.abs(var2 - t_var) / t_var < 1e-3)


# --- Chan's merge -------------------------------------------------------------------------

def stats(part):
    """count, mean, m2 of a part, in float64 (two-pass)."""
    mean = part.mean(axis=0)
    return part.shape[0], mean, np.square(part - mean).sum(axis=0)


@pytest.mark.parametrize("split", [1, 2, 50, 500, 999])
def test_chan_merge_of_two_float64_parts_is_the_whole_uneven_splits_included(rng, split):
    x = 5 * rng.standard_normal(1000) + 12
    count, mean, m2 = chan_merge(*stats(x[:split]), *stats(x[split:]))
    t_mean, t_var = truth(x)
    assert count == 1000
    np.testing.assert_allclose(mean, t_mean, rtol=1e-14)
    np.testing.assert_allclose(m2 / count, t_var, rtol=1e-13)


@given(sizes=st.lists(st.integers(1, 40), min_size=2, max_size=8),
       shift=st.floats(-1e3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_chan_merge_folds_any_partition_into_the_whole(sizes, shift, seed):
    rng = np.random.default_rng(seed)
    x = shift + 3 * rng.standard_normal((sum(sizes), 4))  # 4 channels
    edges = np.cumsum(sizes)[:-1]
    parts = np.split(x, edges, axis=0)
    acc = stats(parts[0])
    for part in parts[1:]:
        acc = chan_merge(*acc, *stats(part))
    t_mean, t_var = truth(x, axis=0)
    assert acc[0] == x.shape[0]
    scale = np.abs(t_mean) + np.sqrt(t_var)
    np.testing.assert_allclose(acc[1], t_mean, rtol=0, atol=1e-13 * scale.max())
    kappa = condition_number(t_mean, t_var)
    # float64, a handful of merges: the chunked scale with the safety factor
    np.testing.assert_array_less(np.abs(acc[2] / acc[0] - t_var) / t_var,
                                 SAFETY * variance_error_scale("chunked", np.float64,
                                                               x.shape[0], kappa))


def test_chan_merge_is_array_valued_with_array_counts_and_keeps_float32(rng):
    # per-channel statistics from 3 "devices" with different counts per channel: (2, 3)
    a = (10 + rng.standard_normal((30, 2, 3))).astype(np.float32)
    b = (10 + rng.standard_normal((50, 2, 3))).astype(np.float32)
    count_a = np.full((2, 3), 30)
    count, mean, m2 = chan_merge(count_a, *stats(a)[1:], 50, *stats(b)[1:])
    assert mean.dtype == m2.dtype == np.float32 and mean.shape == (2, 3)
    np.testing.assert_array_equal(count, 80)
    whole = np.concatenate([a, b])
    t_mean, t_var = truth(whole, axis=0)
    np.testing.assert_allclose(mean, t_mean, rtol=1e-6)
    np.testing.assert_allclose(m2 / 80, t_var, rtol=1e-4)


def test_chan_merge_with_an_empty_part(rng):
    x = rng.standard_normal(10) + 3
    n, mean, m2 = stats(x)
    for merged in (chan_merge(0, 0.0, 0.0, n, mean, m2), chan_merge(n, mean, m2, 0, 0.0, 0.0)):
        assert merged[0] == n
        np.testing.assert_allclose(merged[1:], (mean, m2), rtol=1e-15)
    count, mean0, m20 = chan_merge(0, 0.0, 0.0, 0, 0.0, 0.0)
    assert count == 0 and mean0 == 0 and m20 == 0
    # per channel: one channel empty on one side
    count, mean, m2 = chan_merge(np.array([0, 4]), np.array([0.0, 1.0]), np.array([0.0, 2.0]),
                                 np.array([3, 4]), np.array([5.0, 3.0]), np.array([1.0, 2.0]))
    np.testing.assert_array_equal(count, [3, 8])
    np.testing.assert_allclose(mean, [5.0, 2.0])
    np.testing.assert_allclose(m2, [1.0, 2.0 + 2.0 + 4.0 * 4 * 4 / 8])


def test_a_merge_with_the_wrong_weight_is_caught(rng):
    """Control: dropping the delta^2 term (averaging the variances) is far outside the scale."""
    x = rng.standard_normal(1000) + np.repeat([0.0, 3.0], 500)
    (na, ma, m2a), (nb, mb, m2b) = stats(x[:500]), stats(x[500:])
    wrong_var = (m2a + m2b) / 1000
    t_var = truth(x)[1]
    assert rel_err(wrong_var, t_var) > 0.5
    _, _, m2 = chan_merge(na, ma, m2a, nb, mb, m2b)
    assert rel_err(m2 / 1000, t_var) < 1e-13


# --- float16 and the error scales -----------------------------------------------------------

def test_float16_welford_keeps_float16_and_float32_accumulation_is_better(rng):
    x16 = (0.5 + 0.1 * rng.standard_normal(4000)).astype(np.float16)
    mu16, var16 = welford_moments(x16)
    assert mu16.dtype == var16.dtype == np.float16
    mu32, var32 = welford_moments(x16.astype(np.float32))
    t_mean, t_var = truth(x16)
    assert rel_err(var32, t_var) < rel_err(var16, t_var)
    assert_within_scale("welford", x16, var16, 4000)
    assert_within_scale("welford", x16.astype(np.float32), var32, 4000)


def test_error_scale_values():
    u32 = 2.0 ** -24
    assert unit_roundoff(np.float32) == u32 and unit_roundoff(np.float64) == 2.0 ** -53
    assert unit_roundoff(np.float16) == 2.0 ** -11
    assert condition_number(0.0, 4.0) == 1.0
    np.testing.assert_allclose(condition_number(1e4, 1.0), 1e4, rtol=1e-8)
    np.testing.assert_allclose(variance_error_scale("one_pass", np.float32, 2, 1e4), 1e8 * u32)
    np.testing.assert_allclose(summation_error(np.float32, 1024), 10 * u32)
    np.testing.assert_allclose(summation_error(np.float32, 1024, "sequential"), 32 * u32)
    np.testing.assert_allclose(
        variance_error_scale("two_pass", np.float32, 1024, 2.0, summation="sequential"),
        32 * u32 + (64 * u32) ** 2)
    np.testing.assert_allclose(variance_error_scale("two_pass", np.float32, 1024, 1.0),
                               10 * u32 + (10 * u32) ** 2)
    np.testing.assert_allclose(variance_error_scale("welford", np.float32, 100, 1.0), 11 * u32)
    np.testing.assert_allclose(variance_error_scale("chunked", np.float32, 2, 3.0),
                               u32 + (3 * u32) ** 2 + 3 * u32)


# --- the public boundary --------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: two_pass_moments(np.arange(5)), "float16, float32 or float64"),
    (lambda: one_pass_moments([1, 2, 3]), "float16, float32 or float64"),
    (lambda: welford_moments(np.float32(3.0)), "at least 1 dimension"),
    (lambda: welford_moments(np.zeros(0)), "at least one value"),
    (lambda: chunked_moments(np.zeros(5), 0), "between 1 and"),
    (lambda: chunked_moments(np.zeros(5), 6), "between 1 and"),
    (lambda: chunked_moments(np.zeros(5), 2.0), "between 1 and"),
    (lambda: chunked_moments(np.zeros(5), 2, method="kahan"), "two_pass' or 'welford"),
    (lambda: chan_merge(-1, 0.0, 0.0, 2, 1.0, 0.0), "counts must be >= 0"),
    (lambda: chan_merge(1, 1, 0, 2, 1, 0), "floating means"),
    (lambda: variance_error_scale("kahan", np.float32, 10, 1.0), "one of"),
    (lambda: summation_error(np.float32, 10, "kahan"), "'pairwise' or 'sequential'"),
])
def test_bad_arguments_say_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
