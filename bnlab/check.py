"""Self-checks for the labs: run your functions here, in the notebook, and see what is wrong.

Lab 1::

    from bnlab import check
    check.forward_training(batch_norm_forward)
    check.running_statistics(batch_norm_forward)
    check.eval_mode(batch_norm_forward)
    check.batch_norm_backward(batch_norm_forward, batch_norm_backward)

Lab 2::

    check.spatial_batch_norm_forward(spatial_batch_norm_forward)
    check.spatial_batch_norm_backward(spatial_batch_norm_forward, spatial_batch_norm_backward)
    check.layer_norm_forward(layer_norm_forward)
    check.layer_norm_backward(layer_norm_forward, layer_norm_backward)
    check.group_norm_forward(group_norm_forward)
    check.group_norm_backward(group_norm_forward, group_norm_backward)

Lab 3 (not ``answers``: its key is the grader's)::

    check.ghost_batches(ghost_batches)
    check.batch_statistics_noise(batch_statistics_noise)
    check.scaled_learning_rate(scaled_learning_rate)

Lab 4::

    check.merge_batch_statistics(merge_batch_statistics)
    check.sync_running_statistics(sync_running_statistics)
    check.fold_batch_norm(fold_batch_norm)

Each runs the autograder's own public cases of that lab that call only the functions you pass
(the same plans, mistakes and tolerances, ``bnlab.grade.core``, on inputs drawn with another
seed), prints PASS or FAIL per case with the grader's messages, and raises
``AssertionError`` when something fails. An exception raised by your function (including the
``NotImplementedError`` of an unfinished step) propagates, so you see your own traceback.
These checks are for you: the score comes only from the out-of-process grader,
``python -m bnlab.grade``.
"""

from bnlab.grade import core

CHECK_SEED = 7  # not the grader's seed


def run_checks(title, lab, functions, kinds=None):
    """Run ``lab``'s public cases that call only ``functions`` (``{name: callable}``), optionally
    only those of the given ``kinds``; print the verdicts, raise AssertionError on a failure."""
    from bnlab.grade import lab_module
    module = lab_module(lab)
    reference = module.reference()
    selected = [q for q in module.cases(CHECK_SEED)
                if set(q.functions) <= set(functions) and (kinds is None or q.kind in kinds)]
    assert selected, f"no check of {lab} calls only {', '.join(functions)}"
    mistakes = [m for m in module.mistakes()]
    results = []
    for q in selected:
        student = core.run(q, functions, catch=False)  # your exception, your traceback
        expected = core.run(q, reference, catch=False)
        known = [(m, core.run(q, m.functions)) for m in mistakes if m.covers(q)]
        results.append(core.evaluate(q, student, expected, known, getattr(module, "hints", None)))
    failed = [r for r in results if not r.passed]
    print(f"{title}: {len(results) - len(failed)} of {len(results)} checks pass")
    for r in results:
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.title}")
        for msg in r.feedback:
            print(f"        - {msg}")
    if failed:
        raise AssertionError(f"{title}: {len(failed)} of {len(results)} checks fail "
                             f"({', '.join(r.name for r in failed)}); see the messages above")
    return True


# --- lab 1: batch_norm_forward, batch_norm_backward

def forward_training(forward):
    """Forward pass in training (ranks 2 to 5, with and without gamma/beta, float32 kept)."""
    return run_checks("batch_norm_forward, training", "lab01", {"batch_norm_forward": forward}, {"forward"})


def running_statistics(forward):
    """running_mean / running_var after several training calls: momentum, unbiased variance, in place."""
    return run_checks("batch_norm_forward, running statistics", "lab01", {"batch_norm_forward": forward},
                      {"running"})


def eval_mode(forward):
    """Forward pass with training=False: running statistics used, and left unchanged."""
    return run_checks("batch_norm_forward, eval mode", "lab01", {"batch_norm_forward": forward}, {"eval"})


def batch_norm_forward(forward):
    """All the forward checks: training, running statistics, eval mode."""
    return run_checks("batch_norm_forward", "lab01", {"batch_norm_forward": forward})


def batch_norm_backward(forward, backward):
    """Backward pass with a random upstream gradient: dx in training and eval, dgamma, dbeta."""
    return run_checks("batch_norm_backward", "lab01",
                      {"batch_norm_forward": forward, "batch_norm_backward": backward}, {"backward"})


# --- lab 2: spatial BatchNorm, LayerNorm, GroupNorm (a forward check, then a backward check)

def _lab02_pair(name, what):
    def forward_check(forward):
        return run_checks(f"{name}_forward", "lab02", {f"{name}_forward": forward})

    def backward_check(forward, backward):
        return run_checks(f"{name}_backward", "lab02",
                          {f"{name}_forward": forward, f"{name}_backward": backward}, {"backward"})

    forward_check.__name__, backward_check.__name__ = f"{name}_forward", f"{name}_backward"
    forward_check.__doc__ = f"{what}: every forward check of lab 2 (shapes, dtypes, values)."
    backward_check.__doc__ = (f"{what}: the backward checks of lab 2, with a random upstream "
                              "gradient (dx, dgamma, dbeta).")
    return forward_check, backward_check


spatial_batch_norm_forward, spatial_batch_norm_backward = _lab02_pair(
    "spatial_batch_norm", "BatchNorm for (N, C, H, W)")
layer_norm_forward, layer_norm_backward = _lab02_pair("layer_norm", "LayerNorm")
group_norm_forward, group_norm_backward = _lab02_pair("group_norm", "GroupNorm")


# --- lab 3: the batch-size lab's measurements (the answers are graded only by the grader)

def ghost_batches(ghost):
    """Consecutive batches of (N, C) data, the remainder dropped."""
    return run_checks("ghost_batches", "lab03", {"ghost_batches": ghost})


def batch_statistics_noise(noise):
    """The relative noise of the batch mean, per channel (it may call your ghost_batches)."""
    return run_checks("batch_statistics_noise", "lab03", {"batch_statistics_noise": noise})


def scaled_learning_rate(scale):
    """The linear scaling rule for an array of batch sizes."""
    return run_checks("scaled_learning_rate", "lab03", {"scaled_learning_rate": scale})


# --- lab 4: SyncBatchNorm's statistics and folding BatchNorm away

def merge_batch_statistics(merge):
    """The global mean and biased variance from per-replica counts, means and variances
    (uneven shards, float32, a single-sample and an empty replica)."""
    return run_checks("merge_batch_statistics", "lab04", {"merge_batch_statistics": merge})


def sync_running_statistics(running):
    """The running statistics after a synchronized step: merged, unbiased with the global count
    (it may call your merge_batch_statistics)."""
    return run_checks("sync_running_statistics", "lab04", {"sync_running_statistics": running})


def fold_batch_norm(fold):
    """BatchNorm folded into a Linear or Conv layer's weight and bias (with and without bias, float32)."""
    return run_checks("fold_batch_norm", "lab04", {"fold_batch_norm": fold})
