"""The shared normalization computation in torch (written independently of bnlab.numpy).

Book: eq-bn-mean, eq-bn-var, eq-bn-xhat (forward), eq-bn-dx (backward), eq-rms-ms and
eq-rms-dx (RMSNorm), eq-bn-running-mean and eq-bn-running-var (running statistics).
"""

from math import prod

import torch


def compute_dtype(dtype):
    """Statistics of float16/bfloat16 inputs are computed in float32, as torch does."""
    return torch.promote_types(dtype, torch.float32)


def sum_over(x, dims):
    """sum over ``dims``, keepdim, the trailing dims of ``dims`` (contiguous in memory) first:
    the same sum, but torch reduced (N, C, 7, 7) over (2, 3) then 0 twice as fast as over
    (0, 2, 3) at once, and never slower on the other shapes of ``python -m bnlab.bench``.
    dims=() sums nothing (torch's own ``sum(dim=())`` would sum everything)."""
    if not dims:
        return x.clone()
    trailing, leading = _split_dims(x.ndim, dims)
    if trailing and leading:
        return x.sum(dim=trailing, keepdim=True).sum(dim=leading, keepdim=True)
    return x.sum(dim=dims, keepdim=True)


def _split_dims(ndim, dims):
    """dims -> (trailing, leading): the dims of ``dims`` that end x's shape (contiguous in
    memory: (2, 3) of (N, C, H, W) reduced over (0, 2, 3)) and the others ((0,))."""
    trailing = tuple(d for d in dims if all(e in dims for e in range(d, ndim)))
    return trailing, tuple(d for d in dims if d not in trailing)


def sum_of_products(a, b, dims):
    """sum(a * b) over ``dims``, keepdim, WITHOUT a temporary of a's size (the product is
    never stored): per row of the trailing dims a batched dot product (bmm of (rows, 1, L)
    by (rows, L, 1)), then a sum over the leading dims; with no trailing dim to reduce
    ((N, C) over 0), a loop over blocks of dim 0 whose products stay in cache. Allocating
    and first touching a buffer of x's size costs as much as a pass over it (``python -m
    bnlab.bench``). a is b gives the sum of squares, by ``torch.linalg.vector_norm``."""
    trailing, leading = _split_dims(a.ndim, dims)
    if trailing:
        if a is b:  # sum of squares = norm^2
            rows = torch.linalg.vector_norm(a, dim=trailing, keepdim=True).square_()
        else:
            length = prod(a.shape[d] for d in trailing)
            rows = torch.bmm(a.reshape(-1, 1, length), b.reshape(-1, length, 1))
            rows = rows.reshape([1 if d in trailing else n for d, n in enumerate(a.shape)])
        return rows.sum(dim=leading, keepdim=True) if leading else rows
    if 0 not in dims:  # no block loop possible: the product is stored
        return sum_over(a * b, dims)
    a_blocks = row_blocks(a)
    scratch = torch.empty_like(a_blocks[0])
    total = 0
    for a_rows, b_rows in zip(a_blocks, row_blocks(b)):
        total = total + sum_over(torch.mul(a_rows, b_rows, out=scratch[:len(a_rows)]), dims)
    return total


def row_blocks(x, budget=1 << 20):
    """x split along dim 0 into views of about ``budget`` bytes each (one row at least; a
    tensor with no rows is one empty block). Several operations applied to one block, then
    to the next, read x from memory once: the block stays in cache between them, where
    whole-tensor operations would each read x anew."""
    row_bytes = x[:1].numel() * x.element_size()  # 0 when x has no rows
    return x.split(max(1, budget // max(1, row_bytes)))


def mean_over(x, dims):
    """mean over ``dims``, keepdim (see sum_over)."""
    m = prod(x.shape[d] for d in dims)  # how many numbers each mean reduces
    return sum_over(x, dims) / m


def mean_square(x, dims, out=None):
    """mean(x^2) over ``dims``, keepdim: RMSNorm's statistic (eq-rms-ms), and the second pass
    of the variance when x = x - mu. ``out``: memory of x's shape for the squares (memory the
    caller is about to overwrite anyway), so that no temporary of x's size is allocated."""
    return mean_over(torch.mul(x, x, out=out), dims)


def centered_moments(x, dims, out=None):
    """Mean and biased variance over ``dims``, two-pass (eq-bn-mean, eq-bn-var), keepdim, and
    x - mu, which the second pass squares and x_hat is made from (normalize_centered).

    Two passes, not the one-pass E[x^2] - E[x]^2 that cancels catastrophically when
    |mean| >> std. ``out``: scratch memory for (x - mu)^2, as in mean_square.
    """
    mu = mean_over(x, dims)
    x_mu = x - mu  # a new tensor: the caller may overwrite it
    var = mean_square(x_mu, dims, out=out)
    return mu, var, x_mu


def moments(x, dims):
    """Mean and biased variance over ``dims``, two-pass, keepdim (see centered_moments)."""
    mu, var, _ = centered_moments(x, dims)
    return mu, var


def normalize_centered(x_mu, var, eps):
    """x_hat = (x - mu) * rstd with rstd = 1 / sqrt(var + eps) (eq-bn-xhat) from x_mu = x - mu,
    IN PLACE: x_mu's memory becomes x_hat (pass a tensor you own). Returns (x_hat, rstd)."""
    rstd = torch.rsqrt(var + eps)
    return x_mu.mul_(rstd), rstd


def normalize(x, mu, var, eps):
    """x_hat = (x - mu) * rstd with rstd = 1 / sqrt(var + eps) (eq-bn-xhat; eq-rms-xhat
    with mu = 0 and var = mean(x^2))."""
    return normalize_centered(x - mu, var, eps)


def normalize_backward(dx_hat, x_hat, rstd, dims, centered=True, means=None, out=None):
    """Closed form eq-bn-dx: rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)).

    centered=False (RMSNorm, no mean subtracted) drops the mean(dx_hat) term (eq-rms-dx).
    ``means``: (mean(dx_hat), mean(dx_hat * x_hat)) when the caller has them already;
    ``out``: memory for dx (its contents are overwritten). dx is linear in dx_hat, so with
    dx_hat = weight * dy and a weight constant over each statistic's elements (BatchNorm),
    passing dy and weight * rstd as ``rstd`` gives the same dx.
    """
    dx = torch.empty_like(x_hat) if out is None else out
    if means is None:
        mean_dx_hat = mean_over(dx_hat, dims) if centered else None
        # dx's memory holds dx_hat * x_hat until its mean is taken
        mean_dx_hat_x_hat = mean_over(torch.mul(dx_hat, x_hat, out=dx), dims)
    else:
        mean_dx_hat, mean_dx_hat_x_hat = means
    # Two passes over memory: dx = rstd * (dx_hat - mean(dx_hat)), then the path through var.
    if centered:
        torch.addcmul(-rstd * mean_dx_hat, dx_hat, rstd, out=dx)  # the path through mu
    else:
        torch.mul(dx_hat, rstd, out=dx)
    return dx.addcmul_(x_hat, -rstd * mean_dx_hat_x_hat)  # - rstd * x_hat * mean(dx_hat x_hat)


def merge_count_mean_m2(counts, means, m2s):
    """eq-sync-merge: the statistics of the union of W disjoint parts (of a batch split
    across replicas, SyncBatchNorm; of blocks of one tensor, bnlab/torch/per_channel.py).

    counts: (W, 1), means and m2s: (W, C) -> (n, mean (C,), M2 (C,)) with
        n = sum_k n_k,   mean = sum_k n_k mean_k / n,
        M2 = sum_k M2_k + sum_k n_k (mean_k - mean)^2.
    Applying Chan, Golub and LeVeque's two-part merge (eq-num-chan) W - 1 times gives the
    same numbers; written for all parts at once it is one vectorized expression. It is
    stable: M2 is a sum of non-negative terms and mean_k - mean a difference of means (the
    same two-pass structure as eq-bn-var), with none of the one-pass E[x^2] - E[x]^2
    cancellation that all-reducing raw sums of squares would suffer. Parts with n_k = 0
    add zero to every sum.
    """
    n = counts.sum()
    mean = (counts * means).sum(0) / n
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    return n, mean, m2


@torch.no_grad()
def update_running(running_mean, running_var, mu, var, m, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch statistic.

    mu, var: (C,) batch mean and BIASED variance of m numbers each; running_var takes the
    unbiased m / (m - 1) * var (eq-bn-running-mean, eq-bn-running-var). Under no_grad, so
    the update never grows the autograd graph.
    """
    running_mean.lerp_(mu.to(running_mean.dtype), momentum)  # running + momentum * (mu - running)
    running_var.lerp_((var * (m / (m - 1))).to(running_var.dtype), momentum)
