"""bnlab.experiments.inference: precise BatchNorm statistics, the EMA tracker, train-mode
accuracy."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnlab.torch as bt
from bnlab.experiments import Dataset, mlp, train
from bnlab.experiments.inference import EmaTracker, precise_bn, train_mode_accuracy


def two_bn_net(bn_class):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), bn_class(8), nn.ReLU(), nn.Linear(8, 5),
                         bn_class(5)).double()


@pytest.mark.parametrize("bn_class", [bt.BatchNorm1d, nn.BatchNorm1d])
def test_precise_bn_is_the_average_of_batch_statistics(bn_class):
    model = two_bn_net(bn_class)
    x = 5 * torch.randn(50, 6, dtype=torch.float64) + 12
    batch_size, num_batches = 8, 6  # uses the first 48 examples
    model[1].momentum, model[4].momentum = 0.3, 0.1
    model.eval()
    precise_bn(model, x, batch_size, num_batches)

    # Independently: layer 1 sees Linear(x); layer 4 sees Linear(ReLU(BN_batch(Linear(x))))
    # with BatchNorm computed by hand from each batch's own mean and biased variance.
    means1, vars1, means2, vars2 = [], [], [], []
    with torch.no_grad():
        for xb in x[:48].split(batch_size):  # (8, 6) each
            z1 = model[0](xb)
            means1.append(z1.mean(0))
            vars1.append(z1.var(0, unbiased=True))
            h = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + model[1].eps)
            h = torch.relu(h * model[1].weight + model[1].bias)
            z2 = model[3](h)
            means2.append(z2.mean(0))
            vars2.append(z2.var(0, unbiased=True))
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model[1].running_mean, torch.stack(means1).mean(0), **tol)
    torch.testing.assert_close(model[1].running_var, torch.stack(vars1).mean(0), **tol)
    torch.testing.assert_close(model[4].running_mean, torch.stack(means2).mean(0), **tol)
    torch.testing.assert_close(model[4].running_var, torch.stack(vars2).mean(0), **tol)
    # momentum and mode restored; the weights untouched
    assert (model[1].momentum, model[4].momentum) == (0.3, 0.1) and not model.training
    assert int(model[1].num_batches_tracked) == 0  # recomputing is not a training step
    torch.testing.assert_close(model[0].weight, two_bn_net(bn_class)[0].weight)


def test_precise_bn_accepts_a_dataset_and_ignores_old_statistics():
    model = two_bn_net(bt.BatchNorm1d)
    x = torch.randn(40, 6, dtype=torch.float64)
    data = Dataset("toy", x, torch.zeros(40, dtype=torch.long), x[:4], torch.zeros(4))
    with torch.no_grad():
        model[1].running_mean.fill_(100.0)
    precise_bn(model, data, 10, 4)
    with torch.no_grad():
        expected = model[0](x).mean(0)  # four equal batches: the mean of all 40
    torch.testing.assert_close(model[1].running_mean, expected, rtol=1e-10, atol=1e-10)


def test_precise_bn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="found none"):
        precise_bn(nn.Linear(3, 3), torch.randn(10, 3), 2, 2)
    with pytest.raises(ValueError, match="num_batches \\* batch_size <= 10"):
        precise_bn(two_bn_net(bt.BatchNorm1d), torch.randn(10, 6).double(), 4, 3)


def test_ema_tracker_matches_the_layers_own_running_statistics():
    # Momentum does not change training, so a run with momentum m gives the same weights as
    # the tracked run, and its own running statistics must equal the tracker's for m.
    torch.manual_seed(0)
    x = torch.randn(96, 12)
    data = Dataset("toy", x, (x[:, 0] > 0).long(), x[:16], (x[:16, 0] > 0).long())
    runs = {}
    for momentum in (0.05, 0.5):
        torch.manual_seed(1)
        model = mlp([12, 16, 16, 2], norm="batch", momentum=momentum)
        tracker = EmaTracker(model, (0.05, 0.5)) if momentum == 0.05 else None
        train(model, data, steps=20, lr=0.1, batch_size=16, seed=3)
        runs[momentum] = (model, tracker)
    tracked_model, tracker = runs[0.05]
    tracker.remove()
    for momentum, (model, _) in runs.items():
        torch.testing.assert_close(model[0].weight, tracked_model[0].weight)  # same training
        copy_ = tracker.with_statistics(momentum)
        for ours, theirs in ((copy_[1], model[1]), (copy_[4], model[4])):
            torch.testing.assert_close(ours.running_mean, theirs.running_mean,
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ours.running_var, theirs.running_var,
                                       rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tracker.stats[0.05][0][0], tracker.stats[0.5][0][0])


def test_train_mode_accuracy_uses_batch_statistics_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), bt.BatchNorm1d(3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    before = model[1].running_mean.clone()
    with torch.no_grad():
        z = model[0](x[:5])  # first batch of 5, normalized with its own statistics
        expected = F.batch_norm(z, None, None, model[1].weight, model[1].bias, training=True)
    acc = train_mode_accuracy(model, x, y, 5)
    with torch.no_grad():
        z2 = model[0](x[5:])
        expected2 = F.batch_norm(z2, None, None, model[1].weight, model[1].bias, training=True)
    correct = (expected.argmax(1) == y[:5]).sum() + (expected2.argmax(1) == y[5:]).sum()
    assert acc == correct.item() / 10
    assert torch.equal(model[1].running_mean, before)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        train_mode_accuracy(model, x, y, 1)
