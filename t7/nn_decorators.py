"""Torch7 nn's Decorator and the modules that forward through a saved module (DontCast, NaN, GPU, Bottle,
WeightNorm, Convert; dpnn's Serial and Inception), and LinearWeightNorm, as PyTorch modules and back."""

import torch
from torch import nn

from layers import decorators, shape, tables
from t7.read import TENSOR_DTYPES, T7Error, TorchObject
from t7.write import TENSOR_CLASSES
from t7.registry import builds, class_of, long_storage, writes

# What each decorator keeps besides its module, written back as it was read. dpnn's Serial (how dpnn models were
# saved) and Inception (a DepthConcat of its towers) are Decorators whose forward is their module's.
_KEPT = {'Decorator': (), 'GPU': ('device', 'outdevice'), 'Serial': ('tensortype',), 'Inception': ()}


def _inner(loader, f, path):
    modules = f.get('modules')
    if not isinstance(modules, list) or len(modules) != 1 or not isinstance(modules[0], TorchObject):
        raise T7Error(f'{f.typename} at {path}: field modules must hold the one module it decorates')
    return modules[0]


@builds(*_KEPT)
def _decorator(loader, f, path):
    module = decorators.Decorator(loader.module(_inner(loader, f, path), f'{path}.modules[0]'))
    module.kept_fields = {name: f.get(name) for name in _KEPT[class_of(f.typename)] if f.get(name) is not None}
    return module


@writes(*_KEPT, accepts=decorators.Decorator)
def _write_decorator(saver, module, fields, path):
    fields['modules'] = [saver.obj(module.module, f'{path}.modules[0]')]
    name = class_of(module.lua_type)
    fields.update({'device': 1} if name == 'GPU' else {}, **getattr(module, 'kept_fields', {}))
    if name == 'GPU':
        # What nn.GPU's write puts before its fields (see t7.read.WRITTEN_BEFORE_FIELDS).
        fields['gpuHeader'] = [fields['_type'], fields['device']]


@builds('NaN')
def _nan(loader, f, path):
    return decorators.NaN(loader.module(_inner(loader, f, path), f'{path}.modules[0]'), f.int('id', 1))


# A NaN or DontCast around a module of tables runs as a plain Decorator (see their lua_specialize), its fields kept.
@writes('NaN', accepts=decorators.Decorator)
def _write_nan(saver, module, fields, path):
    fields.update(modules=[saver.obj(module.module, f'{path}.modules[0]')], id=getattr(module, 'id', 1))


@builds('DontCast')
def _dont_cast(loader, f, path):
    module = loader.module(_inner(loader, f, path), f'{path}.modules[0]')
    castin = f.flag('castin')
    castout = f.flag('castout', castin)
    module_type, output = f.get('moduleType'), f.get('output')
    if (castin or castout) and module_type not in TENSOR_DTYPES:
        f.fail('moduleType', 'a Torch7 tensor type name')
    if castout and not isinstance(output, torch.Tensor):
        f.fail('output', 'a tensor (castout copies the output to its type)')
    return decorators.DontCast(module, castin, castout, TENSOR_DTYPES.get(module_type),
                               output.dtype if isinstance(output, torch.Tensor) else None)


@writes('DontCast', accepts=decorators.Decorator)
def _write_dont_cast(saver, module, fields, path):
    castin, castout = getattr(module, 'castin', False), getattr(module, 'castout', False)
    fields.update(modules=[saver.obj(module.module, f'{path}.modules[0]')], castin=castin, castout=castout)
    if castin or castout:
        fields['moduleType'] = TENSOR_CLASSES[module.module_dtype]
    if castout:
        fields['output'] = torch.empty(0, dtype=module.output_dtype)


@builds('Bottle')
def _bottle(loader, f, path):
    n_in = f.int('nInputDim', 2)
    return decorators.Bottle(loader.module(_inner(loader, f, path), f'{path}.modules[0]'), n_in,
                             f.int('nOutputDim', n_in))


@writes('Bottle', accepts=decorators.Bottle)
def _write_bottle(saver, module, fields, path):
    dtype = saver.empty(module).dtype
    fields.update(modules=[saver.obj(module.module, f'{path}.modules[0]')], nInputDim=module.nInputDim,
                  nOutputDim=module.nOutputDim, dimDelta=module.nInputDim - module.nOutputDim,
                  inShape=torch.zeros(module.nInputDim, dtype=dtype),
                  outShape=torch.zeros(module.nOutputDim, dtype=dtype))


def _weight_size(f, weight):
    size = f.get('weightSize')
    if size is not None and hasattr(size, 'data'):
        return size.data.tolist()
    if weight is not None:
        return list(weight.shape)
    f.fail('weightSize', 'a LongStorage')


@builds('WeightNorm')
def _weight_norm(loader, f, path):
    inner = _inner(loader, f, path)
    if class_of(inner.typename) not in ('Linear', 'SpatialConvolution', 'SpatialConvolutionMM'):
        raise T7Error(f'unsupported module {f.typename} at {path}: t7.load_model converts weight normalisation '
                      f'around a Linear or a SpatialConvolution, not {inner.typename}')
    out_dim = f.int('outputDim', 1)
    v, g = f.tensor('v'), f.tensor('g')
    size = _weight_size(f, inner.fields.get('weight'))
    if v.dim() != 2 or v.size(0) != size[out_dim - 1] or g.numel() != v.size(0) or v.numel() != torch.Size(
            size).numel():
        f.fail('v', f'a matrix of {size[out_dim - 1]} rows holding a weight of size {"x".join(map(str, size))}')
    # Lua's read rebuilds the module's weight from v and g (its write leaves the weight out): build it the same way.
    with torch.no_grad():
        weight = decorators.normalized_weight(v, g, size, out_dim)
    built = TorchObject(inner.typename, dict(inner.fields, weight=weight), inner.version)
    module = loader.module(built, f'{path}.modules[0]')
    # The loader knows modules by the id of their Lua object: the stand-in dies here, the file's object does not.
    del loader.modules[id(built)]
    loader.modules[id(inner)] = module
    return decorators.WeightNorm(module, loader.parameter(v), loader.parameter(g), out_dim, size)


@writes('WeightNorm', accepts=decorators.WeightNorm)
def _write_weight_norm(saver, module, fields, path):
    inner = module.module
    with torch.no_grad():
        inner.weight = nn.Parameter(module.weight())
    try:
        written = saver.obj(inner, f'{path}.modules[0]')
    finally:
        decorators.drop_weight(inner)
    # As Lua's write: the module's weight is left out, its read makes it from v and g.
    written.fields.pop('weight', None)
    written.fields.pop('gradWeight', None)
    rows, others = module.v.shape
    v, g = saver.tensor(module.v), saver.tensor(module.g)
    fields.update(modules=[written], v=v, g=g, gradV=saver.grad(module.v), gradG=saver.grad(module.g),
                  _norm=torch.zeros(rows, dtype=v.dtype), _scale=torch.zeros(rows, dtype=v.dtype),
                  outputDim=module.outputDim, otherDims=others, viewIn=long_storage([rows, others]),
                  weightSize=long_storage(module.weight_size),
                  viewOut=long_storage([rows] + [n for i, n in enumerate(module.weight_size)
                                                 if i != module.outputDim - 1]))
    if inner.bias is not None:
        fields.update(bias=written.fields['bias'], gradBias=written.fields['gradBias'])


@builds('LinearWeightNorm')
def _linear_weight_norm(loader, f, path):
    v = f.tensor('v')
    if v.dim() != 2:
        f.fail('v', 'a 2-D tensor')
    g = f.tensor('g', (v.size(0), 1))
    bias = f.tensor('bias', (v.size(0),), optional=True)
    return decorators.LinearWeightNorm(loader.parameter(v), loader.parameter(g),
                                       None if bias is None else loader.parameter(bias), f.number('eps', 1e-16))


@writes('LinearWeightNorm', accepts=decorators.LinearWeightNorm)
def _write_linear_weight_norm(saver, module, fields, path):
    out, n_in = module.v.shape
    v = saver.tensor(module.v)
    with torch.no_grad():
        weight = module.weight().detach()
    fields.update(v=v, gradV=saver.grad(module.v), g=saver.tensor(module.g), gradG=saver.grad(module.g),
                  weight=weight, norm=torch.zeros(out, 1, dtype=v.dtype), scale=torch.zeros(out, 1, dtype=v.dtype),
                  eps=module.eps, inputSize=n_in, outputSize=out)
    if module.bias is not None:
        fields.update(bias=saver.tensor(module.bias), gradBias=saver.grad(module.bias))


@builds('Convert')
def _convert(loader, f, path):
    shapes = f.get('inputShape'), f.get('outputShape')
    if not all(isinstance(s, str) and 'b' in s for s in shapes):
        f.fail('inputShape', "a shape string with a batch axis 'b' (as Convert's constructor leaves it)")
    in_shape, out_shape = shapes
    saved = f.get('converter')
    if saved is None and f.get('modules'):
        saved = f.get('modules')[0]
    if saved is not None:
        converter = loader.module(saved, f'{path}.converter')
    elif f.flag('transposition') and in_shape == out_shape:
        converter = tables.Identity()
    elif f.flag('transposition'):
        # Lua's Convert:transpose: the swaps that bring each axis of the output shape into place, in order.
        axes, swaps = list(in_shape), []
        for i, axis in enumerate(out_shape):
            j = axes.index(axis)
            if i != j:
                axes[i], axes[j] = axes[j], axes[i]
                swaps.append((j + 1, i + 1))
        converter = shape.Transpose(*swaps)
    else:
        raise T7Error(f'unsupported module {f.typename} at {path}: Lua builds its {in_shape} -> {out_shape} converter '
                      f'from the first input it sees, and this one was saved before any forward')
    n_in = f.int('nInputDim', -1 if 'b*' in shapes else len(in_shape))
    return decorators.Convert(converter, in_shape, out_shape, n_in, f.int('inputBatchDim', in_shape.find('b') + 1),
                              f.int('outputBatchDim', out_shape.find('b') + 1))


@writes('Convert', accepts=decorators.Convert)
def _write_convert(saver, module, fields, path):
    converter = saver.obj(module.converter, f'{path}.converter')
    transposition = module.inputShape == 'b*' or module.outputShape == 'b*' or (
        len(module.inputShape) == len(module.outputShape) and set(module.inputShape) == set(module.outputShape))
    n_in = -1 if 'b*' in (module.inputShape, module.outputShape) else len(module.inputShape)
    fields.update(inputShape=module.inputShape, outputShape=module.outputShape, inputBatchDim=module.inputBatchDim,
                  outputBatchDim=module.outputBatchDim, nInputDim=n_in,
                  nOutputDim=-1 if n_in == -1 else len(module.outputShape), transposition=transposition,
                  converter=converter, modules=[converter])
