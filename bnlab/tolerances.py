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
float16 (u = 2^-11 = 4.9e-4) and bfloat16 (u = 2^-8 = 3.9e-3) inputs are normalized with
float32 statistics and float32 arithmetic (as torch and bnlab.kernels do), and only the
outputs (y, dx) are rounded to the half type. Compared with a float64 reference computed
on the same half-rounded inputs, each output is off by its own rounding (at most u relative)
plus the float32 work (float32's tolerance above); compared with another half-precision
implementation, by two such roundings. We therefore allow

    rtol = atol = 4 * u_half + (float32's tolerance for the same m)

(4 = two roundings, doubled for the handful of float32 operations before them): 2.0e-3
(float16) and 1.6e-2 (bfloat16) for m = 64. That still catches the mistakes that matter
in half precision: statistics accumulated in the half type (an error growing like m * u)
or a backward pass missing a term (dx off by order 1 with a random upstream gradient).

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
_HALF_UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}  # outputs only
_HALF_ROUNDINGS = 4.0
_SAFETY = 100.0


def tolerance(dtype, reduction_len=1):
    """Return ``dict(rtol=..., atol=...)`` for comparing results of the given dtype.

    ``dtype``: a NumPy dtype, a NumPy scalar type, a torch dtype or its name ("float32");
    float16 and bfloat16 (torch.half, torch.bfloat16, "float16", np.float16) get the
    half-precision rule above.
    ``reduction_len``: how many numbers each statistic reduces (``m`` in the book).
    """
    name = str(dtype).replace("torch.", "")  # torch.float32 -> "float32"
    try:
        key = np.dtype(dtype if not name.startswith("float") else name)
    except TypeError:  # e.g. "bfloat16", which NumPy does not know
        key = None
    half = name if key is None else {"half": "float16"}.get(name, key.name)
    if half in _HALF_UNIT_ROUNDOFF:
        tol = (_HALF_ROUNDINGS * _HALF_UNIT_ROUNDOFF[half]
               + float(tolerance(np.float32, reduction_len)["rtol"]))
        return dict(rtol=tol, atol=tol)
    if key not in _UNIT_ROUNDOFF:
        raise ValueError(f"tolerance: expected float32 or float64 (or float16, bfloat16), "
                         f"got {dtype}")
    tol = _SAFETY * _UNIT_ROUNDOFF[key] * max(1.0, math.log2(max(reduction_len, 1)))
    return dict(rtol=tol, atol=tol)
