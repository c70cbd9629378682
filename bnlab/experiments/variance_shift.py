"""Dropout before BatchNorm: the variance shift of Li et al. (2019) and its fixes.

In training, dropout multiplies each unit by ``mask / (1 - p)`` (mask ~ Bernoulli(1 - p)),
which keeps the mean and inflates the variance; in evaluation it is the identity. A
BatchNorm layer fed through dropout learns ``running_var`` from the inflated training
variance, and at test time divides the smaller eval-time variance by it: its output no
longer has unit variance, and every layer after it sees a shifted input.

* ``dropout_variance_ratio(p, mean, var)``: the paper's closed form of that shift for one unit;
* ``predicted_variance_shift(weight, h, p)``: the same through a linear layer, dropout -> Linear
  -> BatchNorm, per output channel;
* ``variance_shift(model, x)``: the measured shift of every BatchNorm layer of a trained model,
  eval-time variance of its input over ``running_var``, per channel;
* ``Uout``: the paper's variance-stable alternative to dropout, ``x * (1 + u)``, u ~ U(-beta, beta);
* ``dropout_disabled(model)`` and ``recompute_statistics(model, x, batch_size)``: re-estimate
  BatchNorm's statistics with the final weights and dropout off (precise BN, Wu & Johnson 2021,
  with dropout switched off), the paper's post-hoc fix.
"""

from contextlib import contextmanager

import torch
from torch import nn

from .activations import module_input
from .inference import batch_norm_layers, precise_bn


def dropout_variance_ratio(p, mean, var):
    """Var_eval / Var_train of one unit x (mean ``mean``, variance ``var``) after dropout
    with drop probability ``p`` (Li et al. 2019, section 3, with their retain ratio 1 - p).

    Training: x * m / (1 - p), m ~ Bernoulli(1 - p), so E = mean and
    Var_train = (mean^2 + var) / (1 - p) - mean^2; evaluation: Var_eval = var.
    """
    if not (0 <= p < 1 and var > 0):
        raise ValueError(f"dropout_variance_ratio: expected 0 <= p < 1 and var > 0; got "
                         f"p={p}, var={var}.")
    return var / ((mean ** 2 + var) / (1 - p) - mean ** 2)


@torch.no_grad()
def predicted_variance_shift(weight, h, p):
    """Predicted Var_eval / Var_train of z = dropout(h) @ weight.T, per output channel.

    weight: (C_out, C_in) of the Linear layer between dropout and BatchNorm; h: (N, C_in),
    the eval-time input of the dropout; p: drop probability. Dropout's multiplicative noise
    is zero-mean and independent across units and of h, so it adds
    p / (1 - p) * sum_k W_jk^2 E[h_k^2] to the variance of z_j in training and nothing at
    evaluation (the one-unit formula of dropout_variance_ratio, summed over the inputs).
    """
    if not 0 <= p < 1:
        raise ValueError(f"predicted_variance_shift: expected 0 <= p < 1; got p={p}.")
    var_eval = (h @ weight.T).var(dim=0)                               # (C_out,)
    noise = p / (1 - p) * ((h ** 2).mean(dim=0) @ (weight ** 2).T)     # (C_out,)
    return var_eval / (var_eval + noise)


class Uout(nn.Module):
    """Li et al.'s "Uout": y = x * (1 + u), u ~ U(-beta, beta) per element in training,
    the identity in evaluation. The mean is kept and the variance grows only by the factor
    (1 + beta^2 / 3) on E[x^2], far less than dropout's 1 / (1 - p)."""

    def __init__(self, beta=0.1):
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"Uout: expected 0 <= beta <= 1; got beta={beta}.")
        self.beta = beta

    def forward(self, x):
        if not self.training or self.beta == 0:
            return x
        u = (torch.rand_like(x) * 2 - 1) * self.beta  # U(-beta, beta), x's shape
        return x * (1 + u)

    def extra_repr(self):
        return f"beta={self.beta}"


@torch.no_grad()
def variance_shift(model, x):
    """Per BatchNorm layer of ``model`` (in order), the (C,) ratio of the eval-time variance
    of the layer's input over the ``running_var`` it learned in training.

    The input is what the layer receives on ``model(x)`` in evaluation mode (dropout off,
    earlier BatchNorms on their running statistics); its variance is unbiased, like
    running_var (eq-bn-running-var). 1 means no shift; Li et al. predict < 1 after dropout.
    Nothing in the model changes.
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("variance_shift: expected a model with BatchNorm layers that track "
                         "running statistics; found none.")
    return [module_input(model, layer, x).var(dim=0) / layer.running_var for layer in layers]


@contextmanager
def dropout_disabled(model):
    """Within the block, every nn.Dropout of ``model`` drops nothing (p = 0) and every Uout
    multiplies by 1 (beta = 0), even in training mode; the old values come back after."""
    saved = [(m, "p", m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    saved += [(m, "beta", m.beta) for m in model.modules() if isinstance(m, Uout)]
    for m, name, _ in saved:
        setattr(m, name, 0.0)
    try:
        yield model
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def recompute_statistics(model, x, batch_size):
    """Re-estimate every BatchNorm layer's running statistics from the training inputs ``x``
    with the final weights and dropout off: ``precise_bn`` over len(x) // batch_size batches
    inside ``dropout_disabled``. The weights do not change. Returns ``model``."""
    with dropout_disabled(model):
        return precise_bn(model, x, batch_size, len(x) // batch_size)
