"""Probing the optimization landscape (Santurkar et al. 2018) and noisy BatchNorm.

* ``probe_gradient_direction``: from the current weights, step along the negative gradient
  with several step sizes and record the loss and the gradient at each point: the loss
  variation and the gradient predictiveness of the paper's Figure 4.
* ``NoisyBatchNorm``: a BatchNorm layer followed by random per-channel noise with non-zero
  mean and non-unit variance, redrawn at every training step (the paper's Figure 2):
  artificial internal covariate shift.
* ``InputDrift``: how far the per-channel distribution of a layer's input moves from one
  training step to the next (a direct measure of internal covariate shift).
"""

import copy

import torch
from torch import nn

from .inference import is_batch_norm


def _loss_and_grad(model, params, loss_fn, x, y):
    """Loss at the model's current weights and its gradient (a list like ``params``)."""
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), [g.detach() for g in grads]


def probe_gradient_direction(model, loss_fn, x, y, step_sizes):
    """Step from the current weights theta along -grad L(theta) on the batch (x, y).

    For each step size eta, theta' = theta - eta * g with g = grad L(theta) on (x, y).
    Returns a dict of lists over ``step_sizes``: ``loss`` L(theta') (the loss landscape along
    the gradient), ``grad_change`` ||grad L(theta') - g|| (gradient predictiveness) and
    ``beta`` = ||grad L(theta') - g|| / ||theta' - theta|| (the "effective beta-smoothness"),
    plus ``loss0`` = L(theta) and ``grad_norm`` = ||g||. The model runs in its current mode
    (training mode: batch statistics, as during training); its weights, buffers (running
    statistics) and mode are restored afterwards, so probing does not disturb training.
    """
    state = copy.deepcopy(model.state_dict())  # weights AND running statistics
    params = [p for p in model.parameters() if p.requires_grad]
    theta = [p.detach().clone() for p in params]
    loss0, grad0 = _loss_and_grad(model, params, loss_fn, x, y)
    grad_norm = torch.sqrt(sum((g * g).sum() for g in grad0)).item()
    result = {"loss0": loss0, "grad_norm": grad_norm, "loss": [], "grad_change": [],
              "beta": []}
    try:
        for eta in step_sizes:
            with torch.no_grad():
                for p, p0, g in zip(params, theta, grad0):
                    p.copy_(p0 - eta * g)
            loss, grad = _loss_and_grad(model, params, loss_fn, x, y)
            change = torch.sqrt(sum(((g1 - g0) ** 2).sum() for g1, g0 in zip(grad, grad0)))
            result["loss"].append(loss)
            result["grad_change"].append(change.item())
            result["beta"].append(change.item() / max(eta * grad_norm, 1e-30))
    finally:
        model.load_state_dict(state)
    return result


class NoisyBatchNorm(nn.Module):
    """``bn`` followed, in training mode, by per-channel noise redrawn at every forward pass:
    y = scale * bn(x) + shift with shift ~ U(-mean_range, mean_range) and
    scale^2 ~ U(1, var_range) for each channel, as in Santurkar et al.'s noisy BatchNorm
    (non-zero mean, non-unit variance, a different distribution every step). The noise comes
    from the layer's own generator (``seed``), so runs are deterministic. In evaluation mode
    the layer is plain ``bn``.

    x: (N, C) or (N, C, *spatial); the noise broadcasts over all axes but 1.
    """

    def __init__(self, bn, *, mean_range=1.0, var_range=4.0, seed=0):
        super().__init__()
        if mean_range < 0 or var_range < 1:
            raise ValueError(f"NoisyBatchNorm: expected mean_range >= 0 and var_range >= 1; "
                             f"got mean_range={mean_range}, var_range={var_range}.")
        self.bn = bn
        self.mean_range, self.var_range = mean_range, var_range
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        y = self.bn(x)
        if not self.training:
            return y
        c = x.shape[1]
        u_mean, u_var = torch.rand(2, c, generator=self.generator)  # (C,) each, U(0, 1)
        shift = self.mean_range * (2 * u_mean - 1)
        scale = torch.sqrt(1 + (self.var_range - 1) * u_var)
        column = (1, c) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, ...)
        return y * scale.reshape(column).to(y.dtype) + shift.reshape(column).to(y.dtype)


def noisy(model, **noise_kwargs):
    """A copy of ``model`` with every BatchNorm layer (torch.nn's or bnlab's) wrapped in a
    NoisyBatchNorm; layer k gets seed ``noise_kwargs.get('seed', 0) + k``."""
    model = copy.deepcopy(model)
    seed = noise_kwargs.pop("seed", 0)
    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if is_batch_norm(child):
                setattr(module, child_name, NoisyBatchNorm(child, seed=seed + count,
                                                           **noise_kwargs))
                count += 1
    if count == 0:
        raise ValueError("noisy: expected a model with BatchNorm layers; found none.")
    return model


class InputDrift:
    """Records, at every training forward pass, the per-channel mean and standard deviation
    of ``layer``'s input (a forward pre-hook), and reports how much they move per step.

    drift()[t] = mean over channels of |mu_t - mu_{t-1}| + |sigma_t - sigma_{t-1}|, the
    distance the input distribution of the layer travelled between steps t-1 and t:
    internal covariate shift as Ioffe & Szegedy describe it. Only training-mode passes are
    recorded; call ``remove()`` when done.
    """

    def __init__(self, layer):
        self.means, self.stds = [], []
        self.active = True  # set to False to ignore forward passes (e.g. while probing)
        self.handle = layer.register_forward_pre_hook(self._record)

    def _record(self, module, inputs):
        if not (self.active and module.training):
            return
        x = inputs[0].detach()
        x = x.transpose(0, 1).reshape(x.shape[1], -1)  # (N, C, ...) -> (C, N * ...)
        self.means.append(x.mean(dim=1))
        self.stds.append(x.std(dim=1))

    def drift(self):
        """One value per step after the first."""
        means, stds = torch.stack(self.means), torch.stack(self.stds)  # (steps, C) each
        return ((means[1:] - means[:-1]).abs() + (stds[1:] - stds[:-1]).abs()).mean(dim=1)

    def remove(self):
        self.handle.remove()


def track_landscape(model, data, *, steps, lr, step_sizes, probe_every, batch_size=64,
                    seed=0, drift_layer=None, desc=None):
    """Train ``model`` on ``data`` with ``train`` (plain SGD) and, every ``probe_every``
    steps, probe the landscape along the gradient on a random training batch
    (``probe_gradient_direction``). ``drift_layer``: a layer of ``model`` whose input drift
    (``InputDrift``) is recorded at every training step.

    Returns (History, record) with record a dict of lists: ``steps`` (the probed steps),
    ``loss`` and ``grad_change`` (one list over ``step_sizes`` per probed step), ``beta``
    (the largest effective beta-smoothness per probed step), ``grad_norm`` (||g|| per
    probed step) and ``drift`` (per training
    step; empty without ``drift_layer``).
    """
    from .training import train

    record = {"steps": [], "loss": [], "grad_change": [], "beta": [], "grad_norm": [],
              "drift": []}
    loss_fn = nn.CrossEntropyLoss()
    probe_generator = torch.Generator().manual_seed(10_000 + seed)
    drift = InputDrift(drift_layer) if drift_layer is not None else None

    def on_step(step, model, loss):
        if step % probe_every:
            return
        idx = torch.randperm(len(data.y_train), generator=probe_generator)[:batch_size]
        if drift is not None:
            drift.active = False
        probe = probe_gradient_direction(model, loss_fn, data.x_train[idx], data.y_train[idx],
                                         step_sizes)
        if drift is not None:
            drift.active = True
        record["steps"].append(step)
        record["loss"].append(probe["loss"])
        record["grad_change"].append(probe["grad_change"])
        record["beta"].append(max(probe["beta"]))
        record["grad_norm"].append(probe["grad_norm"])

    try:
        history = train(model, data, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                        on_step=on_step, desc=desc)
    finally:
        if drift is not None:
            drift.remove()
    if drift is not None:
        record["drift"] = drift.drift().tolist()
    return history, record
