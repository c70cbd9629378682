"""Lab 1 (``labs/lab01_batchnorm.ipynb``): the questions, their points and the named mistakes.

Graded functions: ``batch_norm_forward(x, gamma, beta, *, running_mean=None, running_var=None,
training=True, momentum=0.1, eps=1e-5) -> (y, cache)`` and ``batch_norm_backward(dy, cache) ->
(dx, dgamma, dbeta)``, as in ``bnlab.numpy``. Inputs follow the course's testing rules:
shifted and scaled (5 * randn + 12), random gamma and beta, a RANDOM upstream gradient, float64
except where float32 is the point. The expected outputs come from ``bnlab.numpy`` (imported only
in the parent process, never sent to the child).
"""

import numpy as np

from bnlab.grade import core
from bnlab.grade.core import Case, Mistake, Stats
from bnlab.grade.mistakes import buggy_backward, buggy_forward

LAB = "lab01"
FORWARD, BACKWARD = "batch_norm_forward", "batch_norm_backward"
FUNCTIONS = (FORWARD, BACKWARD)  # the graded functions
SEED = 20240101
HIDDEN_SEED = 20240111  # the default; an instructor passes their own (--hidden-seed)
QUESTIONS = {"forward": "Forward pass in training", "running": "Running statistics",
             "eval": "Eval mode", "backward": "Backward pass"}


def reference():
    """The functions the expected outputs come from."""
    from bnlab.numpy import batch_norm_backward, batch_norm_forward
    return {FORWARD: batch_norm_forward, BACKWARD: batch_norm_backward}


def inp(key):
    """A plan argument: a fresh copy of ``inputs[key]`` (None stays None)."""
    return None if key is None else {"input": key}


def forward_step(x="x", gamma="gamma", beta="beta", rm=None, rv=None, training=True,
                 momentum=0.1, eps=1e-5, function=FORWARD):
    """A plan step calling a BatchNorm forward with lab 1's signature (also lab 2's spatial one)."""
    kwargs = dict(training=training, momentum=momentum, eps=eps)
    if rm is not None:
        kwargs.update(running_mean={"buffer": rm}, running_var={"buffer": rv})
    return dict(call=function, args=[inp(x), inp(gamma), inp(beta)], kwargs=kwargs,
                returns=["y", "cache"])


def backward_step(step=0, dy="dy", function=BACKWARD):
    """A plan step calling a backward ``function(dy, cache)`` on the cache of plan step ``step``."""
    return dict(call=function, args=[inp(dy), {"cache": step}], returns=["dx", "dgamma", "dbeta"])


def bn_stats(shape):
    """BatchNorm's statistics, for the property hints: per channel, every axis but 1."""
    return Stats(shape, (0,) + tuple(range(2, len(shape))), (1, -1) + (1,) * (len(shape) - 2), "channel")


def _tensors(rng, shape, dtype=np.float64, affine=True):
    """Shifted, scaled x; random gamma, beta and upstream gradient dy."""
    c = shape[1]
    inputs = dict(x=(5 * rng.standard_normal(shape) + 12).astype(dtype),
                  dy=rng.standard_normal(shape).astype(dtype))
    if affine:
        inputs["gamma"] = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
        inputs["beta"] = rng.standard_normal(c).astype(dtype)
    return inputs


def _m(shape):
    return int(np.prod(shape)) // shape[1]


def cases(seed=SEED, hidden_seed=None):
    """The lab's public cases, with inputs drawn deterministically from ``seed``, then, when
    ``hidden_seed`` is given, the hidden ones (``hidden_cases``)."""
    return core.public_and_hidden(public_cases, hidden_cases, seed, hidden_seed)


def public_cases(seed):
    rng = np.random.default_rng(seed)
    qs = []

    def forward_question(name, title, points, shape, dtype=np.float64, affine=True):
        inputs = _tensors(rng, shape, dtype, affine)
        g, b = ("gamma", "beta") if affine else (None, None)
        plan = dict(steps=[forward_step(gamma=g, beta=b)])
        qs.append(Case(name, title, points, plan, inputs, ("s0_y",), _m(shape), "forward",
                           stats=bn_stats(shape)))

    forward_question("forward_2d", "forward, training, (N, C) with gamma and beta", 2, (16, 5))
    forward_question("forward_4d", "forward, training, (N, C, H, W)", 2, (6, 3, 4, 5))
    forward_question("forward_no_affine", "forward, training, (N, C, L), gamma = beta = None", 1,
                     (8, 4, 6), affine=False)
    forward_question("forward_5d_float32", "forward, training, float32 (N, C, D, H, W)", 1,
                     (4, 3, 2, 3, 4), dtype=np.float32)

    # Running statistics: three training calls on the same buffers, the last with another momentum.
    shape = (8, 3, 4, 4)
    inputs = {}
    for i in range(3):
        inputs[f"x{i}"] = (5 * rng.standard_normal(shape) + 12).astype(np.float64)
    inputs.update(gamma=(1 + 0.5 * rng.standard_normal(3)), beta=rng.standard_normal(3),
                  rm0=np.zeros(3), rv0=np.ones(3))
    plan = dict(buffers=dict(rm="rm0", rv="rv0"),
                steps=[forward_step(x=f"x{i}", rm="rm", rv="rv", momentum=mom)
                       for i, mom in enumerate((0.1, 0.1, 0.25))])
    for what, title, points in (("running_mean", "running_mean after 3 training calls (in place)", 1),
                                ("running_var", "running_var after 3 training calls (unbiased, in place)", 2)):
        qs.append(Case(what, title, points, plan, inputs,
                           tuple(f"s{i}_{what}" for i in range(3)), _m(shape), "running"))

    # Eval mode: running statistics of the right scale, not those of this batch.
    shape = (10, 3, 4, 4)
    inputs = _tensors(rng, shape)
    inputs.update(rm=12 + rng.standard_normal(3), rv=25 * (1 + 0.3 * rng.random(3)))
    plan = dict(buffers=dict(rm="rm", rv="rv"), steps=[forward_step(rm="rm", rv="rv", training=False)])
    qs.append(Case("eval_mode", "eval mode (training=False): running statistics, left unchanged", 2,
                       plan, inputs, ("s0_y", "s0_running_mean", "s0_running_var"), _m(shape), "eval"))

    # Backward in training, random dy.
    shape = (6, 4, 3, 5)
    inputs = _tensors(rng, shape)
    plan = dict(steps=[forward_step(), backward_step()])
    forwards = ("forward_2d", "forward_4d", "forward_no_affine", "forward_5d_float32")
    qs.append(Case("backward_dx", "backward, training, (N, C, H, W): dx (random dy)", 3,
                       plan, inputs, ("s1_dx",), _m(shape), "backward", forwards, bn_stats(shape)))
    qs.append(Case("backward_params", "backward, training: dgamma and dbeta", 2,
                       plan, inputs, ("s1_dgamma", "s1_dbeta"), _m(shape), "backward", forwards))

    shape = (12, 5)
    inputs = _tensors(rng, shape, affine=False)
    plan = dict(steps=[forward_step(gamma=None, beta=None), backward_step()])
    qs.append(Case("backward_no_affine", "backward, (N, C), gamma = beta = None: dx, and None for dgamma, dbeta", 1,
                       plan, inputs, ("s1_dx", "s1_dgamma", "s1_dbeta"), _m(shape), "backward",
                       forwards, bn_stats(shape)))

    shape = (5, 3, 8)
    inputs = _tensors(rng, shape)
    inputs.update(rm=12 + rng.standard_normal(3), rv=25 * (1 + 0.3 * rng.random(3)))
    plan = dict(buffers=dict(rm="rm", rv="rv"),
                steps=[forward_step(rm="rm", rv="rv", training=False), backward_step()])
    qs.append(Case("backward_eval", "backward in eval mode: dx (eq-bn-dx-eval)", 1,
                       plan, inputs, ("s1_dx",), _m(shape), "backward", forwards))
    return qs


LARGE_MEAN_HINT = (
    "this input has mean 1000 and standard deviation 1: a variance computed in one pass as "
    "mean(x**2) - mean(x)**2 cancels catastrophically in float32 (both terms are about 1e6, "
    "their difference about 1); compute the mean first, then mean((x - mu)**2) (eq-bn-var)")


def hidden_cases(seed):
    """Cases the instructor's run adds: other shapes, a batch of two, float32 with a large
    mean, another momentum, float32 and rank-2 backward passes. The inputs come from the
    instructor's ``seed``, so a notebook cannot be fitted to them."""
    rng = np.random.default_rng(seed)
    qs = []

    def case(name, title, plan, inputs, graded, shape, kind, **extra):
        qs.append(Case(name, title, 1, plan, inputs, graded, _m(shape), kind, hidden=True, **extra))

    shape = (2, 6)
    case("hidden_forward_batch2", "forward, training, a batch of two (2, 6)",
         dict(steps=[forward_step()]), _tensors(rng, shape), ("s0_y",), shape, "forward",
         stats=bn_stats(shape))
    shape = (256, 3)
    inputs = dict(x=(1000 + rng.standard_normal(shape)).astype(np.float32))
    case("hidden_forward_large_mean", "forward, training, float32 with mean 1000 and std 1",
         dict(steps=[forward_step(gamma=None, beta=None)]), inputs, ("s0_y",), shape, "forward",
         stats=bn_stats(shape), tolerance_scale=1001.0, hint=LARGE_MEAN_HINT)

    shape = (5, 4)
    inputs = {f"x{i}": 3 * rng.standard_normal(shape) - 7 for i in range(2)}
    inputs.update(gamma=1 + 0.5 * rng.standard_normal(4), beta=rng.standard_normal(4),
                  rm0=rng.standard_normal(4), rv0=1 + rng.random(4))
    plan = dict(buffers=dict(rm="rm0", rv="rv0"),
                steps=[forward_step(x=f"x{i}", rm="rm", rv="rv", momentum=mom)
                       for i, mom in enumerate((0.3, 0.05))])
    case("hidden_running_2d", "running statistics, (N, C), momentum 0.3 then 0.05", plan, inputs,
         ("s0_running_mean", "s0_running_var", "s1_running_mean", "s1_running_var"), shape, "running")

    shape = (7, 2, 5)
    inputs = _tensors(rng, shape)
    inputs.update(rm=-7 + rng.standard_normal(2), rv=9 * (1 + 0.3 * rng.random(2)))
    case("hidden_eval_3d", "eval mode, (N, C, L)",
         dict(buffers=dict(rm="rm", rv="rv"), steps=[forward_step(rm="rm", rv="rv", training=False)]),
         inputs, ("s0_y", "s0_running_mean", "s0_running_var"), shape, "eval")

    forwards = ("forward_2d", "forward_4d", "forward_no_affine", "forward_5d_float32")
    for name, title, shape, dtype in (
            ("hidden_backward_float32", "backward, training, float32 (8, 3, 5, 5)", (8, 3, 5, 5), np.float32),
            ("hidden_backward_2d", "backward, training, (N, C) = (9, 6)", (9, 6), np.float64)):
        case(name, title + ": dx, dgamma, dbeta (random dy)", dict(steps=[forward_step(), backward_step()]),
             _tensors(rng, shape, dtype), ("s1_dx", "s1_dgamma", "s1_dbeta"), shape, "backward",
             requires=forwards, stats=bn_stats(shape))
    return qs


def _mistake(name, message, forward=None, backward=None):
    return Mistake(name, message, {FORWARD: buggy_forward(**(forward or {})),
                                   BACKWARD: buggy_backward(**(backward or {}))})


def mistakes():
    """Named wrong implementations, in the order they are tried when explaining a wrong output."""
    return [
        _mistake("axes_batch", "the statistics were computed over axis 0 only (one mean per "
                 "(C, H, W) position); BatchNorm reduces over every axis except the channel axis 1, "
                 "e.g. axes (0, 2, 3) for (N, C, H, W) (eq-bn-mean)", dict(axes="batch")),
        _mistake("axes_all", "the statistics were computed over all axes (one mean for the whole "
                 "tensor); reduce over every axis except the channel axis 1 (eq-bn-mean)", dict(axes="all")),
        _mistake("axes_last", "the statistics were computed per last axis (the channels-last "
                 "habit); here channels are axis 1: reduce over every axis except 1 (eq-bn-mean)",
                 dict(axes="last")),
        _mistake("unbiased_norm", "the normalization used the unbiased variance (divided by m - 1); "
                 "normalize with the biased variance, divided by m (eq-bn-var); only running_var "
                 "uses the unbiased one", dict(unbiased_norm=True)),
        _mistake("eps_outside", "eps was added outside the square root; use (x - mu) / sqrt(var + eps) "
                 "(eq-bn-xhat)", dict(eps_outside=True)),
        _mistake("no_eps", "eps was left out: (x - mu) / sqrt(var) divides by zero for a channel whose "
                 "values are all equal; use (x - mu) / sqrt(var + eps) (eq-bn-xhat)", dict(no_eps=True)),
        _mistake("biased_running_var", "running_var was updated with the biased batch variance; the "
                 "convention (eq-bn-running-var, as in PyTorch) uses the unbiased one, var * m / (m - 1)",
                 dict(biased_running_var=True)),
        _mistake("running_var_batch_size", "running_var's unbiased correction used the batch size N, "
                 "var * N / (N - 1); each channel's statistics reduce m = N times the spatial size values "
                 "(every axis except 1), so the correction is var * m / (m - 1) (eq-bn-running-var)",
                 dict(running_m_batch=True)),
        _mistake("momentum_reversed", "momentum was used the wrong way round; momentum is the weight "
                 "of the NEW batch: running = (1 - momentum) * running + momentum * batch_statistic "
                 "(eq-bn-running-mean)", dict(momentum_reversed=True)),
        _mistake("momentum_no_decay", "the running statistics kept all of their old value: running + "
                 "momentum * batch_statistic only grows; it is a moving average, running = (1 - momentum) "
                 "* running + momentum * batch_statistic (eq-bn-running-mean)", dict(momentum_no_decay=True)),
        _mistake("rebind_running", "the running arrays passed in were not changed; update them in "
                 "place (running_mean *= 1 - momentum; running_mean += momentum * mu, or "
                 "running_mean[...] = ...): assigning a new array to the name leaves the caller's "
                 "array as it was", dict(rebind_running=True)),
        _mistake("running_of_x_hat", "the running statistics were updated with the mean and variance of "
                 "the NORMALIZED x_hat (about 0 and 1); they track the statistics of the input x: its batch "
                 "mean mu and its unbiased batch variance (eq-bn-running-mean, eq-bn-running-var)",
                 dict(running_of_x_hat=True)),
        _mistake("eval_batch_stats", "eval mode (training=False) normalized with the batch "
                 "statistics; in eval use running_mean and running_var (eq-bn-eval)",
                 dict(eval_batch_stats=True)),
        _mistake("eval_updates_running", "eval mode (training=False) changed the running "
                 "statistics; only training updates them", dict(eval_updates_running=True)),
        _mistake("backward_no_mean_path", "dx is missing the gradient through the batch mean "
                 "(eq-bn-dmu): the term -mean(dx_hat) / sqrt(var + eps), which makes sum(dx) over "
                 "each channel zero", backward=dict(drop="mean")),
        _mistake("backward_no_var_path", "dx is missing the gradient through the batch variance "
                 "(eq-bn-dvar): the term -x_hat * mean(dx_hat * x_hat) / sqrt(var + eps)",
                 backward=dict(drop="var")),
        _mistake("backward_var_path_unbiased", "dx's term through the batch variance divides by m - 1; "
                 "the normalization uses the biased variance (divided by m), whose derivative is "
                 "2 (x - mu) / m, so the term is -x_hat * mean(dx_hat * x_hat) / sqrt(var + eps) (eq-bn-dvar)",
                 backward=dict(var_path_unbiased=True)),
        _mistake("backward_constant_stats", "dx treats the batch mean and variance as constants "
                 "(dy * gamma / sqrt(var + eps) is the eval-mode gradient, eq-bn-dx-eval); in "
                 "training the paths through mu and var add two terms (eq-bn-dx)",
                 backward=dict(drop="both")),
        _mistake("backward_no_gamma", "dx is missing the factor gamma: the gradient that reaches x_hat is "
                 "dx_hat = dy * gamma (eq-bn-dxhat), and dx is computed from dx_hat, not from dy (eq-bn-dx)",
                 backward=dict(dx_no_gamma=True)),
        _mistake("backward_eval_as_training", "in eval mode mu and var are the running statistics, "
                 "constants, so dx = dy * gamma / sqrt(running_var + eps) (eq-bn-dx-eval); the "
                 "training formula was used", backward=dict(eval_as_training=True)),
        _mistake("dgamma_from_x", "dgamma was computed from x instead of x_hat; dgamma = "
                 "sum(dy * x_hat) over every axis except 1 (eq-bn-dgamma)", backward=dict(dgamma_x=True)),
        _mistake("dgamma_from_dy", "dgamma was computed as sum(dy), which is dbeta; y = gamma * x_hat + "
                 "beta, so dgamma = sum(dy * x_hat) over every axis except 1 (eq-bn-dgamma)",
                 backward=dict(dgamma_dy=True)),
        _mistake("param_grads_mean", "dgamma and dbeta were averaged over the batch; they are sums "
                 "over every axis except 1 (eq-bn-dgamma, eq-bn-dbeta)", backward=dict(param_mean=True)),
    ]
