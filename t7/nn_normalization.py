"""Torch7 nn/cudnn batch, response, p-norm and local normalisations as PyTorch modules and back."""

import math

import torch
from torch import nn

from layers import activation, normalization, tables
from layers.legacy import lua_type
from t7.nn_conv import write_parameters
from t7.read import T7Error, TorchObject
from t7.registry import builds, class_of, float_dtype, set_parameters, tensor_type, writes

_BATCH_NORMS = {'BatchNormalization': normalization.BatchNormalization,
                'SpatialBatchNormalization': normalization.SpatialBatchNormalization,
                'VolumetricBatchNormalization': normalization.VolumetricBatchNormalization}


@builds(*_BATCH_NORMS)
def _batch_norm(loader, f, path):
    mean = f.tensor('running_mean')
    eps = f.number('eps', 1e-5)
    var = f.tensor('running_var', optional=True)
    if f.obj.version < 2 and f.get('running_std') is not None:
        # BatchNormalization:read of nn converts files from before running_var this way.
        var = f.tensor('running_std').pow(-2).add(-eps)
    if var is None:
        f.fail('running_var', 'a floating point tensor')
    n = mean.numel()
    weight = f.tensor('weight', (n,), optional=True)
    bias = f.tensor('bias', (n,), optional=True)
    affine = f.flag('affine', weight is not None)
    if affine != (weight is not None and bias is not None):
        raise T7Error(f'{f.typename} at {path}: affine={affine} but weight/bias are '
                      f'{"missing" if affine else "present"}')
    bn = _BATCH_NORMS[class_of(f.typename)](n, eps=eps, momentum=f.number('momentum', 0.1), affine=affine,
                                            device='meta')
    if affine:
        set_parameters(loader, bn, weight, bias)
    bn.running_mean = mean.reshape(n)
    bn.running_var = var.reshape(n)
    bn.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    return bn


@writes('BatchNormalization', accepts=nn.BatchNorm1d)
@writes('SpatialBatchNormalization', accepts=nn.BatchNorm2d)
@writes('VolumetricBatchNormalization', accepts=nn.BatchNorm3d)
def _write_batch_norm(saver, module, fields, path):
    if not module.track_running_stats or module.running_mean is None:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: Torch7 BatchNormalization keeps running '
                      'statistics; this one has track_running_stats=False')
    if module.momentum is None:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: momentum=None (a cumulative average) has no '
                      'Torch7 equivalent; set a momentum such as 0.1')
    if lua_type(module).startswith('cudnn.') and not module.affine:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: cudnn batch normalization is always affine')
    fields.update(eps=module.eps, momentum=module.momentum, affine=module.affine,
                  running_mean=saver.tensor(module.running_mean), running_var=saver.tensor(module.running_var))
    write_parameters(saver, module, fields, 'weight', 'bias')


@builds('SpatialCrossMapLRN', 'inn.SpatialCrossResponseNormalization')
def _cross_map_lrn(loader, f, path):
    size = f.int('size', 5)
    if size < 1 or size % 2 == 0:
        # Lua's window arithmetic ((size-1)/2 neighbours each side) only works for odd sizes.
        f.fail('size', 'an odd positive number')
    return normalization.SpatialCrossMapLRN(size, f.number('alpha', 1e-4), f.number('beta', 0.75),
                                            f.number('k', 1))


@builds('Normalize')
def _normalize(loader, f, path):
    p = f.number('p')
    if not p > 0:
        f.fail('p', 'a positive number (or math.huge)')
    return normalization.Normalize(p, f.number('eps', 1e-10))


@writes('SpatialCrossMapLRN', 'inn.SpatialCrossResponseNormalization', accepts=normalization.SpatialCrossMapLRN)
def _write_cross_map_lrn(saver, module, fields, path):
    fields.update(size=module.size, alpha=module.alpha, beta=module.beta, k=module.k)


@writes('Normalize', accepts=normalization.Normalize)
def _write_normalize(saver, module, fields, path):
    fields.update(p=module.p, eps=module.eps)


# --- local normalisations ------------------------------------------------------------------------------------------
# Their Lua constructors build small module trees (zero padding, convolutions, Replicate, table arithmetic) whose
# only data are the estimator kernels. The builders keep those kernels (what the Lua forward computes with) and the
# writers rebuild the trees around them.

def _estimator(f, name, kernel, planes, path):
    """(map weight, map bias, weight, bias) of the convolutions in the Sequential `name` of a local
    normalisation, checked against what its constructor makes from `kernel`.

    Files from before October 2012 convolve each plane on its own (one-to-one SpatialConvolutionMaps, the last
    one vertical for a 1-D kernel) and add the planes up with nn.Sum: that last map and the Sum are the one
    convolution over all planes of the current layout, its bias the sum of the per-plane biases."""
    estimator = f.get(name)
    modules = estimator.fields.get('modules') if isinstance(estimator, TorchObject) else None
    modules = [m for m in modules or [] if isinstance(m, TorchObject)]
    convs = [m for m in modules if class_of(m.typename) in ('SpatialConvolution', 'SpatialConvolutionMap')]
    summed = any(class_of(m.typename) == 'Sum' for m in modules)
    # The convolution over all planes (weight 1 x planes x kH x kW), or in old files one kernel per plane.
    last = ((planes,) if summed else (1, planes)) + (tuple(kernel.shape) if kernel.dim() == 2 else (kernel.numel(), 1))
    shapes = [(last, (planes,) if summed else (1,))]
    if kernel.dim() == 1:
        shapes.insert(0, ((planes, 1, kernel.numel()), (planes,)))
    if len(convs) != len(shapes):
        raise T7Error(f'{f.typename} at {path}: field {name} must hold the convolutions its constructor makes '
                      f'for a {kernel.dim()}-D kernel')
    found = []
    for m, (weight_shape, bias_shape) in zip(convs, shapes):
        where = f'{path}.{name}.modules[{modules.index(m)}]'
        if class_of(m.typename) == 'SpatialConvolutionMap':
            table = m.fields.get('connTable')
            one_to_one = torch.arange(1, planes + 1, dtype=torch.float64).repeat_interleave(2).view(-1, 2)
            if not isinstance(table, torch.Tensor) or not torch.equal(table.reshape(-1, 2).double(), one_to_one):
                raise T7Error(f'{m.typename} at {where}: connTable must be the one-to-one table of {planes} planes')
        for field, shape in (('weight', weight_shape), ('bias', bias_shape)):
            t = m.fields.get(field)
            if not isinstance(t, torch.Tensor) or t.numel() != math.prod(shape):
                raise T7Error(f'{m.typename} at {where}: field {field} must be a tensor of '
                              f'{"x".join(map(str, shape))} elements')
            found.append(t.reshape(shape).float())
    if summed:
        found[-2:] = [found[-2].unsqueeze(0), found[-1].sum().reshape(1)]
    if kernel.dim() == 2:
        found = [torch.empty(0), torch.empty(0)] + found
    return tuple(found)


def _kernel(f):
    kernel = f.tensor('kernel')
    if kernel.dim() not in (1, 2) or any(s % 2 == 0 for s in kernel.shape):
        f.fail('kernel', 'a 1-D or 2-D tensor of odd sizes')
    return kernel


@builds('SpatialSubtractiveNormalization')
def _subtractive(loader, f, path):
    kernel, planes = _kernel(f), f.int('nInputPlane', 1)
    module = normalization.SpatialSubtractiveNormalization(planes, kernel)
    module.kernel = kernel.float()
    module.set_estimator('mean', _estimator(f, 'meanestimator', kernel, planes, path))
    return module


@builds('SpatialDivisiveNormalization')
def _divisive(loader, f, path):
    kernel, planes = _kernel(f), f.int('nInputPlane', 1)
    threshold = f.number('threshold', 1e-4)
    module = normalization.SpatialDivisiveNormalization(planes, kernel, threshold, f.number('thresval', threshold))
    module.kernel = kernel.float()
    module.set_estimator('mean', _estimator(f, 'meanestimator', kernel, planes, path))
    module.set_estimator('std', _estimator(f, 'stdestimator', kernel, planes, path))
    return module


@builds('SpatialContrastiveNormalization')
def _contrastive(loader, f, path):
    normalizer = f.get('normalizer')
    modules = normalizer.fields.get('modules') if isinstance(normalizer, TorchObject) else None
    if [class_of(getattr(m, 'typename', '')) for m in modules or []] != ['SpatialSubtractiveNormalization',
                                                                        'SpatialDivisiveNormalization']:
        f.fail('normalizer', 'a Sequential of a SpatialSubtractiveNormalization and a SpatialDivisiveNormalization')
    parts = [loader.module(m, f'{path}.normalizer.modules[{i}]') for i, m in enumerate(modules)]
    threshold = f.number('threshold', 1e-4)
    module = normalization.SpatialContrastiveNormalization(f.int('nInputPlane', 1), None, threshold,
                                                           f.number('thresval', threshold), parts=parts)
    module.kernel = _kernel(f).float()
    return module


def _lua_module(module, typename, **fields):
    """A Lua module that a local normalisation's constructor creates for itself."""
    empty = torch.empty(0, dtype=float_dtype(module))
    return TorchObject(typename, dict({'output': empty, 'gradInput': empty, '_type': tensor_type(module)},
                                      **fields))


def _estimator_tree(module, prefix, squared):
    """The Lua Sequential of a mean (or, squared, std) estimator around the module's kernels."""
    map_weight, map_bias, weight, bias = (getattr(module, f'{prefix}_{s}') for s in
                                          ('map_weight', 'map_bias', 'weight', 'bias'))
    planes = module.nInputPlane
    parts = [_lua_module(module, 'nn.Square')] if squared else []
    parts.append(_lua_module(module, 'nn.SpatialZeroPadding', pad_l=module.pad_w, pad_r=module.pad_w,
                             pad_t=module.pad_h, pad_b=module.pad_h))
    if map_weight.numel():
        k = map_weight.size(-1)
        table = torch.arange(1, planes + 1, dtype=torch.float32).repeat_interleave(2).view(planes, 2)
        parts.append(_lua_module(module, 'nn.SpatialConvolutionMap', kW=k, kH=1, dW=1, dH=1, connTable=table,
                                 nInputPlane=planes, nOutputPlane=planes, weight=map_weight, bias=map_bias,
                                 gradWeight=torch.zeros_like(map_weight), gradBias=torch.zeros_like(map_bias)))
    kh, kw = weight.shape[2:]
    parts.append(_lua_module(module, 'nn.SpatialConvolution', nInputPlane=planes, nOutputPlane=1, kW=kw, kH=kh,
                             dW=1, dH=1, padW=0, padH=0, weight=weight, bias=bias,
                             gradWeight=torch.zeros_like(weight), gradBias=torch.zeros_like(bias)))
    parts.append(_lua_module(module, 'nn.Replicate', nfeatures=planes, dim=1, ndim=3))
    if squared:
        parts.append(_lua_module(module, 'nn.Sqrt', eps=0))
    return _lua_module(module, 'nn.Sequential', modules=parts)


def _coef(module):
    # The constructors' placeholder for the border coefficients, which updateOutput recomputes per input size.
    return torch.zeros(1, 1, 1, dtype=float_dtype(module))


@writes('SpatialSubtractiveNormalization', accepts=normalization.SpatialSubtractiveNormalization)
def _write_subtractive(saver, module, fields, path):
    fields.update(nInputPlane=module.nInputPlane, kernel=saver.tensor(module.kernel),
                  meanestimator=_estimator_tree(module, 'mean', False),
                  subtractor=_lua_module(module, 'nn.CSubTable', gradInput={}),
                  divider=_lua_module(module, 'nn.CDivTable', gradInput={}), coef=_coef(module))


@writes('SpatialDivisiveNormalization', accepts=normalization.SpatialDivisiveNormalization)
def _write_divisive(saver, module, fields, path):
    fields.update(nInputPlane=module.nInputPlane, kernel=saver.tensor(module.kernel), threshold=module.threshold,
                  thresval=module.thresval, meanestimator=_estimator_tree(module, 'mean', False),
                  stdestimator=_estimator_tree(module, 'std', True),
                  normalizer=_lua_module(module, 'nn.CDivTable', gradInput={}),
                  divider=_lua_module(module, 'nn.CDivTable', gradInput={}),
                  thresholder=_lua_module(module, 'nn.Threshold', threshold=module.threshold, val=module.thresval,
                                          inplace=False),
                  coef=_coef(module))


@writes('SpatialContrastiveNormalization', accepts=normalization.SpatialContrastiveNormalization)
def _write_contrastive(saver, module, fields, path):
    parts = [saver.obj(m, f'{path}.normalizer.modules[{i}]') for i, m in enumerate((module.subtractive,
                                                                                      module.divisive))]
    fields.update(nInputPlane=module.nInputPlane, kernel=saver.tensor(module.kernel), threshold=module.threshold,
                  thresval=module.thresval, normalizer=_lua_module(module, 'nn.Sequential', modules=parts))


@builds('SpatialNormalization')
def _spatial_normalization(loader, f, path):
    threshold = f.get('fixedThres')
    if threshold is not None:
        threshold = float(f.number('fixedThres'))
    return normalization.SpatialNormalization(f.int('nfeatures'), loader.module(f.get('convo'), f'{path}.convo'),
                                              loader.module(f.get('convostd'), f'{path}.convostd'), threshold)


@writes('SpatialNormalization', accepts=normalization.SpatialNormalization)
def _write_spatial_normalization(saver, module, fields, path):
    # What its updateOutput reads; a 1x1 coef makes Lua compute the border coefficients for the first image.
    fields.update(nfeatures=module.nfeatures, convo=saver.obj(module.convo, f'{path}.convo'),
                  convostd=saver.obj(module.convostd, f'{path}.convostd'), coef=torch.zeros(1, 1),
                  squareMod=saver.obj(activation.Square(), f'{path}.squareMod'),
                  sqrtMod=saver.obj(activation.Sqrt(0), f'{path}.sqrtMod'),
                  subtractMod=saver.obj(tables.CSubTable(), f'{path}.subtractMod'),
                  thresMod=saver.obj(nn.Threshold(1e-3, 1e-3), f'{path}.thresMod'),
                  **{name: saver.obj(tables.CDivTable(), f'{path}.{name}')
                     for name in ('meanDiviseMod', 'stdDiviseMod', 'diviseMod')})
    if module.threshold is not None:
        fields['fixedThres'] = module.threshold
