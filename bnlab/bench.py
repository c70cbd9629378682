"""BatchNorm speed: each backend's forward (training), backward and both, against torch's own
batch norm measured in the same run, and against the machine's copy bandwidth.

    python -m bnlab.bench                    # the network shapes, every backend, every pass
    python -m bnlab.bench --shapes quick     # tiny shapes: seconds (tests, the book)
    make bench                               # the full run; writes the JSON report
    THP_MEM_ALLOC_ENABLE=1 python -m bnlab.bench   # torch's big allocations on huge pages,
                                                   # as NumPy's are by default
    python -m bnlab.bench --system-allocator       # glibc returns big freed blocks at once

Backends: ``numpy`` (``bnlab.numpy.batch_norm_forward`` / ``batch_norm_backward``, CPU
only), ``bnlab.torch`` (``bnlab.torch.functional.batch_norm``, its closed-form backward
through autograd), ``triton`` (``bnlab.kernels.batch_norm``, CUDA only: skipped with a note
elsewhere) and ``torch native`` (``torch.nn.functional.batch_norm``: the baseline, always
measured). Shapes (``SHAPES``): BatchNorm inputs of ResNet-50 (after its stem convolution,
in its first and in its last stage) and of a wide MLP, float32; ``quick`` ones for tests.

Timing. The backends take turns, one call each per round, so that a machine slowing down
(other jobs, a CPU clock change) slows them alike; warm-up rounds come first and the time
reported is the median of ``repeats`` rounds, by ``time.perf_counter`` on the CPU and CUDA
events on a GPU. In each round a backend's timed call follows an untimed one, so that the
memory it allocates is already mapped in, as in a training loop (see ``_median_ms``); on the
CPU, glibc is told to keep freed memory mapped (``keep_freed_memory``), or the untimed call's
memory above 32 MB would have gone back to the system before the timed call runs.
``forward`` is a training-mode forward pass with gradients enabled (what a training step
runs, running statistics updated); ``backward`` is timed alone, again and again from one
saved forward (the NumPy cache, or the autograd graph kept with ``retain_graph=True``);
``both`` is a fresh forward followed by its backward. The torch backends compute the
gradients of x, weight and bias with ``torch.autograd.grad`` (no accumulation into
``.grad``), as the NumPy backward returns dx, dgamma and dbeta. Times include allocating
and first touching the outputs, which on some machines costs as much as the arithmetic: the
JSON report records the huge-page settings that decide it (``memory_settings``).

Threads. On the CPU every backend gets the same number of threads: ``torch.set_num_threads``
for torch and ``threadpoolctl`` for NumPy's BLAS. The default is 1, because NumPy's
elementwise operations and reductions run on one thread whatever the setting; more threads
would compare a parallel torch with a serial NumPy.

Bytes that must move (the model behind the GB/s column). With x of b = bytes(x) (N, C and
the spatial size are all big, so the (C,) parameters and statistics are negligible):

* forward (training): read x for the per-channel statistics, read x again to normalize,
  write y: 3 b. (Two-pass statistics read x once more; the model counts what a kernel that
  keeps the mean and variance in one sweep must move, so all backends are held to it.)
* backward: read dy and x for the two per-channel sums, sum(dy) and sum(dy * x_hat), then
  read dy and x again and write dx: 5 b.
* both: 8 b.

GB/s = bytes / time. ``fraction_of_copy_bandwidth`` divides it by the copy bandwidth
measured in the same run (``copy_bandwidth``: a large float32 tensor copied into another,
read + write bytes / time, with the same threads), the speed any pass over memory can hope
for on this machine. On CUDA the datasheet peak of known GPUs is shown too, labelled so.
"""

import argparse
import ctypes
import datetime
import functools
import inspect
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

BACKENDS = ("numpy", "bnlab.torch", "triton", "torch native")
NATIVE = "torch native"
PASSES = ("forward", "backward", "both")
BYTES_PER_ELEMENT_PASS = {"forward": 3, "backward": 5, "both": 8}  # x bytes(x): see above

SHAPES = {
    # ResNet-50 (batch 32, 224 x 224 images): the BatchNorm after the stem convolution ...
    "resnet50-stem": (32, 64, 112, 112),
    # ... after a 256-channel convolution of the first stage, and one of the last stage.
    "resnet50-stage1": (32, 256, 56, 56),
    "resnet50-stage4": (32, 2048, 7, 7),
    # A BatchNorm1d between two Linear(1024, 1024) layers, batch 4096.
    "mlp": (4096, 1024),
    # Tiny shapes for tests and the book: seconds for the whole run, timings meaningless.
    "quick-conv": (4, 8, 6, 6),
    "quick-mlp": (64, 16),
}
SHAPE_SETS = {
    "networks": ("resnet50-stem", "resnet50-stage1", "resnet50-stage4", "mlp"),
    "quick": ("quick-conv", "quick-mlp"),
}

# Datasheet memory bandwidth (GB/s) of GPUs whose name tells the model: (words in the name,
# GB/s). The first match wins, so the more specific entries come first.
DATASHEET_PEAK_GBPS = (
    (("H200",), 4800.0),
    (("H100", "PCIe"), 2000.0),
    (("H100", "SXM"), 3350.0),
    (("H100", "HBM3"), 3350.0),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (("A100", "80GB", "PCIe"), 1935.0),
    (("A100", "80GB"), 2039.0),
    (("A100", "40GB"), 1555.0),
)

ROW_KEYS = ("backend", "shape", "pass", "ms", "bytes", "gbps", "ratio_to_native",
            "fraction_of_copy_bandwidth")


# --- the machine ---------------------------------------------------------------------------

def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device):
    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench: expected device 'cpu' or 'cuda'; got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("bench: device 'cuda' was asked for, but torch sees no CUDA device "
                         "(a CPU build of torch, or no GPU). Use device='cpu'.")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def datasheet_peak_gbps(gpu_name):
    """The datasheet memory bandwidth (GB/s) of a GPU known by its name, else None."""
    for words, gbps in DATASHEET_PEAK_GBPS:
        if all(w.lower() in gpu_name.lower() for w in words):
            return gbps
    return None


def device_description(device):
    """What the numbers were measured on: a dict with ``device`` ('cpu' or 'cuda'), ``name``
    (the CPU model from /proc/cpuinfo, or the GPU's name), ``cpu`` (the host CPU model),
    ``logical_cpus``, and on CUDA ``memory_gib`` and ``datasheet_peak_gbps`` (None when the
    GPU is not in DATASHEET_PEAK_GBPS)."""
    _check_device(device)
    desc = {"device": device, "name": _cpu_model(), "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(), "platform": platform.platform()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        desc.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    datasheet_peak_gbps=datasheet_peak_gbps(props.name))
    return desc


def versions():
    """torch, numpy, triton (None when not installed) and Python versions."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # not installed, or a broken install: the report says None
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "triton": triton_version}


def memory_settings():
    """What decides the cost of touching freshly allocated memory, which every backend pays
    for its outputs: the kernel's transparent huge pages mode, NumPy's madvise(HUGEPAGE) of
    large arrays (on by default) and torch's ``THP_MEM_ALLOC_ENABLE`` (off unless set in the
    environment before torch's first allocation). Measured on a virtual machine: filling a
    new 100 MB array took about 60 ms with 4 KiB pages (torch's default) and 10 ms with huge
    pages (NumPy's), so the two libraries' allocators, not only their code, differ."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()  # e.g. "always [madvise] never": the bracketed one is on
        thp = thp[thp.index("[") + 1:thp.index("]")] if "[" in thp else thp
    except (OSError, ValueError):
        thp = None
    try:
        numpy_madvise = bool(np._core.multiarray._get_madvise_hugepage())
    except AttributeError:  # a NumPy without the (private) query
        numpy_madvise = None
    return {"transparent_hugepage": thp, "numpy_madvise_hugepage": numpy_madvise,
            "torch_THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "glibc_keeps_freed_memory": _KEEPS_FREED_MEMORY}


_KEEPS_FREED_MEMORY = False  # whether keep_freed_memory() took effect in this process


def keep_freed_memory():
    """Make glibc's malloc keep freed memory mapped, as a caching allocator does (torch's CUDA
    allocator always does): every allocation comes from the heap (``mallopt(M_MMAP_MAX, 0)``)
    and the heap is never trimmed (``M_TRIM_THRESHOLD`` at its maximum). By default glibc
    returns each freed block above 32 MB to the system, so the next allocation of that size
    pays for mapping memory in again (about 60 ms per 100 MB with 4 KiB pages, measured),
    whether that happens depends on the order of the allocations before it, and the ratio
    of two backends over the MLP shape swung from 0.9 to 1.7 between identical runs.
    ``python -m bnlab.bench`` calls this on the CPU unless given ``--system-allocator``; the
    JSON report records which (``memory.glibc_keeps_freed_memory``). Returns whether it
    took effect (False off glibc)."""
    global _KEEPS_FREED_MEMORY
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        _KEEPS_FREED_MEMORY = bool(libc.mallopt(m_mmap_max, 0)) and bool(
            libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        _KEEPS_FREED_MEMORY = False
    return _KEEPS_FREED_MEMORY


@contextmanager
def thread_limit(threads):
    """torch and NumPy's BLAS use ``threads`` threads inside the block; restored after."""
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"bench: expected threads to be an integer >= 1; got {threads!r}.")
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


# --- timing --------------------------------------------------------------------------------

def _synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn, device):
    """Milliseconds of one call of fn(); its result is dropped after the clock stops."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
    else:
        start = time.perf_counter()
        out = fn()
        ms = (time.perf_counter() - start) * 1e3
    del out
    return ms


def _median_ms(calls, device, repeats, warmup):
    """{name: median ms} for the callables in ``calls``, taking turns one call per round.

    Each timed call comes right after an untimed call of the same function, so that it
    finds the memory the function allocates (and frees) already mapped in, as it is in a
    training loop. Without that, on a virtual machine, the memory the other backends' turns
    left idle may have gone back to the host, and touching it again costs a fault on the
    host: measured here, a first touch wrote at about 0.4 GB/s, 30 times slower than a
    copy, and a backend's time depended on what ran before it.
    """
    times = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, fn in calls.items():
            _time_ms(fn, device)  # untimed: maps in the memory of this call's allocations
            ms = _time_ms(fn, device)
            if round_ >= warmup:
                times[name].append(ms)
    return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(device="cpu", threads=1, nbytes=2**28, repeats=5):
    """GB/s of copying one float32 tensor of ``nbytes`` into another (``dst.copy_(src)``:
    what ``clone`` does, without timing the allocation): (read + write) bytes / median time,
    with ``threads`` threads on the CPU. 256 MiB by default, far beyond any cache."""
    _check_device(device)
    with thread_limit(threads):
        src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)  # first touch: pages mapped before timing
        ms = _median_ms({"copy": lambda: dst.copy_(src)}, device, repeats, warmup=1)["copy"]
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


# --- the backends --------------------------------------------------------------------------

class Skip(Exception):
    """A backend that cannot run here; the message says why."""


def _torch_batch_norm(backend):
    if backend == NATIVE:
        return torch.nn.functional.batch_norm
    if backend == "bnlab.torch":
        from bnlab.torch.functional import batch_norm
        if "backend" in inspect.signature(batch_norm).parameters:
            return functools.partial(batch_norm, backend="torch")
        return batch_norm
    if backend == "triton":
        try:
            from bnlab.kernels import batch_norm
        except Exception as e:
            raise Skip(f"bnlab.kernels.batch_norm is not available ({type(e).__name__}: "
                       f"{e})") from None
        return batch_norm
    raise AssertionError(backend)


def _torch_passes(batch_norm, x, weight, bias, dy):
    """forward(), backward(saved) and both() for a torch-style batch_norm."""
    c = x.shape[1]
    running_mean = torch.zeros(c, device=x.device)
    running_var = torch.ones(c, device=x.device)
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = bias.detach().requires_grad_()

    def forward():
        return batch_norm(x, running_mean, running_var, weight, bias, training=True,
                          momentum=0.1, eps=1e-5)

    def backward(y, retain_graph=True):
        return torch.autograd.grad(y, (x, weight, bias), dy, retain_graph=retain_graph)

    return forward, backward, lambda: backward(forward(), retain_graph=False)


def _numpy_passes(x, weight, bias, dy):
    from bnlab.numpy import batch_norm_backward, batch_norm_forward

    x, gamma, beta, dy = (t.numpy() for t in (x, weight, bias, dy))  # shared memory
    c = x.shape[1]
    running_mean, running_var = np.zeros(c, np.float32), np.ones(c, np.float32)

    def forward():
        return batch_norm_forward(x, gamma, beta, running_mean=running_mean,
                                  running_var=running_var, training=True, momentum=0.1,
                                  eps=1e-5)

    def backward(y_and_cache):
        return batch_norm_backward(dy, y_and_cache[1])

    return forward, backward, lambda: backward(forward())


def _passes(backend, device, x, weight, bias, dy):
    if backend == "numpy":
        if device != "cpu":
            raise Skip("NumPy runs on the CPU only (use --device cpu)")
        return _numpy_passes(x, weight, bias, dy)
    if backend == "triton" and device != "cuda":
        raise Skip("Triton kernels need a CUDA device; this run is on the CPU")
    return _torch_passes(_torch_batch_norm(backend), x, weight, bias, dy)


def _inputs(shape, device, seed=0):
    """float32 x = 5 * randn + 12 (shifted and scaled), weight, bias, a random dy."""
    g = torch.Generator(device=device).manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g, device=device).mul_(5).add_(12)
    weight = 1 + 0.5 * torch.randn(c, generator=g, device=device)
    bias = torch.randn(c, generator=g, device=device)
    dy = torch.randn(shape, generator=g, device=device)
    return x, weight, bias, dy


# --- one run -------------------------------------------------------------------------------

def _parse_shape(where, spec):
    """A name in SHAPES, a set in SHAPE_SETS, "NxCxHxW", or a tuple: a list of (name, shape)."""
    if isinstance(spec, str):
        if spec in SHAPE_SETS:
            return [(name, SHAPES[name]) for name in SHAPE_SETS[spec]]
        if spec in SHAPES:
            return [(spec, SHAPES[spec])]
        try:
            shape = tuple(int(n) for n in spec.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) < 2:
            raise ValueError(
                f"{where}: expected a shape name ({', '.join(SHAPES)}), a set "
                f"({', '.join(SHAPE_SETS)}) or dimensions like 32x64x56x56; got {spec!r}.")
        return [(spec, shape)]
    shape = tuple(int(n) for n in spec)
    return [("x".join(map(str, shape)), shape)]


def resolve_shapes(shapes):
    """[(name, shape)] for ``shapes``: names, sets ("quick", "networks"), "NxC..." strings or
    tuples, or a single one of these."""
    if isinstance(shapes, str) or (isinstance(shapes, tuple) and shapes and
                                   isinstance(shapes[0], int)):
        shapes = [shapes]
    resolved = [pair for spec in shapes for pair in _parse_shape("bench", spec)]
    for name, shape in resolved:
        if len(shape) > 5 or min(shape) < 1 or shape[0] * int(np.prod(shape[2:])) < 2:
            raise ValueError(f"bench: shape {name} = {shape} is not a training BatchNorm "
                             "input: (N, C, *spatial), rank 2 to 5, N * spatial >= 2.")
    return resolved


def _check_choice(what, given, allowed):
    unknown = [g for g in given if g not in allowed]
    if unknown:
        raise ValueError(f"bench: unknown {what} {unknown}; expected some of "
                         f"{list(allowed)}.")


def _row(backend, name, shape, pass_, ms, copy_gbps, note=None):
    nbytes = BYTES_PER_ELEMENT_PASS[pass_] * int(np.prod(shape)) * 4  # float32
    gbps = None if ms is None else nbytes / (ms * 1e-3) / 1e9
    return {"backend": backend, "shape": list(shape), "shape_name": name, "pass": pass_,
            "ms": ms, "bytes": nbytes, "gbps": gbps, "ratio_to_native": None,
            "fraction_of_copy_bandwidth": None if gbps is None else gbps / copy_gbps,
            "fraction_of_datasheet_peak": None, "copy_gbps": copy_gbps, "note": note}


def run(shapes, backends=None, passes=PASSES, device="cpu", threads=1, repeats=5, warmup=1,
        copy_gbps=None):
    """Time BatchNorm and return one dict per (backend, shape, pass).

    shapes: names of SHAPES, "quick" or "networks", "NxCxHxW" strings or tuples.
    backends: some of BACKENDS (default all); "torch native" is always measured, since
    every ratio is to it. passes: some of PASSES. threads: CPU threads for torch and NumPy.
    copy_gbps: the copy bandwidth to compare with; None measures it now (copy_bandwidth).

    Each row has ``backend, shape, pass, ms, bytes, gbps, ratio_to_native,
    fraction_of_copy_bandwidth`` (ms is the median; bytes follows the module docstring's
    model), plus ``shape_name``, ``copy_gbps``, ``fraction_of_datasheet_peak`` (CUDA GPUs
    of known bandwidth) and ``note`` (why a backend was skipped; its numbers are then None).
    """
    _check_device(device)
    backends = list(BACKENDS if backends is None else backends)
    _check_choice("backends", backends, BACKENDS)
    _check_choice("passes", passes, PASSES)
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"bench: expected repeats to be an integer >= 1; got {repeats!r}.")
    if NATIVE not in backends:
        backends.append(NATIVE)
    shapes = resolve_shapes(shapes)
    if copy_gbps is None:
        copy_gbps = copy_bandwidth(device, threads)
    peak = device_description(device).get("datasheet_peak_gbps") if device == "cuda" else None

    rows = []
    with thread_limit(threads):
        for name, shape in shapes:
            rows += _run_shape(name, shape, backends, passes, device, repeats, warmup,
                               copy_gbps)
    for row in rows:
        if peak and row["gbps"] is not None:
            row["fraction_of_datasheet_peak"] = row["gbps"] / peak
    return rows


def _run_shape(name, shape, backends, passes, device, repeats, warmup, copy_gbps):
    inputs = _inputs(shape, device)
    skipped, fns = {}, {}
    for backend in backends:
        try:
            fns[backend] = _passes(backend, device, *inputs)
        except Skip as e:
            skipped[backend] = str(e)
    medians = {}
    for pass_ in passes:
        calls, saved = {}, {}
        for backend, (forward, backward, both) in fns.items():
            if backend in skipped:
                continue
            try:
                if pass_ == "forward":
                    calls[backend] = forward
                elif pass_ == "backward":
                    saved[backend] = forward()  # one forward, its backward timed again and again
                    calls[backend] = functools.partial(backward, saved[backend])
                else:
                    calls[backend] = both
                _synchronize(device)
            except Exception as e:  # a backend that fails here is reported, not fatal
                skipped[backend] = f"failed: {type(e).__name__}: {e}"
        medians[pass_] = _median_ms_guarded(calls, device, repeats, warmup, skipped)
        del saved
    rows = []
    for pass_ in passes:
        native_ms = medians[pass_].get(NATIVE)
        for backend in backends:
            ms = medians[pass_].get(backend)
            row = _row(backend, name, shape, pass_, ms, copy_gbps,
                       note=skipped.get(backend) if ms is None else None)
            if ms is not None and native_ms:
                row["ratio_to_native"] = ms / native_ms
            rows.append(row)
    return rows


def _median_ms_guarded(calls, device, repeats, warmup, skipped):
    """_median_ms, dropping (and noting in ``skipped``) a backend that raises."""
    while True:
        try:
            return _median_ms(calls, device, repeats, warmup)
        except Exception as e:
            failed = _first_failing(calls)
            if failed is None:
                raise
            skipped[failed] = f"failed: {type(e).__name__}: {e}"
            calls = {k: v for k, v in calls.items() if k != failed}


def _first_failing(calls):
    for name, fn in calls.items():
        try:
            fn()
        except Exception:
            return name
    return None


# --- reporting -----------------------------------------------------------------------------

def format_table(rows):
    """The rows as a text table: backend, shape, pass, median ms, MB that must move, GB/s,
    time / torch native's time, and the fraction of the copy bandwidth (and of the datasheet
    peak, on a GPU of known bandwidth). Skipped backends show their note."""
    peak = any(r.get("fraction_of_datasheet_peak") is not None for r in rows)
    head = ["backend", "shape", "pass", "ms", "MB moved", "GB/s", "x native", "of copy BW"]
    if peak:
        head.append("of datasheet peak")
    lines = []
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        name = r.get("shape_name")
        label = shape if not name or name == shape else f"{name} {shape}"
        cells = [r["backend"], label, r["pass"]]
        if r["ms"] is None:
            cells.append(f"skipped: {r.get('note') or 'not measured'}")
        else:
            cells += [f"{r['ms']:.3f}", f"{r['bytes'] / 1e6:.1f}", f"{r['gbps']:.1f}",
                      "-" if r["ratio_to_native"] is None else f"{r['ratio_to_native']:.2f}",
                      f"{100 * r['fraction_of_copy_bandwidth']:.0f}%"]
            if peak:
                frac = r.get("fraction_of_datasheet_peak")
                cells.append("-" if frac is None else f"{100 * frac:.0f}%")
        lines.append(cells)
    widths = [max(len(c[i]) for c in [head] + lines if i < 3 or len(c) == len(head))
              for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        if len(cells) < len(head):  # a skipped row: its note runs past the columns
            fixed = "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths))
            out.append(f"{fixed}  {cells[3]}")
        else:
            out.append("  ".join(c.rjust(w) if i >= 3 else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    return "\n".join(out)


def report(rows, *, device, threads, copy_gbps, repeats, warmup):
    """Everything the JSON file holds: the machine, versions, date, settings and rows."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device_description(device), "threads": threads, "versions": versions(),
            "repeats": repeats, "warmup": warmup, "dtype": "float32",
            "copy_bandwidth_gbps": copy_gbps, "memory": memory_settings(),
            "byte_model": {p: f"{k} x bytes(x)" for p, k in BYTES_PER_ELEMENT_PASS.items()},
            "command": " ".join([Path(sys.executable).name, "-m", "bnlab.bench"] + sys.argv[1:]),
            "rows": rows}


def _split(values):
    """argparse lists: "a,b c" -> [a, b, c]; "native" is short for "torch native"."""
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return [NATIVE if v == "native" else v for v in out]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bnlab.bench",
        description="Time BatchNorm forward (training), backward and both for each backend "
                    "against torch.nn.functional.batch_norm, measured in the same run.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device(),
                        help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch and NumPy's BLAS (default 1)")
    parser.add_argument("--shapes", nargs="+", default=["networks"],
                        help=f"names ({', '.join(SHAPES)}), sets ({', '.join(SHAPE_SETS)}) or "
                             "NxCxHxW (default: networks)")
    parser.add_argument("--passes", nargs="+", default=list(PASSES),
                        help=f"some of {', '.join(PASSES)} (default: all)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS),
                        help=f"some of {', '.join(BACKENDS)} ('native' for short; default: "
                             "all). torch native is always measured: it is the baseline")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--system-allocator", action="store_true",
                        help="leave glibc's malloc as it is (by default, on the CPU, freed "
                             "memory stays mapped, as in a caching allocator: see "
                             "keep_freed_memory)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the report (default _build/bench/bench-DEVICE.json)")
    args = parser.parse_args(argv)
    try:
        shapes = _split(args.shapes)
        resolve_shapes(shapes)
        backends, passes = _split(args.backends), _split(args.passes)
        _check_choice("backends", backends, BACKENDS)
        _check_choice("passes", passes, PASSES)
        desc = device_description(args.device)
    except ValueError as e:
        parser.error(str(e))

    print(f"device: {args.device} ({desc['name']})" +
          ("" if args.device == "cuda" else f", {desc['logical_cpus']} logical CPUs"))
    print(f"threads: {args.threads} (torch.set_num_threads and threadpoolctl for NumPy)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    if args.device == "cpu" and not args.system_allocator:
        keep_freed_memory()
    mem = memory_settings()
    print(f"huge pages: kernel {mem['transparent_hugepage']}; NumPy madvise "
          f"{mem['numpy_madvise_hugepage']}; torch THP_MEM_ALLOC_ENABLE="
          f"{mem['torch_THP_MEM_ALLOC_ENABLE'] or 'unset'}; freed memory kept mapped: "
          f"{mem['glibc_keeps_freed_memory']}")
    copy_gbps = copy_bandwidth(args.device, args.threads)
    print(f"copy bandwidth, measured now: {copy_gbps:.1f} GB/s (256 MiB float32 copy, "
          "read + write)")
    if args.device == "cuda":
        peak = desc.get("datasheet_peak_gbps")
        print("datasheet peak: " + (f"{peak:.0f} GB/s (from the GPU's datasheet, not measured)"
                                    if peak else "unknown for this GPU"))
    print("bytes moved: forward 3 x bytes(x), backward 5 x, both 8 x; x native = time / "
          "torch native's time in this run")
    print(f"median of {args.repeats} rounds after {args.warmup} warm-up, float32\n")

    rows = run(shapes, backends, passes, device=args.device, threads=args.threads,
               repeats=args.repeats, warmup=args.warmup, copy_gbps=copy_gbps)
    print(format_table(rows))
    path = args.json or Path("_build") / "bench" / f"bench-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report(rows, device=args.device, threads=args.threads,
                                      copy_gbps=copy_gbps, repeats=args.repeats,
                                      warmup=args.warmup), indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
