"""Offline datasets: nothing here touches the network.

MNIST-1D (Greydanus 2020) is generated locally from its ten digit templates with the
package's own default arguments (``mnist1d.data.get_dataset()`` would download a pickle:
we never call it). 4000 training and 1000 test sequences of length 40, ten classes.
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def _mnist1d(seed):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    return (data["x"].astype(np.float32), data["y"].astype(np.int64),
            data["x_test"].astype(np.float32), data["y_test"].astype(np.int64))


def load_mnist1d(seed=42):
    """Return ``(x_train, y_train, x_test, y_test)``: float32 (4000, 40), int64 (4000,),
    float32 (1000, 40), int64 (1000,). ``seed=42`` is the published dataset's seed.

    Arrays are fresh copies, so callers may modify them.
    """
    return tuple(a.copy() for a in _mnist1d(seed))
