"""Functional forms with torch.nn.functional's signatures, on hand-written autograd.

Every function here builds a ``Layout`` (where its statistics come from) and calls the one
autograd Function, ``function.Normalize``; running statistics, where a function has them,
are updated afterwards from the statistics it returns. Only tensor ops: any device.
``batch_norm`` can instead run on bnlab.kernels' Triton kernels (its ``backend`` argument);
they are imported only then, so this module never imports triton by itself.
"""

import importlib.util
from functools import cache
from math import prod

import torch

from .._renorm import batch_renorm_schedule  # noqa: F401  (re-exported)
from .._validate import (
    as_shape_tuple,
    channel_reduction_axes,
    check_batch_norm,
    check_group_norm_size,
    check_input,
    check_instance_norm,
    check_normalized_shape,
    check_num_groups,
    check_param_shape,
    check_per_channel,
    check_renorm,
    check_virtual_batch,
)
from .function import Layout, Normalize
from .normalize import update_running

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
           "batch_renorm", "ghost_batch_norm", "batch_renorm_schedule"]


def _as_channel_column(v, ndim):
    """(C,) -> (1, C, 1, ..., 1) so that it broadcasts against (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _channel_layout(shape, view, dims):
    """A layout whose weight and bias are per channel, (C,)."""
    return Layout(tuple(view), tuple(dims), (1, shape[1]) + (1,) * (len(shape) - 2),
                  (shape[1],))


def _batch_norm_layout(shape):
    return _channel_layout(shape, shape, channel_reduction_axes(len(shape)))


def _check_tensor_input(where, input, min_rank=2, max_rank=5):
    if not isinstance(input, torch.Tensor):
        raise ValueError(f"{where}: expected input to be a torch.Tensor; got "
                         f"{type(input).__name__}.")
    check_input(where, input.shape, input.dtype, input.is_floating_point(), min_rank, max_rank)


def _check_channel_params(where, input, **params):
    for name, v in params.items():
        if v is not None:
            check_per_channel(where, name, v.shape, input.shape[1])


# --- BatchNorm ----------------------------------------------------------------------------

def _check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps,
                           where="batch_norm"):
    _check_tensor_input(where, input)
    _check_channel_params(where, input, weight=weight, bias=bias, running_mean=running_mean,
                          running_var=running_var)
    check_batch_norm(where, input.shape, training=training,
                     has_running_mean=running_mean is not None,
                     has_running_var=running_var is not None, eps=eps)


BACKENDS = ("auto", "torch", "triton")
# The input dtypes bnlab.kernels supports (its SUPPORTED_DTYPES; not imported from there,
# which would import triton).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_backend(where, backend):
    if backend not in BACKENDS:
        raise ValueError(
            f"{where}: expected backend to be 'auto', 'torch' or 'triton'; got {backend!r}. "
            "'torch' is bnlab's autograd Function, 'triton' bnlab.kernels' Triton kernels, "
            "'auto' the kernels for CUDA inputs when triton is installed, else 'torch'.")


@cache
def _triton_installed():
    return importlib.util.find_spec("triton") is not None  # finds it without importing it


def _use_kernels(backend, input):
    """Whether batch_norm runs on bnlab.kernels for this backend and input (see batch_norm)."""
    check_backend("batch_norm", backend)
    if backend == "auto":
        return input.is_cuda and input.dtype in KERNEL_DTYPES and _triton_installed()
    if backend == "triton" and not _triton_installed():
        raise ValueError("batch_norm: backend='triton' runs bnlab.kernels' Triton kernels, "
                         "but the triton package is not installed. Install it (pip install "
                         "triton) or use backend='torch'.")
    return backend == "triton"


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, backend="auto"):
    """Same signature and semantics as ``torch.nn.functional.batch_norm``.

    input: (N, C, *spatial). running_mean, running_var: (C,) or None; updated in place in
    training (unbiased variance, ``momentum`` = weight of the new batch; eq-bn-running-mean,
    eq-bn-running-var). weight, bias: (C,) or None. Statistics per channel over every axis
    but 1 (eq-bn-mean .. eq-bn-affine); gradients from the closed form eq-bn-dx.

    backend (keyword-only): "torch" runs bnlab's autograd Function (any device); "triton"
    runs bnlab.kernels.batch_norm, Triton kernels (CUDA; a CPU input needs Triton's
    interpreter, TRITON_INTERPRET=1); "auto" (the default) picks "triton" for a CUDA input
    of a dtype the kernels support (float32, float16, bfloat16, float64) when triton is
    installed, else "torch". Both backends' backward passes are differentiable again
    (create_graph=True, as for a gradient penalty), as torch.nn's is.
    """
    _check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    if _use_kernels(backend, input):
        from ..kernels import batch_norm as kernel_batch_norm  # imports triton, on first use

        return kernel_batch_norm(input, running_mean, running_var, weight, bias, training,
                                 momentum, eps)
    if input.numel() == 0:  # an empty batch has no statistics: nothing is updated (torch.nn's)
        return _empty_batch_output(input, weight, bias)
    stats = None
    if not training:  # eq-bn-eval
        stats = (_as_channel_column(running_mean, input.ndim),
                 _as_channel_column(running_var, input.ndim))
    y, mu, var = Normalize.apply(input, weight, bias, _batch_norm_layout(input.shape), eps,
                                 True, stats, None)
    if training and running_mean is not None:
        update_running(running_mean, running_var, mu.flatten(), var.flatten(),
                       input.numel() // input.shape[1], momentum)
    return y


def _empty_batch_output(input, weight, bias):
    """BatchNorm of a batch with no samples: an empty y of input's shape that autograd
    connects to weight and bias, whose gradients are then sums over nothing, zeros."""
    y = input.clone()
    if weight is not None:
        y = y * _as_channel_column(weight, input.ndim)
    if bias is not None:
        y = y + _as_channel_column(bias, input.ndim)
    return y


# --- LayerNorm and RMSNorm ----------------------------------------------------------------

def _trailing_layout(where, input, normalized_shape, weight, bias=None):
    """Reduce the last len(normalized_shape) dims; weight and bias are elementwise."""
    _check_tensor_input(where, input, min_rank=0, max_rank=None)
    normalized_shape = as_shape_tuple(where, normalized_shape)
    check_normalized_shape(where, input.shape, normalized_shape)
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None:
            check_param_shape(where, name, v.shape, normalized_shape,
                              "one value per normalized element, normalized_shape")
    lead = input.ndim - len(normalized_shape)
    return Layout(tuple(input.shape), tuple(range(lead, input.ndim)),
                  (1,) * lead + normalized_shape, normalized_shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Same signature and semantics as ``torch.nn.functional.layer_norm``.

    input: (*, *normalized_shape); weight, bias: normalized_shape or None. Statistics per
    leading index over the last len(normalized_shape) dims (eq-ln-stats, eq-ln-xhat,
    eq-ln-affine); gradients eq-ln-dx, eq-ln-dgamma.
    """
    layout = _trailing_layout("layer_norm", input, normalized_shape, weight, bias)
    return Normalize.apply(input, weight, bias, layout, eps, True, None, None)[0]


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """Same signature and semantics as ``torch.nn.functional.rms_norm``.

    x_hat = x / sqrt(mean(x^2) + eps) over the last len(normalized_shape) dims (eq-rms-ms,
    eq-rms-xhat), y = weight * x_hat (eq-rms-affine), no bias; eps=None means
    torch.finfo(input.dtype).eps. Gradients eq-rms-dx, eq-rms-dgamma.
    """
    layout = _trailing_layout("rms_norm", input, normalized_shape, weight)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    return Normalize.apply(input, weight, None, layout, eps, False, None, None)[0]


# --- GroupNorm and InstanceNorm -----------------------------------------------------------

def _group_layout(shape, num_groups):
    n, c = shape[:2]
    # (N, C, *spatial) -> (N, G, C // G * prod(spatial)): each row of the last dim is one
    # group of C // G consecutive channels at every spatial position.
    view = (n, num_groups, c // num_groups * prod(shape[2:]))
    return _channel_layout(shape, view, (2,))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Same signature and semantics as ``torch.nn.functional.group_norm``.

    input: (N, C, *spatial) with num_groups dividing C; weight, bias: (C,) or None.
    Statistics per (sample, group) (eq-gn-stats, eq-gn-xhat, eq-gn-affine); gradient eq-gn-dx.
    """
    where = "group_norm"
    _check_tensor_input(where, input, max_rank=None)
    check_num_groups(where, input.shape[1], num_groups)
    _check_channel_params(where, input, weight=weight, bias=bias)
    check_group_norm_size(where, input.shape, num_groups)
    layout = _group_layout(input.shape, num_groups)
    return Normalize.apply(input, weight, bias, layout, eps, True, None, None)[0]


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Same signature and semantics as ``torch.nn.functional.instance_norm``.

    use_input_stats: statistics per (sample, channel) over the spatial dims (eq-in-stats,
    eq-in-xhat, eq-in-affine), GroupNorm with C groups; running_mean/running_var (C,), when
    given, are updated in place with the batch AVERAGE of the per-instance mean and unbiased
    variance (eq-in-running). use_input_stats=False: normalize with the running statistics.
    """
    where = "instance_norm"
    _check_tensor_input(where, input, max_rank=None)
    _check_channel_params(where, input, weight=weight, bias=bias, running_mean=running_mean,
                          running_var=running_var)
    check_instance_norm(where, input.shape, use_input_stats=use_input_stats,
                        has_running_mean=running_mean is not None,
                        has_running_var=running_var is not None)
    layout = _group_layout(input.shape, input.shape[1])  # (N, C, prod(spatial))
    stats = None
    if not use_input_stats:  # (C,) -> (1, C, 1)
        stats = (running_mean.reshape(1, -1, 1), running_var.reshape(1, -1, 1))
    y, mu, var = Normalize.apply(input, weight, bias, layout, eps, True, stats, None)
    if use_input_stats and running_mean is not None:
        update_running(running_mean, running_var, mu.mean(dim=0).flatten(),
                       var.mean(dim=0).flatten(), prod(input.shape[2:]), momentum)
    return y


# --- Batch Renormalization ----------------------------------------------------------------

def batch_renorm(input, running_mean, running_var, weight=None, bias=None, training=False,
                 momentum=0.01, eps=1e-5, rmax=3.0, dmax=5.0):
    """Batch Renormalization (Ioffe 2017), with batch_norm's signature plus rmax and dmax.

    running_mean, running_var: (C,), required. Training: r = clip(sigma_B / sigma, 1/rmax,
    rmax) (eq-brn-r), d = clip((mu_B - mu) / sigma, -dmax, dmax) (eq-brn-d) from the running
    statistics before this batch, x_hat = x_hat_BN * r + d (eq-brn-xhat), then the running
    statistics are updated like batch_norm's. r and d are constants in the backward pass
    (eq-brn-dx, eq-brn-dgamma). Eval: batch_norm's eval. ``momentum`` defaults to 0.01
    (TensorFlow's renorm_momentum=0.99); batch_renorm_schedule(step) gives rmax, dmax.
    """
    where = "batch_renorm"
    _check_tensor_input(where, input)
    _check_channel_params(where, input, weight=weight, bias=bias, running_mean=running_mean,
                          running_var=running_var)
    check_renorm(where, rmax=rmax, dmax=dmax, has_running_mean=running_mean is not None,
                 has_running_var=running_var is not None)
    check_batch_norm(where, input.shape, training=training, has_running_mean=True,
                     has_running_var=True, eps=eps)
    running = (_as_channel_column(running_mean, input.ndim),
               _as_channel_column(running_var, input.ndim))
    stats, renorm = (None, (*running, rmax, dmax)) if training else (running, None)
    y, mu, var = Normalize.apply(input, weight, bias, _batch_norm_layout(input.shape), eps,
                                 True, stats, renorm)
    if training:  # after the Function: r and d used the statistics before this batch
        update_running(running_mean, running_var, mu.flatten(), var.flatten(),
                       input.numel() // input.shape[1], momentum)
    return y


# --- Ghost BatchNorm ----------------------------------------------------------------------

def ghost_batch_norm(input, running_mean, running_var, weight=None, bias=None,
                     training=False, momentum=0.1, eps=1e-5, *, virtual_batch_size):
    """Ghost BatchNorm (Hoffer et al. 2017), with batch_norm's signature plus
    ``virtual_batch_size`` V.

    Training: N must be divisible by V; each run of V consecutive samples is normalized with
    its own per-channel statistics (eq-gbn-stats, eq-gbn-xhat), and the running statistics
    get one batch_norm update per virtual batch, in order (eq-gbn-running): the same as
    batch_norm applied to each virtual batch in turn. Eval: batch_norm's eval, any N.
    """
    where = "ghost_batch_norm"
    _check_tensor_input(where, input)
    _check_channel_params(where, input, weight=weight, bias=bias, running_mean=running_mean,
                          running_var=running_var)
    check_virtual_batch(where, input.shape, virtual_batch_size, training=training)
    ghost_shape = (virtual_batch_size,) + tuple(input.shape[1:])  # what BatchNorm sees
    check_batch_norm(where, ghost_shape if training else input.shape, training=training,
                     has_running_mean=running_mean is not None,
                     has_running_var=running_var is not None, eps=eps)
    if not training:
        stats = (_as_channel_column(running_mean, input.ndim),
                 _as_channel_column(running_var, input.ndim))
        return Normalize.apply(input, weight, bias, _batch_norm_layout(input.shape), eps,
                               True, stats, None)[0]

    num_virtual = input.shape[0] // virtual_batch_size
    # (N, C, *spatial) -> (N // V, V, C, *spatial): virtual batch g is samples g*V .. g*V+V-1
    view = (num_virtual,) + ghost_shape
    dims = (1,) + tuple(range(3, len(view)))  # BatchNorm's dims, shifted by the new dim 0
    y, mu, var = Normalize.apply(input, weight, bias, _channel_layout(input.shape, view, dims),
                                 eps, True, None, None)
    if running_mean is not None:
        m = input.numel() // input.shape[1] // num_virtual  # per channel, one virtual batch
        for g in range(num_virtual):  # one update per virtual batch, in order
            update_running(running_mean, running_var, mu[g].flatten(), var[g].flatten(), m,
                           momentum)
    return y
