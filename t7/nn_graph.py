"""nngraph's nn.gModule (gmodule.lua, node.lua, graph's Graph/Node/Edge) as a PyTorch graph module and back: reading
runs the saved forward graph; writing rebuilds the nngraph objects as gModule's constructor makes them."""

from layers.graph import GModule, GraphNode, JustElement, JustTable
from layers.legacy import lua_type
from t7.read import T7Error, TableKey, TorchObject
from t7.registry import builds, writes


def _node_data(node, where):
    if not (isinstance(node, TorchObject) and isinstance(node.fields.get('data'), dict)):
        raise T7Error(f'{where} is not an nngraph node with a data table')
    return node.fields['data']


def _ordered(table, where):
    """The list part {1 .. n} of a Lua table read as a dict (int keys next to table keys) or as a list."""
    if isinstance(table, list):
        return table
    if not isinstance(table, dict):
        raise T7Error(f'{where} is not a table')
    count = sum(1 for k in table if type(k) is int)
    if any(i not in table for i in range(1, count + 1)):
        raise T7Error(f'{where} has holes in its list part')
    return [table[i] for i in range(1, count + 1)]


@builds('gModule')
def _gmodule(loader, f, path):
    forward = f.get('forwardnodes')
    if not isinstance(forward, list):
        f.fail('forwardnodes', 'a list of nngraph nodes')
    datas = [_node_data(node, f'{path}.forwardnodes[{i}]') for i, node in enumerate(forward)]
    position = {id(d): i for i, d in enumerate(datas)}
    ends = []
    for name in ('innode', 'outnode'):
        data = _node_data(f.get(name), f'{path}.{name}')
        if id(data) not in position:
            raise T7Error(f'{f.typename} at {path}: its {name} is not among its forwardnodes')
        ends.append(position[id(data)])
    first, last = ends
    # Value 0 is the innode, the outnode comes last; the rest keep Lua's topological order.
    order = [first] + [i for i in range(len(datas)) if i not in ends] + [last]
    value_of = {i: v for v, i in enumerate(order)}
    modules = f.get('modules') if isinstance(f.get('modules'), list) else []
    module_index = {id(m): k for k, m in enumerate(modules)}
    nodes = []
    for v, i in enumerate(order[1:], 1):
        data, where = datas[i], f'{path}.forwardnodes[{i}]'
        sources = []
        for source in _ordered(data.get('mapindex', {}), f'{where}.data.mapindex'):
            if not isinstance(source, dict) or id(source) not in position:
                raise T7Error(f'{f.typename} at {path}: an input of forwardnodes[{i}] is not one of its nodes')
            if value_of[position[id(source)]] >= v:
                raise T7Error(f'{f.typename} at {path}: forwardnodes[{i}] reads a node that comes after it')
            sources.append(value_of[position[id(source)]])
        if not sources:
            raise T7Error(f'{f.typename} at {path}: forwardnodes[{i}] has no inputs; nodes without inputs '
                          '(nnop parameter nodes) are not supported')
        module = data.get('module')
        if module is not None:
            k = module_index.get(id(module))
            module = loader.module(module, f'{path}.modules[{k}]' if k is not None else f'{where}.data.module')
        select = data.get('selectindex') or 0
        split = data.get('nSplitOutputs') or 0
        if type(select) is not int or type(split) is not int:
            raise T7Error(f'{f.typename} at {path}: forwardnodes[{i}] has a non-integer selectindex or '
                          'nSplitOutputs')
        annotations = data.get('annotations')
        nodes.append(GraphNode(module, sources, select, split, annotations if isinstance(annotations, dict) else {}))
    n_inputs = f.get('nInputs')
    if n_inputs is None:
        # Files from before nInputs: Lua counts the innode's consumers.
        n_inputs = len(_ordered(forward[first].fields.get('children', {}), f'{path}.innode.children'))
    elif type(n_inputs) is not int or n_inputs < 0:
        f.fail('nInputs', 'a count')
    annotations = datas[first].get('annotations')
    return GModule(nodes, n_inputs, annotations if isinstance(annotations, dict) else {})


@builds('JustElement')
def _just_element(loader, f, path):
    return JustElement()


@builds('JustTable')
def _just_table(loader, f, path):
    return JustTable()


@writes('JustElement', accepts=JustElement)
def _write_just_element(saver, module, fields, path):
    fields['gradInput'] = {}


@writes('JustTable', accepts=JustTable)
def _write_just_table(saver, module, fields, path):
    fields['output'] = {}


class _Node:
    """A graph.Node while the graph is being rebuilt: its data table, children and graph id."""

    def __init__(self, data):
        self.data = data
        self.children = []
        self.id = 0


class _Graph:
    """graph.Graph: nodes and edges in insertion order; ids are positions in `nodes` (1-based)."""

    def __init__(self):
        self.nodes = []
        self.edges = []
        self.index = {}

    def add(self, start, end):
        self.edges.append((start, end))
        for node in (start, end):
            if id(node) not in self.index:
                self.nodes.append(node)
                self.index[id(node)] = len(self.nodes)
        if not any(child is end for child in start.children):
            start.children.append(end)
        start.id, end.id = self.index[id(start)], self.index[id(end)]

    def reverse(self):
        """The graph with every edge turned around, over new nodes sharing the data; also {id(node): (node, copy)}."""
        copies = {}
        reverse = _Graph()
        for start, end in self.edges:
            for node in (start, end):
                if id(node) not in copies:
                    copies[id(node)] = (node, _Node(node.data))
            reverse.add(copies[id(end)][1], copies[id(start)][1])
        return reverse, copies

    def roots(self):
        ends = {id(end) for _, end in self.edges}
        found = {id(start): start for start, _ in self.edges if id(start) not in ends}
        return sorted(found.values(), key=lambda node: self.index[id(node)])

    def topsort(self):
        """Graph:topsort: a depth-first post-order over the reversed graph, from its roots in order."""
        reverse, copies = self.reverse()
        original = {id(copy): node for node, copy in copies.values()}
        roots = reverse.roots()
        start = roots[0] if len(roots) == 1 else _Node(None)
        if len(roots) != 1:
            start.children = roots
        order, visited, stack = [], {id(start)}, [(start, iter(start.children))]
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if id(c) not in visited), None)
            if child is None:
                stack.pop()
                if id(node) in original:
                    order.append(original[id(node)])
            else:
                visited.add(id(child))
                stack.append((child, iter(child.children)))
        return order


def _lua_list_and_index(items):
    """graph's tables: items at 1..n and each item as a key to its position."""
    table = {i: item for i, item in enumerate(items, 1)}
    table.update({item: i for i, item in enumerate(items, 1)})
    return table


@writes('gModule', accepts=GModule)
def _write_gmodule(saver, module, fields, path):
    graph_nodes = list(module.nodes)
    datas = [{'input': {}, 'annotations': module.input_annotations, 'mapindex': {}, 'reverseMap': {}}]
    for k, node in enumerate(graph_nodes, 1):
        data = {'annotations': node.annotations, 'mapindex': {}, 'reverseMap': {}}
        if node.select_index:
            data.update(selectindex=node.select_index, input={})
        if node.n_split:
            data['nSplitOutputs'] = node.n_split
        if k == len(graph_nodes):
            data['input'] = {}
        datas.append(data)
    # The nodes nngraph's calls make (the backward graph's): children are the inputs, in mapindex order.
    made = [_Node(d) for d in datas]
    made_objects = [TorchObject('nngraph.Node') for _ in made]
    for k, node in enumerate(graph_nodes, 1):
        for i, s in enumerate(node.sources, 1):
            made[k].children.append(made[s])
            datas[k]['mapindex'][i] = datas[s]
            datas[k]['mapindex'][TableKey(datas[s])] = i
            datas[s]['reverseMap'][made_objects[k]] = True
    objects = {id(node): obj for node, obj in zip(made, made_objects)}

    backward = _Graph()
    outnode, queue, marked = made[-1], [made[-1]], {id(made[-1])}
    while queue:
        node = queue.pop(0)
        for child in list(node.children):
            backward.add(node, child)
        for child in node.children:
            if id(child) not in marked:
                marked.add(id(child))
                queue.append(child)
    forward, _ = backward.reverse()
    roots = forward.roots()
    if len(roots) != 1 or roots[0].data is not datas[0]:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: its graph must start from its input alone')
    forward_nodes, backward_nodes = forward.topsort(), backward.topsort()

    modules, index = [], {id(d): k for k, d in enumerate(datas)}
    for node in forward_nodes:
        node.data['forwardNodeId'] = node.id
        k = index[id(node.data)]
        if k and graph_nodes[k - 1].module is not None:
            node.data['module'] = saver.obj(graph_nodes[k - 1].module, f'{path}.modules[{len(modules)}]')
            modules.append(node.data['module'])

    def lua_object(node):
        obj = objects.get(id(node))
        if obj is None:
            obj = objects[id(node)] = TorchObject('nngraph.Node')
        return obj

    for graph in (backward, forward):
        for node in graph.nodes:
            lua_object(node).fields.update(data=node.data, id=node.id, marked=False, visited=False,
                                           children=_lua_list_and_index([lua_object(c) for c in node.children]))
    lua_graphs = [TorchObject('graph.Graph', {
        'nodes': _lua_list_and_index([lua_object(n) for n in graph.nodes]),
        'edges': _lua_list_and_index([TorchObject('graph.Edge', {'from': lua_object(a), 'to': lua_object(b)})
                                      for a, b in graph.edges])}) for graph in (backward, forward)]
    fields.update(modules=modules, bg=lua_graphs[0], fg=lua_graphs[1], innode=lua_object(roots[0]),
                  outnode=lua_object(outnode), forwardnodes=[lua_object(n) for n in forward_nodes],
                  backwardnodes=[lua_object(n) for n in backward_nodes], nInputs=module.n_inputs, verbose=False)
    del fields['gradInput']
    if len(outnode.children) > 1:
        fields['output'] = datas[-1]['input']
    else:
        del fields['output']
