"""Torch7 nn/cudnn pooling as PyTorch modules and back."""

import torch
from torch import nn

from layers.legacy import lua_type
from t7.read import T7Error
from t7.registry import builds, long_storage, pair, writes


def _pooling_geometry(module):
    (kh, kw), (dh, dw), (ph, pw) = (pair(module.kernel_size), pair(module.stride or module.kernel_size),
                                    pair(module.padding))
    return dict(kW=kw, kH=kh, dW=dw, dH=dh, padW=pw, padH=ph, ceil_mode=bool(module.ceil_mode))


@builds('SpatialMaxPooling')
def _max_pooling(loader, f, path):
    kw, kh = f.int('kW'), f.int('kH')
    return nn.MaxPool2d((kh, kw), (f.int('dH', kh), f.int('dW', kw)), (f.int('padH', 0), f.int('padW', 0)),
                        ceil_mode=f.flag('ceil_mode'))


@builds('SpatialAveragePooling')
def _average_pooling(loader, f, path):
    kw, kh = f.int('kW'), f.int('kH')
    if f.get('ceil_mode') is None:
        # Files from before ceil_mode: Lua resets the padding and counts it (backwardCompatible).
        ceil, include_pad, pad_w, pad_h = False, True, 0, 0
    else:
        ceil, pad_w, pad_h = f.flag('ceil_mode'), f.int('padW', 0), f.int('padH', 0)
        # cudnn's updateOutput always ends up counting the padding (its `x and x or true`).
        include_pad = True if f.typename.startswith('cudnn.') else f.flag('count_include_pad', True)
    divide = f.get('divide')
    if f.typename.startswith('cudnn.'):
        if divide is False:
            raise T7Error(f'{f.typename} at {path}: divide=false, which cudnn refuses')
        divide = True
    if not divide:
        # Lua multiplies the average by kW*kH: a plain sum only while no window is cut by padding or ceil.
        if pad_w or pad_h or ceil:
            raise T7Error(f'{f.typename} at {path}: divide=false with padding or ceil mode is not supported')
        return nn.AvgPool2d((kh, kw), (f.int('dH', 1), f.int('dW', 1)), divisor_override=1)
    return nn.AvgPool2d((kh, kw), (f.int('dH', 1), f.int('dW', 1)), (pad_h, pad_w), ceil_mode=ceil,
                        count_include_pad=include_pad)


@writes('SpatialMaxPooling', accepts=nn.MaxPool2d)
def _write_max_pooling(saver, module, fields, path):
    if pair(module.dilation) != (1, 1) or module.return_indices:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: Torch7 max pooling has no dilation '
                      'and returns no indices')
    fields.update(_pooling_geometry(module))
    if lua_type(module).startswith('cudnn.'):
        fields.update(mode='CUDNN_POOLING_MAX', iSize=long_storage([0, 0, 0, 0]))
    else:
        fields['indices'] = torch.empty(0, dtype=torch.int64)


@writes('SpatialAveragePooling', accepts=nn.AvgPool2d)
def _write_average_pooling(saver, module, fields, path):
    typename = lua_type(module)
    geometry = _pooling_geometry(module)
    if module.divisor_override not in (None, 1):
        raise T7Error(f'cannot save {typename} at {path}: divisor_override={module.divisor_override}')
    divide = module.divisor_override is None
    if not divide and (geometry['padW'] or geometry['padH'] or geometry['ceil_mode'] or typename.startswith('cudnn.')):
        raise T7Error(f'cannot save {typename} at {path}: a summing pool (divisor_override=1) is only '
                      'nn.SpatialAveragePooling with divide=false, without padding or ceil mode')
    fields.update(geometry)
    fields['count_include_pad'] = bool(module.count_include_pad)
    if typename.startswith('cudnn.'):
        if not module.count_include_pad:
            raise T7Error(f'cannot save {typename} at {path}: cudnn average pooling always counts the padding')
        fields.update(mode='CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING', iSize=long_storage([0, 0, 0, 0]))
    else:
        fields['divide'] = divide
