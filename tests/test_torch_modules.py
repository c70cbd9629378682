"""bnlab.torch's modules as drop-in replacements for torch.nn's, and convert()."""

import io

import pytest
import torch
from torch import nn

import bnlab.torch as bt
from bnlab.tolerances import tolerance

PAIRS = [(nn.BatchNorm1d, bt.BatchNorm1d, (8, 3)), (nn.BatchNorm1d, bt.BatchNorm1d, (4, 3, 5)),
         (nn.BatchNorm2d, bt.BatchNorm2d, (4, 3, 5, 6)),
         (nn.BatchNorm3d, bt.BatchNorm3d, (2, 3, 2, 3, 4))]
OPTIONS = [dict(), dict(momentum=None), dict(momentum=0.3, eps=1e-3), dict(affine=False),
           dict(bias=False),
           dict(track_running_stats=False), dict(affine=False, track_running_stats=False)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def twins(theirs_cls, ours_cls, options, device="cpu", dtype=torch.float64):
    torch.manual_seed(0)
    theirs = theirs_cls(3, **options, device=device, dtype=dtype)
    ours = ours_cls(3, **options, device=device, dtype=dtype)
    if theirs.affine:  # random gamma and beta, the same in both
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            if theirs.bias is not None:
                theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def step(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    for p in module.parameters():
        p.grad = None
    return [y.detach()] + grads


def assert_same_state(ours, theirs, dtype):
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, **tolerance(dtype, 100))


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("theirs_cls, ours_cls, shape", PAIRS, ids=lambda v: str(v))
def test_module_matches_torch_nn_in_train_then_eval(theirs_cls, ours_cls, shape, options,
                                                    device="cpu", dtype=torch.float64):
    theirs, ours = twins(theirs_cls, ours_cls, options, device, dtype)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    gen = torch.Generator(device="cpu").manual_seed(1)
    for mode in ("train", "train", "train", "eval", "eval"):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        x = (5 * torch.randn(shape, generator=gen, dtype=dtype) + 12).to(device)
        dy = torch.randn(shape, generator=gen, dtype=dtype).to(device)
        for a, b in zip(step(ours, x, dy), step(theirs, x, dy)):
            torch.testing.assert_close(a, b, **tolerance(dtype, shape[0] * 10))
        assert_same_state(ours, theirs, dtype)


def test_num_batches_tracked_and_cumulative_average():
    """momentum=None: running_mean is the plain average of the batch means (eq-bn-cma)."""
    bn = bt.BatchNorm1d(2, momentum=None, dtype=torch.float64)
    means = []
    for k in range(5):
        x = torch.randn(6, 2, dtype=torch.float64) + k
        means.append(x.mean(0))
        bn(x)
    assert bn.num_batches_tracked.item() == 5
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0))


def test_state_dict_round_trips_between_torch_nn_and_bnlab():
    theirs = nn.BatchNorm2d(4)
    theirs(torch.randn(3, 4, 2, 2) * 3 + 1)  # non-default buffers
    buffer = io.BytesIO()
    torch.save(theirs.state_dict(), buffer)
    buffer.seek(0)
    ours = bt.BatchNorm2d(4)
    ours.load_state_dict(torch.load(buffer))
    back = nn.BatchNorm2d(4)
    back.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_old_state_dict_without_num_batches_tracked_loads():
    state = nn.BatchNorm1d(3).state_dict()  # an OrderedDict carrying _metadata
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    ours = bt.BatchNorm1d(3)
    ours.load_state_dict(state)
    assert ours.num_batches_tracked.item() == 0


def test_running_update_does_not_grow_the_autograd_graph():
    bn = bt.BatchNorm1d(3)
    x = torch.randn(8, 3, requires_grad=True)
    for _ in range(3):
        bn(x * 2).sum().backward()
    assert not bn.running_mean.requires_grad and bn.running_mean.grad_fn is None
    assert not bn.running_var.requires_grad and bn.running_var.grad_fn is None


@pytest.mark.parametrize("cls, bad_shape", [(bt.BatchNorm1d, (2, 3, 4, 5)),
                                            (bt.BatchNorm2d, (2, 3, 4)),
                                            (bt.BatchNorm3d, (2, 3, 4, 5))])
def test_module_rejects_wrong_rank(cls, bad_shape):
    with pytest.raises(ValueError, match=r"expected .*D input \(got \d+D input"):
        cls(3)(torch.randn(bad_shape))


FUNCTIONAL_ERRORS = [
    (dict(input=torch.randn(5)), "rank 2 to 5"),
    (dict(input=torch.ones(4, 3, dtype=torch.long)), "floating-point"),
    (dict(weight=torch.ones(2)), r"weight of shape \(3,\)"),
    (dict(bias=torch.ones(4)), r"bias of shape \(3,\)"),
    (dict(running_mean=torch.zeros(2)), r"running_mean of shape \(3,\)"),
    (dict(running_var=torch.ones(2)), r"running_var of shape \(3,\)"),
    (dict(input=torch.randn(1, 3)), "Expected more than 1 value per channel when training"),
    (dict(training=False, running_mean=None, running_var=None), "running_mean=None"),
    (dict(eps=0.0), "eps > 0"),
]


@pytest.mark.parametrize("overrides, message", FUNCTIONAL_ERRORS)
def test_functional_bad_input_raises_clear_value_error(overrides, message):
    args = dict(input=torch.randn(4, 3), running_mean=torch.zeros(3), running_var=torch.ones(3),
                weight=torch.ones(3), bias=torch.zeros(3), training=True, eps=1e-5)
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        bt.functional.batch_norm(**args)


def test_batch_size_one_in_training_module_raises_like_torch():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bt.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    bt.BatchNorm2d(3).eval()(torch.randn(1, 3, 1, 1))  # fine in eval


def test_convert_swaps_every_batchnorm_and_keeps_state_and_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(nn.Flatten(), nn.Linear(4 * 4, 5), nn.BatchNorm1d(5)),
                          nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2, affine=False, momentum=None))
    model[1](torch.randn(6, 4, 2, 2) * 2 + 3)  # non-default buffers to carry over
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    converted = bt.convert(model)
    kinds = [type(m) for m in converted.modules()]
    assert not any(k in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) for k in kinds)
    assert kinds.count(bt.BatchNorm2d) == kinds.count(bt.BatchNorm1d) == 1
    assert kinds.count(bt.BatchNorm3d) == 1
    assert converted[1].weight is weight  # same Parameter: optimizers keep working
    assert not converted[1].training
    assert converted[5].momentum is None and not converted[5].affine
    after = converted.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_convert_keeps_dtype():
    layer = bt.convert(nn.BatchNorm1d(3, dtype=torch.float64, bias=False))
    assert isinstance(layer, bt.BatchNorm1d) and layer.weight.dtype == torch.float64
    assert layer.bias is None
    assert layer.running_mean.dtype == torch.float64


@CUDA
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("theirs_cls, ours_cls, shape", PAIRS, ids=lambda v: str(v))
def test_module_matches_torch_nn_on_cuda(theirs_cls, ours_cls, shape, options):
    test_module_matches_torch_nn_in_train_then_eval(theirs_cls, ours_cls, shape, options,
                                                    device="cuda", dtype=torch.float32)


@CUDA
def test_functional_on_cuda_matches_cpu_float64():
    x = torch.randn(16, 8, 7, 7, dtype=torch.float64) * 5 + 12
    dy = torch.randn_like(x)
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_(True)
        y = bt.functional.batch_norm(xd, None, None, training=True)
        y.backward(dy.to(device))
        results.append((y.detach().cpu(), xd.grad.cpu()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **tolerance(torch.float64, 16 * 49))


@pytest.mark.parametrize("shape, dims", [((300, 2048), (0,)), ((5, 7), (0,)), ((6, 5, 4, 3), (0, 2, 3)),
                                         ((6, 5, 4, 3), (2, 3)), ((6, 5, 4), (1,)),
                                         ((4, 3, 5, 6), (1, 3))])
def test_sum_of_products_equals_the_sum_of_the_stored_product(shape, dims):
    # (300, 2048) over 0 takes the block loop (64 rows of float64 a block: 5, the last short)
    from bnlab.torch.normalize import sum_of_products
    a = 5 * torch.randn(shape, dtype=torch.float64) + 12
    b = torch.randn(shape, dtype=torch.float64)
    for u, v in [(a, b), (a, a), (a.transpose(0, -1), b.transpose(0, -1))]:
        expected = (u * v).sum(dim=dims, keepdim=True)
        scale = (u * v).abs().sum(dim=dims, keepdim=True)  # what rounding errors scale with
        assert ((sum_of_products(u, v, dims) - expected).abs() <= 1e-14 * scale).all()


CL_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


@pytest.mark.parametrize("shape, channels_last", [
    ((300, 2048), False),  # a column per channel, 128 rows a block: 3 blocks, the last short
    ((3, 2048, 7, 7), False),  # S = 49 columns per channel, two samples a block
    ((32, 16, 32, 32), False),  # a row per (sample, channel): 256 rows a block, 2 blocks
    ((4, 5, 3, 300), False),  # rows of 900, one block
    ((4, 3, 5, 6), True), ((4, 5, 16, 16), True), ((2, 3, 4, 5, 6), True)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_equals_torch_nn_in_every_matrix_layout(shape, channels_last, training):
    # bnlab.torch's BatchNorm sees x as a matrix of rows or columns per channel
    # (bnlab/torch/per_channel.py); every layout, block count and memory format, float64
    from bnlab.torch.per_channel import ChannelMatrix
    torch.manual_seed(1)
    x = 3 * torch.randn(shape, dtype=torch.float64) + 5
    if channels_last:
        x = x.contiguous(memory_format=CL_FORMATS[len(shape)])
    assert ChannelMatrix(x).channels_last == channels_last
    assert_batch_norm_equals_torch_nn(x, training)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_rows_per_channel_throughout_when_a_sample_is_too_large(monkeypatch,
                                                                           training):
    # y and dx run on the (N, C * S) view unless C * S > ROW_CONSTANTS: then on (N * C, S)
    from bnlab.torch import per_channel
    monkeypatch.setattr(per_channel, "ROW_CONSTANTS", 0)
    x = per_channel.ChannelMatrix(torch.randn(4, 3, 16, 17, dtype=torch.float64))
    assert x.rows_per_channel and x.for_elementwise() is x
    assert_batch_norm_equals_torch_nn(3 * x.x + 5, training)


@pytest.mark.parametrize("training", [True, False])
def test_a_gradient_penalty_through_batch_norm_equals_torch_nn(training):
    # d/d(x, weight, bias) of |dL/dx|^2: the backward differentiated (create_graph=True)
    from bnlab.torch.functional import batch_norm
    torch.manual_seed(2)
    x = 3 * torch.randn(6, 4, 5, dtype=torch.float64) + 5
    params = [torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)]
    running = [torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 1]
    results = []
    for fn in (torch.nn.functional.batch_norm, batch_norm):
        xd, w, b = (t.clone().requires_grad_() for t in [x] + params)
        y = fn(xd, *(t.clone() for t in running), w, b, training=training)
        (dx,) = torch.autograd.grad((y * torch.sin(y)).sum(), xd, create_graph=True)
        results.append(torch.autograd.grad(dx.square().sum(), (xd, w, b)))
    for theirs, ours in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def assert_batch_norm_equals_torch_nn(x, training):
    """bnlab.torch.functional.batch_norm vs torch.nn's: y (and its memory format), dx,
    dweight, dbias with a random dy, running statistics; float64, 1e-10."""
    from bnlab.torch.functional import batch_norm
    dy = torch.randn(x.shape, dtype=torch.float64)
    c = x.shape[1]
    params = [torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)]
    initial = [torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 1]
    results = []
    for fn in (torch.nn.functional.batch_norm, batch_norm):
        running = [t.clone() for t in initial]
        xd, w, b = (t.clone().requires_grad_() for t in [x] + params)
        y = fn(xd, *running, w, b, training=training, momentum=0.2, eps=1e-4)
        y.backward(dy)
        assert y.stride() == x.stride()  # x's memory format kept
        results.append([y.detach(), xd.grad, w.grad, b.grad] + running)
    for ours, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_an_empty_batch_gives_an_empty_output_and_leaves_the_running_statistics(training):
    theirs, ours = twins(nn.BatchNorm2d, bt.BatchNorm2d, dict(momentum=0.3))
    results = []
    for module in (theirs, ours):
        module.train(training)
        x = torch.randn(0, 3, 4, 5, dtype=torch.float64, requires_grad=True)
        y = module(x)
        y.backward(torch.randn(y.shape, dtype=torch.float64))
        results.append([y, x.grad, module.weight.grad, module.bias.grad, module.running_mean,
                        module.running_var, module.num_batches_tracked])
    for a, b in zip(*results):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
    assert ours.running_mean.eq(0).all() and ours.running_var.eq(1).all()  # untouched
    assert ours.weight.grad.eq(0).all() and ours.bias.grad.eq(0).all()  # sums over nothing
