"""The table of per-class converters between Torch7 nn/cudnn modules and PyTorch modules, and the typed field access
they share; each t7/nn_<family>.py fills it for one family of nn classes."""

import math

import torch

from t7.read import Storage, T7Error, TorchObject

# Lua class (without its package) -> builder(loader, fields, path) returning the PyTorch module.
BUILDERS = {}
# Lua class (without its package) -> (PyTorch class or classes it accepts, writer(saver, module, fields, path)).
WRITERS = {}
# Lua classes whose __version is 2 (BatchNormalization switched from running_std to running_var).
VERSION_2 = {'BatchNormalization', 'SpatialBatchNormalization'}


def builds(*lua_classes):
    """Registers the decorated function as the builder of `lua_classes` (as class_of names them: without 'nn.' or
    'cudnn.')."""
    def register(builder):
        for name in lua_classes:
            if name in BUILDERS:
                raise ValueError(f'two builders for {name}')
            BUILDERS[name] = builder
        return builder
    return register


def writes(*lua_classes, accepts):
    """Registers the decorated function as the writer of `lua_classes` for PyTorch modules of class `accepts`."""
    def register(writer):
        for name in lua_classes:
            if name in WRITERS:
                raise ValueError(f'two writers for {name}')
            WRITERS[name] = (accepts, writer)
        return writer
    return register


def class_of(typename):
    """'cudnn.SpatialConvolution' -> 'SpatialConvolution' for the packages whose classes are interchangeable."""
    package, _, name = typename.partition('.')
    if package in ('nn', 'cudnn'):
        return name
    if package == 'inn':
        # imagine-nn's classes of 2015 models (ceil-mode pooling, LRN): their own entries, package and all.
        return typename
    # clcNet's interlace, nngraph's split(1) helpers, and char-rnn's OneHot (a class without a package).
    if typename in ('nn_plus.ChannelInterlace', 'nngraph.JustElement', 'nngraph.JustTable', 'OneHot'):
        return typename.rpartition('.')[2]
    return None


class Fields:
    """Typed access to a Lua module's fields; problems name the module and its place in the tree."""

    def __init__(self, obj, path):
        self.obj = obj
        self.typename = obj.typename
        self.path = path

    def fail(self, name, wanted):
        found = self.obj.fields.get(name)
        raise T7Error(f'{self.typename} at {self.path}: field {name} must be {wanted}, found {describe(found)}')

    def get(self, name, default=None):
        return self.obj.fields.get(name, default)

    def number(self, name, default=None):
        value = self.obj.fields.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, 'a number')
        return value

    def int(self, name, default=None):
        value = self.number(name, default)
        # Lua numbers are doubles, exact for whole numbers up to 2^53; no size or index gets past that (a damaged
        # file does, and torch's overflow error would bring its C++ stack into the message).
        if not (math.isfinite(value) and value == int(value)):
            self.fail(name, 'an integer')
        if abs(value) > 2 ** 53:
            self.fail(name, 'an integer of at most 2^53')
        return int(value)

    def flag(self, name, default=False):
        value = self.obj.fields.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(name, 'a boolean')
        return value

    def tensor(self, name, shape=None, optional=False):
        """The floating point tensor in field `name` (viewed as `shape` when given, as Lua views old 2-D weights):
        on the file's memory unless that shape needs a copy, with a version counter of its own (see
        `storage_view`)."""
        value = self.obj.fields.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            self.fail(name, 'a floating point tensor')
        if shape is not None and tuple(value.shape) != tuple(shape):
            if value.numel() != math.prod(shape):
                self.fail(name, f'a tensor of {"x".join(map(str, shape))} elements')
            value = value.reshape(shape)
        return storage_view(value)


def storage_view(t):
    """A tensor over t's elements, without a copy, that is not a view of another tensor.

    The reader hands out every tensor of a storage as a view of one base tensor, and PyTorch views share one
    version counter: in a model flattened by Lua's getParameters, an in-place write to one parameter (the
    align-weight pruning of PooledSpatialConvolution) would mark every other parameter as modified and break
    backward. A tensor `set_` on the same storage aliases the same memory, as the Lua tensors did, but counts
    its own versions.
    """
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.shape,
                                                               t.stride())


def describe(value):
    if isinstance(value, torch.Tensor):
        return f'a {value.dtype} tensor of size {"x".join(map(str, value.shape)) or "0"}'
    if isinstance(value, TorchObject):
        return value.typename
    return repr(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__


def set_parameters(loader, module, weight, bias):
    module.weight = loader.parameter(weight)
    if bias is None:
        module.bias = None
    else:
        module.bias = loader.parameter(bias)
    return module


def float_dtype(module):
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def tensor_type(module):
    return {torch.float64: 'torch.DoubleTensor', torch.float16: 'torch.HalfTensor'}.get(float_dtype(module),
                                                                                      'torch.FloatTensor')


def long_storage(values):
    return Storage('torch.LongStorage', torch.tensor(values, dtype=torch.int64))


def pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)
