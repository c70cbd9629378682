"""Lab 2 (``labs/lab02_normalization_family.ipynb``): the questions, their points and the named mistakes.

Graded functions (the semantics of ``torch.nn.functional``'s, as in ``bnlab.numpy``):

* ``spatial_batch_norm_forward(x, gamma, beta, *, running_mean=None, running_var=None,
  training=True, momentum=0.1, eps=1e-5) -> (y, cache)`` for x of shape (N, C, H, W), and
  ``spatial_batch_norm_backward(dy, cache) -> (dx, dgamma, dbeta)``;
* ``layer_norm_forward(x, normalized_shape, gamma, beta, *, eps=1e-5) -> (y, cache)`` (statistics
  over the trailing ``normalized_shape`` axes, gamma and beta of shape ``normalized_shape``) and
  ``layer_norm_backward(dy, cache) -> (dx, dgamma, dbeta)``;
* ``group_norm_forward(x, num_groups, gamma, beta, *, eps=1e-5) -> (y, cache)`` (groups of
  consecutive channels, gamma and beta per channel, (C,)) and ``group_norm_backward(dy, cache)
  -> (dx, dgamma, dbeta)``.

Inputs follow the course's testing rules: shifted and scaled (5 * randn + 12), random gamma and
beta, a RANDOM upstream gradient, float64 except where float32 is the point. The expected
outputs come from ``bnlab.numpy`` (imported only in the parent process, never sent to the
child). The mistakes are ``bnlab.grade.mistakes``' wrong groupings and flags; the spatial
BatchNorm ones include lab 1's (the same code and messages).
"""

from math import prod

import numpy as np

from bnlab.grade import lab01
from bnlab.grade import core
from bnlab.grade.core import Case, Mistake, Stats
from bnlab.grade.lab01 import backward_step, bn_stats, forward_step, inp
from bnlab.grade.mistakes import (buggy_backward, buggy_family, buggy_forward, group_norm_grouping,
                                  layer_norm_grouping)

LAB = "lab02"
SBN_FORWARD, SBN_BACKWARD = "spatial_batch_norm_forward", "spatial_batch_norm_backward"
LN_FORWARD, LN_BACKWARD = "layer_norm_forward", "layer_norm_backward"
GN_FORWARD, GN_BACKWARD = "group_norm_forward", "group_norm_backward"
FUNCTIONS = (SBN_FORWARD, SBN_BACKWARD, LN_FORWARD, LN_BACKWARD, GN_FORWARD, GN_BACKWARD)
SEED = 20240202
HIDDEN_SEED = 20240212  # the default; an instructor passes their own (--hidden-seed)
QUESTIONS = {"sbn": "Spatial BatchNorm (N, C, H, W)", "ln": "LayerNorm", "gn": "GroupNorm"}
EPS = 1e-5


def reference():
    """The functions the expected outputs come from."""
    from bnlab import numpy as ref
    return {SBN_FORWARD: ref.batch_norm_forward, SBN_BACKWARD: ref.batch_norm_backward,
            LN_FORWARD: ref.layer_norm_forward, LN_BACKWARD: ref.layer_norm_backward,
            GN_FORWARD: ref.group_norm_forward, GN_BACKWARD: ref.group_norm_backward}


def ln_step(normalized_shape, x="x", gamma="gamma", beta="beta"):
    return dict(call=LN_FORWARD, args=[inp(x), list(normalized_shape), inp(gamma), inp(beta)],
                kwargs=dict(eps=EPS), returns=["y", "cache"])


def gn_step(num_groups, x="x", gamma="gamma", beta="beta"):
    return dict(call=GN_FORWARD, args=[inp(x), num_groups, inp(gamma), inp(beta)],
                kwargs=dict(eps=EPS), returns=["y", "cache"])


def ln_stats(shape, normalized_shape):
    lead = len(shape) - len(normalized_shape)
    return Stats((prod(shape[:lead]), prod(normalized_shape)), (1,), (1,) * lead + tuple(normalized_shape),
                 "sample (over normalized_shape)")


def gn_stats(shape, num_groups):
    return Stats((shape[0], num_groups, prod(shape[1:]) // num_groups), (2,),
                 (1, -1) + (1,) * (len(shape) - 2), "sample and group")


def cases(seed=SEED, hidden_seed=None):
    """The lab's public cases, with inputs drawn deterministically from ``seed``, then, when
    ``hidden_seed`` is given, the hidden ones (``hidden_cases``). A case's question is its
    layer, the prefix of its name (QUESTIONS)."""
    return core.public_and_hidden(public_cases, hidden_cases, seed, hidden_seed,
                                  lambda q: q.name.removeprefix("hidden_").split("_")[0])


def _tensors(rng, shape, param_shape, dtype=np.float64, affine=True):
    """Shifted, scaled x; random gamma, beta and upstream gradient dy."""
    out = dict(x=(5 * rng.standard_normal(shape) + 12).astype(dtype),
               dy=rng.standard_normal(shape).astype(dtype))
    if affine:
        out.update(gamma=(1 + 0.5 * rng.standard_normal(param_shape)).astype(dtype),
                   beta=rng.standard_normal(param_shape).astype(dtype))
    return out


def public_cases(seed):
    """Per layer, its forward cases, then dx and (dgamma, dbeta) after a forward call (random dy)."""
    rng = np.random.default_rng(seed)

    def tensors(shape, param_shape, dtype=np.float64, affine=True):
        return _tensors(rng, shape, param_shape, dtype, affine)

    def layer(prefix, title, step, backward, stats, m, forwards, backward_case, extra=()):
        """``forwards``: (name, what, points, (shape, layer argument, param shape, dtype, affine));
        ``extra``: more forward questions; ``backward_case``: (shape, layer argument, param shape)."""
        qs = []
        for name, what, points, (shape, arg, pshape, dtype, affine) in forwards:
            inputs = tensors(shape, pshape, dtype, affine)
            g, b = ("gamma", "beta") if affine else (None, None)
            plan = dict(steps=[step(arg, gamma=g, beta=b)])
            qs.append(Case(f"{prefix}_{name}", f"{title} forward, {what}", points, plan, inputs,
                               ("s0_y",), m(shape, arg), "forward", stats=stats(shape, arg)))
        qs += extra
        names = tuple(q.name for q in qs)
        shape, arg, pshape = backward_case
        inputs = tensors(shape, pshape)
        plan = dict(steps=[step(arg), backward_step(function=backward)])
        qs.append(Case(f"{prefix}_backward_dx", f"{title} backward, {shape}: dx (random dy)", 3, plan,
                           inputs, ("s1_dx",), m(shape, arg), "backward", names, stats(shape, arg)))
        qs.append(Case(f"{prefix}_backward_params", f"{title} backward: dgamma and dbeta", 1, plan,
                           inputs, ("s1_dgamma", "s1_dbeta"), m(shape, arg), "backward", names))
        return qs

    # BatchNorm for images: per channel over (N, H, W). Running statistics over two training
    # calls, then one call in eval mode.
    shape = (6, 3, 4, 5)
    inputs = {f"x{i}": 5 * rng.standard_normal(shape) + 12 for i in range(3)}
    inputs.update(gamma=1 + 0.5 * rng.standard_normal(3), beta=rng.standard_normal(3),
                  rm0=np.zeros(3), rv0=np.ones(3))
    plan = dict(buffers=dict(rm="rm0", rv="rv0"),
                steps=[forward_step(x=f"x{i}", rm="rm", rv="rv", training=i < 2, function=SBN_FORWARD)
                       for i in range(3)])
    running = Case("sbn_running_eval", "spatial BatchNorm: running statistics after 2 training calls "
                       "(per channel, unbiased, in place), then eval mode", 2, plan, inputs,
                       ("s0_running_mean", "s0_running_var", "s1_running_mean", "s1_running_var",
                        "s2_y", "s2_running_mean", "s2_running_var"), prod(shape) // 3, "running")
    qs = layer("sbn", "spatial BatchNorm", lambda _, **kw: forward_step(function=SBN_FORWARD, **kw),
               SBN_BACKWARD, lambda shape, _: bn_stats(shape), lambda shape, _: prod(shape) // shape[1], [
                   ("forward", "training, (N, C, H, W) = (4, 3, 5, 6)", 2, ((4, 3, 5, 6), None, (3,), np.float64, True)),
                   ("forward_float32", "training, float32 (3, 4, 6, 5)", 1, ((3, 4, 6, 5), None, (4,), np.float32, True)),
               ], ((5, 4, 3, 6), None, (4,)), extra=[running])
    qs[-2].requires = qs[-1].requires = ("sbn_forward", "sbn_forward_float32")  # not the running statistics

    # LayerNorm: per sample over the trailing normalized_shape axes, elementwise gamma and beta.
    qs += layer("ln", "LayerNorm", ln_step, LN_BACKWARD, ln_stats, lambda shape, ns: prod(ns), [
        ("forward", "(N, L, D) = (4, 6, 8), normalized_shape (8,)", 2, ((4, 6, 8), (8,), (8,), np.float64, True)),
        ("forward_2dims", "(3, 4, 5, 6), normalized_shape (5, 6)", 2, ((3, 4, 5, 6), (5, 6), (5, 6), np.float64, True)),
        ("forward_float32_no_affine", "float32 (6, 10), gamma = beta = None", 1,
         ((6, 10), (10,), (10,), np.float32, False)),
    ], ((4, 3, 5, 6), (5, 6), (5, 6)))

    # GroupNorm: per sample over groups of C // G consecutive channels, per-channel gamma and
    # beta; also num_groups = 1 (LayerNorm over (C, H, W), per-channel gamma) and = C (InstanceNorm).
    shape = (3, 4, 5, 2)
    extremes = Case("gn_forward_extremes", "GroupNorm forward, num_groups = 1 and num_groups = C", 1,
                        dict(steps=[gn_step(1), gn_step(4)]), tensors(shape, (4,)), ("s0_y", "s1_y"),
                        prod(shape[1:]), "forward")
    qs += layer("gn", "GroupNorm", gn_step, GN_BACKWARD, gn_stats, lambda shape, g: prod(shape[1:]) // g, [
        ("forward", "(N, C, H, W) = (4, 6, 3, 6), 3 groups", 2, ((4, 6, 3, 6), 3, (6,), np.float64, True)),
        ("forward_3d", "(N, C, L) = (5, 8, 7), 4 groups", 1, ((5, 8, 7), 4, (8,), np.float64, True)),
    ], ((3, 6, 4, 6), 3, (6,)), extra=[extremes])
    return qs


def hidden_cases(seed):
    """Cases the instructor's run adds, per layer: a forward and a backward pass (dx, dgamma,
    dbeta together) on other shapes, one of them float32. The inputs come from the
    instructor's ``seed``, so a notebook cannot be fitted to them."""
    rng = np.random.default_rng(seed)
    qs = []

    def pair(prefix, step, backward, stats, m, forward_case, backward_case, forwards):
        (shape, arg, pshape, dtype), title = forward_case
        qs.append(Case(f"hidden_{prefix}_forward", f"{title} forward, {dtype.__name__} {shape}", 1,
                       dict(steps=[step(arg)]), _tensors(rng, shape, pshape, dtype), ("s0_y",),
                       m(shape, arg), "forward", stats=stats(shape, arg), hidden=True))
        shape, arg, pshape, dtype = backward_case
        qs.append(Case(f"hidden_{prefix}_backward", f"{title} backward, {dtype.__name__} {shape}: dx, "
                       "dgamma, dbeta (random dy)", 1, dict(steps=[step(arg), backward_step(function=backward)]),
                       _tensors(rng, shape, pshape, dtype), ("s1_dx", "s1_dgamma", "s1_dbeta"),
                       m(shape, arg), "backward", forwards, stats(shape, arg), hidden=True))

    pair("sbn", lambda _: forward_step(function=SBN_FORWARD), SBN_BACKWARD,
         lambda shape, _: bn_stats(shape), lambda shape, _: prod(shape) // shape[1],
         (((2, 5, 3, 3), None, (5,), np.float64), "spatial BatchNorm"), ((3, 2, 7, 2), None, (2,), np.float32),
         ("sbn_forward", "sbn_forward_float32"))
    pair("ln", ln_step, LN_BACKWARD, ln_stats, lambda shape, ns: prod(ns),
         (((2, 3, 4, 5), (3, 4, 5), (3, 4, 5), np.float32), "LayerNorm"), ((6, 7), (7,), (7,), np.float64),
         ("ln_forward", "ln_forward_2dims", "ln_forward_float32_no_affine"))
    pair("gn", gn_step, GN_BACKWARD, gn_stats, lambda shape, g: prod(shape[1:]) // g,
         (((2, 12, 3), 6, (12,), np.float64), "GroupNorm"), ((2, 9, 2, 2), 3, (9,), np.float32),
         ("gn_forward", "gn_forward_3d", "gn_forward_extremes"))
    return qs


# --- named mistakes

def _spatial(m):
    """A lab 1 mistake of batch_norm_forward/backward, as one of spatial_batch_norm_*."""
    return Mistake(m.name, m.message, {SBN_FORWARD: m.functions[lab01.FORWARD],
                                       SBN_BACKWARD: m.functions[lab01.BACKWARD]})


def _sbn(name, message, **forward):
    return Mistake(name, message, {SBN_FORWARD: buggy_forward(**forward), SBN_BACKWARD: buggy_backward()})


def _layer(name, message, grouping, forward_flags=None, backward_flags=None, which="ln"):
    forward_name, backward_name = (LN_FORWARD, LN_BACKWARD) if which == "ln" else (GN_FORWARD, GN_BACKWARD)
    forward, backward = buggy_family(grouping, forward_flags, backward_flags)
    return Mistake(name, message, {forward_name: forward, backward_name: backward})


def _backward_mistakes(which, grouping, where, eq):
    prefix = "layer_norm" if which == "ln" else "group_norm"
    return [
        _layer(f"{prefix}_backward_no_mean_path", f"dx is missing the gradient through the mean of each "
               f"{where} ({eq}): the term -mean(dx_hat) / sqrt(var + eps), the mean taken over the same "
               f"elements as the statistics; it makes dx sum to 0 over each {where}", grouping,
               backward_flags=dict(drop="mean"), which=which),
        _layer(f"{prefix}_backward_no_var_path", f"dx is missing the gradient through the variance of each "
               f"{where} ({eq}): the term -x_hat * mean(dx_hat * x_hat) / sqrt(var + eps)", grouping,
               backward_flags=dict(drop="var"), which=which),
        _layer(f"{prefix}_backward_constant_stats", f"dx treats the mean and variance of each {where} as "
               f"constants (dx = dx_hat / sqrt(var + eps)); they are functions of x, and their two paths "
               f"add two terms ({eq})", grouping, backward_flags=dict(drop="both"), which=which),
    ]


def mistakes():
    """Named wrong implementations, in the order they are tried when explaining a wrong output."""
    spatial = [
        _sbn("sbn_channels_scrambled", "x was reshaped from (N, C, H, W) straight to (N*H*W, C), without "
             "moving C last: each column then mixes values of different channels (and so do gamma and "
             "beta). Move the channels last first, x.transpose(0, 2, 3, 1).reshape(-1, C), and undo it "
             "the same way, in the forward and in the backward pass", axes="scrambled"),
        _sbn("sbn_not_moved_back", "the statistics are right, but the (N*H*W, C) result was reshaped "
             "straight back to (N, C, H, W); it is laid out as (N, H, W, C): reshape to (N, H, W, C), "
             "then move C back to axis 1 with .transpose(0, 3, 1, 2) (in the backward pass too, for dx)",
             axes="not_moved_back"),
    ]
    spatial += [_spatial(m) for m in lab01.mistakes() if m.name != "backward_eval_as_training"]

    layer = [
        _layer("layer_norm_batch_axis", "the statistics were computed over the batch axis 0, across the "
               "samples (that is BatchNorm); LayerNorm normalizes each sample on its own, over the trailing "
               "normalized_shape axes: axes = tuple(range(x.ndim - len(normalized_shape), x.ndim)) (eq-ln-stats)",
               lambda shape, ns: layer_norm_grouping(shape, ns, reduce="batch")),
        _layer("layer_norm_last_axis_only", "the statistics were computed over the last axis only; LayerNorm "
               "reduces over the last len(normalized_shape) axes, e.g. the last two for normalized_shape "
               "(H, W) (eq-ln-stats)", lambda shape, ns: layer_norm_grouping(shape, ns, reduce="last")),
        _layer("layer_norm_all_features", "the statistics were computed over every axis but the batch axis 0 "
               "(the image habit); LayerNorm reduces only over the trailing normalized_shape axes, so each "
               "token of a (N, L, D) sequence with normalized_shape (D,) has its own mean and variance: "
               "axes = tuple(range(x.ndim - len(normalized_shape), x.ndim)) (eq-ln-stats)",
               lambda shape, ns: layer_norm_grouping(shape, ns, reduce="features")),
        _layer("layer_norm_unbiased", "the normalization used the unbiased variance (divided by m - 1); "
               "LayerNorm divides by m, the number of normalized elements (eq-ln-stats)",
               layer_norm_grouping, forward_flags=dict(unbiased_norm=True)),
        _layer("layer_norm_eps_outside", "eps was added outside the square root; use (x - mu) / "
               "sqrt(var + eps) (eq-ln-xhat)", layer_norm_grouping, forward_flags=dict(eps_outside=True)),
    ] + _backward_mistakes("ln", layer_norm_grouping, "sample", "eq-ln-dx")

    group = [
        _layer("group_norm_interleaved", "the groups were made of interleaved channels (channel c in group "
               "c % num_groups); GroupNorm's groups are CONSECUTIVE channels: group g holds channels "
               "g * C/G to (g + 1) * C/G - 1, which x.reshape(N, num_groups, -1) gives directly (eq-gn-stats)",
               lambda shape, g: group_norm_grouping(shape, g, groups="interleaved"), which="gn"),
        _layer("group_norm_group_size", "num_groups was used as the number of channels PER group; it is "
               "the number of groups: C // num_groups consecutive channels in each, which "
               "x.reshape(N, num_groups, -1) gives directly (eq-gn-stats)",
               lambda shape, g: group_norm_grouping(shape, g, groups="size"), which="gn"),
        _layer("group_norm_channels_only", "the statistics of each group were computed over its channels "
               "only, one mean per (sample, group, position); a group's statistics cover its channels AND "
               "every spatial position: x.reshape(N, num_groups, -1), then reduce over the last axis (eq-gn-stats)",
               lambda shape, g: group_norm_grouping(shape, g, groups="per_position"), which="gn"),
        _layer("group_norm_gamma_last_axis", "gamma and beta were broadcast against the LAST axis (NumPy's "
               "default for a (C,) vector); they are per channel, axis 1: reshape them to (1, C, 1, ..., 1), "
               "e.g. gamma.reshape(1, -1, 1, 1) for (N, C, H, W) (eq-gn-affine)",
               lambda shape, g: group_norm_grouping(shape, g, params="last"), which="gn"),
        _layer("group_norm_unbiased", "the normalization used the unbiased variance (divided by m - 1); "
               "GroupNorm divides by m = (C / num_groups) * H * W (eq-gn-stats)", group_norm_grouping,
               forward_flags=dict(unbiased_norm=True), which="gn"),
    ] + _backward_mistakes("gn", group_norm_grouping, "(sample, group)", "eq-gn-dx")
    return spatial + layer + group


def correct():
    """The mistakes' code with no mistake: it must agree with ``reference()`` (a test checks it)."""
    return Mistake("none", "", {**_sbn("", "").functions,
                                **_layer("", "", layer_norm_grouping).functions,
                                **_layer("", "", group_norm_grouping, which="gn").functions})
