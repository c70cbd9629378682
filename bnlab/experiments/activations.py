"""What one layer of a network receives, measured on a fixed probe batch over training.

Ioffe & Szegedy's Figure 1 follows the 15th, 50th and 85th percentiles of the input of one
sigmoid while a network trains. The tools here do that for any module of any model:

* ``module_input(model, module, x)``: the input ``module`` receives when ``model`` runs on
  ``x`` (a forward pre-hook; evaluation or training mode; no gradients; nothing in the model
  changed);
* ``PercentileTrace``: an ``on_step`` callback for ``bnlab.experiments.train`` that records
  the percentiles of every unit of that input every ``every`` steps;
* ``drift(percentiles)``: how far a unit's percentiles moved from where they started.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def module_input(model, module, x, *, training=False):
    """The first input that ``module`` (a submodule of ``model``) receives on ``model(x)``.

    ``training=False``: the model runs in evaluation mode (BatchNorm normalizes with its
    running statistics, eq-bn-eval; dropout is off). ``training=True``: it runs in training
    mode, so BatchNorm normalizes ``x`` with ``x``'s own batch statistics (eq-bn-mean,
    eq-bn-var), as it does a training batch; the running statistics that this forward pass
    updates are put back afterwards (dropout, if any, is active then and draws random
    numbers). Either way the model's buffers and mode are as before.
    Returns a detached tensor, (N, width) for an MLP's hidden layer.
    """
    if not any(m is module for m in model.modules()):
        raise ValueError("module_input: expected `module` to be a submodule of `model`; got "
                         f"a {type(module).__name__} that is not in it. Pass one of "
                         "model.modules(), e.g. the last nn.Sigmoid.")
    captured = []
    handle = module.register_forward_pre_hook(lambda mod, inputs: captured.append(inputs[0]))
    buffers = [(b, b.clone()) for b in model.buffers()]
    was_training = model.training
    try:
        model.train(training)
        model(x)
    finally:
        handle.remove()
        model.train(was_training)
        for buffer, saved in buffers:
            buffer.copy_(saved)
    return captured[0].detach().clone()


def last_of_type(model, module_type=nn.Sigmoid):
    """The last submodule of ``model`` of the given type (e.g. the last hidden sigmoid)."""
    found = [m for m in model.modules() if isinstance(m, module_type)]
    if not found:
        raise ValueError(f"last_of_type: expected a {module_type.__name__} in the model; got "
                         "none. Build the model with that activation.")
    return found[-1]


@dataclass
class PercentileTrace:
    """Percentiles of every unit of ``module``'s input on the probe batch ``x_probe``.

    Use as ``train(..., on_step=trace)``: every ``every`` steps (and whenever ``record`` is
    called, e.g. at step 0 before training) it stores the ``q`` percentiles of each unit.
    ``training``: run the probe in training mode (batch statistics) or evaluation mode; see
    ``module_input``. ``steps``: the recorded steps; ``values``: one (len(q), width) array per
    recorded step.
    """

    module: nn.Module
    x_probe: torch.Tensor
    every: int = 50
    q: tuple = (15, 50, 85)
    training: bool = False
    steps: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def record(self, step, model):
        z = module_input(model, self.module, self.x_probe, training=self.training)  # (N, width)
        z = z.reshape(len(z), -1)                           # (N, units): one column per unit
        self.steps.append(step)
        self.values.append(np.percentile(z.double().numpy(), self.q, axis=0))  # (Q, units)

    def __call__(self, step, model, loss):
        if step % self.every == 0:
            self.record(step, model)

    def percentiles(self, unit=None):
        """(T, Q) array for one ``unit``, or (T, Q, units) for all of them (unit=None)."""
        values = np.stack(self.values)  # (T, Q, units)
        return values if unit is None else values[:, :, unit]


def drift(percentiles):
    """How far a unit's input distribution moved during training.

    ``percentiles``: (T, Q) (one unit) or (T, Q, units), recorded at T steps, the first
    before training. Returns the largest distance, over the Q percentiles and the T steps,
    between a percentile and its value at the first recorded step, in the units of the
    layer's input (for a sigmoid's input that scale is what decides saturation); one number
    per unit.
    """
    p = np.asarray(percentiles, dtype=np.float64)
    if p.ndim not in (2, 3) or p.shape[0] < 2:
        raise ValueError("drift: expected percentiles of shape (T, Q) or (T, Q, units) with "
                         f"T >= 2 recorded steps; got shape {p.shape}. Record at least twice.")
    return np.abs(p - p[:1]).max(axis=(0, 1))
