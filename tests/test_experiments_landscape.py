"""bnlab.experiments.landscape: probing along the gradient, noisy BatchNorm, input drift."""

import pytest
import torch
from torch import nn

import bnlab.torch as bt
from bnlab.experiments import Dataset, mlp
from bnlab.experiments.landscape import (InputDrift, NoisyBatchNorm, noisy,
                                         probe_gradient_direction, track_landscape)


def test_probe_on_a_quadratic_matches_the_closed_form():
    # L(w) = 0.5 * sum(a * w^2): g = a * w, and after w' = w - eta * g,
    # L(w') = 0.5 * sum(a * ((1 - eta * a) * w)^2), grad(w') - g = -eta * a^2 * w.
    a = torch.tensor([1.0, 3.0], dtype=torch.float64)
    w0 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w0)

    def loss_fn(out, y):  # ignores the data: a function of the weight only
        return 0.5 * (a * model.weight[0] ** 2).sum() + 0 * out.sum()

    x, y = torch.zeros(1, 2, dtype=torch.float64), None
    etas = [0.1, 0.2]
    result = probe_gradient_direction(model, loss_fn, x, y, etas)
    g = a * w0
    for k, eta in enumerate(etas):
        w = w0 - eta * g
        assert result["loss"][k] == pytest.approx(0.5 * (a * w ** 2).sum().item(), rel=1e-12)
        change = torch.linalg.norm(eta * a * g).item()
        assert result["grad_change"][k] == pytest.approx(change, rel=1e-12)
        assert result["beta"][k] == pytest.approx(change / (eta * torch.linalg.norm(g).item()),
                                                  rel=1e-12)
    assert result["loss0"] == pytest.approx(0.5 * (a * w0 ** 2).sum().item(), rel=1e-12)
    assert torch.equal(model.weight[0], w0)  # restored


def test_probe_restores_weights_and_running_statistics():
    torch.manual_seed(0)
    model = mlp([5, 8, 3], norm="batch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = 3 * torch.randn(16, 5) + 2, torch.randint(0, 3, (16,))
    result = probe_gradient_direction(model, nn.CrossEntropyLoss(), x, y, [0.1, 1.0])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert len(result["loss"]) == 2 and result["grad_change"][1] > 0
    assert all(p.grad is None for p in model.parameters())


def test_noisy_batch_norm_changes_each_step_and_is_plain_in_eval():
    torch.manual_seed(0)
    layer = NoisyBatchNorm(bt.BatchNorm1d(4), mean_range=1.0, var_range=4.0, seed=3)
    x = 5 * torch.randn(32, 4) + 12
    y1, y2 = layer(x), layer(x)
    assert not torch.allclose(y1, y2)  # a new noise distribution every forward pass
    means, stds = y1.mean(0), y1.std(0, unbiased=False)
    # per channel an affine map of the normalized values: mean in [-1, 1], std in [1, 2]
    assert torch.all(means.abs() <= 1.0 + 1e-5)
    assert torch.all((stds >= 1 - 1e-3) & (stds <= 2 + 1e-3))
    assert (means.abs() > 1e-3).any()  # non-zero mean
    layer.eval()
    torch.testing.assert_close(layer(x), layer.bn(x))
    same_seed = NoisyBatchNorm(bt.BatchNorm1d(4), seed=3)
    torch.testing.assert_close(same_seed(x), y1)  # deterministic given the seed
    with pytest.raises(ValueError, match="var_range >= 1"):
        NoisyBatchNorm(bt.BatchNorm1d(4), var_range=0.5)


def test_noisy_wraps_every_batch_norm_of_a_copy():
    model = mlp([5, 8, 8, 3], norm="batch")
    wrapped = noisy(model, seed=0)
    assert [type(m) for m in wrapped] == [nn.Linear, NoisyBatchNorm, nn.ReLU, nn.Linear,
                                          NoisyBatchNorm, nn.ReLU, nn.Linear]
    assert isinstance(model[1], bt.BatchNorm1d)
    assert isinstance(noisy(nn.Sequential(nn.BatchNorm1d(3)))[0], NoisyBatchNorm)
    with pytest.raises(ValueError, match="found none"):
        noisy(mlp([5, 8, 3]))


def test_input_drift_measures_the_change_of_per_channel_statistics():
    layer = nn.Linear(2, 2)
    drift = InputDrift(layer)
    base = torch.randn(100, 2)
    base = (base - base.mean(0)) / base.std(0)  # mean 0, std 1 per channel
    layer(base)
    layer(base * 3 + torch.tensor([1.0, -2.0]))  # means move by 1 and 2, stds by 2 and 2
    layer.eval()
    layer(base + 100)  # ignored: evaluation mode
    layer.train()
    drift.active = False
    layer(base + 100)  # ignored: inactive
    drift.remove()
    layer(base + 100)  # ignored: removed
    values = drift.drift()
    assert values.shape == (1,)
    assert values[0].item() == pytest.approx((1 + 2 + 2 + 2) / 2, rel=1e-5)


def test_track_landscape_records_probes_and_drift_without_changing_training():
    torch.manual_seed(0)
    x = torch.randn(128, 6)
    data = Dataset("toy", x, (x[:, 0] > 0).long(), x[:32], (x[:32, 0] > 0).long())
    torch.manual_seed(1)
    model = mlp([6, 8, 8, 2], norm="batch")
    history, record = track_landscape(model, data, steps=12, lr=0.1, step_sizes=[0.05, 0.1],
                                      probe_every=4, batch_size=16, seed=0,
                                      drift_layer=model[-1])
    assert record["steps"] == [4, 8, 12]
    assert [len(v) for v in record["loss"]] == [2, 2, 2]
    assert len(record["drift"]) == 11  # one per training step after the first
    # probing must not change training: the same run without probes gives the same losses
    from bnlab.experiments import train
    torch.manual_seed(1)
    plain = train(mlp([6, 8, 8, 2], norm="batch"), data, steps=12, lr=0.1, batch_size=16,
                  seed=0)
    assert plain.train_loss == history.train_loss
