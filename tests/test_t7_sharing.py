"""Tests of how t7.load_model turns Lua tensors into Parameters: sharing recognised by storage, offset, sizes and
strides (never by id()), and parameters of one flat storage that train independently."""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import t7


def module(typename, **fields):
    fields.setdefault('output', torch.empty(0))
    fields.setdefault('gradInput', torch.empty(0))
    fields.setdefault('_type', 'torch.FloatTensor')
    fields.setdefault('train', False)
    return t7.TorchObject(typename, fields)


def saved(value):
    data = io.BytesIO()
    t7.save(data, value)
    return data.getvalue()


def conv(weight, bias=None, typename='nn.SpatialConvolution', k=3, pad=1):
    fields = dict(nInputPlane=weight.shape[1] if weight.dim() == 4 else weight.shape[1] // (k * k),
                  nOutputPlane=weight.shape[0], kW=k, kH=k, dW=1, dH=1, weight=weight)
    if typename == 'nn.SpatialConvolutionMM' and weight.dim() == 2:
        fields['padding'] = pad
    else:
        fields.update(padW=pad, padH=pad)
    if bias is not None:
        fields['bias'] = bias
    return module(typename, **fields)


def linear(weight, bias=None):
    fields = {'weight': weight}
    if bias is not None:
        fields['bias'] = bias
    return module('nn.Linear', **fields)


def flat_views(flat, *shapes):
    """Consecutive views of `flat`, as Lua's getParameters leaves the parameters of a model."""
    views, offset = [], 0
    for shape in shapes:
        n = torch.Size(shape).numel()
        views.append(flat[offset:offset + n].view(shape))
        offset += n
    return views


def test_same_shape_layers_with_2d_weights_keep_their_own_weights():
    # Old SpatialConvolutionMM files keep 2-D weights that are viewed as 4-D on loading; each view is a new
    # tensor object, so a cache keyed by id() handed the second layer the first one's weight on some loads.
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(4, 4 * 9, generator=g) for _ in range(4)]
    data = saved(module('nn.Sequential', modules=[conv(w, typename='nn.SpatialConvolutionMM') for w in weights]))
    x = torch.randn(1, 4, 5, 5, generator=g)
    for _ in range(20):
        built = t7.load_model(data)
        assert len({id(m.weight) for m in built}) == 4
        for m, w in zip(built, weights):
            assert torch.equal(m.weight.detach(), w.view(4, 4, 3, 3))
        expected = x
        for w in weights:
            expected = F.conv2d(expected, w.view(4, 4, 3, 3), padding=1)
        with torch.no_grad():
            assert torch.equal(built(x), expected)


def test_flat_parameters_stay_on_the_file_memory_and_train_independently():
    flat = torch.randn(2 * 36 + 2 + 2 + 2)
    w1, b1, w2, b2 = flat_views(flat, (2, 2, 3, 3), (2,), (2, 2, 3, 3), (2,))
    data = saved(module('nn.Sequential', modules=[conv(w1, b1), conv(w2, b2)]))
    built = t7.load_model(data)
    params = [built[0].weight, built[0].bias, built[1].weight, built[1].bias]
    assert len({id(p) for p in params}) == 4
    # no copy: every parameter lies in one storage, the one the file's flat vector was read into
    assert len({p.untyped_storage().data_ptr() for p in params}) == 1
    assert [p.storage_offset() for p in params] == [0, 36, 38, 74]
    for p, v in zip(params, (w1, b1, w2, b2)):
        assert p._base is None and torch.equal(p.detach(), v)
    # An in-place write to one parameter (PooledSpatialConvolution prunes its align weight so) leaves the others'
    # versions alone, so a graph that saved them still runs backward.
    x = torch.randn(1, 2, 4, 4)
    versions = [p._version for p in params]
    loss = built(x).sum()
    with torch.no_grad():
        built[1].weight.mul_(0.5)
    assert [p._version for p in params] == [versions[0], versions[1], versions[2] + 1, versions[3]]
    with torch.no_grad():
        built[0].weight.add_(1)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        loss.backward()
    built = t7.load_model(data)
    loss = built(x).sum()
    with torch.no_grad():
        built[0].bias.add_(1)
    loss.backward()
    assert all(p.grad is not None for p in built.parameters())


def test_identical_views_become_one_parameter():
    flat = torch.randn(6 + 2 + 2)
    weight, bias_a, bias_b = flat_views(flat, (2, 3), (2,), (2,))
    # distinct Lua tensor objects on the same memory, as :share() and clones leave them; the stride of a size-1
    # dimension can differ between two such views without them addressing different elements
    other_view = torch.as_strided(flat, (2, 3), (3, 1), 0)
    col = flat[6:8].view(2, 1)
    col_other = torch.as_strided(flat, (2, 1), (1, 7), 6)
    net = module('nn.Sequential', modules=[linear(weight, bias_a), linear(other_view, bias_b),
                                           module('nn.Linear', weight=col, bias=bias_b),
                                           module('nn.Linear', weight=col_other)])
    # col lies on bias_a's memory (a weight over another module's bias): copied, with a warning
    with pytest.warns(UserWarning, match=r'^model.modules\[2\]: a 2x1 parameter shares memory with one of '
                                         r'model.modules\[0\] without'):
        built = t7.load_model(saved(net))
    assert built[0].weight is built[1].weight and built[0].bias is not built[1].bias
    assert built[2].weight is built[3].weight and built[1].bias is built[2].bias
    assert built[3].bias is None
    with torch.no_grad():
        built[0].weight.zero_()
    assert torch.equal(built[1].weight, torch.zeros(2, 3))


def test_overlapping_views_get_their_own_copies():
    flat = torch.randn(12)
    a = flat[0:6].view(2, 3)
    b = flat[3:9].view(2, 3)       # shares its first row with a's second
    c = flat[0:6].view(3, 2)       # a's elements under another shape
    net = module('nn.Sequential', modules=[linear(a), linear(b), linear(c)])
    with pytest.warns(UserWarning) as caught:
        built = t7.load_model(saved(net))
    # Lua trained them as one: the user hears that they are untied, and where
    assert [str(w.message) for w in caught] == [
        f'model.modules[{i}]: a {shape} parameter shares memory with one of model.modules[0] without being the same '
        'view (a transposed or narrowed weight, say); it gets a copy of its own, so training no longer keeps the two '
        'tied' for i, shape in ((1, '2x3'), (2, '3x2'))]
    weights = [m.weight for m in built]
    for w, v in zip(weights, (a, b, c)):
        assert torch.equal(w.detach(), v)
    assert len({id(w) for w in weights}) == 3
    # two Parameters never alias part of their memory: autograd and the optimizer would be silently wrong
    with torch.no_grad():
        weights[0].fill_(7)
    assert torch.equal(weights[1].detach(), b) and torch.equal(weights[2].detach(), c)


def test_failing_builder_names_the_lua_class_and_its_place():
    bad = module('nn.Linear', weight=torch.randn(2, 3), bias=torch.randn(5))
    net = module('nn.Sequential', modules=[module('nn.Sequential', modules=[module('nn.Identity'), bad])])
    with pytest.raises(t7.T7Error, match=r'^nn.Linear at model.modules\[0\].modules\[1\]: field bias must be '):
        t7.load_model(net)
    mm = conv(torch.randn(4, 36), typename='nn.SpatialConvolutionMM')
    mm.weight = torch.randn(4, 35)
    with pytest.raises(t7.T7Error, match=r'^nn.SpatialConvolutionMM at model: field weight must be a tensor of '
                                         r'4x4x3x3 elements'):
        t7.load_model(mm)
    with pytest.raises(t7.T7Error, match=r'^unsupported module nn.Foo at model.modules\[0\]: .*t7/nn_'):
        t7.load_model(module('nn.Sequential', modules=[module('nn.Foo')]))


def test_loaded_model_is_a_real_module_whose_parameters_train():
    flat = torch.randn(2 * 36 + 2)
    w, b = flat_views(flat, (2, 2, 3, 3), (2,))
    built = t7.load_model(saved(conv(w, b)))
    assert isinstance(built, nn.Conv2d) and all(p.requires_grad for p in built.parameters())
    opt = torch.optim.SGD(built.parameters(), lr=0.1)
    before = built.weight.detach().clone()
    built(torch.randn(1, 2, 4, 4)).sum().backward()
    opt.step()
    assert not torch.equal(built.weight.detach(), before)
