"""Torch7 `nn` modules that PyTorch lacks (View, Concat, ConcatTable, CAddTable) and the Lua class name every module
carries."""
import math

import torch
from torch import nn

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
    # PyTorch modules that compute what these Lua classes compute (t7.save_model writes them as such).
    nn.ConvTranspose2d: 'nn.SpatialFullConvolution',
    nn.Conv3d: 'nn.VolumetricConvolution',
    nn.ConvTranspose3d: 'nn.VolumetricFullConvolution',
    nn.MaxPool3d: 'nn.VolumetricMaxPooling',
    nn.AvgPool3d: 'nn.VolumetricAveragePooling',
    nn.AdaptiveMaxPool2d: 'nn.SpatialAdaptiveMaxPooling',
    nn.AdaptiveAvgPool2d: 'nn.SpatialAdaptiveAveragePooling',
    nn.PixelShuffle: 'nn.PixelShuffle',
    nn.ZeroPad2d: 'nn.SpatialZeroPadding',
    nn.ReflectionPad2d: 'nn.SpatialReflectionPadding',
    nn.ReplicationPad2d: 'nn.SpatialReplicationPadding',
    nn.BatchNorm1d: 'nn.BatchNormalization',
    nn.BatchNorm3d: 'nn.VolumetricBatchNormalization',
    nn.Threshold: 'nn.Threshold',
    nn.ReLU6: 'nn.ReLU6',
    nn.PReLU: 'nn.PReLU',
    nn.RReLU: 'nn.RReLU',
    nn.LeakyReLU: 'nn.LeakyReLU',
    nn.ELU: 'nn.ELU',
    nn.Tanh: 'nn.Tanh',
    nn.Sigmoid: 'nn.Sigmoid',
    nn.Hardtanh: 'nn.HardTanh',
    nn.Hardshrink: 'nn.HardShrink',
    nn.Softshrink: 'nn.SoftShrink',
    nn.Tanhshrink: 'nn.TanhShrink',
    nn.Softplus: 'nn.SoftPlus',
    nn.Softsign: 'nn.SoftSign',
    nn.LogSigmoid: 'nn.LogSigmoid',
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
