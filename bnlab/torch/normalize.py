"""The shared normalization computation in torch (written independently of bnlab.numpy).

Book: eq-bn-mean, eq-bn-var, eq-bn-xhat (forward) and eq-bn-dx (backward).
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


def normalize(x, mu, var, eps):
    """x_hat = (x - mu) * rstd with rstd = 1 / sqrt(var + eps) (eq-bn-xhat)."""
    rstd = torch.rsqrt(var + eps)
    return (x - mu) * rstd, rstd


def normalize_backward(dx_hat, x_hat, rstd, dims):
    """Closed form eq-bn-dx: rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))."""
    mean_dx_hat = dx_hat.mean(dim=dims, keepdim=True)  # the path through mu
    mean_dx_hat_x_hat = (dx_hat * x_hat).mean(dim=dims, keepdim=True)  # through var
    return rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)
