"""The shared normalization computation in torch (written independently of bnlab.numpy).

Book: eq-bn-mean, eq-bn-var, eq-bn-xhat (forward), eq-bn-dx (backward), eq-rms-ms and
eq-rms-dx (RMSNorm), eq-bn-running-mean and eq-bn-running-var (running statistics).
"""

import torch


def compute_dtype(dtype):
    """Statistics of float16/bfloat16 inputs are computed in float32, as torch does."""
    return torch.promote_types(dtype, torch.float32)


def moments(x, dims):
    """Mean and biased variance over ``dims``, two-pass (eq-bn-mean, eq-bn-var); keepdim."""
    mu = x.mean(dim=dims, keepdim=True)
    var = (x - mu).square().mean(dim=dims, keepdim=True)
    return mu, var


def mean_square(x, dims):
    """RMSNorm's statistic mean(x^2) over ``dims``, keepdim (eq-rms-ms)."""
    return x.square().mean(dim=dims, keepdim=True)


def normalize(x, mu, var, eps):
    """x_hat = (x - mu) * rstd with rstd = 1 / sqrt(var + eps) (eq-bn-xhat; eq-rms-xhat
    with mu = 0 and var = mean(x^2))."""
    rstd = torch.rsqrt(var + eps)
    return (x - mu) * rstd, rstd


def normalize_backward(dx_hat, x_hat, rstd, dims, centered=True):
    """Closed form eq-bn-dx: rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)).

    centered=False (RMSNorm, no mean subtracted) drops the mean(dx_hat) term (eq-rms-dx).
    """
    mean_dx_hat_x_hat = (dx_hat * x_hat).mean(dim=dims, keepdim=True)  # through var
    dx = dx_hat - x_hat * mean_dx_hat_x_hat
    if centered:
        dx = dx - dx_hat.mean(dim=dims, keepdim=True)  # the path through mu
    return rstd * dx


@torch.no_grad()
def update_running(running_mean, running_var, mu, var, m, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch statistic.

    mu, var: (C,) batch mean and BIASED variance of m numbers each; running_var takes the
    unbiased m / (m - 1) * var (eq-bn-running-mean, eq-bn-running-var). Under no_grad, so
    the update never grows the autograd graph.
    """
    unbiased_var = var * (m / (m - 1))
    running_mean.mul_(1 - momentum).add_(momentum * mu.to(running_mean.dtype))
    running_var.mul_(1 - momentum).add_(momentum * unbiased_var.to(running_var.dtype))
