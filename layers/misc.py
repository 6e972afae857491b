"""Port of torch/nn's GradientReversal.lua, ZeroGrad.lua, L1Penalty.lua, PrintSize.lua, WhiteNoise.lua, CReLU.lua,
Collapse.lua, GatedLinearUnit.lua, Constant.lua, Index.lua and MaskedSelect.lua: modules that are the identity at
inference or a few lines of tensor arithmetic."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.factor, None


class _L1Gradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, m, provide_output):
        ctx.save_for_backward(x)
        ctx.m, ctx.provide_output = m, provide_output
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        x, = ctx.saved_tensors
        grad = ctx.m * x.sign()
        return (grad + grad_output if ctx.provide_output else grad), None, None


class GradientReversal(nn.Module):
    """nn.GradientReversal(lambda): the identity forward; its backward sends back -lambda times the gradient
    (files of its version 1 have no lambda: 1). TorchScript runs it as the identity."""
    lua_type = 'nn.GradientReversal'

    def __init__(self, lambda_=1.0):
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or not x.requires_grad:
            return x
        return self.with_gradient(x)

    @torch.jit.unused
    def with_gradient(self, x: Tensor) -> Tensor:
        return _ScaleGradient.apply(x, -self.lambda_)


class ZeroGrad(nn.Module):
    """nn.ZeroGrad: the identity forward whose backward sends back zeros. TorchScript runs it as the identity."""
    lua_type = 'nn.ZeroGrad'

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or not x.requires_grad:
            return x
        return self.with_gradient(x)

    @torch.jit.unused
    def with_gradient(self, x: Tensor) -> Tensor:
        return _ScaleGradient.apply(x, 0.0)


class L1Penalty(nn.Module):
    """nn.L1Penalty(l1weight, sizeAverage, provideOutput): the identity forward; its backward adds
    l1weight * sign(input) (divided by the number of elements with sizeAverage) to the gradient, or sends back
    only that without provideOutput. TorchScript runs it as the identity."""
    lua_type = 'nn.L1Penalty'

    def __init__(self, l1weight, sizeAverage=False, provideOutput=True):
        super().__init__()
        self.l1weight, self.sizeAverage, self.provideOutput = float(l1weight), bool(sizeAverage), bool(provideOutput)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or not x.requires_grad:
            return x
        return self.with_gradient(x)

    @torch.jit.unused
    def with_gradient(self, x: Tensor) -> Tensor:
        m = self.l1weight / x.numel() if self.sizeAverage else self.l1weight
        return _L1Gradient.apply(x, m, self.provideOutput)


class PrintSize(nn.Module):
    """nn.PrintSize(prefix): passes its input on and prints '<prefix>:input' and the input's size."""
    lua_type = 'nn.PrintSize'

    def __init__(self, prefix='PrintSize'):
        super().__init__()
        self.prefix = str(prefix)

    def forward(self, x: Tensor) -> Tensor:
        # Lua's print(a, b) separates by a tab; a LongStorage shows one size a line, then its class and length.
        sizes = ''
        for n in x.shape:
            sizes += ' ' + str(n) + '\n'
        print(self.prefix + ':input\n\t\n' + sizes + '[torch.LongStorage of size ' + str(x.dim()) + ']\n')
        return x


class WhiteNoise(nn.Module):
    """nn.WhiteNoise(mean, std): in training adds noise drawn from N(mean, std) to its input; in evaluation adds
    mean only."""
    lua_type = 'nn.WhiteNoise'

    def __init__(self, mean=0.0, std=0.1):
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return x + torch.randn_like(x) * self.std + self.mean
        return x + self.mean if self.mean != 0 else x.clone()


class CReLU(nn.Module):
    """nn.CReLU(nInputDims, inplace): ReLU of the input and of its negation, joined along the feature dimension
    (the first, or the second for a batch of nInputDims + 1 dimensions) as Lua joins the two flattened halves."""
    lua_type = 'nn.CReLU'

    def __init__(self, nInputDims, inplace=False):
        super().__init__()
        self.nInputDims, self.inplace = int(nInputDims), bool(inplace)

    def forward(self, x: Tensor) -> Tensor:
        d = 1 if x.dim() == self.nInputDims + 1 else 0
        return F.relu(torch.cat([x, -x], d))


class Collapse(nn.Module):
    """nn.Collapse(nInputDim): each sample flattened to one vector (a batch when the input has more than nInputDim
    dimensions)."""
    lua_type = 'nn.Collapse'

    def __init__(self, nInputDim):
        super().__init__()
        self.nInputDim = int(nInputDim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() > self.nInputDim:
            return x.reshape(x.size(0), -1)
        return x.reshape(-1)


class GatedLinearUnit(nn.Module):
    """nn.GatedLinearUnit(dim): the first half along dim (1-based; the last when nil) times the sigmoid of the
    second."""
    lua_type = 'nn.GatedLinearUnit'
    dim: Optional[int]

    def __init__(self, dim=None):
        super().__init__()
        self.dim = None if dim is None else int(dim)

    def forward(self, x: Tensor) -> Tensor:
        d = self.dim
        return F.glu(x, -1 if d is None else d - 1)


class Constant(nn.Module):
    """nn.Constant(value, nInputDim): outputs value whatever the input, once per sample when the input has more
    than nInputDim dimensions."""
    lua_type = 'nn.Constant'
    nInputDim: Optional[int]

    def __init__(self, value, nInputDim=None):
        super().__init__()
        self.register_buffer('value', value)
        self.nInputDim = None if nInputDim is None else int(nInputDim)

    def forward(self, x: Tensor) -> Tensor:
        n = self.nInputDim
        value = self.value.to(x.dtype)
        if n is not None and x.dim() > n:
            return value.unsqueeze(0).expand([x.size(0)] + list(value.shape)).clone()
        return value.clone()


class Index(nn.Module):
    """nn.Index(dimension): {t, index} -> the slices of t along dimension (1-based) at the 1-based indices."""
    lua_type = 'nn.Index'

    def __init__(self, dimension):
        super().__init__()
        self.dimension = int(dimension)

    def forward(self, x: List[Tensor]) -> Tensor:
        return x[0].index_select(self.dimension - 1, x[1].long() - 1)


class MaskedSelect(nn.Module):
    """nn.MaskedSelect: {t, mask} -> the elements of t where mask is non-zero, as one vector."""
    lua_type = 'nn.MaskedSelect'

    def forward(self, x: List[Tensor]) -> Tensor:
        return x[0].masked_select(x[1] != 0)
