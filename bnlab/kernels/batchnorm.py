"""BatchNorm on the Triton kernels of ``triton_kernels``: launchers, the autograd Function and
the functional entry point ``batch_norm`` (torch.nn.functional.batch_norm's signature).

Kernel launches per call, for x of m = N * S rows and C channels (S = prod(spatial)), and the
traffic over tensors of x's size (each m * C * b bytes, b bytes per element):

    training forward   chunk_moments, merge_moments, normalize   reads x twice, writes y
    eval forward       normalize                                  reads x once, writes y
    training backward  chunk_grad_sums, sum_chunks, grad_input    reads dy and x twice, writes dx
    eval backward      grad_input                                 reads dy once, writes dx
                       (+ chunk_grad_sums, sum_chunks when gamma or beta needs a gradient:
                       reads dy and x once more)

Everything else (the per-chunk partials, the (C,) statistics and parameters) is
O(num_chunks * C) numbers.
"""

import numbers
from math import prod
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .._validate import check_batch_norm, check_input, check_per_channel
from . import triton_kernels as kernels

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

TILE_ELEMENTS = 2048  # elements per (BLOCK_R, BLOCK_C) tile
MAX_BLOCK_C = 64  # channels per tile when channels are adjacent in memory
TARGET_PROGRAMS = 1024  # (chunk, channel block) programs the default chunking aims for
MERGE_BLOCK_C = 128  # channels per program of the merge kernels


def interpreter_active():
    """True when the kernels were defined for Triton's interpreter, which runs them on CPU
    tensors: TRITON_INTERPRET=1 was set when this module was first imported."""
    return isinstance(kernels.normalize_kernel, InterpretedFunction)


def _accumulation_dtype(dtype):
    """(torch dtype, triton dtype) of statistics and sums: float64 for float64, else float32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


# --- memory layout: x (N, C, *spatial) as m = N * S rows by C channels --------------------

def row_strides(t):
    """(stride_n, stride_c, stride_s) such that element (n, c, s) of t, with s the flattened
    spatial index, sits at n * stride_n + c * stride_c + s * stride_s; None when t's spatial
    dims do not flatten to one stride (e.g. a slice x[..., ::2]).

    NCHW-contiguous: stride_s = 1; channels-last (channels_last, channels_last_3d):
    stride_c = 1 and stride_s = C; (N, C): no spatial dims, stride_s unused.
    """
    spatial = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    for (_, outer), (size, inner) in zip(spatial, spatial[1:]):
        if outer != inner * size:
            return None
    stride_s = spatial[-1][1] if spatial else 1
    return t.stride(0), t.stride(1), stride_s


def _as_rows(t):
    """t and its row_strides; a copy (NCHW-contiguous) only when t's spatial dims do not
    flatten, never for NCHW-contiguous or channels-last tensors."""
    strides = row_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = row_strides(t)
    return t, strides


class Plan(NamedTuple):
    """How the m rows and C channels of one call are tiled and chunked."""

    m: int  # rows: N * prod(spatial)
    channels: int  # C
    spatial: int  # S = prod(spatial)
    block_r: int  # rows per tile of the elementwise kernels
    block_c: int  # channels per tile
    reduce_block_r: int  # rows per tile of the chunk kernels (at most about the chunk)
    chunk: int  # rows per chunk
    num_chunks: int


def make_plan(x, x_strides, chunk_rows=None, block_rows=None):
    """Tile shape from the memory format, chunking from the sizes (or the given knobs).

    Channels adjacent in memory (channels-last, (N, C)): BLOCK_C up to 64 channels, so each
    tile row is one contiguous run. Otherwise (NCHW) BLOCK_C = 1 and a tile is BLOCK_R
    consecutive rows of one channel. Default chunks: enough (chunk, channel block) programs to
    fill a GPU (about TARGET_PROGRAMS), each chunk a whole number of tiles. The knobs
    chunk_rows and block_rows set the chunk and the chunk kernels' tile rows instead (the
    elementwise kernels keep their tiles).
    """
    n, c = x.shape[:2]
    s = prod(x.shape[2:])
    m = n * s
    block_c = min(MAX_BLOCK_C, triton.next_power_of_2(c)) if x_strides[1] == 1 else 1
    block_r = TILE_ELEMENTS // block_c
    reduce_block_r = block_rows or block_r
    channel_blocks = triton.cdiv(c, block_c)
    if chunk_rows is None:
        num_chunks = min(triton.cdiv(m, reduce_block_r), TARGET_PROGRAMS // channel_blocks)
        num_chunks = max(1, num_chunks)
        chunk_rows = triton.cdiv(triton.cdiv(m, num_chunks), reduce_block_r) * reduce_block_r
    reduce_block_r = min(reduce_block_r, triton.next_power_of_2(chunk_rows))
    return Plan(m, c, s, block_r, block_c, reduce_block_r, chunk_rows,
                triton.cdiv(m, chunk_rows))


def _channel_blocks(plan):
    return triton.cdiv(plan.channels, plan.block_c)


def _merge_block(width):
    return min(MERGE_BLOCK_C, triton.next_power_of_2(width))


# --- forward ------------------------------------------------------------------------------

def _normalize(x, x_strides, mean, rstd, weight, bias, plan):
    """y = (x - mean) * rstd * gamma + beta per channel (normalize_kernel); y keeps x's
    memory format."""
    _, tl_acc = _accumulation_dtype(x.dtype)
    y = torch.empty_like(x)
    y_strides = row_strides(y)
    assert y_strides is not None, "empty_like gives a dense tensor"
    weight_arg = rstd if weight is None else weight.contiguous()  # unused when absent
    bias_arg = rstd if bias is None else bias.contiguous()
    grid = (triton.cdiv(plan.m, plan.block_r), _channel_blocks(plan))
    kernels.normalize_kernel[grid](
        x, y, mean, rstd, weight_arg, bias_arg, plan.m, plan.channels, plan.spatial,
        *x_strides, *y_strides, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        ACC=tl_acc, BLOCK_R=plan.block_r, BLOCK_C=plan.block_c)
    return y


def batch_statistics(x, x_strides, plan, running_mean=None, running_var=None, momentum=0.1,
                     eps=1e-5):
    """mean and rstd, (C,) in the accumulation dtype, of x's channels (eq-bn-mean,
    eq-bn-var, rstd = 1 / sqrt(var + eps)); running_mean/running_var, when given, updated in
    place (eq-bn-running-mean, eq-bn-running-var). Reads x once."""
    acc, tl_acc = _accumulation_dtype(x.dtype)
    c = plan.channels
    part_mean = x.new_empty((plan.num_chunks, c), dtype=acc)
    part_m2 = x.new_empty((plan.num_chunks, c), dtype=acc)
    kernels.chunk_moments_kernel[(plan.num_chunks, _channel_blocks(plan))](
        x, part_mean, part_m2, plan.m, c, plan.spatial, plan.chunk, *x_strides,
        ACC=tl_acc, BLOCK_R=plan.reduce_block_r, BLOCK_C=plan.block_c)

    mean, rstd = x.new_empty(c, dtype=acc), x.new_empty(c, dtype=acc)
    update = running_mean is not None
    # The kernel updates contiguous (C,) buffers; any other gets its values copied back.
    buffers = [b.contiguous() for b in (running_mean, running_var)] if update else [mean, rstd]
    kernels.merge_moments_kernel[(triton.cdiv(c, _merge_block(c)),)](
        part_mean, part_m2, x, mean, rstd, *buffers, plan.m, c, plan.chunk, plan.num_chunks,
        x_strides[1], float(momentum), float(eps), UPDATE_RUNNING=update, ACC=tl_acc,
        BLOCK_C=_merge_block(c))
    if update:
        for given, updated in zip((running_mean, running_var), buffers):
            if updated is not given:
                given.copy_(updated)
    return mean, rstd


def forward_training(x, x_strides, weight, bias, running_mean, running_var, momentum, eps,
                     plan):
    """Training forward: batch statistics (chunks merged with Chan's formula, running
    statistics updated in place), then normalize + affine (eq-bn-mean .. eq-bn-affine).
    Reads x twice, writes y. Returns y, mean, rstd."""
    mean, rstd = batch_statistics(x, x_strides, plan, running_mean, running_var, momentum, eps)
    return _normalize(x, x_strides, mean, rstd, weight, bias, plan), mean, rstd


def forward_eval(x, x_strides, weight, bias, running_mean, running_var, eps, plan):
    """Eval forward (eq-bn-eval): the running statistics are the constants; per channel
    scale = gamma * rsqrt(running_var + eps), y = (x - running_mean) * scale + beta, i.e.
    x * scale + shift with shift = beta - running_mean * scale. Reads x once, writes y.
    Returns y, mean, rstd (copies, so later updates of the buffers do not touch them)."""
    acc, _ = _accumulation_dtype(x.dtype)
    mean = running_mean.detach().to(acc, copy=True)
    rstd = torch.rsqrt(running_var.detach().to(acc) + eps)
    return _normalize(x, x_strides, mean, rstd, weight, bias, plan), mean, rstd


# --- backward -----------------------------------------------------------------------------

def backward(dy, x, weight, mean, rstd, batch_stats, need_dx, need_sums, plan):
    """dx (eq-bn-dx in training, eq-bn-dx-eval in eval) and the (2 * C,) sums
    [sum(dy) (eq-bn-dbeta), sum(dy * x_hat) (eq-bn-dgamma)], each None when not needed.

    x: the saved input (row-flattenable), mean and rstd (C,) as the forward used them.
    Training reads dy and x twice (sums, then dx) and writes dx; eval reads dy and x once for
    the sums (when gamma or beta needs them) and dy once for dx.
    """
    acc, tl_acc = _accumulation_dtype(x.dtype)
    c = plan.channels
    dy, dy_strides = _as_rows(dy)
    x_strides = row_strides(x)
    sums = None
    if need_sums or (need_dx and batch_stats):
        part = x.new_empty((plan.num_chunks, 2 * c), dtype=acc)
        kernels.chunk_grad_sums_kernel[(plan.num_chunks, _channel_blocks(plan))](
            dy, x, mean, rstd, part, plan.m, c, plan.spatial, plan.chunk, *dy_strides,
            *x_strides, ACC=tl_acc, BLOCK_R=plan.reduce_block_r, BLOCK_C=plan.block_c)
        sums = x.new_empty(2 * c, dtype=acc)
        kernels.sum_chunks_kernel[(triton.cdiv(2 * c, _merge_block(2 * c)),)](
            part, sums, plan.num_chunks, 2 * c, BLOCK=_merge_block(2 * c))

    dx = None
    if need_dx:
        dx = torch.empty_like(x)
        dx_strides = row_strides(dx)
        weight_arg = rstd if weight is None else weight.contiguous()  # unused when absent
        grid = (triton.cdiv(plan.m, plan.block_r), _channel_blocks(plan))
        kernels.grad_input_kernel[grid](
            dy, x, dx, mean, rstd, weight_arg, rstd if sums is None else sums, plan.m, c,
            plan.spatial, *dy_strides, *x_strides, *dx_strides, HAS_WEIGHT=weight is not None,
            BATCH_STATS=batch_stats, ACC=tl_acc, BLOCK_R=plan.block_r, BLOCK_C=plan.block_c)
    return dx, sums


class BatchNormFunction(torch.autograd.Function):
    """y = gamma * x_hat + beta on the Triton kernels, with the closed-form backward.

    forward(x, weight, bias, running_mean, running_var, training, momentum, eps, knobs) -> y,
    knobs = (chunk_rows, block_rows) or (None, None). Saves x, weight, and the (C,) mean and
    rstd (batch statistics in training, running ones in eval) in the accumulation dtype.
    backward: dx, dweight (in weight's dtype), dbias (in bias's dtype). Differentiated again
    (create_graph=True), it is bnlab.torch's ``backward_by_autograd``: the kernel is not torch
    operations that autograd could record.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                knobs):
        ctx.training, ctx.knobs, ctx.eps = training, knobs, eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        if x.numel() == 0:  # as torch: an empty batch, an empty y, the buffers untouched
            ctx.save_for_backward(x, weight)
            return torch.empty_like(x)
        x_in, (x, x_strides) = x, _as_rows(x)
        plan = make_plan(x, x_strides, *knobs)
        with torch.cuda.device_of(x):  # launch on x's GPU (a no-op on the CPU)
            if training:
                y, mean, rstd = forward_training(x, x_strides, weight, bias, running_mean,
                                                 running_var, momentum, eps, plan)
            else:
                y, mean, rstd = forward_eval(x, x_strides, weight, bias, running_mean,
                                             running_var, eps, plan)
        ctx.save_for_backward(x_in, weight, mean, rstd, bias)  # x_in: for create_graph
        return y

    @staticmethod
    def backward(ctx, dy):
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        c = ctx.saved_tensors[0].shape[1]
        if len(ctx.saved_tensors) == 2:  # the empty batch: every sum is 0
            x, weight = ctx.saved_tensors
            dx, sums = torch.zeros_like(x), x.new_zeros(2 * c, dtype=torch.float32)
        elif torch.is_grad_enabled():  # create_graph=True: this backward is differentiated too
            return _backward_by_autograd(ctx, dy) + (None,) * 6
        else:
            x, weight, mean, rstd, _ = ctx.saved_tensors
            x, x_strides = _as_rows(x)
            plan = make_plan(x, x_strides, *ctx.knobs)
            with torch.cuda.device_of(x):
                dx, sums = backward(dy, x, weight, mean, rstd, ctx.training, need_dx,
                                    need_dweight or need_dbias, plan)
        dweight = sums[c:].to(weight.dtype) if need_dweight else None  # eq-bn-dgamma
        dbias = sums[:c].to(ctx.bias_dtype) if need_dbias else None  # eq-bn-dbeta
        return dx, dweight, dbias, None, None, None, None, None, None


def _backward_by_autograd(ctx, dy):
    """BatchNormFunction's (dx, dweight, dbias) by bnlab.torch's ``backward_by_autograd``:
    batch statistics recomputed from x in training, the saved running ones in eval."""
    from ..torch.function import backward_by_autograd
    from ..torch.functional import _batch_norm_layout

    x, weight, mean, rstd, bias = ctx.saved_tensors
    layout = _batch_norm_layout(x.shape)
    given = (None, None) if ctx.training else (t.reshape(layout.affine) for t in (mean, rstd))
    return backward_by_autograd(dy, x, weight, bias, ctx.needs_input_grad[:3], layout,
                                ctx.eps, True, *given)


# --- the functional entry point -----------------------------------------------------------

def check_arguments(where, input, running_mean, running_var, weight, bias, training,
                    momentum, eps):
    """torch.nn.functional.batch_norm's conditions (bnlab._validate), plus what the kernels
    need: a supported dtype, a float momentum, every tensor on one device that runs Triton."""
    if not isinstance(input, torch.Tensor):
        raise ValueError(f"{where}: expected input to be a torch.Tensor; got "
                         f"{type(input).__name__}.")
    check_input(where, input.shape, input.dtype, input.is_floating_point(), 2, 5)
    if input.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{where}: the Triton kernels support float32, float16, bfloat16 and float64 "
            f"inputs; got {input.dtype}. Convert the input (e.g. x.float()) or use "
            "backend='torch'.")
    params = dict(weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    for name, v in params.items():
        if v is not None:
            check_per_channel(where, name, v.shape, input.shape[1])
    check_batch_norm(where, input.shape, training=training,
                     has_running_mean=running_mean is not None,
                     has_running_var=running_var is not None, eps=eps)
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool):
        raise ValueError(
            f"{where}: expected momentum to be a float, the weight of the new batch in the "
            f"running statistics; got {momentum!r}. The cumulative average (momentum=None) "
            "is the modules' business: they pass 1 / num_batches_tracked.")
    for name, v in params.items():
        if v is not None and v.device != input.device:
            raise ValueError(f"{where}: expected {name} on the input's device {input.device}; "
                             f"got {v.device}. Move it with .to(input.device).")
    if input.device.type == "cpu" and not interpreter_active():
        raise ValueError(
            f"{where}: the input is on the CPU, where Triton kernels run only in Triton's "
            "interpreter, which is off. Set TRITON_INTERPRET=1 in the environment before "
            "triton is first imported (e.g. TRITON_INTERPRET=1 python ...), move the input "
            "to a CUDA device, or use backend='torch'.")
    if input.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{where}: the Triton kernels run on CUDA devices (and on the CPU "
                         f"in Triton's interpreter); got an input on {input.device}. Use "
                         "backend='torch'.")


def _check_knob(where, name, value, power_of_two=False):
    ok = value is None or (isinstance(value, int) and value >= 1
                           and not (power_of_two and value & (value - 1)))
    if not ok:
        kind = "a power of two" if power_of_two else "a positive int"
        raise ValueError(f"{where}: expected {name} to be None or {kind}; got {value!r}.")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, chunk_rows=None, block_rows=None):
    """torch.nn.functional.batch_norm on Triton kernels: same signature and semantics.

    input: (N, C) or (N, C, *spatial) up to 5-D, float32/float16/bfloat16/float64, on CUDA
    (or on the CPU in Triton's interpreter, TRITON_INTERPRET=1), NCHW-contiguous or
    channels-last (both read in place; y keeps the input's memory format). running_mean,
    running_var: (C,) or None, updated in place in training (unbiased variance, momentum =
    weight of the new batch, a float). weight, bias: (C,) or None. Statistics in float32
    (float64 for float64 inputs); y in the input's dtype. Differentiable once (input,
    weight, bias), by the backward kernels.

    chunk_rows, block_rows (keyword-only knobs, for tests and tuning): rows per chunk of the
    parallel reductions, and rows per tile within a chunk (a power of two); None picks them
    from the sizes.
    """
    where = "batch_norm"
    check_arguments(where, input, running_mean, running_var, weight, bias, training,
                    momentum, eps)
    _check_knob(where, "chunk_rows", chunk_rows)
    _check_knob(where, "block_rows", block_rows, power_of_two=True)
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                   bool(training), float(momentum), float(eps),
                                   (chunk_rows, block_rows))
