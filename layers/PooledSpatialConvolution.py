"""Port of lcnn's layers/PooledSpatialConvolution.lua: the lookup layer in its training form."""
import math

import torch
from torch import nn
import torch.nn.functional as F

from layers.legacy import named


class _SparseAlignWeight(torch.autograd.Function):
    """Identity on the align weight whose backward applies the layer's regulariser.

    Lua's accGradParameters adds lambda*sparseTh*sign(w) to the align gradient on every backward call and then
    zeroes the gradient wherever the forward's threshold mask was set, so pruned weights stay pruned.
    """

    @staticmethod
    def forward(ctx, weight, mask, coef):
        ctx.save_for_backward(weight, mask)
        ctx.coef = coef
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        weight, mask = ctx.saved_tensors
        if ctx.coef != 0:
            grad = grad + ctx.coef * torch.sign(weight)
        return grad.masked_fill(mask, 0), None, None


class PooledSpatialConvolution(nn.Module):
    """A kW x kH convolution expressed as a 1x1 `poolconv` onto a dictionary of `poolSize` channels followed by a
    sparse kW x kH `alignconv` that combines dictionary entries. Align weights with |w| <= sparseTh are zeroed on
    every forward, in place, as the Lua layer does (also in evaluate mode)."""
    lua_type = 'cudnn.PooledSpatialConvolution'

    def __init__(self, nInputPlane, nOutputPlane, kW, kH, dW=1, dH=1, padW=0, padH=0, poolSize=None,
                 lambda_=None, initialSparsity=None, device=None, **kwargs):
        super().__init__()
        if 'lambda' in kwargs:
            lambda_ = kwargs.pop('lambda')
        if kwargs:
            raise TypeError(f'unexpected arguments {sorted(kwargs)}')
        if poolSize is None:
            raise ValueError('poolSize is required')
        self.nInputPlane, self.nOutputPlane = nInputPlane, nOutputPlane
        self.kW, self.kH, self.dW, self.dH, self.padW, self.padH = kW, kH, dW, dH, padW, padH
        self.poolSize = poolSize
        # Lua falls back to the global opt, then to these constants; here the models pass opt's values.
        self.lambda_ = 0.1 if lambda_ is None else lambda_
        self.sparseTh = (0.01 if initialSparsity is None else initialSparsity) / math.sqrt(kW * kH * poolSize)
        self.log_sparsity = False
        self.poolconv = named(nn.Conv2d(nInputPlane, poolSize, 1, 1, padding=(padH, padW), bias=False,
                                        device=device), 'cudnn.SpatialConvolution')
        self.alignconv = named(nn.Conv2d(poolSize, nOutputPlane, (kH, kW), (dH, dW), padding=0, bias=True,
                                         device=device), 'cudnn.SpatialConvolution')
        self.register_buffer('zeroMask', None, persistent=False)
        # device='meta' builds the shape only, for a caller (the t7 loader) that puts saved convs in place.
        if self.poolconv.weight.device.type != 'meta':
            self.reset()

    def reset(self):
        # Torch7's SpatialConvolution:reset draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for conv in (self.poolconv, self.alignconv):
            stdv = 1 / math.sqrt(conv.weight[0].numel())
            with torch.no_grad():
                conv.weight.uniform_(-stdv, stdv)
                if conv.bias is not None:
                    conv.bias.uniform_(-stdv, stdv)
        return self

    def noBias(self):
        self.alignconv.bias = None
        return self

    def resetAlignConv(self):
        """Draw every align weight afresh, keeping the pruned ones at zero."""
        conv = self.alignconv
        stdv = 1 / math.sqrt(conv.weight[0].numel())
        with torch.no_grad():
            conv.weight.uniform_(-stdv, stdv)
            if conv.bias is not None:
                conv.bias.uniform_(-stdv, stdv)
            if self.zeroMask is not None:
                conv.weight.masked_fill_(self.zeroMask, 0)
        return self

    @property
    def weight(self):
        return self.poolconv.weight

    @property
    def bias(self):
        return self.alignconv.bias

    def forward(self, x):
        weight = self.alignconv.weight
        with torch.no_grad():
            self.zeroMask = weight.abs() <= self.sparseTh
            # Writing only when something is left to prune keeps the weight's version unchanged between optimizer
            # steps, so graphs from earlier forwards (gradient accumulation, gradcheck) stay valid.
            if weight.masked_select(self.zeroMask).any():
                weight.masked_fill_(self.zeroMask, 0)
        if self.log_sparsity:
            frac = self.zeroMask.sum().item() / self.zeroMask.numel()
            print(f'{self} \t {frac:0.4f} sparse')
        if torch.is_grad_enabled() and weight.requires_grad:
            weight = _SparseAlignWeight.apply(weight, self.zeroMask, self.lambda_ * self.sparseTh)
        y = self.poolconv(x)
        return F.conv2d(y, weight, self.alignconv.bias, self.alignconv.stride)

    def __prepare_scriptable__(self):
        # torch.jit.script compiles this inference form: the autograd regulariser and the logging are Python-only.
        return _ScriptablePooledConvolution(self)

    def __str__(self):
        return (f'{self.lua_type}({self.nInputPlane} -> {self.nOutputPlane}, {self.kH}x{self.kW}, '
                f'pool{self.poolSize})')

    def extra_repr(self):
        return (f'{self.nInputPlane} -> {self.nOutputPlane}, {self.kH}x{self.kW}, stride {self.dH}x{self.dW}, '
                f'pad {self.padH}x{self.padW}, pool{self.poolSize}')


class _ScriptablePooledConvolution(nn.Module):
    """What TorchScript runs for a PooledSpatialConvolution: its forward with the sub-threshold align weights
    zeroed in the computation rather than in place."""

    def __init__(self, layer):
        super().__init__()
        self.poolconv, self.alignconv, self.sparseTh = layer.poolconv, layer.alignconv, float(layer.sparseTh)

    def forward(self, x):
        weight = self.alignconv.weight
        weight = weight.masked_fill(weight.abs() <= self.sparseTh, 0)
        return F.conv2d(self.poolconv(x), weight, self.alignconv.bias, self.alignconv.stride)
