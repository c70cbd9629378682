"""Lab 3 (``labs/lab03_batch_size.ipynb``): the questions, their points and the named mistakes.

Graded functions (NumPy; the lab's training sweep uses them but is not graded numerically):

* ``ghost_batches(x, batch_size) -> batches``: x (N, C) cut into N // batch_size consecutive
  batches, (N // batch_size, batch_size, C); the last N % batch_size samples are dropped;
* ``batch_statistics_noise(x, batch_size) -> noise``: per channel, (C,), the standard deviation
  over those batches of the batch mean (eq-bn-mean), divided by the standard deviation of all
  the batched values of that channel (both population, ddof=0): about 1 / sqrt(batch_size);
* ``scaled_learning_rate(base_lr, base_batch, batch_sizes) -> lr``: the linear scaling rule,
  ``base_lr * batch_sizes / base_batch``, for an integer array of batch sizes (float64);
* ``answers() -> choices``: an integer array, the student's answers to the lab's
  multiple-choice and counting questions, one entry per question (``ANSWER_KEY``, in order).

Inputs are shifted and scaled (5 * randn + 12, with a different scale per channel). The
expected outputs come from ``reference()`` below, written without the reshape the lab asks
for (an index array per batch, a loop), and are computed in the parent process only. Each
answer is its own question (``Case.item``) whose feedback never shows the key
(``Case.secret``).
"""

import numpy as np

from bnlab.grade import core
from bnlab.grade.core import Case, Mistake

LAB = "lab03"
GHOST, NOISE, LR, ANSWERS = "ghost_batches", "batch_statistics_noise", "scaled_learning_rate", "answers"
FUNCTIONS = (GHOST, NOISE, LR, ANSWERS)
SEED = 20240303
HIDDEN_SEED = 20240313  # the default; an instructor passes their own (--hidden-seed)
QUESTIONS = {"ghost": "ghost_batches", "noise": "batch_statistics_noise",
             "lr": "scaled_learning_rate", "answers": "Answers (multiple choice and counts)"}

# The answer key: (question name, title, the right choice). The course repository is public,
# so this key is readable; the lab's questions are for understanding, not for exams.
ANSWER_KEY = (
    ("answer_noise_scaling", "answer 1: a 4 times larger batch makes the noise of the batch mean ...", 1),
    ("answer_batch_of_two", "answer 2: BatchNorm's x_hat in training with a batch of 2", 2),
    ("answer_batch_independent", "answer 3: which layers ignore the other examples of the batch", 2),
    ("answer_ghost_count", "answer 4: means per channel of Ghost BatchNorm, batch 128, virtual batch 16", 8),
    ("answer_steps_factor", "answer 5: the factor on the number of steps, batch 32 -> 2, same epochs", 16),
)


# --- the reference (no reshape: one index array per batch, a loop)

def reference_ghost_batches(x, batch_size):
    """Batch j holds samples j * batch_size ... (j + 1) * batch_size - 1 of x."""
    count = x.shape[0] // batch_size
    return np.stack([x[np.arange(j * batch_size, (j + 1) * batch_size)] for j in range(count)])


def reference_batch_statistics_noise(x, batch_size):
    """std over the batches of each channel's batch mean / std of the batched values (eq-bn-mean)."""
    count = x.shape[0] // batch_size
    used = x[: count * batch_size]
    means = np.array([used[j * batch_size:(j + 1) * batch_size].sum(axis=0) / batch_size
                      for j in range(count)])  # (count, C)
    spread_of_means = np.sqrt(((means - means.mean(axis=0)) ** 2).mean(axis=0))  # (C,)
    spread_of_values = np.sqrt(((used - used.mean(axis=0)) ** 2).mean(axis=0))  # (C,)
    return spread_of_means / spread_of_values


def reference_scaled_learning_rate(base_lr, base_batch, batch_sizes):
    """The linear scaling rule (Goyal et al. 2017): the learning rate proportional to the batch."""
    return np.array([base_lr * (float(b) / base_batch) for b in batch_sizes], dtype=np.float64)


def reference_answers():
    return np.array([choice for _, _, choice in ANSWER_KEY], dtype=np.int64)


def reference():
    """The functions the expected outputs come from."""
    return {GHOST: reference_ghost_batches, NOISE: reference_batch_statistics_noise,
            LR: reference_scaled_learning_rate, ANSWERS: reference_answers}


# --- questions

def _activations(rng, n, c):
    """Shifted, scaled (N, C) data, each channel with its own mean and spread."""
    scale = 5 * (0.5 + rng.random(c))  # (C,)
    return scale * rng.standard_normal((n, c)) + 12 + rng.standard_normal(c)


def _call(function, args, returns):
    return dict(steps=[dict(call=function, args=args, returns=returns)])


def cases(seed=SEED, hidden_seed=None):
    """The lab's public cases, with inputs drawn deterministically from ``seed``, then, when
    ``hidden_seed`` is given, the hidden ones. A case's question is its kind (QUESTIONS)."""
    return core.public_and_hidden(public_cases, hidden_cases, seed, hidden_seed)


def hidden_cases(seed):
    """Cases the instructor's run adds: each function on other sizes, from the instructor's seed."""
    rng = np.random.default_rng(seed)
    return [
        Case("hidden_ghost_batches", "ghost_batches, (37, 4) into batches of 5", 1,
             _call(GHOST, [{"input": "x"}, 5], "batches"), dict(x=_activations(rng, 37, 4)),
             ("s0_batches",), 1, "ghost", hidden=True),
        Case("hidden_noise", "batch_statistics_noise, (300, 3), batch size 8", 1,
             _call(NOISE, [{"input": "x"}, 8], "noise"), dict(x=_activations(rng, 300, 3)),
             ("s0_noise",), 296, "noise", hidden=True),
        Case("hidden_scaled_learning_rate", "scaled_learning_rate, base 0.05 at batch 64, batches 1 to 1024", 1,
             _call(LR, [0.05, 64, {"input": "batch_sizes"}], "lr"),
             dict(batch_sizes=np.array([1, 3, 64, 100, 1024], dtype=np.int64)), ("s0_lr",), 1, "lr", hidden=True),
    ]


def public_cases(seed):
    rng = np.random.default_rng(seed)
    call = _call
    qs = [
        Case("ghost_batches", "ghost_batches, (48, 5) into batches of 8", 1,
                 call(GHOST, [{"input": "x"}, 8], "batches"), dict(x=_activations(rng, 48, 5)),
                 ("s0_batches",), 1, "ghost"),
        Case("ghost_batches_remainder", "ghost_batches, (50, 3) into batches of 6 (2 samples dropped)", 1,
                 call(GHOST, [{"input": "x"}, 6], "batches"), dict(x=_activations(rng, 50, 3)),
                 ("s0_batches",), 1, "ghost"),
        Case("noise", "batch_statistics_noise, (640, 6), batch size 4", 2,
                 call(NOISE, [{"input": "x"}, 4], "noise"), dict(x=_activations(rng, 640, 6)),
                 ("s0_noise",), 640, "noise"),
        Case("noise_remainder", "batch_statistics_noise, (203, 4), batch size 16 (11 samples dropped)", 1,
                 call(NOISE, [{"input": "x"}, 16], "noise"), dict(x=_activations(rng, 203, 4)),
                 ("s0_noise",), 192, "noise"),
        Case("scaled_learning_rate", "scaled_learning_rate, base 0.1 at batch 32, batches 2 to 256", 1,
                 call(LR, [0.1, 32, {"input": "batch_sizes"}], "lr"),
                 dict(batch_sizes=np.array([2, 4, 8, 16, 32, 64, 256], dtype=np.int64)),
                 ("s0_lr",), 1, "lr"),
    ]
    for item, (name, title, _) in enumerate(ANSWER_KEY):
        qs.append(Case(name, title, 1, call(ANSWERS, [], "answers"), {}, ("s0_answers",), 1,
                           "answers", item=item, secret=True))
    return qs


# --- named mistakes

def interleaved_ghost_batches(x, batch_size):
    """The classic reshape slip: (batch_size, count, C) then swapped, so batch j holds samples
    j, j + count, j + 2 count, ... (every count-th sample) instead of a consecutive run."""
    count = x.shape[0] // batch_size
    return x[: count * batch_size].reshape(batch_size, count, x.shape[1]).swapaxes(0, 1)


def buggy_noise(ghost=reference_ghost_batches, *, ddof=0, relative=True, of="means", power=1):
    """``batch_statistics_noise`` with one mistake: ``ghost`` cuts the batches, ``ddof`` of the
    std over batches, ``relative=False`` skips the division by the values' std, ``of="samples"``
    measures the spread of single samples instead of batch means, ``power=2`` returns the ratio
    of variances instead of standard deviations."""

    def noise(x, batch_size):
        batches = ghost(x, batch_size)  # (count, batch_size, C)
        means = batches.mean(axis=1) if of == "means" else batches.reshape(-1, x.shape[1])  # (count, C)
        spread = means.std(axis=0, ddof=ddof) ** power
        return spread / batches.std(axis=(0, 1)) ** power if relative else spread

    return noise


def _noise(name, message, **flags):
    return Mistake(name, message, {NOISE: buggy_noise(**flags)})


def _lr(name, message, rule):
    return Mistake(name, message, {LR: lambda base_lr, base_batch, batch_sizes: rule(base_lr, base_batch,
                                                                                     np.asarray(batch_sizes))})


def mistakes():
    """Named wrong implementations, in the order they are tried when explaining a wrong output."""
    return [
        Mistake("ghost_batches_interleaved", "the batches are interleaved: batch j holds samples j, j + B, "
                "j + 2B, ... (B the number of batches), the result of x.reshape(batch_size, -1, C) swapped; "
                "a batch is a CONSECUTIVE run of samples: x[:B * batch_size].reshape(B, batch_size, C)",
                {GHOST: interleaved_ghost_batches, NOISE: buggy_noise(interleaved_ghost_batches)}),
        _noise("noise_unbiased_std", "the std over the batches used ddof=1; this lab measures population "
               "standard deviations (ddof=0, NumPy's default), for the means and for the values", ddof=1),
        _noise("noise_not_relative", "the std of the batch means was not divided by the channel's std; the "
               "noise is relative to the spread of that channel's values (so it is about 1 / sqrt(batch_size) "
               "whatever the channel's scale)", relative=False),
        _noise("noise_of_samples", "this is the spread of single samples, not of batch means: average each "
               "batch over its samples first (eq-bn-mean), then take the std of those means over the batches",
               of="samples"),
        _noise("noise_variance_ratio", "this is the ratio of VARIANCES (about 1 / batch_size); the noise is "
               "the ratio of standard deviations (about 1 / sqrt(batch_size))", power=2),
        _lr("lr_scaling_reversed", "the learning rate was scaled the wrong way: the linear rule makes it "
            "PROPORTIONAL to the batch, base_lr * batch / base_batch (a smaller batch, a smaller step)",
            lambda lr, b0, b: lr * b0 / b),
        _lr("lr_square_root_rule", "that is the square-root rule, base_lr * sqrt(batch / base_batch) (Hoffer "
            "et al. 2017); this lab uses the linear rule, base_lr * batch / base_batch (Goyal et al. 2017)",
            lambda lr, b0, b: lr * np.sqrt(b / b0)),
        _lr("lr_integer_division", "batch // base_batch is integer division (16 // 32 == 0): use / so that "
            "batches smaller than base_batch get a fraction of base_lr", lambda lr, b0, b: lr * (b // b0)),
    ]
