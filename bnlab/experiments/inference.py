"""Inference statistics: precise (population) BatchNorm statistics and train-mode evaluation.

* ``precise_bn``: recompute every BatchNorm layer's running statistics as the plain average
  over training batches with the final weights (Wu & Johnson 2021's "precise BN"), using
  momentum=None (eq-bn-cma).
* ``EmaTracker``: the running statistics that several momenta would have produced, tracked
  side by side during one training run (BatchNorm's momentum does not change training).
* ``train_mode_accuracy``: accuracy of a network left in training mode (the "forgot eval()"
  mistake), on test batches of a given size.
"""

import copy

import torch
from torch import nn


def is_batch_norm(module):
    """Whether ``module`` is a BatchNorm layer, torch.nn's or bnlab's (any rank, and bnlab's
    Batch Renorm and Ghost BatchNorm, which derive from its BatchNorm)."""
    from ..torch.modules import _BatchNorm as BnlabBatchNorm

    return isinstance(module, (nn.modules.batchnorm._BatchNorm, BnlabBatchNorm))


def batch_norm_layers(model):
    """The BatchNorm layers of ``model`` with running statistics (torch.nn's or bnlab's)."""
    return [m for m in model.modules() if is_batch_norm(m) and m.track_running_stats]


@torch.no_grad()
def precise_bn(model, data, batch_size, num_batches):
    """Replace the running statistics of every BatchNorm layer of ``model`` by the average
    of the batch statistics over ``num_batches`` consecutive batches of ``data``.

    data: a tensor of training inputs (N, ...) or a Dataset (its x_train is used); the first
    ``num_batches * batch_size`` examples are used, in order. Each layer's statistics are
    reset and ``momentum`` set to None, so that ``num_batches`` training-mode forward passes
    make running_mean the mean of the batch means and running_var the mean of the unbiased
    batch variances (eq-bn-cma); then momentum and the model's mode are restored. No weight
    changes. Returns ``model``.
    """
    x = getattr(data, "x_train", data)
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("precise_bn: expected a model with BatchNorm layers that track "
                         "running statistics; found none.")
    if num_batches < 1 or batch_size < 2 or num_batches * batch_size > len(x):
        raise ValueError(f"precise_bn: expected num_batches >= 1 and batch_size >= 2 with "
                         f"num_batches * batch_size <= {len(x)} examples; got "
                         f"num_batches={num_batches}, batch_size={batch_size}. Use fewer or "
                         f"smaller batches.")
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average, eq-bn-cma
    model.train()
    try:
        for k in range(num_batches):
            model(x[k * batch_size:(k + 1) * batch_size])
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return model


@torch.no_grad()
def train_mode_accuracy(model, x, y, batch_size):
    """Accuracy of ``model`` evaluated in TRAINING mode (batch statistics) on consecutive
    test batches of ``batch_size`` (a last incomplete batch is dropped). Runs on a copy, so
    the model's running statistics are not touched. A batch of one raises ValueError in a
    dense BatchNorm layer (one value per channel)."""
    model = copy.deepcopy(model).train()
    usable = len(y) // batch_size * batch_size
    correct = sum((model(xb).argmax(1) == yb).sum().item()
                  for xb, yb in zip(x[:usable].split(batch_size), y[:usable].split(batch_size)))
    return correct / usable


class EmaTracker:
    """Running statistics for several BatchNorm momenta at once, during one training run.

    In training mode a BatchNorm layer normalizes with batch statistics, so its momentum
    changes only the running statistics, never the weights: one run serves every momentum.
    A forward hook on each BatchNorm layer of ``model`` updates, for every momentum in
    ``momenta``, a running mean and unbiased running variance exactly as the layer would
    (eq-bn-running-mean, eq-bn-running-var), starting from 0 and 1. ``with_statistics(m)``
    returns a copy of the model whose layers hold the statistics of momentum ``m``.
    Call ``remove()`` when done.
    """

    def __init__(self, model, momenta):
        self.model, self.momenta = model, tuple(momenta)
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ValueError("EmaTracker: expected a model with BatchNorm layers; found none.")
        self.stats = {m: [(torch.zeros_like(layer.running_mean),
                           torch.ones_like(layer.running_var)) for layer in self.layers]
                      for m in self.momenta}
        self.handles = [layer.register_forward_hook(self._hook(k))
                        for k, layer in enumerate(self.layers)]

    def _hook(self, k):
        @torch.no_grad()
        def update(layer, inputs, output):
            if not layer.training or layer is not self.layers[k]:  # eval, or a copy's hook
                return
            x = inputs[0].detach()
            x = x.transpose(0, 1).reshape(x.shape[1], -1)  # (N, C, ...) -> (C, N * ...)
            mu, var = x.mean(dim=1), x.var(dim=1, unbiased=True)
            for m in self.momenta:
                running_mean, running_var = self.stats[m][k]
                running_mean.mul_(1 - m).add_(m * mu)  # eq-bn-running-mean
                running_var.mul_(1 - m).add_(m * var)  # eq-bn-running-var (unbiased)
        return update

    def with_statistics(self, momentum):
        """A copy of the model with the running statistics of ``momentum``."""
        copy_ = copy.deepcopy(self.model)
        for layer, (mean, var) in zip(batch_norm_layers(copy_), self.stats[momentum]):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        return copy_

    def remove(self):
        for handle in self.handles:
            handle.remove()
