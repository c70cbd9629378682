"""BatchNorm's forward and backward (statistics, weight and bias per channel) in few passes.

x (N, C, *spatial) is seen as a matrix in which every row, or every column, holds numbers of
one channel (``ChannelMatrix``):

    x's memory                   matrix               one channel's numbers
    (N, C, S), S >= ROW_LENGTH   (N * C, S)           rows c, C + c, 2C + c, ...
    (N, C, S), S < ROW_LENGTH    (N, C * S)           columns c*S .. c*S + S - 1
    channels last (N, S, C)      (N * S, C)           column c

A per-channel constant then broadcasts as one column (or row) of the matrix, and row or
column sums are matrix-vector products with ones (BLAS gemv). The matrix is worked through
in blocks of rows of about 2 MiB (``row_blocks``) wherever a step needs x - mu, so x - mu
is made in cache and never stored whole:

* statistics, two-pass (eq-bn-mean, eq-bn-var; no E[x^2] - E[x]^2 anywhere), x read from
  memory once: each row's (or each block's column's) mean and M2 = sum((x - mean)^2) while
  the block is in cache, the parts merged exactly with eq-sync-merge (Chan, Golub and
  LeVeque; SyncBatchNorm merges replicas with it); with columns and short blocks, or when x
  is one block (in cache), the mean first, then M2 (``ChannelMatrix.moments``);
* y = x * a + b, a = weight * rstd, b = bias - mu * a (eq-bn-xhat and eq-bn-affine joined):
  one operation, as torch's own CPU kernel does. x * a rounds to about eps * |mu| / sigma
  in units of y: no worse than x's own rounding, which blurs x_hat by as much already;
* (x - mu)^2 and dy * (x - mu) are one operation each, not two: torch's kernels of mse_loss
  (reduction "none") and of its backward compute exactly that (``squared_deviations``,
  ``twice_products_with_deviations``);
* backward: sum(dy) and sum(dy * (x - mu)) in one pass over x and dy, then
  dx = dy * g + x * k + c (eq-bn-dx expanded, ``per_channel_backward``) in two operations
  per block, the second on the first one's result in cache.
"""

from math import prod

import torch

from .normalize import merge_count_mean_m2, row_blocks

ROW_LENGTH = 256  # spatial sizes from which a row per (sample, channel) is long enough
ROW_CONSTANTS = 1 << 24  # most numbers a per-channel constant spread over one sample may take
MERGE_ROWS = 64  # columns per channel: rows a block needs for its own statistics
BLOCK_BYTES = 2 << 20  # rows of the matrix worked through at a time (``row_blocks``)


class ChannelMatrix:
    """x (N, C, *spatial) as a matrix whose rows or columns each belong to one channel (see
    the module's table), and per-channel vectors laid out to broadcast against it."""

    def __init__(self, x, by_rows=None):
        """by_rows: a row per (sample, channel), or None: when S >= ROW_LENGTH."""
        n, c, s = x.shape[0], x.shape[1], prod(x.shape[2:])
        self.x = x
        self.shape, self.channels = x.shape, c
        self.count = n * s  # numbers per channel
        self.channels_last = x.ndim > 2 and s > 1 and not x.is_contiguous() and (
            x.movedim(1, -1).is_contiguous())
        if self.channels_last:  # (N, S, C) in memory: column c is channel c
            self.rows_per_channel, self.copies, self.spatial = False, 1, 1
        else:
            self.rows_per_channel = s >= ROW_LENGTH if by_rows is None else by_rows
            self.copies, self.spatial = n, s  # how often a channel repeats, along what
        self.matrix = self.view(x)
        self.blocks = row_blocks(self.matrix, BLOCK_BYTES)  # views of the matrix's rows
        self.block_rows = max(1, len(self.blocks[0]))
        self._ones = {}

    def ones(self, n):
        """n ones, to sum n rows or columns with (gemv); made once per length."""
        if n not in self._ones:
            self._ones[n] = self.x.new_ones(n)
        return self._ones[n]

    def blocks_of(self, t):
        """t's rows in the blocks of ``blocks`` (t: the matrix's shape, or a column from
        ``spread``); a row from ``spread`` is the same for every block, and a matrix of one
        block is its own block (no split: few operations for small inputs)."""
        if len(self.blocks) == 1 or (t.shape[0] == 1 and not self.rows_per_channel):
            return [t] * len(self.blocks)
        return t.split(self.block_rows)

    def for_elementwise(self):
        """The matrix to compute y and dx on: columns per channel, whose constants form one
        row (1, C * S) broadcast down the rows, when that row is at most ROW_CONSTANTS numbers.
        torch's CPU kernels run such a broadcast vectorized, but not a column (N * C, 1)
        broadcast along rows next to a second one: y = x * a + b by addcmul on (N * C, S)
        took 2.3 times as long as on (N, C * S) (ResNet-50's stem shape, measured)."""
        if self.rows_per_channel and self.channels * self.spatial <= ROW_CONSTANTS:
            return ChannelMatrix(self.x, by_rows=False)
        return self

    def affine_plus(self, t, g, k, c):
        """t * g + x * k + c with per-channel g, k, c, block by block so that the second
        operation finds the first one's result in cache (t: the matrix's shape)."""
        dx = torch.empty_like(self.matrix)
        parts = zip(self.blocks_of(dx), self.blocks, self.blocks_of(t),
                    *(self.blocks_of(self.spread(v)) for v in (g, k, c)))
        for dx_rows, x_rows, t_rows, g_rows, k_rows, c_rows in parts:
            torch.addcmul(c_rows, x_rows, k_rows, out=dx_rows).addcmul_(t_rows, g_rows)
        return dx

    def view(self, t):
        """t (x's shape) as the matrix (a view when t has x's memory layout)."""
        if self.channels_last:
            return t.movedim(1, -1).reshape(-1, self.channels)
        if self.rows_per_channel:
            return t.reshape(self.copies * self.channels, self.spatial)
        return t.reshape(self.shape[0], -1)

    def unview(self, matrix):
        """The matrix -> x's shape (and x's memory layout)."""
        if self.channels_last:
            return matrix.reshape(self.shape[:1] + self.shape[2:] + self.shape[1:2]).movedim(-1, 1)
        return matrix.reshape(self.shape)

    def spread(self, v):
        """(C,) -> a column (N * C, 1) or a row (1, C * S) broadcasting against the matrix."""
        v = v.reshape(-1)
        if self.spatial == 1:
            return v.reshape(1, -1)
        if self.rows_per_channel:
            return v.repeat(self.copies).reshape(-1, 1)
        return v.repeat_interleave(self.spatial).reshape(1, -1)

    def sums(self, block):
        """Row sums (rows per channel) or column sums of a block: (rows,) or (C * S,)."""
        if self.rows_per_channel:
            return torch.mv(block, self.ones(block.shape[1]))
        return torch.mv(block.t(), self.ones(block.shape[0]))

    def channel_sums(self, sums):
        """The per-row (N * C,) or per-column (C * S,) sums -> (C,) per-channel sums."""
        if self.rows_per_channel:
            return sums.reshape(self.copies, self.channels).sum(0)
        return sums if self.spatial == 1 else sums.reshape(self.channels, self.spatial).sum(1)

    def join(self, parts):
        """Blocks' row sums -> the matrix's row sums (concatenated), or blocks' column sums
        -> the matrix's column sums (added)."""
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if self.rows_per_channel else torch.stack(parts).sum(0)

    def moments(self):
        """Per-channel mean and M2 = sum((x - mean)^2), two-pass (eq-bn-mean, eq-bn-var).
        x is read from memory once where the parts are few: each row's (rows per channel)
        or each block's column's own mean, then its M2 around it, while the block is in
        cache, and eq-sync-merge joins the parts of each channel. With columns and blocks of
        fewer than MERGE_ROWS rows the parts would be nearly as many numbers as x, and when
        x is one block the second pass finds it in cache: there, the channel's mean first,
        then M2 around it block by block. Returns (mean, M2), (C,)."""
        s, c = self.spatial, self.channels
        scratch = torch.empty_like(self.blocks[0])
        if len(self.blocks) == 1 or not (self.rows_per_channel or self.block_rows >= MERGE_ROWS):
            mean = self.channel_sums(self.sums(self.matrix)) / self.count
            m2s = [self.sums(squared_deviations(block, center, scratch[:len(block)]))
                   for block, center in zip(self.blocks, self.blocks_of(self.spread(mean)))]
            return mean, self.channel_sums(self.join(m2s))
        means, m2s, counts = [], [], []
        for block in self.blocks:  # the part's own mean: per row of the block, or per column
            count = s if self.rows_per_channel else len(block)
            center = self.sums(block) / count
            means.append(center)
            counts.append(count)
            if self.rows_per_channel:
                center = center.reshape(-1, 1)
            m2s.append(self.sums(squared_deviations(block, center, scratch[:len(block)])))
        if self.rows_per_channel:  # parts: the N rows of each channel, S numbers each
            means, m2s = (torch.cat(t).reshape(-1, c) for t in (means, m2s))
            counts = means.new_full((len(means), 1), s)
        else:  # parts: each block's S columns of each channel, len(block) numbers each
            means, m2s = (torch.stack(t).reshape(-1, c, s).transpose(1, 2).reshape(-1, c)
                          for t in (means, m2s))
            counts = means.new_tensor(counts).repeat_interleave(s).reshape(-1, 1)
        _, mean, m2 = merge_count_mean_m2(counts, means, m2s)
        return mean, m2

    def sums_with(self, dy, mu):
        """Per-channel sum(dy) and sum(dy * (x - mu)), one pass over x and dy (the product
        made block by block in cache, in one operation). dy: the matrix's shape."""
        scratch = torch.empty_like(self.blocks[0])
        parts_dy, parts_twice = [], []
        for dy_rows, x_rows, mu_rows in zip(self.blocks_of(dy), self.blocks,
                                            self.blocks_of(self.spread(mu))):
            parts_dy.append(self.sums(dy_rows))
            twice = twice_products_with_deviations(dy_rows, x_rows, mu_rows,
                                                   scratch[:len(dy_rows)])
            parts_twice.append(self.sums(twice))
        sum_dy, twice_sum = (self.channel_sums(self.join(p)) for p in (parts_dy, parts_twice))
        return sum_dy, twice_sum / 2  # halving is exact


def squared_deviations(x, center, out):
    """(x - center)^2 elementwise, in one pass over x (torch.sub, then square_, are two):
    torch's kernel of mse_loss with reduction "none" computes exactly that, in ``out``."""
    return torch._C._nn.mse_loss(x, center, 0, out=out)  # 0: reduction "none"


def twice_products_with_deviations(dy, x, center, out):
    """2 * dy * (x - center) elementwise, in one pass: the kernel of mse_loss's backward
    (reduction "none"), in ``out``. The factor 2 is exact in binary floating point."""
    return torch.ops.aten.mse_loss_backward.grad_input(dy, x, center, 0, grad_input=out)


def per_channel_forward(x, weight, bias, affine_shape, eps, stats):
    """y = weight * (x - mu) * rstd + bias for BatchNorm (eq-bn-mean, eq-bn-var, eq-bn-xhat,
    eq-bn-affine), stats=None: batch statistics; stats=(mu, var): given (eval).
    Returns (y, mu, var, rstd), the statistics in ``affine_shape`` ((1, C, 1, ...))."""
    cm = ChannelMatrix(x)
    if stats is not None:
        mu, var = (s.to(x.dtype).reshape(-1) for s in stats)
    else:
        mu, m2 = cm.moments()
        var = m2 / cm.count
    rstd = torch.rsqrt(var + eps)
    scale = rstd if weight is None else weight.to(x.dtype).reshape(-1) * rstd
    shift = -mu * scale if bias is None else torch.addcmul(bias.to(x.dtype).reshape(-1), mu,
                                                           scale, value=-1)
    out = cm.for_elementwise()
    y = torch.addcmul(out.spread(shift), out.matrix, out.spread(scale))
    return (out.unview(y),) + tuple(s.reshape(affine_shape) for s in (mu, var, rstd))


def per_channel_backward(dy, x, mu, rstd, weight, needs, batch_stats, centered):
    """dx (eq-bn-dx, or eq-bn-dx-eval when the statistics were given), dweight
    (eq-bn-dgamma) and dbias (eq-bn-dbeta) for BatchNorm; ``needs``: which of the three.

    With weight per channel, sum(dx_hat) = weight * sum(dy) and sum(dx_hat * x_hat) =
    weight * sum(dy * x_hat): eq-bn-dx's two sums are dbias and dweight, and eq-bn-dx is

        dx = g * (dy - mean(dy)) - g * rstd^2 * mean(dy * (x - mu)) * (x - mu),  g = weight * rstd
           = dy * g + x * k + c,  k = -g * rstd^2 * mean(dy * (x - mu)),  c = -g * mean(dy) - mu * k

    (centered=False drops mean(dy), eq-rms-dx). Returns (dx, dweight, dbias) in the compute
    dtype, None where not needed."""
    need_dx, need_dweight, need_dbias = needs
    cm = ChannelMatrix(x)
    dy_m, mu, rstd = cm.view(dy), mu.reshape(-1), rstd.reshape(-1)
    sum_dy = sum_dy_x_hat = None
    if need_dweight or need_dbias or (need_dx and batch_stats):
        sum_dy, sum_dy_x_mu = cm.sums_with(dy_m, mu)
        sum_dy_x_hat = sum_dy_x_mu * rstd
    dx, out = None, cm.for_elementwise()
    if need_dx:
        g = rstd if weight is None else weight.to(rstd.dtype).reshape(-1) * rstd
        if batch_stats:
            k = g * rstd * sum_dy_x_hat * (-1 / cm.count)  # the path through var
            c = -mu * k  # mu folded in
            if centered:  # the path through mu
                c = torch.addcmul(c, g, sum_dy, value=-1 / cm.count)
            dx = out.affine_plus(out.view(dy), g, k, c)
        else:  # eq-bn-dx-eval: the statistics are constants
            dx = out.view(dy) * out.spread(g)
        dx = out.unview(dx)
    return dx, sum_dy_x_hat if need_dweight else None, sum_dy if need_dbias else None
