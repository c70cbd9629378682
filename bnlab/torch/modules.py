"""Drop-in replacements for torch.nn's normalization layers, and bnlab's own.

BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, LayerNorm, GroupNorm and RMSNorm have torch's
constructor arguments, parameters, buffers, state_dict keys, repr and train/eval
behaviour; BatchRenorm1d/2d/3d and GhostBatchNorm1d/2d/3d are BatchNorm's with extra
arguments. The computation is bnlab.torch.functional's.
"""

import numbers
import warnings

import torch
from torch import nn

from .._renorm import batch_renorm_schedule
from .functional import (
    batch_norm,
    batch_renorm,
    check_backend,
    ghost_batch_norm,
    group_norm,
    instance_norm,
    layer_norm,
    rms_norm,
)


def _register_affine(module, shape, scale, shift, factory):
    """Register ``weight`` (ones) and ``bias`` (zeros) of ``shape``, or None where absent."""
    weight = nn.Parameter(torch.ones(shape, **factory)) if scale else None
    bias = nn.Parameter(torch.zeros(shape, **factory)) if scale and shift else None
    module.register_parameter("weight", weight)
    module.register_parameter("bias", bias)


def _reset_affine(module):
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


class _NormBase(nn.Module):
    """Per-channel weight and bias and, when tracked, running statistics: torch's _NormBase,
    shared by BatchNorm, InstanceNorm, Batch Renorm and Ghost BatchNorm."""

    _version = 2  # torch's: state_dicts from version < 2 lack num_batches_tracked

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        _register_affine(self, num_features, affine, bias, factory)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        self.reset_running_stats()
        _reset_affine(self)

    def extra_repr(self):
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
                "bias={use_bias}, track_running_stats={track_running_stats}"
                .format(**self.__dict__, use_bias=self.bias is not None))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)  # as torch does
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def _check_rank(self, input):
        if input.dim() not in self._ranks:
            expected = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"{type(self).__name__}: expected {expected} input "
                             f"(got {input.dim()}D input of shape {tuple(input.shape)})")


class _BatchNorm(_NormBase):
    """Shared by BatchNorm1d/2d/3d, which differ only in the input ranks they accept.

    backend (keyword-only, not in torch.nn's): "auto" (default), "torch" or "triton", passed
    to bnlab.torch.functional.batch_norm; a plain attribute, so state_dict keys stay torch's.
    Batch Renorm and Ghost BatchNorm, which subclass this, always run on "torch".
    """

    _ranks = ()  # accepted input ranks, set by subclasses

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 backend="auto"):
        check_backend(type(self).__name__, backend)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.backend = backend

    def extra_repr(self):  # torch's repr, plus the backend when it is not the default
        backend = "" if self.backend == "auto" else f", backend={self.backend!r}"
        return super().extra_repr() + backend

    def _batch_norm_arguments(self):
        """(running_mean, running_var, use_batch_stats, momentum factor) for this call,
        counting the step in num_batches_tracked as torch.nn.BatchNorm does."""
        # momentum=None: cumulative moving average, factor 1 / num_batches_tracked (eq-bn-cma)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # Eval normalizes with running statistics when there are any, else with the batch's.
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return (self.running_mean if track else None, self.running_var if track else None,
                use_batch_stats, factor)

    def forward(self, input):
        self._check_rank(input)
        running_mean, running_var, use_batch_stats, factor = self._batch_norm_arguments()
        return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                          use_batch_stats, factor, self.eps, backend=self.backend)


class BatchNorm1d(_BatchNorm):
    """Input (N, C) or (N, C, L)."""

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Input (N, C, H, W)."""

    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    """Input (N, C, D, H, W)."""

    _ranks = (5,)


# --- InstanceNorm -------------------------------------------------------------------------

class _InstanceNorm(_NormBase):
    """Shared by InstanceNorm1d/2d/3d: torch's defaults affine=False,
    track_running_stats=False; unbatched input (without N) is accepted, as torch does."""

    _no_batch_rank = 0  # rank of an unbatched input, set by subclasses

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device, dtype, bias=bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        version = local_metadata.get("version", None)
        if version is None and not self.track_running_stats:  # as torch: pre-0.4 checkpoints
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {' and '.join(keys)} for "
                    f"{type(self).__name__} with track_running_stats=False. Remove them from "
                    "the state_dict, or set track_running_stats=True to use them.")
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def forward(self, input):
        ranks = (self._no_batch_rank, self._no_batch_rank + 1)
        if input.dim() not in ranks:
            raise ValueError(f"{type(self).__name__}: expected {ranks[0]}D or {ranks[1]}D input "
                             f"(got {input.dim()}D input of shape {tuple(input.shape)})")
        feature_dim = input.dim() - self._no_batch_rank
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"{type(self).__name__}: expected input's size at dim={feature_dim} to "
                    f"match num_features ({self.num_features}), but got: "
                    f"{input.size(feature_dim)}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. "
                          "You can silence this warning by not passing in num_features, "
                          "which is not used because affine=False", stacklevel=2)
        unbatched = input.dim() == self._no_batch_rank
        if unbatched:
            input = input.unsqueeze(0)  # (C, *spatial) -> (1, C, *spatial)
        # torch's InstanceNorm: momentum=None means 0 (no cumulative average), and
        # num_batches_tracked is never incremented.
        y = instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                          self.training or not self.track_running_stats,
                          self.momentum if self.momentum is not None else 0.0, self.eps)
        return y.squeeze(0) if unbatched else y


class InstanceNorm1d(_InstanceNorm):
    """Input (N, C, L) or unbatched (C, L)."""

    _no_batch_rank = 2


class InstanceNorm2d(_InstanceNorm):
    """Input (N, C, H, W) or unbatched (C, H, W)."""

    _no_batch_rank = 3


class InstanceNorm3d(_InstanceNorm):
    """Input (N, C, D, H, W) or unbatched (C, D, H, W)."""

    _no_batch_rank = 4


# --- LayerNorm, GroupNorm, RMSNorm --------------------------------------------------------

def _as_shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    return tuple(normalized_shape)


class LayerNorm(nn.Module):
    """Drop-in for torch.nn.LayerNorm: elementwise weight and bias of normalized_shape."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, self.normalized_shape, elementwise_affine, bias, factory)

    def reset_parameters(self):
        _reset_affine(self)

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return ("{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, "
                "bias={use_bias}".format(**self.__dict__, use_bias=self.bias is not None))


class GroupNorm(nn.Module):
    """Drop-in for torch.nn.GroupNorm: per-channel weight and bias, num_groups divides C."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None,
                 dtype=None, *, bias=True):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        factory = dict(device=device, dtype=dtype)
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _register_affine(self, num_channels, affine, bias, factory)

    def reset_parameters(self):
        _reset_affine(self)

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return ("{num_groups}, {num_channels}, eps={eps}, affine={affine}, "
                "bias={use_bias}".format(**self.__dict__, use_bias=self.bias is not None))


class RMSNorm(nn.Module):
    """Drop-in for torch.nn.RMSNorm: elementwise weight, no bias; eps=None means
    torch.finfo(input.dtype).eps."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None,
                 dtype=None):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        weight = torch.ones(self.normalized_shape, device=device, dtype=dtype)
        self.register_parameter("weight", nn.Parameter(weight) if elementwise_affine else None)

    def reset_parameters(self):
        _reset_affine(self)

    def forward(self, x):
        return rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return ("{normalized_shape}, eps={eps}, "
                "elementwise_affine={elementwise_affine}".format(**self.__dict__))


# --- bnlab's own: Batch Renormalization and Ghost BatchNorm -------------------------------

class _BatchRenorm(_BatchNorm):
    """BatchNorm's parameters and buffers (always tracked: the correction needs them).

    rmax, dmax: floats, or None (the default) to follow batch_renorm_schedule(step) with
    step = num_batches_tracked before this training step: BatchNorm for the first 5000
    steps, then relaxed to rmax = 3 (40k steps) and dmax = 5 (25k steps), as in the paper.
    Assign module.rmax / module.dmax to drive another schedule.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.01, affine=True, rmax=None,
                 dmax=None, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, bias=bias)
        self.rmax = rmax
        self.dmax = dmax

    def limits(self):
        """(rmax, dmax) for the next training step."""
        scheduled = batch_renorm_schedule(int(self.num_batches_tracked))
        return (scheduled[0] if self.rmax is None else self.rmax,
                scheduled[1] if self.dmax is None else self.dmax)

    def extra_repr(self):
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
                "bias={use_bias}, rmax={rmax}, dmax={dmax}"
                .format(**self.__dict__, use_bias=self.bias is not None))

    def forward(self, input):
        self._check_rank(input)
        rmax, dmax = self.limits()  # before _batch_norm_arguments counts this step
        running_mean, running_var, use_batch_stats, factor = self._batch_norm_arguments()
        return batch_renorm(input, running_mean, running_var, self.weight, self.bias,
                            use_batch_stats, factor, self.eps, rmax, dmax)


class BatchRenorm1d(_BatchRenorm):
    """Input (N, C) or (N, C, L)."""

    _ranks = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Input (N, C, H, W)."""

    _ranks = (4,)


class BatchRenorm3d(_BatchRenorm):
    """Input (N, C, D, H, W)."""

    _ranks = (5,)


class _GhostBatchNorm(_BatchNorm):
    """BatchNorm's arguments, parameters and buffers, plus the keyword-only
    virtual_batch_size. num_batches_tracked counts calls (training steps), not virtual
    batches; running statistics get one update per virtual batch (see ghost_batch_norm).
    momentum must be a float: the cumulative average (momentum=None) is not offered."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, virtual_batch_size,
                 bias=True):
        if momentum is None:
            raise ValueError(f"{type(self).__name__}: expected a float momentum (weight of "
                             "each virtual batch in the running statistics); got None. The "
                             "cumulative average is not supported: pass e.g. momentum=0.1.")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self):
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"

    def forward(self, input):
        self._check_rank(input)
        running_mean, running_var, use_batch_stats, factor = self._batch_norm_arguments()
        return ghost_batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                use_batch_stats, factor, self.eps,
                                virtual_batch_size=self.virtual_batch_size)


class GhostBatchNorm1d(_GhostBatchNorm):
    """Input (N, C) or (N, C, L)."""

    _ranks = (2, 3)


class GhostBatchNorm2d(_GhostBatchNorm):
    """Input (N, C, H, W)."""

    _ranks = (4,)


class GhostBatchNorm3d(_GhostBatchNorm):
    """Input (N, C, D, H, W)."""

    _ranks = (5,)
