"""SyncBatchNorm's statistics in NumPy: merging per-replica batch statistics.

In data-parallel training each of R replicas sees its own shard of the batch. SyncBatchNorm
normalizes every shard with the statistics of the WHOLE batch, so the replicas exchange, per
channel, their count of values n_r, their mean mu_r and their biased variance var_r, and each
merges them into the global mean and biased variance (eq-sync-merge: Chan, Golub and
LeVeque's merge eq-num-chan for R parts at once, the law of total variance)::

    N   = sum_r n_r
    mu  = sum_r n_r mu_r / N                               (eq-bn-mean over the whole batch)
    var = (sum_r n_r var_r + sum_r n_r (mu_r - mu)^2) / N  (eq-bn-var over the whole batch)

within-replica spread plus between-replica spread. Both sums are of centred quantities, so
the merge keeps its digits when |mu| >> sqrt(var), where merging raw second moments
(E[x^2] - E[x]^2) cancels catastrophically in float32.

Shapes: counts (R,) integers; means, variances (R, C); the results (C,). A replica with
count 0 (an empty shard) contributes nothing, whatever its mean and variance (torch's
SyncBatchNorm drops such replicas too); the total count must be at least 1.
No torch here: this is the reference ``bnlab.torch``'s SyncBatchNorm is checked against.
"""

import numpy as np


def _check_counts(where, counts, num_replicas=None, min_total=1):
    """counts: a 1-D integer array of non-negative counts, summing to at least ``min_total``."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.shape[0] == 0:
        raise ValueError(f"{where}: expected counts of shape (R,), one count per replica (R >= 1); "
                         f"got shape {counts.shape}.")
    if counts.dtype.kind not in "iu":
        raise ValueError(f"{where}: expected integer counts (the number of values each replica "
                         f"reduced per channel); got dtype {counts.dtype}. Pass e.g. "
                         "np.array([n_0, n_1, ...], dtype=np.int64).")
    if num_replicas is not None and counts.shape[0] != num_replicas:
        raise ValueError(f"{where}: expected one count per replica, {num_replicas} (the first axis of "
                         f"means and variances); got {counts.shape[0]} counts.")
    if (counts < 0).any():
        raise ValueError(f"{where}: expected counts >= 0; got {counts.tolist()}.")
    total = int(counts.sum())
    if total < min_total:
        why = ("the merged statistics of an empty batch are undefined" if min_total == 1 else
               "the unbiased variance divides by N - 1: 'Expected more than 1 value per channel "
               "when training'")
        raise ValueError(f"{where}: expected counts summing to at least {min_total} ({why}); "
                         f"got {counts.tolist()}, total {total}.")
    return counts.astype(np.int64)


def _check_statistics(where, means, variances, counts):
    """means and variances: floating (R, C) arrays of the same shape; variances >= 0 where counted."""
    means, variances = np.asarray(means), np.asarray(variances)
    for name, a in (("means", means), ("variances", variances)):
        if a.ndim != 2:
            raise ValueError(f"{where}: expected {name} of shape (R, C), one row per replica; got "
                             f"shape {a.shape}. For a single replica pass x.mean(axis=...)[None].")
        if a.dtype.kind != "f":
            raise ValueError(f"{where}: expected floating {name} (float32 or float64); got dtype "
                             f"{a.dtype}.")
    if means.shape != variances.shape:
        raise ValueError(f"{where}: expected means and variances of the same shape (R, C); got "
                         f"{means.shape} and {variances.shape}.")
    counts = _check_counts(where, counts, means.shape[0])
    if (variances[counts > 0] < 0).any():
        raise ValueError(f"{where}: expected variances >= 0 (biased, each replica's mean squared "
                         "deviation from its own mean); got a negative one.")
    return means, variances, counts


def merge_batch_statistics(counts, means, variances):
    """The mean and biased variance of the concatenated batch (eq-bn-mean, eq-bn-var) from
    per-replica statistics (eq-sync-merge): replica r reduced counts[r] values per channel into
    means[r] and the BIASED variances[r]. Returns ``(mean, var)``, each (C,), in the dtype of ``means``
    (computed in float64), exactly what BatchNorm computes on the concatenation.

    counts: (R,) integers >= 0 with a positive sum (an empty replica contributes nothing);
    means, variances: (R, C) float32 or float64.
    """
    means, variances, counts = _check_statistics("merge_batch_statistics", means, variances, counts)
    mu, var = _merge(means, variances, counts)
    return mu.astype(means.dtype), var.astype(means.dtype)


def _merge(means, variances, counts):
    """eq-sync-merge in float64, on checked inputs: (mu, var), each (C,)."""
    seen = counts > 0  # (R,): empty replicas are dropped, their (undefined) statistics unused
    n = counts[seen].astype(np.float64)[:, None]  # (R', 1)
    mu_r = means[seen].astype(np.float64)  # (R', C)
    var_r = variances[seen].astype(np.float64)  # (R', C)
    total = n.sum()
    mu = (n * mu_r).sum(axis=0) / total  # (C,)
    within = (n * var_r).sum(axis=0)  # (C,): the squared deviations inside each replica
    between = (n * (mu_r - mu) ** 2).sum(axis=0)  # (C,): the replicas' means around mu
    return mu, (within + between) / total


def sync_running_statistics(running_mean, running_var, counts, means, variances, momentum=0.1):
    """The running statistics after one synchronized training step (eq-bn-running-mean,
    eq-bn-running-var): the replicas' statistics are merged (``merge_batch_statistics``) and the
    UNBIASED correction uses the global count N = sum(counts) (as torch's SyncBatchNorm does)::

        running_mean <- (1 - momentum) * running_mean + momentum * mu
        running_var  <- (1 - momentum) * running_var  + momentum * var * N / (N - 1)

    running_mean, running_var: (C,); counts (R,) with a sum of at least 2; means, variances
    (R, C). Returns NEW arrays ``(running_mean, running_var)`` in the dtype of ``running_mean``;
    the inputs are not modified. Every replica computes the same result, so the replicas'
    running statistics stay identical.
    """
    where = "sync_running_statistics"
    _check_counts(where, counts, min_total=2)
    mu, var = _merge(*_check_statistics(where, means, variances, counts))  # float64, (C,)
    running_mean, running_var = np.asarray(running_mean), np.asarray(running_var)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a.shape != mu.shape or a.dtype.kind != "f":
            raise ValueError(f"{where}: expected {name} of shape {mu.shape}, one value per channel "
                             f"(C = means.shape[1]), floating; got shape {a.shape}, dtype {a.dtype}.")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{where}: expected momentum in [0, 1], the weight of the new batch "
                         f"(torch's convention; Keras's decay 0.99 is momentum 0.01); got {momentum}.")
    total = float(np.sum(counts))
    dtype = running_mean.dtype
    new_mean = (1 - momentum) * running_mean.astype(np.float64) + momentum * mu
    unbiased = var * total / (total - 1)
    new_var = (1 - momentum) * running_var.astype(np.float64) + momentum * unbiased
    return new_mean.astype(dtype), new_var.astype(dtype)
