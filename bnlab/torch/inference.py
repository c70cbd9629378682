"""BatchNorm at deployment: folding, precise statistics, freezing.

After training, a BatchNorm layer in evaluation mode is a fixed per-channel affine map
(eq-bn-eval). Three things are done with it before or while a network is deployed:

* ``fold(model)`` / ``fold_batch_norm(layer, bn)``: merge the map into the preceding linear
  or convolutional layer (eq-fold-weight, eq-fold-bias), so that inference costs nothing
  for BatchNorm.
* ``precise_batch_norm(model, data, ...)``: replace the running statistics (an exponential
  moving average over past weights, eq-bn-running-mean) by statistics recomputed with the
  final weights (Wu & Johnson 2021's "precise BN"), either pooled over all examples
  (eq-precise-pooled) or averaged over batches (eq-precise-batch-average).
* ``FrozenBatchNorm1d/2d/3d`` and ``freeze_batch_norm(model)``: BatchNorm layers that always
  normalize with their stored statistics and have nothing to train, for fine-tuning; unlike
  ``bn.eval()`` plus ``requires_grad_(False)``, ``model.train()`` cannot undo them.

``is_batch_norm`` and ``batch_norm_layers`` find the BatchNorm layers (torch.nn's and
bnlab's) of a model. The equations are in the book's chapter on BatchNorm at inference
(book/inference-deploy.md) and in book/training-inference.md (eq-bn-eval, eq-bn-cma).
"""

import copy
import itertools
import warnings

import torch
from torch import nn

from .modules import _BatchNorm as _BnlabBatchNorm

__all__ = ["is_batch_norm", "batch_norm_layers", "fold_batch_norm", "fold",
           "precise_batch_norm", "FrozenBatchNorm1d", "FrozenBatchNorm2d",
           "FrozenBatchNorm3d", "freeze_batch_norm"]


def is_batch_norm(module):
    """Whether ``module`` is a BatchNorm layer, torch.nn's or bnlab's (any rank, and bnlab's
    Batch Renorm and Ghost BatchNorm, which derive from its BatchNorm). Frozen layers
    (``FrozenBatchNorm1d/2d/3d``) are not: they have no training behaviour."""
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, _BnlabBatchNorm))


def batch_norm_layers(model):
    """The BatchNorm layers of ``model`` with running statistics (torch.nn's or bnlab's)."""
    return [m for m in model.modules() if is_batch_norm(m) and m.track_running_stats]


def _work_dtype(tensor):
    """float64 for the per-channel arithmetic of folding and statistics, except on devices
    without float64 (Apple's MPS), where the tensor's own float type is used."""
    return tensor.dtype if tensor.device.type == "mps" else torch.float64


# --- Folding ------------------------------------------------------------------------------

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FOLDABLE_LAYERS = (nn.Linear,) + _CONVS + _TRANSPOSED_CONVS


def _eval_scale(bn, dtype):
    """a = gamma / sqrt(running_var + eps) per channel (C,), in ``dtype``: the slope of
    eq-bn-eval written as y = a * (z - running_mean) + beta."""
    a = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)  # (C,)
    return a * bn.weight.to(dtype) if bn.weight is not None else a


def _has_running_statistics(bn):
    return getattr(bn, "running_mean", None) is not None and \
        getattr(bn, "running_var", None) is not None


def _is_uninitialized(layer):
    return isinstance(layer.weight, nn.parameter.UninitializedParameter)


@torch.no_grad()
def fold_batch_norm(layer, bn):
    """A new layer equal to ``bn`` in evaluation mode applied after ``layer``.

    layer: nn.Linear, nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d, any groups, stride,
    dilation or padding (folding acts on output channels only). bn: a BatchNorm layer
    (torch.nn's or bnlab's, any rank, with or without affine parameters) or a
    ``FrozenBatchNorm1d/2d/3d``, with running statistics for the layer's output channels.

    eq-bn-eval is the per-channel affine map y = a * z + b with a = gamma / sqrt(running_var
    + eps) and b = beta - a * running_mean, so for z = W x + c (eq-bn-fold)

        W' = a * W          (each output channel's row or filter scaled, eq-fold-weight)
        c' = a * (c - running_mean) + beta                                 (eq-fold-bias)

    and inference with the folded layer costs nothing beyond the layer itself. A layer
    without bias gets one (c = 0). The per-channel arithmetic is done in float64 and the
    new weight and bias are rounded once to the layer's dtype. ``layer`` and ``bn`` are not
    modified. For nn.Linear, bn's channels must be the Linear's output features, i.e. the
    input is (N, features): a Linear applied to the last axis of an (N, C, L) input followed
    by BatchNorm1d(C) normalizes another axis and cannot be folded (nothing here can tell).
    """
    if not isinstance(layer, _FOLDABLE_LAYERS):
        raise ValueError(f"fold_batch_norm: expected an nn.Linear or nn.Conv2d (or Conv1d, "
                         f"Conv3d, ConvTranspose1d/2d/3d) layer; got {type(layer).__name__}.")
    if _is_uninitialized(layer):
        raise ValueError(f"fold_batch_norm: expected an initialized layer; got an "
                         f"uninitialized lazy {type(layer).__name__}. Run one forward pass "
                         "first.")
    if not (is_batch_norm(bn) or isinstance(bn, _FrozenBatchNorm)):
        raise ValueError(f"fold_batch_norm: expected a BatchNorm layer (torch.nn's or "
                         f"bnlab's) or a FrozenBatchNorm; got {type(bn).__name__}.")
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if not _has_running_statistics(bn) or bn.running_mean.shape != (channels,):
        got = ("no running statistics (track_running_stats=False: eval mode uses batch "
               "statistics)" if not _has_running_statistics(bn)
               else f"statistics for {bn.running_mean.shape[0]} channels")
        raise ValueError(f"fold_batch_norm: expected a BatchNorm with running statistics "
                         f"for the layer's {channels} output channels; got {got}.")
    weight = layer.weight
    a = _eval_scale(bn, _work_dtype(weight))  # (C,)
    if isinstance(layer, _TRANSPOSED_CONVS):
        # weight (C_in, C_out / groups, *k): output channel g * C_out / groups + j is column j
        # of group g's block of rows.
        g = layer.groups
        # (C_in, C_out/g, *k) -> (g, C_in/g, C_out/g, *k); scale (g, 1, C_out/g, 1, ...)
        blocks = weight.reshape(g, weight.shape[0] // g, *weight.shape[1:])
        scale = a.reshape(g, 1, -1, *(1,) * (weight.ndim - 2))
        new_weight = (blocks.to(a.dtype) * scale).reshape(weight.shape)
    else:
        # weight (C_out, C_in / groups, *k) or (out_features, in_features): scale rows.
        scale = a.reshape(-1, *(1,) * (weight.ndim - 1))                    # (C_out, 1, ...)
        new_weight = weight.to(a.dtype) * scale
    c = layer.bias.to(a.dtype) if layer.bias is not None else torch.zeros_like(a)
    new_bias = a * (c - bn.running_mean.to(a.dtype))  # (C,), eq-fold-bias
    if bn.bias is not None:
        new_bias = new_bias + bn.bias.to(a.dtype)
    folded = copy.deepcopy(layer)
    bias_dtype = layer.bias.dtype if layer.bias is not None else weight.dtype
    folded.weight = nn.Parameter(new_weight.to(weight.dtype), weight.requires_grad)
    folded.bias = nn.Parameter(new_bias.to(bias_dtype),
                               layer.bias.requires_grad if layer.bias is not None
                               else weight.requires_grad)
    return folded


def _sequence_leaves(sequential, leaves):
    """Append (parent, name, module) for the modules of ``sequential`` in execution order,
    looking through nested nn.Sequentials (which compose: their leaves run in order)."""
    for name, child in sequential.named_children():
        if isinstance(child, nn.Sequential):
            _sequence_leaves(child, leaves)
        else:
            leaves.append((sequential, name, child))
    return leaves


def _fold_in_place(module, reasons):
    """Fold the BatchNorm layers of every nn.Sequential inside ``module`` into the layer
    before them; record in ``reasons`` (id -> text) why a BatchNorm was left in place."""
    if not isinstance(module, nn.Sequential):
        for child in module.children():
            _fold_in_place(child, reasons)
        return
    previous = None  # (parent, name, module) of the last leaf that is not an nn.Identity
    for parent, name, child in _sequence_leaves(module, []):
        if isinstance(child, nn.Identity):
            continue  # a no-op: what ran before it still feeds what follows
        if is_batch_norm(child) or isinstance(child, _FrozenBatchNorm):
            before = previous[2] if previous is not None else None
            if not _has_running_statistics(child):
                reasons[id(child)] = ("no running statistics (track_running_stats=False: "
                                      "eval mode uses batch statistics)")
            elif not isinstance(before, _FOLDABLE_LAYERS):
                what = type(before).__name__ if before is not None else "nothing"
                reasons[id(child)] = (f"follows {what}, not an nn.Linear or convolution, "
                                      "in its nn.Sequential")
            elif _is_uninitialized(before):
                reasons[id(child)] = f"follows an uninitialized lazy {type(before).__name__}"
            else:
                folded = fold_batch_norm(before, child)
                setattr(previous[0], previous[1], folded)
                setattr(parent, name, nn.Identity())
                previous = (previous[0], previous[1], folded)  # a next BatchNorm folds too
                continue
        else:
            _fold_in_place(child, reasons)  # e.g. a residual block holding nn.Sequentials
        previous = (parent, name, child)


def fold(model, *, strict=False):
    """A copy of ``model`` in evaluation mode with every foldable BatchNorm layer folded into
    the layer before it (``fold_batch_norm``, eq-fold-weight, eq-fold-bias) and replaced by
    nn.Identity. The input model is not modified.

    Foldable: a BatchNorm (torch.nn's or bnlab's BatchNorm1d/2d/3d, Batch Renorm, Ghost
    BatchNorm, whose evaluation mode is eq-bn-eval, or a FrozenBatchNorm) with running
    statistics that directly follows an nn.Linear, nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d
    in an nn.Sequential. Nested nn.Sequentials are looked through (Sequential(conv,
    Sequential(bn, relu)) folds), nn.Identity is skipped, and nn.Sequentials inside other
    modules (e.g. a residual block's body) are folded too. A custom module's forward can
    run its children in any order, so BatchNorm layers held directly by one are not folded
    (torch.fx.experimental.optimization.fuse traces the graph and can).

    The folded model computes the same function as ``model.eval()``, up to rounding.
    BatchNorm layers that cannot be folded stay in place (in eval mode) and are reported:
    by a UserWarning naming each with the reason, or, with ``strict=True``, by a ValueError.
    ``batch_norm_layers(fold(model))`` lists the ones left.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"fold: expected an nn.Module; got {type(model).__name__}.")
    folded = copy.deepcopy(model).eval()
    reasons = {}
    _fold_in_place(folded, reasons)
    left = [(name or "<model>", reasons.get(id(m), "not inside an nn.Sequential (the order "
                                            "of a custom forward is unknown)"))
            for name, m in folded.named_modules()
            if is_batch_norm(m) or isinstance(m, _FrozenBatchNorm)]
    if left:
        listing = "; ".join(f"{name!r}: {reason}" for name, reason in left)
        message = f"fold: left {len(left)} BatchNorm layer(s) unfolded: {listing}."
        if strict:
            raise ValueError(message + " Expected every BatchNorm to follow an nn.Linear or "
                             "convolution in an nn.Sequential (strict=True).")
        warnings.warn(message, UserWarning, stacklevel=2)
    return folded


# --- Precise statistics -------------------------------------------------------------------

_ESTIMATORS = ("population", "batch_average")
_MODES = ("train", "eval")


class _ChannelStatistics:
    """Per-channel statistics of the inputs one BatchNorm layer receives, batch by batch,
    accumulated in float64: count, mean and m2 (sum of squared deviations) merged with
    Chan, Golub and LeVeque's formula (eq-num-chan), and the sums of batch means and
    unbiased batch variances for the batch average."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.batches, self.sum_means, self.sum_vars = 0, 0.0, 0.0
        self.min_values = float("inf")  # fewest values per channel in one batch

    def add(self, x):
        c = x.shape[1]
        values = x.detach().transpose(0, 1).reshape(c, -1)  # (N, C, *s) -> (C, N * prod(s))
        values = values.to(_work_dtype(values))
        m = values.shape[1]
        mu = values.mean(dim=1)                              # (C,)
        m2 = ((values - mu[:, None]) ** 2).sum(dim=1)        # (C,), two-pass
        n = self.count + m
        delta = mu - self.mean
        self.mean = self.mean + delta * (m / n)              # eq-num-chan
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * m / n)
        self.count = n
        self.batches += 1
        self.sum_means = self.sum_means + mu
        self.sum_vars = self.sum_vars + (m2 / (m - 1) if m > 1 else torch.full_like(m2, torch.nan))
        self.min_values = min(self.min_values, m)

    def result(self, estimator, name):
        """(mean, unbiased variance) per channel for ``estimator``."""
        if estimator == "population":
            if self.count < 2:
                raise ValueError(f"precise_batch_norm: expected at least 2 values per channel "
                                 f"in all at layer {name!r}; got {self.count}. Use more data.")
            return self.mean, self.m2 / (self.count - 1)     # eq-precise-pooled
        if self.min_values < 2:
            raise ValueError(f"precise_batch_norm: estimator='batch_average' needs at least 2 "
                             f"values per channel in every batch (an unbiased batch variance) "
                             f"at layer {name!r}; got a batch with {self.min_values}. Use "
                             f"larger batches or estimator='population'.")
        # eq-precise-batch-average
        return self.sum_means / self.batches, self.sum_vars / self.batches


def _batch_input(batch, index):
    """The input tensor of one batch: the batch itself or the first item of a tuple/list
    (an (x, y) pair as a DataLoader yields)."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"precise_batch_norm: expected each batch to be a tensor or an (x, y) "
                         f"tuple with a tensor x; batch {index} is {type(batch).__name__}.")
    return x


def _batch_source(data, batch_size, num_batches):
    """A function returning a fresh iterable over the input batches, each time it is called."""
    x = getattr(data, "x_train", data)  # a bnlab.experiments Dataset: its training inputs
    if isinstance(x, torch.Tensor):
        if batch_size is None:
            raise ValueError("precise_batch_norm: expected batch_size with a tensor of inputs "
                             "(it is split into consecutive batches); got batch_size=None.")
        if num_batches is None:
            num_batches = len(x) // batch_size if batch_size >= 1 else 0
        if num_batches < 1 or batch_size < 1 or num_batches * batch_size > len(x):
            raise ValueError(f"precise_batch_norm: expected num_batches >= 1 and batch_size >= 1 "
                             f"with num_batches * batch_size <= {len(x)} examples; got "
                             f"num_batches={num_batches}, batch_size={batch_size}. Use fewer "
                             f"or smaller batches.")
        return lambda: (x[k * batch_size:(k + 1) * batch_size] for k in range(num_batches))
    if batch_size is not None:
        raise ValueError(f"precise_batch_norm: batch_size applies to a tensor of inputs; an "
                         f"iterable of batches brings its own (got batch_size={batch_size}). "
                         "Leave it out.")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"precise_batch_norm: expected num_batches >= 1 or None; got "
                         f"{num_batches}.")
    try:
        iter(data)
    except TypeError:
        raise ValueError(f"precise_batch_norm: expected a tensor of inputs, a Dataset with "
                         f"x_train, or an iterable of batches; got {type(data).__name__}.") \
            from None
    if iter(data) is data:  # a one-shot iterator (a generator): keep its batches
        data = list(itertools.islice(data, num_batches))

    def batches():
        taken = list(itertools.islice(data, num_batches)) if num_batches else data
        if num_batches and len(taken) < num_batches:
            raise ValueError(f"precise_batch_norm: expected {num_batches} batches; the data "
                             f"gave {len(taken)}.")
        return (_batch_input(b, k) for k, b in enumerate(taken))
    return batches


def _gather(model, layers, names, batches, targets):
    """Run ``model`` over the batches (in its current mode) and return (statistics per
    target layer, the layers in the order they first ran)."""
    stats = {id(layer): _ChannelStatistics() for layer in targets}
    order, ran = [], set()

    def hook(layer, args):
        if id(layer) not in ran:
            ran.add(id(layer))
            order.append(layer)
        if id(layer) in stats:
            stats[id(layer)].add(args[0])

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        seen = False
        for x in batches():
            model(x)
            seen = True
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError("precise_batch_norm: expected at least one batch; the data gave none.")
    missing = [names[id(layer)] for layer in targets if stats[id(layer)].count == 0]
    if missing:
        raise ValueError(f"precise_batch_norm: expected every BatchNorm layer to receive data; "
                         f"{missing} never ran in the model's forward pass.")
    return stats, order


@torch.no_grad()
def precise_batch_norm(model, data, batch_size=None, num_batches=None, *,
                       estimator="population", mode="train"):
    """Recompute the running statistics of every BatchNorm layer of ``model`` (torch.nn's or
    bnlab's, with track_running_stats) from ``data`` with the model's current weights:
    Wu & Johnson 2021's "precise BatchNorm". Returns ``model``, changed in place.

    data: a tensor of inputs (N, ...), split into ``num_batches`` consecutive batches of
    ``batch_size`` (default: every full batch); a bnlab Dataset (its x_train, likewise); or
    an iterable of batches, each a tensor or an (x, y) tuple (a DataLoader), of which the
    first ``num_batches`` are used (default: all). Batches are not moved to the model's
    device. With mode="eval", a re-iterable (list, DataLoader) is iterated once per layer
    and a one-shot iterator is first stored as a list.

    estimator:
      "population" (default): the mean and unbiased variance of each channel over ALL the
        values the layer receives, as if the batches were one (eq-precise-pooled; the
        batch statistics are merged with eq-num-chan): batch means that differ add to the
        variance (eq-precise-total-variance). Wu & Johnson recommend it for small batches.
      "batch_average": the plain average over batches of the batch means and of the
        unbiased batch variances (eq-precise-batch-average), which is what momentum=None
        (eq-bn-cma) leaves after one pass and what Ioffe & Szegedy's inference procedure
        describes. It omits the spread of the batch means and weighs every batch alike,
        whatever its size. The means agree when batches are equally large.
    mode: the network's mode while each layer's inputs are gathered.
      "train" (default, Wu & Johnson's): one pass in training mode, as in a training step:
        earlier BatchNorm layers normalize with batch statistics and dropout is active.
      "eval": what the deployed network computes: evaluation mode (dropout off), earlier
        BatchNorm layers normalizing with the statistics just recomputed, one pass over the
        data per BatchNorm layer, in the order they run. Then each layer's eval-mode input
        has, on ``data``, exactly the stored mean and variance.

    Nothing else changes: weights, momentum, num_batches_tracked (precise statistics are not
    training steps) and every other buffer keep their values, and the model's mode is
    restored. Statistics are accumulated in float64 and stored in the buffers' dtype.
    FrozenBatchNorm layers are left alone.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"precise_batch_norm: expected estimator in {_ESTIMATORS}; got "
                         f"{estimator!r}.")
    if mode not in _MODES:
        raise ValueError(f"precise_batch_norm: expected mode in {_MODES}; got {mode!r}.")
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("precise_batch_norm: expected a model with BatchNorm layers that "
                         "track running statistics; found none.")
    batches = _batch_source(data, batch_size, num_batches)
    names = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    was_training = model.training
    saved = {name: b.clone() for name, b in model.named_buffers()}  # a pass may update them
    new = {}
    try:
        if mode == "train":
            model.train()
            stats, _ = _gather(model, layers, names, batches, layers)
            new = {id(layer): stats[id(layer)].result(estimator, names[id(layer)])
                   for layer in layers}
        else:
            model.eval()
            pending = list(layers)
            while pending:  # finalize the first pending layer to run; repeat
                stats, order = _gather(model, layers, names, batches, pending)
                first = next(layer for layer in order if any(layer is p for p in pending))
                mean, var = stats[id(first)].result(estimator, names[id(first)])
                first.running_mean.copy_(mean)  # the later layers' passes use it
                first.running_var.copy_(var)
                new[id(first)] = (mean, var)
                pending = [p for p in pending if p is not first]
    finally:
        for name, b in model.named_buffers():
            b.copy_(saved[name])
        model.train(was_training)
    for layer in layers:
        mean, var = new[id(layer)]
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
    return model


# --- Frozen BatchNorm ---------------------------------------------------------------------

class _FrozenBatchNorm(nn.Module):
    """BatchNorm fixed at its evaluation-mode map (eq-bn-eval), in training mode as well.

    Buffers, not parameters: ``weight`` (gamma), ``bias`` (beta), ``running_mean`` and
    ``running_var`` (C,), so the layer has nothing to train, no optimizer sees it, and
    neither ``model.train()`` nor a training step can change what it computes. State-dict
    keys are nn.BatchNorm's without ``num_batches_tracked`` (which is dropped on loading):
    a BatchNorm's state_dict loads into it. Like torchvision.ops.FrozenBatchNorm2d.
    """

    _ranks = ()  # accepted input ranks, set by subclasses

    def __init__(self, num_features, eps=1e-5, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    @classmethod
    def from_batch_norm(cls, bn):
        """A frozen copy of ``bn`` (torch.nn's or bnlab's BatchNorm with running statistics):
        its eps, statistics, and gamma and beta (1 and 0 where it has none)."""
        if not is_batch_norm(bn):
            raise ValueError(f"{cls.__name__}.from_batch_norm: expected a BatchNorm layer; got "
                             f"{type(bn).__name__}.")
        if not _has_running_statistics(bn):
            raise ValueError(f"{cls.__name__}.from_batch_norm: expected a BatchNorm with running "
                             "statistics; got track_running_stats=False, whose eval mode uses "
                             "batch statistics. There is nothing to freeze.")
        ref = bn.running_mean
        frozen = cls(bn.num_features, bn.eps, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight)
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias)
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm's counter
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def forward(self, x):
        if x.dim() not in self._ranks:
            expected = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"{type(self).__name__}: expected {expected} input (got "
                             f"{x.dim()}D input of shape {tuple(x.shape)})")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels "
                             f"on axis 1; got input of shape {tuple(x.shape)}.")
        # eq-bn-eval as y = a * x + b per channel
        a = self.weight * torch.rsqrt(self.running_var + self.eps)  # (C,)
        b = self.bias - a * self.running_mean                       # (C,)
        column = (1, -1) + (1,) * (x.dim() - 2)                     # (C,) -> (1, C, 1, ...)
        return x * a.reshape(column) + b.reshape(column)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


class FrozenBatchNorm1d(_FrozenBatchNorm):
    """Input (N, C) or (N, C, L)."""

    _ranks = (2, 3)


class FrozenBatchNorm2d(_FrozenBatchNorm):
    """Input (N, C, H, W)."""

    _ranks = (4,)


class FrozenBatchNorm3d(_FrozenBatchNorm):
    """Input (N, C, D, H, W)."""

    _ranks = (5,)


_FROZEN_BY_RANKS = {cls._ranks: cls for cls in (FrozenBatchNorm1d, FrozenBatchNorm2d,
                                                FrozenBatchNorm3d)}
_TORCH_RANKS = ((nn.BatchNorm1d, (2, 3)), (nn.BatchNorm2d, (4,)), (nn.BatchNorm3d, (5,)))


def _frozen_class(bn):
    ranks = getattr(bn, "_ranks", None)  # bnlab's BatchNorm, Batch Renorm, Ghost BatchNorm
    for cls, torch_ranks in _TORCH_RANKS:
        if isinstance(bn, cls):
            ranks = torch_ranks
    if ranks not in _FROZEN_BY_RANKS:
        raise ValueError(f"freeze_batch_norm: expected BatchNorm1d, 2d or 3d (torch.nn's or "
                         f"bnlab's); got {type(bn).__name__}, whose input rank is unknown. "
                         "Replace it by one of those first.")
    return _FROZEN_BY_RANKS[ranks]


def freeze_batch_norm(model):
    """Return ``model`` with every BatchNorm layer (torch.nn's or bnlab's BatchNorm1d/2d/3d,
    Batch Renorm, Ghost BatchNorm) replaced, in place, by a ``FrozenBatchNorm1d/2d/3d``
    holding its statistics, eps, gamma and beta: it computes eq-bn-eval in training mode
    too, updates nothing, and has no parameters. A bare BatchNorm layer is returned frozen.

    What it avoids: ``requires_grad_(False)`` alone leaves a layer in training mode, which
    normalizes with batch statistics and keeps updating running_mean and running_var; and
    ``bn.eval()`` is undone by the next ``model.train()``. Other parameters stay the same
    nn.Parameter objects; build the optimizer after freezing (gamma and beta become buffers).
    Raises ValueError, changing nothing, when a BatchNorm has no running statistics (its
    eval mode uses batch statistics: nothing to freeze) or an unknown input rank.
    """
    targets = [m for m in model.modules() if is_batch_norm(m)]
    for bn in targets:  # validate everything before changing anything
        _frozen_class(bn)
        if not _has_running_statistics(bn):
            names = [n for n, m in model.named_modules() if m is bn]
            raise ValueError(f"freeze_batch_norm: expected BatchNorm layers with running "
                             f"statistics; {names[0] or '<model>'!r} has "
                             f"track_running_stats=False, whose eval mode uses batch "
                             f"statistics: there is nothing to freeze.")
    return _freeze(model)


def _freeze(module):
    if is_batch_norm(module):
        return _frozen_class(module).from_batch_norm(module)
    for name, child in module.named_children():
        setattr(module, name, _freeze(child))
    return module
