"""Several processes on one machine, for synchronized BatchNorm: launching, checking, counting
and timing. Shared by tests/test_sync.py and the chapter "BatchNorm across devices".

* ``launch(worker, world_size, *args)``: W fresh processes (torch.multiprocessing, start
  method spawn) joined in a gloo process group on 127.0.0.1; each runs
  ``worker(rank, world_size, *args)`` and its return value is written with torch.save into
  a temporary folder; the parent returns them, by rank. Workers must be module-level
  functions of an importable module (spawn pickles them by name): the ones here are.
* ``check_sync(cases)``: each rank takes its slice of a fixed global batch (uneven splits
  allowed, empty ones too) and runs bnlab's SyncBatchNorm forward and backward with a random
  upstream gradient; ``reference(case)`` is single-process torch.nn BatchNorm on the
  concatenated batch; ``compare`` gives the largest differences.
* ``sync_bytes`` / ``network_sync_bytes``: what SyncBatchNorm communicates per step, counted;
  the check workers also log every collective they issue, so the count is checked against
  what was actually sent.
* ``time_sync``: time per training step of a small conv net, local BatchNorm against
  SyncBatchNorm, both with data parallelism's gradient average, and the latency of one
  small collective.

Every launch costs a few seconds (each process imports torch): do all the work of one world
size in one launch.
"""

import datetime
import os
import socket
import sys
import tempfile
import time
from math import prod
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..torch import modules as bn_modules
from ..torch.sync import SyncBatchNorm, convert_sync_batchnorm

FORWARD_PAYLOAD_DTYPE = torch.float64  # SyncBatchNorm gathers (count, mean, M2) in float64


# --- launching ----------------------------------------------------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, worker, world_size, port, out_dir, args, threads, timeout_s):
    """What each spawned process runs: join the group, run the worker, save its result."""
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):  # gloo's own connections on loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = worker(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def launch(worker, world_size, *args, threads=1, timeout_s=120, attempts=3):
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` processes joined by gloo on
    127.0.0.1; return the list of their return values, by rank.

    A worker that raises makes this raise (torch.multiprocessing.ProcessRaisedException,
    with the worker's traceback; the other processes are terminated). ``timeout_s`` bounds
    each collective and the whole run. ``threads``: torch threads per process. The port is
    one the OS reported free; if another program takes it before rank 0 binds it, the
    launch is retried on a new port (``attempts`` in all).
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"launch: expected world_size >= 1; got {world_size!r}.")
    for attempt in range(attempts):
        try:
            return _launch_once(worker, world_size, args, threads, timeout_s)
        except mp.ProcessRaisedException as error:
            if "address already in use" not in str(error).lower() or attempt + 1 == attempts:
                raise


def _launch_once(worker, world_size, args, threads, timeout_s):
    with tempfile.TemporaryDirectory(prefix="bnlab-dist-") as out_dir:
        context = mp.start_processes(
            _entry, args=(worker, world_size, free_port(), out_dir, args, threads, timeout_s),
            nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"launch: {world_size} processes of {worker.__name__} "
                                       f"did not finish within {timeout_s} s.")
        finally:
            for process in context.processes:  # only ours, and only those still running
                if process.is_alive():
                    process.terminate()
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False)
                for r in range(world_size)]


# --- communication, counted ---------------------------------------------------------------

def sync_bytes(channels, world_size, dtype=torch.float32):
    """Bytes SyncBatchNorm communicates for ONE layer of ``channels`` channels in one training
    step (forward + backward), per replica.

    forward: one all_gather of (count, mean, M2): 2C + 1 float64 values from each replica;
    backward: one all_reduce of (sum dy, sum dy x_hat): 2C values of the compute dtype
    (float32 for float16/bfloat16/float32 inputs, float64 for float64).
    Returns a dict: ``collectives`` (2), ``forward_payload`` and ``backward_payload`` (bytes
    each replica contributes), ``gathered`` (bytes each replica ends up holding after the
    all_gather, W payloads), and ``ring_sent``: bytes each replica sends under the ring
    algorithms, (W - 1) * p for all_gather and 2 (W - 1) / W * p for all_reduce.
    """
    itemsize = torch.empty((), dtype=torch.promote_types(dtype, torch.float32)).element_size()
    forward = (2 * channels + 1) * torch.empty((), dtype=FORWARD_PAYLOAD_DTYPE).element_size()
    backward = 2 * channels * itemsize
    w = world_size
    return dict(collectives=2, forward_payload=forward, backward_payload=backward,
                gathered=w * forward,
                ring_sent=(w - 1) * forward + 2 * (w - 1) / w * backward)


def network_sync_bytes(channel_list, world_size, dtype=torch.float32):
    """``sync_bytes`` summed over the BatchNorm layers of a network (one entry per layer)."""
    total = dict(collectives=0, forward_payload=0, backward_payload=0, gathered=0,
                 ring_sent=0.0)
    for c in channel_list:
        for key, value in sync_bytes(c, world_size, dtype).items():
            total[key] += value
    return total


def resnet50_bn_channels():
    """Channels of ResNet-50's 53 BatchNorm layers, in order: the stem (64), then for each
    bottleneck block (widths 64, 128, 256, 512; 3, 4, 6, 3 blocks) its three BNs
    (width, width, 4 width), and in each stage's first block the downsampling branch's BN
    (4 width)."""
    channels = [64]
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            channels += [width, width, 4 * width]
            if block == 0:
                channels.append(4 * width)
    return channels


def resnet50_parameter_count():
    """Parameters of ResNet-50 (1000 classes) from its architecture: the 7x7 stem
    convolution, each bottleneck's 1x1, 3x3 and 1x1 convolutions (no biases), the
    downsampling 1x1 convolutions, gamma and beta of every BatchNorm, the final linear layer.
    25,557,032, torchvision's count: the bytes data parallelism all-reduces every step."""
    count, c_in = 7 * 7 * 3 * 64 + 2 * 64, 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            count += (c_in * width + 9 * width * width + width * 4 * width  # convolutions
                      + 2 * (width + width + 4 * width))  # their BatchNorms' gamma and beta
            if block == 0:
                count += c_in * 4 * width + 2 * 4 * width  # downsampling branch
            c_in = 4 * width
    return count + 2048 * 1000 + 1000


class _CollectiveLog:
    """Wraps torch.distributed.all_gather and all_reduce to record (name, bytes) of every
    call, so the check can compare what SyncBatchNorm sent with ``sync_bytes``."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        self._saved = dist.all_gather, dist.all_reduce

        def all_gather(tensor_list, tensor, *a, **k):
            self.calls.append(("all_gather", tensor.numel() * tensor.element_size()))
            return self._saved[0](tensor_list, tensor, *a, **k)

        def all_reduce(tensor, *a, **k):
            self.calls.append(("all_reduce", tensor.numel() * tensor.element_size()))
            return self._saved[1](tensor, *a, **k)

        dist.all_gather, dist.all_reduce = all_gather, all_reduce
        return self

    def __exit__(self, *exc):
        dist.all_gather, dist.all_reduce = self._saved
        self.last, self.calls = self.calls, []  # the calls of this with-block
        return False


# --- the check: SyncBatchNorm on W processes == BatchNorm on the concatenated batch -------

def make_case(splits, channels=3, tail=(4, 5), *, seed=0, steps=2, momentum=0.1, affine=True,
              dtype=torch.float64, expect_error=False, name=None):
    """A check case: the global batch of sum(splits) samples of shape (channels, *tail),
    split over len(splits) replicas in that order; ``steps`` training steps in ``dtype``.
    expect_error: the forward pass must raise ValueError on every rank; the ranks return
    its message instead of results."""
    if name is None:
        name = f"{list(splits)} x {(channels,) + tuple(tail)}"
    return dict(name=name, splits=list(splits), channels=channels, tail=tuple(tail),
                seed=seed, steps=steps, momentum=momentum, affine=affine, dtype=dtype,
                expect_error=expect_error, kind="layer")


def make_model_case(splits, *, seed=0, steps=2, name=None):
    """A check case for ``convert_sync_batchnorm``: a small conv net with two BatchNorm2d
    (one torch.nn's, one bnlab's) and a BatchNorm1d, converted, on a split batch."""
    return dict(name=name or f"model {list(splits)}", splits=list(splits), channels=3,
                tail=(6, 6), seed=seed, steps=steps, dtype=torch.float64, expect_error=False,
                kind="model")


def case_inputs(case):
    """Deterministic inputs of a case (the same in every process), drawn in float64 and
    stored in the case's dtype: per step a global input x (shifted and scaled: 5 randn + 12)
    and a RANDOM upstream gradient dy; gamma and beta; and an input for evaluation mode."""
    g = torch.Generator().manual_seed(case["seed"])
    n, c = sum(case["splits"]), case["channels"]
    shape = (n, c) + tuple(case["tail"])

    def randn(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(case["dtype"])

    xs = [5 * randn(*shape) + 12 for _ in range(case["steps"])]
    out_shape = shape if case["kind"] == "layer" else (n, 4)
    dys = [randn(*out_shape) for _ in range(case["steps"])]
    gamma, beta = 1 + 0.5 * randn(c), randn(c)
    return dict(x=xs, dy=dys, gamma=gamma, beta=beta, x_eval=5 * randn(*shape) + 12)


def _small_net(seed, torch_only=False):
    """Conv -> torch.nn BatchNorm2d -> ReLU -> Conv -> bnlab BatchNorm2d (torch.nn's with
    ``torch_only``) -> ReLU -> mean over space -> Linear -> torch.nn BatchNorm1d:
    (N, 3, H, W) -> (N, 4), float64. Same seed, same parameters."""
    torch.manual_seed(seed)
    middle = nn.BatchNorm2d if torch_only else bn_modules.BatchNorm2d
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
        nn.Conv2d(5, 6, 3, padding=1), middle(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4), nn.BatchNorm1d(4),
    ).double()


_TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _layer(case, cls):
    """A BatchNorm layer of class ``cls`` for a layer case, float64, gamma and beta set."""
    data = case_inputs(case)
    layer = cls(case["channels"], momentum=case["momentum"], affine=case["affine"],
                dtype=case["dtype"])
    if case["affine"]:
        with torch.no_grad():
            layer.weight.copy_(data["gamma"])
            layer.bias.copy_(data["beta"])
    return layer, data


def _run(case, module, data, lo, hi, log=None):
    """Train ``module`` for the case's steps on samples lo:hi of each global batch with the
    matching slice of dy; then evaluate on x_eval[lo:hi]. Returns the results."""
    out = dict(y=[], dx=[], grads=[], collectives=[])
    for x, dy in zip(data["x"], data["dy"]):
        module.zero_grad(set_to_none=True)
        x_local = x[lo:hi].clone().requires_grad_(True)
        calls = []
        if log is not None:
            with log:
                y = module(x_local)
            calls.append(log.last)
            with log:
                y.backward(dy[lo:hi])
            calls.append(log.last)
        else:
            y = module(x_local)
            y.backward(dy[lo:hi])
        out["collectives"].append(calls)
        out["y"].append(y.detach())
        out["dx"].append(x_local.grad)
        out["grads"].append({k: (torch.zeros_like(p) if p.grad is None else p.grad.clone())
                             for k, p in module.named_parameters()})
    out["buffers"] = {k: b.clone() for k, b in module.named_buffers()}
    module.eval()
    if log is not None:
        with log, torch.no_grad():
            out["y_eval"] = module(data["x_eval"][lo:hi])
        out["eval_collectives"] = log.last
    else:
        with torch.no_grad():
            out["y_eval"] = module(data["x_eval"][lo:hi])
    return out


def reference(case):
    """Single process, torch.nn (torch's own BatchNorm, not bnlab's), the concatenated batch:
    what every replica's slice must match."""
    n = sum(case["splits"])
    if case["kind"] == "layer":
        module, data = _layer(case, _TORCH_BN[2 + len(case["tail"])])
    else:
        module, data = _small_net(case["seed"], torch_only=True), case_inputs(case)
    return _run(case, module, data, 0, n)


def check_worker(rank, world_size, cases):
    """Runs on every rank: for each case, bnlab SyncBatchNorm (a layer case) or a converted
    small net (a model case) on this rank's slice, logging every collective."""
    results = []
    for case in cases:
        if len(case["splits"]) != world_size:
            raise ValueError(f"check_worker: case {case['name']!r} has {len(case['splits'])} "
                             f"splits for a world of {world_size} processes.")
        lo = sum(case["splits"][:rank])
        hi = lo + case["splits"][rank]
        if case["kind"] == "layer":
            module, data = _layer(case, SyncBatchNorm)
        else:
            module, data = convert_sync_batchnorm(_small_net(case["seed"])), case_inputs(case)
        try:
            results.append(_run(case, module, data, lo, hi, _CollectiveLog()))
        except ValueError as error:
            if not case["expect_error"]:
                raise
            results.append(dict(error=str(error)))
    return results


def check_sync(cases, world_size=None, timeout_s=120):
    """Launch ``check_worker`` once for all ``cases`` (every case needs len(splits) ==
    world_size) and return, per case, the list of the ranks' results."""
    world_size = world_size or len(cases[0]["splits"])
    per_rank = launch(check_worker, world_size, cases, timeout_s=timeout_s)
    return [[per_rank[r][i] for r in range(world_size)] for i in range(len(cases))]


def compare(case, ranks, expected=None):
    """Largest absolute differences between the ranks' results and ``reference(case)``:
    y and dx (the ranks' slices concatenated), parameter gradients (SUMMED over ranks), the
    buffers (every rank's, so they must agree everywhere) and eval-mode outputs; plus
    ``buffers_identical`` (bitwise equal on all ranks)."""
    expected = reference(case) if expected is None else expected

    def diff(a, b):
        return float((a - b).abs().max()) if a.numel() else 0.0

    errors = {}
    for key in ("y", "dx"):
        errors[key] = max(diff(torch.cat([r[key][s] for r in ranks]), expected[key][s])
                          for s in range(case["steps"]))
    errors["param_grads"] = max(
        (diff(sum(r["grads"][s][k] for r in ranks), g)
         for s in range(case["steps"]) for k, g in expected["grads"][s].items()), default=0.0)
    floating = {k: b for k, b in expected["buffers"].items() if b.is_floating_point()}
    errors["running_stats"] = max((diff(r["buffers"][k], b) for r in ranks
                                   for k, b in floating.items()), default=0.0)
    errors["num_batches_tracked"] = max(
        (diff(r["buffers"][k].double(), b.double()) for r in ranks
         for k, b in expected["buffers"].items() if not b.is_floating_point()), default=0.0)
    errors["y_eval"] = diff(torch.cat([r["y_eval"] for r in ranks]), expected["y_eval"])
    errors["buffers_identical"] = all(torch.equal(r["buffers"][k], ranks[0]["buffers"][k])
                                      for r in ranks for k in floating)
    return errors


# --- timing -------------------------------------------------------------------------------

def timing_net(norm, channels=(16, 32, 32), seed=0):
    """A small conv net for timing: three 3x3 conv + ``norm(c)`` + ReLU blocks (the last two
    with stride 2), global average pooling, a linear classifier over 10 classes."""
    torch.manual_seed(seed)
    layers, c_in = [], 3
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   norm(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def _average_gradients(model, world_size):
    """What DistributedDataParallel does to gradients, without its bucketing and overlap: one
    all_reduce of all gradients flattened, divided by the number of replicas."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def time_worker(rank, world_size, batch, size, channels, steps, warmup, latency_calls):
    """Runs on every rank: time per training step (forward, cross-entropy, backward, then the
    gradient average of data parallelism) of ``timing_net`` with local BatchNorm and with
    SyncBatchNorm, interleaved step by step; then the latency of one all_gather and one
    all_reduce of a small per-channel payload. Each step time is the slowest rank's (a
    barrier starts each step)."""
    models = {"local": timing_net(bn_modules.BatchNorm2d, channels),
              "sync": convert_sync_batchnorm(timing_net(bn_modules.BatchNorm2d, channels))}
    g = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(batch, 3, size, size, generator=g)
    target = torch.randint(0, 10, (batch,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    times = {k: [] for k in models}
    for step in range(warmup + steps):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            dist.barrier()
            start = time.perf_counter()
            loss_fn(model(x), target).backward()
            _average_gradients(model, world_size)
            elapsed = torch.tensor([time.perf_counter() - start])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank's step
            if step >= warmup:
                times[name].append(float(elapsed))
    latency = {}
    c = max(channels)
    for name in ("all_gather", "all_reduce"):
        payload = torch.zeros(2 * c + (1 if name == "all_gather" else 0),
                              dtype=torch.float64 if name == "all_gather" else torch.float32)
        out = [torch.empty_like(payload) for _ in range(world_size)]
        samples = []
        for _ in range(latency_calls):
            dist.barrier()
            start = time.perf_counter()
            if name == "all_gather":
                dist.all_gather(out, payload)
            else:
                dist.all_reduce(payload)
            samples.append(time.perf_counter() - start)
        latency[name] = samples
    return dict(times=times, latency=latency)


def time_sync(world_size, *, batch=16, size=16, channels=(16, 32, 32), steps=30, warmup=3,
              latency_calls=50, timeout_s=180):
    """Median seconds per training step, local BatchNorm vs SyncBatchNorm, on ``world_size``
    processes with one thread each, ``batch`` images of 3 x size x size per replica (the
    global batch grows with W), gradients averaged over replicas in both (one all_reduce).
    Also the median latency of one all_gather / all_reduce of a ``max(channels)``-channel
    payload. Returns a dict."""
    ranks = launch(time_worker, world_size, batch, size, channels, steps, warmup,
                   latency_calls, timeout_s=timeout_s)
    result = ranks[0]  # step times are already the max over ranks

    def median(v):
        return float(torch.tensor(v).median())

    latency = {k: median([max(r["latency"][k][i] for r in ranks) for i in range(latency_calls)])
               for k in result["latency"]}
    return dict(world_size=world_size, local=median(result["times"]["local"]),
                sync=median(result["times"]["sync"]), latency=latency,
                bn_layers=len(channels), channels=tuple(channels),
                per_replica_input=(batch, 3, size, size))


def activation_bytes(shape, dtype=torch.float32):
    """Bytes of one activation tensor of ``shape``: what a BatchNorm layer reads, for scale."""
    return prod(shape) * torch.empty((), dtype=dtype).element_size()


__all__ = ["launch", "free_port", "sync_bytes", "network_sync_bytes", "resnet50_bn_channels",
           "resnet50_parameter_count",
           "make_case", "make_model_case", "case_inputs", "reference", "check_worker",
           "check_sync", "compare", "timing_net", "time_worker", "time_sync",
           "activation_bytes"]
