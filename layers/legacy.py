"""Torch7 `nn` modules that PyTorch lacks (View, Concat, ConcatTable, CAddTable, MulConstant, Dropout v1,
SpatialDropout, LogSoftMax/SoftMax) and the Lua class name every module carries."""
import math

import torch
from torch import nn
import torch.nn.functional as F

# Lua class names of the plain PyTorch modules the models are built from. A module created for a cudnn.* Lua
# class records that with `named(...)`; everything else falls back to this table.
_DEFAULT_LUA_TYPES = {
    nn.Sequential: 'nn.Sequential',
    nn.Conv2d: 'nn.SpatialConvolution',
    nn.BatchNorm2d: 'nn.SpatialBatchNormalization',
    nn.ReLU: 'nn.ReLU',
    nn.MaxPool2d: 'nn.SpatialMaxPooling',
    nn.AvgPool2d: 'nn.SpatialAveragePooling',
    nn.Dropout: 'nn.Dropout',
    nn.Linear: 'nn.Linear',
    nn.Identity: 'nn.Identity',
}


def lua_type(module):
    """The Lua class name of `module` (what torch.type() would say of its Torch7 counterpart)."""
    name = getattr(module, 'lua_type', None)
    if name:
        return name
    for cls in type(module).__mro__:
        if cls in _DEFAULT_LUA_TYPES:
            return _DEFAULT_LUA_TYPES[cls]
    raise TypeError(f'{type(module).__name__} has no Torch7 counterpart')


def named(module, name):
    """Record that `module` stands for the Lua class `name` (e.g. 'cudnn.SpatialConvolution'); returns it."""
    module.lua_type = name
    return module


def _add_all(container, mods):
    for m in mods:
        container.add(m)


class _Container(nn.Module):
    """Ordered children named '0', '1', ... like nn.Sequential, filled with Lua's `:add`."""

    def __init__(self, *mods):
        super().__init__()
        _add_all(self, mods)

    def add(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())


class Concat(_Container):
    """nn.Concat(dim): every child sees the same input; outputs are joined along the 1-based Lua `dim`."""
    lua_type = 'nn.Concat'

    def __init__(self, dimension, *mods):
        super().__init__(*mods)
        self.dimension = dimension

    def forward(self, x):
        return torch.cat([m(x) for m in self], dim=self.dimension - 1)


class ConcatTable(_Container):
    """nn.ConcatTable: every child sees the same input; the output is the list of their outputs."""
    lua_type = 'nn.ConcatTable'

    def forward(self, x):
        return [m(x) for m in self]


class CAddTable(nn.Module):
    """nn.CAddTable: element-wise sum of a list of tensors."""
    lua_type = 'nn.CAddTable'

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class MulConstant(nn.Module):
    """nn.MulConstant(c): multiply by a scalar."""
    lua_type = 'nn.MulConstant'

    def __init__(self, constant_scalar, inplace=False):
        super().__init__()
        self.constant_scalar = constant_scalar
        self.inplace = inplace

    def forward(self, x):
        return x * self.constant_scalar


class View(nn.Module):
    """nn.View(sizes...): reshape, with Torch7's rule for deciding whether the leading dimension is a batch.

    The rule matters at batch size 1: nn.View(10) turns a 1x10x1x1 input into a 1-D tensor of 10, as Lua did.
    """
    lua_type = 'nn.View'

    def __init__(self, *sizes, num_input_dims=None):
        super().__init__()
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        self.sizes = tuple(int(s) for s in sizes)
        if any(s < -1 for s in self.sizes) or self.sizes.count(-1) > 1:
            raise ValueError(f'nn.View sizes {self.sizes}: sizes must be positive with at most one -1')
        self.num_elements = math.prod(s for s in self.sizes if s >= 0)
        self.num_input_dims = num_input_dims

    def setNumInputDims(self, n):
        self.num_input_dims = n
        return self

    def _batch_size(self, x):
        ndim = x.dim()
        maxdim = self.num_input_dims if self.num_input_dims is not None else ndim
        inner = math.prod(x.shape[ndim - maxdim:])
        if inner % self.num_elements != 0:
            raise RuntimeError(f"input view ({'x'.join(map(str, x.shape))}) and desired view "
                               f"({'x'.join(map(str, self.sizes))}) do not match")
        bsz = 1 if -1 in self.sizes else inner // self.num_elements
        bsz *= math.prod(x.shape[:ndim - maxdim])
        if bsz == 1 and (self.num_input_dims is None or ndim <= self.num_input_dims):
            return None
        return bsz

    def forward(self, x):
        bsz = self._batch_size(x)
        shape = self.sizes if bsz is None else (bsz,) + self.sizes
        return x.reshape(shape)

    def extra_repr(self):
        return ', '.join(map(str, self.sizes))


class Dropout(nn.Dropout):
    """nn.Dropout(p, v1): v2 (the default) scales kept units by 1/(1-p) in training, as PyTorch does; v1 leaves
    them alone in training and scales the output by 1-p at test time instead."""

    def __init__(self, p=0.5, v1=False, inplace=False):
        super().__init__(p, inplace)
        self.v1 = v1

    def forward(self, x):
        if not self.v1:
            return super().forward(x)
        if self.training:
            return super().forward(x) * (1 - self.p)
        return x * (1 - self.p)


class SpatialDropout(nn.Dropout2d):
    """nn.SpatialDropout: drops whole feature maps without rescaling while training and multiplies by 1-p at
    test time. PyTorch's Dropout2d rescales while training instead; the difference shows at test time, where the
    following conv and BatchNorm statistics of a Lua-trained AlexNet expect the 1-p scale."""

    lua_type = 'nn.SpatialDropout'

    def forward(self, x):
        if not self.training:
            return x * (1 - self.p)
        if x.dim() not in (3, 4):
            raise ValueError(f'nn.SpatialDropout: input must be 4D (nbatch, nfeat, h, w) or 3D (nfeat, h, w), '
                             f'got {x.dim()}D')
        keep = x.new_empty(x.shape[:-2] + (1, 1)).bernoulli_(1 - self.p)
        return x * keep


def _channel_dim(x):
    # Torch7 softmaxes over the feature dimension: the first of a 1-D/3-D input, the second of a 2-D/4-D batch.
    return 0 if x.dim() in (1, 3) else 1


class LogSoftMax(nn.Module):
    """nn.LogSoftMax with Torch7's choice of dimension."""
    lua_type = 'nn.LogSoftMax'

    def forward(self, x):
        return F.log_softmax(x, dim=_channel_dim(x))


class SoftMax(nn.Module):
    """nn.SoftMax with Torch7's choice of dimension."""
    lua_type = 'nn.SoftMax'

    def forward(self, x):
        return F.softmax(x, dim=_channel_dim(x))
