"""Inference statistics: precise (population) BatchNorm statistics and train-mode evaluation.

* ``precise_bn``: recompute every BatchNorm layer's running statistics as the plain average
  over training batches with the final weights (Wu & Johnson 2021's "precise BN"), the
  average that momentum=None (eq-bn-cma) computes: ``bnlab.torch.inference.precise_batch_norm``
  with estimator="batch_average".
* ``EmaTracker``: the running statistics that several momenta would have produced, tracked
  side by side during one training run (BatchNorm's momentum does not change training).
* ``train_mode_accuracy``: accuracy of a network left in training mode (the "forgot eval()"
  mistake), on test batches of a given size.

``is_batch_norm`` and ``batch_norm_layers`` live in ``bnlab.torch.inference`` and are
importable from here too.
"""

import copy

import torch

from ..torch.inference import batch_norm_layers, is_batch_norm, precise_batch_norm

__all__ = ["is_batch_norm", "batch_norm_layers", "precise_bn", "train_mode_accuracy",
           "EmaTracker"]


def precise_bn(model, data, batch_size, num_batches):
    """Replace the running statistics of every BatchNorm layer of ``model`` by the average
    of the batch statistics over ``num_batches`` consecutive batches of ``batch_size``
    examples of ``data`` (a tensor of training inputs, or a Dataset: its x_train), in
    training mode: running_mean becomes the mean of the batch means and running_var the mean
    of the unbiased batch variances, what momentum=None (eq-bn-cma) leaves. No weight
    changes. Returns ``model``.

    This is ``bnlab.torch.inference.precise_batch_norm(model, data, batch_size, num_batches,
    estimator="batch_average")``, which also offers statistics pooled over all examples
    and gathered in evaluation mode.
    """
    return precise_batch_norm(model, data, batch_size, num_batches, estimator="batch_average")


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
