"""Lab 4 (``labs/lab04_sync_and_folding.ipynb``): the questions, their points and the named mistakes.

Graded functions (NumPy; the lab's torch cells use them but are not graded numerically):

* ``merge_batch_statistics(counts, means, variances) -> (mean, var)``: replica r reduced
  counts[r] values per channel (an int array (R,), entries >= 0 with a positive sum; an empty
  replica contributes nothing) into means[r] and the BIASED variances[r], (R, C); the mean and
  biased variance, (C,), of the concatenated batch, in the dtype of ``means`` (SyncBatchNorm's
  forward statistics, eq-sync-merge: Chan et al.'s merge eq-num-chan for R parts);
* ``sync_running_statistics(running_mean, running_var, counts, means, variances, momentum=0.1)
  -> (running_mean, running_var)``: new running statistics after one synchronized training step,
  the merged mean and the merged variance made unbiased with the GLOBAL count N = sum(counts)
  (eq-bn-running-mean, eq-bn-running-var), in the dtype of ``running_mean``; it may call
  ``merge_batch_statistics``;
* ``fold_batch_norm(weight, bias, gamma, beta, running_mean, running_var, eps=1e-5) ->
  (weight, bias)``: the layer (Linear (C_out, C_in) or Conv (C_out, C_in / groups, *kernel),
  bias (C_out,) or None) that equals an evaluation-mode BatchNorm after it (eq-bn-eval folded:
  eq-bn-fold); the bias is always an array; both in ``weight``'s dtype.

The per-replica statistics are those of real shards: shifted, scaled samples (5 * randn + 12,
a different scale per channel and an offset per replica, so the replicas' means differ), their
means and biased variances taken in float64. The expected outputs come from ``bnlab.numpy``
(``merge_batch_statistics``, ``sync_running_statistics``, ``fold_batch_norm``), imported only
in the parent process and never sent to the child.
"""

from math import prod

import numpy as np

from bnlab.grade import core
from bnlab.grade.core import Case, Mistake

LAB = "lab04"
MERGE, RUNNING, FOLD = "merge_batch_statistics", "sync_running_statistics", "fold_batch_norm"
FUNCTIONS = (MERGE, RUNNING, FOLD)
SEED = 20240404
HIDDEN_SEED = 20240414  # the default; an instructor passes their own (--hidden-seed)
QUESTIONS = {"merge": "merge_batch_statistics (SyncBatchNorm's batch statistics)",
             "running": "sync_running_statistics (running statistics after a synchronized step)",
             "fold": "fold_batch_norm (BatchNorm folded into the layer before it)"}
EPS = 1e-5
FOLD_REDUCTION = 16  # folding reduces nothing, but chains a few float32 operations (a square
                     # root, a division, a product, a sum): the tolerance of m = 16, 2.4e-5 in
                     # float32, covers them; the smallest mistake (eps outside the square root)
                     # is caught in float64 and where running_var is small

LARGE_MEAN_HINT = (
    "these replicas' values have mean about 1000 and standard deviation about 1: merging raw "
    "second moments, E[x^2] = var_r + mean_r**2, then E[x^2] - mean**2, cancels catastrophically "
    "in float32 (both terms are about 1e6, their difference about 1); merge centred quantities, "
    "n_r * var_r and n_r * (mean_r - mean)**2 (eq-sync-merge)")

DEFAULT_MOMENTUM_HINT = ("this call passes no momentum: the signature's default must be momentum=0.1, PyTorch's "
                         "(the weight of the new batch)")
FOLD_HINT = ("each output channel o is scaled by one number: new_weight[o] == a[o] * weight[o] and new_bias[o] "
             "== a[o] * (bias[o] - running_mean[o]) + beta[o], with a = gamma / sqrt(running_var + eps) "
             "(bias 0 when None; eq-bn-fold)")


def reference():
    """The functions the expected outputs come from."""
    from bnlab import numpy as ref
    return {MERGE: ref.merge_batch_statistics, RUNNING: ref.sync_running_statistics,
            FOLD: ref.fold_batch_norm}


# --- inputs

def inp(key):
    return {"input": key}


def _replicas(rng, counts, c, dtype=np.float64, shift=12.0, scale=5.0, offset=3.0):
    """counts (R,) and the per-replica means and biased variances (R, C) of real shards: replica
    r's n_r samples are ``scale * s_c * randn + shift + o_rc`` (s_c a per-channel scale, o_rc a
    per-replica offset, so that the replicas' means differ). An empty replica reports mean 0 and
    variance 0 (torch's SyncBatchNorm too sends zeros, with its count 0, for an empty input)."""
    spread = scale * (0.5 + rng.random(c))  # (C,)
    means, variances = np.zeros((len(counts), c)), np.zeros((len(counts), c))
    for r, n in enumerate(counts):
        x = spread * rng.standard_normal((n, c)) + shift + offset * rng.standard_normal(c)  # (n_r, C)
        if n:
            means[r], variances[r] = x.mean(axis=0), x.var(axis=0)
    return dict(counts=np.array(counts, dtype=np.int64), means=means.astype(dtype),
                variances=variances.astype(dtype))


def _merge_step():
    return dict(steps=[dict(call=MERGE, args=[inp("counts"), inp("means"), inp("variances")],
                            returns=["mean", "var"])])


def _running_inputs(rng, counts, c, dtype=np.float64):
    inputs = _replicas(rng, counts, c, dtype)
    inputs.update(running_mean=(12 + rng.standard_normal(c)).astype(dtype),
                  running_var=(20 * (0.5 + rng.random(c))).astype(dtype))
    return inputs


def _running_step(momentum=None):
    kwargs = {} if momentum is None else dict(momentum=momentum)
    return dict(steps=[dict(call=RUNNING, args=[inp("running_mean"), inp("running_var"), inp("counts"),
                                                inp("means"), inp("variances")],
                            kwargs=kwargs, returns=["running_mean", "running_var"])])


def _fold_inputs(rng, shape, dtype=np.float64, bias=True, small_var=False):
    """A layer's weight (C_out, ...) and bias, a BatchNorm's gamma, beta and running statistics
    as training leaves them (means away from 0, variances away from 1)."""
    c_out = shape[0]
    fan_in = prod(shape[1:])
    inputs = dict(weight=rng.standard_normal(shape) / np.sqrt(fan_in),
                  gamma=1 + 0.5 * rng.standard_normal(c_out), beta=rng.standard_normal(c_out),
                  running_mean=3 * rng.standard_normal(c_out),
                  running_var=(1e-3 if small_var else 0.3) + 2 * rng.random(c_out))
    if bias:
        inputs["bias"] = rng.standard_normal(c_out)
    return {k: v.astype(dtype) for k, v in inputs.items()}


def _fold_step(bias=True):
    args = [inp("weight"), inp("bias") if bias else None, inp("gamma"), inp("beta"),
            inp("running_mean"), inp("running_var")]
    return dict(steps=[dict(call=FOLD, args=args, kwargs=dict(eps=EPS), returns=["weight", "bias"])])


# --- questions

def cases(seed=SEED, hidden_seed=None):
    """The lab's public cases, with inputs drawn deterministically from ``seed``, then, when
    ``hidden_seed`` is given, the hidden ones. A case's question is its kind (QUESTIONS)."""
    return core.public_and_hidden(public_cases, hidden_cases, seed, hidden_seed)


def public_cases(seed):
    rng = np.random.default_rng(seed)
    merged = ("s0_mean", "s0_var")
    running = ("s0_running_mean", "s0_running_var")
    folded = ("s0_weight", "s0_bias")
    qs = []
    for name, title, points, counts, c, dtype in (
            ("merge_uneven", "merge_batch_statistics, 4 replicas with 8, 3, 16 and 5 samples, C = 6",
             2, (8, 3, 16, 5), 6, np.float64),
            ("merge_float32", "merge_batch_statistics, float32, 5 replicas (5, 12, 2, 9, 4 samples), C = 3",
             1, (5, 12, 2, 9, 4), 3, np.float32),
            ("merge_single_and_empty", "merge_batch_statistics, replicas with 1, 0 (an empty shard: mean 0 "
             "and variance 0), 6 and 1 samples, C = 4", 1, (1, 0, 6, 1), 4, np.float64)):
        qs.append(Case(name, title, points, _merge_step(), _replicas(rng, counts, c, dtype), merged,
                       sum(counts), "merge"))
    for name, title, points, counts, c, dtype, momentum in (
            ("running_default_momentum", "sync_running_statistics, 3 replicas (6, 2, 9 samples), C = 5, "
             "the default momentum", 2, (6, 2, 9), 5, np.float64, None),
            ("running_float32", "sync_running_statistics, float32, 2 replicas (3, 7 samples), C = 4, "
             "momentum 0.3", 1, (3, 7), 4, np.float32, 0.3)):
        qs.append(Case(name, title, points, _running_step(momentum), _running_inputs(rng, counts, c, dtype),
                       running, sum(counts), "running", hint="" if momentum is not None else DEFAULT_MOMENTUM_HINT))
    for name, title, points, shape, dtype, bias, small_var in (
            ("fold_linear", "fold_batch_norm, Linear (6, 6) with bias", 2, (6, 6), np.float64, True, False),
            ("fold_conv2d", "fold_batch_norm, Conv2d (8, 3, 3, 3) with bias, some running_var small",
             2, (8, 3, 3, 3), np.float64, True, True),
            ("fold_conv2d_no_bias", "fold_batch_norm, Conv2d (5, 2, 3, 3) without bias (bias=None)",
             1, (5, 2, 3, 3), np.float64, False, False),
            ("fold_linear_float32", "fold_batch_norm, float32 Linear (4, 10) with bias", 1, (4, 10),
             np.float32, True, False)):
        qs.append(Case(name, title, points, _fold_step(bias), _fold_inputs(rng, shape, dtype, bias, small_var),
                       folded, FOLD_REDUCTION, "fold", hint=FOLD_HINT))
    return qs


def hidden_cases(seed):
    """Cases the instructor's run adds: other sizes and dtypes, float32 replicas with a large
    mean, two single-sample replicas, grouped, 1-D and 3-D convolutions. The inputs come from
    the instructor's ``seed``, so a notebook cannot be fitted to them."""
    rng = np.random.default_rng(seed)
    merged, running, folded = ("s0_mean", "s0_var"), ("s0_running_mean", "s0_running_var"), ("s0_weight", "s0_bias")
    counts = (1, 7, 30, 3, 64, 12, 2)
    qs = [
        Case("hidden_merge_large_mean", "merge_batch_statistics, float32 replicas with mean about 1000 and "
             "standard deviation about 1, 7 replicas (1 to 64 samples)", 1, _merge_step(),
             _replicas(rng, counts, 6, np.float32, shift=1000.0, scale=1.0, offset=0.5), merged,
             sum(counts), "merge", hidden=True, tolerance_scale=4.0, hint=LARGE_MEAN_HINT),
        Case("hidden_merge_two_singles", "merge_batch_statistics, 2 replicas of 1 sample each, C = 1", 1,
             _merge_step(), _replicas(rng, (1, 1), 1), merged, 2, "merge", hidden=True),
        Case("hidden_running_float32", "sync_running_statistics, float32, replicas of 3, 1 and 1 samples, "
             "C = 3, momentum 0.05", 1, _running_step(0.05), _running_inputs(rng, (3, 1, 1), 3, np.float32),
             running, 5, "running", hidden=True),
    ]
    for name, title, shape, dtype, bias in (
            ("hidden_fold_grouped", "fold_batch_norm, float32 Conv2d with groups=3, weight (6, 2, 3, 3), "
             "no bias", (6, 2, 3, 3), np.float32, False),
            ("hidden_fold_conv1d", "fold_batch_norm, Conv1d (4, 4, 5) with bias", (4, 4, 5), np.float64, True),
            ("hidden_fold_depthwise3d", "fold_batch_norm, depthwise Conv3d (3, 1, 2, 2, 2) with bias",
             (3, 1, 2, 2, 2), np.float64, True)):
        qs.append(Case(name, title, 1, _fold_step(bias), _fold_inputs(rng, shape, dtype, bias, small_var=True),
                       folded, FOLD_REDUCTION, "fold", hidden=True, hint=FOLD_HINT))
    return qs


# --- named mistakes

def buggy_merge(*, weights="counts", between=True, inputs_unbiased=False, output_unbiased=False):
    """``merge_batch_statistics`` with one mistake: ``weights="equal"`` treats every replica as
    the same size, ``between=False`` drops the spread of the replicas' means,
    ``inputs_unbiased`` takes the variances for unbiased ((n_r - 1) var_r), ``output_unbiased``
    returns M2 / (N - 1)."""

    def merge(counts, means, variances):
        n = np.asarray(counts, dtype=np.float64)[:, None]  # (R, 1)
        if weights == "equal":
            n = np.ones_like(n)
        mu_r, var_r = means.astype(np.float64), variances.astype(np.float64)  # (R, C)
        total = n.sum()
        mu = (n * mu_r).sum(axis=0) / total
        m2 = ((n - 1) if inputs_unbiased else n) * var_r
        m2 = m2.sum(axis=0) + ((n * (mu_r - mu) ** 2).sum(axis=0) if between else 0)
        var = m2 / (total - 1 if output_unbiased else total)
        return mu.astype(means.dtype), var.astype(means.dtype)

    return merge


def buggy_running(merge=None, *, unbiased="global", momentum_reversed=False):
    """``sync_running_statistics`` on ``merge`` (the right one by default) with one mistake:
    ``unbiased="none"`` keeps the biased variance, ``unbiased="local"`` updates with replica 0's
    own statistics only (what each replica of plain BatchNorm under DistributedDataParallel
    does), ``momentum_reversed`` gives the old value the weight ``momentum``."""
    merge = merge or buggy_merge()

    def running(running_mean, running_var, counts, means, variances, momentum=0.1):
        counts = np.asarray(counts)
        if unbiased == "local":
            total = float(counts[0])
            mu, var = means[0].astype(np.float64), variances[0].astype(np.float64)
        else:
            total = float(counts.sum())
            mu, var = (v.astype(np.float64) for v in merge(counts, means, variances))
        if unbiased != "none":
            with np.errstate(divide="ignore", invalid="ignore"):  # one sample: inf, as the mistake gives
                var = var * total / (total - 1)
        keep, new = (momentum, 1 - momentum) if momentum_reversed else (1 - momentum, momentum)
        dtype = running_mean.dtype
        return ((keep * running_mean + new * mu).astype(dtype),
                (keep * running_var + new * var).astype(dtype))

    return running


def buggy_fold(*, eps_outside=False, no_sqrt=False, axis=0, bias_scaled=True, running_mean=True,
               beta_scaled=False):
    """``fold_batch_norm`` with one mistake: eps added outside the square root, the variance used
    as the standard deviation (``no_sqrt``), the scale applied along ``axis`` 1 (the input
    channels), the layer's bias not multiplied by the scale, running_mean forgotten, beta
    multiplied by the scale too."""

    def fold(weight, bias, gamma, beta, running_mean_, running_var, eps=1e-5):
        if no_sqrt:
            a = gamma / (running_var + eps)  # (C_out,)
        elif eps_outside:
            a = gamma / (np.sqrt(running_var) + eps)
        else:
            a = gamma / np.sqrt(running_var + eps)
        shape = [1] * weight.ndim
        shape[axis] = -1
        folded = weight * a.reshape(shape)  # axis 1 raises unless C_in / groups == C_out
        b = np.zeros_like(a) if bias is None else bias
        shift = running_mean_ if running_mean else 0
        if beta_scaled:
            new_bias = a * (b - shift + beta)
        else:
            new_bias = (a * b if bias_scaled else b) - a * shift + beta
        return folded.astype(weight.dtype), new_bias.astype(weight.dtype)

    return fold


def _merge(name, message, **flags):
    merge = buggy_merge(**flags)
    return Mistake(name, message, {MERGE: merge, RUNNING: buggy_running(merge)})


def _running(name, message, **flags):
    return Mistake(name, message, {RUNNING: buggy_running(**flags)})


def _fold(name, message, **flags):
    return Mistake(name, message, {FOLD: buggy_fold(**flags)})


def mistakes():
    """Named wrong implementations, in the order they are tried when explaining a wrong output."""
    return [
        _merge("merge_unweighted", "every replica was given the same weight (the plain mean of the "
               "replicas' means); with uneven shards a replica's statistics count in proportion to "
               "its number of values: mean = sum(n_r * mean_r) / N, N = sum(n_r), and the same "
               "weights n_r in the variance (an empty replica then counts for nothing) (eq-sync-merge)",
               weights="equal"),
        _merge("merge_no_between_term", "the variance is the (weighted) average of the replicas' "
               "variances only; it misses the spread of the replicas' means around the global mean: "
               "var = (sum(n_r * var_r) + sum(n_r * (mean_r - mean)**2)) / N, within plus between "
               "(eq-sync-merge)", between=False),
        _merge("merge_naive_average", "the variances were averaged unweighted and without the "
               "between-replica term; var = (sum(n_r * var_r) + sum(n_r * (mean_r - mean)**2)) / N "
               "(eq-sync-merge)", weights="equal", between=False),
        _merge("merge_inputs_as_unbiased", "the replicas' variances are BIASED (divided by n_r, as "
               "BatchNorm computes them): replica r's sum of squared deviations is n_r * var_r, not "
               "(n_r - 1) * var_r (eq-sync-local)", inputs_unbiased=True),
        _merge("merge_unbiased_output", "this is the UNBIASED variance of the whole batch (divided by "
               "N - 1); BatchNorm normalizes with the biased one (divided by N = sum(n_r), eq-bn-var), "
               "and only the running statistics get N / (N - 1)", output_unbiased=True),
        _running("running_var_biased", "running_var was updated with the biased merged variance; the "
                 "running statistic gets the UNBIASED one, var * N / (N - 1), with N = sum(counts), the "
                 "global count (eq-bn-running-var)", unbiased="none"),
        _running("running_local_statistics", "the running statistics were updated with replica 0's own "
                 "mean and variance (what plain BatchNorm under DistributedDataParallel keeps); "
                 "SyncBatchNorm updates them with the MERGED statistics, the variance made unbiased "
                 "with the global count N = sum(counts)", unbiased="local"),
        _running("running_momentum_reversed", "momentum was used as a decay (Keras's convention): "
                 "running = momentum * running + (1 - momentum) * batch; in PyTorch's convention "
                 "momentum is the weight of the NEW batch: running = (1 - momentum) * running + "
                 "momentum * batch (eq-bn-running-mean)", momentum_reversed=True),
        _fold("fold_input_channels", "the weight was scaled along axis 1, its INPUT channels (for a "
              "(C_out, C_in) weight, weight * a broadcasts a (C_out,) vector against the last axis); "
              "BatchNorm scales each OUTPUT channel, so filter weight[o] is multiplied by a[o]: "
              "weight * a.reshape(-1, 1, ..., 1), with a = gamma / sqrt(running_var + eps) (eq-bn-fold)",
              axis=1),
        _fold("fold_eps_outside", "eps was added outside the square root; BatchNorm's scale is "
              "a = gamma / sqrt(running_var + eps) (eq-bn-eval)", eps_outside=True),
        _fold("fold_var_as_std", "the scale divides by running_var + eps; it divides by the standard "
              "deviation, a = gamma / sqrt(running_var + eps) (eq-bn-eval)", no_sqrt=True),
        _fold("fold_bias_not_scaled", "the layer's bias was not multiplied by the scale; it goes "
              "through BatchNorm with the rest of the layer's output: new bias = a * (bias - "
              "running_mean) + beta, a = gamma / sqrt(running_var + eps) (eq-bn-fold)", bias_scaled=False),
        _fold("fold_no_running_mean", "running_mean was left out of the bias; evaluation-mode BatchNorm "
              "subtracts it before scaling: new bias = a * (bias - running_mean) + beta (eq-bn-fold)",
              running_mean=False),
        _fold("fold_beta_scaled", "beta was multiplied by the scale too; BatchNorm adds beta AFTER "
              "scaling: new bias = a * (bias - running_mean) + beta (eq-bn-fold)", beta_scaled=True),
    ]


def correct():
    """The mistakes' code with no mistake: it must agree with ``reference()`` (a test checks it)."""
    return Mistake("none", "", {MERGE: buggy_merge(), RUNNING: buggy_running(), FOLD: buggy_fold()})
