"""Torch7 `nn` modules that PyTorch lacks (MulConstant, Dropout v1, SpatialDropout, LogSoftMax/SoftMax) and the
Lua class name every module carries."""
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


class MulConstant(nn.Module):
    """nn.MulConstant(c): multiply by a scalar."""
    lua_type = 'nn.MulConstant'

    def __init__(self, constant_scalar, inplace=False):
        super().__init__()
        self.constant_scalar = constant_scalar
        self.inplace = inplace

    def forward(self, x):
        return x * self.constant_scalar


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
