"""The computation every normalization layer shares: statistics over some axes, then
normalize. BatchNorm, LayerNorm, InstanceNorm and GroupNorm differ only in the axes;
RMSNorm in having no mean; Batch Renorm in a correction after normalizing.

Book: eq-bn-mean, eq-bn-var, eq-bn-xhat (forward), eq-bn-dx (backward), eq-rms-ms and
eq-rms-dx (RMSNorm), eq-bn-running-mean and eq-bn-running-var (running statistics).
"""

from math import prod
from typing import NamedTuple, Optional

import numpy as np

from .._validate import check_input, check_per_channel, check_same_shape


def sum_over(a, axes, b=None):
    """sum(a), or sum(a * b), over ``axes``, keepdims: the per-statistic sums of the book.

    One ``np.einsum`` call: the product a * b is never stored, and einsum reduced several
    axes at once 1.5 to 6 times faster than ``a.sum(axis=axes)`` (measured on the
    benchmark's shapes, ``python -m bnlab.bench``). A plain sum over axis 0 and the trailing
    axes (BatchNorm's) is a matrix-vector product with ones instead (``_sum_by_gemv``): BLAS
    took 1.3 to 2 times less than einsum on those shapes.
    """
    keepdims = [1 if i in axes else n for i, n in enumerate(a.shape)]
    s = _sum_by_gemv(a, axes) if b is None else None
    if s is None:
        index = list(range(a.ndim))  # one einsum subscript per axis
        kept = [i for i in index if i not in axes]
        s = np.einsum(a, index, kept) if b is None else np.einsum(a, index, b, index, kept)
    return s.reshape(keepdims)


def _sum_by_gemv(a, axes):
    """sum(a) over ``axes`` as (a as a matrix) @ ones when ``axes`` are axis 0 and maybe
    the trailing axes, and a is C-contiguous and not empty; else None. (N, C, H, W) over
    (0, 2, 3): the (N * C, H * W) matrix times ones, then ones times the (N, C) result.
    Sums within each sample (LayerNorm's, GroupNorm's) stay on einsum, whose result for a
    sample does not depend, bit for bit, on how many others share the array; BLAS may
    block a matrix of one row differently from one of eight."""
    trailing = [i for i in axes if all(j in axes for j in range(i, a.ndim))]
    leading = [i for i in axes if i not in trailing]
    if not (leading == [0] or 0 in trailing) or not a.flags.c_contiguous or a.size == 0:
        return None
    s = a
    if trailing:
        length = prod(a.shape[i] for i in trailing)
        s = s.reshape(-1, length) @ np.ones(length, a.dtype)
    if leading:
        s = np.ones(a.shape[0], a.dtype) @ s.reshape(a.shape[0], -1)
    return s


def mean_over(a, axes, b=None):
    """mean(a), or mean(a * b), over ``axes``, keepdims (see sum_over)."""
    m = prod(a.shape[i] for i in axes)  # how many numbers each statistic reduces
    return sum_over(a, axes, b) / m


def centered_moments(x, axes):
    """Mean and biased variance over ``axes``, two-pass (eq-bn-mean, eq-bn-var), and x - mu.

    Two passes (mean first, then the mean of squared deviations) instead of the one-pass
    E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std (float32 at mean
    1e4 gives NaN). x - mu, the second pass's input, is returned because y is made from it
    and the backward pass keeps it (NormCache). mu and var keep ``keepdims`` shape: they broadcast
    against ``x``.
    """
    mu = mean_over(x, axes)
    x_mu = x - mu  # a new array: the caller may overwrite it
    var = mean_over(x_mu, axes, x_mu)  # mean((x - mu)^2), no (x - mu)^2 array stored
    return mu, var, x_mu


def moments(x, axes):
    """Mean and biased variance over ``axes``, two-pass, keepdims (see centered_moments)."""
    mu, var, _ = centered_moments(x, axes)
    return mu, var


def mean_square(x, axes):
    """RMSNorm's statistic mean(x^2) over ``axes``, keepdims (eq-rms-ms): no mean is removed."""
    return mean_over(x, axes, x)


def normalize_backward(dx_hat, x_hat, rstd, axes, centered=True, means=None):
    """Gradient through x_hat = (x - mu) * rstd when mu and var are statistics of x itself.

    The closed form eq-bn-dx, with m the number of elements each statistic reduces:
        dx = rstd / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))
    written with means: dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)).
    ``centered=False`` is RMSNorm (mu = 0, var = mean(x^2)): the path through mu is gone,
    dx = rstd * (dx_hat - x_hat * mean(dx_hat * x_hat)) (eq-rms-dx).
    ``means``: (mean(dx_hat), mean(dx_hat * x_hat)) when the caller has them already.

    dx is linear in dx_hat, so with dx_hat = gamma * dy and gamma constant over each
    statistic's elements (BatchNorm), passing dy and gamma * rstd as ``rstd`` gives the same dx.
    """
    if means is None:
        mean_dx_hat = mean_over(dx_hat, axes) if centered else None
        mean_dx_hat_x_hat = mean_over(dx_hat, axes, x_hat)
    else:
        mean_dx_hat, mean_dx_hat_x_hat = means
    # One new array, updated in place term by term:
    dx = np.multiply(x_hat, -mean_dx_hat_x_hat)  # - x_hat * mean(dx_hat * x_hat): through var
    dx += dx_hat
    if centered:
        dx -= mean_dx_hat  # the path through mu
    dx *= rstd
    return dx


def update_running(running_mean, running_var, mu, var, m, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch statistic.

    mu, var: (C,) batch mean and BIASED variance of m numbers each; running_var takes the
    unbiased m / (m - 1) * var, as torch does (eq-bn-running-mean, eq-bn-running-var).
    """
    running_mean *= 1 - momentum
    running_mean += momentum * mu
    running_var *= 1 - momentum
    running_var += momentum * var * (m / (m - 1))


# --- the one forward and backward every family member uses -------------------------------

class Layout(NamedTuple):
    """Where the statistics come from (see the module docstring's table)."""

    view: tuple  # the shape x takes while its statistics are computed
    axes: tuple  # axes of ``view`` that each statistic reduces
    affine: tuple  # the shape gamma and beta take to broadcast against x, e.g. (1, C, 1, 1)
    param: tuple  # the shape of gamma and beta themselves, e.g. (C,)


class NormCache(NamedTuple):
    """What the backward pass needs, for every member of the family. It keeps x - mu, not
    x_hat: x_hat = (x - mu) * rstd is one product away (``x_hat``), and not making it saves
    BatchNorm's forward a pass over x (y = (x - mu) * (gamma * rstd) + beta, two passes)."""

    x_mu: np.ndarray  # x's shape, x - mu (a copy of x for RMSNorm, which subtracts nothing)
    rstd: np.ndarray  # view shape with 1 on the reduced axes, 1 / sqrt(var + eps)
    gamma: Optional[np.ndarray]  # param shape, or None without a scale
    has_beta: bool  # whether there is a shift
    layout: Layout
    batch_stats: bool  # statistics computed from x (they carry gradient) or constants
    centered: bool  # False for RMSNorm: no mean was subtracted
    family: str  # which forward made it, e.g. "batch_norm": its backward checks this

    @property
    def x_hat(self):
        """The normalized input (x - mu) * rstd (eq-bn-xhat), x's shape, made on demand."""
        return (self.x_mu.reshape(self.layout.view) * self.rstd).reshape(self.x_mu.shape)


def as_floating_input(where, x, min_rank=2, max_rank=None):
    x = np.asarray(x)
    check_input(where, x.shape, x.dtype, x.dtype in (np.float32, np.float64), min_rank, max_rank)
    return x


def check_channel_params(where, x, **params):
    """Each given per-channel array (gamma=..., running_mean=...) must have shape (C,)."""
    for name, v in params.items():
        if v is not None:
            check_per_channel(where, name, np.shape(v), x.shape[1])


def normalization_forward(x, layout, gamma, beta, eps, *, family, stats=None,
                          centered=True):
    """y = gamma * x_hat + beta with x_hat from ``layout``'s statistics.

    stats=None: batch statistics of x (eq-bn-mean, eq-bn-var; eq-rms-ms when not centered).
    stats=(mu, var): constants that broadcast against ``layout.view`` (eval, eq-bn-eval).
    Returns (y, cache, mu, var); mu and var keep the view's rank (1 on the reduced axes).
    """
    xs = x.reshape(layout.view)  # (N, C, *spatial) -> the statistics' view
    if stats is not None:
        mu, var = stats
        x_mu = xs - mu
    elif centered:
        mu, var, x_mu = centered_moments(xs, layout.axes)
    else:  # RMSNorm: "var" is the mean square, nothing is subtracted
        mu, var = 0.0, mean_square(xs, layout.axes)
        x_mu = xs.copy()  # the cache's own: the caller may change x before the backward
    rstd = 1.0 / np.sqrt(var + eps)  # eq-bn-xhat: x_hat = (x - mu) * rstd
    if gamma is not None:
        gamma = np.asarray(gamma, dtype=x.dtype)
    if gamma is not None and _per_statistic(layout, x.shape):  # BatchNorm: one pass
        y = x_mu * (gamma.reshape(layout.affine) * rstd)  # gamma * x_hat (eq-bn-affine)
    else:
        y = (x_mu * rstd).reshape(x.shape)  # x_hat, a new array; the view -> x's shape
        if gamma is not None:
            y *= gamma.reshape(layout.affine)  # param -> affine, e.g. (C,) -> (1, C, 1)
    if beta is not None:
        y += np.asarray(beta, dtype=x.dtype).reshape(layout.affine)
    cache = NormCache(x_mu.reshape(x.shape), rstd, gamma, beta is not None, layout,
                      stats is None, centered, family)
    return y, cache, mu, var


def normalization_backward(dy, cache, family):
    """(dx, dgamma, dbeta) for any layout.

    dbeta = sum(dy), dgamma = sum(dy * x_hat) over the axes gamma is broadcast along
    (eq-bn-dbeta, eq-bn-dgamma); dx_hat = dy * gamma (eq-bn-dxhat); dx by the closed form
    eq-bn-dx in the statistics' view (eq-rms-dx without a mean), or dx_hat * rstd when the
    statistics are constants (eq-bn-dx-eval).
    """
    where = f"{family}_backward"
    if not isinstance(cache, NormCache) or cache.family != family:
        got = cache.family + "_forward's cache" if isinstance(cache, NormCache) else type(cache).__name__
        raise ValueError(f"{where}: expected the cache returned by {family}_forward; got {got}.")
    x_mu, rstd, gamma, has_beta, layout, batch_stats, centered, _ = cache
    dy = np.asarray(dy)
    check_same_shape(where, "dy", dy.shape, x_mu.shape)
    dy = dy.astype(x_mu.dtype, copy=False)

    if _per_statistic(layout, x_mu.shape):
        return _per_channel_backward(dy, x_mu, rstd, gamma, has_beta, layout, batch_stats,
                                     centered)
    x_hat = cache.x_hat
    broadcast_axes = tuple(i for i, n in enumerate(layout.affine) if n == 1)
    dbeta = sum_over(dy, broadcast_axes).reshape(layout.param) if has_beta else None
    dgamma = None
    dx_hat = dy
    if gamma is not None:
        dgamma = sum_over(dy, broadcast_axes, x_hat).reshape(layout.param)
        dx_hat = dy * gamma.reshape(layout.affine)
    dx_hat = dx_hat.reshape(layout.view)  # x's shape -> the statistics' view
    if batch_stats:
        dx = normalize_backward(dx_hat, x_hat.reshape(layout.view), rstd, layout.axes, centered)
    else:
        dx = dx_hat * rstd
    return dx.reshape(x_hat.shape), dgamma, dbeta  # the view -> x's shape


def _per_statistic(layout, shape):
    """Whether gamma has one value per statistic, reduced over the same axes (BatchNorm:
    gamma, beta and the statistics are all per channel), and x is the view."""
    broadcast_axes = tuple(i for i, n in enumerate(layout.affine) if n == 1)
    return layout.view == tuple(shape) and broadcast_axes == layout.axes


def _per_channel_backward(dy, x_mu, rstd, gamma, has_beta, layout, batch_stats, centered):
    """normalization_backward when gamma has one value per statistic (``_per_statistic``).

    Then sum(dx_hat) = gamma * sum(dy) and sum(dx_hat * x_hat) = gamma * sum(dy * x_hat):
    the two sums of eq-bn-dx are dbeta and dgamma (eq-bn-dbeta, eq-bn-dgamma), computed once,
    and gamma joins rstd (dx is linear in dx_hat = gamma * dy, eq-bn-dxhat). x_hat is never
    made: sum(dy * x_hat) = rstd * sum(dy * (x - mu)).
    """
    axes = layout.axes
    sum_dy = sum_over(dy, axes)  # (1, C, 1, ...)
    sum_dy_x_hat = sum_over(dy, axes, x_mu) * rstd
    dbeta = sum_dy.reshape(layout.param) if has_beta else None
    dgamma = sum_dy_x_hat.reshape(layout.param) if gamma is not None else None
    gamma_rstd = rstd if gamma is None else gamma.reshape(layout.affine) * rstd
    if batch_stats:
        m = dy.size // sum_dy.size  # numbers per statistic
        # normalize_backward uses x_hat only in x_hat * mean(dx_hat * x_hat), which equals
        # (x - mu) * (rstd * mean(dx_hat * x_hat)): x - mu goes in, with that mean
        dx = normalize_backward(dy, x_mu, gamma_rstd, axes, centered,
                                means=(sum_dy / m, rstd * sum_dy_x_hat / m))
    else:  # eq-bn-dx-eval: the statistics are constants
        dx = dy * gamma_rstd
    return dx, dgamma, dbeta


def channel_column(v, ndim, dtype):
    """(C,) -> (1, C, 1, ..., 1) so that it broadcasts against (N, C, *spatial)."""
    return np.asarray(v, dtype=dtype).reshape((1, -1) + (1,) * (ndim - 2))


def channel_layout(shape, view, axes):
    """A layout whose gamma and beta are per channel, (C,)."""
    return Layout(tuple(view), tuple(axes), (1, shape[1]) + (1,) * (len(shape) - 2),
                  (shape[1],))
