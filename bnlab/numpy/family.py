"""The normalization family in NumPy: one forward and one backward, many layouts.

LayerNorm, GroupNorm, InstanceNorm, RMSNorm and Ghost BatchNorm are the same computation
as BatchNorm (statistics, normalize, scale and shift); they differ in WHERE the statistics
come from. A ``Layout`` says it: reshape x to ``view``, reduce ``axes`` of that view, and
broadcast gamma/beta as ``affine`` against x's own shape.

    family       view of x (N, C, *spatial)          reduced axes      gamma, beta
    BatchNorm    (N, C, *spatial)                    all but 1         (C,)
    LayerNorm    x.shape (any rank)                  the last k        normalized_shape
    GroupNorm    (N, G, C // G * prod(spatial))      2                 (C,)
    InstanceNorm (N, C, prod(spatial))               2                 (C,)
    RMSNorm      like LayerNorm, no mean removed     the last k        normalized_shape
    Ghost BN     (N // V, V, C, *spatial)            1, 3, 4, ...      (C,)

Batch Renormalization is BatchNorm plus a correction: see renorm.py.
"""

from math import prod

import numpy as np

from .._validate import (
    as_shape_tuple,
    channel_reduction_axes,
    check_group_norm_size,
    check_instance_norm,
    check_normalized_shape,
    check_num_groups,
    check_param_shape,
    check_batch_norm,
    check_virtual_batch,
)
from .normalize import (
    Layout,
    as_floating_input,
    check_channel_params,
    channel_column,
    channel_layout,
    normalization_backward,
    normalization_forward,
    update_running,
)


def _trailing_layout(where, x, normalized_shape, gamma, beta=None):
    """LayerNorm's and RMSNorm's layout: reduce the last len(normalized_shape) axes."""
    normalized_shape = as_shape_tuple(where, normalized_shape)
    check_normalized_shape(where, x.shape, normalized_shape)
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v is not None:
            check_param_shape(where, name, np.shape(v), normalized_shape,
                              "one value per normalized element, normalized_shape")
    k = len(normalized_shape)
    lead = x.ndim - k
    return Layout(x.shape, tuple(range(lead, x.ndim)), (1,) * lead + normalized_shape,
                  normalized_shape)


# --- LayerNorm ---------------------------------------------------------------------------

def layer_norm_forward(x, normalized_shape, gamma, beta, *, eps=1e-5):
    """LayerNorm: statistics over the last len(normalized_shape) axes of each sample.

    x: (*, *normalized_shape), any rank >= len(normalized_shape). gamma, beta: of shape
    normalized_shape (elementwise), or None. mu, var per leading index (eq-ln-stats),
    x_hat (eq-ln-xhat), y = gamma * x_hat + beta (eq-ln-affine). The same in training and
    evaluation: no running statistics. Returns (y, NormCache).
    """
    where = "layer_norm_forward"
    x = as_floating_input(where, x, min_rank=0)  # rank: checked with normalized_shape
    layout = _trailing_layout(where, x, normalized_shape, gamma, beta)
    y, cache, _, _ = normalization_forward(x, layout, gamma, beta, eps, family="layer_norm")
    return y, cache


def layer_norm_backward(dy, cache):
    """(dx, dgamma, dbeta); dgamma and dbeta have normalized_shape (eq-ln-dx, eq-ln-dgamma)."""
    return normalization_backward(dy, cache, "layer_norm")


# --- GroupNorm and InstanceNorm -----------------------------------------------------------

def _group_layout(shape, num_groups):
    n, c = shape[:2]
    # (N, C, *spatial) -> (N, G, C // G * prod(spatial)): each row of the last axis is one
    # group of C // G consecutive channels at every spatial position.
    view = (n, num_groups, c // num_groups * prod(shape[2:]))
    return channel_layout(shape, view, (2,))


def group_norm_forward(x, num_groups, gamma, beta, *, eps=1e-5):
    """GroupNorm: statistics per sample over groups of C // num_groups channels.

    x: (N, C, *spatial), num_groups divides C; gamma, beta: (C,) or None (per channel, not
    per group). mu, var per (sample, group) (eq-gn-stats), x_hat (eq-gn-xhat),
    y = gamma * x_hat + beta (eq-gn-affine). num_groups=1 is LayerNorm over all non-batch
    axes with per-channel gamma; num_groups=C is InstanceNorm. Returns (y, NormCache).
    """
    where = "group_norm_forward"
    x = as_floating_input(where, x)
    check_num_groups(where, x.shape[1], num_groups)
    check_channel_params(where, x, gamma=gamma, beta=beta)
    check_group_norm_size(where, x.shape, num_groups)
    y, cache, _, _ = normalization_forward(x, _group_layout(x.shape, num_groups), gamma, beta,
                                           eps, family="group_norm")
    return y, cache


def group_norm_backward(dy, cache):
    """(dx, dgamma, dbeta); dgamma, dbeta: (C,) (eq-gn-dx)."""
    return normalization_backward(dy, cache, "group_norm")


def instance_norm_forward(x, gamma, beta, *, running_mean=None, running_var=None,
                          use_input_stats=True, momentum=0.1, eps=1e-5):
    """InstanceNorm: statistics per (sample, channel) over the spatial axes.

    x: (N, C, *spatial); gamma, beta: (C,) or None. With use_input_stats (the default)
    mu, var per (sample, channel) (eq-in-stats), x_hat (eq-in-xhat), y = gamma * x_hat + beta
    (eq-in-affine): GroupNorm with C groups. Semantics of torch.nn.functional.instance_norm:
    when running_mean/running_var (C,) are given with use_input_stats, they are updated in
    place with the AVERAGE over the batch of the per-instance mean and unbiased variance
    (eq-in-running); use_input_stats=False normalizes with them instead (eq-bn-eval).
    Returns (y, NormCache).
    """
    where = "instance_norm_forward"
    x = as_floating_input(where, x)
    check_channel_params(where, x, gamma=gamma, beta=beta, running_mean=running_mean,
                          running_var=running_var)
    check_instance_norm(where, x.shape, use_input_stats=use_input_stats,
                        has_running_mean=running_mean is not None,
                        has_running_var=running_var is not None)
    layout = _group_layout(x.shape, x.shape[1])  # (N, C, prod(spatial))
    stats = None
    if not use_input_stats:
        stats = (channel_column(running_mean, 3, x.dtype),  # (C,) -> (1, C, 1)
                 channel_column(running_var, 3, x.dtype))
    y, cache, mu, var = normalization_forward(x, layout, gamma, beta, eps, stats=stats,
                                              family="instance_norm")
    if use_input_stats and running_mean is not None:
        update_running(running_mean, running_var, mu.mean(axis=0).ravel(),
                       var.mean(axis=0).ravel(), prod(x.shape[2:]), momentum)
    return y, cache


def instance_norm_backward(dy, cache):
    """(dx, dgamma, dbeta); dgamma, dbeta: (C,) (eq-in-dx)."""
    return normalization_backward(dy, cache, "instance_norm")


# --- RMSNorm ------------------------------------------------------------------------------

def rms_norm_forward(x, normalized_shape, gamma, *, eps=None):
    """RMSNorm (torch.nn.RMSNorm's semantics): no mean is removed and there is no shift.

    x: (*, *normalized_shape); gamma: normalized_shape or None. ms = mean(x^2) over the last
    len(normalized_shape) axes (eq-rms-ms), x_hat = x / sqrt(ms + eps) (eq-rms-xhat),
    y = gamma * x_hat (eq-rms-affine). eps=None means np.finfo(x.dtype).eps, as torch's
    torch.finfo(x.dtype).eps. Returns (y, NormCache).
    """
    where = "rms_norm_forward"
    x = as_floating_input(where, x, min_rank=0)  # rank: checked with normalized_shape
    layout = _trailing_layout(where, x, normalized_shape, gamma)
    if eps is None:
        eps = np.finfo(x.dtype).eps
    y, cache, _, _ = normalization_forward(x, layout, gamma, None, eps, centered=False,
                                           family="rms_norm")
    return y, cache


def rms_norm_backward(dy, cache):
    """(dx, dgamma); dx by eq-rms-dx, dgamma = sum(dy * x_hat) (eq-rms-dgamma)."""
    dx, dgamma, _ = normalization_backward(dy, cache, "rms_norm")
    return dx, dgamma


# --- Ghost BatchNorm ----------------------------------------------------------------------

def ghost_batch_norm_forward(x, gamma, beta, *, virtual_batch_size, running_mean=None,
                             running_var=None, training=True, momentum=0.1, eps=1e-5):
    """Ghost BatchNorm (Hoffer et al. 2017): BatchNorm on each virtual batch separately.

    x: (N, C, *spatial) with N divisible by virtual_batch_size V in training; the batch is
    cut into N // V virtual batches of V consecutive samples, and each is normalized with
    its own per-channel mu, var (eq-gbn-stats, eq-gbn-xhat); y = gamma * x_hat + beta.
    Running statistics (C,), when given, get one BatchNorm update per virtual batch, in
    order (eq-gbn-running), exactly as if BatchNorm had been applied to each virtual batch
    in turn. Evaluation (training=False) is BatchNorm's: the running statistics, any N.
    Returns (y, NormCache).
    """
    where = "ghost_batch_norm_forward"
    x = as_floating_input(where, x, max_rank=5)
    check_channel_params(where, x, gamma=gamma, beta=beta, running_mean=running_mean,
                          running_var=running_var)
    check_virtual_batch(where, x.shape, virtual_batch_size, training=training)
    ghost_shape = (virtual_batch_size,) + x.shape[1:]  # the shape BatchNorm sees per virtual batch
    check_batch_norm(where, ghost_shape if training else x.shape, training=training,
                     has_running_mean=running_mean is not None,
                     has_running_var=running_var is not None, eps=eps)
    if not training:
        layout = channel_layout(x.shape, x.shape, channel_reduction_axes(x.ndim))
        stats = (channel_column(running_mean, x.ndim, x.dtype),
                 channel_column(running_var, x.ndim, x.dtype))
        y, cache, _, _ = normalization_forward(x, layout, gamma, beta, eps, stats=stats,
                                               family="ghost_batch_norm")
        return y, cache

    num_virtual = x.shape[0] // virtual_batch_size
    # (N, C, *spatial) -> (N // V, V, C, *spatial): virtual batch g holds samples g*V .. g*V+V-1
    view = (num_virtual,) + ghost_shape
    axes = (1,) + tuple(range(3, len(view)))  # BatchNorm's axes, shifted by the new axis 0
    y, cache, mu, var = normalization_forward(x, channel_layout(x.shape, view, axes),
                                              gamma, beta, eps, family="ghost_batch_norm")
    if running_mean is not None:
        m = x.size // x.shape[1] // num_virtual  # numbers per channel in one virtual batch
        for g in range(num_virtual):  # one update per virtual batch, in order
            update_running(running_mean, running_var, mu[g].ravel(), var[g].ravel(), m,
                           momentum)
    return y, cache


def ghost_batch_norm_backward(dy, cache):
    """(dx, dgamma, dbeta): BatchNorm's eq-bn-dx within each virtual batch (eq-gbn-dx)."""
    return normalization_backward(dy, cache, "ghost_batch_norm")
