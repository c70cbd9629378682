"""Measuring what BatchNorm costs: time per step, activation memory saved for backward,
parameters and buffers, and folding into the preceding layer for inference
(``fold_batch_norm`` and ``fold`` live in ``bnlab.torch.inference``; ``fold_step_times``
times a model against its folded copy, e.g. ``resnet_like()``).

Timings are noisy and machine-dependent, so ``step_times`` interleaves the models it
compares and reports medians, and chapters compare ratios measured in the same run. Memory
saved for backward is deterministic: ``saved_activation_bytes`` counts it exactly.
"""

import copy
import time

import torch
from torch import nn

from ..torch.inference import batch_norm_layers, fold, fold_batch_norm

__all__ = ["saved_activation_bytes", "parameter_bytes", "without_batch_norm", "step_times",
           "fold_batch_norm", "ResidualBlock", "resnet_like", "fold_step_times"]


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


class ResidualBlock(nn.Module):
    """relu(x + body(x)) with body = conv-BN-ReLU-conv-BN (3x3, same channels): a ResNet
    basic block whose BatchNorm layers sit in an nn.Sequential, where ``fold`` finds them."""

    def __init__(self, channels, bn=nn.BatchNorm2d):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), bn(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), bn(channels))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def resnet_like(bn=nn.BatchNorm2d, channels=(32, 64), blocks=1, in_channels=3,
                num_classes=10):
    """A small ResNet-like CNN for (N, in_channels, H, W) images: a 3x3 conv-BN-ReLU stem;
    for each width in ``channels`` a stage of ``blocks`` residual blocks, entered (from the
    second stage on) through a stride-2 conv-BN-ReLU that changes the width; then global
    average pooling and a linear classifier. Convolutions before BatchNorm have no bias
    (BN's beta replaces it). bn: a BatchNorm2d class (torch.nn's or bnlab's)."""
    layers = [nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), bn(channels[0]),
              nn.ReLU()]
    for k, width in enumerate(channels):
        if k > 0:
            layers += [nn.Conv2d(channels[k - 1], width, 3, stride=2, padding=1, bias=False),
                       bn(width), nn.ReLU()]
        layers += [ResidualBlock(width, bn) for _ in range(blocks)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes)]
    return nn.Sequential(*layers)


def fold_step_times(model, x, *, repeats=30, warmup=5):
    """Median seconds of one inference step (evaluation mode, no_grad) of ``model`` and of
    ``fold(model)`` on ``x``, timed in turn by ``step_times`` in the same run:
    {"unfolded": s, "folded": s}. The model's state and mode are restored."""
    was_training = model.training
    folded = fold(model)
    y = torch.zeros(len(x), dtype=torch.long)  # unused in eval mode
    try:
        return step_times({"unfolded": model, "folded": folded}, x, y, mode="eval",
                          repeats=repeats, warmup=warmup)
    finally:
        model.train(was_training)
