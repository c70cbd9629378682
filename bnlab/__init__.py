"""bnlab: Batch Normalization derived, implemented and checked.

* ``bnlab.numpy``: the NumPy reference (pure functions, ``forward -> (y, cache)``,
  ``backward(dy, cache) -> grads``); imports no torch.
* ``bnlab.torch``: torch implementations (``torch.autograd.Function`` with the book's
  backward), drop-in modules and ``convert``; calls no NumPy reference code.
* ``bnlab.check``, ``bnlab.grade``, ``bnlab.labs``: student self-checks, the autograder and
  the lab generator.
* ``bnlab.data``: offline datasets. ``bnlab.tolerances``: the one place tolerances live.
"""

__version__ = "0.1.0"
