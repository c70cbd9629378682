"""The computation every normalization layer shares: statistics over some axes, then
normalize. BatchNorm, LayerNorm, InstanceNorm and GroupNorm differ only in the axes.

Book: eq-bn-mean, eq-bn-var, eq-bn-xhat (forward) and eq-bn-dx (backward).
"""

import numpy as np


def moments(x, axes):
    """Mean and biased variance over ``axes``, two-pass (eq-bn-mean, eq-bn-var).

    Two passes (mean first, then the mean of squared deviations) instead of the one-pass
    E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std (float32 at mean
    1e4 gives NaN). Results keep ``keepdims`` shape so they broadcast against ``x``.
    """
    mu = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mu).mean(axis=axes, keepdims=True)
    return mu, var


def normalize(x, mu, var, eps):
    """x_hat = (x - mu) / sqrt(var + eps) (eq-bn-xhat); returns ``(x_hat, rstd)``."""
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mu) * rstd, rstd


def normalize_backward(dx_hat, x_hat, rstd, axes):
    """Gradient through x_hat = (x - mu) * rstd when mu and var are statistics of x itself.

    The closed form eq-bn-dx, with m the number of elements each statistic reduces:
        dx = rstd / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))
    written with means: dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)).
    """
    mean_dx_hat = dx_hat.mean(axis=axes, keepdims=True)  # the path through mu
    mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=axes, keepdims=True)  # through var
    return rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)
