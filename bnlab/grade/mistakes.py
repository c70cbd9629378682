"""Classic normalization mistakes, as runnable wrong implementations.

The grader does not guess what a wrong answer means: it runs each named mistake through the
same calls as the student's code (``bnlab.grade.driver``) and, when the student's output
matches one of them where it does not match the reference, the feedback names that mistake.

Every member of the normalization family (BatchNorm, LayerNorm, GroupNorm, ...) is one
computation that differs only in WHICH elements share a mean and variance and WHICH entry of
gamma and beta scales each element. So one implementation, ``normalize_forward`` /
``normalize_backward``, takes that as a ``Grouping`` of integer labels, and every mistake is
either a wrong grouping (the statistics over the wrong axes, groups of the wrong channels,
gamma broadcast along the wrong axis, channels scrambled by a reshape) or one flag that
departs from the book (variance, eps, a dropped gradient term). With the right grouping and no
flags they compute the correct layer (tests check them against ``bnlab.numpy``).

``Grouping`` (each array has x's shape)
    ``stats``: which statistic each element belongs to (elements with the same label share a
    mean and a variance); ``params``: which entry of the flattened gamma and beta scales it;
    ``order``: None, or an output permutation, ``out.flat[i] = correct.flat[order[i]]`` (the
    result of a right computation put back in the wrong places, forward and backward alike).

``normalize_forward`` flags
    ``unbiased_norm``: normalize with the unbiased variance (eq-bn-var uses the biased one).
    ``eps_outside``: ``(x - mu) / (sqrt(var) + eps)`` instead of ``/ sqrt(var + eps)``.
    ``no_eps``: ``(x - mu) / sqrt(var)``, eps left out.
    ``stats=(mu, var)``: constants per label (eval mode) instead of the batch's statistics.

``normalize_backward`` flags
    ``drop``: ``None`` (correct), ``"mean"`` (no gradient through the mean, eq-bn-dmu),
    ``"var"`` (no gradient through the variance, eq-bn-dvar), ``"both"`` (mean and variance
    treated as constants: the eval-mode formula used in training).
    ``constants_as_statistics``: statistics that were constants (eval) differentiated as if
    they were the batch's (eq-bn-dx instead of eq-bn-dx-eval).
    ``dgamma_x``: ``dgamma = sum(dy * x)`` instead of ``sum(dy * x_hat)``.
    ``dgamma_dy``: ``dgamma = sum(dy)`` (that is dbeta) instead of ``sum(dy * x_hat)``.
    ``param_mean``: ``dgamma`` and ``dbeta`` averaged instead of summed.
    ``dx_no_gamma``: ``dx_hat = dy``, the factor gamma of eq-bn-dxhat left out.
    ``var_path_unbiased``: the term through the variance divides by m - 1 (the derivative of
    the unbiased variance) instead of m: ``-x_hat * sum(dx_hat * x_hat) / (m - 1)``.

On top of that core: lab 1's ``buggy_forward`` / ``buggy_backward`` (BatchNorm with running
statistics and the classic axes mistakes) and ``buggy_family`` (any layer's forward/backward
pair from a grouping function: ``layer_norm_grouping``, ``group_norm_grouping``).

``buggy_forward``'s own flags (the running statistics and eval mode)
    ``biased_running_var``: running_var updated with the biased batch variance.
    ``running_m_batch``: the unbiased correction ``N / (N - 1)`` with the batch size N instead
    of ``m / (m - 1)``. ``momentum_reversed``: momentum weighting the OLD value.
    ``momentum_no_decay``: ``running + momentum * batch``. ``running_of_x_hat``: the running
    statistics of the normalized x_hat. ``rebind_running``: the caller's arrays left unchanged.
    ``eval_batch_stats``: eval mode with the batch statistics. ``eval_updates_running``: eval
    mode updating the running statistics.
"""

from typing import NamedTuple, Optional

import numpy as np


class Grouping(NamedTuple):
    stats: np.ndarray
    params: Optional[np.ndarray]
    order: Optional[np.ndarray] = None


def labels(shape, keep):
    """Label each element of an array of ``shape`` by its coordinates on the axes ``keep``
    (C order): elements that differ only on the other axes share a label. ``keep=(1,)`` is
    BatchNorm's per-channel grouping; ``keep=()`` puts everything in one group."""
    keep = sorted(a % len(shape) for a in keep)
    sub = np.arange(int(np.prod([shape[a] for a in keep], dtype=np.int64))).reshape([shape[a] for a in keep])
    # (prod of kept sizes,) -> x's rank with 1 on the other axes, then broadcast to x's shape
    return np.broadcast_to(sub.reshape([shape[a] if a in keep else 1 for a in range(len(shape))]), shape)


def flat_positions(shape):
    """Each element's flat (C-order) index, in x's shape."""
    return np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)


def _by_label(label, values, count):
    """Mean of ``values`` per label (all 1-D)."""
    return np.bincount(label, weights=values, minlength=len(count)) / count


def normalize_forward(x, gamma, beta, grouping, *, eps=1e-5, unbiased_norm=False, eps_outside=False,
                      no_eps=False, stats=None):
    """``y = gamma * (x - mu) / sqrt(var + eps) + beta`` with statistics per ``grouping.stats``
    label and parameters per ``grouping.params`` label (eq-bn-mean, eq-bn-var, eq-bn-xhat,
    eq-bn-affine and their family analogues). Returns ``(y, cache)``; y has x's shape and dtype."""
    g = grouping.stats.ravel()
    xf = x.astype(np.float64).ravel()
    count = np.bincount(g).astype(np.float64)
    if stats is None:
        mu = _by_label(g, xf, count)
        var = np.bincount(g, weights=(xf - mu[g]) ** 2, minlength=len(count)) / (count - 1 if unbiased_norm else count)
    else:
        mu, var = (np.asarray(s, dtype=np.float64).ravel() for s in stats)
    eps = 0.0 if no_eps else eps
    std = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
    x_hat = (xf - mu[g]) / std[g]
    y = x_hat
    p = None if grouping.params is None else grouping.params.ravel()
    if gamma is not None:
        y = y * np.asarray(gamma, dtype=np.float64).ravel()[p]
    if beta is not None:
        y = y + np.asarray(beta, dtype=np.float64).ravel()[p]
    if grouping.order is not None:
        y = y[grouping.order.ravel()]
    cache = dict(x=xf, x_hat=x_hat, std=std, g=g, count=count, p=p, gamma=gamma,
                 has_beta=beta is not None, order=grouping.order, batch_stats=stats is None,
                 shape=x.shape, dtype=x.dtype, param_shape=np.shape(gamma if gamma is not None else beta))
    return y.reshape(x.shape).astype(x.dtype), cache


def normalize_backward(dy, cache, *, drop=None, constants_as_statistics=False, dgamma_x=False,
                       dgamma_dy=False, param_mean=False, dx_no_gamma=False, var_path_unbiased=False):
    """``(dx, dgamma, dbeta)`` for ``normalize_forward``'s cache (eq-bn-dbeta, eq-bn-dgamma,
    eq-bn-dxhat, eq-bn-dx; eq-bn-dx-eval for constant statistics)."""
    c = cache
    dyf = np.asarray(dy, dtype=np.float64).ravel()
    g, count, p, gamma = c["g"], c["count"], c["p"], c["gamma"]
    dgamma = dbeta = None
    dx_hat = dyf
    if p is not None:
        size = int(np.prod(c["param_shape"], dtype=np.int64))
        per = np.bincount(p, minlength=size).astype(np.float64) if param_mean else 1.0

        def reduce(v):  # sum (or mean) over the elements each parameter scales -> param shape
            return (np.bincount(p, weights=v, minlength=size) / per).reshape(c["param_shape"]).astype(c["dtype"])

        if c["has_beta"]:
            dbeta = reduce(dyf)
        if gamma is not None:
            dgamma = reduce(dyf if dgamma_dy else dyf * (c["x"] if dgamma_x else c["x_hat"]))
            if not dx_no_gamma:
                dx_hat = dyf * np.asarray(gamma, dtype=np.float64).ravel()[p]
    dx = dx_hat / c["std"][g]
    if c["batch_stats"] or constants_as_statistics:
        if drop not in ("mean", "both"):
            dx = dx - _by_label(g, dx_hat, count)[g] / c["std"][g]
        if drop not in ("var", "both"):
            m = count - 1 if var_path_unbiased else count
            dx = dx - c["x_hat"] * _by_label(g, dx_hat * c["x_hat"], m)[g] / c["std"][g]
    if c["order"] is not None:
        dx = dx[c["order"].ravel()]
    return dx.reshape(c["shape"]).astype(c["dtype"]), dgamma, dbeta


# --- BatchNorm with running statistics (lab 1; lab 2's spatial BatchNorm) -------------------

def _bn_keep(ndim, axes):
    """The axes a BatchNorm statistic does NOT reduce, per ``axes`` mode."""
    return {"channel": (1,), "batch": tuple(range(1, ndim)), "all": (), "last": (ndim - 1,)}[axes]


def bn_grouping(shape, axes="channel"):
    """BatchNorm's grouping: statistics per ``axes`` mode, gamma and beta per channel.

    ``axes``: ``"channel"`` (correct: every axis but 1), ``"batch"`` (axis 0 only: statistics
    per (C, H, W) position), ``"all"`` (one mean for the whole tensor), ``"last"`` (the
    channels-last habit: every axis but the last), ``"scrambled"`` ((N, C, H, W) reshaped
    straight to (N*H*W, C) without moving C last: "channel" j is every C-th element in memory,
    for the statistics and for gamma and beta), ``"not_moved_back"`` (right statistics, but the
    (N*H*W, C) result reshaped straight back to (N, C, H, W)).
    """
    c = shape[1]
    if axes == "scrambled":
        scrambled = flat_positions(shape) % c
        return Grouping(scrambled, scrambled)
    order = None
    if axes == "not_moved_back":
        # (N, C, *spatial) -> (N, *spatial, C): the correct result's elements in 2-D order
        order = np.moveaxis(flat_positions(shape), 1, -1).reshape(shape)
        axes = "channel"
    return Grouping(labels(shape, _bn_keep(len(shape), axes)), labels(shape, (1,)), order)


def buggy_forward(*, axes="channel", unbiased_norm=False, eps_outside=False, no_eps=False,
                  biased_running_var=False, running_m_batch=False, momentum_reversed=False,
                  momentum_no_decay=False, running_of_x_hat=False, rebind_running=False,
                  eval_batch_stats=False, eval_updates_running=False):
    """Return ``batch_norm_forward(x, gamma, beta, *, running_mean, running_var, training, momentum, eps)``
    with the chosen mistakes (none: eq-bn-mean, eq-bn-var, eq-bn-xhat, eq-bn-affine,
    eq-bn-running-mean, eq-bn-running-var, eq-bn-eval).

    ``axes``: see ``bn_grouping``. ``biased_running_var``: running_var updated with the biased
    batch variance. ``running_m_batch``: its unbiased correction uses the batch size N,
    ``N / (N - 1)``, instead of ``m / (m - 1)`` (m = N times the spatial size).
    ``momentum_reversed``: ``running = momentum * running + (1 - momentum) * batch``.
    ``momentum_no_decay``: ``running = running + momentum * batch`` (the old value not decayed).
    ``running_of_x_hat``: the running statistics updated with the mean and (unbiased) variance
    of the normalized x_hat (about 0 and 1) instead of the batch's. ``rebind_running``: new
    running arrays computed but the caller's arrays left unchanged. ``eval_batch_stats``: eval
    mode normalizes with the batch statistics. ``eval_updates_running``: eval mode updates the
    running statistics. ``unbiased_norm``, ``eps_outside``, ``no_eps``: ``normalize_forward``'s.
    """

    def forward(x, gamma, beta, *, running_mean=None, running_var=None, training=True,
                momentum=0.1, eps=1e-5):
        batch_stats = training or eval_batch_stats
        if running_mean is not None and (training or eval_updates_running):
            # statistics per channel for the running update, whatever the normalization used
            if axes == "scrambled":  # the statistics of the scrambled "channels", the columns
                columns = x.reshape(-1, x.shape[1])  # (N, C, *spatial) -> (N * prod(spatial), C), no transpose
                m, mu_c, var_c = columns.shape[0], columns.mean(axis=0), columns.var(axis=0)  # (C,)
            else:
                red = tuple(range(x.ndim)) if axes == "all" else (0,) + tuple(range(2, x.ndim))
                m = int(np.prod([x.shape[a] for a in red]))
                mu_c = np.broadcast_to(x.mean(axis=red), x.shape[1:2])  # (C,)
                var_c = np.broadcast_to(x.var(axis=red), x.shape[1:2])  # (C,)
            if running_of_x_hat:  # the statistics of x_hat = (x - mu) / sqrt(var + eps)
                mu_c, var_c = np.zeros_like(mu_c), var_c / (var_c + eps)
            n = x.shape[0] if running_m_batch else m
            var_c = var_c if biased_running_var else var_c * n / (n - 1)
            new_w, old_w = (1 - momentum, momentum) if momentum_reversed else (momentum, 1 - momentum)
            old_w = 1.0 if momentum_no_decay else old_w
            new_mean = old_w * running_mean + new_w * mu_c  # (C,)
            new_var = old_w * running_var + new_w * var_c  # (C,)
            if not rebind_running:
                running_mean[...] = new_mean
                running_var[...] = new_var
        if batch_stats:
            return normalize_forward(x, gamma, beta, bn_grouping(x.shape, axes), eps=eps,
                                     unbiased_norm=unbiased_norm, eps_outside=eps_outside, no_eps=no_eps)
        # eval: the running statistics, per channel (or per scrambled "channel", put back wrongly)
        reshaping = axes if axes in ("scrambled", "not_moved_back") else "channel"
        return normalize_forward(x, gamma, beta, bn_grouping(x.shape, reshaping), eps=eps,
                                 eps_outside=eps_outside, no_eps=no_eps, stats=(running_mean, running_var))

    return forward


def buggy_backward(*, drop=None, eval_as_training=False, dgamma_x=False, dgamma_dy=False,
                   param_mean=False, dx_no_gamma=False, var_path_unbiased=False):
    """Return ``batch_norm_backward(dy, cache) -> (dx, dgamma, dbeta)`` for ``buggy_forward``'s
    cache, with the chosen mistakes (``normalize_backward``'s flags; ``eval_as_training`` is
    ``constants_as_statistics``)."""

    def backward(dy, cache):
        return normalize_backward(dy, cache, drop=drop, constants_as_statistics=eval_as_training,
                                  dgamma_x=dgamma_x, dgamma_dy=dgamma_dy, param_mean=param_mean,
                                  dx_no_gamma=dx_no_gamma, var_path_unbiased=var_path_unbiased)

    return backward


# --- any member of the family, from its grouping -------------------------------------------

def buggy_family(grouping, forward_flags=None, backward_flags=None):
    """``(forward, backward)`` with the signatures ``forward(x, *args, gamma, beta, *, eps)`` and
    ``backward(dy, cache)``: ``grouping(x.shape, *args)`` says where the statistics and the
    parameters come from (``*args``: LayerNorm's ``normalized_shape``, GroupNorm's
    ``num_groups``), the flags are ``normalize_forward``'s and ``normalize_backward``'s."""

    def forward(x, *args, eps=1e-5):
        *layer_args, gamma, beta = args
        return normalize_forward(x, gamma, beta, grouping(x.shape, *layer_args), eps=eps,
                                 **(forward_flags or {}))

    def backward(dy, cache):
        return normalize_backward(dy, cache, **(backward_flags or {}))

    return forward, backward


def layer_norm_grouping(shape, normalized_shape, *, reduce="trailing"):
    """LayerNorm: statistics per sample over the trailing ``normalized_shape`` axes, gamma and
    beta elementwise over them. ``reduce``: ``"trailing"`` (correct), ``"batch"`` (statistics
    over axis 0, across the samples: BatchNorm's choice), ``"last"`` (the last axis only,
    whatever ``normalized_shape`` says), ``"features"`` (every axis but 0, the image habit:
    one statistic per sample of a (N, L, D) sequence instead of one per token)."""
    lead = len(shape) - len(tuple(normalized_shape))
    keep = {"trailing": range(lead), "batch": range(1, len(shape)),
            "last": range(len(shape) - 1), "features": (0,)}[reduce]
    return Grouping(labels(shape, tuple(keep)), labels(shape, tuple(range(lead, len(shape)))))


def group_norm_grouping(shape, num_groups, *, groups="consecutive", params="channel"):
    """GroupNorm: statistics per (sample, group of C // num_groups consecutive channels), gamma
    and beta per channel. ``groups="interleaved"``: channel c in group c % num_groups;
    ``groups="size"``: num_groups read as the number of channels PER group (C // num_groups
    groups of num_groups consecutive channels); ``groups="per_position"``: the right groups,
    but a statistic per (sample, group, spatial position), over the group's channels only.
    ``params="last"``: gamma and beta (C,) broadcast against the LAST axis (NumPy's default
    broadcasting without the reshape to (1, C, 1, ...)); raises like NumPy when it does not fit."""
    n, c = shape[:2]
    sample, channel = labels(shape, (0,)), labels(shape, (1,))
    count = num_groups  # groups per sample
    if groups in ("consecutive", "per_position"):
        group = channel // (c // num_groups)
    elif groups == "interleaved":
        group = channel % num_groups
    else:  # "size"
        group, count = channel // num_groups, c // num_groups
    stats = sample * count + group
    if groups == "per_position":  # (sample, group) -> (sample, group, position)
        spatial = int(np.prod(shape[2:], dtype=np.int64))
        stats = stats * spatial + labels(shape, tuple(range(2, len(shape))))
    if params == "channel":
        p = channel
    else:
        if shape[-1] != c:
            raise ValueError(f"operands could not be broadcast together with shapes {shape} ({c},)")
        p = labels(shape, (len(shape) - 1,))
    return Grouping(stats, p)
