"""Classic Batch Normalization mistakes, as runnable wrong implementations.

The grader does not guess what a wrong answer means: it runs each named mistake below through
the same calls as the student's code (``bnlab.grade.driver``) and, when the student's output
matches one of them where it does not match the reference, the feedback names that mistake.

``buggy_forward(**flags)`` / ``buggy_backward(**flags)`` build functions with the lab
contract's signatures. With no flags they compute correct Batch Normalization (a test checks
them against ``bnlab.numpy``), so every mistake is exactly one departure from the book:

forward flags
    ``axes``: ``"channel"`` (correct: every axis but 1), ``"batch"`` (axis 0 only: statistics per
    (C, H, W) position), ``"all"`` (every axis: one mean for the whole tensor), ``"last"``
    (channels-last habit: every axis but the last).
    ``unbiased_norm``: normalize with the unbiased variance (eq-bn-var uses the biased one).
    ``eps_outside``: ``(x - mu) / (sqrt(var) + eps)`` instead of ``/ sqrt(var + eps)``.
    ``biased_running_var``: running_var updated with the biased batch variance.
    ``momentum_reversed``: ``running = momentum * running + (1 - momentum) * batch``.
    ``rebind_running``: new running arrays computed but the caller's arrays left unchanged.
    ``eval_batch_stats``: eval mode normalizes with the batch statistics.
    ``eval_updates_running``: eval mode updates the running statistics.

backward flags
    ``drop``: ``None`` (correct), ``"mean"`` (no gradient through the mean, eq-bn-dmu),
    ``"var"`` (no gradient through the variance, eq-bn-dvar), ``"both"`` (mean and variance
    treated as constants: the eval-mode formula used in training).
    ``eval_as_training``: in eval mode, the training formula (eq-bn-dx) instead of eq-bn-dx-eval.
    ``dgamma_x``: ``dgamma = sum(dy * x)`` instead of ``sum(dy * x_hat)``.
    ``param_mean``: ``dgamma`` and ``dbeta`` averaged over the batch instead of summed.
"""

import numpy as np


def _reduce_axes(ndim, axes):
    if axes == "channel":
        return (0,) + tuple(range(2, ndim))
    if axes == "batch":
        return (0,)
    if axes == "all":
        return tuple(range(ndim))
    if axes == "last":
        return tuple(range(ndim - 1))
    raise ValueError(f"unknown axes mode {axes!r}")


def buggy_forward(*, axes="channel", unbiased_norm=False, eps_outside=False,
                  biased_running_var=False, momentum_reversed=False, rebind_running=False,
                  eval_batch_stats=False, eval_updates_running=False):
    """Return ``batch_norm_forward(x, gamma, beta, *, running_mean, running_var, training, momentum, eps)``
    with the chosen mistakes (none: eq-bn-mean, eq-bn-var, eq-bn-xhat, eq-bn-affine,
    eq-bn-running-mean, eq-bn-running-var, eq-bn-eval)."""

    def forward(x, gamma, beta, *, running_mean=None, running_var=None, training=True,
                momentum=0.1, eps=1e-5):
        shape = (1, -1) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, ...), broadcasts against x
        batch_stats = training or eval_batch_stats
        if batch_stats:
            red = _reduce_axes(x.ndim, axes)
            m = int(np.prod([x.shape[a] for a in red]))
            mu = x.mean(axis=red, keepdims=True)
            var = x.var(axis=red, keepdims=True, ddof=1 if unbiased_norm else 0)
            var_biased = x.var(axis=red, keepdims=True)
        else:
            mu, var = running_mean.reshape(shape), running_var.reshape(shape)  # (C,) -> (1, C, 1, ...)
        if running_mean is not None and (training or eval_updates_running):
            # statistics per channel for the running update, whatever the normalization used
            red = _reduce_axes(x.ndim, "channel") if axes != "all" else tuple(range(x.ndim))
            m_run = int(np.prod([x.shape[a] for a in red]))
            mu_c = np.broadcast_to(x.mean(axis=red, keepdims=True), (1, x.shape[1]) + (1,) * (x.ndim - 2))
            var_c = np.broadcast_to(x.var(axis=red, keepdims=True), mu_c.shape)
            var_c = var_c if biased_running_var else var_c * m_run / (m_run - 1)
            new_w, old_w = (1 - momentum, momentum) if momentum_reversed else (momentum, 1 - momentum)
            new_mean = old_w * running_mean + new_w * mu_c.reshape(-1)  # (C,)
            new_var = old_w * running_var + new_w * var_c.reshape(-1)  # (C,)
            if not rebind_running:
                running_mean[...] = new_mean
                running_var[...] = new_var
        std = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
        x_hat = (x - mu) / std
        y = x_hat
        if gamma is not None:
            y = y * gamma.reshape(shape)
        if beta is not None:
            y = y + beta.reshape(shape)
        cache = dict(x=x, x_hat=x_hat, mu=mu, std=std, gamma=gamma, beta=beta,
                     training=batch_stats, axes=_reduce_axes(x.ndim, axes) if batch_stats else None)
        return y.astype(x.dtype, copy=False), cache

    return forward


def buggy_backward(*, drop=None, eval_as_training=False, dgamma_x=False, param_mean=False):
    """Return ``batch_norm_backward(dy, cache) -> (dx, dgamma, dbeta)`` for ``buggy_forward``'s
    cache, with the chosen mistakes (none: eq-bn-dbeta, eq-bn-dgamma, eq-bn-dx, eq-bn-dx-eval)."""

    def backward(dy, cache):
        x, x_hat, std, gamma = cache["x"], cache["x_hat"], cache["std"], cache["gamma"]
        shape = (1, -1) + (1,) * (dy.ndim - 2)  # (C,) -> (1, C, 1, ...)
        channel = (0,) + tuple(range(2, dy.ndim))
        m = dy.size // dy.shape[1]
        reduce = (lambda a: a.mean(axis=channel)) if param_mean else (lambda a: a.sum(axis=channel))
        dbeta = reduce(dy) if cache["beta"] is not None else None
        dgamma = reduce(dy * (x if dgamma_x else x_hat)) if gamma is not None else None
        dx_hat = dy * gamma.reshape(shape) if gamma is not None else dy
        if cache["training"] or eval_as_training:
            red = cache["axes"] if cache["axes"] is not None else channel
            m = int(np.prod([dy.shape[a] for a in red]))
            dx = dx_hat / std
            if drop not in ("mean", "both"):
                dx = dx - dx_hat.sum(axis=red, keepdims=True) / std / m
            if drop not in ("var", "both"):
                dx = dx - x_hat * (dx_hat * x_hat).sum(axis=red, keepdims=True) / std / m
        else:
            dx = dx_hat / std
        return dx.astype(dy.dtype, copy=False), dgamma, dbeta

    return backward
