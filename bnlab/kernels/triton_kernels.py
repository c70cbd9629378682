"""The Triton kernels of BatchNorm: statistics, normalize + affine, and the backward pass.

Every kernel sees its tensor, of shape (N, C, *spatial), as a table of m = N * S rows (one row
per sample and spatial position, S = prod(spatial)) and C channel columns. Element
(row r, channel c), with r = n * S + s, sits at

    n * stride_n + c * stride_c + s * stride_s

so the same kernels read NCHW-contiguous tensors (stride_s = 1) and channels-last ones
(stride_c = 1) in place. A program works on tiles of BLOCK_R rows by BLOCK_C channels (the
launcher picks the tile's shape from the memory format) and loads and stores through masks.
The addressing is written out in each kernel rather than in a helper @triton.jit function:
Triton's interpreter (TRITON_INTERPRET=1, how the tests run on a CPU) pays milliseconds per
helper call.

Splitting a row r into (n, s) takes an integer division. Compiled for a GPU, a 64-bit one is
a long software routine (several times a 32-bit one), so each tile divides its first row
r0 = n0 * S + s0 in 64 bits, once, and then s0 + i (i < BLOCK_R, so below S + BLOCK_R) in
32 bits: per thread, the PTX of each kernel has one 64-bit division where it had 16, one per
element the thread handles.

Reductions over rows (the statistics of eq-bn-mean and eq-bn-var, the sums of eq-bn-dgamma
and eq-bn-dbeta) run in parallel: the m rows of a channel are cut into chunks of CHUNK rows,
the grid is (chunk, channel block), and each program writes one partial result per channel
to a (num_chunks, C) table; a second, small kernel per block of channels merges the partials.

Traffic is counted below in b = bytes per element of x (4 for float32, 2 for float16 and
bfloat16); a full pass over x is m * C * b bytes. The partials, (C,) vectors and parameters
are O(num_chunks * C) numbers, negligible next to it.

ACC is the accumulation dtype: float32 for float16/bfloat16/float32 inputs, float64 for
float64 inputs. Scalars that reach the running statistics (momentum, eps) are declared float64
so that float64 buffers see them unrounded.
"""

import triton
import triton.language as tl


# --- training forward: statistics (eq-bn-mean, eq-bn-var) ---------------------------------

@triton.jit
def chunk_moments_kernel(x_ptr, part_mean_ptr, part_m2_ptr, M, C, S, CHUNK,
                         stride_n, stride_c, stride_s,
                         ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(count, mean, M2) of one chunk of rows for a block of channels, M2 = sum((x - mean)^2).

    Grid (num_chunks, cdiv(C, BLOCK_C)). Lane i of the tile sees rows row_start + i,
    row_start + i + BLOCK_R, ... and keeps its own Welford (count, mean, M2), updated
    elementwise; at the end the BLOCK_R lanes are merged with Chan's formula for several
    groups, M2 = sum(M2_lane) + sum(count_lane * (mean_lane - mean)^2). Neither step forms
    E[x^2] - E[x]^2, so nothing cancels when |mean| >> std. Both work on x - shift, shift
    the channel's first value (row 0), which takes |mean| out of the rounding: part_mean is
    the chunk's mean of x - shift. Writes part_mean[chunk, c] and part_m2[chunk, c]; the
    count of chunk k is min(CHUNK, M - k * CHUNK) and is not stored.
    Reads x once (m * C * b bytes), writes 2 * num_chunks * C accumulator numbers.
    """
    chunk = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    c_offsets = channels.to(tl.int64)[None, :] * stride_c  # (1, BLOCK_C)
    row_start = chunk * CHUNK
    row_end = tl.minimum(row_start + CHUNK, M)
    shift = tl.load(x_ptr + c_offsets, mask=c_mask[None, :], other=0.0).to(ACC)  # row 0

    count = tl.zeros([BLOCK_R], dtype=ACC)  # per lane
    mean = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
    for r0 in range(row_start, row_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        valid = rows < row_end
        mask = valid[:, None] & c_mask[None, :]
        n0 = r0 // S  # rows -> (n, s): 64 bits once per tile, then 32 (see the top)
        t = (r0 - n0 * S).to(tl.int32) + tl.arange(0, BLOCK_R)
        dn = t // S
        n, s = n0 + dn, (t - dn * S).to(tl.int64)  # row r = n * S + s
        offsets = (n * stride_n + s * stride_s)[:, None] + c_offsets  # (BLOCK_R, BLOCK_C)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC) - shift
        # Welford, per lane: mean += delta / count, M2 += delta * (x - new mean)
        count += valid.to(ACC)
        delta = tl.where(mask, x - mean, 0.0)
        mean += delta * (1.0 / tl.maximum(count, 1.0))[:, None]
        m2 += delta * (x - mean)

    # Chan et al., merging the BLOCK_R lanes (a lane that saw no row has count 0)
    chunk_mean = tl.sum(mean * count[:, None], axis=0) / (row_end - row_start).to(ACC)
    deviation = mean - chunk_mean[None, :]
    chunk_m2 = tl.sum(m2 + count[:, None] * deviation * deviation, axis=0)
    part = chunk * C + channels
    tl.store(part_mean_ptr + part, chunk_mean, mask=c_mask)
    tl.store(part_m2_ptr + part, chunk_m2, mask=c_mask)


@triton.jit
def merge_moments_kernel(part_mean_ptr, part_m2_ptr, x_ptr, mean_ptr, rstd_ptr,
                         running_mean_ptr, running_var_ptr, M, C, CHUNK, NUM_CHUNKS, stride_c,
                         momentum: tl.float64, eps: tl.float64,
                         UPDATE_RUNNING: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """Merge the chunks' (count, mean, M2) per channel with Chan's formula; eq-bn-mean
    (the shift, x's row 0, added back), eq-bn-var (biased: var = M2 / m),
    rstd = 1 / sqrt(var + eps), and, when UPDATE_RUNNING,
    the in-place running-statistic update with the UNBIASED variance M2 / (m - 1)
    (eq-bn-running-mean, eq-bn-running-var):
    running = (1 - momentum) * running + momentum * batch statistic.

    Grid (cdiv(C, BLOCK_C),). Reads 2 * num_chunks * C partials and x's row 0 (C values),
    and the running statistics; writes mean and rstd, (C,) in ACC, and the running
    statistics in their own dtype. Nothing of size m.
    """
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for k in range(0, NUM_CHUNKS):
        row_start = tl.cast(k, tl.int64) * CHUNK
        n_a = row_start.to(ACC)  # every chunk before k is full
        n_b = tl.minimum(CHUNK, M - row_start).to(ACC)
        part = tl.cast(k, tl.int64) * C + channels
        mean_b = tl.load(part_mean_ptr + part, mask=c_mask, other=0.0)
        m2_b = tl.load(part_m2_ptr + part, mask=c_mask, other=0.0)
        n_ab = n_a + n_b
        delta = mean_b - mean
        mean += delta * (n_b / n_ab)
        m2 += m2_b + delta * delta * (n_a * n_b / n_ab)

    mean += tl.load(x_ptr + channels.to(tl.int64) * stride_c, mask=c_mask, other=0.0).to(ACC)
    var = m2 / M  # eq-bn-var: biased
    rstd = (1.0 / tl.sqrt(var + eps)).to(ACC)
    tl.store(mean_ptr + channels, mean, mask=c_mask)
    tl.store(rstd_ptr + channels, rstd, mask=c_mask)
    if UPDATE_RUNNING:
        unbiased_var = m2 / (M - 1)  # eq-bn-running-var: m / (m - 1) * var
        running_mean = tl.load(running_mean_ptr + channels, mask=c_mask, other=0.0)
        running_var = tl.load(running_var_ptr + channels, mask=c_mask, other=0.0)
        new_mean = (1.0 - momentum) * running_mean.to(ACC) + momentum * mean
        new_var = (1.0 - momentum) * running_var.to(ACC) + momentum * unbiased_var
        tl.store(running_mean_ptr + channels,
                 new_mean.to(running_mean_ptr.dtype.element_ty), mask=c_mask)
        tl.store(running_var_ptr + channels,
                 new_var.to(running_var_ptr.dtype.element_ty), mask=c_mask)


# --- forward, training and eval: normalize + affine (eq-bn-xhat, eq-bn-affine, eq-bn-eval) --

@triton.jit
def normalize_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, M, C, S,
                     x_stride_n, x_stride_c, x_stride_s, y_stride_n, y_stride_c, y_stride_s,
                     HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = (x - mean) * scale + beta with scale = gamma * rstd, per channel.

    Training: mean and rstd of the batch (eq-bn-xhat then eq-bn-affine). Eval: mean and rstd
    from the running statistics, the same per-channel affine map as eq-bn-eval's
    y = x * scale + shift with shift = beta - mean * scale, written so that x - mean is
    formed first (fewer digits lost when |mean| >> std).
    Grid (cdiv(m, BLOCK_R), cdiv(C, BLOCK_C)). Reads x once and writes y once (in y's dtype):
    m * C * b bytes each way.
    """
    r0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = r0 + tl.arange(0, BLOCK_R)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    mask = (rows < M)[:, None] & c_mask[None, :]
    n0 = r0 // S  # rows -> (n, s): 64 bits once per tile, then 32 (see the top)
    t = (r0 - n0 * S).to(tl.int32) + tl.arange(0, BLOCK_R)
    dn = t // S
    n, s = n0 + dn, (t - dn * S).to(tl.int64)  # row r = n * S + s
    c64 = channels.to(tl.int64)[None, :]
    x_offsets = (n * x_stride_n + s * x_stride_s)[:, None] + c64 * x_stride_c
    y_offsets = (n * y_stride_n + s * y_stride_s)[:, None] + c64 * y_stride_c
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(ACC)  # (BLOCK_R, BLOCK_C)

    mean = tl.load(mean_ptr + channels, mask=c_mask, other=0.0).to(ACC)  # (BLOCK_C,)
    scale = tl.load(rstd_ptr + channels, mask=c_mask, other=0.0).to(ACC)
    if HAS_WEIGHT:
        scale *= tl.load(weight_ptr + channels, mask=c_mask, other=0.0).to(ACC)
    y = (x - mean[None, :]) * scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + channels, mask=c_mask, other=0.0).to(ACC)[None, :]
    tl.store(y_ptr + y_offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


# --- backward: sums (eq-bn-dgamma, eq-bn-dbeta), then dx (eq-bn-dx, eq-bn-dx-eval) --------

@triton.jit
def chunk_grad_sums_kernel(dy_ptr, x_ptr, mean_ptr, rstd_ptr, part_ptr, M, C, S, CHUNK,
                           dy_stride_n, dy_stride_c, dy_stride_s,
                           x_stride_n, x_stride_c, x_stride_s,
                           ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per chunk and channel: sum(dy) and sum(dy * x_hat), x_hat = (x - mean) * rstd.

    Grid (num_chunks, cdiv(C, BLOCK_C)). part is (num_chunks, 2 * C): columns 0..C-1 get
    sum(dy), columns C..2C-1 get sum(dy * x_hat). Reads dy and x once each (2 * m * C * b
    bytes), writes 2 * num_chunks * C accumulator numbers.
    """
    chunk = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    c64 = channels.to(tl.int64)[None, :]
    row_start = chunk * CHUNK
    row_end = tl.minimum(row_start + CHUNK, M)
    mean = tl.load(mean_ptr + channels, mask=c_mask, other=0.0).to(ACC)  # (BLOCK_C,)
    rstd = tl.load(rstd_ptr + channels, mask=c_mask, other=0.0).to(ACC)

    sum_dy = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)  # per lane, summed at the end
    sum_dy_x_hat = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
    for r0 in range(row_start, row_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < row_end)[:, None] & c_mask[None, :]
        n0 = r0 // S  # rows -> (n, s): 64 bits once per tile, then 32 (see the top)
        t = (r0 - n0 * S).to(tl.int32) + tl.arange(0, BLOCK_R)
        dn = t // S
        n, s = n0 + dn, (t - dn * S).to(tl.int64)  # row r = n * S + s
        dy_offsets = (n * dy_stride_n + s * dy_stride_s)[:, None] + c64 * dy_stride_c
        x_offsets = (n * x_stride_n + s * x_stride_s)[:, None] + c64 * x_stride_c
        dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(ACC)  # (BLOCK_R, BLOCK_C)
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(ACC)
        x_hat = (x - mean[None, :]) * rstd[None, :]  # masked rows: dy = 0, no contribution
        sum_dy += dy
        sum_dy_x_hat += dy * x_hat

    part = chunk * 2 * C + channels
    tl.store(part_ptr + part, tl.sum(sum_dy, axis=0), mask=c_mask)
    tl.store(part_ptr + part + C, tl.sum(sum_dy_x_hat, axis=0), mask=c_mask)


@triton.jit
def sum_chunks_kernel(part_ptr, out_ptr, NUM_CHUNKS, WIDTH, BLOCK: tl.constexpr):
    """out[j] = sum over k of part[k, j]: part (NUM_CHUNKS, WIDTH) -> out (WIDTH,).

    Grid (cdiv(WIDTH, BLOCK),). Reads the partials once, writes WIDTH numbers.
    """
    columns = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = columns < WIDTH
    total = tl.load(part_ptr + columns, mask=mask, other=0.0)
    for k in range(1, NUM_CHUNKS):
        row = tl.cast(k, tl.int64) * WIDTH
        total += tl.load(part_ptr + row + columns, mask=mask, other=0.0)
    tl.store(out_ptr + columns, total, mask=mask)


@triton.jit
def grad_input_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, weight_ptr, sums_ptr,
                      M, C, S, dy_stride_n, dy_stride_c, dy_stride_s,
                      x_stride_n, x_stride_c, x_stride_s, dx_stride_n, dx_stride_c, dx_stride_s,
                      HAS_WEIGHT: tl.constexpr, BATCH_STATS: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx, elementwise once the per-channel sums are known.

    BATCH_STATS (training), eq-bn-dx with dx_hat = dy * gamma:
        dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
           = gamma * rstd * (dy - sum(dy) / m - x_hat * sum(dy * x_hat) / m),
    the sums read from sums (2 * C,) as chunk_grad_sums_kernel laid them out. Eval: the
    statistics are constants, dx = dy * gamma * rstd (eq-bn-dx-eval), and x is not read.
    Grid (cdiv(m, BLOCK_R), cdiv(C, BLOCK_C)). Reads dy, and x in training (m * C * b bytes
    each), writes dx (m * C * b bytes).
    """
    r0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = r0 + tl.arange(0, BLOCK_R)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    mask = (rows < M)[:, None] & c_mask[None, :]
    n0 = r0 // S  # rows -> (n, s): 64 bits once per tile, then 32 (see the top)
    t = (r0 - n0 * S).to(tl.int32) + tl.arange(0, BLOCK_R)
    dn = t // S
    n, s = n0 + dn, (t - dn * S).to(tl.int64)  # row r = n * S + s
    c64 = channels.to(tl.int64)[None, :]
    dy_offsets = (n * dy_stride_n + s * dy_stride_s)[:, None] + c64 * dy_stride_c
    dx_offsets = (n * dx_stride_n + s * dx_stride_s)[:, None] + c64 * dx_stride_c
    dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(ACC)  # (BLOCK_R, BLOCK_C)

    rstd = tl.load(rstd_ptr + channels, mask=c_mask, other=0.0).to(ACC)  # (BLOCK_C,)
    scale = rstd
    if HAS_WEIGHT:
        scale = rstd * tl.load(weight_ptr + channels, mask=c_mask, other=0.0).to(ACC)
    if BATCH_STATS:
        x_offsets = (n * x_stride_n + s * x_stride_s)[:, None] + c64 * x_stride_c
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(ACC)
        mean = tl.load(mean_ptr + channels, mask=c_mask, other=0.0).to(ACC)
        mean_dy = tl.load(sums_ptr + channels, mask=c_mask, other=0.0).to(ACC) / M
        mean_dy_x_hat = tl.load(sums_ptr + C + channels, mask=c_mask, other=0.0).to(ACC) / M
        x_hat = (x - mean[None, :]) * rstd[None, :]
        dx = scale[None, :] * (dy - mean_dy[None, :] - x_hat * mean_dy_x_hat[None, :])
    else:
        dx = dy * scale[None, :]
    tl.store(dx_ptr + dx_offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
