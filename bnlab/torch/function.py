"""One autograd Function for the whole family: BatchNorm, LayerNorm, GroupNorm,
InstanceNorm, RMSNorm, Ghost BatchNorm and Batch Renorm differ only in the ``Layout``
(where the statistics come from), in ``centered`` (RMSNorm removes no mean) and in the
Batch Renorm correction. The backward pass is the book's closed form, not autograd.

    family       view of x (N, C, *spatial)          reduced dims      weight, bias
    BatchNorm    (N, C, *spatial)                    all but 1         (C,)
    LayerNorm    x.shape (any rank)                  the last k        normalized_shape
    GroupNorm    (N, G, C // G * prod(spatial))      2                 (C,)
    InstanceNorm (N, C, prod(spatial))               2                 (C,)
    RMSNorm      like LayerNorm, centered=False      the last k        normalized_shape
    Ghost BN     (N // V, V, C, *spatial)            1, 3, 4, ...      (C,)
    Batch Renorm BatchNorm's, x_hat * r + d          all but 1         (C,)
"""

from typing import NamedTuple

import torch

from .normalize import (centered_moments, compute_dtype, mean_square, normalize_backward,
                        normalize_centered, sum_over)


class Layout(NamedTuple):
    """Where the statistics come from (see the table above)."""

    view: tuple  # the shape x takes while its statistics are computed
    dims: tuple  # dims of ``view`` that each statistic reduces
    affine: tuple  # the shape weight and bias take to broadcast against x, e.g. (1, C, 1, 1)
    param: tuple  # the shape of weight and bias themselves, e.g. (C,)


class Normalize(torch.autograd.Function):
    """y = weight * x_hat + bias for any ``Layout``, with the closed-form backward.

    forward(x, weight, bias, layout, eps, centered, stats, renorm) -> (y, mu, var):
    * stats=None: batch statistics of x, which carry gradient (eq-bn-dx, eq-rms-dx);
      stats=(mu, var): constants broadcastable to layout.view (eval, eq-bn-dx-eval).
    * renorm=None, or (running_mean, running_var, rmax, dmax) broadcastable to the view:
      Batch Renorm's x_hat * r + d with r, d clipped and constant (eq-brn-r .. eq-brn-dx).
    * mu and var (view rank, not differentiable) are returned for running-statistic updates,
      which callers do after the Function, on detached values.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, layout, eps, centered, stats, renorm):
        x_c = x.to(compute_dtype(x.dtype))  # float32 at least (x itself when it is)
        xs = x_c.reshape(layout.view)  # x -> the statistics' view (see the table)
        # y's memory, first used as scratch for the squares of the variance's second pass
        y = torch.empty(layout.view, dtype=x_c.dtype, device=x_c.device)
        if stats is not None:
            mu, var = (s.to(x_c.dtype, copy=True) for s in stats)
            x_mu = xs - mu
        elif centered:
            mu, var, x_mu = centered_moments(xs, layout.dims, out=y)
        else:  # RMSNorm: "var" is the mean square and nothing is subtracted
            mu, var = xs.new_zeros(()), mean_square(xs, layout.dims, out=y)
            x_mu = xs.clone()  # x itself must not be overwritten below
        x_hat, rstd = normalize_centered(x_mu, var, eps)  # in place: x_mu becomes x_hat

        r = d = None
        x_out = x_hat
        if renorm is not None:
            running_mean, running_var, rmax, dmax = renorm
            sigma = torch.sqrt(running_var.to(x_c.dtype) + eps)
            r = (torch.sqrt(var + eps) / sigma).clamp(1 / rmax, rmax)  # eq-brn-r
            d = ((mu - running_mean.to(x_c.dtype)) / sigma).clamp(-dmax, dmax)  # eq-brn-d
            x_out = torch.addcmul(d, x_hat, r)  # eq-brn-xhat: x_hat * r + d
        x_out = x_out.reshape(x.shape)  # the view -> x's shape
        y = y.reshape(x.shape)
        # eq-bn-affine, y = weight * x_out + bias, written into y's memory in one pass
        affine_weight = None if weight is None else weight.to(x_c.dtype).reshape(layout.affine)
        affine_bias = None if bias is None else bias.to(x_c.dtype).reshape(layout.affine)
        if affine_weight is not None and affine_bias is not None:
            torch.addcmul(affine_bias, x_out, affine_weight, out=y)
        elif affine_weight is not None:
            torch.mul(x_out, affine_weight, out=y)
        elif affine_bias is not None:
            torch.add(x_out, affine_bias, out=y)
        else:
            y = x_out

        ctx.save_for_backward(x_hat, rstd, weight, r, d)
        ctx.layout, ctx.centered, ctx.batch_stats = layout, centered, stats is None
        ctx.mark_non_differentiable(mu, var)
        return y.to(x.dtype), mu, var

    @staticmethod
    def backward(ctx, dy, _dmu, _dvar):
        """dbias (eq-bn-dbeta), dweight (eq-bn-dgamma), dx (eq-bn-dx, eq-rms-dx, eq-brn-dx
        or eq-bn-dx-eval)."""
        x_hat, rstd, weight, r, d = ctx.saved_tensors  # x_hat, rstd, r, d: the view's shape
        layout = ctx.layout
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        dy_c = dy.to(x_hat.dtype)  # dy itself when it has the compute dtype
        broadcast_dims = tuple(i for i, n in enumerate(layout.affine) if n == 1)
        if r is None and layout.view == tuple(dy.shape) and broadcast_dims == layout.dims:
            dx, dweight, dbias = _per_channel_backward(ctx, dy_c, x_hat, rstd, weight)
            return (None if dx is None else dx.to(dy.dtype),
                    None if dweight is None else dweight.to(weight.dtype),
                    None if dbias is None else dbias.to(dy.dtype),
                    None, None, None, None, None)
        dy_c = dy_c.reshape(layout.view)  # x's shape -> the view

        def param_sum(t):  # sum over the dims weight is broadcast along; -> param shape
            return t.reshape(dy.shape).sum(dim=broadcast_dims).reshape(layout.param)

        dx = dweight = dbias = None
        if need_dbias:
            dbias = param_sum(dy_c).to(dy.dtype)
        if need_dweight:
            x_out = x_hat if r is None else torch.addcmul(d, x_hat, r)  # what weight multiplied
            dweight = param_sum(dy_c * x_out).to(weight.dtype)
        if need_dx:
            dx_hat = dy_c  # eq-bn-dxhat
            if weight is not None:
                affine_weight = weight.to(x_hat.dtype).reshape(layout.affine)
                dx_hat = (dy.to(x_hat.dtype) * affine_weight).reshape(layout.view)
            if r is not None:
                dx_hat = dx_hat * r  # eq-brn-dx: r is a constant
            if ctx.batch_stats:
                dx = normalize_backward(dx_hat, x_hat, rstd, layout.dims, ctx.centered)
            else:
                dx = dx_hat * rstd
            dx = dx.reshape(dy.shape).to(dy.dtype)  # the view -> x's shape
        return dx, dweight, dbias, None, None, None, None, None


def _per_channel_backward(ctx, dy, x_hat, rstd, weight):
    """Normalize.backward when the weight has one value per statistic (BatchNorm: weight,
    bias and the statistics are all per channel, reduced over the same dims).

    Then sum(dx_hat) = weight * sum(dy) and sum(dx_hat * x_hat) = weight * sum(dy * x_hat):
    the two sums of eq-bn-dx are dbias and dweight (eq-bn-dbeta, eq-bn-dgamma), computed
    once, and the weight joins rstd (dx is linear in dx_hat = weight * dy, eq-bn-dxhat).
    Returns (dx, dweight, dbias) in the compute dtype, None where not needed.
    """
    dims, layout = ctx.layout.dims, ctx.layout
    need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
    sum_dy = sum_over(dy, dims)  # (1, C, 1, ...)
    dx = dweight = None
    if need_dx or need_dweight:
        scratch = torch.mul(dy, x_hat)  # dy * x_hat; the same memory becomes dx below
        sum_dy_x_hat = sum_over(scratch, dims)
        dweight = sum_dy_x_hat.reshape(layout.param) if need_dweight else None
    if need_dx:
        weight_rstd = rstd  # gamma * rstd, the factor of eq-bn-dx
        if weight is not None:
            weight_rstd = weight.to(rstd.dtype).reshape(layout.affine) * rstd
        if ctx.batch_stats:
            m = dy.numel() // sum_dy.numel()  # numbers per statistic
            dx = normalize_backward(dy, x_hat, weight_rstd, dims, ctx.centered,
                                    means=(sum_dy / m, sum_dy_x_hat / m), out=scratch)
        else:  # eq-bn-dx-eval: the statistics are constants
            dx = torch.mul(dy, weight_rstd, out=scratch)
    dbias = sum_dy.reshape(layout.param) if need_dbias else None
    return dx, dweight, dbias
