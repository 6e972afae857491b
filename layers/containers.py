"""Ports of torch/nn's containers (Concat, DepthConcat, ConcatTable, ParallelTable, MapTable, Parallel; nn.Sequential
is PyTorch's own), of cunn's DataParallelTable and nnx's SpatialClassifier, and of what flows between modules: a
tensor or a table, which TorchScript must know."""
import typing
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.tables import TABLE, TENSOR


def _kind(annotation):
    if annotation is typing.Any:
        return None
    if typing.get_origin(annotation) in (list, List):
        return TABLE
    return TENSOR


def signature(module):
    """(input kind, output kind) of a module's forward from its annotations: TENSOR, TABLE or None for Any.
    A missing annotation means a tensor, as it does to TorchScript."""
    try:
        hints = typing.get_type_hints(type(module).forward)
    except (NameError, TypeError):
        return TENSOR, TENSOR
    params = [name for name in hints if name != 'return']
    first = hints[params[0]] if params else Tensor
    return _kind(first), _kind(hints.get('return', Tensor))


def input_kind(module):
    """What a module takes as input (TENSOR or TABLE), or None when it takes either."""
    decide = getattr(module, 'lua_input_kind', None)
    if decide is not None:
        return decide()
    if isinstance(module, nn.Sequential):
        for child in module:
            kind = input_kind(child)
            if kind is not None or signature(child) != (None, None):
                return kind
        return None
    return signature(module)[0]


def specialize(module, kind):
    """Types the pass-through modules in `module` for an input of `kind` (TENSOR, TABLE or None when unknown);
    returns what the module outputs. Python runs every module either way: this only matters to TorchScript."""
    fix = getattr(module, 'lua_specialize', None)
    if fix is not None:
        return fix(kind)
    if isinstance(module, nn.Sequential):
        if kind == TABLE and type(module) is nn.Sequential:
            module.__class__ = TableSequential
        for child in module:
            kind = specialize(child, kind)
        return kind
    return signature(module)[1]


class TableSequential(nn.Sequential):
    """nn.Sequential whose first module takes a table (word2vec's ParallelTable of two LookupTables, then MM):
    PyTorch's own forward is typed for a tensor."""

    def forward(self, input: List[Tensor]):
        for module in self:
            input = module(input)
        return input


def unscriptable(module):
    """Why `module` (or a module inside it) cannot be compiled by torch.jit.script, or None."""
    for m in module.modules():
        reason = getattr(m, 'not_scriptable', None)
        if reason:
            return reason
    return None


class _Container(nn.ModuleList):
    """Ordered children named '0', '1', ... filled with Lua's `:add` (a ModuleList so that TorchScript can loop
    over them, not a Sequential: the children are not a chain)."""

    def __init__(self, *mods):
        super().__init__(mods)

    def add(self, module):
        self.append(module)
        return self

    def _specialize_children(self, kind):
        """Every child sees the same input; returns the kinds the children output."""
        return [specialize(m, kind) for m in self]

    def lua_input_kind(self):
        return next((k for k in map(input_kind, self) if k is not None), None)


class Concat(_Container):
    """nn.Concat(dim): every child sees the same input; outputs are joined along the 1-based Lua `dim`."""
    lua_type = 'nn.Concat'

    def __init__(self, dimension, *mods):
        super().__init__(*mods)
        self.dimension = int(dimension)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([m(x) for m in self], dim=self.dimension - 1)

    def lua_specialize(self, kind):
        self._specialize_children(kind)
        if kind == TABLE:
            self.__class__ = _TableConcat
        return TENSOR


class _TableConcat(Concat):
    def forward(self, x: List[Tensor]) -> Tensor:
        return torch.cat([m(x) for m in self], dim=self.dimension - 1)


def _depth_concat(outs: List[Tensor], dim: int) -> Tensor:
    # Smaller outputs are zero-padded to the largest size, centred with the odd cell after (floor of half before).
    sizes: List[int] = list(outs[0].shape)
    for out in outs[1:]:
        for d in range(len(sizes)):
            if d != dim:
                sizes[d] = max(sizes[d], out.size(d))
    padded: List[Tensor] = []
    for out in outs:
        pads: List[int] = []
        for d in range(out.dim() - 1, -1, -1):
            extra = 0 if d == dim else sizes[d] - out.size(d)
            pads += [extra // 2, extra - extra // 2]
        padded.append(F.pad(out, pads))
    return torch.cat(padded, dim)


class DepthConcat(_Container):
    """nn.DepthConcat(dim): like Concat, with smaller outputs zero-padded around their centre to the largest."""
    lua_type = 'nn.DepthConcat'

    def __init__(self, dimension, *mods):
        super().__init__(*mods)
        self.dimension = int(dimension)

    def forward(self, x: Tensor) -> Tensor:
        return _depth_concat([m(x) for m in self], self.dimension - 1)

    def lua_specialize(self, kind):
        self._specialize_children(kind)
        if kind == TABLE:
            self.__class__ = _TableDepthConcat
        return TENSOR


class _TableDepthConcat(DepthConcat):
    def forward(self, x: List[Tensor]) -> Tensor:
        return _depth_concat([m(x) for m in self], self.dimension - 1)


class ConcatTable(_Container):
    """nn.ConcatTable: every child sees the same input; the output is the list of their outputs."""
    lua_type = 'nn.ConcatTable'

    def forward(self, x: Tensor) -> List[Tensor]:
        return [m(x) for m in self]

    def lua_specialize(self, kind):
        outs = self._specialize_children(kind)
        if TABLE in outs:
            self.not_scriptable = 'nn.ConcatTable with a child that outputs a table outputs nested tables'
        if kind == TABLE:
            self.__class__ = _TableConcatTable
        return TABLE


class _TableConcatTable(ConcatTable):
    def forward(self, x: List[Tensor]) -> List[Tensor]:
        return [m(x) for m in self]


class ParallelTable(_Container):
    """nn.ParallelTable: child i gets entry i of the input list; the output is the list of their outputs."""
    lua_type = 'nn.ParallelTable'

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        out: List[Tensor] = []
        for i, m in enumerate(self):
            out.append(m(xs[i]))
        return out

    def lua_input_kind(self):
        return TABLE

    def lua_specialize(self, kind):
        if TABLE in self._specialize_children(TENSOR):
            self.not_scriptable = f'{self.lua_type} with a child that outputs a table outputs nested tables'
        return TABLE


class MapTable(ParallelTable):
    """nn.MapTable(module): the module applied to every entry of the input list. Lua's saved clones (which share
    the first one's parameters) serve the first entries; further entries use the first module, as a new clone
    of it would compute."""
    lua_type = 'nn.MapTable'

    def __init__(self, *mods, shared=True):
        super().__init__(*mods)
        self.shared = bool(shared)
        self.count = len(mods)

    def add(self, module):
        super().add(module)
        self.count = len(self)
        return self

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        out: List[Tensor] = []
        for i, m in enumerate(self):
            if i < len(xs):
                out.append(m(xs[i]))
        first = self[0]
        for i in range(self.count, len(xs)):
            out.append(first(xs[i]))
        return out


class Parallel(_Container):
    """nn.Parallel(inputDim, outputDim): child i gets slice i of the input along inputDim; their outputs are
    joined along outputDim (both 1-based)."""
    lua_type = 'nn.Parallel'

    def __init__(self, input_dimension, output_dimension, *mods):
        super().__init__(*mods)
        self.input_dimension = int(input_dimension)
        self.output_dimension = int(output_dimension)

    def forward(self, x: Tensor) -> Tensor:
        outs: List[Tensor] = []
        n = x.size(self.input_dimension - 1)
        for i, m in enumerate(self):
            if i < n:
                outs.append(m(x.select(self.input_dimension - 1, i)))
        return torch.cat(outs, self.output_dimension - 1)

    def lua_input_kind(self):
        return TENSOR

    def lua_specialize(self, kind):
        self._specialize_children(TENSOR)
        return TENSOR


class SpatialClassifier(nn.Module):
    """nnx's nn.SpatialClassifier(classifier) of the 2011-2013 detectors: the classifier (a Linear, ...) applied to
    the K features of every position of one K x H x W map; the N outputs per position come back as an N x H x W
    map, or as the HW x N rows when spatialOutput is false."""
    lua_type = 'nn.SpatialClassifier'

    def __init__(self, classifier, spatial_output=True):
        super().__init__()
        self.classifier = classifier
        self.spatial_output = bool(spatial_output)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError('<nn.SpatialClassifier> input should be 3D: KxHxW')
        h, w = x.size(1), x.size(2)
        out = self.classifier(x.reshape(x.size(0), h * w).t())
        if self.spatial_output:
            return out.t().reshape(out.size(1), h, w)
        return out


class DataParallelTable(nn.Module):
    """cunn's nn.DataParallelTable(dimension) as saved: its first replica. Lua splits the batch along `dimension`
    over the GPUs and joins the replicas' outputs, which on one device is the replica's own forward."""
    lua_type = 'nn.DataParallelTable'

    def __init__(self, module, dimension=1):
        super().__init__()
        self.module = module
        self.dimension = int(dimension)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)
