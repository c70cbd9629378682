"""Synchronized BatchNorm on ``torch.distributed``: every replica normalizes with the
statistics of the GLOBAL batch (the concatenation of all replicas' batches), on CPU (gloo)
or GPU (NCCL). Book chapter "BatchNorm across devices" (book/across-devices.md).

    per layer and step   forward                          backward
    collective           all_gather of (count, mean, M2)  all_reduce of (sum dy, sum dy x_hat)
    payload per replica  2C + 1 float64 values            2C values of the compute dtype

Forward: each replica reduces its own slice to a count m_k, a mean and M2 (the sum of squared
deviations from its own mean) per channel, two-pass (eq-sync-local, eq-bn-mean, eq-bn-var);
ONE all_gather exchanges them; every replica merges the gathered table with eq-sync-merge
(Chan, Golub and LeVeque's eq-num-chan for W parts at once) and normalizes with the global
mean and biased variance (eq-bn-xhat, eq-bn-affine). Why gather and merge: it is exact for
uneven counts, stable (sums of non-negative terms, differences of means; all-reducing sums of
x and x^2 would be the one-pass formula eq-num-one-pass, which cancels catastrophically), and
one round trip (an exact all_reduce scheme needs two: the mean first, then the deviations).
The table travels in float64, so counts stay exact integers past 2**24 and the merge adds no
float32 rounding.

Backward: the closed form eq-bn-dx needs the global sums of dy and dy * x_hat
(eq-sync-sums); ONE all_reduce of the 2C local sums gives them, and dx uses them with the
global count (eq-sync-dx). dgamma and dbeta are this replica's LOCAL sums, as in
torch.nn.SyncBatchNorm: their sum over replicas is the single-process gradient, and data
parallelism's gradient all-reduce (DistributedDataParallel) sums them like every other
parameter's gradient.

Running statistics get the GLOBAL mean and unbiased variance M2 / (m - 1), m the global count
(eq-bn-running-mean, eq-bn-running-var), so they are identical on every replica and equal to
those of single-process BatchNorm on the concatenated batch. A replica with no samples takes
part in both collectives with m_k = 0 and zero sums, and gets an empty output; the global
count must exceed 1. torch 2.13's ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one
does not.
"""

import torch
import torch.distributed as dist
from torch import nn

from . import modules
from .functional import batch_norm
from .normalize import (compute_dtype, merge_count_mean_m2, normalize_backward, sum_over,
                        update_running)

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "sync_batch_norm", "sync_group",
           "merge_count_mean_m2"]


def sync_group(process_group=None):
    """(group, world_size) to synchronize over, or None when there is nothing to synchronize:
    torch.distributed unavailable or not initialized, or a group of one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.group.WORLD if process_group is None else process_group
    world_size = dist.get_world_size(group)
    return (group, world_size) if world_size > 1 else None


def _reduction_dims(ndim):
    return (0,) + tuple(range(2, ndim))  # every axis but the channel axis 1


def _local_count_mean_m2(x, dims):
    """Per channel: the local count m_k, mean and M2 = sum (x - mean)^2, two-pass
    (eq-bn-mean, eq-bn-var times m_k). x: (N, C, *spatial); returns (int, (C,), (C,)).
    A replica with N = 0 has m_k = 0, mean 0 and M2 0: it contributes nothing to the merge."""
    c = x.shape[1]
    count = x.numel() // c if c else 0
    if count == 0:
        zeros = x.new_zeros(c)
        return 0, zeros, zeros
    mu = sum_over(x, dims) / count  # (1, C, 1, ...)
    x_mu = x - mu
    m2 = sum_over(x_mu * x_mu, dims)  # (1, C, 1, ...)
    return count, mu.reshape(c), m2.reshape(c)


class _SyncBatchNormFunction(torch.autograd.Function):
    """forward(x, weight, bias, eps, group, world_size) -> (y, mean, var, n):
    y normalized with the global statistics; mean and biased var (C,) and the global count
    n (a 0-dim tensor), not differentiable, for the running-statistic update."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, world_size):
        x_c = x.to(compute_dtype(x.dtype))  # float32 at least (x itself when it is)
        c, dims = x.shape[1], _reduction_dims(x.ndim)
        count, mu_k, m2_k = _local_count_mean_m2(x_c, dims)

        # One all_gather of (count, mean_k, M2_k): 2C + 1 float64 values per replica. float64
        # keeps counts exact integers past 2**24 and the merge free of float32 rounding.
        payload = torch.cat([torch.tensor([count], dtype=torch.float64, device=x.device),
                             mu_k.to(torch.float64), m2_k.to(torch.float64)])  # (2C + 1,)
        gathered = [torch.empty_like(payload) for _ in range(world_size)]
        dist.all_gather(gathered, payload, group=group)
        table = torch.stack(gathered)  # (W, 2C + 1): one row per replica
        n, mu, m2 = merge_count_mean_m2(table[:, :1], table[:, 1:1 + c], table[:, 1 + c:])
        n = int(n.item())  # exact: a sum of integers held in float64
        if n <= 1:  # every replica sees the same n, so every replica raises
            raise ValueError(
                "Expected more than 1 value per channel when training, got input of shape "
                f"{tuple(x.shape)} on this replica and {n} value(s) per channel over all "
                f"{world_size} replicas (the variance is 0). Use a global batch of at least 2.")
        var = m2 / n  # the global biased variance (eq-bn-var over all replicas)

        mu, var = mu.to(x_c.dtype), var.to(x_c.dtype)
        shape = (1, c) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, ...)
        rstd = torch.rsqrt(var + eps).reshape(shape)  # 1 / sqrt(var + eps), eq-bn-xhat
        x_hat = (x_c - mu.reshape(shape)) * rstd  # (N, C, *spatial)
        y = x_hat
        if weight is not None:  # eq-bn-affine
            y = y * weight.to(x_c.dtype).reshape(shape)
        if bias is not None:
            y = y + bias.to(x_c.dtype).reshape(shape)
        if y is x_hat:
            y = x_hat.clone()  # x_hat is saved for backward and must stay x_hat

        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.n, ctx.group = n, group
        n_t = torch.tensor(n, dtype=torch.long, device=x.device)
        ctx.mark_non_differentiable(mu, var, n_t)
        return y.to(x.dtype), mu, var, n_t

    @staticmethod
    def backward(ctx, dy, _dmu, _dvar, _dn):
        """dbeta and dgamma: this replica's LOCAL sums (eq-bn-dbeta, eq-bn-dgamma), whose sum
        over replicas is the single-process gradient; dx: eq-sync-dx, i.e. eq-bn-dx with the
        GLOBAL count and sums (eq-sync-sums), from one all_reduce of the 2C local sums."""
        x_hat, rstd, weight = ctx.saved_tensors
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        dims = _reduction_dims(x_hat.ndim)
        c = x_hat.shape[1]
        dy_c = dy.to(x_hat.dtype)
        sum_dy = sum_over(dy_c, dims).reshape(c)  # local; zeros when N = 0
        sum_dy_x_hat = sum_over(dy_c * x_hat, dims).reshape(c)

        dx = None
        if need_dx:
            # ONE all_reduce of the 2C local sums -> the global sums of eq-bn-dx
            sums = torch.cat([sum_dy, sum_dy_x_hat])  # (2C,), a new tensor: local sums kept
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
            global_sum_dy, global_sum_dy_x_hat = sums[:c], sums[c:]
            shape = rstd.shape  # (1, C, 1, ...)
            weight_rstd = rstd  # gamma * rstd, the factor of eq-bn-dx
            if weight is not None:
                weight_rstd = weight.to(rstd.dtype).reshape(shape) * rstd
            means = ((global_sum_dy / ctx.n).reshape(shape),  # mean of dy over ALL replicas
                     (global_sum_dy_x_hat / ctx.n).reshape(shape))  # ... and of dy * x_hat
            dx = normalize_backward(dy_c, x_hat, weight_rstd, dims, means=means).to(dy.dtype)
        dweight = sum_dy_x_hat.to(weight.dtype) if need_dweight else None
        dbias = sum_dy.to(dy.dtype) if need_dbias else None
        return dx, dweight, dbias, None, None, None


def _check_input(where, input, num_features=None):
    if not isinstance(input, torch.Tensor):
        raise ValueError(f"{where}: expected input to be a torch.Tensor; got "
                         f"{type(input).__name__}.")
    if input.dim() < 2:
        raise ValueError(
            f"{where}: expected an input of rank at least 2, (N, C) or (N, C, *spatial) with "
            f"channels on axis 1; got shape {tuple(input.shape)} (rank {input.dim()}). Add a "
            "batch axis, e.g. x[None], for a single sample.")
    if not input.is_floating_point():
        raise ValueError(f"{where}: expected a floating-point input; got dtype {input.dtype}. "
                         "Convert it first, e.g. x.float().")
    if num_features is not None and input.shape[1] != num_features:
        raise ValueError(
            f"{where}: expected {num_features} channels on axis 1 (num_features="
            f"{num_features}); got input of shape {tuple(input.shape)} with "
            f"{input.shape[1]}. Pass num_features=x.shape[1] when building the layer.")


def sync_batch_norm(input, running_mean, running_var, weight=None, bias=None, momentum=0.1,
                    eps=1e-5, process_group=None):
    """Training-mode BatchNorm with statistics over all replicas of ``process_group``.

    input: (N, C, *spatial), N may differ between replicas and may be 0 (the replica then
    contributes nothing and gets an empty output; the global count must exceed 1).
    running_mean, running_var: (C,) or None; updated in place with the global mean and the
    global UNBIASED variance (eq-bn-running-mean, eq-bn-running-var). weight, bias: (C,) or
    None. Without a group to synchronize over (see ``sync_group``) this is
    bnlab.torch.functional.batch_norm in training mode.
    """
    where = "sync_batch_norm"
    _check_input(where, input)
    c = input.shape[1]
    for name, v in dict(weight=weight, bias=bias, running_mean=running_mean,
                        running_var=running_var).items():
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(f"{where}: expected {name} of shape ({c},), one value per channel "
                             f"(C = input.shape[1] = {c}); got shape {tuple(v.shape)}.")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{where}: pass both running_mean and running_var, or neither.")
    if not eps > 0:
        raise ValueError(f"{where}: expected eps > 0 in training; got eps={eps}.")
    synced = sync_group(process_group)
    if synced is None:
        return batch_norm(input, running_mean, running_var, weight, bias, True, momentum, eps)
    y, mu, var, n = _SyncBatchNormFunction.apply(input, weight, bias, eps, *synced)
    if running_mean is not None:
        update_running(running_mean, running_var, mu, var, int(n), momentum)
    return y


class SyncBatchNorm(modules._BatchNorm):
    """Drop-in for torch.nn.SyncBatchNorm (same constructor, parameters, buffers and
    state_dict keys) that also runs on CPU tensors (gloo). Input (N, C, *spatial), any rank
    >= 2; N may differ between replicas, and may be 0 on some of them.

    Training with a group of more than one process: statistics of the global batch
    (``sync_batch_norm``). Evaluation: the running statistics, no communication (with
    track_running_stats=False, the LOCAL batch statistics, as torch.nn.SyncBatchNorm does).
    torch.distributed not initialized, or a group of one: exactly bnlab's BatchNorm.

    Gradients: dx is exact (the global sums of eq-bn-dx are all-reduced). weight.grad and
    bias.grad are this replica's LOCAL sums, as in torch.nn.SyncBatchNorm: their sum over
    replicas is the gradient of the sum of all replicas' losses, and
    DistributedDataParallel's all-reduce of gradients does that sum (and divides by W, as for
    every other parameter). Without DDP, all-reduce them yourself.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.process_group = process_group

    def _check_rank(self, input):
        _check_input(type(self).__name__, input, self.num_features)

    def forward(self, input):
        self._check_rank(input)
        running_mean, running_var, use_batch_stats, factor = self._batch_norm_arguments()
        synced = sync_group(self.process_group) if self.training and use_batch_stats else None
        if synced is None and input.numel() == 0:
            # A replica with no samples, in eval (or alone): nothing to normalize, and the
            # running statistics stay as they are (torch.nn.functional.batch_norm's result).
            return input.clone()
        if synced is None:  # eval, or nothing to synchronize over: plain BatchNorm
            return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                              use_batch_stats, factor, self.eps, backend=self.backend)
        return sync_batch_norm(input, running_mean, running_var, self.weight, self.bias,
                               factor, self.eps, self.process_group)


# The layers convert_sync_batchnorm swaps: BatchNorm proper, not its relatives (Batch
# Renorm, Ghost BatchNorm) whose statistics mean something else.
_CONVERTIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                modules.BatchNorm1d, modules.BatchNorm2d, modules.BatchNorm3d)


def convert_sync_batchnorm(module, process_group=None):
    """Return ``module`` with every BatchNorm1d/2d/3d (torch.nn's, bnlab's) and
    torch.nn.SyncBatchNorm replaced by bnlab's SyncBatchNorm, like
    torch.nn.SyncBatchNorm.convert_sync_batchnorm: the same Parameter and buffer tensors
    (so an optimizer built before keeps working), the same mode; a bare BatchNorm layer
    comes back as a new SyncBatchNorm. Children are converted in place."""
    if type(module) in _CONVERTIBLE:
        tensors = [t for t in list(module.parameters()) + list(module.buffers())
                   if t.is_floating_point()]
        factory = dict(device=tensors[0].device, dtype=tensors[0].dtype) if tensors else {}
        ours = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, process_group, **factory,
                             bias=module.bias is not None)
        for name, parameter in module.named_parameters(recurse=False):
            setattr(ours, name, parameter)  # the same Parameters
        for name, buffer in module.named_buffers(recurse=False):
            setattr(ours, name, buffer)  # the same buffers, as torch's helper does
        ours.backend = getattr(module, "backend", "auto")
        if hasattr(module, "qconfig"):
            ours.qconfig = module.qconfig
        return ours.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, process_group))
    return module
