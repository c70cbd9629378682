"""Folding an evaluation-mode BatchNorm into the layer before it, in NumPy.

In evaluation mode BatchNorm is a fixed affine map per channel (eq-bn-eval),
y = a * z + b with a = gamma / sqrt(running_var + eps) and b = beta - a * running_mean. After a
linear layer or a convolution z = W * x + c, whose output channel o is computed by the filter
W[o] alone, the two compose into one layer of the same kind (eq-bn-fold)::

    W'[o] = a[o] * W[o]                (each output channel's filter rescaled)
    c'[o] = a[o] * (c[o] - running_mean[o]) + beta[o]

Shapes: weight (C_out, ...) with its OUTPUT channels on axis 0: a Linear's (C_out, C_in), a
Conv's (C_out, C_in / groups, *kernel) whatever its groups, stride or padding (a transposed
convolution stores (C_in, C_out / groups, *kernel): transpose it first); bias (C_out,) or None
(no bias: c = 0); gamma, beta, running_mean, running_var (C_out,). No torch here.
"""

import numpy as np


def fold_batch_norm(weight, bias, gamma, beta, running_mean, running_var, eps=1e-5):
    """The weight and bias of the one layer equal to ``BatchNorm(layer(x))`` in evaluation
    mode (eq-bn-eval folded into the layer: eq-bn-fold). gamma and beta may be None (a
    BatchNorm without affine parameters: gamma = 1, beta = 0); bias may be None (a layer
    without bias). Returns ``(weight, bias)``: weight of ``weight``'s shape, bias (C_out,)
    always an array, both in ``weight``'s dtype (computed in float64). The inputs are not
    modified.
    """
    where = "fold_batch_norm"
    weight = np.asarray(weight)
    if weight.ndim < 2 or weight.dtype.kind != "f":
        raise ValueError(f"{where}: expected a floating weight of rank 2 or more with the output "
                         "channels on axis 0, a Linear's (C_out, C_in) or a Conv's (C_out, C_in / "
                         f"groups, *kernel); got shape {weight.shape}, dtype {weight.dtype}.")
    c_out = weight.shape[0]
    per_channel = dict(bias=bias, gamma=gamma, beta=beta, running_mean=running_mean,
                       running_var=running_var)
    for name, v in per_channel.items():
        if v is None and name in ("bias", "gamma", "beta"):
            continue
        if v is None or np.shape(v) != (c_out,):
            raise ValueError(f"{where}: expected {name} of shape ({c_out},), one value per output "
                             f"channel (C_out = weight.shape[0] = {c_out}); got "
                             f"{'None' if v is None else np.shape(v)}. BatchNorm must follow the "
                             "layer whose OUTPUT channels it normalizes.")
    if (np.asarray(running_var) < 0).any():
        raise ValueError(f"{where}: expected running_var >= 0 (a variance); got a negative value.")
    if not eps >= 0:
        raise ValueError(f"{where}: expected eps >= 0, the BatchNorm's eps (1e-5 by default); got {eps}.")

    def f64(v, default):
        return np.full(c_out, default) if v is None else np.asarray(v, dtype=np.float64)

    a = f64(gamma, 1.0) / np.sqrt(f64(running_var, 0.0) + eps)  # (C_out,): eq-bn-eval's scale
    column = (c_out,) + (1,) * (weight.ndim - 1)  # (C_out,) -> (C_out, 1, ..., 1), along axis 0
    folded_weight = weight.astype(np.float64) * a.reshape(column)
    folded_bias = a * (f64(bias, 0.0) - f64(running_mean, 0.0)) + f64(beta, 0.0)
    return folded_weight.astype(weight.dtype), folded_bias.astype(weight.dtype)
