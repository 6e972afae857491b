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
from layers.containers import ParallelTable
from layers.conv import LookupTable
from layers.normalization import SpatialContrastiveNormalization, SpatialSubtractiveNormalization
from layers.shape import View
from layers.tables import MM
from t7.__main__ import lua_string

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
        # Sequential's gradInput is nil in Lua only when its first child (a PooledSpatialConvolution) has none;
        # cudnn.ReLU and cudnn.SpatialAveragePooling also get the fields of their nn classes, for the CPU stand-ins
        # of cudnn that derive from those.
        assert ours[key] - lua_fields <= {'gradInput', 'threshold', 'val', 'divide'}, key
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
    with pytest.raises(t7.T7Error, match=r'^t7.load_model got a Lua table, not an nn module, and no nn module inside'):
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


# --- the leaf nn modules beyond the LCNN set: what the zoo's single evaluate forward does not pin down ---------------

ZOO = FIXTURES / 'nn_zoo'


def test_dropouts_train_with_lua_noise():
    x = torch.rand(4, 3, 5, 5) + 1
    maps = t7.load_model(module('nn.SpatialDropout', p=0.5, noise=torch.empty(0))).train()(x)
    # Whole feature maps are dropped and the kept ones are not rescaled (Lua scales by 1-p at test time instead).
    kept = maps.flatten(2).amax(2) > 0
    assert 0 < kept.sum() < kept.numel()
    assert torch.equal(maps[kept], x[kept]) and torch.equal(maps[~kept], torch.zeros_like(x[~kept]))
    volumes = t7.load_model(module('nn.VolumetricDropout', p=0.5, noise=torch.empty(0)))
    y = torch.rand(4, 3, 2, 2, 2) + 1
    torch.testing.assert_close(volumes(y), y * 0.5)
    dropped = volumes.train()(y).flatten(2)
    assert torch.equal(dropped.amin(2) > 0, dropped.amax(2) > 0)
    v1 = t7.load_model(module('nn.Dropout', p=0.25, v2=False, noise=torch.empty(0))).train()(x)
    v2 = t7.load_model(module('nn.Dropout', p=0.25, v2=True, noise=torch.empty(0))).train()(x)
    assert torch.equal(v1[v1 != 0], x[v1 != 0]) and torch.allclose(v2[v2 != 0], x[v2 != 0] / 0.75)
    always = t7.load_model(module('nn.Dropout', p=0.5, v2=True, stochastic_inference=True, noise=torch.empty(0)))
    assert not always.training and (always(x) == 0).any()


def test_batch_normalization_trains_like_lua():
    n = 3
    g = torch.Generator().manual_seed(4)
    mean, var = torch.randn(n, generator=g), torch.rand(n, generator=g) + 0.5
    bn = t7.load_model(module('nn.SpatialBatchNormalization', version=2, eps=1e-5, momentum=0.1, affine=True,
                              running_mean=mean.clone(), running_var=var.clone(), weight=torch.ones(n),
                              bias=torch.zeros(n)))
    one = torch.randn(1, n, 4, 4, generator=g)
    expected = bn(one)
    # Lua normalises a training batch of one sample with the running statistics and leaves them alone.
    torch.testing.assert_close(bn.train()(one), expected)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    batch = torch.randn(4, n, 4, 4, generator=g)
    out = bn(batch)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(n), atol=1e-5, rtol=0)
    torch.testing.assert_close(bn.running_mean, 0.9 * mean + 0.1 * batch.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.9 * var + 0.1 * batch.var((0, 2, 3), unbiased=True))
    # One sample without its batch dimension: Lua adds one and keeps it.
    assert bn.eval()(one[0]).shape == (1, n, 4, 4)


def test_lookup_table_indices_padding_and_max_norm():
    weight = torch.arange(12, dtype=torch.float32).view(4, 3) / 4
    table = t7.load_model(module('nn.LookupTable', version=4, weight=weight.clone(), paddingValue=2,
                                 shouldScaleGradByFreq=False)).train()
    # Lua indices are 1-based; a Float index tensor (older code fed those) picks the same rows.
    out = table(torch.tensor([[1.0, 2.0], [4.0, 2.0]]))
    torch.testing.assert_close(out, weight[torch.tensor([[0, 1], [3, 1]])])
    out.sum().backward()
    assert torch.equal(table.weight.grad[1], torch.zeros(3)) and table.weight.grad[0].eq(1).all()
    renormed = t7.load_model(module('nn.LookupTable', version=4, weight=weight.clone(), paddingValue=0, maxNorm=1.0,
                                    shouldScaleGradByFreq=False))
    scripted = torch.jit.script(t7.load_model(module('nn.LookupTable', version=4, weight=weight.clone(),
                                                     paddingValue=0, maxNorm=1.0, shouldScaleGradByFreq=False)))
    for m in (renormed, scripted):
        y = m(torch.tensor([3, 1]))
        assert torch.allclose(y.norm(dim=1), torch.tensor([1.0, weight[0].norm()]), atol=1e-6)
        # Lua renormalises the referenced rows of the weight itself, not only the output.
        torch.testing.assert_close(m.weight[2], y[0])
        torch.testing.assert_close(m.weight[3], weight[3])


def test_convolution_map_trains_only_its_connections():
    table = torch.tensor([[1, 1], [3, 1], [2, 2]], dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(3, 2, 3, generator=g), torch.randn(2, generator=g)
    layer = t7.load_model(module('nn.SpatialConvolutionMap', connTable=table, kW=3, kH=2, dW=1, dH=2,
                                 nInputPlane=3, nOutputPlane=2, weight=weight, bias=bias)).train()
    x = torch.randn(2, 3, 6, 7, generator=g)
    out = layer(x)
    first = F.conv2d(x[:, :1], weight[0][None, None], stride=(2, 1)) + \
        F.conv2d(x[:, 2:], weight[1][None, None], stride=(2, 1))
    torch.testing.assert_close(out[:, 0], (first + bias[0])[:, 0])
    torch.testing.assert_close(out[:, 1], F.conv2d(x[:, 1:2], weight[2][None, None], stride=(2, 1))[:, 0] + bias[1])
    out.sum().backward()
    assert layer.weight.grad.shape == (3, 2, 3) and [p.shape for p in layer.parameters()] == [(3, 2, 3), (2,)]
    assert torch.equal(t7.to_lua(layer).connTable, table)


def test_cudnn_softmax_normalises_whole_samples():
    x = torch.randn(3, 2, 2)
    out, built = forward(module('cudnn.SoftMax', algorithm='CUDNN_SOFTMAX_ACCURATE'), x)
    torch.testing.assert_close(out, x.flatten().softmax(0).view_as(x))
    out, _ = forward(module('nn.SoftMax'), x)
    torch.testing.assert_close(out, x.softmax(0))
    out, _ = forward(module('cudnn.LogSoftMax'), x[None])
    torch.testing.assert_close(out, x.flatten().log_softmax(0).view(1, 3, 2, 2))
    with pytest.raises(t7.T7Error, match=r'cannot save nn.SoftMax at model with instance=True'):
        t7.to_lua(named(built, 'nn.SoftMax'))


def test_average_pooling_without_divide_scales_the_averages():
    x = torch.randn(1, 2, 5, 5)
    obj = module('nn.SpatialAveragePooling', kW=3, kH=3, dW=2, dH=2, padW=1, padH=1, ceil_mode=False,
                 count_include_pad=False, divide=False)
    out, built = forward(obj, x)
    # Lua multiplies the averages by kW*kH: border windows are not their sums when the padding is not counted.
    torch.testing.assert_close(out, F.avg_pool2d(x, 3, 2, 1, count_include_pad=False) * 9)
    written = t7.to_lua(built)
    assert written.divide is False and written.count_include_pad is False and written.padW == 1
    cudnn = module('cudnn.SpatialAveragePooling', kW=2, kH=2, dW=2, dH=2, padW=0, padH=0, ceil_mode=False,
                   divide=False)
    with pytest.raises(t7.T7Error, match=r'cudnn.SpatialAveragePooling at model: divide=false, which cudnn refuses'):
        t7.load_model(cudnn)


def test_volumetric_max_pooling_is_written_as_version_2():
    pool = nn.MaxPool3d(2, 2, ceil_mode=True)
    written = t7.to_lua(pool)
    assert written.typename == 'nn.VolumetricMaxPooling' and written.version == 2 and written.ceil_mode is True
    x = torch.randn(1, 1, 5, 5, 5)
    torch.testing.assert_close(t7.load_model(saved(written))(x), pool(x))


def test_local_normalisations_built_in_python_match_lua():
    for case, layer in [('SpatialContrastiveNormalization_k5', SpatialContrastiveNormalization(3, torch.ones(5, 5))),
                        ('SpatialSubtractiveNormalization_1d',
                         SpatialSubtractiveNormalization(2, torch.tensor([1.0, 2.0, 1.0])))]:
        x, expected = t7.load(ZOO / f'{case}.input.t7'), t7.load(ZOO / f'{case}.output.t7')
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    # A 1-D kernel: Lua's contrastive normalisation hands one kernel tensor to both parts, normalised twice.
    contrastive = SpatialContrastiveNormalization(4, torch.tensor([1.0, 2.0, 1.0]))
    subtractive, divisive = contrastive.subtractive, contrastive.divisive
    torch.testing.assert_close(subtractive.kernel, torch.tensor([1.0, 2.0, 1.0]) / 16)
    torch.testing.assert_close(divisive.kernel, torch.tensor([1.0, 2.0, 1.0]) / 8)
    back = t7.load_model(saved(t7.to_lua(contrastive)))
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(back(x), contrastive(x))


def test_unconvertible_fields_name_the_class_and_its_place():
    bad = [
        (module('nn.SpatialCrossMapLRN', size=4, alpha=1e-4, beta=0.75, k=1), 'field size must be an odd positive'),
        (module('nn.SpatialConvolutionMap', connTable=torch.zeros(2, 2), kW=3, kH=3, weight=torch.ones(2, 3, 3),
                bias=torch.ones(1)), r'field connTable must be a K x 2 table of 1-based \{input plane, output plane\}'),
        (module('nn.AddConstant', constant_scalar=torch.ones(3), inplace=False), 'a tensor constant_scalar'),
        (module('nn.Normalize', p=0, eps=1e-10), r'field p must be a positive number'),
        (module('nn.RReLU', lower=0.5, upper=0.1, inplace=False), 'needs 0 <= lower <= upper'),
        (module('nn.SpatialConvolutionLocal', nInputPlane=1, nOutputPlane=1, iW=4, iH=4, kW=3, kH=3, dW=1, dH=1,
                padW=0, padH=0, oW=3, oH=2, weight=torch.ones(2, 2, 1, 1, 3, 3), bias=torch.ones(1, 2, 2)),
         'field oW must be 2'),
    ]
    for obj, message in bad:
        net = module('nn.Sequential', modules=[module('nn.Identity'), obj])
        with pytest.raises(t7.T7Error, match=rf'^{obj.typename} at model.modules\[1\]: .*{message}'):
            t7.load_model(net)


def test_plain_pytorch_modules_save_as_their_lua_classes():
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    net = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, 2, 1, 1), nn.ELU(0.5), nn.ReflectionPad2d((1, 0, 2, 1)),
                        nn.Conv2d(4, 8, 3), nn.PixelShuffle(2), nn.PReLU(2), nn.AdaptiveAvgPool2d((3, 2)),
                        nn.Hardtanh(-0.5, 0.5), nn.Tanh()).eval()
    lua = t7.to_lua(net)
    assert [m.typename for m in lua.modules] == [
        'nn.SpatialFullConvolution', 'nn.ELU', 'nn.SpatialReflectionPadding', 'nn.SpatialConvolution',
        'nn.PixelShuffle', 'nn.PReLU', 'nn.SpatialAdaptiveAveragePooling', 'nn.HardTanh', 'nn.Tanh']
    assert (lua.modules[0].adjW, lua.modules[2].pad_t, lua.modules[5].nOutputPlane) == (1, 2, 2)
    x = torch.randn(2, 3, 4, 5, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(t7.load_model(saved(lua))(x), net(x))


def test_save_model_refuses_leaf_modules_lua_cannot_run():
    refused = [
        (nn.MaxPool2d(2, return_indices=True), 'returns no indices'),
        (named(nn.ConstantPad2d(1, 0.5), 'nn.SpatialZeroPadding'), 'it pads with 0.5'),
        (named(nn.ConvTranspose2d(4, 4, 3, groups=2), 'cudnn.SpatialFullConvolution'),
         'full convolutions have no groups'),
        (nn.AvgPool3d(2, padding=1), 'no padding, ceil mode or divisor'),
        (nn.Conv2d(2, 2, 3, dilation=2), 'name it nn.SpatialDilatedConvolution'),
        (nn.Conv2d(2, 2, 3, padding='same'), 'pad with zeros by a number of pixels'),
        (named(nn.BatchNorm2d(3, affine=False), 'cudnn.SpatialBatchNormalization'), 'always affine'),
        (named(nn.AdaptiveMaxPool2d((None, 2)), 'nn.SpatialAdaptiveMaxPooling'), 'both output sizes'),
    ]
    for module_, message in refused:
        with pytest.raises(t7.T7Error, match=rf'cannot save .* at model: .*{message}'):
            t7.to_lua(module_)


def test_one_hot_and_spatial_softmaxes():
    out, one_hot = forward(module('nn.OneHot', outputSize=4), torch.tensor([[1, 3], [4, 2]]))
    assert out.dtype == torch.float32 and out.shape == (2, 2, 4)
    assert out.argmax(-1).tolist() == [[0, 2], [3, 1]] and out.sum().item() == 4
    assert one_hot.double()(torch.tensor([2.0])).dtype == torch.float64
    assert t7.to_lua(one_hot).outputSize == 4
    # char-rnn declares its own class named plain OneHot, with nn.OneHot's field and forward; it is written back so
    out, char_rnn = forward(module('OneHot', outputSize=3), torch.tensor([3, 1]))
    assert out.tolist() == [[0, 0, 1], [1, 0, 0]] and t7.to_lua(char_rnn).typename == 'OneHot'
    # A char-rnn trained on the CPU is all doubles: its OneHot outputs doubles into the Linear after it.
    graph = t7.to_lua(nn.Sequential(char_rnn, nn.Linear(3, 2).double()))
    graph.modules[0].output = torch.empty(0, dtype=torch.float64)
    out, built = forward(graph, torch.tensor([3, 1]))
    assert out.dtype == torch.float64 and t7.to_lua(built).modules[0]._type == 'torch.DoubleTensor'
    x = torch.randn(2, 3, 2, 2)
    for typename in ('nn.SpatialSoftMax', 'cudnn.SpatialSoftMax'):
        out, built = forward(module(typename), x)
        torch.testing.assert_close(out, x.softmax(1))
    out, built = forward(module('cudnn.SpatialLogSoftMax', algorithm='CUDNN_SOFTMAX_LOG',
                                mode='CUDNN_SOFTMAX_MODE_CHANNEL'), x[0])
    torch.testing.assert_close(out, x[0].log_softmax(0))
    written = t7.to_lua(built)
    assert (written.typename, written.algorithm, written.mode) == ('cudnn.SpatialLogSoftMax', 'CUDNN_SOFTMAX_LOG',
                                                                   'CUDNN_SOFTMAX_MODE_CHANNEL')


def test_depthwise_convolution_reads_planes_as_thnn_does():
    g = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(2, 3, 3, 3, generator=g), torch.randn(2, 3, generator=g)
    obj = module('nn.SpatialDepthWiseConvolution', nInputPlane=3, nOutputPlane=2, kW=3, kH=3, dW=1, dH=1, padW=1,
                 padH=0, weight=weight.view(2, 27), bias=bias)
    x = torch.randn(2, 3, 4, 6, generator=g)
    out, _ = forward(obj, x)
    # THNN swaps an input plane's height and width (it reads a 4 x 6 plane as 6 rows of 4), so the output is
    # 2 x 6 x 4 x 4; output planes go input plane by input plane, each with its 2 kernels.
    expected = F.conv2d(x.reshape(2, 3, 6, 4), weight.transpose(0, 1).reshape(6, 1, 3, 3), bias.t().reshape(6),
                        padding=(0, 1), groups=3)
    assert out.shape == (2, 6, 4, 4)
    torch.testing.assert_close(out, expected)


def test_local_normalisation_files_from_2012():
    # Before October 2012 the estimators convolved each plane on its own (one-to-one SpatialConvolutionMaps) and
    # added the planes up with nn.Sum.
    planes, one_to_one = 3, torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])

    def per_plane(kernel):
        kh, kw = kernel.shape
        return module('nn.SpatialConvolutionMap', connTable=one_to_one, kW=kw, kH=kh, dW=1, dH=1,
                      nInputPlane=planes, nOutputPlane=planes, weight=kernel.expand(planes, kh, kw).clone(),
                      bias=torch.zeros(planes))

    for kernel, maps in [(torch.ones(3, 5), lambda k: [per_plane(k)]),
                         (torch.tensor([1.0, 2.0, 1.0]), lambda k: [per_plane(k.view(1, 3)), per_plane(k.view(3, 1))])]:
        current = SpatialSubtractiveNormalization(planes, kernel)
        k = current.kernel if kernel.dim() == 2 else current.mean_map_weight[0, 0]
        pad_w, pad_h = current.pad_w, current.pad_h
        old = module('nn.SpatialSubtractiveNormalization', nInputPlane=planes, kernel=current.kernel,
                     coef=torch.zeros(1, 1, 1), meanestimator=module('nn.Sequential', modules=[
                         module('nn.SpatialZeroPadding', pad_l=pad_w, pad_r=pad_w, pad_t=pad_h, pad_b=pad_h),
                         *maps(k), module('nn.Sum', dimension=1), module('nn.Replicate', nfeatures=planes, dim=1)]),
                     subtractor=module('nn.CSubTable', gradInput={}), divider=module('nn.CDivTable', gradInput={}))
        x = torch.randn(planes, 7, 6)
        out, built = forward(old, x)
        torch.testing.assert_close(out, current(x))
        assert t7.to_lua(built).meanestimator.modules[-2].typename == 'nn.SpatialConvolution'


def test_sequential_that_takes_a_table_compiles():
    # word2vec's model: {word, contexts} -> two LookupTables -> MM(false, true) -> Sigmoid.
    lua = t7.to_lua(nn.Sequential(ParallelTable(LookupTable(10, 4), LookupTable(10, 4)), MM(False, True),
                                  nn.Sigmoid()))
    built = t7.load_model(lua)
    x = [torch.tensor([3]), torch.tensor([4, 7, 9])]
    scripted = torch.jit.script(built)
    assert scripted(x).shape == (1, 3) and torch.equal(scripted(x), built(x))
    assert lua_type(built) == 'nn.Sequential' and t7.to_lua(built).modules[1].typename == 'nn.MM'


def test_cudnn_temporal_convolution_and_clipped_relu():
    # cudnn.TemporalConvolution is a cudnn.SpatialConvolution over N x 1 x T x frame: kH/dH/padH run over time.
    n_in, n_out, k = 3, 4, 2
    weight, bias = torch.randn(n_out, n_in * k), torch.randn(n_out)
    lua = module('cudnn.TemporalConvolution', inputFrameSize=n_in, outputFrameSize=n_out, nInputPlane=1,
                 nOutputPlane=n_out, kW=n_in, kH=k, dW=1, dH=2, padW=0, padH=1, groups=1, weight=weight, bias=bias)
    x = torch.randn(2, 7, n_in)
    out, built = forward(lua, x)
    spatial = F.conv2d(x.unsqueeze(1), weight.view(n_out, 1, k, n_in), bias, stride=(2, 1), padding=(1, 0))
    torch.testing.assert_close(out, spatial.squeeze(3).transpose(1, 2))
    written = t7.to_lua(built)
    assert (written.kW, written.kH, written.dH, written.padH, tuple(written.weight.shape)) == (3, 2, 2, 1, (4, 6))
    torch.testing.assert_close(forward(written, x)[0], out)
    built.lua_type = 'nn.TemporalConvolution'
    with pytest.raises(t7.T7Error, match='nn.TemporalConvolution has no padding'):
        t7.to_lua(built)
    out, clipped = forward(module('cudnn.ClippedReLU', ceiling=2, inplace=False), torch.tensor([-1.0, 1.0, 3.0]))
    assert out.tolist() == [0, 1, 2] and t7.to_lua(clipped).ceiling == 2
    with pytest.raises(t7.T7Error, match=r'cudnn.ClippedReLU at model: field ceiling must be a number, found None'):
        t7.load_model(module('cudnn.ClippedReLU'))


def test_linear_without_bias_of_the_rnn_package():
    weight = torch.randn(4, 3)
    out, built = forward(module('nn.LinearNoBias', weight=weight, gradWeight=torch.zeros(4, 3)), torch.ones(2, 3))
    torch.testing.assert_close(out, weight.sum(1).expand(2, 4))
    written = t7.to_lua(built)
    assert written.typename == 'nn.LinearNoBias' and 'bias' not in written.fields and written.gradWeight.shape == (4, 3)


def test_data_parallel_table_runs_its_replica(tmp_path):
    # imagenet-multiGPU's alexnet: features in a DataParallelTable, saved from two GPUs, then the classifier.
    features = t7.to_lua(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    dpt = module('nn.DataParallelTable', dimension=1, gpuAssignments=[1, 2], modules=[features],
                 typeStr='torch.CudaTensor')
    lua = module('nn.Sequential', modules=[dpt, t7.to_lua(View(4 * 3 * 3)), t7.to_lua(nn.Linear(36, 2))])
    x = torch.randn(5, 3, 5, 5)
    out, built = forward(lua, x)
    plain, _ = forward(module('nn.Sequential', modules=[features] + lua.modules[1:]), x)
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(torch.jit.script(built)(x), out)
    assert lua_string(lua).splitlines()[2] == '  (1): DataParallelTable: 2 x nn.Sequential {'
    t7.save_model(tmp_path / 'dpt.t7', built)
    written = t7.load(tmp_path / 'dpt.t7').modules[0]
    assert (written.typename, written.version, written.gpuAssignments, written.dimension) == (
        'nn.DataParallelTable', 2, [1], 1)
    torch.testing.assert_close(t7.load_model(tmp_path / 'dpt.t7')(x), out)


def test_imagine_nn_poolings_and_response_normalization():
    # inn (2015 models converted from caffe): nn's classes with ceil mode forced on, and caffe's LRN.
    x = torch.randn(2, 3, 8, 8)
    for typename, pool in [('inn.SpatialMaxPooling', F.max_pool2d), ('inn.SpatialAveragePooling', F.avg_pool2d)]:
        out, built = forward(module(typename, kW=3, kH=3, dW=2, dH=2, padW=0, padH=0, ceil_mode=False,
                                    count_include_pad=True, divide=True), x)
        torch.testing.assert_close(out, pool(x, 3, 2, ceil_mode=True))
        assert out.shape == (2, 3, 4, 4)
        written = t7.to_lua(built)
        assert written.typename == typename and written.ceil_mode is True
    out, built = forward(module('inn.SpatialCrossResponseNormalization', size=3, alpha=0.5, beta=0.75, k=2), x)
    lrn, _ = forward(module('nn.SpatialCrossMapLRN', size=3, alpha=0.5, beta=0.75, k=2), x)
    torch.testing.assert_close(out, lrn)
    assert t7.to_lua(built).typename == 'inn.SpatialCrossResponseNormalization'


def test_max_unpooling_puts_values_back_where_its_pooling_found_them(tmp_path):
    # An ENet/SegNet-style encoder-decoder: the unpooling refers to the very pooling module of the encoder.
    pool = t7.to_lua(nn.MaxPool2d(2, 2))
    unpool = module('nn.SpatialMaxUnpooling', pooling=pool)
    lua = module('nn.Sequential', modules=[pool, module('nn.ReLU'), unpool])
    x = torch.randn(2, 3, 6, 4)
    out, built = forward(lua, x)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    torch.testing.assert_close(out, F.max_unpool2d(pooled.relu(), indices, 2, 2, output_size=(6, 4)))
    assert lua_string(lua).splitlines()[4] == ('  (3): nn.SpatialMaxUnpooling associated to '
                                               'nn.SpatialMaxPooling(2x2, 2,2)')
    t7.save_model(tmp_path / 'unpool.t7', built)
    written = t7.load(tmp_path / 'unpool.t7')
    assert written.modules[2].pooling is written.modules[0]
    torch.testing.assert_close(t7.load_model(tmp_path / 'unpool.t7')(x), out)
