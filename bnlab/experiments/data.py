"""Offline datasets as float32 / int64 torch tensors (nothing is downloaded)."""

from dataclasses import dataclass

import numpy as np
import torch

from ..data import load_mnist1d


@dataclass(frozen=True)
class Dataset:
    """x: (N, features) float32, y: (N,) int64 class labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_features(self):
        return self.x_train.shape[1]

    @property
    def num_classes(self):
        return int(self.y_train.max()) + 1


def mnist1d(seed=42):
    """MNIST-1D (Greydanus 2020): 4000 / 1000 sequences of length 40, ten classes."""
    arrays = load_mnist1d(seed)
    return Dataset("MNIST-1D", *(torch.from_numpy(a) for a in arrays))


def digits(test_size=497, seed=0):
    """scikit-learn's 8x8 digits (1797 images, ten classes), pixels scaled to [0, 1],
    split at random (``seed``) into 1300 training and 497 test images."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x = torch.from_numpy((x[order] / 16.0).astype(np.float32))  # (1797, 64)
    y = torch.from_numpy(y[order].astype(np.int64))
    return Dataset("digits", x[test_size:], y[test_size:], x[:test_size], y[:test_size])
