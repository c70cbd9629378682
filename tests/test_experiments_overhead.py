"""bnlab.experiments.overhead: deterministic quantities only (bytes, parameters, folding);
no timing asserts."""

import pytest
import torch
from torch import nn

import bnlab.torch as bt
from bnlab.experiments.overhead import (fold_batch_norm, parameter_bytes,
                                        saved_activation_bytes, step_times,
                                        without_batch_norm)


def mlp(bn=None, width=24):
    layers = [nn.Linear(10, width)] + ([bn(width)] if bn else []) + [nn.ReLU(),
                                                                     nn.Linear(width, 3)]
    return nn.Sequential(*layers)


def test_saved_bytes_of_a_plain_mlp_are_its_input_and_relu_output():
    # Linear saves its input (N, 10); ReLU saves its output (N, 24), which the second
    # Linear saves too (one storage, counted once). Weights are parameters: not counted.
    assert saved_activation_bytes(mlp(), torch.randn(16, 10)) == 4 * (16 * 10 + 16 * 24)


@pytest.mark.parametrize("bn, per_channel", [(nn.BatchNorm1d, 2), (bt.BatchNorm1d, 2)])
def test_batch_norm_adds_one_activation_and_per_channel_vectors(bn, per_channel):
    # torch.nn saves its input, the batch mean and invstd; so does bnlab (x, mu and rstd).
    x = torch.randn(16, 10)
    extra = saved_activation_bytes(mlp(bn), x) - saved_activation_bytes(mlp(), x)
    assert extra == 4 * (16 * 24 + per_channel * 24)


@pytest.mark.parametrize("bn, per_channel", [(nn.BatchNorm2d, 2), (bt.BatchNorm2d, 2)])
def test_spatial_batch_norm_saves_n_c_h_w_values(bn, per_channel):
    def cnn(norm):
        return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), norm, nn.ReLU())
    x = torch.randn(4, 2, 5, 5)
    extra = saved_activation_bytes(cnn(bn(6)), x) - saved_activation_bytes(cnn(nn.Identity()), x)
    assert extra == 4 * (4 * 6 * 5 * 5 + per_channel * 6)


def test_saved_bytes_are_float64_aware_and_leave_the_model_untouched():
    model = mlp(bt.BatchNorm1d).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    x = torch.randn(8, 10, dtype=torch.float64)
    # Linear: its input; BN: its input, mu and rstd; ReLU: its output
    assert saved_activation_bytes(model, x) == 8 * (8 * 10 + 8 * 24 + 2 * 24 + 8 * 24)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics restored


def test_without_batch_norm_replaces_only_batch_norm_layers():
    model = mlp(nn.BatchNorm1d)
    plain = without_batch_norm(model)
    assert [type(m) for m in plain] == [nn.Linear, nn.Identity, nn.ReLU, nn.Linear]
    assert isinstance(model[1], nn.BatchNorm1d)  # the original is not modified
    assert torch.equal(plain[0].weight, model[0].weight)


def test_parameter_bytes_count_gamma_beta_and_running_buffers():
    (p0, b0), (p1, b1) = parameter_bytes(mlp()), parameter_bytes(mlp(bt.BatchNorm1d))
    assert p0 == 4 * (10 * 24 + 24 + 24 * 3 + 3) and b0 == 0
    assert p1 - p0 == 4 * 2 * 24 and b1 == 4 * 2 * 24 + 8  # + int64 num_batches_tracked


def trained_eval_mode(bn):
    """Give ``bn`` running statistics and affine parameters far from their defaults; eval mode."""
    with torch.no_grad():
        bn.running_mean.normal_(0, 3)
        bn.running_var.uniform_(0.2, 5)
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    bn.eval()


@pytest.mark.parametrize("bn_class", [nn.BatchNorm1d, bt.BatchNorm1d])
def test_fold_linear_matches_eval_mode(bn_class):
    torch.manual_seed(0)
    linear, bn = nn.Linear(7, 5).double(), bn_class(5).double()
    trained_eval_mode(bn)
    x = 5 * torch.randn(9, 7, dtype=torch.float64) + 12
    folded = fold_batch_norm(linear, bn)
    # independent expectation: eq-bn-eval written out by hand
    z = linear(x)
    expected = bn.weight * (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + bn.bias
    torch.testing.assert_close(folded(x), expected.detach(), rtol=1e-12, atol=1e-12)
    assert isinstance(folded, nn.Linear) and folded is not linear


def test_fold_conv_without_bias_matches_eval_mode():
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(3, 4, 3, bias=False).double(), bt.BatchNorm2d(4).double()
    trained_eval_mode(bn)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batch_norm(conv, bn)(x), bn(conv(x)), rtol=1e-12,
                                   atol=1e-12)


def test_fold_rejects_other_layers():
    with pytest.raises(ValueError, match="expected an nn.Linear or nn.Conv2d"):
        fold_batch_norm(nn.ReLU(), bt.BatchNorm1d(3))
    with pytest.raises(ValueError, match="output channels"):
        fold_batch_norm(nn.Linear(3, 4), bt.BatchNorm1d(5))


def test_step_times_restore_state_and_reject_bad_mode():
    model = mlp(bt.BatchNorm1d)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    times = step_times({"bn": model}, torch.randn(8, 10), torch.randint(0, 3, (8,)),
                       repeats=2, warmup=1)
    assert set(times) == {"bn"} and times["bn"] > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="expected mode 'train' or 'eval'"):
        step_times({"bn": model}, torch.randn(8, 10), torch.randint(0, 3, (8,)), mode="fast")
