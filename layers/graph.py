"""Port of nngraph's gModule (gmodule.lua's runForwardFunction): a graph of modules run in topological order,
with several inputs and outputs, nodes read by several consumers, and split() outputs; and its JustElement/JustTable."""
from typing import List

from torch import Tensor, nn

from layers.containers import specialize, input_kind
from layers.tables import TABLE, TENSOR


class JustElement(nn.Module):
    """nngraph.JustElement (what split(1) makes): the one entry of a one-entry table."""
    lua_type = 'nngraph.JustElement'

    def forward(self, xs: List[Tensor]) -> Tensor:
        if len(xs) != 1:
            raise ValueError('nngraph.JustElement: expecting one element, got ' + str(len(xs)))
        return xs[0]


class JustTable(nn.Module):
    """nngraph.JustTable: a tensor as a one-entry table."""
    lua_type = 'nngraph.JustTable'

    def forward(self, x: Tensor) -> List[Tensor]:
        return [x]


class GraphNode(nn.Module):
    """One nngraph node: its module (None for input, output, split and select nodes), the values it reads (their
    indices in the gModule's value list, in Lua's mapindex order) and nngraph's bookkeeping (selectindex,
    nSplitOutputs, annotations) so that the graph can be written back.

    A value is a list of tensors: a tensor is a list of one, a Lua table the list itself. Lua gives a node with
    one input that input, and a node with several the table of them."""
    __jit_ignored_attributes__ = ['annotations']

    def __init__(self, module=None, sources=(), select_index=0, n_split=0, annotations=None):
        super().__init__()
        self.module = module
        self.sources: List[int] = [int(s) for s in sources]
        self.select_index = int(select_index)
        self.n_split = int(n_split)
        self.annotations = {} if annotations is None else annotations
        self.source_tables = [False] * len(self.sources)
        self.out_table = False

    def forward(self, xs):
        if self.select_index:
            return [xs[0][self.select_index - 1]]
        if len(xs) == 1:
            value = xs[0] if self.source_tables[0] else xs[0][0]
        else:
            value = [x if table else x[0] for x, table in zip(xs, self.source_tables)]
        out = value if self.module is None else self.module(value)
        if self.module is None and len(xs) > 1:
            return out
        return out if self.out_table else [out]

    def lua_specialize(self, kinds):
        """Types this node for the kinds of the values it reads; returns the kind of its own value."""
        self.source_tables = [k == TABLE for k in kinds]
        if self.select_index:
            self.__class__ = _Select
            return TENSOR
        gather = len(kinds) > 1
        nested = gather and TABLE in kinds
        kind = TABLE if gather else kinds[0]
        if self.module is None:
            out = kind
            typed = _PassGather if gather else _PassOne
        else:
            out = specialize(self.module, kind) or kind
            typed = _TYPED['gather' if gather else kind, out]
        self.out_table = out == TABLE
        self.__class__ = GraphNode if nested else typed
        return out


class _Select(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return [xs[0][self.select_index - 1]]


class _PassOne(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return xs[0]


class _PassGather(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return [x[0] for x in xs]


class _TensorToTensor(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return [self.module(xs[0][0])]


class _TensorToTable(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return self.module(xs[0][0])


class _TableToTensor(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return [self.module(xs[0])]


class _TableToTable(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return self.module(xs[0])


class _GatherToTensor(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return [self.module([x[0] for x in xs])]


class _GatherToTable(GraphNode):
    def forward(self, xs: List[List[Tensor]]) -> List[Tensor]:
        return self.module([x[0] for x in xs])


_TYPED = {(TENSOR, TENSOR): _TensorToTensor, (TENSOR, TABLE): _TensorToTable, (TABLE, TENSOR): _TableToTensor,
          (TABLE, TABLE): _TableToTable, ('gather', TENSOR): _GatherToTensor, ('gather', TABLE): _GatherToTable}


class GModule(nn.Module):
    """nngraph's nn.gModule. Value 0 is Lua's innode: the input, or the table of the inputs when there are several
    (`input_annotations` keeps that node's annotations). `nodes` follow in a topological order; the last is Lua's
    outnode, whose value is the output (the table of the outputs when there are several)."""
    lua_type = 'nn.gModule'
    __jit_ignored_attributes__ = ['input_annotations']

    def __init__(self, nodes, n_inputs, input_annotations=None):
        super().__init__()
        self.input_annotations = {} if input_annotations is None else input_annotations
        self.nodes = nn.ModuleList(nodes)
        self.n_inputs = int(n_inputs)
        self.in_table = self.n_inputs > 1
        self.out_table = False

    def _run(self, first: List[Tensor]) -> List[Tensor]:
        if self.n_inputs > 1 and len(first) != self.n_inputs:
            raise ValueError('nn.gModule: got ' + str(len(first)) + ' inputs instead of ' + str(self.n_inputs))
        values: List[List[Tensor]] = [first]
        for node in self.nodes:
            xs: List[List[Tensor]] = []
            for j in node.sources:
                xs.append(values[j])
            values.append(node(xs))
        return values[-1]

    def forward(self, x):
        out = self._run(x if self.in_table else [x])
        return out if self.out_table else out[0]

    def lua_input_kind(self):
        """A table for several inputs; else what the first node that reads the input (past nodes that pass it
        on unchanged) takes, a tensor when no node says."""
        if self.n_inputs > 1:
            return TABLE
        passing = {0}
        for v, node in enumerate(self.nodes, 1):
            if len(node.sources) != 1 or node.sources[0] not in passing:
                continue
            if node.select_index:
                return TABLE
            kind = None if node.module is None else input_kind(node.module)
            if kind is not None:
                return kind
            passing.add(v)
        return TENSOR

    def lua_specialize(self, kind):
        kind = TABLE if self.n_inputs > 1 else (kind or self.lua_input_kind())
        kinds = [kind]
        for node in self.nodes:
            kinds.append(node.lua_specialize([kinds[j] for j in node.sources]))
        self.in_table, self.out_table = kind == TABLE, kinds[-1] == TABLE
        if any(type(node) is GraphNode for node in self.nodes):
            self.not_scriptable = 'nn.gModule with a node that reads a table of tables'
            self.__class__ = GModule
        else:
            self.__dict__.pop('not_scriptable', None)
            self.__class__ = _TYPED_GRAPHS[self.in_table, self.out_table]
        return kinds[-1]


class _TensorGraph(GModule):
    def forward(self, x: Tensor) -> Tensor:
        return self._run([x])[0]


class _TensorToTableGraph(GModule):
    def forward(self, x: Tensor) -> List[Tensor]:
        return self._run([x])


class _TableToTensorGraph(GModule):
    def forward(self, x: List[Tensor]) -> Tensor:
        return self._run(x)[0]


class _TableGraph(GModule):
    def forward(self, x: List[Tensor]) -> List[Tensor]:
        return self._run(x)


_TYPED_GRAPHS = {(False, False): _TensorGraph, (False, True): _TensorToTableGraph, (True, False): _TableToTensorGraph,
                 (True, True): _TableGraph}
