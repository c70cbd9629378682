"""bnlab.torch.inference: folding BatchNorm into the layer before it, precise statistics,
frozen BatchNorm, and the fine-tuning traps that frozen BatchNorm avoids.

Oracles: eq-bn-eval written out by hand (folding, freezing), torch's own fusion utilities
(torch.nn.utils.fusion, torch.ao.quantization.fuse_modules), and statistics computed directly
from the activations each BatchNorm layer receives (precise statistics). float64 for the
tight checks, with the shared tolerances of bnlab.tolerances."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import bnlab.torch as bt
from bnlab.tolerances import tolerance
from bnlab.torch.inference import (
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    batch_norm_layers,
    fold,
    fold_batch_norm,
    freeze_batch_norm,
    precise_batch_norm,
)


def trained(bn, seed=0):
    """Give ``bn`` running statistics and affine parameters far from their defaults
    (1 and 0), as after training; gamma of both signs. Returns bn in eval mode."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(3 * torch.randn(c, generator=g))
        bn.running_var.copy_(0.2 + 5 * torch.rand(c, generator=g))
        if bn.weight is not None:
            sign = torch.where(torch.rand(c, generator=g) < 0.3, -1.0, 1.0)
            bn.weight.copy_(sign * (0.5 + 1.5 * torch.rand(c, generator=g)))
        if getattr(bn, "bias", None) is not None:
            bn.bias.copy_(torch.randn(c, generator=g))
    return bn.eval()


def eval_by_hand(bn, z):
    """eq-bn-eval on (N, C, ...) z, written out: gamma (z - mu) / sqrt(var + eps) + beta."""
    column = (1, -1) + (1,) * (z.dim() - 2)
    y = (z - bn.running_mean.reshape(column)) / torch.sqrt(bn.running_var.reshape(column)
                                                           + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.reshape(column)
    if getattr(bn, "bias", None) is not None:
        y = y + bn.bias.reshape(column)
    return y


def fan_in(layer):
    """How many products each output sums: the reduction length for the tolerance."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return w.shape[1]
    per_output = math.prod(w.shape[2:])
    return per_output * (w.shape[1] if not isinstance(layer, nn.modules.conv._ConvTransposeNd)
                         else w.shape[0] // layer.groups)


# (layer, BatchNorm class for torch.nn / bnlab, input shape): groups, dilation, stride,
# padding and transposed convolutions; output channels on axis 1 in every case.
CASES = {
    "linear": (lambda bias: nn.Linear(7, 6, bias=bias), (nn.BatchNorm1d, bt.BatchNorm1d),
               (9, 7)),
    "conv1d-groups-dilation": (lambda bias: nn.Conv1d(4, 6, 3, groups=2, dilation=2, bias=bias),
                               (nn.BatchNorm1d, bt.BatchNorm1d), (3, 4, 11)),
    "conv2d-stride-padding": (lambda bias: nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=bias),
                              (nn.BatchNorm2d, bt.BatchNorm2d), (2, 3, 7, 7)),
    "conv2d-depthwise": (lambda bias: nn.Conv2d(6, 6, 3, groups=6, padding=2, dilation=2,
                                                padding_mode="reflect", bias=bias),
                         (nn.BatchNorm2d, bt.BatchNorm2d), (2, 6, 6, 6)),
    "conv3d": (lambda bias: nn.Conv3d(2, 4, (2, 3, 3), dilation=(1, 2, 1), bias=bias),
               (nn.BatchNorm3d, bt.BatchNorm3d), (2, 2, 3, 6, 4)),
    "convtranspose1d": (lambda bias: nn.ConvTranspose1d(4, 6, 3, stride=2, bias=bias),
                        (nn.BatchNorm1d, bt.BatchNorm1d), (2, 4, 5)),
    "convtranspose2d-groups": (lambda bias: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2,
                                                               bias=bias),
                               (nn.BatchNorm2d, bt.BatchNorm2d), (2, 4, 4, 4)),
}


def make_pair(case, bias, affine, bnlab_bn, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    make_layer, bn_classes, shape = CASES[case]
    layer = make_layer(bias).to(dtype)
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    bn = trained(bn_classes[bnlab_bn](channels, affine=affine).to(dtype), seed)
    x = (5 * torch.randn(shape, dtype=torch.float64) + 12).to(dtype)
    return layer, bn, x


# --- fold_batch_norm -------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bnlab_bn", [False, True])
def test_folded_layer_is_the_layer_followed_by_eval_batch_norm(case, bias, affine, bnlab_bn):
    layer, bn, x = make_pair(case, bias, affine, bnlab_bn)
    folded = fold_batch_norm(layer, bn)
    with torch.no_grad():
        expected = eval_by_hand(bn, layer(x))  # independent of the folding code
        torch.testing.assert_close(folded(x), expected, **tolerance(torch.float64, fan_in(layer)))
        torch.testing.assert_close(folded(x), bn(layer(x)),
                                   **tolerance(torch.float64, fan_in(layer)))
    assert type(folded) is type(layer) and folded is not layer
    assert folded.bias is not None and folded.weight.shape == layer.weight.shape
    assert folded.weight.dtype == torch.float64 and folded.bias.dtype == torch.float64
    assert (layer.bias is None) == (not bias)  # the input layer is not modified


@pytest.mark.parametrize("case", ["conv1d-groups-dilation", "conv2d-stride-padding",
                                  "conv2d-depthwise", "conv3d"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_matches_torch_fuse_conv_bn_eval(case, bias, affine):
    conv, bn, _ = make_pair(case, bias, affine, bnlab_bn=False)
    ours, theirs = fold_batch_norm(conv, bn), fuse_conv_bn_eval(conv.eval(), bn)
    tol = tolerance(torch.float64)
    torch.testing.assert_close(ours.weight, theirs.weight, **tol)
    torch.testing.assert_close(ours.bias, theirs.bias, **tol)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_matches_torch_fuse_for_linear_and_transposed_conv(bias):
    linear, bn, _ = make_pair("linear", bias, True, bnlab_bn=False)
    theirs = fuse_linear_bn_eval(linear.eval(), bn)
    ours = fold_batch_norm(linear, bn)
    torch.testing.assert_close(ours.weight, theirs.weight, **tolerance(torch.float64))
    torch.testing.assert_close(ours.bias, theirs.bias, **tolerance(torch.float64))
    # torch's transpose=True scales dim 1 of the weight: right for groups=1 only
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, bias=bias).double().eval()
    bn = trained(nn.BatchNorm2d(6).double(), 1)
    theirs = fuse_conv_bn_eval(conv, bn, transpose=True)
    ours = fold_batch_norm(conv, bn)
    torch.testing.assert_close(ours.weight, theirs.weight, **tolerance(torch.float64))
    torch.testing.assert_close(ours.bias, theirs.bias, **tolerance(torch.float64))


def test_fold_float32_is_as_close_as_float32_allows():
    layer, bn, x = make_pair("conv2d-stride-padding", True, True, bnlab_bn=False,
                             dtype=torch.float32)
    folded = fold_batch_norm(layer, bn)
    assert folded.weight.dtype == torch.float32 and folded.bias.dtype == torch.float32
    with torch.no_grad():
        reference = eval_by_hand(bn.double(), layer.double()(x.double()))
        torch.testing.assert_close(folded(x).double(), reference,
                                   **tolerance(torch.float32, fan_in(layer)))
    theirs = fuse_conv_bn_eval(layer.float().eval(), bn.float())
    torch.testing.assert_close(fold_batch_norm(layer.float(), bn.float()).weight, theirs.weight,
                               **tolerance(torch.float32))


def test_fold_batch_norm_keeps_the_inputs_and_requires_grad():
    layer, bn, _ = make_pair("conv2d-stride-padding", False, True, bnlab_bn=True)
    before = [t.clone() for t in (layer.weight, bn.running_mean, bn.running_var, bn.weight)]
    folded = fold_batch_norm(layer, bn)
    for t, b in zip((layer.weight, bn.running_mean, bn.running_var, bn.weight), before):
        assert torch.equal(t, b)
    assert layer.bias is None and folded.weight.requires_grad and folded.bias.requires_grad


def test_fold_batch_norm_rejects_what_it_cannot_fold():
    with pytest.raises(ValueError, match="expected an nn.Linear or nn.Conv2d"):
        fold_batch_norm(nn.ReLU(), bt.BatchNorm1d(3))
    with pytest.raises(ValueError, match="expected a BatchNorm layer .* got LayerNorm"):
        fold_batch_norm(nn.Linear(3, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="4 output channels; got statistics for 5"):
        fold_batch_norm(nn.Linear(3, 4), bt.BatchNorm1d(5))
    with pytest.raises(ValueError, match="got no running statistics"):
        fold_batch_norm(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="uninitialized lazy"):
        fold_batch_norm(nn.LazyConv2d(4, 1), nn.BatchNorm2d(4))


# --- fold(model) -----------------------------------------------------------------------------

class Block(nn.Module):
    """A residual block: its BatchNorm layers sit in an nn.Sequential body."""

    def __init__(self, c, bn):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c), nn.ReLU(),
                                  nn.Sequential(nn.Conv2d(c, c, 3, padding=1)),
                                  nn.Sequential(bn(c)))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def make_net(bn2d, bn1d):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), bn2d(8), nn.ReLU(), Block(8, bn2d),
                        nn.Conv2d(8, 8, 3, stride=2, groups=4), nn.Identity(), bn2d(8),
                        bn2d(8),  # two BatchNorms in a row: both fold
                        nn.Flatten(), nn.Linear(8 * 3 * 3, 16), bn1d(16), nn.ReLU(),
                        nn.Linear(16, 4))
    for k, bn in enumerate(m for m in net.modules() if isinstance(m, (bn2d, bn1d))):
        trained(bn, k)
    return net.double().train()


@pytest.mark.parametrize("bns", [(nn.BatchNorm2d, nn.BatchNorm1d),
                                 (bt.BatchNorm2d, bt.BatchNorm1d)])
def test_fold_model_equals_the_eval_model_and_leaves_it_untouched(bns):
    torch.manual_seed(0)
    net = make_net(*bns)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = 5 * torch.randn(4, 3, 8, 8, dtype=torch.float64) + 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything folds: no warning
        folded = fold(net)
    assert batch_norm_layers(folded) == [] and not folded.training
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) == 6 + 1
    # the input: same classes, same state, still in training mode
    assert len(batch_norm_layers(net)) == 6 and net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), **tolerance(torch.float64, 72))


def test_fold_model_matches_torch_fuse_modules():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 5), nn.BatchNorm1d(5)).double()
    trained(net[1], 0), trained(net[5], 1)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import fuse_modules
        theirs = fuse_modules(net, [["0", "1"], ["4", "5"]])
    ours = fold(net)
    for k in (0, 4):
        torch.testing.assert_close(ours[k].weight, theirs[k].weight, **tolerance(torch.float64))
        torch.testing.assert_close(ours[k].bias, theirs[k].bias, **tolerance(torch.float64))
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **tolerance(torch.float64, 54))


def test_unfoldable_batch_norms_stay_and_are_reported():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.BatchNorm1d(6),            # after ReLU
                        nn.Linear(6, 6), nn.BatchNorm1d(6, track_running_stats=False),
                        nn.Linear(6, 3), nn.BatchNorm1d(3))                       # foldable
    with pytest.warns(UserWarning, match=r"left 2 BatchNorm layer\(s\) unfolded: '2': follows "
                                         r"ReLU.*'4': no running statistics"):
        folded = fold(net)
    assert isinstance(folded[2], nn.BatchNorm1d) and isinstance(folded[4], nn.BatchNorm1d)
    assert isinstance(folded[6], nn.Identity) and not folded[2].training
    with pytest.raises(ValueError, match="left 2 BatchNorm layer"):
        fold(net, strict=True)

    class Custom(nn.Module):  # BatchNorm held directly by a custom module: order unknown
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x))
    with pytest.warns(UserWarning, match="'bn': not inside an nn.Sequential"):
        fold(Custom())
    with pytest.warns(UserWarning, match="'<model>': follows nothing|'<model>': not inside"):
        fold(nn.BatchNorm1d(3))


def test_fold_folds_frozen_batch_norm():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), trained(nn.BatchNorm1d(4)), nn.ReLU()).double()
    frozen = freeze_batch_norm(copy.deepcopy(net))
    assert isinstance(frozen[1], FrozenBatchNorm1d)
    x = torch.randn(3, 2, 7, dtype=torch.float64)
    folded = fold(frozen)
    assert isinstance(folded[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), **tolerance(torch.float64, 6))


def test_fold_rejects_a_non_module():
    with pytest.raises(ValueError, match="expected an nn.Module; got list"):
        fold([nn.Linear(2, 2)])


# --- precise_batch_norm ----------------------------------------------------------------------

def two_bn_net(bn_class=bt.BatchNorm1d):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), bn_class(8), nn.ReLU(), nn.Linear(8, 5), bn_class(5))
    return net.double()


def inputs_in_train_mode(net, batches):
    """Each BatchNorm's input over ``batches``, with the net in training mode, computed by
    hand: layer 4 sees Linear(ReLU(BN(Linear(x)))) with layer 1 normalized by the batch's own
    mean and biased variance (eq-bn-xhat). Returns two lists of (batch, C) tensors."""
    z1s, z2s = [], []
    with torch.no_grad():
        for xb in batches:
            z1 = net[0](xb)
            h = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + net[1].eps)
            z2 = net[3](torch.relu(h * net[1].weight + net[1].bias))
            z1s.append(z1)
            z2s.append(z2)
    return z1s, z2s


@pytest.mark.parametrize("bn_class", [bt.BatchNorm1d, nn.BatchNorm1d])
def test_population_statistics_pool_every_value_in_train_mode(bn_class):
    net = two_bn_net(bn_class)
    x = 5 * torch.randn(50, 6, dtype=torch.float64) + 12
    sizes = [8, 13, 5, 20]  # unequal batches: pooling weighs each value alike
    batches = list(x[:46].split(sizes))
    net[1].momentum = 0.3
    net.eval()
    precise_batch_norm(net, [(xb, None) for xb in batches])  # (x, y) pairs, as a DataLoader
    z1s, z2s = inputs_in_train_mode(net, batches)
    tol = tolerance(torch.float64, 46)
    for layer, zs in ((net[1], z1s), (net[4], z2s)):
        z = torch.cat(zs)  # (46, C): all the values the layer received
        torch.testing.assert_close(layer.running_mean, z.mean(0), **tol)
        torch.testing.assert_close(layer.running_var, z.var(0, unbiased=True), **tol)
    # nothing else changed: momentum, mode, counter, weights
    assert net[1].momentum == 0.3 and not net.training
    assert int(net[1].num_batches_tracked) == 0
    torch.testing.assert_close(net[0].weight, two_bn_net(bn_class)[0].weight)


def test_batch_average_averages_batch_means_and_unbiased_variances():
    net = two_bn_net()
    x = 5 * torch.randn(50, 6, dtype=torch.float64) + 12
    batches = list(x[:46].split([8, 13, 5, 20]))
    precise_batch_norm(net, iter(batches), estimator="batch_average")  # a one-shot iterator
    z1s, z2s = inputs_in_train_mode(net, batches)
    tol = tolerance(torch.float64, 46)
    for layer, zs in ((net[1], z1s), (net[4], z2s)):
        torch.testing.assert_close(layer.running_mean, torch.stack([z.mean(0) for z in zs]).mean(0),
                                   **tol)
        torch.testing.assert_close(layer.running_var,
                                   torch.stack([z.var(0, unbiased=True) for z in zs]).mean(0),
                                   **tol)
    # pooled and averaged differ: unequal batches and the spread of the batch means
    pooled = precise_batch_norm(two_bn_net(), batches)
    assert not torch.allclose(pooled[1].running_var, net[1].running_var, rtol=1e-3)


def test_tensor_form_equals_iterable_form_and_old_statistics_do_not_matter():
    x = torch.randn(40, 6, dtype=torch.float64)
    a, b = two_bn_net(), two_bn_net()
    with torch.no_grad():
        a[1].running_mean.fill_(100.0)
        a[4].running_var.fill_(1e-3)
    precise_batch_norm(a, x, batch_size=10)  # num_batches: every full batch (4)
    precise_batch_norm(b, list(x.split(10)))
    for k in (1, 4):
        assert torch.equal(a[k].running_mean, b[k].running_mean)
        assert torch.equal(a[k].running_var, b[k].running_var)
    with torch.no_grad():  # four batches of layer 1: the mean of all 40 inputs
        torch.testing.assert_close(a[1].running_mean, a[0](x).mean(0), **tolerance(torch.float64))


def test_eval_mode_statistics_are_what_the_deployed_network_normalizes():
    net = nn.Sequential(nn.Linear(6, 8), bt.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(8, 5), bt.BatchNorm1d(5)).double()
    x = 5 * torch.randn(60, 6, dtype=torch.float64) + 12
    net.train()
    precise_batch_norm(net, x, 20, mode="eval")
    assert net.training  # mode restored
    tol = tolerance(torch.float64, 60)
    with torch.no_grad():  # by hand: layer 1 sees Linear(x); layer 5 its eval-mode successor
        z1 = net[0](x)
        torch.testing.assert_close(net[1].running_mean, z1.mean(0), **tol)
        torch.testing.assert_close(net[1].running_var, z1.var(0), **tol)
        z2 = net[4](torch.relu(eval_by_hand(net[1], z1)))  # dropout off in eval mode
        torch.testing.assert_close(net[5].running_mean, z2.mean(0), **tol)
        torch.testing.assert_close(net[5].running_var, z2.var(0), **tol)
        # so the eval-mode network standardizes the calibration data exactly (before affine)
        out = net.eval()(x)
        h = (out - net[5].bias) / net[5].weight
        torch.testing.assert_close(h.mean(0), torch.zeros(5, dtype=torch.float64), **tol)
        var = net[5].running_var
        torch.testing.assert_close(h.var(0), var / (var + net[5].eps), **tol)  # 1 but for eps


def test_precise_statistics_of_a_conv_layer_pool_batch_and_space():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).double()
    x = 5 * torch.randn(12, 2, 6, 6, dtype=torch.float64) + 12
    precise_batch_norm(net, x, 4)
    with torch.no_grad():
        z = net[0](x).transpose(0, 1).reshape(3, -1)  # (C, N * H * W)
    tol = tolerance(torch.float64, z.shape[1])
    torch.testing.assert_close(net[1].running_mean, z.mean(1), **tol)
    torch.testing.assert_close(net[1].running_var, z.var(1), **tol)


def test_precise_batch_norm_rejects_bad_arguments():
    net, x = two_bn_net(), torch.randn(10, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="found none"):
        precise_batch_norm(nn.Linear(3, 3), torch.randn(10, 3), 2)
    with pytest.raises(ValueError, match=r"num_batches \* batch_size <= 10"):
        precise_batch_norm(net, x, 4, 3)
    with pytest.raises(ValueError, match="expected batch_size with a tensor"):
        precise_batch_norm(net, x)
    with pytest.raises(ValueError, match="batch_size applies to a tensor"):
        precise_batch_norm(net, [x], 5)
    with pytest.raises(ValueError, match="expected estimator in"):
        precise_batch_norm(net, x, 5, estimator="ema")
    with pytest.raises(ValueError, match="expected mode in"):
        precise_batch_norm(net, x, 5, mode="test")
    with pytest.raises(ValueError, match="expected 3 batches; the data gave 2"):
        precise_batch_norm(net, [x[:5], x[5:]], num_batches=3)
    with pytest.raises(ValueError, match="is int"):
        precise_batch_norm(net, [x, 3])
    with pytest.raises(ValueError, match="at least 2 values per channel in every batch"):
        precise_batch_norm(net, [x[:5], x[5:6]], estimator="batch_average", mode="eval")

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.BatchNorm1d(6), nn.BatchNorm1d(6)

        def forward(self, x):
            return self.used(x)  # spare is registered but never called
    with pytest.raises(ValueError, match=r"\['spare'\] never ran"):
        precise_batch_norm(Unused().double(), x, 5)


# --- Frozen BatchNorm and the fine-tuning traps ----------------------------------------------

FROZEN = [(nn.BatchNorm1d, FrozenBatchNorm1d, (6, 4)),
          (bt.BatchNorm1d, FrozenBatchNorm1d, (6, 4, 5)),
          (nn.BatchNorm2d, FrozenBatchNorm2d, (3, 4, 5, 5)),
          (bt.BatchNorm3d, FrozenBatchNorm3d, (2, 4, 2, 3, 3))]


@pytest.mark.parametrize("bn_class, frozen_class, shape", FROZEN)
def test_frozen_batch_norm_is_eval_batch_norm_in_either_mode(bn_class, frozen_class, shape):
    bn = trained(bn_class(4).double())
    frozen = freeze_batch_norm(nn.Sequential(bn))[0]
    assert type(frozen) is frozen_class and list(frozen.parameters()) == []
    x = (5 * torch.randn(shape, dtype=torch.float64) + 12).requires_grad_()
    dy = torch.randn(shape, dtype=torch.float64)  # a random upstream gradient
    for mode in (True, False):
        frozen.train(mode)
        y = frozen(x)
        torch.testing.assert_close(y, eval_by_hand(bn, x), **tolerance(torch.float64))
        (dx,) = torch.autograd.grad(y, x, dy)
        (dx_bn,) = torch.autograd.grad(bn.eval()(x), x, dy)  # eq-bn-dx-eval
        torch.testing.assert_close(dx, dx_bn, **tolerance(torch.float64))
    assert all(b.grad is None and not b.requires_grad for b in frozen.buffers())


def test_frozen_state_dict_has_batch_norm_keys_and_loads_a_batch_norm():
    bn = trained(nn.BatchNorm2d(4))
    frozen = FrozenBatchNorm2d(4)
    assert set(frozen.state_dict()) == set(bn.state_dict()) - {"num_batches_tracked"}
    frozen.load_state_dict(bn.state_dict())  # strict: num_batches_tracked is dropped
    for key, value in frozen.state_dict().items():
        assert torch.equal(value, bn.state_dict()[key]), key
    assert "FrozenBatchNorm2d(4, eps=1e-05)" == repr(frozen)


def test_freeze_batch_norm_without_affine_and_with_other_parameters_kept():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU())
    trained(net[1])
    conv_weight = net[0].weight
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        expected = net.eval()(x)
    out = freeze_batch_norm(net.train())
    assert out is net and net[0].weight is conv_weight  # in place; the same Parameter
    assert torch.equal(net[1].weight, torch.ones(4)) and torch.equal(net[1].bias, torch.zeros(4))
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected)  # in training mode
    assert isinstance(freeze_batch_norm(bt.BatchNorm2d(3)), FrozenBatchNorm2d)  # a bare layer


def test_freeze_batch_norm_refuses_layers_without_statistics_and_changes_nothing():
    net = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3),
                        nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="'2' has track_running_stats=False"):
        freeze_batch_norm(net)
    assert isinstance(net[0], nn.BatchNorm1d)  # validated before changing anything
    with pytest.raises(ValueError, match="expected a BatchNorm layer; got Linear"):
        FrozenBatchNorm1d.from_batch_norm(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="expected 4D input"):
        FrozenBatchNorm2d(3)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="expected 3 channels"):
        FrozenBatchNorm1d(3)(torch.randn(2, 4))


def fine_tune(net, steps=3):
    """A few SGD steps on random data, as fine-tuning would take (on the trainable layers)."""
    torch.manual_seed(5)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    net.train()
    for _ in range(steps):
        x = 5 * torch.randn(8, 4) + 12
        loss = F.cross_entropy(net(x), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()


def backbone_and_head(bn_class):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 6), bn_class(6), nn.ReLU(), nn.Linear(6, 3))
    trained(net[1])
    return net


@pytest.mark.parametrize("bn_class", [nn.BatchNorm1d, bt.BatchNorm1d])
def test_trap_requires_grad_false_alone_still_uses_and_updates_batch_statistics(bn_class):
    net = backbone_and_head(bn_class)
    for p in list(net[0].parameters()) + list(net[1].parameters()):
        p.requires_grad_(False)  # "frozen" backbone, as far as the optimizer knows
    before = net[1].running_mean.clone()
    x = 5 * torch.randn(8, 4) + 12
    net.train()
    with torch.no_grad():
        y_train = net[1](net[0](x))
    net.eval()
    with torch.no_grad():
        y_eval = net[1](net[0](x))
    assert not torch.allclose(y_train, y_eval, atol=1e-2)  # batch statistics in train mode
    fine_tune(net)
    assert not torch.allclose(net[1].running_mean, before)  # and the buffers moved


@pytest.mark.parametrize("bn_class", [nn.BatchNorm1d, bt.BatchNorm1d])
def test_trap_model_train_undoes_bn_eval(bn_class):
    net = backbone_and_head(bn_class)
    net[1].eval()
    before = net[1].running_mean.clone()
    net.train()  # what every training loop does at the start of an epoch
    assert net[1].training
    fine_tune(net)
    assert not torch.allclose(net[1].running_mean, before)


@pytest.mark.parametrize("bn_class", [nn.BatchNorm1d, bt.BatchNorm1d])
def test_frozen_batch_norm_survives_model_train_and_fine_tuning(bn_class):
    net = backbone_and_head(bn_class)
    original = copy.deepcopy(net[1])
    freeze_batch_norm(net)
    state = {k: v.clone() for k, v in net[1].state_dict().items()}
    net.train()
    fine_tune(net)  # trains both Linear layers; the frozen layer has nothing to train
    assert isinstance(net[1], FrozenBatchNorm1d) and net.training and net[1].training
    for key, value in net[1].state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not torch.equal(net[0].weight, backbone_and_head(bn_class)[0].weight)
    z = net[0](5 * torch.randn(8, 4) + 12).detach()
    with torch.no_grad():  # in training mode, still the eval-mode map of the original layer
        torch.testing.assert_close(net[1](z), eval_by_hand(original, z))


# --- one mechanism, old import paths, the timing helper --------------------------------------

def test_old_import_paths_are_the_same_functions():
    from bnlab.experiments import inference as ex_inference
    from bnlab.experiments import overhead
    from bnlab.torch import inference

    assert overhead.fold_batch_norm is inference.fold_batch_norm
    assert ex_inference.batch_norm_layers is inference.batch_norm_layers
    assert ex_inference.is_batch_norm is inference.is_batch_norm


def test_resnet_like_folds_completely_and_fold_step_times_restores_the_model():
    from bnlab.experiments.overhead import fold_step_times, resnet_like

    torch.manual_seed(6)
    net = resnet_like(bt.BatchNorm2d, channels=(4, 8))
    for k, bn in enumerate(batch_norm_layers(net)):
        trained(bn, k)
    net.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded = fold(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), **tolerance(torch.float32, 9 * 8))
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    times = fold_step_times(net, x, repeats=2, warmup=0)
    assert set(times) == {"unfolded", "folded"} and min(times.values()) > 0
    assert net.training and len(batch_norm_layers(net)) == 6
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
