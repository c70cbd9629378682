"""Self-checks for the labs: run your functions here, in the notebook, and see what is wrong.

    from bnlab import check
    check.forward_training(batch_norm_forward)
    check.running_statistics(batch_norm_forward)
    check.eval_mode(batch_norm_forward)
    check.batch_norm_backward(batch_norm_forward, batch_norm_backward)

Each prints PASS or FAIL per case with the autograder's own messages (the same questions,
mistakes and tolerances, ``bnlab.grade.core``, on inputs drawn with another seed) and raises
``AssertionError`` when something fails. An exception raised by your function (including
the ``NotImplementedError`` of an unfinished step) propagates, so you see your own traceback.
These checks are for you: the score comes only from the out-of-process grader,
``python -m bnlab.grade``.
"""

from bnlab.grade import core
from bnlab.grade.driver import BACKWARD, FORWARD

CHECK_SEED = 7  # not the grader's seed


def _check(title, kinds, functions, lab="lab01"):
    from bnlab.grade import lab_module
    module = lab_module(lab)
    reference = module.reference()
    selected = [q for q in module.questions(CHECK_SEED) if q.kind in kinds]
    results = []
    for q in selected:
        student = core.run(q, functions, catch=False)  # your exception, your traceback
        expected = core.run(q, reference, catch=False)
        mistakes = [(m, core.run(q, m.functions)) for m in module.mistakes()]
        results.append(core.evaluate(q, student, expected, mistakes, getattr(module, "hints", None)))
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


def _backward_unused(dy, cache):
    raise AssertionError("this check does not call batch_norm_backward")


def forward_training(forward):
    """Forward pass in training (ranks 2 to 5, with and without gamma/beta, float32 kept)."""
    return _check("batch_norm_forward, training", {"forward"}, {FORWARD: forward, BACKWARD: _backward_unused})


def running_statistics(forward):
    """running_mean / running_var after several training calls: momentum, unbiased variance, in place."""
    return _check("batch_norm_forward, running statistics", {"running"},
                  {FORWARD: forward, BACKWARD: _backward_unused})


def eval_mode(forward):
    """Forward pass with training=False: running statistics used, and left unchanged."""
    return _check("batch_norm_forward, eval mode", {"eval"}, {FORWARD: forward, BACKWARD: _backward_unused})


def batch_norm_forward(forward):
    """All the forward checks: training, running statistics, eval mode."""
    return _check("batch_norm_forward", {"forward", "running", "eval"},
                  {FORWARD: forward, BACKWARD: _backward_unused})


def batch_norm_backward(forward, backward):
    """Backward pass with a random upstream gradient: dx in training and eval, dgamma, dbeta."""
    return _check("batch_norm_backward", {"backward"}, {FORWARD: forward, BACKWARD: backward})
