"""Whole networks trained with torch.nn's BatchNorm and with bnlab's, from the same weights:
the losses, every gradient and every buffer must agree step after step."""

import copy

import pytest
import torch
from torch import nn

import bnlab.torch as bt
from bnlab.tolerances import tolerance


class ModelWithBatchNorm(nn.Module):
    """The seed note's example: conv, BatchNorm2d, ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=None), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def train_side_by_side(model, make_batch, loss_fn, steps, dtype):
    """Train the torch.nn model and its bnlab twin; compare after every step."""
    torch.manual_seed(0)
    theirs = model.to(dtype)
    ours = bt.convert(copy.deepcopy(theirs))
    assert any(isinstance(m, (bt.BatchNorm1d, bt.BatchNorm2d)) for m in ours.modules())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (theirs, ours)]
    tol = tolerance(dtype, 4096)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        inputs, target = make_batch(gen, dtype)
        losses = []
        for net, opt in zip((theirs, ours), optimizers):
            opt.zero_grad()
            loss = loss_fn(net(inputs), target)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], **tol)
        for (name, p_theirs), p_ours in zip(theirs.named_parameters(), ours.parameters()):
            torch.testing.assert_close(p_ours.grad, p_theirs.grad, **tol, msg=name)
        for opt in optimizers:
            opt.step()
        for (name, b_theirs), b_ours in zip(theirs.named_buffers(), ours.buffers()):
            torch.testing.assert_close(b_ours, b_theirs, **tol, msg=name)
    theirs.eval()
    ours.eval()
    inputs, _ = make_batch(gen, dtype)
    torch.testing.assert_close(ours(inputs), theirs(inputs), **tol)
    return losses


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_seed_example_network_trains_identically(dtype):
    torch.manual_seed(0)
    model = ModelWithBatchNorm()

    def make_batch(gen, dtype):
        x = torch.randn(8, 3, 32, 32, generator=gen, dtype=dtype)
        return x, torch.randn(8, 64, 32, 32, generator=gen, dtype=dtype)

    train_side_by_side(model, make_batch, nn.functional.mse_loss, steps=3, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_cnn_trains_identically(dtype):
    torch.manual_seed(0)
    model = small_cnn()

    def make_batch(gen, dtype):
        x = 2 * torch.randn(16, 1, 12, 12, generator=gen, dtype=dtype) + 1
        return x, torch.randint(0, 10, (16,), generator=gen)

    losses = train_side_by_side(model, make_batch, nn.functional.cross_entropy, steps=5,
                                dtype=dtype)
    assert torch.isfinite(losses[0])
