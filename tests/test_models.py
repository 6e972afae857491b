"""Tests for models/ (ports of lcnn's and clcNet's model files) and util.py (rand_initialize, computeScore,
loadParams)."""
import json
import lzma
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchfile
from torch import nn

import models
import opts
import util
from layers import ChannelInterlace, PooledSpatialConvolution, lua_type, named
from layers.containers import Concat, ConcatTable
from layers.activation import Dropout, MulConstant
from layers.shape import View
from layers.tables import CAddTable
from models import find_modules, lua_apply, lua_children, parameters_lua_order
from layers.activation import SpatialDropout

FIXTURES = Path(__file__).parent / 'fixtures'

# The options behind the two Lua-written fixture models (see the fixtures README).
FIXTURE_ARGS = {
    'alexnet-lcnn': ['-netType', 'alexnet-lcnn', '-firstPool', '3', '-poolSize', '30', '-fcPool', '16',
                     '-classifierPool', '0', '-nClasses', '10'],
    'resnet8-lcnn': ['-netType', 'resnet-lcnn', '-depth', '8', '-pool1', '20', '-pool2', '20', '-pool3', '20',
                     '-pool4', '20', '-firstPool', '3', '-shortcutType', 'B'],
}


def create(*argv, seed=0):
    torch.manual_seed(seed)
    return models.create(opts.parse(list(argv)))


# --- expected parameter shapes, derived by hand from the Lua model files ----------------------------------------

def conv(n_out, n_in, k, bias=True):
    return [[n_out, n_in, k, k]] + ([[n_out]] if bias else [])


def bn(n):
    return [[n], [n]]


def pooled(n_in, n_out, k, pool):
    # Lua's PooledSpatialConvolution:parameters(): poolconv.weight, alignconv.bias, alignconv.weight
    return [[pool, n_in, 1, 1], [n_out], [n_out, pool, k, k]]


def expected_alexnet(n_classes):
    return (conv(96, 3, 11) + bn(96) + conv(256, 96, 5) + bn(256) + conv(384, 256, 3) + bn(384)
            + conv(384, 384, 3) + bn(384) + conv(256, 384, 3) + bn(256)
            + conv(4096, 256, 6) + bn(4096) + conv(4096, 4096, 1) + bn(4096) + conv(n_classes, 4096, 1))


def expected_alexnet_lcnn(n_classes, first=3, pool=100, fc=1024, classifier=0):
    shapes = (pooled(3, 64, 11, first) + bn(64) + pooled(64, 192, 5, pool) + bn(192)
              + pooled(192, 384, 3, pool) + bn(384) + pooled(384, 256, 3, pool) + bn(256)
              + pooled(256, 256, 3, pool) + bn(256))
    shapes += (pooled(256, 4096, 6, fc) if fc > 0 else conv(4096, 256, 6)) + bn(4096)
    shapes += (pooled(4096, 4096, 1, fc) if fc > 0 else conv(4096, 4096, 1)) + bn(4096)
    shapes += pooled(4096, n_classes, 1, classifier) if classifier > 0 else conv(n_classes, 4096, 1)
    return shapes


def expected_resnet18(conv3x3, first):
    """ResNet-18, shortcut B: `conv3x3(n_in, n_out)` gives a residual-path conv's shapes."""
    shapes = first + bn(64)
    n_in = 64
    for n in (64, 128, 256, 512):
        for block in range(2):
            shapes += conv3x3(n_in, n) + bn(n) + conv3x3(n, n) + bn(n)
            if n_in != n:
                shapes += conv(n, n_in, 1) + bn(n)
            n_in = n
    return shapes + [[1000, 512], [1000]]


def expected_clcnet(a, b, c, d):
    def block(n_in, n_out, g1, g2):
        return conv(n_in, n_in // g1, 3, bias=False) + bn(n_in) + conv(n_out, n_in // g2, 1, bias=False) + bn(n_out)

    shapes = conv(32, 3, 3, bias=False) + bn(32) + block(32, 64, 16, 2) + block(64, 128, 32, 2)
    shapes += block(128, 128, 64, 2) * a + block(128, 256, 64, 2) + block(256, 256, 128, 2) * b
    shapes += block(256, 512, 128, 2) + block(512, 512, 256, 2) * c
    shapes += block(512, 1024, 256, 2) + block(1024, 1024, 512, 2) * d
    return shapes + [[1000, 1024], [1000]]


EXPECTED_SHAPES = {
    'alexnet': (['-nClasses', '7'], expected_alexnet(7)),
    # -fcPool 1024 (the default) would make a 151M-weight align conv: smaller pools keep the test light
    'alexnet-lcnn': (['-nClasses', '7', '-poolSize', '40', '-fcPool', '64', '-classifierPool', '8'],
                     expected_alexnet_lcnn(7, pool=40, fc=64, classifier=8)),
    'resnet': ([], expected_resnet18(lambda i, o: conv(o, i, 3), conv(64, 3, 7))),
    'resnet-lcnn': ([], expected_resnet18(lambda i, o: pooled(i, o, 3, 100), pooled(3, 64, 7, 3))),
    'clcnet': (['-a', '2', '-b', '1', '-c', '3', '-d', '1'], expected_clcnet(2, 1, 3, 1)),
    'clcneta': ([], expected_clcnet(1, 1, 5, 2)),
    'clcnetb': ([], expected_clcnet(1, 1, 7, 3)),
}


def shapes_of(model):
    return [list(p.shape) for p in parameters_lua_order(model)]


def test_registry_holds_every_net_type():
    assert models.NET_TYPES == ('alexnet', 'alexnet-lcnn', 'resnet', 'resnet-lcnn', 'clcnet', 'clcneta', 'clcnetb')
    assert set(models.LCNN_NET_TYPES) | set(models.CLCNET_NET_TYPES) == set(models.NET_TYPES)
    assert set(EXPECTED_SHAPES) == set(models.NET_TYPES)


def test_unknown_net_type_names_it_and_the_valid_ones():
    opt = opts.parse([])
    opt.netType = 'vgg'
    with pytest.raises(ValueError, match=r"unknown -netType 'vgg': use one of alexnet, alexnet-lcnn, .*clcnetb"):
        models.create(opt)


@pytest.mark.parametrize('net_type', models.NET_TYPES)
def test_every_parameter_shape_in_lua_order(net_type):
    args, expected = EXPECTED_SHAPES[net_type]
    model = create('-netType', net_type, *args)
    assert shapes_of(model) == expected
    assert sum(p.numel() for p in parameters_lua_order(model)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('net_type, extra, n_out', [
    ('alexnet', [], 7), ('alexnet-lcnn', ['-fcPool', '16'], 7), ('resnet', [], 1000), ('resnet-lcnn', [], 1000),
    ('clcnet', ['-a', '1', '-b', '1', '-c', '1', '-d', '1'], 1000), ('clcneta', [], 1000), ('clcnetb', [], 1000)])
def test_forward_gives_one_row_of_class_scores_per_image(net_type, extra, n_out):
    model = create('-netType', net_type, '-nClasses', '7', *extra).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 224, 224))
    assert y.shape == (2, n_out)
    assert torch.isfinite(y).all()
    if not net_type.startswith('clcnet'):
        # LogSoftMax outputs; clcNet ends at its Linear (it trains with CrossEntropyCriterion)
        torch.testing.assert_close(y.exp().sum(1), torch.ones(2))


# --- the Lua-written fixtures ----------------------------------------------------------------------------------

def _conv_attrs(m):
    return {'nInputPlane': m.in_channels, 'nOutputPlane': m.out_channels, 'kW': m.kernel_size[1],
            'kH': m.kernel_size[0], 'dW': m.stride[1], 'dH': m.stride[0], 'padW': m.padding[1],
            'padH': m.padding[0], 'groups': m.groups}


def _pool_attrs(m):
    kH, kW = m.kernel_size
    dH, dW = m.stride
    padH, padW = (m.padding, m.padding) if isinstance(m.padding, int) else m.padding
    return {'kW': kW, 'kH': kH, 'dW': dW, 'dH': dH, 'padW': padW, 'padH': padH, 'ceil_mode': m.ceil_mode}


def describe(m):
    """The same record the fixture JSON holds for a Lua module: class, constructor fields, parameter shapes."""
    node = {'type': lua_type(m)}
    if isinstance(m, PooledSpatialConvolution):
        attrs = {k: getattr(m, k) for k in ('nInputPlane', 'nOutputPlane', 'kW', 'kH', 'dW', 'dH', 'padW', 'padH',
                                            'poolSize', 'sparseTh')}
        attrs.update({'lambda': m.lambda_, 'poolconv': _conv_attrs(m.poolconv),
                      'alignconv': _conv_attrs(m.alignconv)})
        return dict(node, attrs=attrs, params=shapes_of(m))
    if isinstance(m, nn.Conv2d):
        node['attrs'] = _conv_attrs(m)
    elif isinstance(m, nn.BatchNorm2d):
        node['attrs'] = {'eps': m.eps, 'momentum': m.momentum, 'affine': m.affine}
    elif isinstance(m, nn.ReLU):
        node['attrs'] = {'inplace': m.inplace}
    elif isinstance(m, nn.MaxPool2d):
        node['attrs'] = _pool_attrs(m)
    elif isinstance(m, nn.AvgPool2d):
        node['attrs'] = dict(_pool_attrs(m), count_include_pad=m.count_include_pad)
    elif isinstance(m, Dropout):
        node['attrs'] = {'p': m.p, 'v2': not m.v1}
    elif isinstance(m, View):
        node['attrs'] = {'size': list(m.sizes), 'numInputDims': m.num_input_dims}
    elif isinstance(m, Concat):
        node['attrs'] = {'dimension': m.dimension}
    elif isinstance(m, CAddTable):
        node['attrs'] = {'inplace': m.inplace}
    elif isinstance(m, MulConstant):
        node['attrs'] = {'constant_scalar': m.constant_scalar}
    if isinstance(m, (nn.Sequential, Concat, ConcatTable)):
        node['children'] = [describe(c) for c in lua_children(m)]
    else:
        node['params'] = shapes_of(m)
    return node


@pytest.mark.parametrize('name', sorted(FIXTURE_ARGS))
def test_module_tree_equals_the_lua_written_model(name):
    lua_tree = json.loads((FIXTURES / 'lua_model_trees.json').read_text())[name]
    assert describe(create(*FIXTURE_ARGS[name])) == lua_tree


def _lua_parameters(obj, params, bns):
    """Lua parameters() order and BatchNorm modules of a torchfile-read module tree."""
    typename = obj._typename.decode()
    fields = obj._obj
    if typename == 'cudnn.PooledSpatialConvolution':
        params += [fields[b'weight'], fields[b'bias'], fields[b'alignconv']._obj[b'weight']]
        return
    if typename == 'nn.SpatialBatchNormalization':
        bns.append(fields)
    if b'modules' in fields:
        for key in sorted(fields[b'modules']):
            _lua_parameters(fields[b'modules'][key], params, bns)
    else:
        params += [fields[k] for k in (b'weight', b'bias') if isinstance(fields.get(k), np.ndarray)]


@pytest.mark.parametrize('name', sorted(FIXTURE_ARGS))
def test_forward_equals_the_lua_forward_with_the_lua_weights(name, tmp_path):
    path = tmp_path / f'{name}.t7'
    with lzma.open(FIXTURES / f'{name}.t7.xz') as src, open(path, 'wb') as dst:
        shutil.copyfileobj(src, dst)
    lua_params, lua_bns = [], []
    _lua_parameters(torchfile.load(str(path), use_list_heuristic=False), lua_params, lua_bns)
    model = create(*FIXTURE_ARGS[name])
    params = parameters_lua_order(model)
    bns = find_modules(model, 'nn.SpatialBatchNormalization')
    assert len(params) == len(lua_params) and len(bns) == len(lua_bns)
    with torch.no_grad():
        for p, value in zip(params, lua_params):
            p.copy_(torch.from_numpy(value))
        for m, fields in zip(bns, lua_bns):
            m.running_mean.copy_(torch.from_numpy(fields[b'running_mean']))
            m.running_var.copy_(torch.from_numpy(fields[b'running_var']))
        x = torch.from_numpy(torchfile.load(str(FIXTURES / 'alexnet-lcnn.input.t7')))
        y = model.eval()(x)
    expected = torch.from_numpy(torchfile.load(str(FIXTURES / f'{name}.output.t7')))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-4)


# --- model options and quirks ---------------------------------------------------------------------------------

def test_pooled_layers_take_lambda_sparsity_and_logging_from_opt():
    model = create('-netType', 'alexnet-lcnn', '-lambda', '0.5', '-initialSparsity', '0.2', '-logSparsity',
                   '-fcPool', '32', '-classifierPool', '8')
    layers = [m for m in model.modules() if isinstance(m, PooledSpatialConvolution)]
    assert len(layers) == 8
    for layer in layers:
        assert layer.lambda_ == 0.5
        assert layer.sparseTh == 0.2 / math.sqrt(layer.kW * layer.kH * layer.poolSize)
        assert layer.log_sparsity is True
    assert [layer.poolSize for layer in layers] == [3, 100, 100, 100, 100, 32, 32, 8]


def test_alexnet_lcnn_batchnorm_eps_and_dense_fully_connected_layers():
    model = create('-netType', 'alexnet-lcnn', '-fcPool', '0', '-nClasses', '5')
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert shapes_of(model) == expected_alexnet_lcnn(5, fc=0)
    dense = [m for m in model[1] if isinstance(m, nn.Conv2d)]
    assert [lua_type(m) for m in dense] == ['cudnn.SpatialConvolution'] * 3


def test_resnet_lcnn_keeps_a_conv_dense_when_the_pool_is_not_smaller_than_its_vectors():
    # 64*7*7 = 3136 vectors in the first conv; 512*3*3 = 4608 in stage 4
    model = create('-netType', 'resnet-lcnn', '-depth', '8', '-firstPool', '3136', '-pool4', '4608')
    assert type(model[0]) is nn.Conv2d and lua_type(model[0]) == 'cudnn.SpatialConvolution'
    stage4 = model[7][0][0][0]
    assert [type(m) for m in stage4 if not isinstance(m, (nn.BatchNorm2d, nn.ReLU))] == [nn.Conv2d, nn.Conv2d]
    model = create('-netType', 'resnet-lcnn', '-depth', '8', '-firstPool', '3135', '-pool4', '4607')
    assert isinstance(model[0], PooledSpatialConvolution) and model[0].poolSize == 3135
    assert isinstance(model[7][0][0][0][0], PooledSpatialConvolution)


@pytest.mark.parametrize('depth, count', [(18, 11_694_312), (34, 21_806_184), (50, 25_583_592)])
def test_resnet_parameter_counts(depth, count):
    # torchvision's ResNet counts plus the conv biases the Lua file keeps (cudnn.SpatialConvolution has one)
    model = create('-netType', 'resnet', '-depth', str(depth))
    assert sum(p.numel() for p in parameters_lua_order(model)) == count


def test_resnet_bottleneck_tree():
    model = create('-netType', 'resnet', '-depth', '50')
    assert [len(stage) for stage in model[4:8]] == [3, 4, 6, 3]
    block = model[4][0]
    assert [lua_type(m) for m in block] == ['nn.ConcatTable', 'nn.CAddTable', 'cudnn.ReLU']
    path, shortcut = block[0]
    assert [list(m.weight.shape) for m in path if isinstance(m, nn.Conv2d)] == [
        [64, 64, 1, 1], [64, 64, 3, 3], [256, 64, 1, 1]]
    assert [lua_type(m) for m in shortcut] == ['cudnn.SpatialConvolution', 'nn.SpatialBatchNormalization']
    assert isinstance(model[4][1][0][1], nn.Identity)
    assert model[7][0][0][0][3].stride == (2, 2)


def test_resnet_shortcut_types():
    a = create('-netType', 'resnet', '-shortcutType', 'A')
    assert sum(p.numel() for p in a.parameters()) == 11_694_312 - 174_720
    pads = [m for m in a.modules() if isinstance(m, Concat)]
    assert len(pads) == 3
    assert [lua_type(m) for m in pads[0]] == ['nn.Identity', 'nn.MulConstant']
    assert pads[0].dimension == 2 and pads[0][1].constant_scalar == 0
    subsample = a[5][0][0][1][0]
    assert lua_type(subsample) == 'nn.SpatialAveragePooling' and subsample.stride == (2, 2)
    with torch.no_grad():
        assert a.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    c = create('-netType', 'resnet', '-shortcutType', 'C')
    assert sum(p.numel() for p in c.parameters()) == 11_694_312 + 8576 + 16_768 + 66_304 + 263_680
    assert not any(isinstance(m, nn.Identity) for m in c.modules())


@pytest.mark.parametrize('name, value, message', [
    ('depth', 20, r'invalid -depth 20 for resnet: use one of 8, 18, 34, 50, 101, 152'),
    ('shortcutType', 'D', r"invalid -shortcutType 'D': use A, B or C"),
])
def test_resnet_option_errors(name, value, message):
    # opts.parse refuses these first (test_opts.py); the model file still does for an opt built another way
    opt = opts.parse(['-netType', 'resnet'])
    setattr(opt, name, value)
    with pytest.raises(ValueError, match=message):
        models.create(opt)


def test_resnet_lr_regime():
    for net_type in ('resnet', 'resnet-lcnn'):
        model = create('-netType', net_type, '-depth', '8')
        opt = opts.parse(['-LR', '0.5'])
        table = {epoch: model.LRregime(epoch, 'sgd', opt) for epoch in (1, 7, 8, 16, 17, 25, 26, 30, 31, 90)}
        assert table == {
            1: ({'learningRate': 0.05, 'weightDecay': 5e-4}, True),
            7: ({'learningRate': 0.05, 'weightDecay': 5e-4}, False),
            8: ({'learningRate': 3e-2 * 0.5, 'weightDecay': 5e-4}, True),
            16: ({'learningRate': 3e-2 * 0.5, 'weightDecay': 5e-4}, False),
            17: ({'learningRate': 5e-3, 'weightDecay': 0}, True),
            25: ({'learningRate': 5e-3, 'weightDecay': 0}, False),
            26: ({'learningRate': 1.5e-3, 'weightDecay': 0}, True),
            30: ({'learningRate': 1.5e-3, 'weightDecay': 0}, False),
            31: ({'learningRate': 5e-4, 'weightDecay': 0}, True),
            90: ({'learningRate': 5e-4, 'weightDecay': 0}, False),
        }
        with pytest.raises(ValueError, match='epoch 0'):
            model.LRregime(0, 'sgd', opt)
    for net_type in ('alexnet', 'alexnet-lcnn', 'clcneta'):
        assert not hasattr(create('-netType', net_type), 'LRregime')


def test_clcnet_tree_and_stage_options():
    model = create('-netType', 'clcneta')
    blocks = [m for m in model if isinstance(m, nn.Sequential)]
    assert len(blocks) == 2 + 1 + 1 + 1 + 1 + 5 + 1 + 2
    assert [lua_type(m) for m in blocks[0]] == [
        'cudnn.SpatialConvolution', 'nn.SpatialBatchNormalization', 'nn_plus.ChannelInterlace',
        'cudnn.SpatialConvolution', 'nn.SpatialBatchNormalization', 'cudnn.ReLU']
    interlace = blocks[0][2]
    assert isinstance(interlace, ChannelInterlace) and (interlace.channel, interlace.group) == (32, 16)
    assert [m.groups for m in blocks[-1] if isinstance(m, nn.Conv2d)] == [512, 2]
    assert [lua_type(m) for m in model[-3:]] == ['cudnn.SpatialAveragePooling', 'nn.View', 'nn.Linear']
    assert model[-2].num_input_dims == 3
    opt = opts.parse(['-netType', 'clcneta'])
    opt.a = 0
    with pytest.raises(ValueError, match='-a -b -c -d all >= 1'):
        models.create(opt)


def test_clcnet_initialisation_is_fb_resnet_torch():
    model = create('-netType', 'clcnetb')
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    big = [m for m in convs if m.weight.numel() >= 100_000]
    for m in big:
        n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / n), rel=0.05)
        assert m.weight.mean().abs().item() < 0.1 * math.sqrt(2 / n)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    fc = model[-1]
    assert (fc.bias == 0).all() and fc.weight.abs().max().item() <= 1 / math.sqrt(1024)


def test_lua_default_initialisation():
    model = create('-netType', 'alexnet')
    first = model[0][0][0]
    bound = 1 / math.sqrt(3 * 11 * 11)
    assert first.weight.abs().max().item() <= bound and first.bias.abs().max().item() <= bound
    assert first.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    bn_weights = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    # Torch7's BatchNormalization:reset draws weights from U(0, 1)
    assert 0 <= bn_weights.min().item() and bn_weights.max().item() <= 1
    assert bn_weights.mean().item() == pytest.approx(0.5, abs=0.02)


def test_spatial_dropout_is_torch7s():
    layer = SpatialDropout(0.25)
    assert lua_type(layer) == 'nn.SpatialDropout'
    x = torch.rand(4, 64, 3, 3) + 1
    torch.testing.assert_close(layer.eval()(x), x * 0.75)
    torch.manual_seed(0)
    y = layer.train()(x)
    kept = (y == x).flatten(2).all(2)
    dropped = (y == 0).flatten(2).all(2)
    assert (kept | dropped).all() and 0.1 < dropped.float().mean().item() < 0.4


# --- Lua tree walks ----------------------------------------------------------------------------------------------

def test_walks_do_not_enter_pooled_convolutions():
    layer = PooledSpatialConvolution(3, 4, 3, 3, poolSize=5)
    dense = named(nn.Conv2d(4, 2, 1), 'cudnn.SpatialConvolution')
    norm = nn.BatchNorm2d(4)
    model = nn.Sequential(layer, norm, nn.Sequential(dense))
    seen = []
    lua_apply(model, seen.append)
    assert seen == [model, layer, norm, model[2], dense]
    assert find_modules(model, 'cudnn.SpatialConvolution') == [dense]
    expected = [layer.poolconv.weight, layer.alignconv.bias, layer.alignconv.weight, norm.weight, norm.bias,
                dense.weight, dense.bias]
    assert [id(p) for p in parameters_lua_order(model)] == [id(p) for p in expected]
    layer.noBias()
    assert [id(p) for p in parameters_lua_order(layer)] == [id(layer.poolconv.weight), id(layer.alignconv.weight)]


# --- util.rand_initialize -------------------------------------------------------------------------------------

def test_rand_initialize_as_model_lua_applies_it():
    model = create('-netType', 'resnet-lcnn', '-depth', '8')
    pooled_before = {id(m): (m.poolconv.weight.clone(), m.alignconv.weight.clone(), m.alignconv.bias.clone())
                     for m in model.modules() if isinstance(m, PooledSpatialConvolution)}
    bn_before = [m.weight.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    torch.manual_seed(1)
    lua_apply(model, util.rand_initialize)

    shortcuts = [m for m in model.modules() if type(m) is nn.Conv2d and m not in
                 {c for p in model.modules() if isinstance(p, PooledSpatialConvolution)
                  for c in (p.poolconv, p.alignconv)}]
    assert [list(m.weight.shape) for m in shortcuts] == [[128, 64, 1, 1], [256, 128, 1, 1], [512, 256, 1, 1]]
    for m in shortcuts:
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / m.in_channels), rel=0.05)
        assert (m.bias == 0).all()
    fc = model[10]
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02) and (fc.bias == 0).all()
    for m in model.modules():
        if isinstance(m, PooledSpatialConvolution):
            for before, after in zip(pooled_before[id(m)], (m.poolconv.weight, m.alignconv.weight,
                                                             m.alignconv.bias)):
                assert torch.equal(before, after)
    # the typo'd BatchNorm branch never fires
    for before, m in zip(bn_before, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]):
        assert torch.equal(before, m.weight)


def test_rand_initialize_counts_every_input_plane_of_a_grouped_conv():
    layer = named(nn.Conv2d(256, 256, 3, groups=64), 'cudnn.SpatialConvolution')
    torch.manual_seed(2)
    util.rand_initialize(layer)
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.05)
    other = nn.BatchNorm2d(3)
    before = other.weight.clone()
    util.rand_initialize(other)
    assert torch.equal(other.weight, before)


# --- util.compute_score -----------------------------------------------------------------------------------------

def test_compute_score_counts_top1_and_top5():
    output = torch.tensor([
        [0.0, 9, 1, 2, 3, 4, 5, 6, 7, 8],      # target 1 ranks first
        [9.0, 8, 7, 0, 1, 2, 3, 4, 5, 6],      # target 4 ranks eighth
        [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0],      # target 2 ranks third
    ])
    top1, top5 = util.compute_score(output, torch.tensor([1, 4, 2]), 1)
    assert (top1, top5) == (1 / 3 * 100, 2 / 3 * 100)


@pytest.mark.parametrize('row, order', [
    # expected orders come from Torch7's C quicksort (THTensor_(quicksortdescend)), compiled and run
    ([0.0] * 12, [7, 5, 10, 9, 8, 0, 6, 1, 4, 3, 2, 11]),
    ([0.0] * 10, list(range(10))),
    ([1.0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0],
     [5, 9, 17, 12, 0, 3, 13, 18, 2, 16, 15, 14, 4, 6, 11, 10, 1, 8, 7, 19]),
    ([1.0, math.nan, 3.0, math.nan, 2.0], [0, 1, 2, 3, 4]),
])
def test_torch7_sort_order(row, order):
    assert util._torch7_sort_descending(row) == order


def test_compute_score_breaks_ties_like_torch7():
    zeros = torch.zeros(4, 1000)
    # Torch7 ranks an all-equal row of 1000 as 665, 663, 669, 668, 667, ... (C quicksort, see above)
    top1, top5 = util.compute_score(zeros, torch.tensor([665, 663, 667, 0]), 1)
    assert (top1, top5) == (25.0, 75.0)
    row = torch.tensor([[1.0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]] * 3)
    assert util.compute_score(row, torch.tensor([5, 0, 3]), 1) == (1 / 3 * 100, 2 / 3 * 100)


def test_compute_score_sums_crops_and_fills_the_confusion_matrix():
    crops = torch.tensor([
        [0.0, 5, 4, 0, 0, 0],   # image 1, crop 1 prefers class 1
        [0.0, 0, 3, 0, 0, 0],   # image 1, crop 2 prefers class 2: summed, class 2 wins
        [1.0, 0, 0, 0, 0, 2],   # image 2
        [1.0, 0, 0, 0, 0, 2],
    ])
    conf = torch.zeros(6, 6)
    top1, top5 = util.compute_score(crops, torch.tensor([2, 0]), 2, conf)
    assert (top1, top5) == (50.0, 100.0)
    expected = torch.zeros(6, 6)
    expected[2, 2] = 1
    expected[5, 0] = 1
    assert torch.equal(conf, expected)


def test_compute_score_errors():
    with pytest.raises(ValueError, match='not groups of nCrops=2'):
        util.compute_score(torch.zeros(3, 10), torch.zeros(1), 2)
    # below 5 classes top-5 is top-n (Lua's narrow failed)
    assert util.compute_score(torch.tensor([[0.0, 1, 2], [3, 2, 1]]), torch.tensor([0, 1]), 1) == (0.0, 100.0)


# --- util.load_params --------------------------------------------------------------------------------------------

def test_load_params_copies_parameters_and_batchnorm_statistics():
    source = create('-netType', 'resnet-lcnn', '-depth', '8', seed=1)
    target = create('-netType', 'resnet-lcnn', '-depth', '8', seed=2)
    for m in find_modules(source, 'nn.SpatialBatchNormalization'):
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2)
    util.load_params(target, source)
    for p, q in zip(parameters_lua_order(target), parameters_lua_order(source)):
        assert torch.equal(p, q)
    for m, s in zip(find_modules(target, 'nn.SpatialBatchNormalization'),
                    find_modules(source, 'nn.SpatialBatchNormalization')):
        assert torch.equal(m.running_mean, s.running_mean) and torch.equal(m.running_var, s.running_var)


def test_load_params_copies_by_element_count_like_torch7():
    source = nn.Sequential(nn.Linear(4, 6))
    target = nn.Sequential(named(nn.Conv2d(4, 6, 1), 'cudnn.SpatialConvolution'))
    util.load_params(target, source)
    assert torch.equal(target[0].weight.flatten(), source[0].weight.flatten())
    with pytest.raises(ValueError, match=r'parameter 1 has 24 elements in the saved model \(6x4\), '
                                         r'this network needs 32 \(8x4x1x1\)'):
        util.load_params(nn.Sequential(nn.Conv2d(4, 8, 1)), source)
    with pytest.raises(ValueError, match='the saved model has 2 parameter tensors, this network needs 4'):
        util.load_params(nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2)), source)
