"""The autograder (``python -m bnlab.grade lab04``), the self-checks and the NumPy references of
lab 4 (SyncBatchNorm's statistics and folding BatchNorm away).

As for labs 1 to 3: submissions are the master solution with precise source substitutions
(each asserted to occur exactly once, so a test cannot silently grade an unchanged solution),
graded with the hidden cases too; every classic mistake must lose exactly the cases it breaks,
keep the others, and be named in the feedback where it gives a wrong value; a crashing notebook
gets a verdict while the solution graded in the same batch keeps full marks. The references
(``bnlab.numpy.merge_batch_statistics``, ``sync_running_statistics``, ``fold_batch_norm``) are
checked against independent computations: the statistics of the concatenated batch, BatchNorm
on it, and an explicit convolution of random inputs followed by evaluation-mode BatchNorm.
"""

import os

import numpy as np
import pytest

import submissions

from bnlab import numpy as ref
from bnlab.grade import core, grader, lab04
from bnlab.grade.sandbox import Limits
from bnlab.tolerances import tolerance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTION = os.path.join(ROOT, "solutions", "lab04_sync_and_folding.ipynb")
LAB = os.path.join(ROOT, "labs", "lab04_sync_and_folding.ipynb")
LIMITS = Limits(load_timeout=60, question_timeout=5, file_bytes=1 << 20)
QUESTIONS = lab04.cases(hidden_seed=lab04.HIDDEN_SEED)
BY_KIND = {kind: {q.name for q in QUESTIONS if q.kind == kind} for kind in lab04.QUESTIONS}
MERGE, RUNNING, FOLD = BY_KIND["merge"], BY_KIND["running"], BY_KIND["fold"]
FOLD_FLOAT64 = {q.name for q in QUESTIONS if q.kind == "fold" and q.inputs["weight"].dtype == np.float64}
FOLD_WITH_BIAS = {q.name for q in QUESTIONS if q.kind == "fold" and "bias" in q.inputs}
PUBLIC_SCORE, MAX_SCORE = 13, 19

# the solution's lines the submissions below change
MERGE_WEIGHTS = "n = np.asarray(counts, dtype=np.float64)[:, None]"
MERGE_MEAN = "mean = (n * means).sum(axis=0) / total"
MERGE_WITHIN = "within = (n * variances).sum(axis=0)"
MERGE_VAR = "var = (within + between) / total"
MERGE_RETURN = "return mean.astype(means.dtype), var.astype(means.dtype)"
RUNNING_STATS = "mean, var = merge_batch_statistics(counts, means, variances)\n    total = float(np.sum(counts))"
RUNNING_UNBIASED = "unbiased = var * (total / (total - 1))"
RUNNING_MEAN = "new_mean = (1 - momentum) * running_mean + momentum * mean"
RUNNING_VAR = "new_var = (1 - momentum) * running_var + momentum * unbiased"
FOLD_SCALE = "a = gamma / np.sqrt(running_var + eps)"
FOLD_WEIGHT = "new_weight = weight * a.reshape((-1,) + (1,) * (weight.ndim - 1))"
FOLD_BIAS = "new_bias = a * (bias - running_mean) + beta"
FOLD_ZERO_BIAS = "if bias is None:\n        bias = np.zeros_like(running_mean)\n    "
FOLD_RETURN = "return new_weight.astype(weight.dtype), new_bias.astype(weight.dtype)"

# name: (substitutions, cases that must fail, mistakes named there, cases where one must be named
# (None: every failing case)). A mistake in the merge breaks the running statistics too: the
# solution's running step calls it.
MISTAKES = {
    "merge_unweighted": ([(MERGE_WEIGHTS, "n = np.ones((len(counts), 1))")],
                         MERGE - {"hidden_merge_two_singles"} | RUNNING, {"merge_unweighted"}, None),
    "merge_no_between_term": ([(MERGE_VAR, "var = within / total")], MERGE | RUNNING,
                              {"merge_no_between_term"}, None),
    # the mean is the unweighted mistake's, the variance this one's (two singles: no between term)
    "merge_naive_average": ([(MERGE_MEAN, "mean = means.mean(axis=0)"), (MERGE_VAR, "var = variances.mean(axis=0)")],
                            MERGE | RUNNING, {"merge_unweighted", "merge_naive_average", "merge_no_between_term"},
                            None),
    "merge_inputs_as_unbiased": ([(MERGE_WITHIN, "within = ((n - 1) * variances).sum(axis=0)")],
                                 MERGE - {"hidden_merge_two_singles"} | RUNNING, {"merge_inputs_as_unbiased"}, None),
    "merge_unbiased_output": ([(MERGE_VAR, "var = (within + between) / (total - 1)")], MERGE | RUNNING,
                              {"merge_unbiased_output"}, None),
    "running_var_biased": ([(RUNNING_UNBIASED, "unbiased = var")], RUNNING, {"running_var_biased"}, None),
    "running_local_statistics": ([(RUNNING_STATS, "mean, var = means[0], variances[0]\n    total = float(counts[0])")],
                                 RUNNING, {"running_local_statistics"}, None),
    "running_momentum_reversed": ([(RUNNING_MEAN, "new_mean = momentum * running_mean + (1 - momentum) * mean"),
                                   (RUNNING_VAR, "new_var = momentum * running_var + (1 - momentum) * unbiased")],
                                  RUNNING, {"running_momentum_reversed"}, None),
    # weight * a broadcasts against the last axis: a wrong value for a square Linear, an error
    # (or a wrong shape) for the other layers
    "fold_input_channels": ([(FOLD_WEIGHT, "new_weight = weight * a")], FOLD, {"fold_input_channels"},
                            {"fold_linear"}),
    # eps outside the square root moves the result by about eps / sqrt(var): below float32's tolerance
    "fold_eps_outside": ([(FOLD_SCALE, "a = gamma / (np.sqrt(running_var) + eps)")], FOLD_FLOAT64,
                         {"fold_eps_outside"}, None),
    "fold_var_as_std": ([(FOLD_SCALE, "a = gamma / (running_var + eps)")], FOLD, {"fold_var_as_std"}, None),
    "fold_bias_not_scaled": ([(FOLD_BIAS, "new_bias = bias - a * running_mean + beta")], FOLD_WITH_BIAS,
                             {"fold_bias_not_scaled"}, None),
    "fold_no_running_mean": ([(FOLD_BIAS, "new_bias = a * bias + beta")], FOLD, {"fold_no_running_mean"}, None),
    "fold_beta_scaled": ([(FOLD_BIAS, "new_bias = a * (bias - running_mean + beta)")], FOLD,
                         {"fold_beta_scaled"}, None),
}

# name: (substitutions, cases that must fail, words every failing case's feedback contains)
OTHERS = {
    "fold_returns_none_bias": ([(FOLD_ZERO_BIAS, ""), (FOLD_BIAS, "new_bias = None if bias is None else "
                                                                  "a * (bias - running_mean) + beta"),
                                (FOLD_RETURN, "return new_weight.astype(weight.dtype), new_bias")],
                               {"fold_conv2d_no_bias", "hidden_fold_grouped"},
                               "bias is None; expected a numpy array of shape"),
    "merge_returns_float64": ([(MERGE_RETURN, "return mean, var")], {"merge_float32", "hidden_merge_large_mean"},
                              "has dtype float64, expected float32 (the output keeps the input's floating dtype)"),
    "merge_raw_moments_float32": ([(MERGE_WEIGHTS, "n = np.asarray(counts).astype(means.dtype)[:, None]"),
                                   (MERGE_VAR, "var = (n * (variances + means ** 2)).sum(axis=0) / total - mean ** 2")],
                                  {"hidden_merge_large_mean"}, lab04.LARGE_MEAN_HINT),
    "crash": ([(FOLD_RETURN, "import ctypes\n    ctypes.string_at(0)")], FOLD, "segmentation fault"),
}


# The grader keeps a notebook's imports, and importing torch takes the sandboxed child 1.5 to 4 s
# of the 2 to 5 it needs; the graded functions are NumPy. The edited submissions leave out the
# setup cell's torch imports (the torch cells are not run by the grader), the solution and the
# shipped lab are graded as they are.
NO_TORCH = ("import torch\nimport torch.nn.functional as F\n", "")


def make_submission(tmp_path, name, edits):
    return submissions.make_submission(SOLUTION, tmp_path, name, [NO_TORCH] + list(edits))


@pytest.fixture(scope="module")
def expected():
    return grader.Expected("lab04", lab04.HIDDEN_SEED)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Every submission above, the untouched lab, then the solution (after the crash), in one
    batch, public and hidden cases."""
    tmp = tmp_path_factory.mktemp("lab04")
    edits = {**{k: v[0] for k, v in MISTAKES.items()}, **{k: v[0] for k, v in OTHERS.items()},
             "imports_reference": ["from bnlab.numpy import merge_batch_statistics",
                                   "import importlib\nfold = importlib.import_module('bnlab.numpy.fold')"]}
    paths = {name: make_submission(tmp, name, e) for name, e in edits.items()}
    paths.update(lab=LAB, solution=SOLUTION)
    reports = grader.grade_notebooks("lab04", list(paths.values()), LIMITS, jobs=2,
                                     hidden_seed=lab04.HIDDEN_SEED)
    return dict(zip(paths, reports))


def test_points():
    assert sum(q.points for q in QUESTIONS if not q.hidden) == PUBLIC_SCORE
    assert sum(q.points for q in QUESTIONS) == MAX_SCORE
    assert set(BY_KIND) == set(lab04.QUESTIONS) and all(BY_KIND.values())


def test_solution_full_marks(graded):
    submissions.assert_full_marks(graded["solution"], MAX_SCORE, QUESTIONS)


def test_untouched_lab_scores_zero_without_grader_error(graded):
    submissions.assert_untouched_lab_scores_zero(graded["lab"], MAX_SCORE)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_classic_mistake_loses_its_points_and_is_named(graded, name):
    _, broken, named, where = MISTAKES[name]
    by_name = {m.name: m.message for m in lab04.mistakes()}
    messages = {m: by_name[m] for m in named}
    submissions.assert_named_mistakes(graded[name], MAX_SCORE, broken, messages, where)


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_shapes_dtypes_numerics_and_crashes(graded, name):
    _, broken, words = OTHERS[name]
    submissions.assert_fails_with_words(graded[name], broken, words)


def test_crash_is_a_verdict_not_a_wrong_value(graded):
    report = graded["crash"]
    assert report.score == MAX_SCORE - sum(q.max_score for q in report.cases if q.name in FOLD)
    assert all(q.crashed for q in report.cases if not q.passed)


def test_importing_the_reference_is_refused_and_flagged(graded):
    """bnlab.numpy (which now holds the merge and the folding) cannot be imported by a
    submission, and each attempt is flagged; the student's own definitions are graded."""
    report = graded["imports_reference"]
    assert report.score == MAX_SCORE, grader.format_table(report)
    assert any("bnlab.numpy" in flag for flag in report.integrity), report.integrity
    assert len(report.integrity) >= 2  # the import and the module name in a string
    assert any("ImportError" in n and "cannot be imported by a graded submission" in n for n in report.notes)


def test_mistakes_code_without_mistake_agrees_with_the_reference(expected):
    correct = lab04.correct()
    for q in expected.cases:
        assert core.evaluate(q, core.run(q, correct.functions), expected.reference[q.name], []).passed, q.name


def test_every_named_mistake_is_detectable_and_covers_only_its_functions(expected):
    names = [m.name for m in lab04.mistakes()]
    assert len(names) == len(set(names))
    for m in lab04.mistakes():
        runs = [(q, {mm.name: r for mm, r in expected.mistakes[q.name]}) for q in expected.cases]
        assert all(m.name in by_name for q, by_name in runs if m.covers(q))
        assert not any(m.name in by_name for q, by_name in runs if not m.covers(q))
        assert any(not core.evaluate(q, by_name[m.name], expected.reference[q.name], []).passed
                   for q, by_name in runs if m.name in by_name and not q.hidden), m.name


def test_hidden_cases_follow_the_seed():
    ours, published = lab04.hidden_cases(1234), lab04.hidden_cases(lab04.HIDDEN_SEED)
    assert [q.name for q in ours] == [q.name for q in published]
    assert all(q.hidden for q in ours)
    assert not np.array_equal(ours[0].inputs["means"], published[0].inputs["means"])
    large = next(q for q in ours if q.name == "hidden_merge_large_mean")
    assert large.inputs["means"].dtype == np.float32 and np.all(np.abs(large.inputs["means"] - 1000) < 10)
    assert 1 in large.inputs["counts"]


def test_self_checks_pass_on_the_solution_and_name_mistakes(capsys):
    from bnlab import check
    g = submissions.solution_functions(SOLUTION, ("merge", "running", "fold"))
    assert check.merge_batch_statistics(g["merge_batch_statistics"])
    assert check.sync_running_statistics(g["sync_running_statistics"])
    assert check.fold_batch_norm(g["fold_batch_norm"])
    assert "FAIL" not in capsys.readouterr().out
    submissions.assert_self_check_names(capsys, lab04, "fold_bias_not_scaled",
                                        check.fold_batch_norm, "fold_batch_norm",
                                        "fold_batch_norm")


# --- the NumPy references against independent computations (float64)

def _shards(rng, sizes, c, dtype=np.float64):
    return [(5 * (0.5 + rng.random(c)) * rng.standard_normal((n, c)) + 12 + 3 * rng.standard_normal(c)).astype(dtype)
            for n in sizes]


def _statistics(shards, c):
    """counts, means, biased variances of each shard; an empty shard reports NaN (NumPy's mean of nothing)."""
    counts = np.array([len(s) for s in shards])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.stack([s.mean(axis=0) if len(s) else np.full(c, np.nan) for s in shards])
        variances = np.stack([s.var(axis=0) if len(s) else np.full(c, np.nan) for s in shards])
    return counts, means, variances


@pytest.mark.parametrize("sizes", [(8, 3, 16, 5), (1, 1), (1, 0, 6, 1), (0, 7), (64,), (2, 1, 1, 1, 30)])
def test_merge_equals_the_statistics_of_the_concatenated_batch(sizes):
    rng = np.random.default_rng(len(sizes) * 100 + sum(sizes))
    shards = _shards(rng, sizes, 5)
    mean, var = ref.merge_batch_statistics(*_statistics(shards, 5))  # empty shards: NaN, ignored
    batch = np.concatenate(shards)
    np.testing.assert_allclose(mean, batch.mean(axis=0), **tolerance(np.float64, len(batch)))
    np.testing.assert_allclose(var, batch.var(axis=0), **tolerance(np.float64, len(batch)))
    assert mean.dtype == var.dtype == np.float64 and mean.shape == var.shape == (5,)


def test_merge_keeps_float32_and_computes_in_float64_at_a_large_mean():
    rng = np.random.default_rng(1)
    shards = [rng.standard_normal((n, 3)) + 1000 for n in (1, 7, 30, 64)]
    counts, means, variances = _statistics(shards, 3)
    mean, var = ref.merge_batch_statistics(counts, means.astype(np.float32), variances.astype(np.float32))
    assert mean.dtype == var.dtype == np.float32
    mean64, var64 = ref.merge_batch_statistics(counts, means.astype(np.float32).astype(np.float64),
                                               variances.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(mean, mean64.astype(np.float32))  # float64 inside, one rounding at the end
    np.testing.assert_array_equal(var, var64.astype(np.float32))
    batch = np.concatenate(shards)
    np.testing.assert_allclose(var, batch.var(axis=0), rtol=1e-3)  # the inputs' float32 rounding only
    np.testing.assert_allclose(mean, batch.mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sync_running_statistics_equal_batch_norm_on_the_concatenated_batch(dtype):
    rng = np.random.default_rng(2)
    sizes, c = (6, 1, 9, 0), 4
    shards = _shards(rng, sizes, c, dtype)
    running_mean, running_var = (12 + rng.standard_normal(c)).astype(dtype), (1 + rng.random(c)).astype(dtype)
    before = running_mean.copy(), running_var.copy()
    new_mean, new_var = ref.sync_running_statistics(running_mean, running_var, *_statistics(shards, c), momentum=0.3)
    np.testing.assert_array_equal(running_mean, before[0])  # new arrays; the inputs untouched
    np.testing.assert_array_equal(running_var, before[1])
    rm, rv = before[0].copy(), before[1].copy()
    ref.batch_norm_forward(np.concatenate(shards), None, None, running_mean=rm, running_var=rv, momentum=0.3)
    tol = tolerance(dtype, sum(sizes))
    np.testing.assert_allclose(new_mean, rm, **tol)
    np.testing.assert_allclose(new_var, rv, **tol)
    assert new_mean.dtype == new_var.dtype == dtype
    # by hand: momentum 0.3, the unbiased variance with the global count N = 16
    batch = np.concatenate(shards).astype(np.float64)
    np.testing.assert_allclose(new_var, 0.7 * before[1] + 0.3 * batch.var(axis=0, ddof=1), **tol)


def test_sync_running_statistics_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    shards = [5 * rng.standard_normal((n, 3, 2, 2)) + 7 for n in (3, 1, 2)]  # (n_r, C, H, W)
    counts = np.array([s.shape[0] * 4 for s in shards])
    means = np.stack([s.mean(axis=(0, 2, 3)) for s in shards])
    variances = np.stack([s.var(axis=(0, 2, 3)) for s in shards])
    new_mean, new_var = ref.sync_running_statistics(np.zeros(3), np.ones(3), counts, means, variances)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    torch.nn.functional.batch_norm(torch.from_numpy(np.concatenate(shards)), rm, rv, training=True)
    np.testing.assert_allclose(new_mean, rm.numpy(), **tolerance(np.float64, 24))
    np.testing.assert_allclose(new_var, rv.numpy(), **tolerance(np.float64, 24))


def _conv(x, weight, bias, groups):
    """A direct grouped convolution (stride 1, no padding) in NumPy, for any number of spatial
    axes: x (N, C_in, *S), weight (C_out, C_in / groups, *K) -> (N, C_out, *S')."""
    k = weight.shape[2:]
    spatial = tuple(range(2, x.ndim))
    windows = np.lib.stride_tricks.sliding_window_view(x, k, axis=spatial)  # (N, C_in, *S', *K)
    c_out, c_in_g = weight.shape[:2]
    out = []
    for o in range(c_out):
        g = o // (c_out // groups)  # output channel o reads input channels g * c_in_g ...
        patch = windows[:, g * c_in_g:(g + 1) * c_in_g]  # (N, c_in_g, *S', *K)
        axes = (1,) + tuple(range(x.ndim, patch.ndim))  # the input channels and the kernel axes
        w = weight[o].reshape((1, c_in_g) + (1,) * len(spatial) + k)  # (c_in_g, *K) -> broadcast over N, S'
        out.append((patch * w).sum(axis=axes))
    y = np.stack(out, axis=1)  # (N, C_out, *S')
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * len(spatial))


def _bn_eval(z, gamma, beta, running_mean, running_var, eps):
    """eq-bn-eval written out, channels on axis 1."""
    column = (1, -1) + (1,) * (z.ndim - 2)  # (C,) -> (1, C, 1, ...)
    g = np.ones(z.shape[1]) if gamma is None else gamma
    b = np.zeros(z.shape[1]) if beta is None else beta
    return (g.reshape(column) * (z - running_mean.reshape(column)) / np.sqrt(running_var.reshape(column) + eps)
            + b.reshape(column))


@pytest.mark.parametrize("kind,shape,groups,has_bias,affine", [
    ("linear", (6, 6), 1, True, True),
    ("linear", (3, 8), 1, False, True),
    ("conv1d", (4, 4, 3), 1, True, True),
    ("conv2d", (8, 3, 3, 3), 1, False, True),
    ("conv2d", (6, 2, 3, 3), 3, True, True),   # grouped
    ("conv2d", (5, 1, 2, 2), 5, True, False),  # depthwise, BatchNorm without affine
    ("conv3d", (4, 2, 2, 2, 2), 1, True, True),
])
def test_folded_layer_equals_eval_batch_norm_after_the_layer(kind, shape, groups, has_bias, affine):
    rng = np.random.default_rng(sum(shape))
    c_out, eps = shape[0], 1e-3
    weight = rng.standard_normal(shape)
    bias = rng.standard_normal(c_out) if has_bias else None
    gamma, beta = (1 + 0.5 * rng.standard_normal(c_out), rng.standard_normal(c_out)) if affine else (None, None)
    running_mean, running_var = 3 * rng.standard_normal(c_out), 0.1 + 2 * rng.random(c_out)
    args = (weight.copy(), None if bias is None else bias.copy(), gamma, beta, running_mean, running_var)
    w, b = ref.fold_batch_norm(*args, eps=eps)
    np.testing.assert_array_equal(args[0], weight)  # the inputs untouched
    assert w.shape == weight.shape and b.shape == (c_out,) and w.dtype == b.dtype == np.float64
    if kind == "linear":
        x = 4 * rng.standard_normal((7, shape[1])) + 2

        def layer(x, w, b):
            return x @ w.T + (0 if b is None else b)
    else:
        x = 4 * rng.standard_normal((2, shape[1] * groups) + (5,) * (len(shape) - 2)) + 2

        def layer(x, w, b):
            return _conv(x, w, b, groups)
    expected = _bn_eval(layer(x, weight, bias), gamma, beta, running_mean, running_var, eps)
    np.testing.assert_allclose(layer(x, w, b), expected, rtol=1e-12, atol=1e-12)


def test_fold_keeps_float32():
    rng = np.random.default_rng(4)
    w, b = ref.fold_batch_norm(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), None,
                               *(np.ones(4, np.float32) for _ in range(2)), np.zeros(4, np.float32),
                               np.full(4, 4.0, np.float32))
    assert w.dtype == b.dtype == np.float32
    np.testing.assert_allclose(b, np.ones(4), rtol=1e-6)  # beta + a * (0 - 0) with beta = 1


@pytest.mark.parametrize("call,words", [
    (lambda: ref.merge_batch_statistics(np.array([2, 3]), np.zeros((3, 4)), np.ones((3, 4))),
     "one count per replica, 3"),
    (lambda: ref.merge_batch_statistics(np.array([2.0, 3.0]), np.zeros((2, 4)), np.ones((2, 4))),
     "expected integer counts"),
    (lambda: ref.merge_batch_statistics(np.array([2, -1]), np.zeros((2, 4)), np.ones((2, 4))), "counts >= 0"),
    (lambda: ref.merge_batch_statistics(np.array([0, 0]), np.zeros((2, 4)), np.ones((2, 4))),
     "summing to at least 1"),
    (lambda: ref.merge_batch_statistics(np.array([2, 3]), np.zeros(4), np.ones(4)), r"means of shape \(R, C\)"),
    (lambda: ref.merge_batch_statistics(np.array([2, 3]), np.zeros((2, 4)), np.ones((2, 5))),
     "of the same shape"),
    (lambda: ref.merge_batch_statistics(np.array([2, 3]), np.zeros((2, 4)), -np.ones((2, 4))), "variances >= 0"),
    (lambda: ref.sync_running_statistics(np.zeros(4), np.ones(4), np.array([1, 0]), np.zeros((2, 4)),
                                         np.zeros((2, 4))), "Expected more than 1 value per channel"),
    (lambda: ref.sync_running_statistics(np.zeros(3), np.ones(4), np.array([2, 3]), np.zeros((2, 4)),
                                         np.ones((2, 4))), r"running_mean of shape \(4,\)"),
    (lambda: ref.sync_running_statistics(np.zeros(4), np.ones(4), np.array([2, 3]), np.zeros((2, 4)),
                                         np.ones((2, 4)), momentum=0.99 + 1), "momentum in"),
    (lambda: ref.fold_batch_norm(np.ones(4), None, None, None, np.zeros(4), np.ones(4)), "rank 2 or more"),
    (lambda: ref.fold_batch_norm(np.ones((4, 3)), None, np.ones(3), None, np.zeros(3), np.ones(3)),
     r"gamma of shape \(4,\).*OUTPUT channels"),
    (lambda: ref.fold_batch_norm(np.ones((4, 3)), np.ones(3), None, None, np.zeros(4), np.ones(4)),
     r"bias of shape \(4,\)"),
    (lambda: ref.fold_batch_norm(np.ones((4, 3)), None, None, None, None, np.ones(4)), "running_mean of shape"),
    (lambda: ref.fold_batch_norm(np.ones((4, 3)), None, None, None, np.zeros(4), -np.ones(4)), "running_var >= 0"),
    (lambda: ref.fold_batch_norm(np.ones((4, 3)), None, None, None, np.zeros(4), np.ones(4), eps=-1.0), "eps >= 0"),
])
def test_references_validate_their_inputs(call, words):
    with pytest.raises(ValueError, match=words):
        call()
