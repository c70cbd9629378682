"""Measuring what BatchNorm costs: time per step, activation memory saved for backward,
parameters and buffers, and folding into the preceding layer for inference.

Timings are noisy and machine-dependent, so ``step_times`` interleaves the models it
compares and reports medians, and chapters compare ratios measured in the same run. Memory
saved for backward is deterministic: ``saved_activation_bytes`` counts it exactly.
"""

import copy
import time

import torch
from torch import nn

from .inference import batch_norm_layers


def saved_activation_bytes(model, x):
    """Bytes of the tensors that autograd saves for backward in one training-mode forward
    pass of ``model`` on ``x``: every distinct storage packed by
    ``torch.autograd.graph.saved_tensors_hooks``, counted once, excluding the model's own
    parameters and buffers (which exist anyway). Deterministic: it depends on the shapes and
    on what each operation saves, not on timing. The model's mode is restored and its
    running statistics are restored too (the pass is a measurement, not a training step)."""
    state = copy.deepcopy(model.state_dict())
    was_training = model.training
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) +
           list(model.buffers())}
    saved = {}  # storage address -> (bytes, tensor kept alive so the address stays unique)

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            saved[ptr] = (t.untyped_storage().nbytes(), t)
        return t

    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        del out
    finally:
        model.load_state_dict(state)
        model.train(was_training)
    return sum(nbytes for nbytes, _ in saved.values())


def parameter_bytes(model):
    """(bytes of parameters, bytes of buffers) of ``model``."""
    return (sum(p.numel() * p.element_size() for p in model.parameters()),
            sum(b.numel() * b.element_size() for b in model.buffers()))


def without_batch_norm(model):
    """A copy of ``model`` with every BatchNorm layer (torch.nn's or bnlab's) replaced by
    nn.Identity: the same network minus the cost of its BatchNorm layers."""
    model = copy.deepcopy(model)
    targets = {id(m) for m in batch_norm_layers(model)}
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if id(child) in targets:
                setattr(module, name, nn.Identity())
    return model


def _train_step(model, x, y, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()


@torch.no_grad()
def _eval_step(model, x, y, loss_fn):
    model(x)


def step_times(models, x, y, *, mode="train", repeats=30, warmup=5):
    """Median wall-clock seconds of one step for each model in the dict ``models``.

    mode "train": forward + cross-entropy + backward (no optimizer update) in training mode;
    mode "eval": forward under no_grad in evaluation mode. The models are timed in turn,
    one step each per round, so that a slowdown of the machine affects all of them alike;
    ``warmup`` untimed rounds come first. Returns {name: median seconds}.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"step_times: expected mode 'train' or 'eval'; got {mode!r}.")
    step = _train_step if mode == "train" else _eval_step
    loss_fn = nn.CrossEntropyLoss()
    states = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
    for m in models.values():
        m.train(mode == "train")
    times = {name: [] for name in models}
    for round_ in range(warmup + repeats):
        for name, m in models.items():
            start = time.perf_counter()
            step(m, x, y, loss_fn)
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    for name, m in models.items():  # timing is not training: restore running statistics
        m.load_state_dict(states[name])
        m.zero_grad(set_to_none=True)
    return {name: float(torch.tensor(t).median()) for name, t in times.items()}


@torch.no_grad()
def fold_batch_norm(layer, bn):
    """A new nn.Linear or nn.Conv2d equal to ``bn`` (in evaluation mode) applied after
    ``layer``: eq-bn-eval is the per-channel affine map y = a * z + b with
    a = gamma / sqrt(running_var + eps) and b = beta - a * running_mean, so
    bn(W x + c) = (a * W) x + (a * c + b). Inference with the folded layer costs nothing
    beyond the layer itself."""
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise ValueError(f"fold_batch_norm: expected an nn.Linear or nn.Conv2d layer; got "
                         f"{type(layer).__name__}.")
    if bn.running_mean is None or bn.running_mean.shape[0] != layer.weight.shape[0]:
        raise ValueError(f"fold_batch_norm: expected a BatchNorm with running statistics "
                         f"for the layer's {layer.weight.shape[0]} output channels.")
    a = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    if bn.weight is not None:
        a = a * bn.weight
    b = -a * bn.running_mean
    if bn.bias is not None:
        b = b + bn.bias
    folded = copy.deepcopy(layer)
    column = (-1,) + (1,) * (layer.weight.ndim - 1)  # (C,) -> (C, 1) or (C, 1, 1, 1)
    folded.weight.copy_(layer.weight * a.reshape(column))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(b)
    if folded.bias is None:
        folded.bias = nn.Parameter(torch.zeros_like(b))
    folded.bias.copy_(a * bias + b)
    return folded
