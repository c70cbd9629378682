"""The experiment machinery the book's chapters rely on."""

import math

import pytest
import torch
from torch import nn

import bnlab.torch as bt
from bnlab import experiments as ex


@pytest.fixture(scope="module")
def small_data():
    d = ex.digits()
    return ex.Dataset("digits-small", d.x_train[:256], d.y_train[:256], d.x_test[:128],
                      d.y_test[:128])


def test_datasets_are_offline_and_shaped():
    d = ex.digits()
    assert d.x_train.shape == (1300, 64) and d.x_test.shape == (497, 64)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.num_classes == 10 and 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    m = ex.mnist1d()
    assert m.x_train.shape == (4000, 40) and m.x_test.shape == (1000, 40) and m.num_features == 40


def test_mlp_layer_order_follows_placement_and_dropout():
    before = ex.mlp([8, 16, 4], norm="batch", dropout=0.5)
    assert [type(m) for m in before] == [nn.Linear, bt.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    after = ex.mlp([8, 16, 4], norm="batch", placement="after", activation=nn.Sigmoid)
    assert [type(m) for m in after] == [nn.Linear, nn.Sigmoid, bt.BatchNorm1d, nn.Linear]
    plain = ex.mlp([8, 16, 16, 4])
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("kind, cls", [("batch", bt.BatchNorm1d), ("layer", bt.LayerNorm),
                                       ("group", bt.GroupNorm), ("renorm", bt.BatchRenorm1d),
                                       ("ghost", bt.GhostBatchNorm1d)])
def test_make_norm_builds_bnlab_layers(kind, cls):
    layer = ex.make_norm(kind, 8, virtual_batch_size=4)
    assert isinstance(layer, cls)
    assert layer(torch.randn(8, 8)).shape == (8, 8)


def test_make_norm_rejects_unknown_kind_and_missing_ghost_size():
    with pytest.raises(ValueError, match="expected kind in"):
        ex.make_norm("batchnorm", 8)
    with pytest.raises(ValueError, match="virtual_batch_size"):
        ex.make_norm("ghost", 8)


def test_weight_scale_sets_the_initial_weights():
    torch.manual_seed(0)
    model = ex.mlp([64, 256, 10], weight_scale=0.5)
    assert abs(model[0].weight.std().item() - 0.5) < 0.02
    assert torch.all(model[0].bias == 0)


def test_training_is_deterministic_and_learns(small_data):
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # the model's initialization
        model = ex.mlp([64, 32, 10], norm="batch")
        runs.append(ex.train(model, small_data, steps=60, lr=0.1, batch_size=32, seed=7))
    assert runs[0].train_loss == runs[1].train_loss
    assert runs[0].test_acc == runs[1].test_acc
    assert len(runs[0].train_loss) == 60 and runs[0].eval_steps[-1] == 60
    assert runs[0].final_test_acc > 0.5  # ten classes: chance is 0.1
    torch.manual_seed(123)
    other_order = ex.train(ex.mlp([64, 32, 10], norm="batch"), small_data, steps=60, lr=0.1,
                           batch_size=32, seed=8)
    assert other_order.train_loss != runs[0].train_loss


def test_divergence_stops_the_run_and_scores_zero(small_data):
    torch.manual_seed(0)
    model = ex.mlp([64, 64, 64, 10], weight_scale=3.0)
    history = ex.train(model, small_data, steps=50, lr=1e4, batch_size=32)
    assert history.diverged and len(history.train_loss) < 50
    assert history.final_test_acc == 0.0
    assert all(math.isfinite(v) for v in history.train_loss)


def test_train_rejects_bad_arguments(small_data):
    model = ex.mlp([64, 10])
    with pytest.raises(ValueError, match="optimizer"):
        ex.train(model, small_data, steps=1, lr=0.1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="batch_size"):
        ex.train(model, small_data, steps=1, lr=0.1, batch_size=10_000)


def test_evaluate_restores_the_training_mode(small_data):
    model = ex.mlp([64, 16, 10], norm="batch").train()
    ex.evaluate(model, small_data.x_test, small_data.y_test)
    assert model.training


def test_median_over_seeds():
    median, values = ex.median_over_seeds(lambda s: float(s), [3, 1, 2])
    assert median == 2.0 and values == [3.0, 1.0, 2.0]
