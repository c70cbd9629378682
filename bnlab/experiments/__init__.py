"""Shared machinery for the book's experiments, so chapters read as science, not boilerplate.

* ``data``: offline datasets as torch tensors (MNIST-1D, scikit-learn's digits).
* ``models``: MLPs with a choice of normalization layer, placement and dropout.
* ``training``: one seeded, deterministic training loop and evaluation, progress bars.
* ``plotting``: one plot style for every figure.

Measurements used by single chapters live in their own modules, imported from there:
``activations`` (what a layer receives, percentile traces), ``variance_shift`` (dropout
before BatchNorm), ``landscape`` (loss and gradient along the gradient, noisy BatchNorm),
``overhead`` (saved-activation bytes, step times, folding) and ``inference`` (precise
BatchNorm statistics, EMA tracking, train-mode accuracy).

Every run takes a ``seed``; the same seed gives bit-identical results on the same machine
and thread count (``seeded`` fixes torch's, NumPy's and Python's generators).
"""

from .data import Dataset, digits, mnist1d
from .models import NORMS, make_norm, mlp
from .plotting import PALETTE, figure, use_style
from .training import History, evaluate, median_over_seeds, progress, seeded, train

__all__ = ["Dataset", "mnist1d", "digits", "NORMS", "make_norm", "mlp", "PALETTE",
           "figure", "use_style", "History", "train", "evaluate", "seeded", "progress",
           "median_over_seeds"]
