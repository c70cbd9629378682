"""The computation every normalization layer shares: statistics over some axes, then
normalize. BatchNorm, LayerNorm, InstanceNorm and GroupNorm differ only in the axes;
RMSNorm in having no mean; Batch Renorm in a correction after normalizing.

Book: eq-bn-mean, eq-bn-var, eq-bn-xhat (forward), eq-bn-dx (backward), eq-rms-ms and
eq-rms-dx (RMSNorm), eq-bn-running-mean and eq-bn-running-var (running statistics).
"""

from typing import NamedTuple, Optional

import numpy as np

from .._validate import check_input, check_per_channel, check_same_shape


def moments(x, axes):
    """Mean and biased variance over ``axes``, two-pass (eq-bn-mean, eq-bn-var).

    Two passes (mean first, then the mean of squared deviations) instead of the one-pass
    E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std (float32 at mean
    1e4 gives NaN). Results keep ``keepdims`` shape so they broadcast against ``x``.
    """
    mu = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mu).mean(axis=axes, keepdims=True)
    return mu, var


def mean_square(x, axes):
    """RMSNorm's statistic mean(x^2) over ``axes``, keepdims (eq-rms-ms): no mean is removed."""
    return np.square(x).mean(axis=axes, keepdims=True)


def normalize(x, mu, var, eps):
    """x_hat = (x - mu) / sqrt(var + eps) (eq-bn-xhat); returns ``(x_hat, rstd)``.

    RMSNorm is the case mu = 0, var = mean(x^2) (eq-rms-xhat).
    """
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mu) * rstd, rstd


def normalize_backward(dx_hat, x_hat, rstd, axes, centered=True):
    """Gradient through x_hat = (x - mu) * rstd when mu and var are statistics of x itself.

    The closed form eq-bn-dx, with m the number of elements each statistic reduces:
        dx = rstd / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))
    written with means: dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)).
    ``centered=False`` is RMSNorm (mu = 0, var = mean(x^2)): the path through mu is gone,
    dx = rstd * (dx_hat - x_hat * mean(dx_hat * x_hat)) (eq-rms-dx).
    """
    mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=axes, keepdims=True)  # through var
    dx = dx_hat - x_hat * mean_dx_hat_x_hat
    if centered:
        dx = dx - dx_hat.mean(axis=axes, keepdims=True)  # the path through mu
    return rstd * dx


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
    """What the backward pass needs, for every member of the family."""

    x_hat: np.ndarray  # x's shape, normalized input
    rstd: np.ndarray  # view shape with 1 on the reduced axes, 1 / sqrt(var + eps)
    gamma: Optional[np.ndarray]  # param shape, or None without a scale
    has_beta: bool  # whether there is a shift
    layout: Layout
    batch_stats: bool  # statistics computed from x (they carry gradient) or constants
    centered: bool  # False for RMSNorm: no mean was subtracted
    family: str  # which forward made it, e.g. "batch_norm": its backward checks this


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
    elif centered:
        mu, var = moments(xs, layout.axes)
    else:  # RMSNorm: "var" is the mean square, nothing is subtracted
        mu, var = 0.0, mean_square(xs, layout.axes)
    x_hat, rstd = normalize(xs, mu, var, eps)
    x_hat = x_hat.reshape(x.shape)  # the view -> x's shape

    y = x_hat
    if gamma is not None:
        gamma = np.asarray(gamma, dtype=x.dtype)
        y = y * gamma.reshape(layout.affine)  # param -> affine, e.g. (C,) -> (1, C, 1)
    if beta is not None:
        y = y + np.asarray(beta, dtype=x.dtype).reshape(layout.affine)
    cache = NormCache(x_hat, rstd, gamma, beta is not None, layout, stats is None, centered,
                      family)
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
    x_hat, rstd, gamma, has_beta, layout, batch_stats, centered, _ = cache
    dy = np.asarray(dy)
    check_same_shape(where, "dy", dy.shape, x_hat.shape)
    dy = dy.astype(x_hat.dtype, copy=False)

    broadcast_axes = tuple(i for i, n in enumerate(layout.affine) if n == 1)
    dbeta = dy.sum(axis=broadcast_axes).reshape(layout.param) if has_beta else None
    dgamma = None
    dx_hat = dy
    if gamma is not None:
        dgamma = (dy * x_hat).sum(axis=broadcast_axes).reshape(layout.param)
        dx_hat = dy * gamma.reshape(layout.affine)
    dx_hat = dx_hat.reshape(layout.view)  # x's shape -> the statistics' view
    if batch_stats:
        dx = normalize_backward(dx_hat, x_hat.reshape(layout.view), rstd, layout.axes, centered)
    else:
        dx = dx_hat * rstd
    return dx.reshape(x_hat.shape), dgamma, dbeta  # the view -> x's shape


def channel_column(v, ndim, dtype):
    """(C,) -> (1, C, 1, ..., 1) so that it broadcasts against (N, C, *spatial)."""
    return np.asarray(v, dtype=dtype).reshape((1, -1) + (1,) * (ndim - 2))


def channel_layout(shape, view, axes):
    """A layout whose gamma and beta are per channel, (C,)."""
    return Layout(tuple(view), tuple(axes), (1, shape[1]) + (1,) * (len(shape) - 2),
                  (shape[1],))
