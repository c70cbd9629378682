"""Identities between members of the family, in both backends, outputs AND gradients with
a random upstream gradient:

* LayerNorm over all non-batch axes == GroupNorm with one group (gamma=None);
* InstanceNorm == GroupNorm with C groups;
* Batch Renorm with rmax=1, dmax=0 == BatchNorm in training;
* Batch Renorm's backward == BatchNorm's backward with gamma scaled by r (r != 1);
* Ghost BatchNorm with one virtual batch == BatchNorm.

(RMSNorm on zero-mean rows is NOT LayerNorm: eps sits on different quantities and the
backward keeps no mean path; RMSNorm is checked against torch.nn.RMSNorm instead.)
"""

import numpy as np
import pytest
import torch

import bnlab.numpy as bnp
import bnlab.torch.functional as bf
from bnlab.tolerances import tolerance
from conftest import SHAPES, make_inputs

TIGHT = tolerance(np.float64, 1000)


def numpy_run(forward, backward, x, dy, *args, **kwargs):
    y, cache = forward(x, *args, **kwargs)
    return [y, *backward(dy, cache)]


def torch_run(fn, x, dy, *params):
    """y, dx and the gradients of the tensor params, by bnlab.torch's hand-written backward."""
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, *params)]
    y = fn(*leaves)
    y.backward(torch.tensor(dy))
    return [y.detach().numpy()] + [t.grad.numpy() for t in leaves]


def assert_all_close(a, b):
    for i, (u, v) in enumerate(zip(a, b)):
        if v is None:
            assert u is None, i
        else:
            np.testing.assert_allclose(u, v, err_msg=f"output {i}", **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_over_all_non_batch_axes_is_group_norm_with_one_group(rng, shape):
    x, _, _, dy = make_inputs(rng, shape)
    ns = shape[1:]
    assert_all_close(numpy_run(bnp.layer_norm_forward, bnp.layer_norm_backward, x, dy, ns,
                               None, None),
                     numpy_run(bnp.group_norm_forward, bnp.group_norm_backward, x, dy, 1,
                               None, None))
    assert_all_close(torch_run(lambda x_: bf.layer_norm(x_, ns), x, dy),
                     torch_run(lambda x_: bf.group_norm(x_, 1), x, dy))
    assert np.abs(numpy_run(bnp.group_norm_forward, bnp.group_norm_backward, x, dy, 1,
                            None, None)[1]).max() > 1e-3  # a random dy: dx is not zero


@pytest.mark.parametrize("shape", SHAPES[1:])  # InstanceNorm needs a spatial size above 1
def test_instance_norm_is_group_norm_with_one_group_per_channel(rng, shape):
    x, gamma, beta, dy = make_inputs(rng, shape)
    c = shape[1]
    assert_all_close(numpy_run(bnp.instance_norm_forward, bnp.instance_norm_backward, x, dy,
                               gamma, beta),
                     numpy_run(bnp.group_norm_forward, bnp.group_norm_backward, x, dy, c,
                               gamma, beta))
    assert_all_close(torch_run(lambda x_, g, b: bf.instance_norm(x_, weight=g, bias=b),
                               x, dy, gamma, beta),
                     torch_run(lambda x_, g, b: bf.group_norm(x_, c, g, b), x, dy, gamma, beta))


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_renorm_with_rmax_1_and_dmax_0_is_batch_norm_in_training(rng, shape):
    x, gamma, beta, dy = make_inputs(rng, shape)
    c = shape[1]
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2, c)  # far from the batch's
    buffers = {k: (rm0.copy(), rv0.copy()) for k in ("renorm", "bn", "t_renorm", "t_bn")}

    def run(kind):
        rm, rv = buffers[kind]
        if kind == "renorm":
            return numpy_run(bnp.batch_renorm_forward, bnp.batch_renorm_backward, x, dy, gamma,
                             beta, running_mean=rm, running_var=rv, momentum=0.1, rmax=1.0,
                             dmax=0.0)
        if kind == "bn":
            return numpy_run(bnp.batch_norm_forward, bnp.batch_norm_backward, x, dy, gamma,
                             beta, running_mean=rm, running_var=rv, momentum=0.1)
        rm_t, rv_t = torch.from_numpy(rm), torch.from_numpy(rv)  # updated in place: shared
        if kind == "t_renorm":
            return torch_run(lambda x_, g, b: bf.batch_renorm(x_, rm_t, rv_t, g, b, True, 0.1,
                                                              1e-5, 1.0, 0.0), x, dy, gamma, beta)
        return torch_run(lambda x_, g, b: bf.batch_norm(x_, rm_t, rv_t, g, b, True, 0.1),
                         x, dy, gamma, beta)

    assert_all_close(run("renorm"), run("bn"))
    assert_all_close(run("t_renorm"), run("t_bn"))
    for kind in buffers:
        np.testing.assert_allclose(buffers[kind][0], buffers["bn"][0], **TIGHT)
        np.testing.assert_allclose(buffers[kind][1], buffers["bn"][1], **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_renorm_dx_is_batch_norm_dx_with_gamma_scaled_by_r(rng, shape):
    """With r != 1 (running variance off by a factor), dx of Batch Renorm equals BatchNorm's
    dx for gamma * r; dgamma = r * sum(dy * x_hat_BN) + d * sum(dy)."""
    x, gamma, beta, dy = make_inputs(rng, shape)
    c = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    rm = x.mean(axis=axes) + rng.choice([-1, 1], c) * rng.uniform(0.5, 1.0, c) * x.std(axis=axes)
    rv = x.var(axis=axes) * rng.uniform(0.5, 2.0, c)
    y, cache = bnp.batch_renorm_forward(x, gamma, beta, running_mean=rm.copy(),
                                        running_var=rv.copy(), rmax=10.0, dmax=10.0)
    r, d = cache.r, cache.d
    assert np.all(np.abs(r - 1) > 1e-3) and np.all(np.abs(d) > 0.1)
    dx, dgamma, dbeta = bnp.batch_renorm_backward(dy, cache)

    _, bn_cache = bnp.batch_norm_forward(x, gamma * r, beta)
    dx_bn, dgamma_bn_scaled, dbeta_bn = bnp.batch_norm_backward(dy, bn_cache)
    np.testing.assert_allclose(dx, dx_bn, **TIGHT)
    np.testing.assert_allclose(dbeta, dbeta_bn, **TIGHT)
    np.testing.assert_allclose(dgamma, r * dgamma_bn_scaled + d * dbeta_bn, **TIGHT)

    # bnlab.torch, written without calling BatchNorm's backward, agrees too.
    ours = torch_run(lambda x_, g, b: bf.batch_renorm(
        x_, torch.tensor(rm), torch.tensor(rv), g, b, True, 0.01, 1e-5, 10.0, 10.0),
        x, dy, gamma, beta)
    assert_all_close(ours, [y, dx, dgamma, dbeta])
    torch_bn = torch_run(lambda x_, g: bf.batch_norm(x_, None, None, g, None, True),
                         x, dy, gamma * r)
    np.testing.assert_allclose(ours[1], torch_bn[1], **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_ghost_batch_norm_with_one_virtual_batch_is_batch_norm(rng, shape):
    x, gamma, beta, dy = make_inputs(rng, shape)
    c, n = shape[1], shape[0]
    rms = [(np.zeros(c), np.ones(c)) for _ in range(4)]
    ghost = numpy_run(bnp.ghost_batch_norm_forward, bnp.ghost_batch_norm_backward, x, dy,
                      gamma, beta, virtual_batch_size=n, running_mean=rms[0][0],
                      running_var=rms[0][1])
    bn = numpy_run(bnp.batch_norm_forward, bnp.batch_norm_backward, x, dy, gamma, beta,
                   running_mean=rms[1][0], running_var=rms[1][1])
    assert_all_close(ghost, bn)
    t = [tuple(torch.from_numpy(a) for a in pair) for pair in rms[2:]]
    assert_all_close(
        torch_run(lambda x_, g, b: bf.ghost_batch_norm(x_, *t[0], g, b, True,
                                                       virtual_batch_size=n), x, dy, gamma, beta),
        torch_run(lambda x_, g, b: bf.batch_norm(x_, *t[1], g, b, True), x, dy, gamma, beta))
    for rm, rv in rms:
        np.testing.assert_allclose(rm, rms[1][0], **TIGHT)
        np.testing.assert_allclose(rv, rms[1][1], **TIGHT)
