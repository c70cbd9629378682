"""Batch Renormalization's schedule for rmax and dmax, shared by both backends.

Plain Python (no NumPy, no torch), like ``_validate``: both ``bnlab.numpy`` and
``bnlab.torch`` re-export it, and neither imports the other.
"""


def batch_renorm_schedule(step, *, warmup=5000, rmax_steps=40000, dmax_steps=25000,
                          rmax_final=3.0, dmax_final=5.0):
    """``(rmax, dmax)`` at training ``step`` (0-based count of steps already taken).

    Ioffe (2017), section 4: rmax = 1 and dmax = 0 (plain BatchNorm) for the first
    ``warmup`` steps, while the running statistics settle; then both are relaxed linearly,
    rmax reaching ``rmax_final`` = 3 at ``rmax_steps`` = 40k and dmax reaching ``dmax_final``
    = 5 at ``dmax_steps`` = 25k, and stay there (eq-brn-schedule).
    """
    if not (0 <= warmup < rmax_steps and warmup < dmax_steps):
        raise ValueError(
            "batch_renorm_schedule: expected 0 <= warmup < rmax_steps and warmup < dmax_steps; "
            f"got warmup={warmup}, rmax_steps={rmax_steps}, dmax_steps={dmax_steps}."
        )
    if not (rmax_final >= 1 and dmax_final >= 0):
        raise ValueError(
            "batch_renorm_schedule: expected rmax_final >= 1 and dmax_final >= 0; got "
            f"rmax_final={rmax_final}, dmax_final={dmax_final}."
        )

    def ramp(end):  # 0 until warmup, then linear up to 1 at ``end``
        return min(max((step - warmup) / (end - warmup), 0.0), 1.0)

    rmax = 1.0 + (rmax_final - 1.0) * ramp(rmax_steps)
    dmax = dmax_final * ramp(dmax_steps)
    return rmax, dmax
