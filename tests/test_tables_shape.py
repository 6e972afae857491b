"""Tests for layers/tables.py, layers/shape.py and layers/containers.py: the Torch7 rules the zoo cases do not reach
(never a 0-dim result, copies where Lua copies, first-wins ties, locked numInputDims, MapTable past its clones)."""
import warnings

import pytest
import torch
from torch import nn

from layers.containers import MapTable, specialize
from layers.shape import Copy, Max, Narrow, Padding, Replicate, Squeeze, Sum, Unsqueeze
from layers.tables import CMaxTable, Identity, SelectTable, TABLE


def scripted(module):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        return torch.jit.script(module)


def test_torch7_never_makes_a_0_dim_tensor():
    one = torch.ones(1, 1, 1)
    for module in (Squeeze(), scripted(Squeeze())):
        assert module(one).shape == (1,)
    assert Squeeze(1)(torch.ones(1)).shape == (1,)
    assert Sum(1)(torch.arange(4.0)).tolist() == [6.0]
    assert Max(1)(torch.tensor([1.0, 5.0, 2.0])).tolist() == [5.0]
    assert Max(1, minimum=True)(torch.tensor([1.0, 5.0, 2.0])).tolist() == [1.0]


def test_narrow_copies_as_lua_does():
    x = torch.arange(6.0).reshape(2, 3)
    out = Narrow(2, 2, 2)(x)
    out.relu_().add_(10)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_cmaxtable_ties_go_to_the_first_input():
    a, b = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([1.0, 3.0], requires_grad=True)
    CMaxTable()([a, b]).sum().backward()
    assert a.grad.tolist() == [1, 0] and b.grad.tolist() == [0, 1]


def test_unsqueeze_keeps_the_first_inputs_dimension_count():
    module = Unsqueeze(2)
    assert module(torch.ones(2, 3)).shape == (2, 1, 3) and module.num_input_dims == 2
    assert module(torch.ones(4, 2, 3)).shape == (4, 2, 1, 3)


def test_padding_before_an_index_with_a_value():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert Padding(2, -1, value=9)(x).tolist() == [[9, 1, 2, 3]]
    assert Padding(2, 2, value=-1)(x).tolist() == [[1, 2, 3, -1, -1]]
    assert Padding(2, 1, value=0, index=2)(x).tolist() == [[1, 2, 0, 3]]


def test_copy_and_replicate():
    x = torch.ones(2, 3)
    assert Copy(torch.float64)(x).dtype == torch.float64
    assert Copy(torch.float32, force_copy=False)(x) is x
    assert Copy(torch.float32)(x) is not x
    out = Replicate(4, 2)(x)
    assert out.shape == (2, 4, 3) and out.stride(1) == 0


def test_maptable_serves_more_inputs_than_its_clones():
    linear = nn.Linear(3, 2)
    xs = [torch.randn(1, 3) for _ in range(3)]
    for module in (MapTable(linear), scripted(MapTable(linear))):
        out = module(xs)
        assert len(out) == 3 and all(torch.equal(o, linear(x)) for o, x in zip(out, xs))


def test_select_table_index_out_of_range():
    xs = [torch.ones(1), torch.zeros(1)]
    assert SelectTable(-2)(xs) is xs[0]
    with pytest.raises(IndexError, match=r'nn.SelectTable\(3\): index does not exist in the input table of 2'):
        SelectTable(3)(xs)


def test_identity_takes_the_type_of_what_flows_in():
    identity = Identity()
    xs = [torch.ones(1)]
    assert identity(xs) is xs and specialize(identity, TABLE) == TABLE
    assert scripted(identity)(xs)[0].equal(xs[0])
    assert isinstance(identity, nn.Identity)
