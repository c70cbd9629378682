"""The autograder (``python -m bnlab.grade lab03``) and the self-checks on lab 3 (batch size).

As for labs 1 and 2: submissions are the master solution with precise source substitutions
(each asserted to occur exactly once, so a test cannot silently grade an unchanged solution);
every classic mistake must lose exactly the points of the questions it breaks, keep the others,
and be named in the feedback; a wrong entry of ``answers()`` loses that question only, without
the feedback showing the key; a crashing notebook gets a verdict while the solution graded in
the same batch keeps full marks. The reference itself is checked against hand-computed values.
"""

import os

import numpy as np
import pytest

import submissions

from bnlab.grade import core, grader, lab03
from bnlab.grade.sandbox import Limits
from bnlab.tolerances import tolerance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTION = os.path.join(ROOT, "solutions", "lab03_batch_size.ipynb")
LAB = os.path.join(ROOT, "labs", "lab03_batch_size.ipynb")
LIMITS = Limits(load_timeout=30, question_timeout=5, file_bytes=1 << 20)
QUESTIONS = lab03.cases()
ALL = {q.name for q in QUESTIONS}
GHOST = {"ghost_batches", "ghost_batches_remainder"}
NOISE = {"noise", "noise_remainder"}
ANSWERS = {name for name, _, _ in lab03.ANSWER_KEY}
MAX_SCORE = 11

GHOST_RESHAPE = "x[:count * batch_size].reshape(count, batch_size, x.shape[1])"
NOISE_RETURN = "return means.std(axis=0) / batches.std(axis=(0, 1))"
LR_RETURN = "return base_lr * np.asarray(batch_sizes, dtype=np.float64) / base_batch"
ANSWERS_RETURN = "return np.array([1, 2, 2, 8, 16])"

# name: (substitutions, questions that must fail, mistake that must be named there)
MISTAKES = {
    "ghost_batches_interleaved": (
        [(GHOST_RESHAPE, "x[:count * batch_size].reshape(batch_size, count, x.shape[1]).swapaxes(0, 1)")],
        GHOST | NOISE, "ghost_batches_interleaved"),  # the noise is measured on the student's batches
    "noise_unbiased_std": ([(NOISE_RETURN, "return means.std(axis=0, ddof=1) / batches.std(axis=(0, 1))")],
                           NOISE, "noise_unbiased_std"),
    "noise_not_relative": ([(NOISE_RETURN, "return means.std(axis=0)")], NOISE, "noise_not_relative"),
    "noise_of_samples": ([("means = batches.mean(axis=1)", "means = batches.reshape(-1, x.shape[1])")],
                         NOISE, "noise_of_samples"),
    "noise_variance_ratio": ([(NOISE_RETURN, "return means.var(axis=0) / batches.var(axis=(0, 1))")],
                             NOISE, "noise_variance_ratio"),
    "lr_scaling_reversed": ([(LR_RETURN, "return base_lr * base_batch / np.asarray(batch_sizes, dtype=np.float64)")],
                            {"scaled_learning_rate"}, "lr_scaling_reversed"),
    "lr_square_root_rule": ([(LR_RETURN, "return base_lr * np.sqrt(np.asarray(batch_sizes, dtype=np.float64) / base_batch)")],
                            {"scaled_learning_rate"}, "lr_square_root_rule"),
    "lr_integer_division": ([(LR_RETURN, "return base_lr * (np.asarray(batch_sizes) // base_batch)")],
                            {"scaled_learning_rate"}, "lr_integer_division"),
}

# name: (substitutions, questions that must fail, words every failing question's feedback contains)
OTHERS = {
    "wrong_answer_3": ([(ANSWERS_RETURN, "return np.array([1, 2, 0, 8, 16])")],
                       {"answer_batch_independent"}, "answers[2] is not the right answer"),
    "wrong_answers_1_5": ([(ANSWERS_RETURN, "return np.array([0, 2, 2, 8, 15])")],
                          {"answer_noise_scaling", "answer_steps_factor"}, "is not the right answer"),
    "answers_int32": ([(ANSWERS_RETURN, "return np.array([1, 2, 2, 8, 16], dtype=np.int32)")], set(), ""),
    "answers_too_few": ([(ANSWERS_RETURN, "return np.array([1, 2, 2, 8])")], ANSWERS,
                        "answers has shape (4,), expected (5,)"),
    "answers_list": ([(ANSWERS_RETURN, "return [1, 2, 2, 8, 16]")], ANSWERS, "answers is an object of type list"),
    "lr_float_returned": ([(LR_RETURN, "return float(base_lr * batch_sizes[0] / base_batch)")],
                          {"scaled_learning_rate"}, "lr is an object of type float"),
    "ghost_keeps_remainder": ([(GHOST_RESHAPE, "x.reshape(-1, batch_size, x.shape[1])")],
                              {"ghost_batches_remainder", "noise_remainder"}, "raised ValueError"),
    "crash": ([(LR_RETURN, "import ctypes\n    ctypes.string_at(0)")], {"scaled_learning_rate"},
              "segmentation fault"),
}


def make_submission(tmp_path, name, edits):
    return submissions.make_submission(SOLUTION, tmp_path, name, edits)


@pytest.fixture(scope="module")
def expected():
    return grader.Expected("lab03")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, expected):
    """Every submission above, the untouched lab, then the solution (after the crash), in one batch."""
    tmp = tmp_path_factory.mktemp("lab03")
    cases = {**{k: v[0] for k, v in MISTAKES.items()}, **{k: v[0] for k, v in OTHERS.items()}}
    paths = {name: make_submission(tmp, name, edits) for name, edits in cases.items()}
    paths.update(lab=LAB, solution=SOLUTION)
    reports = grader.grade_notebooks("lab03", list(paths.values()), LIMITS, jobs=2)
    return dict(zip(paths, reports))


def test_solution_full_marks(graded):
    submissions.assert_full_marks(graded["solution"], MAX_SCORE, QUESTIONS)


def test_untouched_lab_scores_zero_without_grader_error(graded):
    submissions.assert_untouched_lab_scores_zero(graded["lab"], MAX_SCORE)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_classic_mistake_loses_its_points_and_is_named(graded, name):
    _, broken, mistake = MISTAKES[name]
    message = next(m for m in lab03.mistakes() if m.name == mistake).message
    submissions.assert_named_mistakes(graded[name], MAX_SCORE, broken, {mistake: message})


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_answers_shapes_and_crashes(graded, name):
    _, broken, words = OTHERS[name]
    submissions.assert_fails_with_words(graded[name], broken, words)


def test_answer_feedback_does_not_show_the_key(graded):
    for name in ("wrong_answer_3", "wrong_answers_1_5"):
        for q in graded[name].cases:
            if q.name in ANSWERS and not q.passed:
                assert q.feedback == [f"answers[{[a for a, _, _ in lab03.ANSWER_KEY].index(q.name)}] "
                                      "is not the right answer"], q.feedback


def test_crash_is_a_verdict_not_a_wrong_value(graded):
    report = graded["crash"]
    assert report.score == MAX_SCORE - 1
    assert [q.crashed for q in report.cases if not q.passed] == [True]


def test_reference_against_hand_computed_values():
    x = np.arange(14, dtype=np.float64).reshape(7, 2)  # rows (0, 1), (2, 3), ..., (12, 13)
    batches = lab03.reference_ghost_batches(x, 3)
    assert batches.shape == (2, 3, 2)
    np.testing.assert_array_equal(batches[1], [[6, 7], [8, 9], [10, 11]])  # the 7th row is dropped
    # batch means of the first column: 2 and 8; population std of (2, 8) is 3; of 0, 2, ..., 10: sqrt(35/3)
    noise = lab03.reference_batch_statistics_noise(x, 3)
    np.testing.assert_allclose(noise, 3 / np.sqrt(35 / 3), **tolerance(np.float64))
    lr = lab03.reference_scaled_learning_rate(0.1, 32, np.array([2, 32, 64]))
    np.testing.assert_allclose(lr, [0.00625, 0.1, 0.2], **tolerance(np.float64))
    assert lr.dtype == np.float64


def test_reference_noise_is_one_over_sqrt_batch_for_independent_data():
    x = 3 * np.random.default_rng(0).standard_normal((2 ** 16, 4)) + 7
    for b in (2, 8, 32):
        noise = lab03.reference_batch_statistics_noise(x, b)
        np.testing.assert_allclose(noise, 1 / np.sqrt(b), rtol=0.05)


def test_every_named_mistake_is_detectable_and_covers_only_its_functions(expected):
    names = [m.name for m in lab03.mistakes()]
    assert len(names) == len(set(names))
    for m in lab03.mistakes():
        runs = [(q, {mm.name: r for mm, r in expected.mistakes[q.name]}) for q in expected.cases]
        assert all(m.name in by_name for q, by_name in runs if m.covers(q))
        assert not any(m.name in by_name for q, by_name in runs if not m.covers(q))
        assert any(not core.evaluate(q, by_name[m.name], expected.reference[q.name], []).passed
                   for q, by_name in runs if m.name in by_name), m.name


def test_self_checks_pass_on_the_solution_and_name_mistakes(capsys):
    from bnlab import check
    g = submissions.solution_functions(SOLUTION, ("ghost", "noise", "lr"))
    assert check.ghost_batches(g["ghost_batches"])
    assert check.batch_statistics_noise(g["batch_statistics_noise"])
    assert check.scaled_learning_rate(g["scaled_learning_rate"])
    assert "FAIL" not in capsys.readouterr().out
    submissions.assert_self_check_names(capsys, lab03, "lr_square_root_rule",
                                        check.scaled_learning_rate, "scaled_learning_rate",
                                        "scaled_learning_rate")
