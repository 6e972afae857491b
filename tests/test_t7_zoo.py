"""The nn module zoo (tests/fixtures/nn_zoo, one Torch7-written file per module case): t7.load_model converts every
case, its eval forward matches the Lua output, save_model writes it back so that it converts to the same output again,
and its parameters train."""
import csv
import io
import pathlib
import re

import pytest
import torch

import t7
from layers.containers import unscriptable

ZOO = pathlib.Path(__file__).parent / 'fixtures' / 'nn_zoo'
with open(ZOO / 'cases.tsv', newline='') as _f:
    CASES = {row['case']: row for row in csv.DictReader(_f, delimiter='\t')}
# The module families of containers, nngraph, tables and shapes: their cases' written-back fields are checked here,
# those of the leaf modules (convolutions, pooling, activations ...) in test_t7_zoo_fields.py.
FAMILIES = {'Sequential', 'Concat', 'DepthConcat', 'ConcatTable', 'ParallelTable', 'MapTable', 'Parallel', 'gModule',
            'Identity', 'CAddTable', 'CSubTable', 'CMulTable', 'CDivTable', 'CMaxTable', 'CMinTable', 'JoinTable',
            'SplitTable', 'NarrowTable', 'SelectTable', 'FlattenTable', 'DotProduct', 'MM', 'MV', 'CosineDistance',
            'PairwiseDistance', 'View', 'Reshape', 'Transpose', 'Squeeze', 'Unsqueeze', 'Replicate', 'Narrow',
            'Select', 'Copy', 'Contiguous', 'Sum', 'Mean', 'Max', 'Min', 'Padding'}
# Cases torch.jit.script cannot compile, with the reason `python -m t7 convert` gives for them.
NOT_SCRIPTABLE = {'FlattenTable': 'nn.FlattenTable takes arbitrarily nested tables, which TorchScript cannot type'}
# Fields Torch7 modules create lazily in updateOutput (buffers, sizes last seen, index tensors), by name or as
# class.name: a written-back module leaves them out, Lua makes them on the first forward.
FORWARD_STATE = {'addBuffer', 'finput', 'fgradInput', 'save_mean', 'save_std', 'iheight', 'iwidth', 'ones',
                 '_gfinput', '_gin', '_gout', '_input', '_gradOutput', 'totalOutputSize', '_indices', '_output',
                 'maskByteTensor', 'buffer', 'w', 'w1', 'w22', 'w32', 'shared', 'nn.gModule.output'}
# Fields of old formats that reading replaces by their modern equivalents (written back instead).
OLD_FORMAT = {'padding', 'running_std'}
# Classes whose updateOutput replaces `output` with the input or a new table, whatever it was before.
OUTPUT_REPLACED = {'nn.Identity', 'nn.SplitTable', 'nn.SelectTable'}


def flatten(value):
    """The tensors of a Lua value (a tensor or a nested list of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    assert isinstance(value, list), f'expected a tensor or a list of tensors, found {type(value).__name__}'
    return [t for v in value for t in flatten(v)]


def assert_like_lua(out, expected, case):
    got, want = flatten(out), flatten(expected)
    assert len(got) == len(want), f'{case}: {len(got)} outputs, Lua has {len(want)}'
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape), f'{case}: output {tuple(g.shape)}, Lua {tuple(w.shape)}'
        tol = 1e-5 * max(1.0, w.abs().max().item() if w.numel() else 0.0)
        assert (g.detach().double() - w.double()).abs().max().item() <= tol if w.numel() else True, case


def case_files(case):
    return (t7.load(ZOO / f'{case}.module.t7'), t7.load(ZOO / f'{case}.input.t7'),
            t7.load(ZOO / f'{case}.output.t7'))


@pytest.mark.parametrize('case', sorted(CASES))
def test_zoo_case_converts_and_forwards_like_lua(case):
    _, x, expected = case_files(case)
    model = t7.load_model(ZOO / f'{case}.module.t7')
    assert isinstance(model, torch.nn.Module) and not model.training
    with torch.no_grad():
        out = model(x)
    assert_like_lua(out, expected, case)


@pytest.mark.parametrize('case', sorted(CASES))
def test_zoo_case_written_back_converts_to_the_same_output(case):
    _, x, expected = case_files(case)
    model = t7.load_model(ZOO / f'{case}.module.t7')
    buffer = io.BytesIO()
    t7.save_model(buffer, model)
    again = t7.load_model(io.BytesIO(buffer.getvalue()))
    with torch.no_grad():
        out = again(x)
    assert_like_lua(out, expected, case)


@pytest.mark.parametrize('case', sorted(CASES))
def test_zoo_case_trains(case):
    """In training mode the converted module runs forward and backward, and every parameter gets a gradient."""
    _, x, _ = case_files(case)
    model = t7.load_model(ZOO / f'{case}.module.t7').train()
    out = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        sum(t.sum() for t in flatten(out)).backward()
        assert all(p.grad is not None for p in params), case


@pytest.mark.parametrize('case', sorted(CASES))
def test_zoo_case_scripts(case):
    """`python -m t7 convert` writes TorchScript: every converted module compiles with torch.jit.script and the
    scripted module computes the Lua output; the few that cannot say why."""
    _, x, expected = case_files(case)
    model = t7.load_model(ZOO / f'{case}.module.t7')
    assert unscriptable(model) == NOT_SCRIPTABLE.get(case)
    if case in NOT_SCRIPTABLE:
        with pytest.raises(RuntimeError):
            torch.jit.script(model)
        return
    scripted = torch.jit.script(model)
    with torch.no_grad():
        out = scripted(x)
    assert_like_lua(out, expected, case)


def lua_kind(value):
    """What Lua would call the type of a field value (tensor and storage types without Cuda)."""
    if isinstance(value, bool):
        return 'boolean'
    if isinstance(value, (int, float)):
        return 'number'
    if isinstance(value, torch.Tensor):
        return 'tensor'
    if isinstance(value, t7.Storage):
        return value.typename.replace('Cuda', '')
    if isinstance(value, (dict, list)):
        return 'table'
    if isinstance(value, t7.TorchObject):
        return value.typename
    return type(value).__name__


def fields_by_class(value, found=None, seen=None):
    """{Lua class: {field: set of kinds}} over every Torch object reachable from value (gModule nodes too)."""
    found, seen = ({}, set()) if found is None else (found, seen)
    if id(value) in seen:
        return found
    seen.add(id(value))
    if isinstance(value, t7.TorchObject):
        fields = found.setdefault(value.typename, {})
        for key, v in value.fields.items():
            fields.setdefault(key, set()).add(lua_kind(v))
            fields_by_class(v, found, seen)
    elif isinstance(value, dict):
        for key, v in value.items():
            fields_by_class(key.table if isinstance(key, t7.TableKey) else key, found, seen)
            fields_by_class(v, found, seen)
    elif isinstance(value, list):
        for v in value:
            fields_by_class(v, found, seen)
    return found


def top_class(case):
    """The Lua class a case's constructor makes (an nngraph case's builds a gModule)."""
    constructor = CASES[case]['constructor']
    return 'gModule' if 'nn.gModule(' in constructor else re.match(r'(?:nn|cudnn)\.(\w+)', constructor).group(1)


@pytest.mark.parametrize('case', sorted(c for c in CASES if top_class(c) in FAMILIES))
def test_zoo_case_written_back_has_the_fields_lua_wrote(case):
    """save_model writes each class with the fields of the Lua file (but those Lua's forward makes on the fly),
    each of the kind Lua had (a number, a boolean, a LongStorage, a table ...)."""
    lua = t7.load(ZOO / f'{case}.module.t7')
    buffer = io.BytesIO()
    t7.save_model(buffer, t7.load_model(lua))
    theirs, ours = fields_by_class(lua), fields_by_class(t7.load(buffer.getvalue()))
    assert theirs.keys() == ours.keys(), case
    for cls, fields in theirs.items():
        missing = {name for name in set(fields) - set(ours[cls]) - OLD_FORMAT
                   if name not in FORWARD_STATE and f'{cls}.{name}' not in FORWARD_STATE}
        assert not missing, f'{case}: {cls} written without {sorted(missing)}'
        for name in set(fields) & set(ours[cls]):
            if name == 'output' and cls in OUTPUT_REPLACED:
                continue
            assert fields[name] == ours[cls][name], f'{case}: {cls}.{name} is {ours[cls][name]}, Lua {fields[name]}'

