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

from .normalize import compute_dtype, mean_square, moments, normalize, normalize_backward


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
        x_c = x.to(compute_dtype(x.dtype))  # float32 at least
        xs = x_c.reshape(layout.view)  # x -> the statistics' view (see the table)
        if stats is not None:
            mu, var = (s.to(x_c.dtype, copy=True) for s in stats)
        elif centered:
            mu, var = moments(xs, layout.dims)
        else:  # RMSNorm: "var" is the mean square and nothing is subtracted
            mu, var = xs.new_zeros(()), mean_square(xs, layout.dims)
        x_hat, rstd = normalize(xs, mu, var, eps)

        r = d = None
        x_out = x_hat
        if renorm is not None:
            running_mean, running_var, rmax, dmax = renorm
            sigma = torch.sqrt(running_var.to(x_c.dtype) + eps)
            r = (torch.sqrt(var + eps) / sigma).clamp(1 / rmax, rmax)  # eq-brn-r
            d = ((mu - running_mean.to(x_c.dtype)) / sigma).clamp(-dmax, dmax)  # eq-brn-d
            x_out = x_hat * r + d  # eq-brn-xhat
        y = x_out.reshape(x.shape)  # the view -> x's shape
        if weight is not None:
            y = y * weight.to(x_c.dtype).reshape(layout.affine)  # e.g. (C,) -> (1, C, 1)
        if bias is not None:
            y = y + bias.to(x_c.dtype).reshape(layout.affine)

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
        dy_c = dy.to(x_hat.dtype).reshape(layout.view)  # x's shape -> the view
        broadcast_dims = tuple(i for i, n in enumerate(layout.affine) if n == 1)

        def param_sum(t):  # sum over the dims weight is broadcast along; -> param shape
            return t.reshape(dy.shape).sum(dim=broadcast_dims).reshape(layout.param)

        dx = dweight = dbias = None
        if need_dbias:
            dbias = param_sum(dy_c).to(dy.dtype)
        if need_dweight:
            x_out = x_hat if r is None else x_hat * r + d  # what the weight multiplied
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
