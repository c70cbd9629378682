"""How to compute a mean and a variance in floating point, and how to get it wrong.

The chapter "Making BatchNorm fast, and right" (book/speed.md) derives and measures each
function here; the docstrings name its equations by their MyST labels.

* ``one_pass_moments``: var = mean(x^2) - mean(x)^2 (eq-num-one-pass), the formula that cancels
  catastrophically when |mean| >> std.
* ``two_pass_moments``: the mean, then the mean of squared deviations (eq-bn-mean, eq-bn-var).
* ``welford_moments``: Welford's one-pass update, sequential (eq-num-welford).
* ``chan_merge``: Chan, Golub and LeVeque's formula combining the statistics of two disjoint
  parts (eq-num-chan). Array-valued, so it merges per-channel statistics, e.g. across devices.
* ``chunked_moments``: split, reduce each chunk, merge with ``chan_merge`` along a tree: what a
  GPU kernel does with its blocks and warps.
* ``condition_number`` (eq-num-kappa), ``summation_error`` (eq-num-sum) and
  ``variance_error_scale`` (eq-num-error): how large an error each method is expected to
  make, in units of the dtype's unit roundoff.

Every function is pure, keeps the input's floating dtype (float16, float32 or float64) and
returns the BIASED variance (divide by m), as BatchNorm normalizes with. Accumulators are in the
input's dtype, with one exception that is NumPy's and not ours: NumPy's reductions of float16
arrays (``mean``, ``sum``) add in float32 internally and round the result to float16.
"""

import math

import numpy as np

_FLOATS = (np.float16, np.float32, np.float64)


def _floating(where, x, min_ndim=0):
    x = np.asarray(x)
    if x.dtype not in _FLOATS:
        raise ValueError(f"{where}: expected a float16, float32 or float64 array; got dtype "
                         f"{x.dtype}. Convert it first, e.g. x.astype(np.float32).")
    if x.ndim < min_ndim:
        raise ValueError(f"{where}: expected an array with at least {min_ndim} dimension(s) "
                         f"(values along axis 0); got shape {x.shape}.")
    return x


def unit_roundoff(dtype):
    """u = 2^-p for a dtype with p significand bits: 2^-11, 2^-24, 2^-53 (half the epsilon)."""
    return float(np.finfo(dtype).eps) / 2


def one_pass_moments(x, axis=None):
    """``(mean, var)`` from the sums of x and x^2 in one pass (eq-num-one-pass).

    var = mean(x^2) - mean(x)^2. Both terms are about mean^2 and the variance is what remains
    after their leading digits cancel: its relative error grows like kappa^2 times the sums'
    error (eq-num-error), so float32 at mean 1e4 and std 1 gives garbage, often a negative variance.
    Kept here because it is the formula to recognise and avoid.
    """
    x = _floating("one_pass_moments", x)
    mean = x.mean(axis=axis)
    mean_sq = np.square(x).mean(axis=axis)
    return mean, mean_sq - np.square(mean)


def two_pass_moments(x, axis=None):
    """``(mean, var)``: the mean first, then the mean of squared deviations.

    eq-bn-mean and eq-bn-var as written (the "two-pass" algorithm of eq-num-error): x is read
    twice, the subtraction happens before squaring, and the relative error is about the sums'
    error s (eq-num-sum) plus a (kappa * s)^2 term.
    """
    x = _floating("two_pass_moments", x)
    mean = x.mean(axis=axis, keepdims=True)
    var = np.square(x - mean).mean(axis=axis)
    return np.squeeze(mean, axis=axis) if axis is not None else mean.reshape(()), var


def _welford(x):
    """Sequential Welford over axis 0 of a floating x; returns (mean, m2) in x's dtype."""
    dtype = x.dtype.type
    # counts are exact integers; the division uses dtype(k), which rounds in float16 beyond
    # 2048 and overflows to inf beyond 65504 (float16 behaviour, on purpose)
    ks = np.arange(1, x.shape[0] + 1).astype(x.dtype)
    if x.ndim == 1:  # NumPy scalars: the same IEEE operations as the array path, much faster
        mean, m2 = dtype(0), dtype(0)
        for x_k, k in zip(x, ks):  # eq-num-welford, one value at a time
            delta = x_k - mean
            mean = mean + delta / k
            m2 = m2 + delta * (x_k - mean)
        return mean, m2
    # (m, ...): one independent sequential stream per trailing position, advanced together
    mean = np.zeros(x.shape[1:], x.dtype)
    m2 = np.zeros(x.shape[1:], x.dtype)
    for x_k, k in zip(x, ks):
        delta = x_k - mean
        mean = mean + delta / k
        m2 = m2 + delta * (x_k - mean)
    return mean, m2


def welford_moments(x):
    """``(mean, var)`` by Welford's update, one value at a time (eq-num-welford).

    x: (m,), or (m, ...) for m values of several independent quantities (each trailing
    position, e.g. each channel of an (m, C) array, is its own sequential stream; the streams
    are advanced together, which vectorizes without changing any stream's arithmetic).
    The running mean and sum of squared deviations are held in x's dtype, so float32 input
    shows float32 behaviour: relative error about kappa * u plus a sqrt(m) * u random walk
    (eq-num-error). About 0.05 s per 1e5 values for a 1-D x.
    """
    x = _floating("welford_moments", x, min_ndim=1)
    if x.shape[0] == 0:
        raise ValueError("welford_moments: expected at least one value along axis 0; got "
                         f"shape {x.shape}.")
    mean, m2 = _welford(x)
    return mean, m2 / x.dtype.type(x.shape[0])


def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Combine the statistics of two disjoint parts a and b into those of their union.

    eq-num-chan (Chan, Golub and LeVeque): with n = n_a + n_b and delta = mean_b - mean_a,
        mean = mean_a + delta * n_b / n
        m2   = m2_a + m2_b + delta^2 * n_a * n_b / n
    where m2 is the sum of squared deviations from the part's own mean (m * biased variance).
    Returns ``(count, mean, m2)``. Every argument may be a scalar or an array; they broadcast
    (e.g. per-channel means and m2 of shape (C,) with a scalar count per part, or counts of
    shape (C,)). A part with count 0 contributes nothing; two empty parts give mean 0, m2 0.
    Arithmetic is in the floating dtype of the means and m2 (float32 stays float32).
    """
    mean_a, m2_a, mean_b, m2_b = (np.asarray(v) for v in (mean_a, m2_a, mean_b, m2_b))
    dtype = np.result_type(mean_a, m2_a, mean_b, m2_b)
    if dtype not in _FLOATS:
        raise ValueError(f"chan_merge: expected floating means and m2; got dtype {dtype}.")
    count_a, count_b = np.asarray(count_a), np.asarray(count_b)
    if np.any(count_a < 0) or np.any(count_b < 0):
        raise ValueError(f"chan_merge: counts must be >= 0; got {count_a} and {count_b}.")
    count = count_a + count_b
    # n_b / n and n_a * n_b / n, computed exactly enough in float64, then taken to dtype
    safe = np.where(count > 0, count, 1).astype(np.float64)
    weight_b = (count_b / safe).astype(dtype)
    cross = (count_a * (count_b / safe)).astype(dtype)
    delta = mean_b - mean_a
    mean = mean_a + delta * weight_b
    m2 = m2_a + m2_b + np.square(delta) * cross
    return count, mean.astype(dtype, copy=False), m2.astype(dtype, copy=False)


def chunked_moments(x, chunks, method="two_pass"):
    """``(mean, var)`` over axis 0 of x from ``chunks`` pieces merged with ``chan_merge``.

    x: (m,) or (m, ...). It is split into ``chunks`` contiguous pieces of (nearly) equal length
    along axis 0 (uneven when chunks does not divide m); each piece's count, mean and m2 come
    from a two-pass reduction (``method="two_pass"``) or Welford's update
    (``method="welford"``); the pieces are then merged pairwise along a binary tree by
    eq-num-chan. This is how a GPU kernel computes BatchNorm's statistics: each thread or block
    reduces its own slice, and partial results are combined across warps and blocks.
    """
    x = _floating("chunked_moments", x, min_ndim=1)
    m = x.shape[0]
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or not 1 <= chunks <= max(m, 1):
        raise ValueError(f"chunked_moments: expected an integer number of chunks between 1 and "
                         f"the length m = {m} of axis 0; got {chunks!r}.")
    if m == 0:
        raise ValueError(f"chunked_moments: expected at least one value; got shape {x.shape}.")
    if method not in ("two_pass", "welford"):
        raise ValueError(f"chunked_moments: method must be 'two_pass' or 'welford'; got {method!r}.")
    parts = []
    for piece in np.array_split(x, chunks, axis=0):  # (m_i, ...) each, m_i >= 1
        if method == "two_pass":
            mean = piece.mean(axis=0, keepdims=True)
            m2 = np.square(piece - mean).sum(axis=0)
            mean = mean[0]
        else:
            mean, m2 = _welford(piece)
        parts.append((piece.shape[0], mean, m2))
    while len(parts) > 1:  # one level of the merge tree
        merged = [chan_merge(*parts[i], *parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            merged.append(parts[-1])
        parts = merged
    count, mean, m2 = parts[0]
    return mean, m2 / x.dtype.type(count)


def condition_number(mean, var):
    """kappa = sqrt(1 + mean^2 / var) (eq-num-kappa): how much centring can lose.

    kappa is 1 for data centred at zero and about |mean| / std when the mean dominates; the
    relative condition number of the variance of the data (Chan, Golub and LeVeque).
    """
    mean = np.asarray(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    return np.sqrt(1.0 + np.square(mean) / var)


def summation_error(dtype, m, summation="pairwise"):
    """The relative error of a sum of m numbers of one sign, in the dtype (eq-num-sum).

    ``"pairwise"`` (NumPy's sums along a contiguous axis, a tree of depth about log2 m):
    u * log2(m); ``"sequential"`` (one accumulator, as NumPy does along a non-contiguous
    axis such as axis 0 of an (m, C) array): u * sqrt(m), the typical size when the rounding
    errors have random signs (their worst case is u * m; Higham, chapter 4).
    """
    u = unit_roundoff(dtype)
    if summation == "pairwise":
        return u * max(1.0, math.log2(max(m, 1)))
    if summation == "sequential":
        return u * math.sqrt(max(m, 1))
    raise ValueError("summation_error: summation must be 'pairwise' or 'sequential'; got "
                     f"{summation!r}.")


def variance_error_scale(method, dtype, m, kappa, summation="pairwise"):
    """The size of the relative error of the computed variance to expect (eq-num-error).

    With u the unit roundoff of ``dtype``, s = ``summation_error(dtype, m, summation)`` the
    error of the sums the method makes, and kappa from ``condition_number``:
        one_pass:  kappa^2 * s             (two sums of size mean^2 cancel)
        two_pass:  s + (kappa * s)^2       (the mean's error enters only squared)
        welford:   (sqrt(m) + kappa) * u   (a sequential sum whose rounding errors random-walk;
                                            each update centres with a running mean known to
                                            about u * |mean|)
        chunked:   s + (kappa * s)^2 + kappa * u   (two-pass pieces; every merge centres with
                                            rounded means, as a Welford step does)
    These are first-order estimates of the typical error, not worst-case bounds; a test
    allows a safety factor on top (the chapter measures how far below them real errors are).
    """
    s = summation_error(dtype, m, summation)
    u = unit_roundoff(dtype)
    kappa = np.asarray(kappa, dtype=np.float64)
    if method == "one_pass":
        return np.square(kappa) * s
    if method == "two_pass":
        return s + np.square(kappa * s)
    if method == "chunked":
        return s + np.square(kappa * s) + kappa * u
    if method == "welford":
        return (math.sqrt(m) + kappa) * u
    raise ValueError("variance_error_scale: method must be one of 'one_pass', 'two_pass', "
                     f"'chunked', 'welford'; got {method!r}.")
