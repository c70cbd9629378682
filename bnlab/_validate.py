"""Checks at the public boundary, shared by both backends.

They look only at shapes, dtype names and flags, so ``bnlab.numpy`` and ``bnlab.torch``
raise the same ``ValueError`` with the same words without either importing the other.
Every message says what was expected, what came, and how to fix it.
"""

from math import prod


def channel_reduction_axes(ndim):
    """Axes BatchNorm reduces over: every axis except the channel axis 1 (see eq-bn-mean)."""
    return (0,) + tuple(range(2, ndim))


def check_input(where, shape, dtype_name, is_floating, min_rank=2, max_rank=5):
    """Rank and dtype of the input ``x`` of shape (N, C, *spatial); max_rank=None: no limit."""
    if max_rank is None and len(shape) < min_rank:
        raise ValueError(
            f"{where}: expected an input of rank at least {min_rank}, (N, C, *spatial) with "
            f"channels on axis 1; got shape {tuple(shape)} (rank {len(shape)}). Add a batch "
            "axis, e.g. x[None], for a single sample."
        )
    if max_rank is not None and not (min_rank <= len(shape) <= max_rank):
        raise ValueError(
            f"{where}: expected an input of rank {min_rank} to {max_rank}, (N, C) or "
            f"(N, C, *spatial) with channels on axis 1; got shape {tuple(shape)} "
            f"(rank {len(shape)}). Reshape so that the channel axis is axis 1."
        )
    if not is_floating:
        raise ValueError(
            f"{where}: expected a floating-point input (float32 or float64); got dtype "
            f"{dtype_name}. Convert it first, e.g. x.astype(np.float32) or x.float()."
        )


def check_per_channel(where, name, shape, num_channels):
    """A per-channel vector (gamma, beta, running_mean, running_var) must have shape (C,)."""
    if tuple(shape) != (num_channels,):
        raise ValueError(
            f"{where}: expected {name} of shape ({num_channels},), one value per channel "
            f"(C = x.shape[1] = {num_channels}); got shape {tuple(shape)}."
        )


def check_running_pair(where, has_running_mean, has_running_var):
    """running_mean and running_var come together or not at all."""
    if has_running_mean != has_running_var:
        given, missing = (("running_mean", "running_var") if has_running_mean
                          else ("running_var", "running_mean"))
        raise ValueError(
            f"{where}: got {given} but no {missing}; pass both running statistics or neither."
        )


def check_batch_norm(where, shape, *, training, has_running_mean, has_running_var, eps):
    """Conditions that depend on the mode: batch size, running statistics, eps."""
    check_running_pair(where, has_running_mean, has_running_var)
    if training:
        values_per_channel = shape[0] * prod(shape[2:])
        if values_per_channel == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input of shape "
                f"{tuple(shape)} (N times the spatial size is 1, so the variance is 0). "
                "Use a batch of at least 2, or evaluate with training=False / model.eval()."
            )
        if not eps > 0:
            raise ValueError(
                f"{where}: expected eps > 0 in training (it keeps 1/sqrt(var + eps) finite "
                f"when a channel is constant); got eps={eps}. The usual value is 1e-5."
            )
    elif not has_running_mean:
        raise ValueError(
            f"{where}: evaluation (training=False) normalizes with the running statistics, "
            "but got running_mean=None and running_var=None. Pass them, or use "
            "training=True to normalize with the batch's own statistics."
        )


def check_same_shape(where, name, shape, expected_shape):
    """Upstream gradients must match the forward output exactly (no broadcasting)."""
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{where}: expected {name} of shape {tuple(expected_shape)} (the shape of the "
            f"forward output); got shape {tuple(shape)}."
        )


# --- the normalization family: LayerNorm, GroupNorm, InstanceNorm, RMSNorm, Batch Renorm,
# --- Ghost BatchNorm. Conditions are torch's, so the drop-in modules fail where torch's do.

def as_shape_tuple(where, normalized_shape):
    """normalized_shape as a tuple of ints; an int n means (n,), as in torch.nn.LayerNorm."""
    if isinstance(normalized_shape, int) or hasattr(normalized_shape, "__index__"):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(int(n) for n in normalized_shape)
    except TypeError:
        raise ValueError(
            f"{where}: expected normalized_shape to be an int or a sequence of ints, the "
            f"trailing dimensions to normalize; got {normalized_shape!r}."
        ) from None
    return shape


def check_normalized_shape(where, shape, normalized_shape):
    """normalized_shape is non-empty and equals the input's trailing dimensions."""
    if len(normalized_shape) == 0:
        raise ValueError(
            f"{where}: expected normalized_shape with at least one dimension; got (). Pass "
            "the trailing dimensions to normalize, e.g. normalized_shape=x.shape[-1:]."
        )
    k = len(normalized_shape)
    if len(shape) < k or tuple(shape[len(shape) - k:]) != tuple(normalized_shape):
        raise ValueError(
            f"{where}: expected an input whose last {k} dimension(s) equal normalized_shape="
            f"{tuple(normalized_shape)}, i.e. of shape (*, {', '.join(map(str, normalized_shape))})"
            f"; got shape {tuple(shape)}. Pass normalized_shape=x.shape[-{k}:], or move the "
            "axes to normalize to the end."
        )


def check_param_shape(where, name, shape, expected_shape, meaning):
    """An elementwise affine parameter (LayerNorm's gamma has normalized_shape)."""
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{where}: expected {name} of shape {tuple(expected_shape)} ({meaning}); got "
            f"shape {tuple(shape)}."
        )


def check_num_groups(where, num_channels, num_groups):
    """GroupNorm: num_groups is a positive divisor of C."""
    if not isinstance(num_groups, int) or num_groups < 1 or num_channels % num_groups != 0:
        divisors = [g for g in range(1, num_channels + 1) if num_channels % g == 0]
        raise ValueError(
            f"{where}: expected num_groups to divide the number of channels C = x.shape[1] = "
            f"{num_channels}; got num_groups={num_groups!r}. Choose one of {divisors}."
        )


def check_group_norm_size(where, shape, num_groups):
    """torch's condition for group_norm: N * C / num_groups * prod(spatial) > 1."""
    if shape[0] * (shape[1] // num_groups) * prod(shape[2:]) == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input of shape "
            f"{tuple(shape)} with num_groups={num_groups} (each group holds one number, so "
            "its variance is 0). Use a batch of at least 2 or fewer groups."
        )


def check_instance_norm(where, shape, *, use_input_stats, has_running_mean,
                        has_running_var):
    """InstanceNorm: statistics per (sample, channel) need more than one spatial element."""
    check_running_pair(where, has_running_mean, has_running_var)
    if use_input_stats and prod(shape[2:]) == 1:
        raise ValueError(
            "Expected more than 1 spatial element when training, got input of shape "
            f"{tuple(shape)} (each instance's statistics come from its spatial positions "
            "alone, so the variance is 0). Use an input with a spatial size above 1, or "
            "use_input_stats=False with running statistics."
        )
    if not use_input_stats and not has_running_mean:
        raise ValueError(
            f"{where}: use_input_stats=False normalizes with the running statistics, but got "
            "running_mean=None and running_var=None. Pass them, or use use_input_stats=True."
        )


def check_renorm(where, *, rmax, dmax, has_running_mean, has_running_var):
    """Batch Renorm: clipping limits and the running statistics it corrects towards."""
    if not rmax >= 1:
        raise ValueError(
            f"{where}: expected rmax >= 1 (r is clipped to [1/rmax, rmax]); got rmax={rmax}. "
            "rmax=1 means r = 1, plain BatchNorm's scale."
        )
    if not dmax >= 0:
        raise ValueError(
            f"{where}: expected dmax >= 0 (d is clipped to [-dmax, dmax]); got dmax={dmax}. "
            "dmax=0 means d = 0, plain BatchNorm's shift."
        )
    check_running_pair(where, has_running_mean, has_running_var)
    if not has_running_mean:
        raise ValueError(
            f"{where}: Batch Renormalization corrects the batch statistics towards the running "
            "ones, but got running_mean=None and running_var=None. Pass them (initially zeros "
            "and ones), or use batch norm for plain BatchNorm."
        )


def check_virtual_batch(where, shape, virtual_batch_size, *, training):
    """Ghost BatchNorm: virtual batches of at least 2 samples that tile the batch exactly."""
    if not isinstance(virtual_batch_size, int) or virtual_batch_size < 2:
        raise ValueError(
            f"{where}: expected an int virtual_batch_size >= 2 (samples per virtual batch); "
            f"got virtual_batch_size={virtual_batch_size!r}."
        )
    if training and shape[0] % virtual_batch_size != 0:
        raise ValueError(
            f"{where}: expected a batch size N divisible by virtual_batch_size="
            f"{virtual_batch_size} (every virtual batch has the same size); got N = "
            f"{shape[0]} from input shape {tuple(shape)}. Use a batch size that is a "
            "multiple of it, e.g. DataLoader(..., drop_last=True), or another "
            "virtual_batch_size."
        )
