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
    """Rank and dtype of the input ``x`` of shape (N, C, *spatial)."""
    if not (min_rank <= len(shape) <= max_rank):
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


def check_batch_norm(where, shape, *, training, has_running_mean, has_running_var, eps):
    """Conditions that depend on the mode: batch size, running statistics, eps."""
    if has_running_mean != has_running_var:
        given, missing = (("running_mean", "running_var") if has_running_mean
                          else ("running_var", "running_mean"))
        raise ValueError(
            f"{where}: got {given} but no {missing}; pass both running statistics or neither."
        )
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
