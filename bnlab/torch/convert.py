"""Swap torch.nn normalization layers for bnlab's, carrying weights and buffers over."""

from torch import nn

from . import modules


def _norm_base_arguments(layer):  # BatchNorm and InstanceNorm
    return (layer.num_features,), dict(eps=layer.eps, momentum=layer.momentum,
                                       affine=layer.affine,
                                       track_running_stats=layer.track_running_stats,
                                       bias=layer.bias is not None)


def _layer_norm_arguments(layer):
    return (layer.normalized_shape,), dict(eps=layer.eps,
                                           elementwise_affine=layer.elementwise_affine,
                                           bias=layer.bias is not None)


def _group_norm_arguments(layer):
    return (layer.num_groups, layer.num_channels), dict(eps=layer.eps, affine=layer.affine,
                                                        bias=layer.bias is not None)


def _rms_norm_arguments(layer):
    return (layer.normalized_shape,), dict(eps=layer.eps,
                                           elementwise_affine=layer.elementwise_affine)


# torch.nn class -> (bnlab class, the constructor arguments that rebuild the layer)
_REPLACEMENTS = {
    nn.BatchNorm1d: (modules.BatchNorm1d, _norm_base_arguments),
    nn.BatchNorm2d: (modules.BatchNorm2d, _norm_base_arguments),
    nn.BatchNorm3d: (modules.BatchNorm3d, _norm_base_arguments),
    nn.InstanceNorm1d: (modules.InstanceNorm1d, _norm_base_arguments),
    nn.InstanceNorm2d: (modules.InstanceNorm2d, _norm_base_arguments),
    nn.InstanceNorm3d: (modules.InstanceNorm3d, _norm_base_arguments),
    nn.LayerNorm: (modules.LayerNorm, _layer_norm_arguments),
    nn.GroupNorm: (modules.GroupNorm, _group_norm_arguments),
    nn.RMSNorm: (modules.RMSNorm, _rms_norm_arguments),
}


def _replacement(layer):
    """bnlab's twin of a torch.nn layer: same arguments, state, device, dtype and mode."""
    cls, arguments = _REPLACEMENTS[type(layer)]
    args, kwargs = arguments(layer)
    tensors = list(layer.parameters()) + [b for b in layer.buffers() if b.is_floating_point()]
    factory = dict(device=tensors[0].device, dtype=tensors[0].dtype) if tensors else {}
    ours = cls(*args, **kwargs, **factory)
    ours.load_state_dict(layer.state_dict())
    for name, parameter in layer.named_parameters(recurse=False):
        setattr(ours, name, parameter)  # the same Parameters, so optimizers keep working
    return ours.train(layer.training)


def convert(model):
    """Return ``model`` with every torch.nn BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d,
    LayerNorm, GroupNorm and RMSNorm replaced by bnlab's (in place).

    Parameters are the very same ``nn.Parameter`` objects, so an optimizer built before the
    conversion keeps working; buffers are copied. A bare norm layer is returned converted.
    """
    if type(model) in _REPLACEMENTS:
        return _replacement(model)
    for name, child in model.named_children():
        setattr(model, name, convert(child))
    return model
