"""Multilayer perceptrons with a normalization layer of one's choice."""

from torch import nn

from .. import torch as bt

NORMS = ("none", "batch", "layer", "group", "renorm", "ghost")


def make_norm(kind, width, *, groups=4, virtual_batch_size=None, **kwargs):
    """A bnlab normalization layer for (N, width) activations; ``"none"`` gives Identity.

    batch: BatchNorm1d; layer: LayerNorm; group: GroupNorm(groups); renorm: BatchRenorm1d
    (the paper's rmax/dmax schedule unless given); ghost: GhostBatchNorm1d.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return bt.BatchNorm1d(width, **kwargs)
    if kind == "layer":
        return bt.LayerNorm(width, **kwargs)
    if kind == "group":
        return bt.GroupNorm(groups, width, **kwargs)
    if kind == "renorm":
        return bt.BatchRenorm1d(width, **kwargs)
    if kind == "ghost":
        if virtual_batch_size is None:
            raise ValueError("make_norm('ghost', ...): expected virtual_batch_size; got None.")
        return bt.GhostBatchNorm1d(width, virtual_batch_size=virtual_batch_size, **kwargs)
    raise ValueError(f"make_norm: expected kind in {NORMS}; got {kind!r}.")


def mlp(sizes, *, norm="none", activation=nn.ReLU, placement="before", dropout=0.0,
        weight_scale=None, **norm_kwargs):
    """Linear layers of the given ``sizes`` (input, hidden..., output).

    Each hidden layer is Linear -> [norm] -> activation -> [Dropout] when
    ``placement="before"`` (normalize the pre-activation, as Ioffe & Szegedy do) and
    Linear -> activation -> [norm] -> [Dropout] with ``placement="after"``.
    ``weight_scale``: if given, every weight is drawn from N(0, weight_scale^2) instead of
    torch's default (Kaiming-uniform) initialization; biases start at zero.
    """
    if placement not in ("before", "after"):
        raise ValueError(f"mlp: expected placement 'before' or 'after'; got {placement!r}.")
    layers = []
    for width_in, width_out in zip(sizes[:-2], sizes[1:-1]):
        block = [nn.Linear(width_in, width_out), make_norm(norm, width_out, **norm_kwargs),
                 activation()]
        if placement == "after":
            block[1], block[2] = block[2], block[1]
        if dropout:
            block.append(nn.Dropout(dropout))
        layers += [m for m in block if not isinstance(m, nn.Identity)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    model = nn.Sequential(*layers)
    if weight_scale is not None:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=weight_scale)
                nn.init.zeros_(m.bias)
    return model
