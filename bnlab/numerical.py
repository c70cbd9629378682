"""Central finite differences: the oracle that assumes nothing about the derivation."""

import numpy as np


def numerical_gradient(f, x, dy, h=1e-5):
    """Gradient of L = sum(f(x) * dy) with respect to ``x`` by central differences.

    f: a function of one float64 array returning an array of dy's shape. ``x`` is perturbed
    in place one element at a time and restored. Error is O(h^2) plus roundoff
    O(eps_machine / h): h = 1e-5 in float64 gives about 1e-9 relative.
    """
    if x.dtype != np.float64:
        raise ValueError(f"numerical_gradient: expected a float64 x; got {x.dtype}.")
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + h
        loss_plus = np.sum(f(x) * dy)
        x[i] = saved - h
        loss_minus = np.sum(f(x) * dy)
        x[i] = saved
        grad[i] = (loss_plus - loss_minus) / (2 * h)
    return grad
