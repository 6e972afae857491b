"""Tests for layers/graph.py and t7/nn_graph.py: nngraph's gModule built in PyTorch, written as the nngraph objects Lua
makes, read back, typed for TorchScript; damaged graphs fail with one T7Error naming the place."""
import io
import pathlib
import warnings

import pytest
import torch

import t7
from layers.containers import ConcatTable, input_kind, specialize, unscriptable
from layers.graph import GModule, GraphNode, JustElement, JustTable
from layers.tables import CAddTable, Identity, SelectTable
from t7.registry import class_of

ZOO = pathlib.Path(__file__).parent / 'fixtures' / 'nn_zoo'


def typed(graph):
    specialize(graph, input_kind(graph))
    return graph.eval()


def round_trip(graph):
    buffer = io.BytesIO()
    t7.save_model(buffer, graph)
    return t7.load(buffer.getvalue()), t7.load_model(buffer.getvalue())


def scripted(graph):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        return torch.jit.script(graph)


def test_two_inputs_through_split_nodes():
    # nn.gModule({a, b}, {nn.CAddTable()({nn.Identity()(a), nn.Identity()(b)})}), as nngraph lays it out: the
    # innode, a split node, one select node per input, the graph, the outnode.
    nodes = [GraphNode(None, [0], n_split=2), GraphNode(None, [1], select_index=1),
             GraphNode(None, [1], select_index=2), GraphNode(Identity(), [2]), GraphNode(Identity(), [3]),
             GraphNode(CAddTable(), [4, 5]), GraphNode(None, [6])]
    graph = typed(GModule(nodes, n_inputs=2))
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(graph([a, b]), a + b)
    lua, back = round_trip(graph)
    assert lua.nInputs == 2 and [m.typename for m in lua.modules] == ['nn.Identity', 'nn.Identity', 'nn.CAddTable']
    assert len(lua.forwardnodes) == 8 and lua.innode is lua.forwardnodes[0] and 'output' not in lua.fields
    split = lua.forwardnodes[1].data
    assert split['nSplitOutputs'] == 2 and split['mapindex'][1] is lua.innode.data
    assert split['mapindex'][t7.TableKey(lua.innode.data)] == 1
    assert {n.data.get('selectindex') for n in lua.forwardnodes} == {None, 1, 2}
    assert torch.equal(back([a, b]), a + b) and torch.equal(scripted(back)([a, b]), a + b)
    with pytest.raises(ValueError, match='got 3 inputs instead of 2'):
        back([a, b, a])


def test_table_input_passed_on_by_identity_is_typed_as_a_table():
    graph = typed(GModule([GraphNode(Identity(), [0]), GraphNode(SelectTable(2), [1]), GraphNode(None, [2])], 1))
    xs = [torch.randn(2), torch.randn(3)]
    assert graph(xs) is xs[1] and scripted(graph)(xs).equal(xs[1])
    _, back = round_trip(graph)
    assert back(xs).equal(xs[1])


def test_several_outputs_share_the_outnodes_input_table():
    # {s, h} with h = Linear(x) feeding s = CAddTable({h, x}) too.
    linear = torch.nn.Linear(3, 3)
    nodes = [GraphNode(Identity(), [0]), GraphNode(linear, [1]), GraphNode(CAddTable(), [2, 1]),
             GraphNode(None, [3, 2])]
    graph = typed(GModule(nodes, 1))
    x = torch.randn(2, 3)
    out = graph(x)
    assert len(out) == 2 and torch.equal(out[1], linear(x)) and torch.equal(out[0], linear(x) + x)
    lua, back = round_trip(graph)
    assert lua.output is lua.outnode.data['input']
    for o, b in zip(out, scripted(back)(x)):
        assert torch.allclose(o, b)


def test_tables_of_tables_run_in_python_and_say_why_they_do_not_script():
    nodes = [GraphNode(ConcatTable(Identity(), Identity()), [0]), GraphNode(None, [1, 0])]
    graph = typed(GModule(nodes, 1))
    x = torch.randn(2)
    out = graph(x)
    assert len(out) == 2 and all(t is x for t in out[0]) and out[1] is x
    assert unscriptable(graph) == 'nn.gModule with a node that reads a table of tables'


def test_lua_graph_keeps_nngraphs_node_ids_and_order():
    lua = t7.load(ZOO / 'gModule_lstm_split.module.t7')
    for m in lua.modules:
        # The gates' nonlinearities do not matter to the graph's layout.
        m.typename = 'nn.Identity' if m.typename in ('nn.Sigmoid', 'nn.Tanh') else m.typename
    written, _ = round_trip(t7.load_model(lua))
    for name in ('forwardnodes', 'backwardnodes'):
        assert [n.id for n in written[name]] == [n.id for n in lua[name]]
        assert [n.data['forwardNodeId'] for n in written[name]] == [n.data['forwardNodeId'] for n in lua[name]]
    assert [m.typename for m in written.modules] == [m.typename for m in lua.modules]
    for graph in ('fg', 'bg'):
        edges = lambda g: [(g.edges[i]['from'].id, g.edges[i]['to'].id) for i in range(1, len(g.edges) // 2 + 1)]
        assert edges(written[graph]) == edges(lua[graph])


def test_damaged_graphs_fail_with_one_error_naming_the_place():
    lua = t7.load(ZOO / 'gModule_shared_2out.module.t7')
    lua.fields['forwardnodes'] = lua.forwardnodes[1:]
    with pytest.raises(t7.T7Error, match=r'nn.gModule at model: its innode is not among its forwardnodes'):
        t7.load_model(lua)
    lua = t7.load(ZOO / 'gModule_shared_2out.module.t7')
    lua.modules[1].typename = 'nn.NoSuchModule'
    with pytest.raises(t7.T7Error, match=r'unsupported module nn.NoSuchModule at model.modules\[1\]'):
        t7.load_model(lua)
    lua = t7.load(ZOO / 'gModule_shared_2out.module.t7')
    lua.forwardnodes[2].data['mapindex'] = {1: {'stranger': True}}
    with pytest.raises(t7.T7Error, match=r'an input of forwardnodes\[2\] is not one of its nodes'):
        t7.load_model(lua)


def test_split_of_one_makes_a_just_element_node():
    # nngraph's node:split(1) is nngraph.JustElement()(node); JustTable makes the one-entry table.
    graph = typed(GModule([GraphNode(JustTable(), [0]), GraphNode(JustElement(), [1]), GraphNode(None, [2])], 1))
    x = torch.randn(3)
    lua, back = round_trip(graph)
    assert [m.typename for m in lua.modules] == ['nngraph.JustTable', 'nngraph.JustElement']
    assert lua.modules[1].gradInput == {} and lua.modules[0].output == {}
    assert back(x) is x and scripted(back)(x).equal(x)
    with pytest.raises(ValueError, match='expecting one element, got 2'):
        JustElement()([x, x])
    # char-rnn's OneHot is a class without a package, read as nn.OneHot's counterpart.
    assert class_of('OneHot') == 'OneHot' and class_of('nngraph.JustTable') == 'JustTable'
