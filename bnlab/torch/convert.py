"""Swap torch.nn normalization layers for bnlab's, carrying weights and buffers over."""

from torch import nn

from . import modules

_REPLACEMENTS = {
    nn.BatchNorm1d: modules.BatchNorm1d,
    nn.BatchNorm2d: modules.BatchNorm2d,
    nn.BatchNorm3d: modules.BatchNorm3d,
}


def _replacement(layer):
    """bnlab's twin of a torch.nn layer: same arguments, state, device, dtype and mode."""
    tensors = list(layer.parameters()) + [b for b in layer.buffers() if b.is_floating_point()]
    factory = dict(device=tensors[0].device, dtype=tensors[0].dtype) if tensors else {}
    ours = _REPLACEMENTS[type(layer)](
        layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
        track_running_stats=layer.track_running_stats, bias=layer.bias is not None, **factory)
    ours.load_state_dict(layer.state_dict())
    if layer.affine:  # share the Parameters themselves, so optimizers keep working
        ours.weight, ours.bias = layer.weight, layer.bias
    return ours.train(layer.training)


def convert(model):
    """Return ``model`` with every nn.BatchNorm1d/2d/3d replaced by bnlab's (in place).

    Parameters are the very same ``nn.Parameter`` objects, so an optimizer built before the
    conversion keeps working; buffers are copied. A bare norm layer is returned converted.
    """
    if type(model) in _REPLACEMENTS:
        return _replacement(model)
    for name, child in model.named_children():
        setattr(model, name, convert(child))
    return model
