"""bnlab.experiments.activations: what a layer receives, its percentiles over training, drift."""

import numpy as np
import pytest
import torch
from torch import nn

import bnlab.torch as bt
from bnlab import experiments as ex
from bnlab.experiments.activations import PercentileTrace, drift, last_of_type, module_input


def test_module_input_is_the_pre_activation_computed_by_hand():
    torch.manual_seed(0)
    model = ex.mlp([5, 7, 6, 3], activation=nn.Sigmoid)  # Linear Sigmoid Linear Sigmoid Linear
    x = 5 * torch.randn(11, 5) + 12
    first, second = model[0], model[2]
    h = torch.sigmoid(x @ first.weight.T + first.bias)  # (11, 7)
    expected = h @ second.weight.T + second.bias        # (11, 6): the last sigmoid's input
    got = module_input(model, last_of_type(model), x)
    assert got.shape == (11, 6)
    torch.testing.assert_close(got, expected)


def test_module_input_uses_running_statistics_and_changes_nothing():
    torch.manual_seed(1)
    model = ex.mlp([4, 6, 2], norm="batch", activation=nn.Sigmoid)
    bn = model[1]
    assert isinstance(bn, bt.BatchNorm1d)
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from (0, 1)
            model(3 * torch.randn(16, 4) + 2)
        bn.weight.copy_(torch.rand(6) + 0.5)
        bn.bias.copy_(torch.randn(6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = 5 * torch.randn(9, 4) + 12
    got = module_input(model, last_of_type(model), x)

    z = x @ model[0].weight.T + model[0].bias  # (9, 6)
    expected = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(got, expected.detach())
    assert model.training and not bn._forward_pre_hooks and not model[2]._forward_pre_hooks
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.eval()
    module_input(model, model[2], x)
    assert not model.training


def test_module_input_in_training_mode_uses_the_batch_statistics_and_changes_nothing():
    torch.manual_seed(2)
    model = ex.mlp([4, 6, 2], norm="batch", activation=nn.Sigmoid)
    bn = model[1]
    with torch.no_grad():
        model(3 * torch.randn(16, 4) + 2)  # running statistics away from (0, 1)
        bn.weight.copy_(torch.rand(6) + 0.5)
        bn.bias.copy_(torch.randn(6))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = 5 * torch.randn(9, 4) + 12
    got = module_input(model, model[2], x, training=True)

    z = (x @ model[0].weight.T + model[0].bias).double()  # (9, 6)
    mu = z.mean(0)
    var = ((z - mu) ** 2).mean(0)  # biased, as in training
    expected = (z - mu) / torch.sqrt(var + bn.eps) * bn.weight.double() + bn.bias.double()
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    assert not model.training  # the mode is restored
    for key, value in model.state_dict().items():  # running statistics and the count too
        assert torch.equal(value, before[key]), key


def test_module_input_and_last_of_type_reject_what_is_not_there():
    model = ex.mlp([4, 6, 2])  # ReLU, no sigmoid
    with pytest.raises(ValueError, match="submodule of `model`"):
        module_input(model, nn.Sigmoid(), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="expected a Sigmoid"):
        last_of_type(model)
    assert last_of_type(model, nn.ReLU) is model[1]


def test_percentile_trace_records_known_percentiles():
    # Unit j receives w_j * x + b_j; for x = 0, 1, ..., 100 the q-th percentile of x is q.
    layer = nn.Linear(1, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0], [2.0], [-1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, 5.0]))
    model = nn.Sequential(layer, nn.Sigmoid())
    x = torch.arange(101.0).reshape(101, 1)  # (101, 1)
    trace = PercentileTrace(model[1], x, every=10)
    trace.record(0, model)
    for step in range(1, 31):
        trace(step, model, loss=None)
    assert trace.steps == [0, 10, 20, 30]
    # unit 2 receives 5 - x, so its 15th percentile is 5 - 85
    expected = np.array([[15, 31, -80], [50, 101, -45], [85, 171, -10]], dtype=float)  # (Q, units)
    np.testing.assert_allclose(trace.percentiles()[-1], expected, rtol=1e-12)
    assert trace.percentiles().shape == (4, 3, 3)
    np.testing.assert_allclose(trace.percentiles(unit=1)[0], [31, 101, 171], rtol=1e-12)


def test_percentile_trace_follows_training():
    d = ex.digits()
    data = ex.Dataset("tiny", d.x_train[:128], d.y_train[:128], d.x_test[:64], d.y_test[:64])
    ex.seeded(0)
    model = ex.mlp([64, 8, 8, 10], norm="batch", activation=nn.Sigmoid)
    trace = PercentileTrace(last_of_type(model), data.x_test, every=5)
    trace.record(0, model)
    ex.train(model, data, steps=20, lr=0.5, batch_size=32, seed=0, on_step=trace)
    assert trace.steps == [0, 5, 10, 15, 20]
    p = trace.percentiles()  # (T, Q, units)
    assert p.shape == (5, 3, 8)
    assert np.all(p[:, 0] <= p[:, 1]) and np.all(p[:, 1] <= p[:, 2])
    assert np.all(drift(p) > 0)  # training moved every unit's input


def test_drift_is_the_largest_move_from_the_start():
    still = np.tile([[-1.0], [0.0], [1.0]], (4, 1, 1))[:, :, 0]  # (T=4, Q=3), never moves
    assert drift(still) == 0.0
    moving = np.array([[-1.0, 0.0, 1.0], [-1.5, 0.5, 1.0], [-1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    assert drift(moving) == pytest.approx(2.0)  # the median went from 0 to 2
    both = np.stack([still, moving], axis=2)  # (T, Q, units=2)
    np.testing.assert_allclose(drift(both), [0.0, 2.0])
    with pytest.raises(ValueError, match="T >= 2"):
        drift(moving[:1])
    with pytest.raises(ValueError, match="shape"):
        drift(np.zeros(5))
