"""The variance-shift measurements of the dropout chapter (Li et al. 2019)."""

import pytest
import torch
from torch import nn

import bnlab.torch as bt
from bnlab.experiments.variance_shift import (Uout, dropout_disabled, dropout_variance_ratio,
                                              predicted_variance_shift, recompute_statistics,
                                              variance_shift)

MEAN, VAR, P = 1.5, 0.8, 0.4


def shifted_inputs(n, c, generator):
    return MEAN + VAR ** 0.5 * torch.randn(n, c, generator=generator, dtype=torch.float64)


def test_dropout_variance_ratio_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    x = shifted_inputs(200_000, 4, g)
    torch.manual_seed(1)
    dropped = nn.Dropout(P).train()(x)
    measured = (x.var(dim=0) / dropped.var(dim=0)).mean().item()
    # By hand: Var_train = (1.5^2 + 0.8) / 0.6 - 1.5^2 = 2.8333..., ratio = 0.8 / 2.8333...
    assert dropout_variance_ratio(P, MEAN, VAR) == pytest.approx(0.8 / (3.05 / 0.6 - 2.25))
    assert measured == pytest.approx(dropout_variance_ratio(P, MEAN, VAR), rel=0.02)
    assert dropout_variance_ratio(0.0, MEAN, VAR) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="0 <= p < 1"):
        dropout_variance_ratio(1.0, MEAN, VAR)


def test_predicted_shift_through_a_linear_layer_matches_monte_carlo():
    g = torch.Generator().manual_seed(2)
    h = torch.relu(shifted_inputs(100_000, 6, g))            # non-negative, like after ReLU
    weight = torch.randn(3, 6, generator=g, dtype=torch.float64)
    torch.manual_seed(3)
    z_train = nn.Dropout(P).train()(h) @ weight.T
    measured = (h @ weight.T).var(dim=0) / z_train.var(dim=0)
    torch.testing.assert_close(predicted_variance_shift(weight, h, P), measured, rtol=0.02,
                               atol=0)
    assert torch.all(measured < 0.95)


def test_uout_is_identity_in_eval_and_bounded_noise_in_training():
    x = 5 * torch.randn(1000, 8, dtype=torch.float64) + 12
    layer = Uout(beta=0.2)
    assert torch.equal(layer.eval()(x), x)
    factor = layer.train()(x) / x
    assert factor.min() >= 0.8 and factor.max() <= 1.2 and factor.std() > 0.05
    with pytest.raises(ValueError, match="beta"):
        Uout(beta=2.0)


def trained_with_dropout(p, steps=400):
    """Dropout(p) -> BatchNorm1d; running statistics as the plain average over training
    batches (momentum=None), so running_var estimates the training-mode variance."""
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Dropout(p), bt.BatchNorm1d(5, momentum=None)).double().train()
    torch.manual_seed(5)
    with torch.no_grad():
        for _ in range(steps):
            model(shifted_inputs(64, 5, g))
    return model, shifted_inputs(20_000, 5, g)


def test_variance_shift_measures_dropouts_shift_and_changes_nothing():
    model, x = trained_with_dropout(P)
    buffers = [b.clone() for b in model.buffers()]
    ratio, = variance_shift(model, x)
    torch.testing.assert_close(ratio, torch.full_like(ratio, dropout_variance_ratio(P, MEAN, VAR)),
                               rtol=0.05, atol=0)
    assert model.training
    for before, after in zip(buffers, model.buffers()):
        assert torch.equal(before, after)
    no_dropout, x = trained_with_dropout(0.0)
    ratio, = variance_shift(no_dropout, x)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0.05, atol=0)


def test_variance_shift_needs_batch_norm():
    with pytest.raises(ValueError, match="BatchNorm"):
        variance_shift(nn.Sequential(nn.Linear(3, 3)), torch.randn(4, 3))


def test_recompute_statistics_removes_the_shift_and_restores_the_model():
    model, x = trained_with_dropout(P)
    model.eval()
    recompute_statistics(model, x, batch_size=100)
    ratio, = variance_shift(model, x)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0.02, atol=0)
    assert not model.training and model[0].p == P and model[1].momentum is None


def test_dropout_disabled_restores_rates_after_an_error():
    model = nn.Sequential(nn.Dropout(0.3), Uout(0.1))
    with pytest.raises(RuntimeError):
        with dropout_disabled(model):
            assert model[0].p == 0 and model[1].beta == 0
            raise RuntimeError("inside")
    assert model[0].p == 0.3 and model[1].beta == 0.1
