"""bnlab.torch.sync: SyncBatchNorm on several processes equals BatchNorm on the concatenated
batch; the helper, the fallbacks, the errors and the communication count.

The multi-process checks run in two launches (world sizes 2 and 3, gloo on 127.0.0.1,
bnlab.experiments.distributed), each doing every case of its world size; the oracle is
torch.nn's own BatchNorm (not bnlab's) on one process, float64, with a RANDOM upstream
gradient. Errors of correct code are about 1e-14 here; a backward using the local instead of
the global means is off by order 1.
"""

import pytest
import torch
import torch.distributed as dist
from torch import nn

import bnlab.torch as bt
from bnlab.experiments import distributed as D
from bnlab.torch.sync import SyncBatchNorm, convert_sync_batchnorm, sync_batch_norm

# float64 results of reductions of <= 100 numbers of order 10: 1e-14 seen, 1e-10 allowed;
# float32 (one case): 1e-4.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}

CASES = {
    2: [D.make_case([5, 3], name="W2 4-D uneven"),
        D.make_case([4, 4], name="W2 4-D even"),
        D.make_case([6, 2], channels=4, tail=(), seed=1, name="W2 2-D uneven"),
        D.make_case([3, 5], tail=(7,), seed=2, momentum=None, affine=False,
                    name="W2 3-D momentum=None affine=False"),
        D.make_case([5, 3], seed=4, dtype=torch.float32, name="W2 4-D float32"),
        D.make_model_case([3, 5], name="W2 converted model"),
        D.make_case([1, 0], tail=(), expect_error=True, name="W2 one value in all")],
    3: [D.make_case([4, 1, 7], tail=(2, 3), seed=5, name="W3 4-D uneven"),
        D.make_case([4, 1, 7], channels=5, tail=(), seed=6, name="W3 2-D uneven"),
        D.make_case([4, 0, 7], tail=(2, 2, 2), seed=7, name="W3 5-D, one replica empty"),
        D.make_case([2, 2, 2], channels=2, tail=(), seed=8, name="W3 2-D even"),
        D.make_model_case([4, 1, 7], name="W3 converted model")],
}
ALL = [(w, i) for w, cases in CASES.items() for i in range(len(cases))]


@pytest.fixture(scope="module")
def launched():
    """One launch per world size: {world_size: per-case list of the ranks' results}."""
    return {w: D.check_sync(cases, w, timeout_s=150) for w, cases in CASES.items()}


def _ids(pairs):
    return [CASES[w][i]["name"] for w, i in pairs]


NORMAL = [(w, i) for w, i in ALL if not CASES[w][i]["expect_error"]]


@pytest.mark.parametrize("world_size, index", NORMAL, ids=_ids(NORMAL))
def test_equals_single_process_batch_norm(launched, world_size, index):
    case = CASES[world_size][index]
    errors = D.compare(case, launched[world_size][index])
    tol = TOL[case["dtype"]]
    for key in ("y", "dx", "param_grads", "running_stats", "y_eval"):
        assert errors[key] < tol, (key, errors)
    assert errors["num_batches_tracked"] == 0
    assert errors["buffers_identical"]  # every replica holds the same running statistics


@pytest.mark.parametrize("world_size, index", NORMAL, ids=_ids(NORMAL))
def test_collectives_match_the_count(launched, world_size, index):
    """Per layer and step: one all_gather of sync_bytes' forward payload, one all_reduce of
    its backward payload; none in eval mode."""
    case = CASES[world_size][index]
    channels = ([case["channels"]] if case["kind"] == "layer" else [5, 6, 4])
    for rank in launched[world_size][index]:
        for forward, backward in rank["collectives"]:
            counts = [D.sync_bytes(c, world_size, case["dtype"]) for c in channels]
            assert forward == [("all_gather", n["forward_payload"]) for n in counts]
            assert backward == [("all_reduce", n["backward_payload"]) for n in counts[::-1]]
        assert rank["eval_collectives"] == []


def test_one_value_over_all_replicas_raises_on_every_rank(launched):
    errors = launched[2][-1]
    assert all("Expected more than 1 value per channel when training" in r["error"]
               and "1 value(s) per channel over all 2 replicas" in r["error"] for r in errors)


def test_empty_replica_gets_empty_output_and_zero_gradients(launched):
    empty = launched[3][2][1]
    assert empty["y"][0].shape == (0, 3, 2, 2, 2) and empty["dx"][0].shape == (0, 3, 2, 2, 2)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in empty["grads"][0].values())


# --- without a process group: exactly bnlab's BatchNorm -------------------------------------

def _pair(shape, **kwargs):
    torch.manual_seed(0)
    c = shape[1]
    ours = SyncBatchNorm(c, dtype=torch.float64, **kwargs)
    plain = {2: bt.BatchNorm1d, 3: bt.BatchNorm1d, 4: bt.BatchNorm2d, 5: bt.BatchNorm3d}[
        len(shape)](c, dtype=torch.float64, **kwargs)
    if ours.weight is not None:
        with torch.no_grad():
            for m in (ours, plain):
                m.weight.copy_(torch.linspace(0.5, 1.5, c, dtype=torch.float64))
                m.bias.copy_(torch.linspace(-1, 1, c, dtype=torch.float64))
    return ours, plain


def _train_and_eval(module, shape):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        x = (5 * torch.randn(shape, generator=g, dtype=torch.float64) + 12).requires_grad_()
        y = module(x)
        y.backward(torch.randn(shape, generator=g, dtype=torch.float64))
        out += [y.detach(), x.grad]
    module.eval()
    out.append(module(5 * torch.randn(shape, generator=g, dtype=torch.float64) + 12).detach())
    out += [p.grad for p in module.parameters()] + list(module.buffers())
    return out


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (4, 3, 2, 5), (2, 3, 2, 2, 3)])
@pytest.mark.parametrize("kwargs", [{}, dict(momentum=None), dict(affine=False),
                                    dict(track_running_stats=False)])
def test_not_initialized_is_batch_norm(shape, kwargs):
    assert not dist.is_initialized()
    ours, plain = _pair(shape, **kwargs)
    for a, b in zip(_train_and_eval(ours, shape), _train_and_eval(plain, shape), strict=True):
        assert torch.equal(a, b)


def test_world_of_one_is_batch_norm_without_collectives():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ours, plain = _pair((4, 3, 2, 5))
        with D._CollectiveLog() as log:
            got = _train_and_eval(ours, (4, 3, 2, 5))
        assert log.calls == []
        for a, b in zip(got, _train_and_eval(plain, (4, 3, 2, 5)), strict=True):
            assert torch.equal(a, b)
    finally:
        dist.destroy_process_group()


def test_same_interface_as_torch_sync_batch_norm():
    ours, theirs = SyncBatchNorm(5, momentum=0.3), nn.SyncBatchNorm(5, momentum=0.3)
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    assert SyncBatchNorm(4, affine=False, track_running_stats=False).state_dict() == {}
    group = object()
    assert SyncBatchNorm(4, process_group=group).process_group is group


# --- errors -----------------------------------------------------------------------------------

def test_errors_say_expected_and_got():
    layer = SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"expected 3 channels on axis 1.*shape \(4, 5, 2\)"):
        layer(torch.randn(4, 5, 2))
    with pytest.raises(ValueError, match=r"rank at least 2.*shape \(3,\)"):
        layer(torch.randn(3))
    with pytest.raises(ValueError, match="floating-point input; got dtype torch.int64"):
        layer(torch.ones(4, 3, dtype=torch.long))
    assert int(layer.num_batches_tracked) == 0  # a refused input counts no step
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"expected weight of shape \(3,\).*got shape \(2,\)"):
        sync_batch_norm(torch.randn(4, 3), None, None, torch.ones(2))
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        sync_batch_norm(torch.randn(4, 3), torch.zeros(3), None)


# --- convert_sync_batchnorm --------------------------------------------------------------------

def _net():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), bt.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv3d(4, 4, 1), nn.BatchNorm3d(4, momentum=None, affine=False)),
        nn.Flatten(), nn.LazyLinear(6), nn.BatchNorm1d(6, eps=1e-3), nn.LayerNorm(6),
        bt.GhostBatchNorm1d(6, virtual_batch_size=2), nn.SyncBatchNorm(6)).double()


def _forward(model, x):
    return model[7:](model[5:7](model[4](model[:4](x).unsqueeze(2)).squeeze(2)))


def test_convert_swaps_batch_norms_and_keeps_state():
    x = 5 * torch.randn(8, 2, 5, 5, dtype=torch.float64) + 12
    model = _net()
    _forward(model, x)  # materialize LazyLinear and move running statistics off their start
    model.eval()
    expected = _forward(model, x)
    params = {k: p for k, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    group = object()
    converted = convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    kinds = [type(m).__name__ for m in converted.modules()]
    assert kinds.count("SyncBatchNorm") == 5 and "GhostBatchNorm1d" in kinds
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.BatchNorm3d,
                                  nn.SyncBatchNorm, bt.BatchNorm2d))
                   for m in converted.modules())
    assert all(m.process_group is group for m in converted.modules()
               if isinstance(m, SyncBatchNorm))
    assert all(p is params[k] for k, p in converted.named_parameters())  # the same Parameters
    assert converted.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in converted.state_dict().items())
    assert not any(m.training for m in converted.modules())
    assert converted[4][1].momentum is None and converted[7].eps == 1e-3
    # eval output unchanged (torch's kernels and bnlab's round differently: not bitwise)
    torch.testing.assert_close(_forward(converted, x), expected, rtol=1e-12, atol=1e-12)


def test_convert_a_bare_layer_and_training_output():
    x = 5 * torch.randn(6, 3, 4, dtype=torch.float64) + 12
    layer = nn.BatchNorm1d(3, momentum=0.2).double()
    ours = convert_sync_batchnorm(layer)
    assert type(ours) is SyncBatchNorm and ours.training and ours.momentum == 0.2
    assert ours.weight is layer.weight and ours.running_mean is layer.running_mean
    torch.testing.assert_close(ours(x), nn.BatchNorm1d(3, momentum=0.2).double()(x),
                               rtol=1e-12, atol=1e-12)
    assert int(layer.num_batches_tracked) == 1  # shared buffers, as torch's helper does


# --- the communication count -------------------------------------------------------------

def test_sync_bytes_by_hand():
    # one layer of 64 channels, 4 replicas, float32: forward gathers (1 + 64 + 64) float64,
    # backward all-reduces (64 + 64) float32
    n = D.sync_bytes(64, 4, torch.float32)
    assert n == dict(collectives=2, forward_payload=129 * 8, backward_payload=128 * 4,
                     gathered=4 * 129 * 8, ring_sent=3 * 129 * 8 + 2 * 3 / 4 * 128 * 4)
    assert D.sync_bytes(64, 4, torch.float16)["backward_payload"] == 128 * 4  # float32 sums
    assert D.sync_bytes(64, 4, torch.float64)["backward_payload"] == 128 * 8
    channels = D.resnet50_bn_channels()
    assert len(channels) == 53 and sum(channels) == 26560
    total = D.network_sync_bytes(channels, 8)
    assert total["collectives"] == 106
    assert total["forward_payload"] == (2 * 26560 + 53) * 8
    assert total["backward_payload"] == 2 * 26560 * 4


def test_time_sync_runs():
    result = D.time_sync(2, batch=4, size=8, channels=(4, 8), steps=2, warmup=1,
                         latency_calls=3)
    assert result["local"] > 0 and result["sync"] > 0
    assert set(result["latency"]) == {"all_gather", "all_reduce"}


def test_a_failing_worker_raises_in_the_parent():
    with pytest.raises(Exception, match="has 2 splits for a world of 1 processes"):
        D.check_sync([D.make_case([2, 2])], world_size=1, timeout_s=60)
