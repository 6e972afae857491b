"""Torch7 nn shape modules (View, Reshape, Transpose, Squeeze, Unsqueeze, Replicate, Narrow, Select, Copy,
Contiguous, Sum, Mean, Max, Min, Padding) as PyTorch modules and back."""

import torch

from layers import shape
from layers.legacy import lua_type
from t7.read import TENSOR_DTYPES, LuaFunction, Storage, T7Error
from t7.registry import builds, class_of, long_storage, writes
from t7.nn_tables import optional_int


def _sizes(f, name):
    value = f.get(name)
    if isinstance(value, Storage) and value.data.dtype == torch.int64:
        return value.data.tolist()
    if isinstance(value, list) and all(type(s) is int for s in value):
        return value
    f.fail(name, 'a LongStorage')


def _number(value):
    return int(value) if float(value).is_integer() else float(value)


@builds('View')
def _view(loader, f, path):
    return shape.View(*_sizes(f, 'size'), num_input_dims=optional_int(f, 'numInputDims'))


@builds('Reshape')
def _reshape(loader, f, path):
    mode = f.get('batchMode')
    if mode is not None and not isinstance(mode, bool):
        f.fail('batchMode', 'a boolean or nil')
    return shape.Reshape(*_sizes(f, 'size'), batch_mode=mode)


@builds('Transpose')
def _transpose(loader, f, path):
    permutations = f.get('permutations')
    if not (isinstance(permutations, list)
            and all(isinstance(p, list) and len(p) == 2 and all(type(d) is int for d in p) for p in permutations)):
        f.fail('permutations', 'a list of {dim1, dim2} pairs')
    return shape.Transpose(*permutations, num_input_dims=optional_int(f, 'numInputDims'))


@builds('Squeeze')
def _squeeze(loader, f, path):
    return shape.Squeeze(optional_int(f, 'dim'), optional_int(f, 'numInputDims'))


@builds('Unsqueeze')
def _unsqueeze(loader, f, path):
    return shape.Unsqueeze(f.int('pos'), optional_int(f, 'numInputDims'))


@builds('Replicate')
def _replicate(loader, f, path):
    return shape.Replicate(f.int('nfeatures'), f.int('dim', 1), optional_int(f, 'ndim'))


@builds('Narrow')
def _narrow(loader, f, path):
    return shape.Narrow(f.int('dimension'), f.int('index'), f.int('length', 1))


@builds('Select')
def _select(loader, f, path):
    return shape.Select(f.int('dimension'), f.int('index'))


def _tensor_dtype(f, name):
    value = f.get(name)
    return value.dtype if isinstance(value, torch.Tensor) else torch.float32


@builds('Copy')
def _copy(loader, f, path):
    # Without forceCopy and with equal types, Lua's constructor stores pass-through functions on the instance.
    force = not isinstance(f.get('updateOutput'), LuaFunction)
    module = shape.Copy(_tensor_dtype(f, 'output'), force_copy=force)
    module.in_dtype = _tensor_dtype(f, 'gradInput')
    return module


@builds('Contiguous')
def _contiguous(loader, f, path):
    return shape.Contiguous()


@builds('Sum', 'Mean')
def _sum(loader, f, path):
    mean = class_of(f.typename) == 'Mean'
    return shape.Sum(f.int('dimension', 1), optional_int(f, 'nInputDims'), f.flag('sizeAverage', mean),
                     f.flag('squeeze', True))


@builds('Max', 'Min')
def _max(loader, f, path):
    return shape.Max(f.int('dimension', 1), optional_int(f, 'nInputDims'), minimum=class_of(f.typename) == 'Min')


@builds('Padding')
def _padding(loader, f, path):
    return shape.Padding(f.int('dim'), f.int('pad'), optional_int(f, 'nInputDim'), f.number('value', 0),
                         f.int('index', 1))


@writes('View', accepts=shape.View)
def _write_view(saver, module, fields, path):
    fields['size'] = long_storage(list(module.sizes))
    fields['numElements'] = module.num_elements
    if module.num_input_dims is not None:
        fields['numInputDims'] = module.num_input_dims


@writes('Reshape', accepts=shape.Reshape)
def _write_reshape(saver, module, fields, path):
    # batchsize[1] is filled with the batch size on each forward.
    fields.update(size=long_storage(list(module.sizes)), batchsize=long_storage([0, *module.sizes]),
                  nelement=module.num_elements)
    if module.batch_mode is not None:
        fields['batchMode'] = module.batch_mode


@writes('Transpose', accepts=shape.Transpose)
def _write_transpose(saver, module, fields, path):
    fields['permutations'] = [[a, b] for a, b in module.permutations]
    if module.num_input_dims is not None:
        fields['numInputDims'] = module.num_input_dims


@writes('Squeeze', accepts=shape.Squeeze)
def _write_squeeze(saver, module, fields, path):
    if module.dim is not None:
        fields['dim'] = module.dim
    if module.num_input_dims is not None:
        fields['numInputDims'] = module.num_input_dims


@writes('Unsqueeze', accepts=shape.Unsqueeze)
def _write_unsqueeze(saver, module, fields, path):
    fields['pos'] = module.pos
    if module.num_input_dims is not None:
        fields['numInputDims'] = module.num_input_dims


@writes('Replicate', accepts=shape.Replicate)
def _write_replicate(saver, module, fields, path):
    fields.update(nfeatures=module.nfeatures, dim=module.dim)
    if module.ndim is not None:
        fields['ndim'] = module.ndim


@writes('Narrow', accepts=shape.Narrow)
def _write_narrow(saver, module, fields, path):
    fields.update(dimension=module.dimension, index=module.index, length=module.length)


@writes('Select', accepts=shape.Select)
def _write_select(saver, module, fields, path):
    fields.update(dimension=module.dimension, index=module.index)


@writes('Copy', accepts=shape.Copy)
def _write_copy(saver, module, fields, path):
    # Lua's Copy takes its output type from the output tensor and its input type from gradInput.
    in_dtype = getattr(module, 'in_dtype', module.dtype)
    for name, dtype in (('output', module.dtype), ('gradInput', in_dtype)):
        if dtype not in TENSOR_DTYPES.values():
            dtype = torch.float32
        fields[name] = torch.empty(0, dtype=dtype)


@writes('Contiguous', accepts=shape.Contiguous)
def _write_contiguous(saver, module, fields, path):
    pass


@writes('Sum', 'Mean', accepts=shape.Sum)
def _write_sum(saver, module, fields, path):
    fields.update(dimension=module.dimension, sizeAverage=module.size_average, squeeze=module.squeeze)
    if module.n_input_dims > 0:
        fields['nInputDims'] = module.n_input_dims


@writes('Max', 'Min', accepts=shape.Max)
def _write_max(saver, module, fields, path):
    if module.minimum != (class_of(lua_type(module)) == 'Min'):
        raise T7Error(f'cannot save {lua_type(module)} at {path}: the module computes the '
                      f'{"min" if module.minimum else "max"}imum')
    fields['dimension'] = module.dimension
    if module.n_input_dims > 0:
        fields['nInputDims'] = module.n_input_dims


@writes('Padding', accepts=shape.Padding)
def _write_padding(saver, module, fields, path):
    fields.update(dim=module.dim, pad=module.pad, value=_number(module.value), index=module.index,
                  outputSize=long_storage([]))
    if module.n_input_dim is not None:
        fields['nInputDim'] = module.n_input_dim
