"""bnlab.torch's normalization family: functional forms against torch.nn.functional (same
signatures), gradcheck on the one autograd Function for every member, Batch Renorm and Ghost
BatchNorm against bnlab.numpy and torch.nn.BatchNorm, drop-in modules, convert, errors.
"""

import copy
import inspect
import io
from math import prod

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import bnlab.numpy as bnp
import bnlab.torch as bt
import bnlab.torch.functional as bf
from bnlab.tolerances import tolerance

F64 = torch.float64


def shifted(shape, gen, dtype=F64):
    return 5 * torch.randn(shape, generator=gen, dtype=dtype) + 12


def grads_of(fn, inputs, dy):
    """y and the gradients of sum(fn(*inputs) * dy) by autograd (None for None inputs)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [None if t is None else t.grad for t in leaves]


def centring_factor(rows):
    """bnlab.tolerances: centring rows with |mean| >> std loses log10(|mean| / std) digits in
    any implementation, so tolerances scale by 1 + |mean| / std (small reductions of
    5 * randn + 12 can have a small std). rows: (R, m), one reduction per row."""
    std = rows.std(dim=1, unbiased=False)
    keep = std > 0
    ratio = rows.mean(dim=1).abs()[keep] / std[keep]
    return 1.0 + (ratio.max().item() if ratio.numel() else 0.0)


def assert_same(ours, theirs, dtype, m, factor=1.0):
    tol = {k: v * factor for k, v in tolerance(dtype, m).items()}
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if b is None:
            assert a is None, i
        else:
            torch.testing.assert_close(a, b, **tol, msg=f"output {i}")


@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm", "rms_norm",
                                  "batch_norm"])
def test_functional_signatures_are_torch_nn_functionals(name):
    """torch's parameters, in torch's order, with torch's defaults; anything more (batch_norm's
    ``backend``) is keyword-only, so no call written for torch can reach it."""
    ours = list(inspect.signature(getattr(bf, name)).parameters.values())
    theirs = list(inspect.signature(getattr(F, name)).parameters.values())
    assert [(p.name, p.default, p.kind) for p in ours[:len(theirs)]] == \
        [(p.name, p.default, p.kind) for p in theirs]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):])


# --- functional forms against torch.nn.functional -----------------------------------------

def functional_cases(shape, gen, dtype):
    """(name, ours, theirs, inputs, reduction length, centring factor) for one shape."""
    c, k2 = shape[1], tuple(shape[-2:])
    x = shifted(shape, gen, dtype)
    w_c = 1 + 0.5 * torch.randn(c, generator=gen, dtype=dtype)
    b_c = torch.randn(c, generator=gen, dtype=dtype)
    w_k = 1 + 0.5 * torch.randn(k2, generator=gen, dtype=dtype)
    b_k = torch.randn(k2, generator=gen, dtype=dtype)
    n = shape[0]
    return [
        ("layer_norm", lambda x_, w, b: bf.layer_norm(x_, k2, w, b),
         lambda x_, w, b: F.layer_norm(x_, k2, w, b), (x, w_k, b_k), prod(k2),
         centring_factor(x.reshape(-1, prod(k2)))),  # one row per normalized slice
        ("group_norm", lambda x_, w, b: bf.group_norm(x_, 2, w, b),
         lambda x_, w, b: F.group_norm(x_, 2, w, b), (x, w_c, b_c), prod(shape[1:]) // 2,
         centring_factor(x.reshape(n * 2, -1))),  # (N, C, *spatial) -> (N * G, group)
        ("instance_norm", lambda x_, w, b: bf.instance_norm(x_, weight=w, bias=b),
         lambda x_, w, b: F.instance_norm(x_, weight=w, bias=b), (x, w_c, b_c),
         prod(shape[2:]), centring_factor(x.reshape(n * c, -1))),  # -> (N * C, spatial)
        ("rms_norm", lambda x_, w: bf.rms_norm(x_, k2[1:], w),
         lambda x_, w: F.rms_norm(x_, k2[1:], w), (x, w_k[0]), k2[1], 1.0),
        ("rms_norm_no_weight", lambda x_: bf.rms_norm(x_, k2, eps=1e-3),
         lambda x_: F.rms_norm(x_, k2, eps=1e-3), (x,), prod(k2), 1.0),
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(4, 6, 5), (2, 6, 3, 4), (2, 6, 2, 3, 4)])
def test_functional_matches_torch_nn_functional(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    for name, ours, theirs, inputs, m, factor in functional_cases(shape, gen, dtype):
        dy = torch.randn(shape, generator=gen, dtype=dtype)
        assert_same(grads_of(ours, inputs, dy), grads_of(theirs, inputs, dy), dtype, m, factor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_running_statistics_match_torch(dtype, use_input_stats):
    gen = torch.Generator().manual_seed(1)
    buffers = {who: (torch.randn(3, generator=gen, dtype=dtype).abs(),
                     torch.rand(3, generator=gen, dtype=dtype) + 0.5) for who in "ab"}
    buffers["b"] = tuple(t.clone() for t in buffers["a"])
    for _ in range(3):
        x, dy = shifted((4, 3, 5, 2), gen, dtype), torch.randn(4, 3, 5, 2, generator=gen,
                                                             dtype=dtype)
        w, b = torch.rand(3, dtype=dtype) + 0.5, torch.randn(3, dtype=dtype)
        results = [grads_of(lambda x_, w_, b_, fn=fn, rs=rs: fn(
            x_, *rs, w_, b_, use_input_stats, 0.2), (x, w, b), dy)
            for fn, rs in ((bf.instance_norm, buffers["a"]), (F.instance_norm, buffers["b"]))]
        assert_same(*results, dtype, 10)
    assert_same(buffers["a"], buffers["b"], dtype, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm_default_eps_is_finfo_eps(dtype):
    x = 1e-7 * torch.randn(3, 8, dtype=dtype)
    torch.testing.assert_close(bf.rms_norm(x, [8]), F.rms_norm(x, [8]), **tolerance(dtype, 8))
    assert not torch.allclose(bf.rms_norm(x, [8]), bf.rms_norm(x, [8], eps=0.0), rtol=1e-3)


@settings(max_examples=20)
@given(n=st.integers(2, 4), c=st.sampled_from([2, 4, 6]), spatial=st.lists(
    st.integers(2, 3), min_size=1, max_size=3), eps=st.sampled_from([1e-5, 1e-2]),
       seed=st.integers(0, 2**16))
def test_hypothesis_functional_matches_torch(n, c, spatial, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, c, *spatial)
    for name, ours, theirs, inputs, m, factor in functional_cases(shape, gen, F64):
        dy = torch.randn(shape, generator=gen, dtype=F64)
        assert_same(grads_of(ours, inputs, dy), grads_of(theirs, inputs, dy), F64, m, factor)


# --- gradcheck: the Function's hand-written backward against its own forward -------------

def gradcheck(fn, *inputs):
    """First derivatives (the closed form) and second ones (the backward differentiated,
    create_graph=True) against finite differences."""
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradgradcheck(fn, leaves)


@pytest.mark.parametrize("shape", [(4, 4, 3), (2, 4, 2, 3)])
def test_gradcheck_layer_group_instance_rms(shape):
    gen = torch.Generator().manual_seed(2)
    for name, ours, _, inputs, _, _ in functional_cases(shape, gen, F64):
        gradcheck(ours, *inputs)
    rm, rv = torch.randn(4, dtype=F64), torch.rand(4, dtype=F64) + 0.5
    w, b = torch.rand(4, dtype=F64) + 0.5, torch.randn(4, dtype=F64)
    gradcheck(lambda x_, w_, b_: bf.instance_norm(x_, rm.clone(), rv.clone(), w_, b_,
                                                  use_input_stats=False),
              shifted(shape, gen), w, b)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 2, 3)])
def test_gradcheck_ghost_batch_norm(shape):
    gen = torch.Generator().manual_seed(3)
    w, b = torch.rand(3, dtype=F64) + 0.5, torch.randn(3, dtype=F64)
    for training in (True, False):
        rm, rv = torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5
        gradcheck(lambda x_, w_, b_: bf.ghost_batch_norm(
            x_, rm.clone(), rv.clone(), w_, b_, training, virtual_batch_size=2),
            shifted(shape, gen), w, b)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
@pytest.mark.parametrize("regime", ["clipped", "batch_norm", "eval"])
def test_gradcheck_batch_renorm_where_r_and_d_are_locally_constant(shape, regime):
    """gradcheck compares with the full derivative, so it applies where r and d do not
    move with x: clipped (r = 1/rmax, d = +-dmax, with r != 1 and d != 0), rmax=1 and
    dmax=0 (BatchNorm), or eval. The unclipped case is checked in test_family_numpy.py
    with r and d frozen."""
    gen = torch.Generator().manual_seed(4)
    w, b = torch.rand(3, dtype=F64) + 0.5, torch.randn(3, dtype=F64)
    rm, rv = torch.tensor([-500.0, 600.0, 400.0], dtype=F64), torch.full((3,), 1e4, dtype=F64)
    limits = dict(clipped=(2.0, 1.5), batch_norm=(1.0, 0.0), eval=(3.0, 5.0))[regime]
    gradcheck(lambda x_, w_, b_: bf.batch_renorm(
        x_, rm.clone(), rv.clone(), w_, b_, regime != "eval", 0.01, 1e-5, *limits),
        shifted(shape, gen), w, b)


# --- Batch Renorm and Ghost BatchNorm: bnlab.torch against bnlab.numpy ---------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 2, 3)])
@pytest.mark.parametrize("which", ["renorm", "ghost"])
def test_batch_renorm_and_ghost_match_numpy_over_steps(shape, dtype, which):
    gen = torch.Generator().manual_seed(5)
    np_dtype = np.float64 if dtype == F64 else np.float32
    w, b = torch.rand(3, dtype=dtype) + 0.5, torch.randn(3, dtype=dtype)
    rm_t, rv_t = torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)
    rm_n, rv_n = np.zeros(3, np_dtype), np.ones(3, np_dtype)
    for training in (True, True, True, False):
        x, dy = shifted(shape, gen, dtype), torch.randn(shape, generator=gen, dtype=dtype)
        if which == "renorm":
            ours = grads_of(lambda x_, w_, b_: bf.batch_renorm(
                x_, rm_t, rv_t, w_, b_, training, 0.3, 1e-5, 1.5, 0.5), (x, w, b), dy)
            y, cache = bnp.batch_renorm_forward(
                x.numpy(), w.numpy(), b.numpy(), running_mean=rm_n, running_var=rv_n,
                training=training, momentum=0.3, rmax=1.5, dmax=0.5)
            reference = [y, *bnp.batch_renorm_backward(dy.numpy(), cache)]
        else:
            ours = grads_of(lambda x_, w_, b_: bf.ghost_batch_norm(
                x_, rm_t, rv_t, w_, b_, training, 0.3, virtual_batch_size=2), (x, w, b), dy)
            y, cache = bnp.ghost_batch_norm_forward(
                x.numpy(), w.numpy(), b.numpy(), virtual_batch_size=2, running_mean=rm_n,
                running_var=rv_n, training=training, momentum=0.3)
            reference = [y, *bnp.ghost_batch_norm_backward(dy.numpy(), cache)]
        assert_same(ours, [torch.from_numpy(a) for a in reference], dtype, 100)
        assert_same((rm_t, rv_t), (torch.from_numpy(rm_n), torch.from_numpy(rv_n)), dtype, 100)
    assert not torch.allclose(rm_t, torch.zeros(3, dtype=dtype))


# --- modules: drop-in for torch.nn ---------------------------------------------------------

MODULE_PAIRS = [
    (nn.LayerNorm, bt.LayerNorm, ((5,),), (4, 3, 5)),
    (nn.LayerNorm, bt.LayerNorm, (((3, 5),), dict(eps=1e-3)), (4, 3, 5)),
    (nn.LayerNorm, bt.LayerNorm, ((5,), dict(bias=False)), (2, 3, 4, 5)),
    (nn.LayerNorm, bt.LayerNorm, ((5,), dict(elementwise_affine=False)), (4, 3, 5)),
    (nn.GroupNorm, bt.GroupNorm, ((2, 6),), (4, 6, 5)),
    (nn.GroupNorm, bt.GroupNorm, ((3, 6), dict(affine=False, eps=1e-3)), (2, 6, 3, 4)),
    (nn.GroupNorm, bt.GroupNorm, ((1, 6), dict(bias=False)), (2, 6, 2, 3, 2)),
    (nn.RMSNorm, bt.RMSNorm, ((5,),), (4, 3, 5)),
    (nn.RMSNorm, bt.RMSNorm, (((3, 5),), dict(eps=1e-4)), (4, 3, 5)),
    (nn.RMSNorm, bt.RMSNorm, ((5,), dict(elementwise_affine=False)), (4, 3, 5)),
] + [
    (theirs, ours, ((3,), options), shape)
    for theirs, ours, shape in [(nn.InstanceNorm1d, bt.InstanceNorm1d, (4, 3, 5)),
                                (nn.InstanceNorm1d, bt.InstanceNorm1d, (3, 5)),
                                (nn.InstanceNorm2d, bt.InstanceNorm2d, (2, 3, 4, 5)),
                                (nn.InstanceNorm3d, bt.InstanceNorm3d, (2, 3, 2, 3, 2))]
    for options in [dict(), dict(affine=True), dict(track_running_stats=True, momentum=0.3),
                    dict(affine=True, track_running_stats=True, momentum=None),
                    dict(affine=True, bias=False)]
]


def twins(theirs_cls, ours_cls, args, dtype=F64):
    positional, options = args[0], (args[1] if len(args) > 1 else {})
    theirs = theirs_cls(*positional, **options, dtype=dtype)
    ours = ours_cls(*positional, **options, dtype=dtype)
    with torch.no_grad():  # random weight and bias, the same in both
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape, dtype=dtype) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def module_step(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    for p in module.parameters():
        p.grad = None
    return [y.detach()] + grads


@pytest.mark.parametrize("theirs_cls, ours_cls, args, shape", MODULE_PAIRS, ids=str)
def test_module_matches_torch_nn_in_train_then_eval(theirs_cls, ours_cls, args, shape):
    torch.manual_seed(0)
    theirs, ours = twins(theirs_cls, ours_cls, args)
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    gen = torch.Generator().manual_seed(1)
    for mode in ("train", "train", "train", "eval", "eval"):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        x, dy = shifted(shape, gen), torch.randn(shape, generator=gen, dtype=F64)
        assert_same(module_step(ours, x, dy), module_step(theirs, x, dy), F64, 100)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, **tolerance(F64, 100))


def test_state_dicts_interchange_through_a_file():
    gen = torch.Generator().manual_seed(2)
    pairs = [(nn.LayerNorm(5), bt.LayerNorm(5), nn.LayerNorm(5)),
             (nn.GroupNorm(2, 4), bt.GroupNorm(2, 4), nn.GroupNorm(2, 4)),
             (nn.RMSNorm(5), bt.RMSNorm(5), nn.RMSNorm(5)),
             (nn.InstanceNorm1d(4, affine=True, track_running_stats=True),
              bt.InstanceNorm1d(4, affine=True, track_running_stats=True),
              nn.InstanceNorm1d(4, affine=True, track_running_stats=True))]
    for theirs, ours, back in pairs:
        with torch.no_grad():
            for p in theirs.parameters():
                p.normal_(generator=gen)
        if isinstance(theirs, nn.InstanceNorm1d):
            theirs(torch.randn(3, 4, 5, generator=gen) * 3 + 2)  # non-default buffers
        buffer = io.BytesIO()
        torch.save(theirs.state_dict(), buffer)
        buffer.seek(0)
        ours.load_state_dict(torch.load(buffer))
        back.load_state_dict(ours.state_dict())
        for key, value in theirs.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key


def test_instance_norm_module_checks_like_torch():
    with pytest.raises(ValueError, match=r"expected 3D or 4D input \(got 2D"):
        bt.InstanceNorm2d(3)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="match num_features"):
        bt.InstanceNorm1d(4, affine=True)(torch.randn(2, 3, 5))
    with pytest.warns(UserWarning, match="does not match num_features"):
        bt.InstanceNorm1d(4)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        bt.InstanceNorm1d(3)(torch.randn(2, 3, 1))
    norm = bt.InstanceNorm1d(3, track_running_stats=True)
    norm(torch.randn(2, 3, 5))
    assert norm.num_batches_tracked.item() == 0  # torch's InstanceNorm never counts


def test_group_norm_module_rejects_indivisible_channels_like_torch():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups"):
        bt.GroupNorm(4, 6)


# --- Batch Renorm and Ghost BatchNorm modules ------------------------------------------------

def test_batch_renorm_module_with_rmax_1_dmax_0_is_batch_norm():
    gen = torch.Generator().manual_seed(6)
    theirs = nn.BatchNorm2d(3, momentum=0.2, dtype=F64)
    ours = bt.BatchRenorm2d(3, momentum=0.2, rmax=1.0, dmax=0.0, dtype=F64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for mode in ("train", "train", "eval"):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        x, dy = shifted((4, 3, 2, 2), gen), torch.randn(4, 3, 2, 2, generator=gen, dtype=F64)
        assert_same(module_step(ours, x, dy), module_step(theirs, x, dy), F64, 100)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, **tolerance(F64, 100))


def test_batch_renorm_module_follows_the_schedule_and_differs_from_batch_norm_later():
    norm = bt.BatchRenorm1d(3, dtype=F64)
    assert repr(norm) == ("BatchRenorm1d(3, eps=1e-05, momentum=0.01, affine=True, bias=True, "
                          "rmax=None, dmax=None)")
    assert norm.limits() == (1.0, 0.0)
    norm.num_batches_tracked.fill_(40000)
    assert norm.limits() == (3.0, 5.0)
    x = shifted((6, 3), torch.Generator().manual_seed(7))
    y = norm(x)  # running statistics 0 and 1, far from the batch's: r and d clip
    assert norm.num_batches_tracked.item() == 40001
    assert not torch.allclose(y, F.batch_norm(x, None, None, training=True))
    fixed = bt.BatchRenorm1d(3, rmax=2.0, dmax=1.0)
    assert fixed.limits() == (2.0, 1.0)
    with pytest.raises(ValueError, match="rmax >= 1"):
        bt.BatchRenorm1d(3, rmax=0.5)(torch.randn(4, 3))


def test_ghost_batch_norm_module_is_torch_batch_norm_on_each_virtual_batch():
    gen = torch.Generator().manual_seed(8)
    theirs = nn.BatchNorm2d(3, momentum=0.2, dtype=F64)
    ours = bt.GhostBatchNorm2d(3, momentum=0.2, virtual_batch_size=2, dtype=F64)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5, generator=gen)
        theirs.bias.normal_(generator=gen)
    ours.load_state_dict(theirs.state_dict())
    assert repr(ours).endswith("track_running_stats=True, virtual_batch_size=2)")
    for _ in range(2):
        x, dy = shifted((6, 3, 2, 2), gen), torch.randn(6, 3, 2, 2, generator=gen, dtype=F64)
        xt = x.clone().requires_grad_(True)
        torch.cat([theirs(chunk) for chunk in xt.split(2)]).backward(dy)
        expected = [xt.grad, theirs.weight.grad.clone(), theirs.bias.grad.clone()]
        theirs.zero_grad()
        got = module_step(ours, x, dy)
        assert_same(got[1:], expected, F64, 100)
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(ours.state_dict()[key], theirs.state_dict()[key])
    assert ours.num_batches_tracked.item() == 2  # calls, while torch's counted 6 chunks
    ours.eval()
    theirs.eval()
    x = shifted((5, 3, 2, 2), gen)  # eval: any batch size
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(ValueError, match="momentum"):
        bt.GhostBatchNorm1d(3, momentum=None, virtual_batch_size=2)


# --- convert ---------------------------------------------------------------------------

def test_convert_swaps_the_whole_family_and_keeps_outputs_state_and_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 6, 3), nn.GroupNorm(3, 6), nn.InstanceNorm1d(6, affine=True,
                                                                  track_running_stats=True),
        nn.LayerNorm(6), nn.RMSNorm(6, eps=1e-4), nn.BatchNorm1d(6),
        nn.Sequential(nn.Conv2d(1, 2, 1), nn.InstanceNorm2d(2), nn.InstanceNorm3d(2)))
    model[:6](torch.randn(4, 2, 8))  # non-default buffers to carry over
    reference = copy.deepcopy(model)
    weight = model[3].weight
    converted = bt.convert(model)
    kinds = [type(m) for m in converted.modules()]
    for theirs, ours in [(nn.GroupNorm, bt.GroupNorm), (nn.InstanceNorm1d, bt.InstanceNorm1d),
                         (nn.LayerNorm, bt.LayerNorm), (nn.RMSNorm, bt.RMSNorm),
                         (nn.BatchNorm1d, bt.BatchNorm1d), (nn.InstanceNorm2d, bt.InstanceNorm2d),
                         (nn.InstanceNorm3d, bt.InstanceNorm3d)]:
        assert theirs not in kinds and kinds.count(ours) == 1
    assert converted[3].weight is weight and converted[4].eps == 1e-4
    assert list(converted.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    x = torch.randn(4, 2, 8)
    for mode in (True, False):
        converted.train(mode)
        reference.train(mode)
        torch.testing.assert_close(converted[:6](x), reference[:6](x))


# --- errors ----------------------------------------------------------------------------

X = torch.randn(4, 6, 5)
FUNCTIONAL_ERRORS = [
    (lambda: bf.layer_norm(X, [6]), r"\(\*, 6\).*got shape \(4, 6, 5\)"),
    (lambda: bf.layer_norm(X, [5], torch.ones(6)), r"weight of shape \(5,\).*got shape \(6,\)"),
    (lambda: bf.rms_norm(X, []), "at least one dimension"),
    (lambda: bf.group_norm(X, 4), r"num_groups to divide.*= 6; got num_groups=4"),
    (lambda: bf.group_norm(torch.ones(1, 2), 2), "more than 1 value per channel"),
    (lambda: bf.instance_norm(torch.ones(4, 6)), "more than 1 spatial element"),
    (lambda: bf.instance_norm(X, use_input_stats=False), "use_input_stats=False"),
    (lambda: bf.instance_norm(X, torch.zeros(6)), "no running_var"),
    (lambda: bf.batch_renorm(X, None, None, training=True), "corrects the batch statistics"),
    (lambda: bf.batch_renorm(X, torch.zeros(6), torch.ones(6), dmax=-1.0), "dmax >= 0"),
    (lambda: bf.ghost_batch_norm(X, None, None, training=True, virtual_batch_size=3),
     "divisible by virtual_batch_size=3"),
    (lambda: bf.ghost_batch_norm(X, None, None, training=True, virtual_batch_size=1),
     "virtual_batch_size >= 2"),
    (lambda: bt.GhostBatchNorm1d(6, virtual_batch_size=3)(X), "drop_last"),
]


@pytest.mark.parametrize("call, message", FUNCTIONAL_ERRORS)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "got" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_family_on_cuda_matches_cpu_float64():
    gen = torch.Generator().manual_seed(9)
    for name, ours, _, inputs, m, _ in functional_cases((8, 6, 7, 7), gen, F64):
        dy = torch.randn(8, 6, 7, 7, generator=gen, dtype=F64)
        cpu = grads_of(ours, inputs, dy)
        cuda = grads_of(ours, [t.cuda() for t in inputs], dy.cuda())
        assert_same([t.cpu() for t in cuda], cpu, F64, m)
