"""The nn module zoo (tests/fixtures/nn_zoo, one Torch7-written file per module case): t7.load_model converts every
case, its eval forward matches the Lua output, save_model writes it back so that it converts to the same output again,
and its parameters train."""
import csv
import io
import pathlib

import pytest
import torch

import t7

ZOO = pathlib.Path(__file__).parent / 'fixtures' / 'nn_zoo'
with open(ZOO / 'cases.tsv', newline='') as _f:
    CASES = {row['case']: row for row in csv.DictReader(_f, delimiter='\t')}


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
    scripted module computes the Lua output."""
    _, x, expected = case_files(case)
    scripted = torch.jit.script(t7.load_model(ZOO / f'{case}.module.t7'))
    with torch.no_grad():
        out = scripted(x)
    assert_like_lua(out, expected, case)
