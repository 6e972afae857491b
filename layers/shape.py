"""Ports of torch/nn's shape modules (View, Reshape, Transpose, Squeeze, Unsqueeze, Replicate, Narrow, Select, Copy,
Contiguous, Sum, Mean, Max, Min, Padding), with their rules for telling a batch from a single sample."""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from layers.tables import lua_dim


class View(nn.Module):
    """nn.View(sizes...): reshape, with Torch7's rule for deciding whether the leading dimension is a batch.

    The rule matters at batch size 1: nn.View(10) turns a 1x10x1x1 input into a 1-D tensor of 10, as Lua did.
    """
    lua_type = 'nn.View'
    num_input_dims: Optional[int]

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

    def forward(self, x: Tensor) -> Tensor:
        ndim = x.dim()
        n = self.num_input_dims
        maxdim = ndim if n is None else n
        inner = 1
        for i in range(max(ndim - maxdim, 0), ndim):
            inner *= x.size(i)
        if inner % self.num_elements != 0:
            raise RuntimeError('nn.View: input and desired view do not match')
        batch = 1 if -1 in self.sizes else inner // self.num_elements
        for i in range(ndim - maxdim):
            batch *= x.size(i)
        shape: List[int] = list(self.sizes)
        if batch != 1 or (n is not None and ndim > n):
            shape.insert(0, batch)
        return x.reshape(shape)

    def extra_repr(self):
        return ', '.join(map(str, self.sizes))


class Reshape(nn.Module):
    """nn.Reshape(sizes..., batchMode): like View, but a batch is assumed unless the input has exactly the
    target's number of elements and a first dimension other than 1; batchMode true/false forces the choice."""
    lua_type = 'nn.Reshape'
    batch_mode: Optional[bool]

    def __init__(self, *sizes, batch_mode=None):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.num_elements = math.prod(self.sizes)
        self.batch_mode = batch_mode

    def forward(self, x: Tensor) -> Tensor:
        shape: List[int] = list(self.sizes)
        mode = self.batch_mode
        if mode is None:
            batch = not (x.numel() == self.num_elements and x.size(0) != 1)
        else:
            batch = mode
        if batch:
            shape.insert(0, x.size(0))
        return x.reshape(shape)


class Transpose(nn.Module):
    """nn.Transpose({d1, d2}, ...): the swaps applied in order (1-based dims, shifted past a batch dimension
    when numInputDims is set); the output is a contiguous copy, as Lua's."""
    lua_type = 'nn.Transpose'
    num_input_dims: Optional[int]

    def __init__(self, *permutations, num_input_dims=None):
        super().__init__()
        self.permutations: List[Tuple[int, int]] = [(int(a), int(b)) for a, b in permutations]
        self.num_input_dims = num_input_dims

    def forward(self, x: Tensor) -> Tensor:
        n = self.num_input_dims
        offset = 0 if n is None else x.dim() - n
        for a, b in self.permutations:
            x = x.transpose(a + offset - 1, b + offset - 1)
        return x.contiguous()


class Squeeze(nn.Module):
    """nn.Squeeze(dim, numInputDims): drops size-1 dimensions (Torch7 never drops the last one) and keeps a batch
    of one when numInputDims says the input is a batch."""
    lua_type = 'nn.Squeeze'
    dim: Optional[int]
    num_input_dims: Optional[int]

    def __init__(self, dim=None, num_input_dims=None):
        super().__init__()
        self.dim = dim
        self.num_input_dims = num_input_dims

    def forward(self, x: Tensor) -> Tensor:
        dim = self.dim
        n = self.num_input_dims
        add_one = False
        if n is not None and x.dim() == n + 1:
            if dim is not None:
                dim = dim + 1
            elif x.size(0) == 1:
                add_one = True
        if dim is not None:
            out = x.squeeze(dim - 1) if x.dim() > 1 else x
        else:
            out = x.squeeze()
            if out.dim() == 0:
                out = out.reshape(1)
        if add_one:
            out = out.unsqueeze(0)
        return out


class Unsqueeze(nn.Module):
    """nn.Unsqueeze(pos, numInputDims): inserts a size-1 dimension at a 1-based position past the batch
    dimensions. As in Lua, the first input fixes numInputDims when it was not given."""
    lua_type = 'nn.Unsqueeze'
    num_input_dims: Optional[int]

    def __init__(self, pos, num_input_dims=None):
        super().__init__()
        self.pos = int(pos)
        self.num_input_dims = num_input_dims

    def forward(self, x: Tensor) -> Tensor:
        n = self.num_input_dims
        if n is None:
            n = x.dim()
            self.num_input_dims = n
        return x.unsqueeze(self.pos + x.dim() - n - 1)


class Replicate(nn.Module):
    """nn.Replicate(nf, dim, ndim): nf copies along a new dimension, as a stride-0 view like Lua's."""
    lua_type = 'nn.Replicate'
    ndim: Optional[int]

    def __init__(self, nfeatures, dim=1, ndim=None):
        super().__init__()
        self.nfeatures = int(nfeatures)
        self.dim = int(dim)
        self.ndim = ndim

    def forward(self, x: Tensor) -> Tensor:
        n = self.ndim
        rdim = self.dim - 1 + (1 if n is not None and x.dim() > n else 0)
        shape: List[int] = list(x.shape)
        shape.insert(rdim, self.nfeatures)
        return x.unsqueeze(rdim).expand(shape)


class Narrow(nn.Module):
    """nn.Narrow(dimension, offset, length): a copied slice; a negative length counts from the end, a negative
    offset takes the slice from the start."""
    lua_type = 'nn.Narrow'

    def __init__(self, dimension, index, length=1):
        super().__init__()
        self.dimension = int(dimension)
        self.index = int(index)
        self.length = int(length)

    def forward(self, x: Tensor) -> Tensor:
        dim = x.dim() + self.dimension if self.dimension < 0 else self.dimension - 1
        length = self.length
        if length < 0:
            length = x.size(dim) - self.index + self.length + 2
        index = self.index
        if index < 0:
            index = 1
            length = x.size(dim) - length
        return x.narrow(dim, index - 1, length).clone()


class Select(nn.Module):
    """nn.Select(dimension, index): a copied slice at one index (negative dimension and index count from the end)."""
    lua_type = 'nn.Select'

    def __init__(self, dimension, index):
        super().__init__()
        self.dimension = int(dimension)
        self.index = int(index)

    def forward(self, x: Tensor) -> Tensor:
        dim = x.dim() + self.dimension if self.dimension < 0 else self.dimension - 1
        index = x.size(dim) + self.index if self.index < 0 else self.index - 1
        return x.select(dim, index).clone()


class Copy(nn.Module):
    """nn.Copy(intype, outtype, forceCopy): a copy converted to the output tensor type; with equal types and no
    forceCopy, Lua's instance passes its input through."""
    lua_type = 'nn.Copy'

    def __init__(self, dtype=torch.float32, force_copy=True):
        super().__init__()
        self.dtype = dtype
        self.force_copy = bool(force_copy)

    def forward(self, x: Tensor) -> Tensor:
        if not self.force_copy and x.dtype == self.dtype:
            return x
        return x.to(self.dtype, copy=True)


class Contiguous(nn.Module):
    """nn.Contiguous: a contiguous copy of a non-contiguous input, the input itself otherwise."""
    lua_type = 'nn.Contiguous'

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous()


class Sum(nn.Module):
    """nn.Sum(dimension, nInputDims, sizeAverage, squeeze) and nn.Mean: sum (or mean) over a 1-based dimension;
    the summed dimension is dropped only when more than one remains, as Torch7's sum keeps it."""
    lua_type = 'nn.Sum'

    def __init__(self, dimension=1, n_input_dims=None, size_average=False, squeeze=True):
        super().__init__()
        self.dimension = int(dimension)
        self.n_input_dims = 0 if n_input_dims is None else int(n_input_dims)
        self.size_average = bool(size_average)
        self.squeeze = bool(squeeze)

    def forward(self, x: Tensor) -> Tensor:
        dim = lua_dim(self.dimension, self.n_input_dims, x.dim())
        out = x.sum(dim, keepdim=True)
        if self.size_average:
            out = out / x.size(dim)
        if self.squeeze and out.dim() > 1:
            out = out.select(dim, 0)
        return out


class Max(nn.Module):
    """nn.Max(dimension, nInputDims) and nn.Min: the extreme values along a 1-based dimension (dropped unless the
    input is 1-D)."""
    lua_type = 'nn.Max'

    def __init__(self, dimension=1, n_input_dims=None, minimum=False):
        super().__init__()
        self.dimension = int(dimension)
        self.n_input_dims = 0 if n_input_dims is None else int(n_input_dims)
        self.minimum = bool(minimum)

    def forward(self, x: Tensor) -> Tensor:
        dim = lua_dim(self.dimension, self.n_input_dims, x.dim())
        if self.minimum:
            out = torch.min(x, dim, keepdim=True)[0]
        else:
            out = torch.max(x, dim, keepdim=True)[0]
        return out.select(dim, 0) if x.dim() > 1 else out


class Padding(nn.Module):
    """nn.Padding(dim, pad, nInputDim, value, index): |pad| entries of `value` inserted along a 1-based dim, before
    `index` counted from the start when pad < 0 and from the end when pad > 0."""
    lua_type = 'nn.Padding'
    n_input_dim: Optional[int]

    def __init__(self, dim, pad, n_input_dim=None, value=0.0, index=1):
        super().__init__()
        self.dim = int(dim)
        self.pad = int(pad)
        self.n_input_dim = n_input_dim
        self.value = float(value)
        self.index = int(index)

    def forward(self, x: Tensor) -> Tensor:
        n = self.n_input_dim
        dim = self.dim - 1 + (1 if n is not None and x.dim() != n else 0)
        size = x.size(dim)
        index = size - self.index + 2 if self.pad > 0 else self.index
        shape: List[int] = list(x.shape)
        shape[dim] = abs(self.pad)
        block = torch.full(shape, self.value, dtype=x.dtype, device=x.device)
        cut = min(max(index - 1, 0), size)
        return torch.cat([x.narrow(dim, 0, cut), block, x.narrow(dim, cut, size - cut)], dim)
