"""Port of torch/nn's Decorator.lua and the classes that forward through their saved module (DontCast.lua, NaN.lua,
GPU.lua, Bottle.lua, WeightNorm.lua, Convert.lua), and of LinearWeightNorm.lua."""
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.containers import input_kind, specialize
from layers.tables import TABLE, TENSOR


class Decorator(nn.Module):
    """nn.Decorator(module), and nn.GPU(module, device, outdevice), whose one device here is the CPU or the module's:
    its module's forward. Typed for TorchScript by what its module takes and gives."""
    lua_type = 'nn.Decorator'

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def lua_input_kind(self):
        return input_kind(self.module)

    def lua_specialize(self, kind):
        out = specialize(self.module, kind)
        self.__class__ = {(True, True): _TableDecorator, (True, False): _TableToTensorDecorator,
                          (False, True): _TensorToTableDecorator}.get((kind == TABLE, out == TABLE), Decorator)
        return out


class _TableDecorator(Decorator):
    def forward(self, x: List[Tensor]) -> List[Tensor]:
        return self.module(x)


class _TableToTensorDecorator(Decorator):
    def forward(self, x: List[Tensor]) -> Tensor:
        return self.module(x)


class _TensorToTableDecorator(Decorator):
    def forward(self, x: Tensor) -> List[Tensor]:
        return self.module(x)


class DontCast(Decorator):
    """nn.DontCast(module, castin, castout, moduleType): a module kept in its own tensor type; with castin the input
    is copied to that type, with castout the output back to the type of the DontCast's own output."""
    lua_type = 'nn.DontCast'

    def __init__(self, module, castin=False, castout=False, module_dtype=None, output_dtype=None):
        super().__init__(module)
        self.castin, self.castout = bool(castin), bool(castout)
        self.module_dtype: torch.dtype = module_dtype or torch.float32
        self.output_dtype: torch.dtype = output_dtype or torch.float32

    def forward(self, x: Tensor) -> Tensor:
        if self.castin:
            x = x.to(self.module_dtype)
        out = self.module(x)
        return out.to(self.output_dtype) if self.castout else out

    def lua_specialize(self, kind):
        out = specialize(self.module, kind)
        if kind == TABLE or out == TABLE:
            # Tables pass uncast: the casts above are for a tensor in and out.
            Decorator.lua_specialize(self, kind)
        return out


class NaN(Decorator):
    """nn.NaN(module, id): its module's forward, stopped with an error naming what held a NaN (the input, the
    parameters or the output) when the output of a tensor forward holds one."""
    lua_type = 'nn.NaN'

    def __init__(self, module, id=1):
        super().__init__(module)
        self.id = int(id)

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        if bool(out.sum().isnan()):
            where = 'output'
            if bool(x.sum().isnan()):
                where = 'input'
            elif not torch.jit.is_scripting() and self.parameters_hold_nan():
                where = 'parameters'
            raise ValueError(f'NaN found in {where} of module nn.NaN({self.id})')
        return out

    @torch.jit.unused
    def parameters_hold_nan(self) -> bool:
        return any(bool(p.sum().isnan()) for p in self.module.parameters())

    def lua_specialize(self, kind):
        out = specialize(self.module, kind)
        if kind == TABLE or out == TABLE:
            # Tables are passed on unchecked.
            Decorator.lua_specialize(self, kind)
        return out


class Bottle(nn.Module):
    """nn.Bottle(module, nInputDim, nOutputDim): an input with more than nInputDim dimensions has its leading ones
    folded into the first of the module's nInputDim, and unfolded again from the first of its nOutputDim."""
    lua_type = 'nn.Bottle'

    def __init__(self, module, nInputDim=2, nOutputDim=None):
        super().__init__()
        self.module = module
        self.nInputDim = int(nInputDim)
        self.nOutputDim = int(nInputDim if nOutputDim is None else nOutputDim)

    def lua_specialize(self, kind):
        specialize(self.module, TENSOR)
        return TENSOR

    def forward(self, x: Tensor) -> Tensor:
        folded = x.dim() - self.nInputDim
        if folded <= 0:
            return self.module(x)
        lead = list(x.shape[:folded])
        out = self.module(x.reshape([-1] + list(x.shape[folded + 1:])))
        if out.dim() != self.nOutputDim:
            raise ValueError('nn.Bottle: the module gave another number of dimensions than nOutputDim')
        return out.reshape(lead + [-1] + list(out.shape[1:]))


def normalized_weight(v: Tensor, g: Tensor, weight_size: List[int], outputDim: int) -> Tensor:
    """WeightNorm's weight of Lua size weight_size: each row of v scaled to g over sqrt(|row|^2 + 1e-4), the rows
    being the slices along outputDim (1-based)."""
    norm = (v.pow(2).sum(1) + 1e-4).sqrt()
    rows = v * (g.reshape(-1) / norm).unsqueeze(1)
    d = outputDim - 1
    moved = [weight_size[d]] + weight_size[:d] + weight_size[d + 1:]
    return rows.reshape(moved).movedim(0, d)


class WeightNorm(nn.Module):
    """nn.WeightNorm(module, outputDim) around a Linear or SpatialConvolution: the module's weight is not a parameter
    but v * g / sqrt(|v|^2 + 1e-4), each slice along outputDim (1-based) a row of v scaled by its g, recomputed
    from the parameters v and g at every forward (Lua recomputes it on each training forward and when it reads
    the file)."""
    lua_type = 'nn.WeightNorm'

    def __init__(self, module, v, g, outputDim, weight_size):
        super().__init__()
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or (isinstance(module, nn.Conv2d) and (
                module.padding_mode != 'zeros' or isinstance(module.padding, str))):
            raise TypeError('nn.WeightNorm converts around a Linear or a zero-padded SpatialConvolution')
        self.module = module
        # Lua's weight size (old SpatialConvolutionMM weights are 2-D) and the module's.
        self.weight_size: List[int] = [int(n) for n in weight_size]
        self.module_size: List[int] = list(module.weight.shape)
        self.outputDim = int(outputDim)
        self.conv = isinstance(module, nn.Conv2d)
        self.stride: List[int] = list(module.stride) if self.conv else [1, 1]
        self.padding: List[int] = list(module.padding) if self.conv else [0, 0]
        self.dilation: List[int] = list(module.dilation) if self.conv else [1, 1]
        self.groups = module.groups if self.conv else 1
        drop_weight(module)
        self.v = v
        self.g = g

    def weight(self) -> Tensor:
        return normalized_weight(self.v, self.g, self.weight_size, self.outputDim).reshape(self.module_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv:
            return F.conv2d(x, self.weight(), self.module.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, self.weight(), self.module.bias)


def drop_weight(module):
    """Leaves `module` (inside a WeightNorm, which computes with the weight made from v and g) with an empty
    buffer for a weight: not a parameter, and still a tensor for TorchScript."""
    del module.weight
    module.register_buffer('weight', torch.empty(0, dtype=module.bias.dtype if module.bias is not None else None),
                           persistent=False)


class LinearWeightNorm(nn.Module):
    """nn.LinearWeightNorm(inputSize, outputSize, bias, eps): a Linear whose weight is v scaled row by row to the
    norm g (norms below eps taken as eps), from the parameters v and g."""
    lua_type = 'nn.LinearWeightNorm'

    def __init__(self, v, g, bias, eps=1e-16):
        super().__init__()
        self.v, self.g, self.bias = v, g, bias
        self.eps = float(eps)

    def weight(self) -> Tensor:
        return self.v * (self.g.reshape(-1, 1) / self.v.norm(2, 1, keepdim=True).clamp(min=self.eps))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight(), self.bias)


class Convert(nn.Module):
    """nn.Convert(inputShape, outputShape) ('bchw', 'bf', ...): its converter (the Transpose, Reshape, Select or
    Identity it built for the shapes) run on a batch; an input of fewer than nInputDim dimensions gets a batch
    dimension of one at inputBatchDim first, which is taken away again at outputBatchDim."""
    lua_type = 'nn.Convert'

    def __init__(self, converter, inputShape, outputShape, nInputDim, inputBatchDim, outputBatchDim):
        super().__init__()
        self.converter = converter
        self.inputShape, self.outputShape = str(inputShape), str(outputShape)
        self.nInputDim, self.inputBatchDim, self.outputBatchDim = int(nInputDim), int(inputBatchDim), int(
            outputBatchDim)

    def lua_specialize(self, kind):
        specialize(self.converter, TENSOR)
        return TENSOR

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() >= self.nInputDim:
            return self.converter(x)
        return self.converter(x.unsqueeze(self.inputBatchDim - 1)).squeeze(self.outputBatchDim - 1)
