"""Ports of torch/nn's table modules (Identity, CAddTable ... CMinTable, JoinTable, SplitTable, NarrowTable,
SelectTable, FlattenTable, DotProduct, MM, MV, CosineDistance, PairwiseDistance): a Lua table of tensors is a list."""
from typing import Any, List

import torch
from torch import Tensor, nn

TENSOR, TABLE = 'tensor', 'table'


def lua_dim(dimension: int, n_input_dims: int, ndim: int) -> int:
    """0-based dim of nn's _getPositiveDimension: negative counts from the end, and an input with one dimension
    more than nInputDims (<= 0: not set) is a batch, which shifts a positive dimension by one."""
    if dimension < 0:
        return ndim + dimension
    if n_input_dims > 0 and ndim == n_input_dims + 1:
        return dimension
    return dimension - 1


class Identity(nn.Identity):
    """nn.Identity: passes a tensor or a table through. Typed for TorchScript once what flows in is known."""
    lua_type = 'nn.Identity'

    def forward(self, x: Any) -> Any:
        return x

    def lua_input_kind(self):
        return None

    def lua_specialize(self, kind):
        if kind is not None:
            self.__class__ = _TensorIdentity if kind == TENSOR else _TableIdentity
        return kind


class _TensorIdentity(Identity):
    def forward(self, x: Tensor) -> Tensor:
        return x


class _TableIdentity(Identity):
    def forward(self, x: List[Tensor]) -> List[Tensor]:
        return x


class CAddTable(nn.Module):
    """nn.CAddTable: element-wise sum of a list of tensors (each taken in the shape of the first, as Lua's add)."""
    lua_type = 'nn.CAddTable'

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, xs: List[Tensor]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x.reshape(out.shape)
        return out


class CSubTable(nn.Module):
    """nn.CSubTable: xs[0] - xs[1]."""
    lua_type = 'nn.CSubTable'

    def forward(self, xs: List[Tensor]) -> Tensor:
        return xs[0] - xs[1].reshape(xs[0].shape)


class CMulTable(nn.Module):
    """nn.CMulTable: element-wise product of a list of tensors."""
    lua_type = 'nn.CMulTable'

    def forward(self, xs: List[Tensor]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x.reshape(out.shape)
        return out


class CDivTable(nn.Module):
    """nn.CDivTable: xs[0] / xs[1]."""
    lua_type = 'nn.CDivTable'

    def forward(self, xs: List[Tensor]) -> Tensor:
        return xs[0] / xs[1].reshape(xs[0].shape)


class CMaxTable(nn.Module):
    """nn.CMaxTable: element-wise maximum; a later input wins only when strictly greater (so does its gradient)."""
    lua_type = 'nn.CMaxTable'

    def forward(self, xs: List[Tensor]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            x = x.reshape(out.shape)
            out = torch.where(x > out, x, out)
        return out


class CMinTable(nn.Module):
    """nn.CMinTable: element-wise minimum; a later input wins only when strictly smaller."""
    lua_type = 'nn.CMinTable'

    def forward(self, xs: List[Tensor]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            x = x.reshape(out.shape)
            out = torch.where(x < out, x, out)
        return out


class JoinTable(nn.Module):
    """nn.JoinTable(dimension, nInputDims): concatenates a list of tensors along a 1-based Lua dimension."""
    lua_type = 'nn.JoinTable'

    def __init__(self, dimension, n_input_dims=None):
        super().__init__()
        self.dimension = int(dimension)
        self.n_input_dims = 0 if n_input_dims is None else int(n_input_dims)

    def forward(self, xs: List[Tensor]) -> Tensor:
        return torch.cat(xs, lua_dim(self.dimension, self.n_input_dims, xs[0].dim()))


class SplitTable(nn.Module):
    """nn.SplitTable(dimension, nInputDims): the slices of a tensor along a dimension (views, as Lua's select)."""
    lua_type = 'nn.SplitTable'

    def __init__(self, dimension, n_input_dims=None):
        super().__init__()
        self.dimension = int(dimension)
        self.n_input_dims = 0 if n_input_dims is None else int(n_input_dims)

    def forward(self, x: Tensor) -> List[Tensor]:
        return list(torch.unbind(x, lua_dim(self.dimension, self.n_input_dims, x.dim())))


class NarrowTable(nn.Module):
    """nn.NarrowTable(offset, length): entries offset .. offset+length-1 (1-based) of a list."""
    lua_type = 'nn.NarrowTable'

    def __init__(self, offset, length=1):
        super().__init__()
        self.offset = int(offset)
        self.length = int(length)

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        return xs[self.offset - 1:self.offset - 1 + self.length]


class SelectTable(nn.Module):
    """nn.SelectTable(index): one entry of a list; a negative index counts from the end (-1 is the last)."""
    lua_type = 'nn.SelectTable'

    def __init__(self, index):
        super().__init__()
        self.index = int(index)

    def forward(self, xs: List[Tensor]) -> Tensor:
        index = len(xs) + self.index if self.index < 0 else self.index - 1
        if not 0 <= index < len(xs):
            raise IndexError(f'nn.SelectTable({self.index}): index does not exist in the input table of {len(xs)}')
        return xs[index]


class FlattenTable(nn.Module):
    """nn.FlattenTable: the tensors of arbitrarily nested lists, depth first. Nested lists have no TorchScript
    type, so this module runs in Python only."""
    lua_type = 'nn.FlattenTable'
    not_scriptable = 'nn.FlattenTable takes arbitrarily nested tables, which TorchScript cannot type'

    def forward(self, x: Any) -> List[Tensor]:
        out = []
        stack = [x]
        while stack:
            item = stack.pop()
            if isinstance(item, (list, tuple)):
                stack.extend(reversed(item))
            else:
                out.append(item)
        return out

    def lua_input_kind(self):
        return TABLE

    def lua_specialize(self, kind):
        return TABLE


def _as_batch(x: Tensor) -> Tensor:
    return x.reshape(1, -1) if x.dim() == 1 else x


class DotProduct(nn.Module):
    """nn.DotProduct: row-wise dot product of two (batches of) vectors; a 1-D pair gives a 1-element tensor."""
    lua_type = 'nn.DotProduct'

    def forward(self, xs: List[Tensor]) -> Tensor:
        a, b = _as_batch(xs[0]), _as_batch(xs[1])
        return (a * b).sum(1)


class MM(nn.Module):
    """nn.MM(transA, transB): matrix product of two matrices or two batches of matrices."""
    lua_type = 'nn.MM'

    def __init__(self, trans_a=False, trans_b=False):
        super().__init__()
        self.trans_a = bool(trans_a)
        self.trans_b = bool(trans_b)

    def forward(self, xs: List[Tensor]) -> Tensor:
        a, b = xs[0], xs[1]
        if self.trans_a:
            a = a.transpose(-2, -1)
        if self.trans_b:
            b = b.transpose(-2, -1)
        if a.dim() == 2:
            return torch.mm(a, b)
        return torch.bmm(a, b)


class MV(nn.Module):
    """nn.MV(trans): matrix-vector product, or a batch of them."""
    lua_type = 'nn.MV'

    def __init__(self, trans=False):
        super().__init__()
        self.trans = bool(trans)

    def forward(self, xs: List[Tensor]) -> Tensor:
        m, v = xs[0], xs[1]
        if self.trans:
            m = m.transpose(-2, -1)
        if m.dim() == 2:
            return torch.mv(m, v)
        return torch.bmm(m, v.unsqueeze(2)).squeeze(2)


class CosineDistance(nn.Module):
    """nn.CosineDistance: row-wise cosine similarity, with Lua's 1e-12 added to each squared norm."""
    lua_type = 'nn.CosineDistance'

    def forward(self, xs: List[Tensor]) -> Tensor:
        a, b = _as_batch(xs[0]), _as_batch(xs[1])
        dot = (a * b).sum(1)
        inv_a = 1 / ((a * a).sum(1) + 1e-12)
        inv_b = 1 / ((b * b).sum(1) + 1e-12)
        return dot * torch.sqrt(inv_a * inv_b)


class PairwiseDistance(nn.Module):
    """nn.PairwiseDistance(p): row-wise p-norm of the difference of two (batches of) vectors."""
    lua_type = 'nn.PairwiseDistance'

    def __init__(self, norm=2):
        super().__init__()
        self.norm = float(norm)

    def forward(self, xs: List[Tensor]) -> Tensor:
        diff = (xs[0] - xs[1]).abs()
        if diff.dim() == 1:
            return torch.linalg.vector_norm(diff, self.norm).reshape(1)
        return diff.pow(self.norm).sum(1).pow(1.0 / self.norm)
