"""The catalog of classic wrong implementations of labs 1 and 2, kept as test fixtures.

Each ``Entry`` is a mistake students really make, written as precise source substitutions on
the lab's master solution (``submissions.make_submission``: each ``old`` string must occur
exactly once, so an entry cannot silently grade an unchanged solution). What it does to the
grade is pinned down:

* ``breaks``: exactly the PUBLIC cases that fail (what a student sees before submitting);
* ``hidden_breaks``: exactly the hidden cases that fail in the instructor's run;
* ``names``: the words the feedback must contain to count as naming the mistake, and
  ``where``: the cases (public or hidden) whose feedback must contain them. ``names`` is
  normally the ``message`` of the lab's named ``Mistake`` called ``mistake``; for a shape or
  dtype mistake it is the grader's own words (``mistake`` None), and for the one-pass
  variance it is the hint of the hidden case that catches it.

``tests/test_grade.py`` and ``tests/test_grade_lab02.py`` grade the entries of their lab in a
student's (public) run; ``tests/test_grade_catalog.py`` grades all of them in the instructor's
run and reports the catch rate.
"""

import os
from typing import NamedTuple, Optional

import submissions

from bnlab.grade import grader, lab01, lab02

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTIONS = {"lab01": os.path.join(ROOT, "solutions", "lab01_batchnorm.ipynb"),
             "lab02": os.path.join(ROOT, "solutions", "lab02_normalization_family.ipynb")}
MODULES = {"lab01": lab01, "lab02": lab02}


class Entry(NamedTuple):
    lab: str                  # "lab01" or "lab02"
    name: str
    description: str          # the classic mistake, in a student's words
    edits: list               # (old, new) substitutions on the master solution, or cells appended
    breaks: frozenset         # the public cases that fail, exactly
    names: str                # what the feedback must contain to name the mistake
    where: frozenset          # the cases whose feedback must contain ``names``
    hidden_breaks: frozenset = frozenset()  # the hidden cases that fail, exactly
    mistake: Optional[str] = None           # the named Mistake whose message is ``names``

    def submission(self, tmp_path):
        """The entry's notebook, written to ``tmp_path / NAME.ipynb``; returns its path."""
        return submissions.make_submission(SOLUTIONS[self.lab], tmp_path, self.name, self.edits)


def message(lab, mistake):
    """The message of ``lab``'s named mistake ``mistake``."""
    return next(m.message for m in MODULES[lab].mistakes() if m.name == mistake)


def _entry(lab, name, description, edits, breaks, where=None, *, hidden=(), mistake=None, words=None):
    """A catalog entry, named by ``lab``'s Mistake ``mistake`` (default: ``name``) or, with
    ``words``, by the grader's words; ``where`` defaults to ``breaks | hidden``."""
    if words is None:
        mistake = mistake or name
        words = message(lab, mistake)
    where = set(breaks) | set(hidden) if where is None else where
    return Entry(lab, name, description, list(edits), frozenset(breaks), words, frozenset(where),
                 frozenset(hidden), mistake)


def public(lab):
    """``lab``'s public case names, in order."""
    return [q.name for q in MODULES[lab].cases()]


# --- lab 1: batch_norm_forward, batch_norm_backward ---------------------------------------

L1 = set(public("lab01"))
FORWARD_TRAINING = {"forward_2d", "forward_4d", "forward_no_affine", "forward_5d_float32"}
BACKWARD = {"backward_dx", "backward_params", "backward_no_affine", "backward_eval"}
RUNNING = {"running_mean", "running_var"}
HIDDEN_BACKWARD = {"hidden_backward_float32", "hidden_backward_2d"}
HIDDEN_FLOAT64 = {"hidden_forward_batch2", "hidden_eval_3d", "hidden_backward_2d"}  # float64 values

RUNNING_UPDATE = """            running_mean *= 1 - momentum
            running_mean += momentum * mu
            running_var *= 1 - momentum
            running_var += momentum * var * (m / (m - 1))"""
MEAN_TERM = "dx_hat - dx_hat.mean(axis=axes, keepdims=True)"
VAR_TERM = "\n                                    - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True))"
AXES = "axes = (0,) + tuple(range(2, x.ndim))"
X_HAT = "x_hat = (x - mu.reshape(shape)) * rstd.reshape(shape)"
RSTD = "rstd = 1.0 / np.sqrt(var + eps)"
DGAMMA = "dgamma = (dy * x_hat).sum(axis=axes)"


def _lab01(name, description, edits, breaks, where=None, **named):
    return _entry("lab01", name, description, edits, breaks, where, **named)


LAB01 = [
    # running statistics
    _lab01("biased_running_var", "running_var updated with the biased np.var(x), without m / (m - 1)",
           [("running_var += momentum * var * (m / (m - 1))", "running_var += momentum * var")],
           {"running_var"}, hidden={"hidden_running_2d"}),
    _lab01("running_var_batch_size", "the unbiased correction N / (N - 1) with the batch size N, where each "
           "channel reduces m = N * H * W values",
           [("m = x.size // x.shape[1]  # values per channel", "m = x.shape[0]  # the batch size")],
           {"running_var"}),  # the hidden running case is (N, C): there m = N
    _lab01("momentum_reversed", "momentum used as Keras's decay: running = momentum * running + (1 - momentum) * batch",
           [(RUNNING_UPDATE, RUNNING_UPDATE.replace("*= 1 - momentum", "*= momentum")
             .replace("+= momentum *", "+= (1 - momentum) *"))],
           RUNNING, hidden={"hidden_running_2d"}),
    _lab01("momentum_no_decay", "running = running + momentum * batch: the old value is never decayed",
           [(RUNNING_UPDATE, RUNNING_UPDATE.replace("            running_mean *= 1 - momentum\n", "")
             .replace("            running_var *= 1 - momentum\n", ""))],
           RUNNING, hidden={"hidden_running_2d"}),
    _lab01("rebind_running", "running_mean = (1 - momentum) * running_mean + ...: a new array, the caller's unchanged",
           [(RUNNING_UPDATE, "            running_mean = (1 - momentum) * running_mean + momentum * mu\n"
                             "            running_var = (1 - momentum) * running_var + momentum * var * (m / (m - 1))")],
           RUNNING, hidden={"hidden_running_2d"}),
    _lab01("running_of_x_hat", "the running statistics updated with the mean and variance of the normalized x_hat",
           [(RUNNING_UPDATE, "            x_hat = (x - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)\n"
             + RUNNING_UPDATE.replace("momentum * mu", "momentum * x_hat.mean(axis=axes)")
             .replace("momentum * var *", "momentum * x_hat.var(axis=axes) *"))],
           # running_mean starts at 0 and stays about 0, as with rebind_running, which is tried
           # first and named there
           RUNNING, {"running_var", "hidden_running_2d"}, hidden={"hidden_running_2d"}),
    # the normalization
    _lab01("eps_outside", "std = np.sqrt(var); x_hat = (x - mu) / (std + eps)",
           [(RSTD, "rstd = 1.0 / (np.sqrt(var) + eps)")],
           # float32: the 2e-6 relative change is inside float32's tolerance, so those cases keep their points
           L1 - {"forward_5d_float32"} - RUNNING, hidden=HIDDEN_FLOAT64),
    _lab01("no_eps", "x_hat = (x - mu) / np.sqrt(var): eps forgotten",
           [(RSTD, "rstd = 1.0 / np.sqrt(var)")], L1 - {"forward_5d_float32"} - RUNNING, hidden=HIDDEN_FLOAT64),
    _lab01("unbiased_norm", "normalizing with np.var(x, ddof=1), the unbiased variance",
           [("var = x.var(axis=axes)", "var = x.var(axis=axes, ddof=1)")],
           FORWARD_TRAINING | {"running_var", "backward_dx", "backward_params", "backward_no_affine"},
           # running_var is corrected twice, which no named mistake does
           FORWARD_TRAINING | {"backward_dx", "backward_params", "backward_no_affine", "hidden_forward_batch2"}
           | HIDDEN_BACKWARD, hidden={"hidden_forward_batch2", "hidden_running_2d"} | HIDDEN_BACKWARD),
    _lab01("one_pass_variance", "var = (x**2).mean() - mu**2, the one-pass formula (it cancels in float32)",
           [("var = x.var(axis=axes)", "var = (x**2).mean(axis=axes) - mu**2")],
           # the public inputs (mean 12, std 5) lose too few digits: only the hidden mean-1000
           # float32 case shows it, and its hint names it
           set(), words=lab01.LARGE_MEAN_HINT, hidden={"hidden_forward_large_mean"}),
    # the axes
    _lab01("axes_all", "x.mean() over every axis: one mean for the whole tensor",
           [(AXES, "axes = tuple(range(x.ndim))")],
           FORWARD_TRAINING | RUNNING | {"backward_dx", "backward_params", "backward_no_affine"},
           # running_var and backward_params: a scalar statistic, where arrays of shape (C,) belong
           FORWARD_TRAINING | {"running_mean", "backward_dx", "backward_no_affine", "hidden_forward_batch2",
                               "hidden_forward_large_mean", "hidden_running_2d"} | HIDDEN_BACKWARD,
           hidden={"hidden_forward_batch2", "hidden_forward_large_mean", "hidden_running_2d"} | HIDDEN_BACKWARD),
    _lab01("axes_batch", "x.mean(axis=0) for every rank: one mean per (C, H, W) position",
           [(AXES, "axes = (0,)"), (X_HAT, "x_hat = (x - mu) * rstd")],
           # rank 2 is unaffected; the broken broadcasting makes rank > 2 raise in the other cases
           L1 - {"forward_2d", "backward_no_affine"}, FORWARD_TRAINING - {"forward_2d"},
           hidden={"hidden_backward_float32", "hidden_eval_3d"}),
    _lab01("axes_last", "the channels-last habit: statistics over every axis but the last",
           [(AXES, "axes = tuple(range(x.ndim - 1))"), (X_HAT, "x_hat = (x - mu) * rstd")],
           # as axes_batch: rank 2 is right, and the broken broadcasting raises elsewhere
           L1 - {"forward_2d", "backward_no_affine"}, FORWARD_TRAINING - {"forward_2d"},
           hidden={"hidden_backward_float32", "hidden_eval_3d"}),
    # eval mode
    _lab01("eval_batch_stats", "eval mode normalizing with the batch's mean and variance",
           [("mu, var = running_mean, running_var", "mu, var = x.mean(axis=axes), x.var(axis=axes)")],
           {"eval_mode", "backward_eval"}, {"eval_mode", "hidden_eval_3d"}, hidden={"hidden_eval_3d"}),
    _lab01("eval_updates_running", "the running statistics updated in eval mode too",
           [("mu, var = running_mean, running_var",
             "mu, var = running_mean.copy(), running_var.copy()\n" + RUNNING_UPDATE.replace(
                 "momentum * mu", "momentum * x.mean(axis=axes)").replace("momentum * var", "momentum * x.var(axis=axes)")
             .replace("            ", "        "))],
           {"eval_mode"}, hidden={"hidden_eval_3d"}),
    # the backward pass
    _lab01("backward_no_mean_path", "dx without the term through the batch mean",
           [(MEAN_TERM, "dx_hat")], {"backward_dx", "backward_no_affine"}, hidden=HIDDEN_BACKWARD),
    _lab01("backward_no_var_path", "dx without the term through the batch variance",
           [(VAR_TERM, ")")], {"backward_dx", "backward_no_affine"}, hidden=HIDDEN_BACKWARD),
    _lab01("backward_var_path_unbiased", "dx's variance term divided by m - 1: the derivative of the unbiased variance",
           [(VAR_TERM, "\n                                    - x_hat * (dx_hat * x_hat).sum(axis=axes, keepdims=True)"
                       " / (dy.size // dy.shape[1] - 1))")],
           {"backward_dx", "backward_no_affine"}, hidden=HIDDEN_BACKWARD),
    _lab01("backward_constant_stats", "dx = dy * gamma / sqrt(var + eps) in training: mu and var treated as constants",
           [('if cache["training"]:', "if False:")], {"backward_dx", "backward_no_affine"}, hidden=HIDDEN_BACKWARD),
    _lab01("backward_eval_as_training", "the training formula for dx in eval mode too",
           [('if cache["training"]:', "if True:")], {"backward_eval"}),
    _lab01("backward_no_gamma", "dx_hat = dy: gamma forgotten in dx",
           [("dx_hat = dy * gamma.reshape(shape) if gamma is not None else dy", "dx_hat = dy")],
           {"backward_dx", "backward_eval"}, hidden=HIDDEN_BACKWARD),
    _lab01("dgamma_from_x", "dgamma = sum(dy * x) instead of sum(dy * x_hat)",
           [("cache = dict(x_hat=x_hat,", "cache = dict(x=x, x_hat=x_hat,"),
            (DGAMMA, 'dgamma = (dy * cache["x"]).sum(axis=axes)')], {"backward_params"}, hidden=HIDDEN_BACKWARD),
    _lab01("dgamma_from_dy", "dgamma = sum(dy), the same as dbeta",
           [(DGAMMA, "dgamma = dy.sum(axis=axes)")], {"backward_params"}, hidden=HIDDEN_BACKWARD),
    _lab01("param_grads_mean", "dgamma and dbeta averaged over the batch instead of summed",
           [("dbeta = dy.sum(axis=axes) if", "dbeta = dy.mean(axis=axes) if"),
            (DGAMMA, "dgamma = (dy * x_hat).mean(axis=axes)")], {"backward_params"}, hidden=HIDDEN_BACKWARD),
    # shapes and dtypes: the grader's own words name them
    _lab01("dbeta_axis0", "dbeta = dy.sum(axis=0), the 2-D formula, for 4-D input",
           [("dbeta = dy.sum(axis=axes) if", "dbeta = dy.sum(axis=0) if")], {"backward_params"},
           {"backward_params"}, words="dbeta has shape (4, 3, 5), expected (4,)", hidden={"hidden_backward_float32"}),
    _lab01("dgamma_keepdims", "dgamma summed with keepdims=True: shape (1, C, 1, 1) instead of (C,)",
           [(DGAMMA, "dgamma = (dy * x_hat).sum(axis=axes, keepdims=True)")], {"backward_params"},
           {"backward_params"}, words="dgamma has shape (1, 4, 1, 1), expected (4,)", hidden=HIDDEN_BACKWARD),
    _lab01("float64_out", "float32 input, float64 output",
           [("    return y, cache", "    return y.astype(np.float64), cache")], {"forward_5d_float32"},
           words="y has dtype float64, expected float32", hidden={"hidden_forward_large_mean"}),
]


# --- lab 2: spatial BatchNorm, LayerNorm, GroupNorm ---------------------------------------

L2 = set(public("lab02"))
SBN = {n for n in L2 if n.startswith("sbn_")}
LN = {n for n in L2 if n.startswith("ln_")}
GN = {n for n in L2 if n.startswith("gn_")}
HIDDEN_SBN, HIDDEN_LN, HIDDEN_GN = ({f"hidden_{layer}_forward", f"hidden_{layer}_backward"}
                                    for layer in ("sbn", "ln", "gn"))

# the spatial BatchNorm reshapes of the master, and the wrong ones
X_TO_2D, DY_TO_2D = "x.transpose(0, 2, 3, 1).reshape(-1, C)", "dy.transpose(0, 2, 3, 1).reshape(-1, C)"
Y_BACK, DX_BACK = "y2d.reshape(N, H, W, C).transpose(0, 3, 1, 2)", "dx2d.reshape(N, H, W, C).transpose(0, 3, 1, 2)"
# GroupNorm's group view, and the interleaved one (channel c in group c % G)
INTERLEAVE = ".reshape(N, {c} // {g}, {g}, -1).transpose(0, 2, 1, 3).reshape(N, {g}, -1)"
UNINTERLEAVE = ".reshape(N, {g}, {c} // {g}, -1).transpose(0, 2, 1, 3).reshape({shape})"
LN_AXES = "axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))"
LN_DX = ("dx = rstd * (dx_hat - dx_hat.mean(axis=axes, keepdims=True)\n"
         "                 - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True))")
GN_DX = ("dx = rstd * (dx_hat - dx_hat.mean(axis=2, keepdims=True)\n"
         "                 - x_hat_g * (dx_hat * x_hat_g).mean(axis=2, keepdims=True))")
GN_GROUPS = "xg = x.reshape(N, num_groups, -1)"
GN_DX_HAT = ".reshape(N, G, -1)  # -> (N, G, -1)"
GN_X_HAT = "x_hat_g = x_hat.reshape(N, G, -1)"


def _lab02(name, description, edits, breaks, where=None, **named):
    return _entry("lab02", name, description, edits, breaks, where, **named)


LAB02 = [
    # spatial BatchNorm
    _lab02("sbn_channels_scrambled", "x.reshape(-1, C) without moving the channels last first",
           [(X_TO_2D, "x.reshape(-1, C)"), (DY_TO_2D, "dy.reshape(-1, C)"),
            (Y_BACK, "y2d.reshape(N, C, H, W)"), (DX_BACK, "dx2d.reshape(N, C, H, W)")], SBN, hidden=HIDDEN_SBN),
    _lab02("sbn_not_moved_back", "the (N*H*W, C) result reshaped straight back to (N, C, H, W)",
           [(Y_BACK, "y2d.reshape(N, C, H, W)"), (DX_BACK, "dx2d.reshape(N, C, H, W)")],
           # dgamma and dbeta come from dy moved the right way: sbn_backward_params keeps its point
           SBN - {"sbn_backward_params"}, hidden=HIDDEN_SBN),
    _lab02("sbn_biased_running_var", "running_var updated with the biased variance",
           [("running_var += momentum * var * (m / (m - 1))", "running_var += momentum * var")],
           {"sbn_running_eval"}, mistake="biased_running_var"),
    _lab02("sbn_eval_batch_stats", "eval mode normalizing with the batch statistics",
           [("mu, var = running_mean, running_var", "mu, var = x.mean(axis=0), x.var(axis=0)")],
           {"sbn_running_eval"}, mistake="eval_batch_stats"),
    _lab02("sbn_backward_no_var_path", "dx without the term through the variance",
           [("dx = rstd * (dx_hat - dx_hat.mean(axis=0) - x_hat * (dx_hat * x_hat).mean(axis=0))",
             "dx = rstd * (dx_hat - dx_hat.mean(axis=0))")],
           {"sbn_backward_dx"}, mistake="backward_no_var_path", hidden={"hidden_sbn_backward"}),
    # LayerNorm
    _lab02("layer_norm_batch_axis", "LayerNorm's statistics over axis 0, as in BatchNorm",
           [(LN_AXES, "axes = (0,)")], LN, hidden=HIDDEN_LN),
    _lab02("layer_norm_last_axis_only", "LayerNorm over the last axis only, whatever normalized_shape says",
           [(LN_AXES, "axes = (x.ndim - 1,)")],
           # with normalized_shape of one axis the last axis is right
           {"ln_forward_2dims", "ln_backward_dx", "ln_backward_params"}, hidden={"hidden_ln_forward"}),
    _lab02("layer_norm_all_features", "LayerNorm over every axis but the batch axis (the image habit)",
           [(LN_AXES, "axes = tuple(range(1, x.ndim))")],
           # where x is (N, *normalized_shape) that is right: the float32 case and the hidden ones
           LN - {"ln_forward_float32_no_affine"}),
    _lab02("layer_norm_unbiased", "LayerNorm normalizing with np.var(ddof=1)",
           [("var = x.var(axis=axes, keepdims=True)", "var = x.var(axis=axes, keepdims=True, ddof=1)")],
           LN, hidden=HIDDEN_LN),
    _lab02("layer_norm_std_plus_eps", "(x - mean) / (np.std(x) + eps), the Annotated Transformer's LayerNorm",
           [("rstd = 1.0 / np.sqrt(var + eps)\n    x_hat = (x - mu) * rstd\n",
             "rstd = 1.0 / (x.std(axis=axes, keepdims=True) + eps)\n    x_hat = (x - mu) * rstd\n")],
           # float32: the 2e-6 relative change is inside float32's tolerance
           LN - {"ln_forward_float32_no_affine"}, mistake="layer_norm_eps_outside", hidden={"hidden_ln_backward"}),
    _lab02("layer_norm_param_grads_per_sample", "LayerNorm's dgamma and dbeta summed over the normalized "
           "axes (one per sample) instead of over the samples",
           [("dbeta = dy.sum(axis=lead) if", "dbeta = dy.sum(axis=axes) if"),
            ("dgamma = (dy * x_hat).sum(axis=lead)", "dgamma = (dy * x_hat).sum(axis=axes)")],
           {"ln_backward_params"}, {"ln_backward_params"}, words="dgamma has shape (4, 3), expected (5, 6)", hidden={"hidden_ln_backward"}),
    _lab02("layer_norm_backward_no_mean_path", "LayerNorm's dx without the term through the mean",
           [("dx_hat - dx_hat.mean(axis=axes, keepdims=True)", "dx_hat")], {"ln_backward_dx"},
           hidden={"hidden_ln_backward"}),
    _lab02("layer_norm_backward_no_var_path", "LayerNorm's dx without the term through the variance",
           [("\n                 - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True))", ")")],
           {"ln_backward_dx"}, hidden={"hidden_ln_backward"}),
    _lab02("layer_norm_backward_constant_stats", "LayerNorm's dx = dy * gamma / sqrt(var + eps)",
           [(LN_DX, "dx = rstd * dx_hat")], {"ln_backward_dx"}, hidden={"hidden_ln_backward"}),
    # GroupNorm
    _lab02("group_norm_interleaved", "GroupNorm's groups made of interleaved channels (c % num_groups)",
           [(GN_GROUPS, "xg = x" + INTERLEAVE.format(c="C", g="num_groups")),
            ("x_hat = ((xg - mu) * rstd).reshape(x.shape)",
             "x_hat = ((xg - mu) * rstd)" + UNINTERLEAVE.format(c="C", g="num_groups", shape="x.shape")),
            (GN_DX_HAT, INTERLEAVE.format(c="dy.shape[1]", g="G")),
            (GN_X_HAT, "x_hat_g = x_hat" + INTERLEAVE.format(c="dy.shape[1]", g="G")),
            ("dx = dx.reshape(dy.shape)", "dx = dx" + UNINTERLEAVE.format(c="dy.shape[1]", g="G", shape="dy.shape"))],
           # 1 group or C groups: interleaved and consecutive are the same
           GN - {"gn_forward_extremes"}, hidden=HIDDEN_GN),
    _lab02("group_norm_group_size", "num_groups read as the number of channels per group",
           [(GN_GROUPS, "xg = x.reshape(N, C // num_groups, -1)"),
            ("num_groups=num_groups)", "num_groups=C // num_groups)")],
           # the hidden backward case has 9 channels in 3 groups: 3 groups of 3 either way
           GN, hidden={"hidden_gn_forward"}),
    _lab02("group_norm_channels_only", "GroupNorm's statistics over the group's channels only, one per "
           "spatial position",
           [(GN_GROUPS, "xg = x.reshape(N, num_groups, C // num_groups, -1)"),
            (GN_DX_HAT, ".reshape(N, G, dy.shape[1] // G, -1)"),
            (GN_X_HAT, "x_hat_g = x_hat.reshape(N, G, dy.shape[1] // G, -1)")], GN, hidden=HIDDEN_GN),
    _lab02("group_norm_gamma_last_axis", "GroupNorm's gamma and beta (C,) broadcast against the last axis",
           [("y = y * gamma.reshape(shape)", "y = y * gamma"), ("y = y + beta.reshape(shape)", "y = y + beta")],
           # the forward only: the backward cases keep their points; where the last axis is
           # not C, NumPy refuses to broadcast and the feedback is that error
           {"gn_forward", "gn_forward_3d", "gn_forward_extremes"}, {"gn_forward"}, hidden=HIDDEN_GN),
    _lab02("group_norm_unbiased", "GroupNorm normalizing with np.var(ddof=1)",
           [("var = xg.var(axis=2, keepdims=True)", "var = xg.var(axis=2, keepdims=True, ddof=1)")],
           GN, hidden=HIDDEN_GN),
    _lab02("group_norm_backward_no_mean_path", "GroupNorm's dx without the term through the mean",
           [("dx_hat - dx_hat.mean(axis=2, keepdims=True)", "dx_hat")], {"gn_backward_dx"},
           hidden={"hidden_gn_backward"}),
    _lab02("group_norm_backward_no_var_path", "GroupNorm's dx without the term through the variance",
           [("\n                 - x_hat_g * (dx_hat * x_hat_g).mean(axis=2, keepdims=True))", ")")],
           {"gn_backward_dx"}, hidden={"hidden_gn_backward"}),
    _lab02("group_norm_backward_constant_stats", "GroupNorm's dx = dy * gamma / sqrt(var + eps)",
           [(GN_DX, "dx = rstd * dx_hat")], {"gn_backward_dx"}, hidden={"hidden_gn_backward"}),
]

CATALOG = LAB01 + LAB02
assert len({e.name for e in CATALOG}) == len(CATALOG), "catalog names must be unique"


def of(lab):
    """``lab``'s entries, by name."""
    return {e.name: e for e in CATALOG if e.lab == lab}


def named_in(entry, report):
    """The cases of ``report`` whose feedback contains ``entry.names``."""
    return {c.name for c in report.cases if any(entry.names in f for f in c.feedback)}


def check(entry, report):
    """Assert that ``report``, the grade of ``entry``'s notebook in a student's run (public cases
    only) or the instructor's (hidden cases too), is what the entry says: exactly ``breaks``
    (and ``hidden_breaks``) fail, each losing all its points and no other case any; every
    ``where`` case of the run names the mistake, and a named Mistake is recognised there (as
    the only one) and nowhere else."""
    table = grader.format_table(report)
    assert report.status == "graded", report.notes
    broken = entry.breaks | (frozenset() if report.public_only else entry.hidden_breaks)
    assert {c.name for c in report.cases if not c.passed} == broken, table
    assert report.score == sum(c.max_score for c in report.cases if c.name not in broken), table
    for c in report.cases:
        if c.name in entry.where:
            assert any(entry.names in f for f in c.feedback), (c.name, c.feedback)
            assert entry.mistake is None or c.mistakes == [entry.mistake], (c.name, c.mistakes)
        else:
            assert entry.mistake not in c.mistakes, (c.name, c.mistakes)
