"""Tests for t7/convert.py: Lua nn/cudnn module trees to PyTorch modules (forward as in Lua) and back."""
import io
import lzma
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
import opts
import t7
from layers import ChannelInterlace, PooledSpatialConvolution, lua_type, named
from layers.shape import View

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
MODELS = ['alexnet-lcnn', 'alexnet-lcnn.cuda', 'resnet8-lcnn', 'resnet8-lcnn.cuda']
# Fields Torch7 modules create during a forward (descriptors, buffers, shapes seen); save_model leaves them out.
FORWARD_STATE = {'autotunerHash', 'convDescData', 'input_offset', 'output_offset', 'weight_offset', 'input_slice',
                 'output_slice', 'pad', 'stride', 'zeroMask', 'save_mean', 'save_std', 'nElem', 'iheight', 'iwidth',
                 'addBuffer'}


@pytest.fixture(scope='module')
def lua_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('t7models')
    paths = {}
    for name in MODELS:
        paths[name] = folder / f'{name}.t7'
        paths[name].write_bytes(lzma.decompress((FIXTURES / f'{name}.t7.xz').read_bytes()))
    return paths


@pytest.fixture(scope='module')
def batch():
    return t7.load(FIXTURES / 'alexnet-lcnn.input.t7')


def assert_lua_forward(model, batch, name):
    expected = t7.load(FIXTURES / f'{name.split(".")[0]}.output.t7')
    with torch.no_grad():
        out = model(batch)
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max()


def lua_tree(obj):
    """(class name, children) of a Lua module, following containers and a PooledSpatialConvolution's convs."""
    kids = list(obj.fields.get('modules') or [])
    if obj.typename == 'cudnn.PooledSpatialConvolution':
        kids = [obj.poolconv, obj.alignconv]
    return obj.typename, [lua_tree(k) for k in kids]


def torch_tree(module):
    return lua_type(module), [torch_tree(m) for m in module.children()]


@pytest.mark.parametrize('name', MODELS)
def test_fixture_models_forward_like_lua(lua_files, batch, name):
    rng = torch.get_rng_state()
    model = t7.load_model(lua_files[name])
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m.training for m in model.modules())
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert torch_tree(model) == lua_tree(t7.load(lua_files[name]))
    assert_lua_forward(model, batch, name)


def test_loaded_modules_use_the_project_classes(lua_files):
    model = t7.load_model(lua_files['resnet8-lcnn.cuda'])
    psc = model[0]
    assert isinstance(psc, PooledSpatialConvolution) and lua_type(psc) == 'cudnn.PooledSpatialConvolution'
    assert lua_type(psc.poolconv) == 'cudnn.SpatialConvolution' and psc.poolconv.bias is None
    assert psc.sparseTh == t7.load(lua_files['resnet8-lcnn']).modules[0].sparseTh and psc.poolSize == 3
    assert psc.lambda_ == 0
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.eps == 1e-5 and bn.momentum == 0.1
    assert isinstance(model[9], View) and model[9].sizes == (512,) and model[9].num_input_dims == 3
    assert isinstance(model[8], nn.AvgPool2d) and lua_type(model[8]) == 'cudnn.SpatialAveragePooling'
    assert isinstance(model.lua_LRregime, t7.LuaFunction)
    alexnet = t7.load_model(lua_files['alexnet-lcnn'])
    assert alexnet[0][1].eps == 1e-3
    assert lua_type(alexnet[1][0]) == 'nn.Dropout' and alexnet[1][0].v1 is False


@pytest.mark.parametrize('name', ['alexnet-lcnn.cuda', 'resnet8-lcnn'])
def test_saved_model_has_the_fields_lua_wrote(lua_files, batch, name):
    original = t7.load(lua_files[name])
    model = t7.load_model(original)
    data = io.BytesIO()
    t7.save_model(data, model)
    written = t7.load(data.getvalue())
    assert lua_tree(written) == lua_tree(original)
    theirs, ours = fields_by_class(original), fields_by_class(written)
    assert theirs.keys() == ours.keys()
    for key, lua_fields in theirs.items():
        assert lua_fields - ours[key] <= FORWARD_STATE, key
        # Sequential's gradInput is nil in Lua only when its first child (a PooledSpatialConvolution) has none.
        assert ours[key] - lua_fields <= {'gradInput'}, key
    psc = written.modules[0] if name.startswith('resnet') else written.modules[0].modules[0]
    assert psc.weight is psc.poolconv.weight and psc.bias is psc.alignconv.bias
    assert psc.gradWeight is psc.poolconv.gradWeight and psc.m.modules == [psc.poolconv, psc.alignconv]
    assert 'train' not in psc.poolconv.fields and psc.train is False
    if name.startswith('resnet'):
        assert written.LRregime.dumped == original.LRregime.dumped
    assert_lua_forward(t7.load_model(data.getvalue()), batch, name)


def fields_by_class(obj, found=None, inner=False):
    """{(class name, inside a PooledSpatialConvolution): field names} over a Lua module tree."""
    found = {} if found is None else found
    found.setdefault((obj.typename, inner), set()).update(obj.fields)
    for child in obj.fields.get('modules') or []:
        fields_by_class(child, found, inner)
    if obj.typename == 'cudnn.PooledSpatialConvolution':
        for conv in (obj.poolconv, obj.alignconv):
            fields_by_class(conv, found, True)
    return found


@pytest.mark.parametrize('argv', [
    ['-netType', 'clcneta', '-nClasses', '10'],
    ['-netType', 'resnet-lcnn', '-depth', '8', '-pool1', '20', '-pool2', '20', '-pool3', '20', '-pool4', '20'],
])
def test_models_from_create_round_trip(argv):
    model = models.create(opts.parse(argv)).eval()
    data = io.BytesIO()
    t7.save_model(data, model)
    back = t7.load_model(data.getvalue())
    assert torch_tree(back) == torch_tree(model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def module(typename, version=1, **fields):
    fields.setdefault('output', torch.empty(0))
    fields.setdefault('gradInput', torch.empty(0))
    fields.setdefault('_type', 'torch.FloatTensor')
    fields.setdefault('train', False)
    return t7.TorchObject(typename, fields, version)


def long_storage(*values):
    return t7.Storage('torch.LongStorage', torch.tensor(values, dtype=torch.int64))


def conv(typename='nn.SpatialConvolution', n_in=4, n_out=6, k=3, stride=1, pad=1, groups=None, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    per_group = n_in // (groups or 1)
    fields = dict(nInputPlane=n_in, nOutputPlane=n_out, kW=k, kH=k, dW=stride, dH=stride, padW=pad, padH=pad,
                  weight=torch.randn(n_out, per_group, k, k, generator=g))
    if bias:
        fields['bias'] = torch.randn(n_out, generator=g)
    if groups is not None:
        fields['groups'] = groups
    return module(typename, **fields)


def forward(obj, x):
    built = t7.load_model(obj)
    with torch.no_grad():
        return built(x), built


X = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(1))


def test_convolutions():
    c = conv()
    out, built = forward(c, X)
    torch.testing.assert_close(out, F.conv2d(X, c.weight, c.bias, 1, 1))
    assert isinstance(built, nn.Conv2d) and lua_type(built) == 'nn.SpatialConvolution'
    grouped = conv('cudnn.SpatialConvolution', groups=2, stride=2)
    out, built = forward(grouped, X)
    assert built.groups == 2
    torch.testing.assert_close(out, F.conv2d(X, grouped.weight, grouped.bias, 2, 1, groups=2))
    # Old nn files keep a 2-D weight matrix, and SpatialConvolutionMM did too.
    old = conv('nn.SpatialConvolutionMM', pad=0, bias=False)
    old.weight = old.weight.reshape(6, -1)
    out, _ = forward(old, X)
    torch.testing.assert_close(out, F.conv2d(X, old.weight.view(6, 4, 3, 3)))


def test_shared_weights_stay_shared():
    c = conv(n_out=4)
    twin = conv(n_out=4, seed=5)
    twin.weight = c.weight
    net = module('nn.Sequential', modules=[c, module('nn.ReLU', threshold=0, val=0, inplace=False), twin, c])
    built = t7.load_model(net)
    assert built[2].weight is built[0].weight and built[2].bias is not built[0].bias and built[3] is built[0]
    x = torch.randn(1, 4, 5, 5)
    out, _ = forward(net, x)
    expected = F.conv2d(F.conv2d(x, c.weight, c.bias, padding=1).clamp(min=0), c.weight, twin.bias, padding=1)
    torch.testing.assert_close(out, F.conv2d(expected, c.weight, c.bias, padding=1))
    written = t7.to_lua(built)
    assert written.modules[2].weight is written.modules[0].weight and written.modules[3] is written.modules[0]


def test_batch_normalization_variants():
    n = 4
    mean, var = torch.randn(n), torch.rand(n) + 0.5
    weight, bias = torch.rand(n) + 0.5, torch.randn(n)
    bn = module('nn.SpatialBatchNormalization', version=2, eps=1e-3, momentum=0.1, affine=True, running_mean=mean,
                running_var=var, weight=weight, bias=bias)
    out, built = forward(bn, X)
    torch.testing.assert_close(out, F.batch_norm(X, mean, var, weight, bias, False, 0.1, 1e-3))
    assert built.eps == 1e-3
    # Files from before nn's version 2 kept running_std = 1/sqrt(var + eps).
    old = module('nn.SpatialBatchNormalization', version=1, eps=1e-3, momentum=0.1, affine=False, running_mean=mean,
                 running_std=(var + 1e-3).rsqrt())
    out, built = forward(old, X)
    assert not built.affine and built.weight is None
    torch.testing.assert_close(built.running_var, var)
    torch.testing.assert_close(out, F.batch_norm(X, mean, var, None, None, False, 0.1, 1e-3))
    flat = module('cudnn.BatchNormalization', version=2, eps=1e-5, momentum=0.1, affine=True, running_mean=mean,
                  running_var=var, weight=weight, bias=bias)
    x = torch.randn(3, n)
    out, built = forward(flat, x)
    assert isinstance(built, nn.BatchNorm1d)
    torch.testing.assert_close(out, F.batch_norm(x, mean, var, weight, bias, False, 0.1, 1e-5))


def test_activations_and_softmax():
    out, built = forward(module('nn.ReLU', threshold=0, val=0, inplace=False), X)
    assert isinstance(built, nn.ReLU) and torch.equal(out, X.clamp(min=0))
    out, built = forward(module('nn.ReLU', threshold=0.5, val=-1, inplace=False), X)
    assert lua_type(built) == 'nn.ReLU' and torch.equal(out, torch.where(X > 0.5, X, torch.tensor(-1.0)))
    out, _ = forward(module('nn.Threshold', threshold=0.1, val=2, inplace=False), X)
    assert torch.equal(out, torch.where(X > 0.1, X, torch.tensor(2.0)))
    logits = torch.randn(3, 5)
    out, _ = forward(module('cudnn.SoftMax', algorithm='CUDNN_SOFTMAX_ACCURATE', iSize=long_storage(0, 0, 0, 0)),
                     logits)
    torch.testing.assert_close(out, logits.softmax(1))
    out, _ = forward(module('nn.LogSoftMax'), logits[0])
    torch.testing.assert_close(out, logits[0].log_softmax(0))


def test_pooling_modes():
    x = torch.randn(1, 2, 7, 7)
    out, built = forward(module('nn.SpatialMaxPooling', kW=3, kH=2, dW=2, dH=2, padW=1, padH=1, ceil_mode=True,
                                indices=torch.empty(0, dtype=torch.int64)), x)
    torch.testing.assert_close(out, F.max_pool2d(x, (2, 3), 2, 1, ceil_mode=True))
    out, _ = forward(module('nn.SpatialAveragePooling', kW=3, kH=3, dW=2, dH=2, padW=1, padH=1, ceil_mode=True,
                            count_include_pad=False, divide=True), x)
    # Lua divides each window's sum by the number of input pixels in it when padding is not counted.
    window_sums = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True)
    window_counts = F.avg_pool2d(torch.ones_like(x), 3, 2, 1, ceil_mode=True, count_include_pad=True)
    torch.testing.assert_close(out, window_sums / window_counts)
    out, _ = forward(module('nn.SpatialAveragePooling', kW=2, kH=2, dW=2, dH=2, padW=0, padH=0, ceil_mode=False,
                            count_include_pad=True, divide=False), x)
    torch.testing.assert_close(out, F.avg_pool2d(x, 2, 2) * 4)
    # cudnn counts the padding whatever count_include_pad says.
    out, _ = forward(module('cudnn.SpatialAveragePooling', kW=3, kH=3, dW=2, dH=2, padW=1, padH=1, ceil_mode=False,
                            count_include_pad=False, mode='CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING'), x)
    torch.testing.assert_close(out, F.avg_pool2d(x, 3, 2, 1, count_include_pad=True))


def test_dropout_versions_at_test_time():
    out, _ = forward(module('nn.Dropout', p=0.25, v2=True, noise=torch.empty(0)), X)
    assert torch.equal(out, X)
    out, _ = forward(module('nn.Dropout', p=0.25, v2=False, noise=torch.empty(0)), X)
    torch.testing.assert_close(out, X * 0.75)
    out, _ = forward(module('nn.Dropout', p=0.25, noise=torch.empty(0)), X)
    torch.testing.assert_close(out, X * 0.75)
    out, built = forward(module('nn.SpatialDropout', p=0.4, noise=torch.empty(0)), X)
    assert lua_type(built) == 'nn.SpatialDropout'
    torch.testing.assert_close(out, X * 0.6)


def test_containers_view_and_linear():
    shortcut_a = module('nn.Concat', dimension=2, outputSize=long_storage(), modules=[
        module('nn.Identity'), module('nn.MulConstant', constant_scalar=0, inplace=False)])
    residual = module('nn.Sequential', modules=[
        module('nn.ConcatTable', output={}, modules=[module('nn.Identity'),
                                                     module('nn.MulConstant', constant_scalar=2.0, inplace=False)]),
        module('nn.CAddTable', gradInput={}, inplace=True)])
    g = torch.Generator().manual_seed(3)
    linear = module('nn.Linear', weight=torch.randn(5, 8 * 81, generator=g), bias=torch.randn(5, generator=g))
    net = module('nn.Sequential', modules=[shortcut_a, residual,
                                           module('nn.View', size=long_storage(-1), numElements=1, numInputDims=3),
                                           linear])
    out, built = forward(net, X)
    doubled = torch.cat([X, X * 0], 1) * 3
    torch.testing.assert_close(out, F.linear(doubled.reshape(2, -1), linear.weight, linear.bias))
    assert [lua_type(m) for m in built[0]] == ['nn.Identity', 'nn.MulConstant']


def test_channel_interlace_with_float_indices():
    lua_f = [1, 4, 2, 5, 3, 6]   # ChannelInterlace(6, 2) as the Lua constructor numbers it
    lua_b = [1, 3, 5, 2, 4, 6]
    obj = module('nn_plus.ChannelInterlace', channel=6, group=2, f_idx=torch.tensor(lua_f, dtype=torch.float32),
                 b_idx=torch.tensor(lua_b, dtype=torch.float32))
    x = torch.randn(2, 6, 3, 3)
    out, built = forward(obj, x)
    assert isinstance(built, ChannelInterlace)
    torch.testing.assert_close(out, x[:, [i - 1 for i in lua_f]])
    assert torch.equal(built.f_idx, ChannelInterlace(6, 2).f_idx)
    written = t7.to_lua(built)
    assert written.f_idx.tolist() == lua_f and written.b_idx.tolist() == lua_b


def test_pooled_convolution_from_lua_fields():
    poolconv = conv('cudnn.SpatialConvolution', n_in=4, n_out=3, k=1, pad=2, bias=False)
    alignconv = conv('cudnn.SpatialConvolution', n_in=3, n_out=6, k=3, stride=2, pad=0, seed=1)
    sparse_th = 0.5
    obj = module('cudnn.PooledSpatialConvolution', nInputPlane=4, nOutputPlane=6, kW=3, kH=3, dW=2, dH=2, padW=2,
                 padH=2, poolSize=3, sparseTh=sparse_th, poolconv=poolconv, alignconv=alignconv,
                 m=module('nn.Sequential', modules=[poolconv, alignconv]), weight=poolconv.weight,
                 bias=alignconv.bias, zeroMask=torch.zeros(6, 3, 3, 3))
    obj.fields['lambda'] = 0.25
    expected_align = torch.where(alignconv.weight.abs() <= sparse_th, 0, alignconv.weight)
    expected = F.conv2d(F.conv2d(X, poolconv.weight, padding=2), expected_align, alignconv.bias, 2)
    out, built = forward(obj, X)
    torch.testing.assert_close(out, expected)
    assert built.lambda_ == 0.25 and built.sparseTh == sparse_th
    mismatched = module('cudnn.PooledSpatialConvolution', **dict(obj.fields, padW=1, padH=1))
    with pytest.raises(t7.T7Error, match=r'cudnn.PooledSpatialConvolution at model: poolconv \(weight 3x4x1x1, '
                                         r'stride \(1, 1\), padding \(2, 2\).*does not match'):
        t7.load_model(mismatched)


def test_unsupported_module_names_its_place():
    net = module('nn.Sequential', modules=[module('nn.Identity'),
                                           module('nn.Sequential', modules=[module('nn.Foo')])])
    with pytest.raises(t7.T7Error, match=r'^unsupported module nn.Foo at model.modules\[1\].modules\[0\]: '):
        t7.load_model(net)
    with pytest.raises(t7.T7Error, match=r'model is not an nn module \(found dict\)'):
        t7.load_model(io.BytesIO(saved({'a': 1})))
    loop = module('nn.Sequential', modules=[])
    loop.modules.append(module('nn.Sequential', modules=[loop]))
    with pytest.raises(t7.T7Error, match=r'nn.Sequential at model.modules\[0\].modules\[0\] contains itself'):
        t7.load_model(loop)
    bad = module('nn.Sequential', modules=[module('nn.Linear', weight=torch.ones(2, 3, dtype=torch.int64))])
    with pytest.raises(t7.T7Error, match=r'nn.Linear at model.modules\[0\]: field weight must be a floating point '
                                         r'tensor, found a torch.int64 tensor of size 2x3'):
        t7.load_model(bad)


def saved(value):
    data = io.BytesIO()
    t7.save(data, value)
    return data.getvalue()


def test_save_model_refuses_what_lua_cannot_hold():
    with pytest.raises(t7.T7Error, match=r'cannot save GELU at model.modules\[1\]: it has no Torch7 counterpart'):
        t7.to_lua(nn.Sequential(nn.ReLU(), nn.GELU()))
    with pytest.raises(t7.T7Error, match=r'only cudnn.SpatialConvolution has groups'):
        t7.to_lua(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(t7.T7Error, match=r'no dilation'):
        t7.to_lua(nn.Conv2d(4, 4, 3, dilation=2))
    with pytest.raises(t7.T7Error, match=r'cannot save Sigmoid at model as cudnn.ReLU: expected a ReLU or Threshold'):
        t7.to_lua(named(nn.Sigmoid(), 'cudnn.ReLU'))
    with pytest.raises(t7.T7Error, match='expects a torch.nn.Module'):
        t7.to_lua({'a': 1})


def test_save_model_fields_of_plain_pytorch_modules():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU(True),
                        nn.MaxPool2d(2, ceil_mode=True), nn.Dropout(0.3), nn.Identity())
    lua = t7.to_lua(net.eval())
    conv_fields = lua.modules[0].fields
    assert lua.modules[0].typename == 'nn.SpatialConvolution'
    assert {k: conv_fields[k] for k in ['nInputPlane', 'nOutputPlane', 'kW', 'kH', 'dW', 'dH', 'padW', 'padH']} == \
        dict(nInputPlane=3, nOutputPlane=4, kW=3, kH=3, dW=1, dH=1, padW=1, padH=1)
    assert torch.equal(conv_fields['gradWeight'], torch.zeros(4, 3, 3, 3)) and conv_fields['_type'] == \
        'torch.FloatTensor'
    bn = lua.modules[1]
    assert bn.version == 2 and bn.eps == 1e-3 and bn.affine is True and bn.momentum == 0.1
    assert lua.modules[2].fields['threshold'] == 0 and lua.modules[2].inplace is True
    assert lua.modules[3].ceil_mode is True and lua.modules[3].indices.dtype == torch.int64
    assert lua.modules[4].v2 is True and lua.modules[4].p == 0.3
    assert all(m.train is False for m in lua.modules) and lua.train is False
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(t7.load_model(saved(lua))(x), net(x))
    assert math.isclose(t7.load_model(saved(lua))[1].eps, 1e-3)
