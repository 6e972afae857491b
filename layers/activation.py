"""Port of torch/nn's transfer functions, softmaxes, constant/learned arithmetic and dropouts that PyTorch lacks."""
import math
from typing import List

import torch
from torch import nn
import torch.nn.functional as F

from layers.conv import uniform_


def _lua_softmax_dim(x: torch.Tensor) -> int:
    # THNN softmaxes over the feature dimension: the first of a 1-D/3-D sample, the second of a 2-D/4-D batch.
    return 0 if x.dim() == 1 or x.dim() == 3 else 1


class SoftMax(nn.Module):
    """nn.SoftMax with Torch7's choice of dimension; `instance=True` is cudnn.SoftMax's MODE_INSTANCE, which
    normalises each sample over all its remaining dimensions (C*H*W of an image) instead of per pixel."""
    lua_type = 'nn.SoftMax'

    def __init__(self, instance=False):
        super().__init__()
        self.instance = bool(instance)
        if self.instance:
            self.lua_type = 'cudnn.SoftMax'

    def forward(self, x):
        d = _lua_softmax_dim(x)
        if self.instance:
            return F.softmax(x.flatten(d), d).view_as(x)
        return F.softmax(x, d)


class LogSoftMax(nn.Module):
    """nn.LogSoftMax with Torch7's choice of dimension; `instance=True` is cudnn.LogSoftMax's MODE_INSTANCE."""
    lua_type = 'nn.LogSoftMax'

    def __init__(self, instance=False):
        super().__init__()
        self.instance = bool(instance)
        if self.instance:
            self.lua_type = 'cudnn.LogSoftMax'

    def forward(self, x):
        d = _lua_softmax_dim(x)
        if self.instance:
            return F.log_softmax(x.flatten(d), d).view_as(x)
        return F.log_softmax(x, d)


class SoftMin(nn.Module):
    """nn.SoftMin: the softmax of -x over Torch7's feature dimension."""
    lua_type = 'nn.SoftMin'

    def forward(self, x):
        return F.softmax(-x, _lua_softmax_dim(x))


class MulConstant(nn.Module):
    """nn.MulConstant(c): multiply by a scalar."""
    lua_type = 'nn.MulConstant'

    def __init__(self, constant_scalar, inplace=False):
        super().__init__()
        self.constant_scalar = constant_scalar
        self.inplace = inplace

    def forward(self, x):
        return x * self.constant_scalar


class AddConstant(nn.Module):
    """nn.AddConstant(c): add a scalar."""
    lua_type = 'nn.AddConstant'

    def __init__(self, constant_scalar, inplace=False):
        super().__init__()
        self.constant_scalar = constant_scalar
        self.inplace = inplace

    def forward(self, x):
        return x + self.constant_scalar


class Power(nn.Module):
    """nn.Power(p): x^p element-wise."""
    lua_type = 'nn.Power'

    def __init__(self, pow):
        super().__init__()
        self.pow = pow

    def forward(self, x):
        return x.pow(self.pow)


class Square(nn.Module):
    """nn.Square: x^2 element-wise."""
    lua_type = 'nn.Square'

    def forward(self, x):
        return x * x


class Sqrt(nn.Module):
    """nn.Sqrt(eps): the square root; THNN's forward ignores eps (only the stored field keeps it)."""
    lua_type = 'nn.Sqrt'

    def __init__(self, eps=0.0):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x.sqrt()


class Abs(nn.Module):
    """nn.Abs: |x|."""
    lua_type = 'nn.Abs'

    def forward(self, x):
        return x.abs()


class Exp(nn.Module):
    """nn.Exp: e^x."""
    lua_type = 'nn.Exp'

    def forward(self, x):
        return x.exp()


class Log(nn.Module):
    """nn.Log: the natural logarithm."""
    lua_type = 'nn.Log'

    def forward(self, x):
        return x.log()


class Mul(nn.Module):
    """nn.Mul: multiply by one learned scalar (a 1-element weight)."""
    lua_type = 'nn.Mul'

    def __init__(self, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, device=device))
        uniform_(1.0, self.weight)

    def forward(self, x):
        return x * self.weight[0]


class Add(nn.Module):
    """nn.Add(inputSize, scalar): add a learned bias, one value per input element (or one value in all when
    scalar); a batch's leading dimension is broadcast as Lua's `addr` with its column of ones does."""
    lua_type = 'nn.Add'

    def __init__(self, inputSize, scalar=False, device=None):
        super().__init__()
        self.scalar = bool(scalar)
        self.bias = nn.Parameter(torch.empty(1 if scalar else inputSize, device=device))
        uniform_(1 / math.sqrt(self.bias.numel()), self.bias)

    def forward(self, x):
        if self.scalar:
            return x + self.bias[0]
        if x.shape == self.bias.shape:
            return x + self.bias
        return (x.reshape(x.size(0), -1) + self.bias.reshape(1, -1)).view_as(x)


class CMul(nn.Module):
    """nn.CMul(size...): multiply by a learned tensor of `size`, broadcast as Lua does: element by element when
    the sizes hold as many elements, expanded over singleton dimensions when the ranks match, otherwise per
    sample of a batch (the weight flattened against each sample)."""
    lua_type = 'nn.CMul'

    def __init__(self, *size, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(_sizes(size), device=device))
        uniform_(1 / math.sqrt(self.weight.numel()), self.weight)

    def forward(self, x):
        return x * _lua_broadcast(self.weight, x)


class CAdd(nn.Module):
    """nn.CAdd(size...): add a learned tensor of `size`, broadcast as nn.CMul's weight is."""
    lua_type = 'nn.CAdd'

    def __init__(self, *size, device=None):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(_sizes(size), device=device))
        uniform_(1 / math.sqrt(self.bias.numel()), self.bias)

    def forward(self, x):
        return x + _lua_broadcast(self.bias, x)


def _sizes(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def _lua_broadcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t shaped against x the way nn.CMul/nn.CAdd's updateOutput does it."""
    if t.numel() == x.numel():
        return t.reshape(x.shape)
    if t.dim() == x.dim():
        return t.expand_as(x)
    shape: List[int] = [1] + [int(s) for s in x.shape[1:]]
    return t.reshape(shape).expand_as(x)


class Dropout(nn.Dropout):
    """nn.Dropout(p, v1, inplace, stochastic_inference) with Lua's noise: a Bernoulli(1-p) keep mask, divided by
    1-p in v2 (the default, as PyTorch does). v1 leaves kept units unscaled while training and scales the output
    by 1-p at test time instead. With stochastic_inference the noise is also drawn in evaluate mode."""
    lua_type = 'nn.Dropout'

    def __init__(self, p=0.5, v1=False, inplace=False, stochastic_inference=False):
        if p < 0 or p >= 1:
            raise ValueError(f'nn.Dropout: illegal percentage {p}, must be 0 <= p < 1')
        super().__init__(p, inplace)
        self.v1 = bool(v1)
        self.stochastic_inference = bool(stochastic_inference)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.empty_like(x).bernoulli_(1 - self.p)
        return keep if self.v1 else keep / (1 - self.p)

    def forward(self, x):
        if self.p > 0:
            if self.training or self.stochastic_inference:
                return x * self.noise(x)
            if self.v1:
                return x * (1 - self.p)
        return x


class _FeatureDropout(nn.Module):
    """Drops whole feature maps without rescaling while training and multiplies by 1-p at test time (PyTorch's
    Dropout2d/3d rescale while training instead; the difference shows at test time, where the following layers
    of a Lua-trained net expect the 1-p scale)."""

    def __init__(self, p, stochastic_inference, dims):
        super().__init__()
        self.p = float(p)
        self.stochastic_inference = bool(stochastic_inference)
        self.dims = dims

    def forward(self, x):
        if not (self.training or self.stochastic_inference):
            return x * (1 - self.p)
        if x.dim() != self.dims + 1 and x.dim() != self.dims + 2:
            raise ValueError('feature map dropout: input must be ' + str(self.dims + 2) + 'D (nbatch, nfeat, ...) or '
                             + str(self.dims + 1) + 'D (nfeat, ...), got ' + str(x.dim()) + 'D')
        shape: List[int] = [int(s) for s in x.shape[:x.dim() - self.dims]] + [1] * self.dims
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * keep

    def extra_repr(self):
        return f'p={self.p}'


class SpatialDropout(_FeatureDropout):
    """nn.SpatialDropout(p): drops whole feature maps of a 4-D batch or 3-D sample; Lua's scaling (see above)."""
    lua_type = 'nn.SpatialDropout'

    def __init__(self, p=0.5, stochastic_inference=False):
        super().__init__(p, stochastic_inference, 2)


class VolumetricDropout(_FeatureDropout):
    """nn.VolumetricDropout(p): drops whole volumes of a 5-D batch or 4-D sample; Lua's scaling (see above)."""
    lua_type = 'nn.VolumetricDropout'

    def __init__(self, p=0.5, stochastic_inference=False):
        super().__init__(p, stochastic_inference, 3)
