"""Comparison tolerances, in one place, justified by dtype and reduction length.

A normalization reduces ``m`` numbers into a mean and a variance and then divides by the
standard deviation. Summation error grows at worst like ``m * u`` (``u`` the unit roundoff)
and, for the pairwise/cascade sums NumPy and torch use, more like ``log2(m) * u``; the
backward pass multiplies a few such sums together. We therefore allow

    rtol = atol = c * u * max(1, log2(m))

with ``c`` a safety factor that absorbs the handful of chained operations (centering,
squaring, the square root and the three-term backward formula) and the size of the values
involved (inputs of order 10, gradients scaled by ``gamma / sigma``).

float64 (u = 1.1e-16): about 1e-13 for m = 64, far below any real mistake (the smallest bug
the tests look for, ``eps`` outside the square root, changes outputs by about 1e-6).
float32 (u = 6e-8): about 5e-5 for m = 64, 1e-4 for m = 4096.
float16 / bfloat16 are not used for comparisons in this course yet.

These assume inputs whose mean is not far larger than their spread (the course's tests use
``5 * randn + 12``). Centring an input with |mean| >> std loses about log10(|mean| / std)
digits in ANY implementation; compare such inputs with the tolerance scaled by
``1 + |mean| / std``.
"""

import math

import numpy as np

_UNIT_ROUNDOFF = {
    np.dtype(np.float64): np.finfo(np.float64).eps / 2,
    np.dtype(np.float32): np.finfo(np.float32).eps / 2,
}
_SAFETY = 100.0


def tolerance(dtype, reduction_len=1):
    """Return ``dict(rtol=..., atol=...)`` for comparing results of the given dtype.

    ``dtype``: a NumPy dtype, a NumPy scalar type, a torch dtype or its name ("float32").
    ``reduction_len``: how many numbers each statistic reduces (``m`` in the book).
    """
    name = str(dtype).replace("torch.", "")  # torch.float32 -> "float32"
    try:
        key = np.dtype(dtype if not name.startswith("float") else name)
    except TypeError:
        key = None
    if key not in _UNIT_ROUNDOFF:
        raise ValueError(f"tolerance: expected float32 or float64, got {dtype}")
    tol = _SAFETY * _UNIT_ROUNDOFF[key] * max(1.0, math.log2(max(reduction_len, 1)))
    return dict(rtol=tol, atol=tol)
