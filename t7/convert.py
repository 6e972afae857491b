"""Port of the nn/cudnn/lcnn/clcNet module classes (their fields, read and updateOutput) to PyTorch and back."""

import math

import torch
from torch import nn

from layers.ChannelInterlace import ChannelInterlace
from layers.PooledSpatialConvolution import PooledSpatialConvolution
from layers import legacy
from layers.legacy import lua_type, named
from t7.read import LuaFunction, Storage, T7Error, TorchObject, load
from t7.write import save

# Lua classes whose __version is 2 (BatchNormalization switched from running_std to running_var).
_VERSION_2 = {'BatchNormalization', 'SpatialBatchNormalization'}


def _class_of(typename):
    """'cudnn.SpatialConvolution' -> 'SpatialConvolution' for the packages whose classes are interchangeable."""
    package, _, name = typename.partition('.')
    if package in ('nn', 'cudnn'):
        return name
    if typename == 'nn_plus.ChannelInterlace':
        return 'ChannelInterlace'
    return None


# ---------------------------------------------------------------------------------------------------------------
# Lua -> PyTorch


class _Loader:
    def __init__(self):
        self.modules = {}     # id(TorchObject) -> nn.Module, so that a module shared in Lua stays shared
        self.parameters = {}  # id(tensor) -> nn.Parameter, so that a tensor shared in Lua stays shared
        self.building = set()  # ids of the modules being built, to refuse a module that contains itself

    def module(self, obj, path):
        if not isinstance(obj, TorchObject):
            raise T7Error(f'{path} is not an nn module (found {type(obj).__name__})')
        known = self.modules.get(id(obj))
        if known is not None:
            return known
        if id(obj) in self.building:
            raise T7Error(f'{obj.typename} at {path} contains itself')
        builder = _BUILDERS.get(_class_of(obj.typename))
        if builder is None:
            raise T7Error(f'unsupported module {obj.typename} at {path}: t7.load_model converts '
                          f'{", ".join(sorted(_BUILDERS))} (as nn.*, cudnn.* or nn_plus.ChannelInterlace)')
        self.building.add(id(obj))
        try:
            module = builder(self, _Fields(obj, path), path)
        except (RuntimeError, ValueError, TypeError) as e:
            raise T7Error(f'{obj.typename} at {path} cannot be built: {e}') from None
        finally:
            self.building.discard(id(obj))
        named(module, obj.typename)
        for key, value in obj.fields.items():
            # Functions such as resnet's LRregime are model data with no PyTorch meaning: kept to be written back.
            if isinstance(key, str) and key.isidentifier() and isinstance(value, LuaFunction):
                setattr(module, 'lua_' + key, value)
        self.modules[id(obj)] = module
        return module

    def children(self, fields, path):
        modules = fields.get('modules', [])
        if isinstance(modules, dict) and not modules:
            modules = []
        if not isinstance(modules, list):
            raise T7Error(f'{fields.typename} at {path}: field modules must be a list of modules')
        return [self.module(m, f'{path}.modules[{i}]') for i, m in enumerate(modules)]

    def parameter(self, tensor):
        known = self.parameters.get(id(tensor))
        if known is None:
            known = self.parameters[id(tensor)] = nn.Parameter(tensor, requires_grad=True)
        return known


class _Fields:
    """Typed access to a Lua module's fields; problems name the module and its place in the tree."""

    def __init__(self, obj, path):
        self.obj = obj
        self.typename = obj.typename
        self.path = path

    def fail(self, name, wanted):
        found = self.obj.fields.get(name)
        raise T7Error(f'{self.typename} at {self.path}: field {name} must be {wanted}, found {_describe(found)}')

    def get(self, name, default=None):
        return self.obj.fields.get(name, default)

    def number(self, name, default=None):
        value = self.obj.fields.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, 'a number')
        return value

    def int(self, name, default=None):
        value = self.number(name, default)
        if value != int(value):
            self.fail(name, 'an integer')
        return int(value)

    def flag(self, name, default=False):
        value = self.obj.fields.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(name, 'a boolean')
        return value

    def tensor(self, name, shape=None, optional=False):
        value = self.obj.fields.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            self.fail(name, 'a floating point tensor')
        if shape is not None:
            if value.numel() != math.prod(shape):
                self.fail(name, f'a tensor of {"x".join(map(str, shape))} elements')
            value = value.reshape(shape) if tuple(value.shape) != tuple(shape) else value
        return value


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f'a {value.dtype} tensor of size {"x".join(map(str, value.shape)) or "0"}'
    if isinstance(value, TorchObject):
        return value.typename
    return repr(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__


def _set_parameters(loader, module, weight, bias):
    module.weight = loader.parameter(weight)
    if bias is None:
        module.bias = None
    else:
        module.bias = loader.parameter(bias)
    return module


def _sequential(loader, f, path):
    return nn.Sequential(*loader.children(f, path))


def _concat(loader, f, path):
    return legacy.Concat(f.int('dimension'), *loader.children(f, path))


def _concat_table(loader, f, path):
    return legacy.ConcatTable(*loader.children(f, path))


def _identity(loader, f, path):
    return nn.Identity()


def _cadd_table(loader, f, path):
    return legacy.CAddTable(inplace=f.flag('inplace'))


def _mul_constant(loader, f, path):
    return legacy.MulConstant(f.number('constant_scalar'), inplace=f.flag('inplace'))


def _convolution(loader, f, path):
    n_in, n_out, groups = f.int('nInputPlane'), f.int('nOutputPlane'), f.int('groups', 1)
    kw, kh = f.int('kW'), f.int('kH')
    if groups < 1 or n_in % groups or n_out % groups:
        raise T7Error(f'{f.typename} at {path}: {n_in} -> {n_out} planes cannot be split into {groups} groups')
    # Old nn files keep the weight as a 2-D matrix; Lua views it as 4-D on reading, so does this.
    weight = f.tensor('weight', (n_out, n_in // groups, kh, kw))
    bias = f.tensor('bias', (n_out,), optional=True)
    padding = f.get('padding')
    pad_w, pad_h = (padding, padding) if padding is not None else (f.int('padW', 0), f.int('padH', f.int('padW', 0)))
    conv = nn.Conv2d(n_in, n_out, (kh, kw), (f.int('dH', 1), f.int('dW', 1)), (int(pad_h), int(pad_w)),
                     groups=groups, bias=bias is not None, device='meta')
    return _set_parameters(loader, conv, weight, bias)


def _pooled_convolution(loader, f, path):
    poolconv, alignconv = f.get('poolconv'), f.get('alignconv')
    if not isinstance(poolconv, TorchObject) or not isinstance(alignconv, TorchObject):
        raise T7Error(f'{f.typename} at {path}: fields poolconv and alignconv must be convolution modules')
    # The constructor draws initial weights, which the saved ones replace: loading must not move the global RNG.
    with torch.random.fork_rng(devices=[]):
        layer = PooledSpatialConvolution(f.int('nInputPlane'), f.int('nOutputPlane'), f.int('kW'), f.int('kH'),
                                         f.int('dW'), f.int('dH'), f.int('padW'), f.int('padH'), f.int('poolSize'),
                                         lambda_=f.number('lambda', 0.1), initialSparsity=1.0)
    # The threshold is stored, not recomputed: it is what the Lua forward compares the align weights with.
    layer.sparseTh = f.number('sparseTh')
    for name, saved in (('poolconv', poolconv), ('alignconv', alignconv)):
        ours = getattr(layer, name)
        theirs = loader.module(saved, f'{path}.{name}')
        if (not isinstance(theirs, nn.Conv2d) or theirs.weight.shape != ours.weight.shape
                or theirs.stride != ours.stride or theirs.padding != ours.padding or theirs.groups != 1):
            raise T7Error(f'{f.typename} at {path}: {name} ({_describe_conv(theirs)}) does not match the layer '
                          f'({_describe_conv(ours)})')
        setattr(layer, name, theirs)
    return layer


def _describe_conv(conv):
    if not isinstance(conv, nn.Conv2d):
        return type(conv).__name__
    return (f'weight {"x".join(map(str, conv.weight.shape))}, stride {conv.stride}, padding {conv.padding}, '
            f'groups {conv.groups}')


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
    spatial = _class_of(f.typename).startswith('Spatial')
    bn = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(n, eps=eps, momentum=f.number('momentum', 0.1),
                                                         affine=affine, device='meta')
    if affine:
        _set_parameters(loader, bn, weight, bias)
    bn.running_mean = mean.reshape(n)
    bn.running_var = var.reshape(n)
    bn.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    return bn


def _relu(loader, f, path):
    inplace = f.flag('inplace')
    threshold, value = f.number('threshold', 0), f.number('val', 0)
    if threshold == 0 and value == 0:
        return nn.ReLU(inplace=inplace)
    return nn.Threshold(threshold, value, inplace=inplace)


def _threshold(loader, f, path):
    return nn.Threshold(f.number('threshold', 1e-6), f.number('val', 0), inplace=f.flag('inplace'))


def _max_pooling(loader, f, path):
    kw, kh = f.int('kW'), f.int('kH')
    return nn.MaxPool2d((kh, kw), (f.int('dH', kh), f.int('dW', kw)), (f.int('padH', 0), f.int('padW', 0)),
                        ceil_mode=f.flag('ceil_mode'))


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


def _dropout(loader, f, path):
    if f.flag('stochastic_inference'):
        raise T7Error(f'{f.typename} at {path}: stochastic_inference=true (dropout at test time) is not supported')
    # Files from before nn's v2 flag behave as v1.
    return legacy.Dropout(f.number('p', 0.5), v1=not f.flag('v2'), inplace=f.flag('inplace'))


def _spatial_dropout(loader, f, path):
    if f.flag('stochastic_inference'):
        raise T7Error(f'{f.typename} at {path}: stochastic_inference=true (dropout at test time) is not supported')
    return legacy.SpatialDropout(f.number('p', 0.5))


def _view(loader, f, path):
    size = f.get('size')
    if isinstance(size, Storage):
        sizes = size.data.tolist()
    elif isinstance(size, list) and all(isinstance(s, int) for s in size):
        sizes = size
    else:
        f.fail('size', 'a LongStorage')
    dims = f.get('numInputDims')
    return legacy.View(*sizes, num_input_dims=None if dims is None else f.int('numInputDims'))


def _linear(loader, f, path):
    weight = f.tensor('weight')
    if weight.dim() != 2:
        f.fail('weight', 'a 2-D tensor')
    n_out, n_in = weight.shape
    bias = f.tensor('bias', (n_out,), optional=True)
    return _set_parameters(loader, nn.Linear(n_in, n_out, bias=bias is not None, device='meta'), weight, bias)


def _log_softmax(loader, f, path):
    return legacy.LogSoftMax()


def _softmax(loader, f, path):
    return legacy.SoftMax()


def _channel_interlace(loader, f, path):
    channel, group = f.int('channel'), f.int('group')
    layer = ChannelInterlace(channel, group)
    for name in ('f_idx', 'b_idx'):
        saved = f.get(name)
        # :cuda() turns every tensor of a module into a CudaTensor, so the 1-based indices may be floats.
        if not isinstance(saved, torch.Tensor) or saved.numel() != channel:
            f.fail(name, f'a tensor of {channel} indices')
        index = saved.reshape(channel).to(torch.float64)
        if not torch.equal(index.sort().values, torch.arange(1, channel + 1, dtype=torch.float64)):
            f.fail(name, f'a permutation of 1..{channel}')
        setattr(layer, name, index.to(torch.long) - 1)
    return layer


_BUILDERS = {
    'Sequential': _sequential, 'Concat': _concat, 'ConcatTable': _concat_table, 'Identity': _identity,
    'CAddTable': _cadd_table, 'MulConstant': _mul_constant,
    'SpatialConvolution': _convolution, 'SpatialConvolutionMM': _convolution,
    'PooledSpatialConvolution': _pooled_convolution,
    'SpatialBatchNormalization': _batch_norm, 'BatchNormalization': _batch_norm,
    'ReLU': _relu, 'Threshold': _threshold,
    'SpatialMaxPooling': _max_pooling, 'SpatialAveragePooling': _average_pooling,
    'Dropout': _dropout, 'SpatialDropout': _spatial_dropout, 'View': _view, 'Linear': _linear,
    'LogSoftMax': _log_softmax, 'SoftMax': _softmax, 'ChannelInterlace': _channel_interlace,
}


def load_model(source):
    """Builds a PyTorch module, in eval mode, from a Torch7 file holding an nn/cudnn module tree.

    Every module gets the project's class for its Lua class and `lua_type` = the saved class name; parameters
    that Lua shared stay shared. Lua functions stored on a module (resnet's LRregime) are kept as `lua_<name>`
    attributes. Errors name the module's place in the tree with Python's 0-based indices (model.modules[2]).
    """
    obj = source if isinstance(source, TorchObject) else load(source)
    try:
        model = _Loader().module(obj, 'model')
    except RecursionError:
        raise T7Error('the module tree is nested too deeply to convert') from None
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# PyTorch -> Lua


class _Saver:
    def __init__(self):
        self.objects = {}  # id(nn.Module) -> TorchObject, so that shared modules stay shared
        self.tensors = {}  # id(tensor) -> the tensor written for it (and its gradient buffer)
        self.keep = []     # modules and tensors whose ids are keys above

    def obj(self, module, path, reached=True):
        known = self.objects.get(id(module))
        if known is not None:
            return known
        try:
            typename = lua_type(module)
        except TypeError:
            raise T7Error(f'cannot save {type(module).__name__} at {path}: it has no Torch7 counterpart') from None
        writer = _WRITERS.get(_class_of(typename))
        if writer is None:
            raise T7Error(f'cannot save {typename} ({type(module).__name__}) at {path}: t7.save_model writes '
                          f'{", ".join(sorted(_WRITERS))}')
        expected = writer[0] if isinstance(writer[0], tuple) else (writer[0],)
        if not isinstance(module, expected):
            raise T7Error(f'cannot save {type(module).__name__} at {path} as {typename}: '
                          f'expected a {" or ".join(c.__name__ for c in expected)}')
        obj = TorchObject(typename, {}, 2 if _class_of(typename) in _VERSION_2 else 1)
        self.objects[id(module)] = obj
        self.keep.append(module)
        fields = obj.fields
        fields['output'] = self.empty(module)
        fields['gradInput'] = self.empty(module)
        fields['_type'] = _tensor_type(module)
        if reached:
            fields['train'] = module.training
        writer[1](self, module, fields, path)
        for name, value in vars(module).items():
            if name.startswith('lua_') and name != 'lua_type':
                fields[name[len('lua_'):]] = value
        return obj

    def empty(self, module):
        return torch.empty(0, dtype=_float_dtype(module))

    def tensor(self, t):
        """The tensor written for parameter or buffer t: one Lua tensor per PyTorch tensor."""
        if t is None:
            return None
        written = self.tensors.get(id(t))
        if written is None:
            written = self.tensors[id(t)] = t.detach()
            self.keep.append(t)
        return written

    def grad(self, t):
        """A zero gradient buffer of t's shape, as Lua modules allocate gradWeight/gradBias; one per parameter."""
        if t is None:
            return None
        key = ('grad', id(t))
        written = self.tensors.get(key)
        if written is None:
            written = self.tensors[key] = torch.zeros(t.shape, dtype=t.dtype)
        return written

    def children(self, module, path):
        # _modules rather than children(): a module added twice to a container is written twice, as Lua has it.
        mods = [m for m in module._modules.values() if m is not None]
        return [self.obj(m, f'{path}.modules[{i}]') for i, m in enumerate(mods)]


def _float_dtype(module):
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _tensor_type(module):
    return {torch.float64: 'torch.DoubleTensor', torch.float16: 'torch.HalfTensor'}.get(_float_dtype(module),
                                                                                       'torch.FloatTensor')


def _long_storage(values):
    return Storage('torch.LongStorage', torch.tensor(values, dtype=torch.int64))


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _write_container(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)


def _write_concat(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)
    fields['dimension'] = module.dimension
    fields['outputSize'] = _long_storage([])


def _write_concat_table(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)
    fields['output'] = {}


def _write_identity(saver, module, fields, path):
    pass


def _write_cadd_table(saver, module, fields, path):
    fields['gradInput'] = {}
    fields['inplace'] = bool(module.inplace)


def _write_mul_constant(saver, module, fields, path):
    fields['constant_scalar'] = module.constant_scalar
    fields['inplace'] = bool(module.inplace)


def _write_convolution(saver, module, fields, path):
    typename = lua_type(module)
    if module.dilation != (1, 1) or module.padding_mode != 'zeros' or isinstance(module.padding, str):
        raise T7Error(f'cannot save {typename} at {path}: Torch7 convolutions have no dilation, '
                      f'string padding or {module.padding_mode} padding')
    if module.groups != 1 and not typename.startswith('cudnn.'):
        raise T7Error(f'cannot save {typename} at {path} with groups={module.groups}: only '
                      'cudnn.SpatialConvolution has groups; name it so with layers.named')
    (kh, kw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, _pair(module.padding)
    fields.update(nInputPlane=module.in_channels, nOutputPlane=module.out_channels, kW=kw, kH=kh, dW=dw, dH=dh,
                  padW=pw, padH=ph)
    fields['weight'] = saver.tensor(module.weight)
    fields['gradWeight'] = saver.grad(module.weight)
    if module.bias is not None:
        fields['bias'] = saver.tensor(module.bias)
        fields['gradBias'] = saver.grad(module.bias)
    if typename.startswith('cudnn.'):
        fields['groups'] = module.groups
        fields['iSize'] = _long_storage([0, 0, 0, 0])


def _write_pooled_convolution(saver, module, fields, path):
    # The Lua class never calls its parent's constructor: no gradInput of its own; its output is alignconv's.
    del fields['gradInput']
    poolconv = saver.obj(module.poolconv, f'{path}.poolconv', reached=False)
    alignconv = saver.obj(module.alignconv, f'{path}.alignconv', reached=False)
    for name, conv in (('poolconv', poolconv), ('alignconv', alignconv)):
        if _class_of(conv.typename) != 'SpatialConvolution':
            raise T7Error(f'cannot save {path}.{name}: a PooledSpatialConvolution needs a SpatialConvolution '
                          f'there, not {conv.typename}')
    sequential = TorchObject('nn.Sequential', {
        'output': saver.empty(module), 'gradInput': saver.empty(module), '_type': _tensor_type(module),
        'modules': [poolconv, alignconv]})
    fields.update(nInputPlane=module.nInputPlane, nOutputPlane=module.nOutputPlane, kW=module.kW, kH=module.kH,
                  dW=module.dW, dH=module.dH, padW=module.padW, padH=module.padH, poolSize=module.poolSize,
                  sparseTh=module.sparseTh, poolconv=poolconv, alignconv=alignconv, m=sequential)
    fields['lambda'] = module.lambda_
    fields['output'] = alignconv.output
    fields['weight'] = poolconv.weight
    fields['gradWeight'] = poolconv.gradWeight
    if 'bias' in alignconv.fields:
        fields['bias'] = alignconv.bias
        fields['gradBias'] = alignconv.gradBias


def _write_batch_norm(saver, module, fields, path):
    if not module.track_running_stats or module.running_mean is None:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: Torch7 BatchNormalization keeps running '
                      'statistics; this one has track_running_stats=False')
    if module.momentum is None:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: momentum=None (a cumulative average) has no '
                      'Torch7 equivalent; set a momentum such as 0.1')
    fields.update(eps=module.eps, momentum=module.momentum, affine=module.affine, running_mean=saver.tensor(module.running_mean),
                  running_var=saver.tensor(module.running_var))
    if module.affine:
        fields.update(weight=saver.tensor(module.weight), bias=saver.tensor(module.bias),
                      gradWeight=saver.grad(module.weight), gradBias=saver.grad(module.bias))


def _write_relu(saver, module, fields, path):
    typename = lua_type(module)
    fields['inplace'] = bool(module.inplace)
    if isinstance(module, nn.Threshold):
        if typename.startswith('cudnn.') and (module.threshold != 0 or module.value != 0):
            raise T7Error(f'cannot save {typename} at {path}: cudnn.ReLU has no threshold or value')
        threshold, value = module.threshold, module.value
    else:
        threshold, value = 0, 0
    if typename.startswith('cudnn.'):
        fields['mode'] = 'CUDNN_ACTIVATION_RELU'
    else:
        fields.update(threshold=threshold, val=value)


def _write_threshold(saver, module, fields, path):
    fields.update(threshold=module.threshold, val=module.value, inplace=bool(module.inplace))


def _pooling_geometry(module):
    (kh, kw), (dh, dw), (ph, pw) = (_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                                    _pair(module.padding))
    return dict(kW=kw, kH=kh, dW=dw, dH=dh, padW=pw, padH=ph, ceil_mode=bool(module.ceil_mode))


def _write_max_pooling(saver, module, fields, path):
    if _pair(module.dilation) != (1, 1) or module.return_indices:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: Torch7 max pooling has no dilation '
                      'and returns no indices')
    fields.update(_pooling_geometry(module))
    if lua_type(module).startswith('cudnn.'):
        fields.update(mode='CUDNN_POOLING_MAX', iSize=_long_storage([0, 0, 0, 0]))
    else:
        fields['indices'] = torch.empty(0, dtype=torch.int64)


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
        fields.update(mode='CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING', iSize=_long_storage([0, 0, 0, 0]))
    else:
        fields['divide'] = divide


def _write_dropout(saver, module, fields, path):
    fields.update(p=module.p, stochastic_inference=False, v2=not getattr(module, 'v1', False),
                  noise=saver.empty(module))
    if module.inplace:
        fields['inplace'] = True


def _write_spatial_dropout(saver, module, fields, path):
    fields.update(p=module.p, stochastic_inference=False, noise=saver.empty(module))


def _write_view(saver, module, fields, path):
    fields['size'] = _long_storage(list(module.sizes))
    fields['numElements'] = module.num_elements
    if module.num_input_dims is not None:
        fields['numInputDims'] = module.num_input_dims


def _write_linear(saver, module, fields, path):
    fields['weight'] = saver.tensor(module.weight)
    fields['gradWeight'] = saver.grad(module.weight)
    if module.bias is not None:
        fields['bias'] = saver.tensor(module.bias)
        fields['gradBias'] = saver.grad(module.bias)


def _write_softmax(saver, module, fields, path):
    if lua_type(module).startswith('cudnn.'):
        fields.update(algorithm='CUDNN_SOFTMAX_ACCURATE', iSize=_long_storage([0, 0, 0, 0]))


def _write_channel_interlace(saver, module, fields, path):
    fields.update(channel=module.channel, group=module.group, f_idx=module.f_idx.detach().cpu() + 1,
                  b_idx=module.b_idx.detach().cpu() + 1)


_WRITERS = {
    'Sequential': (nn.Sequential, _write_container), 'Concat': (legacy.Concat, _write_concat),
    'ConcatTable': (legacy.ConcatTable, _write_concat_table), 'Identity': (nn.Identity, _write_identity),
    'CAddTable': (legacy.CAddTable, _write_cadd_table), 'MulConstant': (legacy.MulConstant, _write_mul_constant),
    'SpatialConvolution': (nn.Conv2d, _write_convolution), 'SpatialConvolutionMM': (nn.Conv2d, _write_convolution),
    'PooledSpatialConvolution': (PooledSpatialConvolution, _write_pooled_convolution),
    'SpatialBatchNormalization': (nn.BatchNorm2d, _write_batch_norm),
    'BatchNormalization': (nn.BatchNorm1d, _write_batch_norm),
    'ReLU': ((nn.ReLU, nn.Threshold), _write_relu), 'Threshold': (nn.Threshold, _write_threshold),
    'SpatialMaxPooling': (nn.MaxPool2d, _write_max_pooling),
    'SpatialAveragePooling': (nn.AvgPool2d, _write_average_pooling),
    'Dropout': (nn.Dropout, _write_dropout), 'SpatialDropout': (nn.Dropout2d, _write_spatial_dropout),
    'View': (legacy.View, _write_view), 'Linear': (nn.Linear, _write_linear),
    'LogSoftMax': (legacy.LogSoftMax, _write_softmax), 'SoftMax': (legacy.SoftMax, _write_softmax),
    'ChannelInterlace': (ChannelInterlace, _write_channel_interlace),
}


def to_lua(module):
    """The TorchObject tree Lua would have for a PyTorch module (what save_model writes)."""
    if not isinstance(module, nn.Module):
        raise T7Error(f't7.save_model expects a torch.nn.Module, not {type(module).__name__}')
    return _Saver().obj(module, 'model')


def save_model(target, module):
    """Writes a PyTorch model (from models.create or load_model) as the nn/cudnn module tree Lua would have.

    Each module is written as its `lua_type` class with the fields that class's constructor creates and its
    forward reads (gradient buffers included, as Lua allocates them); `lua_<name>` attributes are written back
    as fields. Errors name the module's place in the tree (model.modules[2]).
    """
    save(target, to_lua(module))
