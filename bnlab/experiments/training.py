"""One training loop for every experiment: seeded, deterministic, with a progress bar."""

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def seeded(seed):
    """Seed Python's, NumPy's and torch's generators; returns a torch.Generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress(iterable, desc=None, total=None):
    """A progress bar for a long loop (set BNLAB_PROGRESS=0 to silence it)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=5.0,
                disable=os.environ.get("BNLAB_PROGRESS") == "0")


@torch.no_grad()
def evaluate(model, x, y, batch_size=1000):
    """Accuracy of ``model`` on (x, y) in evaluation mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    correct = sum((model(xb).argmax(1) == yb).sum().item()
                  for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    model.train(was_training)
    return correct / len(y)


@dataclass
class History:
    """What a run recorded. ``train_loss`` has one entry per step taken."""

    train_loss: list = field(default_factory=list)
    eval_steps: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    diverged: bool = False  # the loss became NaN or infinite and training stopped

    @property
    def final_test_acc(self):
        """The last measured test accuracy; chance-level 0 for a diverged run."""
        return 0.0 if self.diverged or not self.test_acc else self.test_acc[-1]


def train(model, data, *, steps, lr, batch_size=64, seed=0, optimizer="sgd", momentum=0.0,
          weight_decay=0.0, eval_every=None, on_step=None, desc=None):
    """Train ``model`` on ``data`` (a Dataset) with cross-entropy; returns a History.

    Mini-batches are drawn without replacement, reshuffled every epoch by a generator
    seeded with ``seed`` (incomplete last batches are dropped, so every batch has
    ``batch_size`` examples). ``optimizer``: "sgd" (with ``momentum``) or "adam".
    Test accuracy is measured every ``eval_every`` steps (default: steps // 10) and at the
    end. ``on_step(step, model, loss)`` is called after each update (for measurements).
    A non-finite loss stops the run with ``diverged=True``.
    """
    generator = seeded(seed)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"train: expected optimizer 'sgd' or 'adam'; got {optimizer!r}.")
    eval_every = eval_every or max(steps // 10, 1)
    loss_fn = nn.CrossEntropyLoss()
    history = History()
    n = len(data.y_train)
    if batch_size > n:
        raise ValueError(f"train: expected batch_size <= {n} training examples; got {batch_size}.")
    order, cursor = torch.randperm(n, generator=generator), 0

    model.train()
    for step in progress(range(1, steps + 1), desc=desc):
        if cursor + batch_size > n:  # a new epoch
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            history.diverged = True
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.train_loss.append(loss.item())
        if on_step is not None:
            on_step(step, model, loss)
        if step % eval_every == 0 or step == steps:
            history.eval_steps.append(step)
            history.test_acc.append(evaluate(model, data.x_test, data.y_test))
    return history


def median_over_seeds(run, seeds):
    """``run(seed) -> number`` for each seed; returns (median, list of values)."""
    values = [run(seed) for seed in seeds]
    return float(np.median(values)), values
