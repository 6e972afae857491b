"""Torch7 nn/cudnn pooling, up-sampling and padding as PyTorch modules and back."""

import torch
from torch import nn

from layers import pooling
from layers.legacy import lua_type
from t7.read import T7Error
from t7.registry import VERSION_2, builds, class_of, long_storage, pair, writes

# VolumetricMaxPooling:read forces ceil_mode off for files written before its version 2.
VERSION_2.add('VolumetricMaxPooling')


def _cudnn(module):
    return lua_type(module).startswith('cudnn.')


def _cannot(module, path, why):
    return T7Error(f'cannot save {lua_type(module)} ({type(module).__name__}) at {path}: {why}')


def _pooling_geometry(module):
    (kh, kw), (dh, dw), (ph, pw) = (pair(module.kernel_size), pair(module.stride or module.kernel_size),
                                    pair(module.padding))
    return dict(kW=kw, kH=kh, dW=dw, dH=dh, padW=pw, padH=ph, ceil_mode=bool(module.ceil_mode))


def _triple(value):
    return (value,) * 3 if isinstance(value, int) else tuple(value)


def _volumetric_geometry(module):
    (kt, kh, kw), (dt, dh, dw), (pt, ph, pw) = (_triple(module.kernel_size),
                                                _triple(module.stride or module.kernel_size),
                                                _triple(module.padding))
    return dict(kT=kt, kW=kw, kH=kh, dT=dt, dW=dw, dH=dh, padT=pt, padW=pw, padH=ph)


# --- max pooling -------------------------------------------------------------------------------------------------

@builds('SpatialMaxPooling', 'SpatialDilatedMaxPooling')
def _max_pooling(loader, f, path):
    kw, kh = f.int('kW'), f.int('kH')
    # Files from before ceil_mode and padding have none: floor mode without padding.
    return nn.MaxPool2d((kh, kw), (f.int('dH', kh), f.int('dW', kw)), (f.int('padH', 0), f.int('padW', 0)),
                        (f.int('dilationH', 1), f.int('dilationW', 1)), ceil_mode=f.flag('ceil_mode'))


@builds('VolumetricMaxPooling')
def _volumetric_max_pooling(loader, f, path):
    kernel = (f.int('kT'), f.int('kH'), f.int('kW'))
    ceil = f.flag('ceil_mode') if f.obj.version >= 2 else False
    return nn.MaxPool3d(kernel, (f.int('dT', kernel[0]), f.int('dH', kernel[1]), f.int('dW', kernel[2])),
                        (f.int('padT', 0), f.int('padH', 0), f.int('padW', 0)), ceil_mode=ceil)


@builds('TemporalMaxPooling')
def _temporal_max_pooling(loader, f, path):
    return pooling.TemporalMaxPooling(f.int('kW'), f.int('dW', f.int('kW')))


@builds('SpatialAdaptiveMaxPooling', 'SpatialAdaptiveAveragePooling')
def _adaptive_pooling(loader, f, path):
    size = (f.int('H'), f.int('W'))
    return (nn.AdaptiveMaxPool2d if 'Max' in f.typename else nn.AdaptiveAvgPool2d)(size)


@writes('SpatialMaxPooling', 'SpatialDilatedMaxPooling', accepts=nn.MaxPool2d)
def _write_max_pooling(saver, module, fields, path):
    dilated = class_of(lua_type(module)) == 'SpatialDilatedMaxPooling'
    if module.return_indices:
        raise _cannot(module, path, 'Torch7 max pooling returns no indices')
    if not dilated and pair(module.dilation) != (1, 1):
        raise _cannot(module, path, 'it has no dilation; name it nn.SpatialDilatedMaxPooling with layers.named')
    fields.update(_pooling_geometry(module))
    if dilated:
        fields['dilationH'], fields['dilationW'] = pair(module.dilation)
    fields['indices'] = torch.empty(0, dtype=torch.int64)
    if _cudnn(module):
        fields.update(mode='CUDNN_POOLING_MAX', iSize=long_storage([0, 0, 0, 0]))


@writes('VolumetricMaxPooling', accepts=nn.MaxPool3d)
def _write_volumetric_max_pooling(saver, module, fields, path):
    if module.return_indices or _triple(module.dilation) != (1, 1, 1):
        raise _cannot(module, path, 'Torch7 volumetric max pooling has no dilation and returns no indices')
    fields.update(_volumetric_geometry(module), ceil_mode=bool(module.ceil_mode),
                  indices=torch.empty(0, dtype=torch.int64))
    if _cudnn(module):
        fields.update(mode='CUDNN_POOLING_MAX', iSize=long_storage([0, 0, 0, 0, 0]))


@writes('TemporalMaxPooling', accepts=pooling.TemporalMaxPooling)
def _write_temporal_max_pooling(saver, module, fields, path):
    fields.update(kW=module.kW, dW=module.dW)


@writes('SpatialAdaptiveMaxPooling', accepts=nn.AdaptiveMaxPool2d)
@writes('SpatialAdaptiveAveragePooling', accepts=nn.AdaptiveAvgPool2d)
def _write_adaptive_pooling(saver, module, fields, path):
    if getattr(module, 'return_indices', False):
        raise _cannot(module, path, 'Torch7 adaptive max pooling returns no indices')
    height, width = pair(module.output_size)
    if height is None or width is None:
        raise _cannot(module, path, 'Torch7 needs both output sizes, not None')
    fields.update(W=width, H=height)


# --- average and Lp pooling --------------------------------------------------------------------------------------

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
    # A file without `divide` (from before it) sums the windows: Lua multiplies unless divide is set.
    divide = f.flag('divide', False)
    if f.typename.startswith('cudnn.'):
        if f.get('divide') is False:
            raise T7Error(f'{f.typename} at {path}: divide=false, which cudnn refuses')
        divide = True
    geometry = ((kh, kw), (f.int('dH', 1), f.int('dW', 1)), (pad_h, pad_w), ceil, include_pad)
    if divide:
        return nn.AvgPool2d(*geometry)
    return pooling.SpatialAveragePooling(*geometry, divide=False)


@builds('VolumetricAveragePooling')
def _volumetric_average_pooling(loader, f, path):
    kernel = (f.int('kT'), f.int('kH'), f.int('kW'))
    return nn.AvgPool3d(kernel, (f.int('dT', kernel[0]), f.int('dH', kernel[1]), f.int('dW', kernel[2])))


@builds('SpatialLPPooling')
def _lp_pooling(loader, f, path):
    kw, kh = f.int('kW'), f.int('kH')
    return pooling.SpatialLPPooling(*loader.children(f, path), kW=kw, kH=kh, dW=f.int('dW', kw), dH=f.int('dH', kh))


@writes('SpatialAveragePooling', accepts=nn.AvgPool2d)
def _write_average_pooling(saver, module, fields, path):
    geometry = _pooling_geometry(module)
    if module.divisor_override not in (None, 1):
        raise _cannot(module, path, f'divisor_override={module.divisor_override}')
    divide = getattr(module, 'divide', True) and module.divisor_override is None
    if module.divisor_override == 1 and (geometry['padW'] or geometry['padH'] or geometry['ceil_mode']):
        raise _cannot(module, path, 'divisor_override=1 sums windows cut by padding or ceil mode, which Lua '
                                    'averages; use layers.pooling.SpatialAveragePooling(divide=False)')
    fields.update(geometry, count_include_pad=bool(module.count_include_pad), divide=divide)
    if _cudnn(module):
        if not module.count_include_pad or not divide:
            raise _cannot(module, path, 'cudnn average pooling always counts the padding and divides')
        fields.update(mode='CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING', iSize=long_storage([0, 0, 0, 0]))


@writes('VolumetricAveragePooling', accepts=nn.AvgPool3d)
def _write_volumetric_average_pooling(saver, module, fields, path):
    geometry = _volumetric_geometry(module)
    if (geometry['padT'] or geometry['padW'] or geometry['padH'] or module.ceil_mode
            or module.divisor_override is not None):
        raise _cannot(module, path, 'Torch7 volumetric average pooling has no padding, ceil mode or divisor')
    for name in ('padT', 'padW', 'padH'):
        del geometry[name]
    fields.update(geometry)
    if _cudnn(module):
        fields.update(padT=0, padW=0, padH=0, ceil_mode=False, mode='CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING',
                      iSize=long_storage([0, 0, 0, 0, 0]))


@writes('SpatialLPPooling', accepts=pooling.SpatialLPPooling)
def _write_lp_pooling(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)
    fields.update(kW=module.kW, kH=module.kH, dW=module.dW, dH=module.dH)


# --- up-sampling and pixel shuffle ---------------------------------------------------------------------------------

@builds('SpatialUpSamplingNearest')
def _upsampling_nearest(loader, f, path):
    return pooling.SpatialUpSamplingNearest(f.int('scale_factor'))


@builds('SpatialUpSamplingBilinear')
def _upsampling_bilinear(loader, f, path):
    if f.get('scale_factor') is not None:
        return pooling.SpatialUpSamplingBilinear(f.int('scale_factor'))
    return pooling.SpatialUpSamplingBilinear(oheight=f.int('oheight'), owidth=f.int('owidth'))


@builds('PixelShuffle')
def _pixel_shuffle(loader, f, path):
    return nn.PixelShuffle(f.int('upscaleFactor'))


@writes('SpatialUpSamplingNearest', accepts=pooling.SpatialUpSamplingNearest)
@writes('SpatialUpSamplingBilinear', accepts=pooling.SpatialUpSamplingBilinear)
def _write_upsampling(saver, module, fields, path):
    # updateOutput fills these two size storages, which the constructor makes.
    fields.update(inputSize=long_storage([0] * 4), outputSize=long_storage([0] * 4))
    if getattr(module, 'scale_factor', 0):
        fields['scale_factor'] = module.scale_factor
    else:
        fields.update(oheight=module.oheight, owidth=module.owidth)


@writes('PixelShuffle', accepts=nn.PixelShuffle)
def _write_pixel_shuffle(saver, module, fields, path):
    fields.update(upscaleFactor=module.upscale_factor, upscaleFactorSquared=module.upscale_factor ** 2)


# --- padding -------------------------------------------------------------------------------------------------------

_PADDINGS = {'SpatialZeroPadding': nn.ZeroPad2d, 'SpatialReflectionPadding': nn.ReflectionPad2d,
             'SpatialReplicationPadding': nn.ReplicationPad2d}


@builds(*_PADDINGS)
def _padding(loader, f, path):
    left = f.int('pad_l')
    pads = (left, f.int('pad_r', left), f.int('pad_t', left), f.int('pad_b', left))
    return _PADDINGS[class_of(f.typename)](pads)


def _write_padding(saver, module, fields, path):
    if isinstance(module, nn.ConstantPad2d) and module.value != 0:
        raise _cannot(module, path, f'it pads with {module.value}, Torch7 with zeros')
    fields['pad_l'], fields['pad_r'], fields['pad_t'], fields['pad_b'] = module.padding


for _name, _cls in _PADDINGS.items():
    writes(_name, accepts=nn.ConstantPad2d if _cls is nn.ZeroPad2d else _cls)(_write_padding)


@builds('SpatialPadding')
def _nnx_padding(loader, f, path):
    left = f.int('pad_l')
    return pooling.SpatialPadding(left, f.int('pad_r', left), f.int('pad_t', left), f.int('pad_b', left),
                                  f.int('y_dim', 2), f.int('x_dim', 3), f.number('val', 0))


@writes('SpatialPadding', accepts=pooling.SpatialPadding)
def _write_nnx_padding(saver, module, fields, path):
    fields.update(pad_l=module.pad_l, pad_r=module.pad_r, pad_t=module.pad_t, pad_b=module.pad_b,
                  y_dim=module.y_dim, x_dim=module.x_dim, val=module.val)


# imagine-nn's poolings are nn's with ceil_mode forced on at every forward (its updateOutput sets it).
@builds('inn.SpatialMaxPooling', 'inn.SpatialAveragePooling')
def _inn_pooling(loader, f, path):
    module = (_max_pooling if f.typename.endswith('MaxPooling') else _average_pooling)(loader, f, path)
    module.ceil_mode = True
    return module


@writes('inn.SpatialMaxPooling', accepts=nn.MaxPool2d)
def _write_inn_max_pooling(saver, module, fields, path):
    if not module.ceil_mode:
        raise _cannot(module, path, 'imagine-nn pools in ceil mode')
    _write_max_pooling(saver, module, fields, path)


@writes('inn.SpatialAveragePooling', accepts=nn.AvgPool2d)
def _write_inn_average_pooling(saver, module, fields, path):
    if not module.ceil_mode:
        raise _cannot(module, path, 'imagine-nn pools in ceil mode')
    _write_average_pooling(saver, module, fields, path)


# Each max unpooling: the PyTorch pooling its tied pooling converts to, what that pooling becomes once tied to it
# (it keeps its indices), and what Lua class the tied one must be.
_UNPOOLING = {'SpatialMaxUnpooling': (nn.MaxPool2d, pooling.IndexedMaxPool2d, pooling.SpatialMaxUnpooling,
                                      'an nn.SpatialMaxPooling'),
              'VolumetricMaxUnpooling': (nn.MaxPool3d, pooling.IndexedMaxPool3d, pooling.VolumetricMaxUnpooling,
                                         'an nn.VolumetricMaxPooling')}


@builds(*_UNPOOLING)
def _max_unpooling(loader, f, path):
    plain, indexed, unpooling, wanted = _UNPOOLING[class_of(f.typename)]
    pool = loader.module(f.get('pooling'), f'{path}.pooling')
    if not isinstance(pool, plain):
        f.fail('pooling', wanted)
    if type(pool) is plain:
        pool.__class__ = indexed
    return unpooling(pool)


@writes(*_UNPOOLING, accepts=pooling.SpatialMaxUnpooling)
def _write_max_unpooling(saver, module, fields, path):
    fields['pooling'] = saver.obj(module.pooling, f'{path}.pooling')


@builds('SpatialSymmetricPadding')
def _symmetric_padding(loader, f, path):
    left = f.int('pad_l')
    return pooling.SpatialSymmetricPadding(left, f.int('pad_r', left), f.int('pad_t', left), f.int('pad_b', left))


@writes('SpatialSymmetricPadding', accepts=pooling.SpatialSymmetricPadding)
def _write_symmetric_padding(saver, module, fields, path):
    fields.update(pad_l=module.pad_l, pad_r=module.pad_r, pad_t=module.pad_t, pad_b=module.pad_b)
