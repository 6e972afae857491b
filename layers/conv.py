"""Port of torch/nn's convolutions, Bilinear, LookupTable and OneHot that PyTorch lacks; weights in Lua's layout."""
import math
from typing import List, Optional

import torch
from torch import nn
import torch.nn.functional as F


def uniform_(stdv, *tensors):
    """What the Lua modules' reset() does: U(-stdv, stdv) in each tensor; nothing to draw for modules being built
    on the meta device, whose tensors are then replaced by the saved ones."""
    with torch.no_grad():
        for t in tensors:
            if t is not None and not t.is_meta:
                t.uniform_(-stdv, stdv)


def _batched(x: torch.Tensor, dims: int):
    """(x with a batch dimension, whether one was added): Lua modules take one sample or a batch of them."""
    if x.dim() == dims:
        return x.unsqueeze(0), True
    return x, False


class SpatialConvolutionMap(nn.Module):
    """nn.SpatialConvolutionMap(connTable, kW, kH, dW, dH): one kH x kW kernel per row {input plane, output plane}
    of the 1-based connection table, summed into the output planes, plus a bias per output plane; no padding."""
    lua_type = 'nn.SpatialConvolutionMap'

    def __init__(self, connTable, kW, kH, dW=1, dH=1, device=None):
        super().__init__()
        table = torch.as_tensor(connTable, dtype=torch.float32)
        if table.dim() != 2 or table.size(1) != 2 or table.numel() == 0 or table.min() < 1:
            raise ValueError('SpatialConvolutionMap: connTable must be an N x 2 table of 1-based plane numbers')
        self.kW, self.kH, self.dW, self.dH = kW, kH, dW, dH
        self.nInputPlane, self.nOutputPlane = int(table[:, 0].max()), int(table[:, 1].max())
        self.register_buffer('connTable', table)
        self.register_buffer('in_planes', table[:, 0].long() - 1, persistent=False)
        self.register_buffer('out_planes', table[:, 1].long() - 1, persistent=False)
        self.weight = nn.Parameter(torch.empty(table.size(0), kH, kW, device=device))
        self.bias = nn.Parameter(torch.empty(self.nOutputPlane, device=device))
        if device != 'meta':
            self.reset()

    def reset(self):
        # Lua's reset scales each kernel by the number of connections into its output plane.
        fan_in = torch.bincount(self.out_planes, minlength=self.nOutputPlane).float() * (self.kW * self.kH)
        with torch.no_grad():
            for k in range(self.weight.size(0)):
                stdv = 1 / math.sqrt(fan_in[self.out_planes[k]])
                self.weight[k].uniform_(-stdv, stdv)
            self.bias.copy_((torch.rand(self.nOutputPlane) * 2 - 1) / fan_in.sqrt())
        return self

    def dense_weight(self):
        """The nOutputPlane x nInputPlane x kH x kW kernel the connection table describes."""
        dense = self.weight.new_zeros(self.nOutputPlane, self.nInputPlane, self.kH, self.kW)
        indices: List[Optional[torch.Tensor]] = [self.out_planes, self.in_planes]
        return dense.index_put(indices, self.weight, accumulate=True)

    def forward(self, x):
        return F.conv2d(x, self.dense_weight(), self.bias, (self.dH, self.dW))


class SpatialSubSampling(nn.Module):
    """nn.SpatialSubSampling(nInputPlane, kW, kH, dW, dH): each plane's kW x kH window sums times a learned
    per-plane weight, plus a per-plane bias."""
    lua_type = 'nn.SpatialSubSampling'

    def __init__(self, nInputPlane, kW, kH, dW=1, dH=1, device=None):
        super().__init__()
        self.nInputPlane, self.kW, self.kH, self.dW, self.dH = nInputPlane, kW, kH, dW, dH
        self.weight = nn.Parameter(torch.empty(nInputPlane, device=device))
        self.bias = nn.Parameter(torch.empty(nInputPlane, device=device))
        uniform_(1 / math.sqrt(kW * kH), self.weight, self.bias)

    def forward(self, x):
        kernel = self.weight.view(-1, 1, 1, 1).expand(self.nInputPlane, 1, self.kH, self.kW)
        return F.conv2d(x, kernel, self.bias, (self.dH, self.dW), groups=self.nInputPlane)


class TemporalConvolution(nn.Module):
    """nn.TemporalConvolution(inputFrameSize, outputFrameSize, kW, dW): a 1-D convolution over time of a
    (batch x) time x inputFrameSize input; the weight is outputFrameSize x (kW*inputFrameSize), frame by frame."""
    lua_type = 'nn.TemporalConvolution'

    def __init__(self, inputFrameSize, outputFrameSize, kW, dW=1, device=None, pad=0):
        super().__init__()
        self.inputFrameSize, self.outputFrameSize, self.kW, self.dW = inputFrameSize, outputFrameSize, kW, dW
        # cudnn.TemporalConvolution's padH: zero frames at both ends of time (nn's class has none).
        self.pad = pad
        self.weight = nn.Parameter(torch.empty(outputFrameSize, inputFrameSize * kW, device=device))
        self.bias = nn.Parameter(torch.empty(outputFrameSize, device=device))
        uniform_(1 / math.sqrt(kW * inputFrameSize), self.weight, self.bias)

    def forward(self, x):
        kernel = self.weight.view(self.outputFrameSize, self.kW, self.inputFrameSize).transpose(1, 2)
        return F.conv1d(x.transpose(-1, -2), kernel, self.bias, self.dW, self.pad).transpose(-1, -2)


class SpatialConvolutionLocal(nn.Module):
    """nn.SpatialConvolutionLocal(nInputPlane, nOutputPlane, iW, iH, kW, kH, dW, dH, padW, padH): a convolution
    with a separate kernel at each output position (weight oH x oW x nOutputPlane x nInputPlane x kH x kW, bias
    nOutputPlane x oH x oW), for iH x iW inputs only."""
    lua_type = 'nn.SpatialConvolutionLocal'

    def __init__(self, nInputPlane, nOutputPlane, iW, iH, kW, kH, dW=1, dH=1, padW=0, padH=None, device=None):
        super().__init__()
        padH = padW if padH is None else padH
        self.nInputPlane, self.nOutputPlane, self.iW, self.iH = nInputPlane, nOutputPlane, iW, iH
        self.kW, self.kH, self.dW, self.dH, self.padW, self.padH = kW, kH, dW, dH, padW, padH
        self.oW = (2 * padW + iW - kW) // dW + 1
        self.oH = (2 * padH + iH - kH) // dH + 1
        if self.oW < 1 or self.oH < 1:
            raise ValueError('SpatialConvolutionLocal: illegal configuration: output width or height less than 1')
        self.weight = nn.Parameter(torch.empty(self.oH, self.oW, nOutputPlane, nInputPlane, kH, kW, device=device))
        self.bias = nn.Parameter(torch.empty(nOutputPlane, self.oH, self.oW, device=device))
        uniform_(1 / math.sqrt(kW * kH * nInputPlane), self.weight, self.bias)

    def forward(self, x):
        x, single = _batched(x, 3)
        if x.size(1) != self.nInputPlane or x.size(2) != self.iH or x.size(3) != self.iW:
            raise ValueError('SpatialConvolutionLocal: input size ' + str(x.shape[1:]) + ' inconsistent with '
                             'the expected ' + str([self.nInputPlane, self.iH, self.iW]))
        columns = F.unfold(x, (self.kH, self.kW), padding=(self.padH, self.padW), stride=(self.dH, self.dW))
        positions = self.oH * self.oW
        kernels = self.weight.reshape(positions, self.nOutputPlane, -1)
        out = torch.bmm(kernels, columns.permute(2, 1, 0)).permute(2, 1, 0)
        out = out + self.bias.reshape(1, self.nOutputPlane, positions)
        out = out.reshape(x.size(0), self.nOutputPlane, self.oH, self.oW)
        return out.squeeze(0) if single else out


class SpatialDepthWiseConvolution(nn.Module):
    """nn.SpatialDepthWiseConvolution(nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH): nOutputPlane
    kernels per input plane (weight nOutputPlane x nInputPlane x kH x kW, bias nOutputPlane x nInputPlane); the
    output has nInputPlane*nOutputPlane planes, those of input plane i first."""
    lua_type = 'nn.SpatialDepthWiseConvolution'

    def __init__(self, nInputPlane, nOutputPlane, kW, kH, dW=1, dH=1, padW=0, padH=None, bias=True, device=None):
        super().__init__()
        padH = padW if padH is None else padH
        self.nInputPlane, self.nOutputPlane = nInputPlane, nOutputPlane
        self.kW, self.kH, self.dW, self.dH, self.padW, self.padH = kW, kH, dW, dH, padW, padH
        self.weight = nn.Parameter(torch.empty(nOutputPlane, nInputPlane, kH, kW, device=device))
        self.bias = nn.Parameter(torch.empty(nOutputPlane, nInputPlane, device=device)) if bias else None
        uniform_(1 / math.sqrt(kW * kH * nInputPlane), self.weight, self.bias)

    def forward(self, x):
        # THNN's forward takes an input plane's width for its height and the other way round, so it reads each
        # H x W plane as W rows of H values; what Lua computed (and trained with) on non-square inputs is that.
        shape: List[int] = [int(s) for s in x.shape]
        x = x.reshape(shape[:-2] + [shape[-1], shape[-2]])
        kernel = self.weight.transpose(0, 1).reshape(-1, 1, self.kH, self.kW)
        bias = None if self.bias is None else self.bias.t().reshape(-1)
        return F.conv2d(x, kernel, bias, (self.dH, self.dW), (self.padH, self.padW), groups=self.nInputPlane)


class OneHot(nn.Module):
    """nn.OneHot(outputSize): each 1-based index becomes a row of outputSize zeros with a one at that index."""
    lua_type = 'nn.OneHot'

    def __init__(self, outputSize):
        super().__init__()
        self.outputSize = int(outputSize)
        # An empty tensor that follows .to()/.double(): the output takes its type, as Lua's has the module's type.
        self.register_buffer('like', torch.empty(0), persistent=False)

    def forward(self, x):
        return F.one_hot(x.long() - 1, self.outputSize).to(self.like)


class Bilinear(nn.Module):
    """nn.Bilinear(inputSize1, inputSize2, outputSize, bias): y_k = x1' W_k x2 + b_k on the list {x1, x2}."""
    lua_type = 'nn.Bilinear'

    def __init__(self, inputSize1, inputSize2, outputSize, bias=True, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputSize, inputSize1, inputSize2, device=device))
        self.bias = nn.Parameter(torch.empty(outputSize, device=device)) if bias else None
        uniform_(1 / math.sqrt(inputSize1), self.weight, self.bias)

    def forward(self, xs: List[torch.Tensor]):
        if len(xs) != 2:
            raise ValueError('nn.Bilinear: input should be a list of two tensors')
        return F.bilinear(xs[0], xs[1], self.weight, self.bias)


class LookupTable(nn.Module):
    """nn.LookupTable(nIndex, nOutput, paddingValue, maxNorm, normType): rows of the weight picked by 1-based
    indices. paddingValue (1-based, 0 for none) only stops that row's gradient; with maxNorm the forward first
    renormalises the rows it is given, in place, as Lua does. Indices may come as any tensor type."""
    lua_type = 'nn.LookupTable'

    def __init__(self, nIndex, nOutput, paddingValue=0, maxNorm=None, normType=None, scaleGradByFreq=False,
                 device=None):
        super().__init__()
        self.paddingValue = int(paddingValue or 0)
        self.maxNorm: Optional[float] = None if maxNorm is None else float(maxNorm)
        self.normType: Optional[float] = None if normType is None else float(normType)
        self.scaleGradByFreq = bool(scaleGradByFreq)
        self.weight = nn.Parameter(torch.empty(nIndex, nOutput, device=device))
        if device != 'meta':
            with torch.no_grad():
                self.weight.normal_()

    def forward(self, x):
        padding: Optional[int] = None
        if self.paddingValue > 0:
            padding = self.paddingValue - 1
        index = x.long() - 1
        max_norm = self.maxNorm
        if max_norm is not None:
            # F.embedding's own renorm is skipped under TorchScript, so it is done here for both.
            index = index.contiguous()
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, index, max_norm, 2.0 if self.normType is None else self.normType)
        return F.embedding(index, self.weight, padding, None, 2.0, self.scaleGradByFreq)
