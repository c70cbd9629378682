"""Functional forms with torch.nn.functional's signatures, on hand-written autograd.

``batch_norm`` runs on any device torch supports (CPU, CUDA): it uses only tensor ops.
"""

import torch

from .._validate import (
    channel_reduction_axes,
    check_batch_norm,
    check_input,
    check_per_channel,
)
from .normalize import compute_dtype, moments, normalize, normalize_backward


def _as_channel_column(v, ndim):
    """(C,) -> (1, C, 1, ..., 1) so that it broadcasts against (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


class BatchNormFunction(torch.autograd.Function):
    """y = gamma * x_hat + beta with the book's closed-form backward (not autograd).

    forward(x, weight, bias, running_mean, running_var, training, momentum, eps).
    Running statistics are updated in place inside forward, where autograd is off, so the
    update never grows the autograd graph (eq-bn-running-mean, eq-bn-running-var).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        dims = channel_reduction_axes(x.ndim)
        x_c = x.to(compute_dtype(x.dtype))  # (N, C, *spatial), float32 at least
        if training:
            mu, var = moments(x_c, dims)  # (1, C, 1, ...) each
            if running_mean is not None:
                m = x.numel() // x.shape[1]
                unbiased_var = var.flatten() * (m / (m - 1))
                running_mean.mul_(1 - momentum).add_(momentum * mu.flatten().to(running_mean.dtype))
                running_var.mul_(1 - momentum).add_(momentum * unbiased_var.to(running_var.dtype))
        else:
            mu = _as_channel_column(running_mean.to(x_c.dtype), x.ndim)
            var = _as_channel_column(running_var.to(x_c.dtype), x.ndim)
        x_hat, rstd = normalize(x_c, mu, var, eps)

        y = x_hat
        if weight is not None:
            y = y * _as_channel_column(weight.to(x_c.dtype), x.ndim)
        if bias is not None:
            y = y + _as_channel_column(bias.to(x_c.dtype), x.ndim)
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.training = training
        ctx.dims = dims
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        """dbeta (eq-bn-dbeta), dgamma (eq-bn-dgamma), dx (eq-bn-dx, or eq-bn-dx-eval)."""
        x_hat, rstd, weight = ctx.saved_tensors
        dims = ctx.dims
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        dy_c = dy.to(x_hat.dtype)

        dx = dweight = dbias = None
        if need_dbias:
            dbias = dy_c.sum(dim=dims).to(dy.dtype)
        if need_dweight:
            dweight = (dy_c * x_hat).sum(dim=dims).to(weight.dtype)
        if need_dx:
            dx_hat = dy_c  # eq-bn-dxhat
            if weight is not None:
                dx_hat = dy_c * _as_channel_column(weight.to(x_hat.dtype), dy.ndim)
            if ctx.training:
                dx = normalize_backward(dx_hat, x_hat, rstd, dims)
            else:
                dx = dx_hat * rstd
            dx = dx.to(dy.dtype)
        return dx, dweight, dbias, None, None, None, None, None


def _check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps):
    where = "batch_norm"
    if not isinstance(input, torch.Tensor):
        raise ValueError(f"{where}: expected input to be a torch.Tensor; got {type(input).__name__}.")
    check_input(where, input.shape, input.dtype, input.is_floating_point())
    for name, v in (("weight", weight), ("bias", bias),
                    ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            check_per_channel(where, name, v.shape, input.shape[1])
    check_batch_norm(where, input.shape, training=training,
                     has_running_mean=running_mean is not None,
                     has_running_var=running_var is not None, eps=eps)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Same signature and semantics as ``torch.nn.functional.batch_norm``.

    input: (N, C, *spatial). running_mean, running_var: (C,) or None; updated in place in
    training (unbiased variance, ``momentum`` = weight of the new batch). weight, bias: (C,)
    or None. Gradients come from BatchNormFunction's closed-form backward.
    """
    _check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                   bool(training), momentum, eps)
