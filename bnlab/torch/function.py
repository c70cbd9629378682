"""One autograd Function for the whole family: BatchNorm, LayerNorm, GroupNorm,
InstanceNorm, RMSNorm, Ghost BatchNorm and Batch Renorm differ only in the ``Layout``
(where the statistics come from), in ``centered`` (RMSNorm removes no mean) and in the
Batch Renorm correction. The backward pass is the book's closed form, not autograd; when
the backward is itself differentiated (create_graph=True), autograd through the recomputed
forward (``backward_by_autograd``), so second derivatives are right too.

    family       view of x (N, C, *spatial)          reduced dims      weight, bias
    BatchNorm    (N, C, *spatial)                    all but 1         (C,)
    LayerNorm    x.shape (any rank)                  the last k        normalized_shape
    GroupNorm    (N, G, C // G * prod(spatial))      2                 (C,)
    InstanceNorm (N, C, prod(spatial))               2                 (C,)
    RMSNorm      like LayerNorm, centered=False      the last k        normalized_shape
    Ghost BN     (N // V, V, C, *spatial)            1, 3, 4, ...      (C,)
    Batch Renorm BatchNorm's, x_hat * r + d          all but 1         (C,)
"""

from math import prod
from typing import NamedTuple

import torch

from .normalize import compute_dtype, mean_over, normalize_backward, sum_of_products
from .per_channel import per_channel_backward, per_channel_forward


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
        m = xs.numel() // prod(xs.shape[d] for d in range(xs.ndim) if d not in layout.dims)
        ctx.per_statistic = _weight_per_statistic(layout, x.shape, renorm is not None)
        if ctx.per_statistic:  # BatchNorm
            y, mu, var, rstd = per_channel_forward(xs, weight, bias, layout.affine, eps, stats)
            r = d = None
        else:
            y, mu, var, rstd, r, d = _layout_forward(xs, x.shape, weight, bias, layout, eps,
                                                      centered, stats, renorm, m)
        # x, not x_hat: no second buffer of x's size; the backward recomputes x_hat from it
        ctx.save_for_backward(x, mu, rstd, weight, bias, r, d)
        ctx.layout, ctx.centered, ctx.batch_stats, ctx.eps = layout, centered, stats is None, eps
        ctx.mark_non_differentiable(mu, var)
        return y.reshape(x.shape).to(x.dtype), mu, var

    @staticmethod
    def backward(ctx, dy, _dmu, _dvar):
        """dbias (eq-bn-dbeta), dweight (eq-bn-dgamma), dx (eq-bn-dx, eq-rms-dx, eq-brn-dx
        or eq-bn-dx-eval)."""
        if torch.is_grad_enabled():  # create_graph=True: this backward is differentiated too
            x, mu, rstd, weight, bias, r, d = ctx.saved_tensors
            given = (None, None) if ctx.batch_stats else (mu, rstd)
            return backward_by_autograd(dy, x, weight, bias, ctx.needs_input_grad[:3],
                                        ctx.layout, ctx.eps, ctx.centered, *given,
                                        r, d) + (None,) * 5
        x, mu, rstd, weight, _, r, d = ctx.saved_tensors  # mu, rstd, r, d: the view's rank
        layout = ctx.layout
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        xs = x.to(rstd.dtype).reshape(layout.view)  # x -> the view, in the compute dtype
        dy_c = dy.to(rstd.dtype)  # dy itself when it has the compute dtype
        if ctx.per_statistic:
            dx, dweight, dbias = per_channel_backward(dy_c, xs, mu, rstd, weight,
                                                      ctx.needs_input_grad[:3], ctx.batch_stats,
                                                      ctx.centered)
            return (None if dx is None else dx.to(dy.dtype),
                    None if dweight is None else dweight.to(weight.dtype),
                    None if dbias is None else dbias.to(dy.dtype),
                    None, None, None, None, None)
        x_hat = torch.sub(xs, mu).mul_(rstd)  # eq-bn-xhat, recomputed
        dy_c = dy_c.reshape(layout.view)  # x's shape -> the view
        broadcast_dims = tuple(i for i, n in enumerate(layout.affine) if n == 1)

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


def backward_by_autograd(dy, x, weight, bias, needs, layout, eps, centered=True, mu=None,
                         rstd=None, r=None, d=None):
    """(dx, dweight, dbias), None where ``needs`` says no, for a backward pass that autograd
    records (create_graph=True: a gradient penalty, a Hessian-vector product, double
    backward). A closed-form backward takes mu and rstd as numbers the forward computed, so
    differentiating it would miss how they move with x; here the forward is recomputed from
    x in plain differentiable torch operations (eq-bn-mean .. eq-bn-affine) and autograd
    differentiates it, keeping the graph for the next derivative. mu, rstd: given statistics
    (eval), constants, broadcastable to layout.view; None: x's own. r, d: Batch Renorm's
    constants (eq-brn-dx), or None. Normalize's backward and the Triton kernels' use it."""
    xs = x.to(compute_dtype(x.dtype)).reshape(layout.view)
    if rstd is None:  # batch statistics, which carry gradient
        mu = xs.mean(layout.dims, keepdim=True) if centered else 0
        rstd = torch.rsqrt((xs - mu).square().mean(layout.dims, keepdim=True) + eps)
    x_hat = (xs - mu) * rstd if r is None else (xs - mu) * rstd * r + d
    y = x_hat.reshape(x.shape)
    if weight is not None:
        y = y * weight.to(y.dtype).reshape(layout.affine)
    if bias is not None:
        y = y + bias.to(y.dtype).reshape(layout.affine)
    wanted = [t for t, need in zip((x, weight, bias), needs) if need]
    grads = iter(torch.autograd.grad(y, wanted, dy.to(y.dtype), create_graph=True))
    return tuple(next(grads) if need else None for need in needs)


def _layout_forward(x, x_shape, weight, bias, layout, eps, centered, stats, renorm, m):
    """Normalize.forward for any layout (x is the view): returns (y, mu, var, rstd, r, d),
    y of x_shape; r, d: Batch Renorm's correction (None without renorm)."""
    # y's memory holds x - mu, then x_hat, then y: the one buffer of x's size allocated
    y = torch.empty_like(x)
    if stats is not None:
        mu, var = (s.to(x.dtype, copy=True) for s in stats)
        torch.sub(x, mu, out=y)
    elif centered:  # two passes: eq-bn-mean, then eq-bn-var around it
        mu = mean_over(x, layout.dims)
        var = sum_of_products(torch.sub(x, mu, out=y), y, layout.dims) / m
    else:  # RMSNorm: "var" is the mean square and nothing is subtracted
        mu, var = x.new_zeros(()), sum_of_products(x, x, layout.dims) / m
        y.copy_(x)
    rstd = torch.rsqrt(var + eps)  # eq-bn-xhat: x_hat = (x - mu) * rstd
    r = d = None
    if renorm is None:
        y.mul_(rstd)
    else:
        running_mean, running_var, rmax, dmax = renorm
        sigma = torch.sqrt(running_var.to(x.dtype) + eps)
        r = (torch.sqrt(var + eps) / sigma).clamp(1 / rmax, rmax)  # eq-brn-r
        d = ((mu - running_mean.to(x.dtype)) / sigma).clamp(-dmax, dmax)  # eq-brn-d
        torch.addcmul(d, y, rstd * r, out=y)  # eq-brn-xhat: x_hat * r + d
    y = y.reshape(x_shape)  # the view -> x's shape, which weight and bias broadcast against
    # eq-bn-affine, y = weight * x_out + bias, in y's memory, in one pass
    affine_weight = None if weight is None else weight.to(x.dtype).reshape(layout.affine)
    affine_bias = None if bias is None else bias.to(x.dtype).reshape(layout.affine)
    if affine_weight is not None and affine_bias is not None:
        torch.addcmul(affine_bias, y, affine_weight, out=y)
    elif affine_weight is not None:
        y.mul_(affine_weight)
    elif affine_bias is not None:
        y.add_(affine_bias)
    return y, mu, var, rstd, r, d


def _weight_per_statistic(layout, shape, renorm):
    """Whether weight has one value per statistic, reduced over the same dims (BatchNorm,
    and x is the view): then weight and rstd join into one factor."""
    broadcast_dims = tuple(i for i, n in enumerate(layout.affine) if n == 1)
    return not renorm and layout.view == tuple(shape) and broadcast_dims == layout.dims
