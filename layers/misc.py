"""Port of torch/nn's GradientReversal.lua, ZeroGrad.lua, L1Penalty.lua, PrintSize.lua, WhiteNoise.lua, CReLU.lua,
Collapse.lua, GatedLinearUnit.lua, Constant.lua, Index.lua, MaskedSelect.lua, MixtureTable.lua,
TemporalSubSampling.lua, FeatureLPPooling.lua, UpSampling.lua, PartialLinear.lua, SpatialFullConvolutionMap.lua,
TemporalRowConvolution.lua, TemporalDynamicKMaxPooling.lua, SpatialFractionalMaxPooling.lua, Kmeans.lua, ZipTable.lua,
ZipTableOneToMany.lua and CAddTensorTable.lua: modules that are the identity at inference or a few lines of tensor
arithmetic."""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.containers import specialize
from layers.tables import TABLE, TENSOR


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


class IdentityWithGradient(nn.Module):
    """Base of the modules whose forward passes the input on and whose backward changes the gradient: each
    subclass's `with_gradient` (marked torch.jit.unused) applies its autograd function. Without autograd
    (TorchScript, inputs that need no gradient) they are the identity."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or not x.requires_grad:
            return x
        return self.with_gradient(x)


class GradientReversal(IdentityWithGradient):
    """nn.GradientReversal(lambda): the identity forward; its backward sends back -lambda times the gradient
    (files of its version 1 have no lambda: 1). TorchScript runs it as the identity."""
    lua_type = 'nn.GradientReversal'

    def __init__(self, lambda_=1.0):
        super().__init__()
        self.lambda_ = float(lambda_)

    @torch.jit.unused
    def with_gradient(self, x: Tensor) -> Tensor:
        return _ScaleGradient.apply(x, -self.lambda_)


class ZeroGrad(IdentityWithGradient):
    """nn.ZeroGrad: the identity forward whose backward sends back zeros. TorchScript runs it as the identity."""
    lua_type = 'nn.ZeroGrad'

    @torch.jit.unused
    def with_gradient(self, x: Tensor) -> Tensor:
        return _ScaleGradient.apply(x, 0.0)


class L1Penalty(IdentityWithGradient):
    """nn.L1Penalty(l1weight, sizeAverage, provideOutput): the identity forward; its backward adds
    l1weight * sign(input) (divided by the number of elements with sizeAverage) to the gradient, or sends back
    only that without provideOutput. TorchScript runs it as the identity."""
    lua_type = 'nn.L1Penalty'

    def __init__(self, l1weight, sizeAverage=False, provideOutput=True):
        super().__init__()
        self.l1weight, self.sizeAverage, self.provideOutput = float(l1weight), bool(sizeAverage), bool(provideOutput)

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


class MixtureTable(nn.Module):
    """nn.MixtureTable(dim): {gater, experts} -> the experts weighted by the gater's outputs and summed; the experts
    stacked along dim (1-based; 2 for a batch, 1 for one sample when nil) of one tensor, or a table of tensors."""
    lua_type = 'nn.MixtureTable'
    dim: Optional[int]

    def __init__(self, dim=None):
        super().__init__()
        self.dim = None if dim is None else int(dim)

    def forward(self, x: List[Tensor]) -> Tensor:
        if not torch.jit.is_scripting() and isinstance(x[1], (list, tuple)):
            # A table of experts: a nested table, which TorchScript's List[Tensor] does not carry.
            return self.mix_table(x[0], list(x[1]))
        gater, experts = x[0], x[1]
        batch = gater.dim() >= 2
        d = 2 if batch else 1
        dim = self.dim
        if dim is not None:
            d = dim
        size = [1] * experts.dim()
        if batch:
            size[0] = gater.size(0)
        size[d - 1] = gater.size(-1)
        return (gater.reshape(size) * experts).sum(d - 1)

    @torch.jit.unused
    def mix_table(self, gater: Tensor, experts: List[Tensor]) -> Tensor:
        batch = gater.dim() >= 2
        d = self.dim if self.dim is not None else (2 if batch else 1)
        size = [1] * (experts[0].dim() + 1)
        if batch:
            size[0] = gater.size(0)
        size[d - 1] = gater.size(-1)
        gates = gater.reshape(size)
        out = torch.zeros_like(experts[0])
        for i, expert in enumerate(experts):
            out = out + expert * gates.select(d - 1, i)
        return out


class TemporalSubSampling(nn.Module):
    """nn.TemporalSubSampling(inputFrameSize, kW, dW): over frames (a T x F input), each window of kW frames
    summed, then scaled by a weight and shifted by a bias per feature."""
    lua_type = 'nn.TemporalSubSampling'

    def __init__(self, inputFrameSize, kW, dW=1, device=None):
        super().__init__()
        self.inputFrameSize, self.kW, self.dW = int(inputFrameSize), int(kW), int(dW)
        self.weight = nn.Parameter(torch.empty(self.inputFrameSize, device=device))
        self.bias = nn.Parameter(torch.empty(self.inputFrameSize, device=device))
        if not self.weight.is_meta:
            bound = 1 / self.kW ** 0.5
            with torch.no_grad():
                self.weight.uniform_(-bound, bound)
                self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        sums = F.avg_pool1d(x.transpose(-1, -2), self.kW, self.dW).transpose(-1, -2) * self.kW
        return sums * self.weight + self.bias


class FeatureLPPooling(nn.Module):
    """nn.FeatureLPPooling(width, stride, power, batch_mode): along the feature dimension (the first, or the second
    with batch_mode), windows of `width` features `stride` apart become (sum x^power)^(1/power)."""
    lua_type = 'nn.FeatureLPPooling'

    def __init__(self, width, stride, power, batch_mode):
        super().__init__()
        self.width, self.stride, self.power, self.batch_mode = int(width), int(stride), float(power), bool(batch_mode)

    def forward(self, x: Tensor) -> Tensor:
        d = 1 if self.batch_mode else 0
        windows = x.unfold(d, self.width, self.stride)
        return windows.pow(self.power).sum(-1).pow(1 / self.power)


class UpSampling(nn.Module):
    """nn.UpSampling(scale_factor or {oheight, owidth[, odepth]}, mode) of N x C x [D x] H x W: nearest neighbour
    by an integer factor, or (bi/tri)linear with the corners kept onto the given size or size * scale_factor (what
    its updateOutput computes, whatever its comment says)."""
    lua_type = 'nn.UpSampling'
    scale_factor: Optional[int]
    size: Optional[List[int]]

    def __init__(self, scale_factor=None, mode='nearest', size=None):
        super().__init__()
        self.scale_factor = None if scale_factor is None else int(scale_factor)
        self.mode = str(mode)
        # [odepth,] oheight, owidth
        self.size = None if size is None else [int(n) for n in size]

    def forward(self, x: Tensor) -> Tensor:
        spatial = x.dim() - 2
        s = self.scale_factor
        if self.mode == 'nearest':
            assert s is not None
            return F.interpolate(x, scale_factor=float(s), mode='nearest')
        size = self.size
        if size is None:
            assert s is not None
            size = [n * s for n in x.shape[2:]]
        return F.interpolate(x, size=size[len(size) - spatial:], mode='bilinear' if spatial == 2 else 'trilinear',
                             align_corners=True)


class PartialLinear(nn.Module):
    """nn.PartialLinear(inputsize, outputsize, bias): a Linear whose output columns are the 1-based `partition`
    (all of them unless setPartition chose some); its weight is the LookupTable of its saved network
    ({input, partition} -> ParallelTable(Identity, LookupTable) -> MM(false, true)), its bias 1 x outputsize."""
    lua_type = 'nn.PartialLinear'
    bias: Optional[Tensor]

    def __init__(self, network, bias, partition):
        super().__init__()
        self.network = network
        self.bias = bias
        self.register_buffer('partition', partition)

    def lua_specialize(self, kind):
        specialize(self.network, TABLE)
        return TENSOR

    def forward(self, x: Tensor) -> Tensor:
        out = self.network([x, self.partition.to(x.dtype)])
        bias = self.bias
        if bias is not None:
            out = out + bias.index_select(1, self.partition.long() - 1)
        return out


class SpatialFullConvolutionMap(nn.Module):
    """nn.SpatialFullConvolutionMap(connTable, kW, kH, dW, dH) on a C x H x W image: for each row {i, o} of the
    connection table, the full (transposed) convolution of input plane i with that row's kH x kW kernel is added to
    output plane o, then the bias."""
    lua_type = 'nn.SpatialFullConvolutionMap'

    def __init__(self, connTable, kW, kH, dW, dH, nInputPlane, nOutputPlane, weight, bias):
        super().__init__()
        self.kW, self.kH, self.dW, self.dH = int(kW), int(kH), int(dW), int(dH)
        self.nInputPlane, self.nOutputPlane = int(nInputPlane), int(nOutputPlane)
        self.register_buffer('connTable', connTable)
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        pairs = self.connTable.long() - 1
        dense = self.weight.new_zeros([self.nInputPlane, self.nOutputPlane, self.kH, self.kW])
        dense = dense.index_put([pairs[:, 0], pairs[:, 1]], self.weight, accumulate=True)
        return F.conv_transpose2d(x, dense, self.bias, [self.dH, self.dW])


class TemporalRowConvolution(nn.Module):
    """nn.TemporalRowConvolution(inputFrameSize, kW, dW, featFirst): each feature's row of frames correlated with
    its own kW-wide kernel (weight F x 1 x kW) with stride dW, plus its bias; the input T x F (N x T x F), or
    F x T (N x F x T) with featFirst."""
    lua_type = 'nn.TemporalRowConvolution'
    bias: Optional[Tensor]

    def __init__(self, inputFrameSize, kW, dW, featFirst, weight, bias):
        super().__init__()
        self.inputFrameSize, self.kW, self.dW, self.featFirst = int(inputFrameSize), int(kW), int(dW), bool(featFirst)
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        rows = x if self.featFirst else x.transpose(-1, -2)
        out = F.conv1d(rows, self.weight, self.bias, self.dW, 0, 1, self.inputFrameSize)
        return out if self.featFirst else out.transpose(-1, -2)


class TemporalDynamicKMaxPooling(nn.Module):
    """nn.TemporalDynamicKMaxPooling(minK, factor): along the frames of a T x F (N x T x F) input, the k largest
    values of each feature, k = max(minK, ceil(factor * T)), kept in their order in time."""
    lua_type = 'nn.TemporalDynamicKMaxPooling'

    def __init__(self, minK, factor=0.0):
        super().__init__()
        self.minK, self.factor = int(minK), float(factor)

    def forward(self, x: Tensor) -> Tensor:
        d = x.dim() - 2
        n = x.size(d)
        if n < self.minK:
            raise ValueError('nn.TemporalDynamicKMaxPooling: input sequence too short for minK')
        k = max(self.minK, int(math.ceil(self.factor * n)))
        indices = x.topk(k, d).indices.sort(d).values
        return x.gather(d, indices)


class SpatialFractionalMaxPooling(nn.Module):
    """nn.SpatialFractionalMaxPooling(poolSizeW, poolSizeH, outW or ratioW, outH or ratioH) with its pooling regions
    fixed (fixPoolingRegions: newRandomPool true): the regions drawn from the saved randomSamples (N x C x 2:
    the offsets along the width, then the height), fresh ones drawn where the input has another N x C, as Lua
    does."""
    lua_type = 'nn.SpatialFractionalMaxPooling'
    outW: Optional[int]
    outH: Optional[int]
    ratioW: Optional[float]
    ratioH: Optional[float]

    def __init__(self, poolSizeW, poolSizeH, samples, outW=None, outH=None, ratioW=None, ratioH=None):
        super().__init__()
        self.poolSizeW, self.poolSizeH = int(poolSizeW), int(poolSizeH)
        self.outW, self.outH = outW, outH
        self.ratioW, self.ratioH = ratioW, ratioH
        self.register_buffer('randomSamples', samples)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.unsqueeze(0) if x.dim() == 3 else x
        out_w, out_h = self.outW, self.outH
        ratio_w, ratio_h = self.ratioW, self.ratioH
        if ratio_w is not None and ratio_h is not None:
            out_w, out_h = int(math.floor(batch.size(3) * ratio_w)), int(math.floor(batch.size(2) * ratio_h))
        assert out_w is not None and out_h is not None
        samples = self.randomSamples.to(x.dtype)
        if samples.size(0) != batch.size(0) or samples.size(1) != batch.size(1):
            samples = torch.rand(batch.size(0), batch.size(1), 2, dtype=x.dtype, device=x.device)
        out = F.fractional_max_pool2d(batch, [self.poolSizeH, self.poolSizeW], output_size=[out_h, out_w],
                                      _random_samples=samples)
        return out[0] if x.dim() == 3 else out


class Kmeans(nn.Module):
    """nn.Kmeans(k, dim): for each row of an N x dim input, the 1-based index of the nearest centroid (rows of
    the k x dim weight, by squared Euclidean distance), as a tensor of the input's type."""
    lua_type = 'nn.Kmeans'

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError('nn.Kmeans: Incorrect input dimensionality. Expecting 2D.')
        distances = (x.unsqueeze(0) - self.weight.unsqueeze(1)).pow(2).sum(2)
        return (distances.argmin(0) + 1).to(x.dtype)


class ZipTable(nn.Module):
    """nn.ZipTable: {{a1, a2, ...}, {b1, b2, ...}} -> {{a1, b1}, {a2, b2}, ...}."""
    lua_type = 'nn.ZipTable'
    not_scriptable = 'nn.ZipTable takes and gives tables of tables'

    def forward(self, x: List[List[Tensor]]) -> List[List[Tensor]]:
        out: List[List[Tensor]] = []
        for inner in x:
            for j, t in enumerate(inner):
                if j == len(out):
                    out.append([])
                out[j].append(t)
        return out


class ZipTableOneToMany(nn.Module):
    """nn.ZipTableOneToMany: {e, {v1, v2, ...}} -> {{e, v1}, {e, v2}, ...}."""
    lua_type = 'nn.ZipTableOneToMany'
    not_scriptable = 'nn.ZipTableOneToMany takes and gives tables of tables'

    def forward(self, x: List[List[Tensor]]) -> List[List[Tensor]]:
        element, table = x[0], x[1]
        return [[element, v] for v in table]


class CAddTensorTable(nn.Module):
    """nn.CAddTensorTable: {t, {v1, v2, ...}} -> {v1 + t, v2 + t, ...}."""
    lua_type = 'nn.CAddTensorTable'
    not_scriptable = 'nn.CAddTensorTable takes a table holding a table'

    def forward(self, x: List[List[Tensor]]) -> List[Tensor]:
        t, table = x[0], x[1]
        return [v.reshape(t.shape) + t for v in table]
