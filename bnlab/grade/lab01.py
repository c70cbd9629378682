"""Lab 1 (``labs/lab01_batchnorm.ipynb``): the questions, their points and the named mistakes.

Graded functions: ``batch_norm_forward(x, gamma, beta, *, running_mean=None, running_var=None,
training=True, momentum=0.1, eps=1e-5) -> (y, cache)`` and ``batch_norm_backward(dy, cache) ->
(dx, dgamma, dbeta)``, as in ``bnlab.numpy``. Inputs follow the course's testing rules:
shifted and scaled (5 * randn + 12), random gamma and beta, a RANDOM upstream gradient, float64
except where float32 is the point. The expected outputs come from ``bnlab.numpy`` (imported only
in the parent process, never sent to the child).
"""

import numpy as np

from bnlab.grade.core import Mistake, Question
from bnlab.grade.driver import BACKWARD, FORWARD
from bnlab.grade.mistakes import buggy_backward, buggy_forward

LAB = "lab01"
FUNCTIONS = (FORWARD, BACKWARD)
SEED = 20240101


def reference():
    """The functions the expected outputs come from."""
    from bnlab.numpy import batch_norm_backward, batch_norm_forward
    return {FORWARD: batch_norm_forward, BACKWARD: batch_norm_backward}


def _forward_step(x="x", gamma="gamma", beta="beta", rm=None, rv=None, training=True,
                  momentum=0.1, eps=1e-5):
    return dict(op="forward", x=x, gamma=gamma, beta=beta, running_mean=rm, running_var=rv,
                training=training, momentum=momentum, eps=eps)


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


def questions(seed=SEED):
    """The lab's questions, with inputs drawn deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    qs = []

    def forward_question(name, title, points, shape, dtype=np.float64, affine=True):
        inputs = _tensors(rng, shape, dtype, affine)
        g, b = ("gamma", "beta") if affine else (None, None)
        plan = dict(steps=[_forward_step(gamma=g, beta=b)])
        qs.append(Question(name, title, points, plan, inputs, ("s0_y",), _m(shape), "forward"))

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
                steps=[_forward_step(x=f"x{i}", rm="rm", rv="rv", momentum=mom)
                       for i, mom in enumerate((0.1, 0.1, 0.25))])
    for what, title, points in (("running_mean", "running_mean after 3 training calls (in place)", 1),
                                ("running_var", "running_var after 3 training calls (unbiased, in place)", 2)):
        qs.append(Question(what, title, points, plan, inputs,
                           tuple(f"s{i}_{what}" for i in range(3)), _m(shape), "running"))

    # Eval mode: running statistics of the right scale, not those of this batch.
    shape = (10, 3, 4, 4)
    inputs = _tensors(rng, shape)
    inputs.update(rm=12 + rng.standard_normal(3), rv=25 * (1 + 0.3 * rng.random(3)))
    plan = dict(buffers=dict(rm="rm", rv="rv"), steps=[_forward_step(rm="rm", rv="rv", training=False)])
    qs.append(Question("eval_mode", "eval mode (training=False): running statistics, left unchanged", 2,
                       plan, inputs, ("s0_y", "s0_running_mean", "s0_running_var"), _m(shape), "eval"))

    # Backward in training, random dy.
    shape = (6, 4, 3, 5)
    inputs = _tensors(rng, shape)
    plan = dict(steps=[_forward_step(), dict(op="backward", dy="dy")])
    qs.append(Question("backward_dx", "backward, training, (N, C, H, W): dx (random dy)", 3,
                       plan, inputs, ("s1_dx",), _m(shape), "backward"))
    qs.append(Question("backward_params", "backward, training: dgamma and dbeta", 2,
                       plan, inputs, ("s1_dgamma", "s1_dbeta"), _m(shape), "backward"))

    shape = (12, 5)
    inputs = _tensors(rng, shape, affine=False)
    plan = dict(steps=[_forward_step(gamma=None, beta=None), dict(op="backward", dy="dy")])
    qs.append(Question("backward_no_affine", "backward, (N, C), gamma = beta = None: dx, and None for dgamma, dbeta", 1,
                       plan, inputs, ("s1_dx", "s1_dgamma", "s1_dbeta"), _m(shape), "backward"))

    shape = (5, 3, 8)
    inputs = _tensors(rng, shape)
    inputs.update(rm=12 + rng.standard_normal(3), rv=25 * (1 + 0.3 * rng.random(3)))
    plan = dict(buffers=dict(rm="rm", rv="rv"),
                steps=[_forward_step(rm="rm", rv="rv", training=False), dict(op="backward", dy="dy")])
    qs.append(Question("backward_eval", "backward in eval mode: dx (eq-bn-dx-eval)", 1,
                       plan, inputs, ("s1_dx",), _m(shape), "backward"))
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
        _mistake("biased_running_var", "running_var was updated with the biased batch variance; the "
                 "convention (eq-bn-running-var, as in PyTorch) uses the unbiased one, var * m / (m - 1)",
                 dict(biased_running_var=True)),
        _mistake("momentum_reversed", "momentum was used the wrong way round; momentum is the weight "
                 "of the NEW batch: running = (1 - momentum) * running + momentum * batch_statistic "
                 "(eq-bn-running-mean)", dict(momentum_reversed=True)),
        _mistake("rebind_running", "the running arrays passed in were not changed; update them in "
                 "place (running_mean *= 1 - momentum; running_mean += momentum * mu, or "
                 "running_mean[...] = ...): assigning a new array to the name leaves the caller's "
                 "array as it was", dict(rebind_running=True)),
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
        _mistake("backward_constant_stats", "dx treats the batch mean and variance as constants "
                 "(dy * gamma / sqrt(var + eps) is the eval-mode gradient, eq-bn-dx-eval); in "
                 "training the paths through mu and var add two terms (eq-bn-dx)",
                 backward=dict(drop="both")),
        _mistake("backward_eval_as_training", "in eval mode mu and var are the running statistics, "
                 "constants, so dx = dy * gamma / sqrt(running_var + eps) (eq-bn-dx-eval); the "
                 "training formula was used", backward=dict(eval_as_training=True)),
        _mistake("dgamma_from_x", "dgamma was computed from x instead of x_hat; dgamma = "
                 "sum(dy * x_hat) over every axis except 1 (eq-bn-dgamma)", backward=dict(dgamma_x=True)),
        _mistake("param_grads_mean", "dgamma and dbeta were averaged over the batch; they are sums "
                 "over every axis except 1 (eq-bn-dgamma, eq-bn-dbeta)", backward=dict(param_mean=True)),
    ]


def _channel_axes(a):
    return (0,) + tuple(range(2, a.ndim))


def hints(question, key, got):
    """Property checks that explain a wrong output no named mistake explains."""
    out = []
    what = key.split("_", 1)[1]
    if question.kind == "forward" and what == "y":
        x_hat = got.astype(np.float64)
        if "gamma" in question.plan["steps"][0] and question.plan["steps"][0]["gamma"]:
            shape = (1, -1) + (1,) * (got.ndim - 2)  # (C,) -> (1, C, 1, ...)
            x_hat = (x_hat - question.inputs["beta"].reshape(shape)) / question.inputs["gamma"].reshape(shape)
        mean = x_hat.mean(axis=_channel_axes(got))
        var = x_hat.var(axis=_channel_axes(got))
        if np.abs(mean).max() > 1e-3:
            out.append(f"per channel, (y - beta) / gamma should have mean 0; got means {np.round(mean, 4)}")
        if np.abs(var - 1).max() > 1e-3:
            out.append(f"per channel, (y - beta) / gamma should have variance 1 (biased); got {np.round(var, 4)}")
    if question.kind == "backward" and what == "dx" and question.name != "backward_eval":
        sums = got.sum(axis=_channel_axes(got))
        if np.abs(sums).max() > 1e-6:
            out.append(f"in training, dx should sum to 0 over each channel (the mean path); got {sums}")
    return out


def relate(results):
    """The backward questions call the student's backward on their own forward's cache: say so
    when a forward question fails too."""
    forward_failed = [r.name for r in results if r.name.startswith("forward") and not r.passed]
    if forward_failed:
        for r in results:
            if (r.name.startswith("backward") and not r.passed and not r.crashed
                    and not any(f.startswith(f"{FORWARD} raised") for f in r.feedback)):
                r.feedback.append(f"note: the forward pass fails too ({', '.join(forward_failed)}); "
                                  "the backward pass uses its cache, so fix the forward first")
