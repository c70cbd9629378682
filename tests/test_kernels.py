"""bnlab.kernels, the Triton kernels, against the NumPy reference (float64, on the same
numbers) and torch.nn.functional.batch_norm with autograd, always with a random upstream
gradient: outputs, running statistics, dx, dgamma, dbeta; every rank, NCHW and channels-last,
float32/float64/float16/bfloat16, several chunks per channel, a large-mean input, eval mode,
no affine; the backend switch of bnlab.torch.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); with one, every test runs on CUDA too. The interpreter is slow (tens of
milliseconds per program), so shapes are small and the chunk knobs keep the programs few.
"""

import os
import subprocess
import sys
from math import prod

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("triton")

import bnlab.kernels as bk  # noqa: E402  (after the skip: imports triton)
import bnlab.numpy as bnp  # noqa: E402
import bnlab.torch as bt  # noqa: E402
import bnlab.torch.functional as bf  # noqa: E402
from bnlab.tolerances import tolerance  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
CL, CL3 = torch.channels_last, torch.channels_last_3d
# (shape, memory format, chunk_rows, block_rows): every rank, both 4-D and 5-D formats; the
# knobs give each channel 2 to 4 chunks of 2 or 3 tiles, the last chunk and tile partial.
LAYOUTS = [((12, 3), None, 5, 2), ((4, 3, 5), None, 7, 4), ((2, 3, 4, 5), None, 16, 8),
           ((2, 3, 4, 5), CL, 16, 8), ((2, 3, 2, 3, 2), None, 9, 4),
           ((2, 3, 2, 3, 2), CL3, 9, 4)]
LAYOUT_IDS = ["2d", "3d", "nchw", "nhwc", "ncdhw", "ndhwc"]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cpu" and not bk.interpreter_active():
        pytest.skip("CPU tensors need Triton's interpreter: run with TRITON_INTERPRET=1")
    return request.param


def make_case(shape, dtype=torch.float32, memory_format=None, param_dtype=None, seed=0,
              device="cpu"):
    """x = 5 * randn + 12, random gamma and beta, a RANDOM dy; parameters in param_dtype."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    param_dtype = param_dtype or dtype
    x = 5 * torch.randn(shape, generator=gen, dtype=torch.float64) + 12
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    gamma = 1 + 0.5 * torch.randn(c, generator=gen, dtype=torch.float64)
    beta = torch.randn(c, generator=gen, dtype=torch.float64)
    x, dy = (t.to(device, dtype) for t in (x, dy))
    if memory_format is not None:
        x, dy = (t.contiguous(memory_format=memory_format) for t in (x, dy))
    return x, gamma.to(device, param_dtype), beta.to(device, param_dtype), dy


def run(fn, x, gamma, beta, dy, running, training=True, momentum=0.2, eps=1e-5, **kwargs):
    """One forward and backward step of fn (F.batch_norm's signature) with autograd; returns
    y, dx, dgamma, dbeta and the running statistics after the step."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True)
              for t in (x, gamma, beta)]
    rm, rv = (None, None) if running is None else (t.clone() for t in running)
    y = fn(leaves[0], rm, rv, leaves[1], leaves[2], training=training, momentum=momentum,
           eps=eps, **kwargs)
    y.backward(dy)
    grad = lambda t: None if t is None else t.grad
    return dict(y=y.detach(), dx=leaves[0].grad, dgamma=grad(leaves[1]),
                dbeta=grad(leaves[2]), running_mean=rm, running_var=rv)


def reference(x, gamma, beta, dy, running, training=True, momentum=0.2, eps=1e-5):
    """bnlab.numpy in float64 on exactly the numbers the kernels saw."""
    as64 = lambda t: None if t is None else t.detach().cpu().double().numpy().copy()
    rm, rv = (None, None) if running is None else (as64(t) for t in running)
    y, cache = bnp.batch_norm_forward(as64(x), as64(gamma), as64(beta), running_mean=rm,
                                      running_var=rv, training=training, momentum=momentum,
                                      eps=eps)
    dx, dgamma, dbeta = bnp.batch_norm_backward(as64(dy), cache)
    return dict(y=y, dx=dx, dgamma=dgamma, dbeta=dbeta, running_mean=rm, running_var=rv)


def assert_close(actual, expected, tol, keys=None):
    for key in keys or expected:
        a, e = actual[key], expected[key]
        if e is None:
            assert a is None, key
            continue
        if isinstance(e, torch.Tensor):
            assert a.dtype == e.dtype, key
            e = e.detach().cpu().double().numpy()
        np.testing.assert_allclose(a.detach().cpu().double().numpy(), e, err_msg=key, **tol)


def running_buffers(c, device, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(c, generator=gen, dtype=torch.float64)
    var = 0.5 + torch.rand(c, generator=gen, dtype=torch.float64)
    return mean.to(device, dtype), var.to(device, dtype)


# --- training: outputs, running statistics and gradients ---------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape, memory_format, chunk_rows, block_rows", LAYOUTS,
                         ids=LAYOUT_IDS)
def test_training_matches_numpy_reference_and_torch(device, shape, memory_format, chunk_rows,
                                                    block_rows, dtype):
    x, gamma, beta, dy = make_case(shape, dtype, memory_format, device=device)
    running = running_buffers(shape[1], device, dtype)
    m = prod(shape) // shape[1]
    ours = run(bk.batch_norm, x, gamma, beta, dy, running, chunk_rows=chunk_rows,
               block_rows=block_rows)
    assert_close(ours, reference(x, gamma, beta, dy, running), tolerance(dtype, m))
    assert_close(ours, run(F.batch_norm, x, gamma, beta, dy, running), tolerance(dtype, m))
    for key in ("y", "dx"):  # the input's memory format is kept
        assert ours[key].stride() == x.stride(), key


@pytest.mark.parametrize("chunk_rows, block_rows", [(1, 1), (3, 2), (16, None), (64, 32)],
                         ids=["chunks-of-1", "partial-tiles", "one-chunk", "chunk>m"])
def test_any_chunking_gives_the_same_statistics(device, chunk_rows, block_rows):
    """Chan's merge of the chunks and of the lanes within a chunk: any chunk size, a chunk of
    one row, a partial last chunk or tile, one chunk bigger than m."""
    shape = (16, 3)  # channels adjacent: one program covers every channel
    x, gamma, beta, dy = make_case(shape, torch.float64, device=device)
    running = running_buffers(3, device, torch.float64)
    ours = run(bk.batch_norm, x, gamma, beta, dy, running, chunk_rows=chunk_rows,
               block_rows=block_rows)
    assert_close(ours, reference(x, gamma, beta, dy, running), tolerance(torch.float64, 16))


def test_running_statistics_over_steps_and_momentum(device):
    """Three steps with momentum 0.3: running_var takes the unbiased variance every step."""
    shape = (4, 2, 3, 3)
    rm, rv = torch.zeros(2, device=device), torch.ones(2, device=device)
    rm_np, rv_np = np.zeros(2), np.ones(2)
    for seed in range(3):
        x = make_case(shape, seed=seed, device=device)[0]
        bk.batch_norm(x, rm, rv, training=True, momentum=0.3, chunk_rows=12)
        bnp.batch_norm_forward(x.cpu().double().numpy(), None, None, running_mean=rm_np,
                               running_var=rv_np, momentum=0.3)
    tol = tolerance(torch.float32, 36)
    np.testing.assert_allclose(rm.cpu().numpy(), rm_np, **tol)
    np.testing.assert_allclose(rv.cpu().numpy(), rv_np, **tol)


def test_large_mean_statistics_stay_accurate(device):
    """mean 1e4, std 1, float32: the one-pass E[x^2] - E[x]^2 loses every digit here; the
    shifted per-lane Welford and Chan's merge keep the float32 tolerance for mean and var.
    y = (x - mean) * rstd carries the float32 rounding of mean (u * |mean|, about 6e-4
    here) and of x, so it is compared within 4 * 2 * u * |mean| / std."""
    shape = (32, 2, 8, 8)
    m = prod(shape) // 2
    gen = torch.Generator().manual_seed(3)
    x = (1e4 + torch.randn(shape, generator=gen, dtype=torch.float64)).float().to(device)
    rm, rv = torch.zeros(2, device=device), torch.ones(2, device=device)
    y = bk.batch_norm(x, rm, rv, training=True, momentum=1.0, chunk_rows=512)  # 4 chunks
    rm_np, rv_np = np.zeros(2), np.ones(2)
    y_np, _ = bnp.batch_norm_forward(x.cpu().double().numpy(), None, None, running_mean=rm_np,
                                     running_var=rv_np, momentum=1.0)
    tol = tolerance(torch.float32, m)
    np.testing.assert_allclose(rm.cpu().numpy(), rm_np, **tol)  # momentum 1: the batch's own
    np.testing.assert_allclose(rv.cpu().numpy(), rv_np, **tol)
    u = np.finfo(np.float32).eps / 2
    np.testing.assert_allclose(y.cpu().numpy(), y_np, rtol=0, atol=8 * u * 1e4)

    xc = x.cpu()  # the test has teeth: the one-pass formula in float32 is far off
    one_pass = (xc * xc).mean(dim=(0, 2, 3)) - xc.mean(dim=(0, 2, 3)) ** 2
    biased = rv_np * (m - 1) / m
    assert not np.allclose(one_pass.numpy(), biased, rtol=100 * tol["rtol"], atol=0)


# --- half precision -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("shape, memory_format, chunk_rows, block_rows",
                         [LAYOUTS[0], LAYOUTS[2], LAYOUTS[3], LAYOUTS[5]],
                         ids=["2d", "nchw", "nhwc", "ndhwc"])
def test_half_precision_inputs(device, shape, memory_format, chunk_rows, block_rows, dtype):
    """float16/bfloat16 input and dy, float32 parameters and buffers (mixed precision):
    statistics in float32, y and dx in the input's dtype, dgamma/dbeta in float32; against
    the float64 reference of the half-rounded numbers and torch, within
    bnlab.tolerances.tolerance(dtype, m) (a few half-type roundings)."""
    x, gamma, beta, dy = make_case(shape, dtype, memory_format, torch.float32, device=device)
    running = running_buffers(shape[1], device)
    m = prod(shape) // shape[1]
    ours = run(bk.batch_norm, x, gamma, beta, dy, running, chunk_rows=chunk_rows,
               block_rows=block_rows)
    assert ours["y"].dtype == ours["dx"].dtype == dtype
    assert ours["dgamma"].dtype == ours["dbeta"].dtype == torch.float32
    assert_close(ours, reference(x, gamma, beta, dy, running), tolerance(dtype, m))
    assert_close(ours, run(F.batch_norm, x, gamma, beta, dy, running), tolerance(dtype, m))


def test_half_parameters_keep_their_dtype(device):
    x, gamma, beta, dy = make_case((6, 3), torch.float16, device=device)
    ours = run(bk.batch_norm, x, gamma, beta, dy, None)
    assert ours["dgamma"].dtype == ours["dbeta"].dtype == torch.float16
    assert_close(ours, reference(x, gamma, beta, dy, None), tolerance(torch.float16, 6))


# --- eval mode, no affine, memory layouts -------------------------------------------------

@pytest.mark.parametrize("shape, memory_format, chunk_rows, block_rows",
                         [LAYOUTS[1], LAYOUTS[3]], ids=["3d", "nhwc"])
def test_eval_mode_uses_running_statistics(device, shape, memory_format, chunk_rows,
                                           block_rows):
    """eq-bn-eval and eq-bn-dx-eval; the running statistics are not touched."""
    x, gamma, beta, dy = make_case(shape, memory_format=memory_format, device=device)
    running = running_buffers(shape[1], device)
    before = [t.clone() for t in running]
    m = prod(shape) // shape[1]
    ours = run(bk.batch_norm, x, gamma, beta, dy, running, training=False,
               chunk_rows=chunk_rows, block_rows=block_rows)
    expected = reference(x, gamma, beta, dy, running, training=False)
    assert_close(ours, expected, tolerance(torch.float32, m))
    assert_close(ours, run(F.batch_norm, x, gamma, beta, dy, running, training=False),
                 tolerance(torch.float32, m))
    for t, b in zip(running, before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("affine", ["none", "weight", "bias"])
@pytest.mark.parametrize("training", [True, False])
def test_without_affine_or_running_statistics(device, affine, training):
    shape = (4, 3, 5)
    x, gamma, beta, dy = make_case(shape, torch.float64, device=device)
    gamma = gamma if affine == "weight" else None
    beta = beta if affine == "bias" else None
    running = None if training else running_buffers(3, device, torch.float64)
    ours = run(bk.batch_norm, x, gamma, beta, dy, running, training=training)
    theirs = run(F.batch_norm, x, gamma, beta, dy, running, training=training)
    assert_close(ours, theirs, tolerance(torch.float64, 20))
    if affine == "none":
        assert_close(ours, reference(x, gamma, beta, dy, running, training),
                     tolerance(torch.float64, 20))


def test_other_strides_and_formats(device):
    """dy in another memory format than x, an expanded dy (y.sum().backward()), and an input
    whose spatial dims do not flatten (a slice), all against torch."""
    x, gamma, beta, dy = make_case((2, 3, 4, 6), memory_format=CL, device=device)
    tol = tolerance(torch.float32, 48)
    ours = run(bk.batch_norm, x, gamma, beta, dy.contiguous(), None)
    assert ours["dx"].stride() == x.stride()  # dx follows x's format, not dy's
    assert_close(ours, run(F.batch_norm, x, gamma, beta, dy, None), tol)

    ones = torch.ones(1, device=device).expand(x.shape)  # strides all 0
    assert_close(run(bk.batch_norm, x, gamma, beta, ones, None),
                 run(F.batch_norm, x, gamma, beta, ones, None), tol)

    sliced = x[:, :, :, ::2]  # (2, 3, 4, 3) with strides that do not flatten
    ours = run(bk.batch_norm, sliced, gamma, beta, dy[:, :, :, ::2], None)
    assert_close(ours, reference(sliced, gamma, beta, dy[:, :, :, ::2], None),
                 tolerance(torch.float32, 24))


def test_empty_batch_as_torch(device):
    """N = 0: an empty y, zero gradients for gamma and beta, running statistics untouched."""
    x, gamma, beta, dy = make_case((0, 3, 4), device=device)
    running = running_buffers(3, device)
    assert_close(run(bk.batch_norm, x, gamma, beta, dy, running),
                 run(F.batch_norm, x, gamma, beta, dy, running), tolerance(torch.float32))


def test_gradcheck_float64(device):
    """The third oracle: finite differences of the kernels' own forward, training and eval
    (fast mode: the Jacobians projected on random vectors, which a random dy also is)."""
    x, gamma, beta, _ = make_case((3, 2, 2), torch.float64, device=device)
    running = running_buffers(2, device, torch.float64)
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in (x, gamma, beta))
    for training in (True, False):
        def fn(x_, g_, b_):
            return bk.batch_norm(x_, *(t.clone() for t in running), g_, b_, training=training)
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)  # create_graph=True


# --- validation ---------------------------------------------------------------------------

def test_clear_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="float32, float16, bfloat16 and float64"):
        bk.batch_norm(x.to(torch.float8_e4m3fn), None, None, training=True)
    with pytest.raises(ValueError, match="momentum to be a float"):
        bk.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=None)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\)"):
        bk.batch_norm(x, None, None, torch.ones(4), training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bk.batch_norm(x[:1], None, None, training=True)
    with pytest.raises(ValueError, match="running_mean=None"):
        bk.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="rank 2 to 5"):
        bk.batch_norm(x[0], None, None, training=True)
    with pytest.raises(ValueError, match="chunk_rows"):
        bk.batch_norm(x, None, None, training=True, chunk_rows=0)
    with pytest.raises(ValueError, match="block_rows .* power of two"):
        bk.batch_norm(x, None, None, training=True, block_rows=3)


# --- the backend switch of bnlab.torch ----------------------------------------------------

@pytest.fixture
def kernel_calls(monkeypatch):
    """Records every call that bnlab.torch makes into bnlab.kernels.batch_norm."""
    calls = []
    real = bk.batch_norm

    def spy(*args, **kwargs):
        calls.append(args[0].device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(bk, "batch_norm", spy)
    return calls


def test_backend_choice(device, kernel_calls):
    x = make_case((4, 3), device=device)[0]
    for backend in ("auto", "torch", "triton"):
        bf.batch_norm(x, None, None, training=True, backend=backend)
    # auto: the kernels for CUDA inputs, the torch path on the CPU
    assert kernel_calls == ([device, device] if device == "cuda" else [device])
    with pytest.raises(ValueError, match="backend to be 'auto', 'torch' or 'triton'"):
        bf.batch_norm(x, None, None, training=True, backend="cuda")
    assert set(bf.KERNEL_DTYPES) == set(bk.SUPPORTED_DTYPES)


@pytest.mark.parametrize("torch_cls, ours_cls, shape, memory_format",
                         [(nn.BatchNorm1d, bt.BatchNorm1d, (6, 3, 4), None),
                          (nn.BatchNorm2d, bt.BatchNorm2d, (2, 3, 3, 4), CL),
                          (nn.BatchNorm3d, bt.BatchNorm3d, (2, 3, 2, 2, 3), CL3)],
                         ids=["1d", "2d-nhwc", "3d-ndhwc"])
def test_modules_with_the_triton_backend_match_torch_nn(device, kernel_calls, torch_cls,
                                                        ours_cls, shape, memory_format):
    """backend="triton": train, train, eval against torch.nn (buffers, num_batches_tracked,
    momentum=None's cumulative average); backend in the repr only when not "auto"."""
    theirs = torch_cls(3, momentum=None, device=device)
    ours = ours_cls(3, momentum=None, device=device, backend="triton")
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    assert repr(ours).endswith(", backend='triton')")
    assert repr(ours_cls(3)).split("(", 1)[1] == repr(torch_cls(3)).split("(", 1)[1]
    m = prod(shape) // 3
    for step, mode in enumerate(("train", "train", "eval")):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        x, _, _, dy = make_case(shape, memory_format=memory_format, seed=step, device=device)
        results = []
        for module in (ours, theirs):
            xr = x.clone().requires_grad_(True)
            module(xr).backward(dy)
            results.append([xr.grad] + [p.grad.clone() for p in module.parameters()])
            module.zero_grad()
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, **tolerance(torch.float32, m))
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value,
                                       **tolerance(torch.float32, m))
    assert len(kernel_calls) == 3
    with pytest.raises(ValueError, match="backend"):
        ours_cls(3, backend="cuda")


def test_bnlab_torch_without_the_interpreter_nor_importing_triton():
    """In a fresh process with TRITON_INTERPRET=0: importing bnlab.torch and running it on the
    CPU ("auto", the modules) imports neither bnlab.kernels nor triton; backend="triton" on a
    CPU tensor then raises a ValueError that says how to enable the interpreter."""
    code = """if True:
        import sys, torch
        import bnlab.torch as bt
        x = torch.randn(4, 3)
        bt.functional.batch_norm(x, None, None, training=True)
        bt.BatchNorm1d(3)(x)
        print("imported:", "triton" in sys.modules, "bnlab.kernels" in sys.modules)
        try:
            bt.functional.batch_norm(x, None, None, training=True, backend="triton")
        except ValueError as e:
            print("error:", e)
    """
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "imported: False False" in out
    assert "error:" in out and "TRITON_INTERPRET=1" in out and "backend='torch'" in out


COMPILE_FOR_A_GPU = """if True:
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from bnlab.kernels import triton_kernels as K

    def compile_for_sm80(fn, io="fp32", **constexprs):
        signature = {}
        for p in fn.params:
            if p.is_constexpr:
                signature[p.name] = "constexpr"
            elif p.name in ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr"):
                signature[p.name] = "*" + io
            elif p.name.endswith("_ptr"):
                signature[p.name] = "*fp32"
            else:
                signature[p.name] = "fp64" if p.name in ("momentum", "eps") else "i32"
        triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 80, 32))

    for block_r, block_c in ((2048, 1), (32, 64)):  # NCHW and channels-last tiles
        tile = dict(ACC=tl.float32, BLOCK_R=block_r, BLOCK_C=block_c)
        compile_for_sm80(K.chunk_moments_kernel, "fp16", **tile)
        compile_for_sm80(K.normalize_kernel, "bf16", HAS_WEIGHT=True, HAS_BIAS=True, **tile)
        compile_for_sm80(K.chunk_grad_sums_kernel, "fp16", **tile)
        compile_for_sm80(K.grad_input_kernel, HAS_WEIGHT=True, BATCH_STATS=True, **tile)
    compile_for_sm80(K.grad_input_kernel, "fp64", HAS_WEIGHT=False, BATCH_STATS=False,
                     ACC=tl.float64, BLOCK_R=16, BLOCK_C=1)
    compile_for_sm80(K.merge_moments_kernel, UPDATE_RUNNING=True, ACC=tl.float32, BLOCK_C=128)
    compile_for_sm80(K.sum_chunks_kernel, BLOCK=128)
    print("compiled")
"""


def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter runs the kernels as Python and so forgives what the compiler would not
    (types of loop-carried values, scalar arguments): compile each kernel for sm_80 ahead of
    time, which needs Triton's CUDA back end (shipped in the triton wheel) but no GPU."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_A_GPU], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
