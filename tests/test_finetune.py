"""Fine-tuning Lua-trained models whose parameters are views of one flat storage (as getParameters leaves them):
one real train.lua step reproduced through -retrain and -loadParams, and main.py runs with -retrain / -resume."""
import lzma
import os
import re
import pathlib

import pytest
import torch
from torch import nn

import model as model_setup
import models
import opts
import runtime
import t7
import train
from layers.activation import Dropout, LogSoftMax
from layers.shape import View
from layers.PooledSpatialConvolution import PooledSpatialConvolution
from errors import UserError
from tests.drivers import run_main

ZOO = pathlib.Path(__file__).parent / 'fixtures' / 'nn_zoo'
FLAT = str(ZOO / 'flat_lcnn.model.t7')
DIGITS = ['-dataset', 'digits', '-imageSize', '24', '-cropSize', '24', '-batchSize', '8', '-nDonkeys', '0',
          '-noProgress']


def fixture(name):
    return t7.load(str(ZOO / f'flat_lcnn.{name}.t7'))


def flat_lcnn(opt):
    """The network of flat_lcnn.model.t7 as a model file would create it (see the nn_zoo README)."""
    def pooled(*args):
        return models.pooled_convolution(opt, *args)

    features = nn.Sequential(
        pooled(3, 8, 5, 5, 2, 2, 2, 2, 3), models.batch_norm(8, 1e-3), models.relu(True),
        models.max_pooling(3, 3, 2, 2),
        pooled(8, 16, 3, 3, 1, 1, 1, 1, 6), models.batch_norm(16, 1e-3), models.relu(True),
        models.max_pooling(3, 3, 2, 2))
    classifier = nn.Sequential(
        Dropout(0.5), pooled(16, 32, 2, 2, 1, 1, 0, 0, 8), models.batch_norm(32, 1e-3), models.relu(),
        Dropout(0.5), models.convolution(32, 10, 1, 1), View(10), LogSoftMax())
    return nn.Sequential(features, classifier)


class OneBatch:
    def __init__(self, inputs, labels):
        self.batch = (inputs, labels)

    def train_batches(self, opt, n):
        assert n == 1
        return iter([self.batch])


def lua_step(opt, monkeypatch):
    """train.lua's step of the fixture on the network model.lua sets up for `opt`: (trainer, network)."""
    net, criterion = model_setup.setup(opt, runtime.Dist())
    # The step used optim.sgd with weightDecay 5e-4, which a model file's LRregime gives as train.lua reads it.
    net.LRregime = lambda epoch, optim_type, opt: ({'learningRate': 0.01, 'weightDecay': 5e-4}, epoch == 1)
    # The two dropout masks Lua drew cannot be redrawn: each Dropout multiplies by its recorded noise.
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    noise = fixture('train_dropout_noise')
    assert len(dropouts) == len(noise) == 2
    for m, mask in zip(dropouts, noise):
        monkeypatch.setattr(m, 'forward', lambda x, mask=mask: x * mask)
    trainer = train.Trainer(net, criterion, opt)
    trainer.train(1, OneBatch(fixture('train_input'), fixture('train_labels') - 1))
    return trainer, net


def assert_like_lua_after_the_step(trainer, net):
    assert abs(trainer.loss_epoch - fixture('loss')) <= 1e-6
    flat = torch.cat([p.detach().reshape(-1) for p in models.parameters_lua_order(net)])
    # The L1 term moves the align weights by at most lr*lambda*sparseTh = 8.9e-6: a looser tolerance misses it.
    torch.testing.assert_close(flat, fixture('params_after'), rtol=0, atol=1e-6)
    after = t7.load_model(str(ZOO / 'flat_lcnn.model_after.t7'))
    stats = {n: b for n, b in net.named_buffers() if n.endswith(('running_mean', 'running_var'))}
    lua_stats = {n: b for n, b in after.named_buffers() if n.endswith(('running_mean', 'running_var'))}
    assert stats.keys() == lua_stats.keys() and len(stats) == 6
    for name, value in stats.items():
        torch.testing.assert_close(value, lua_stats[name], rtol=0, atol=1e-6)


def make_opt(tmp_path, *argv):
    opt = opts.parse(DIGITS + ['-noCheckpoint', '-epochSize', '1', *argv])
    opt.save = str(tmp_path)
    return opt


def test_retrain_step_reproduces_lua(tmp_path, capsys, monkeypatch):
    # -lambda is left at 0: a loaded layer keeps its own lambda (0.5 in the file), as the Lua backward reads it.
    opt = make_opt(tmp_path, '-retrain', FLAT, '-logSparsity')
    trainer, net = lua_step(opt, monkeypatch)
    assert_like_lua_after_the_step(trainer, net)
    # every layer prints its sparsity on each forward, as the Lua layer does under -logSparsity
    out = capsys.readouterr().out
    assert out.count(' sparse\n') == 3 and 'cudnn.PooledSpatialConvolution(8 -> 16, 3x3, pool6) \t 0.' in out


@pytest.mark.parametrize('lam, like_lua', [('0.5', True), ('0', False)])
def test_load_params_step_reproduces_lua(tmp_path, monkeypatch, lam, like_lua):
    # -loadParams copies the values into the network the model file creates, whose layers take -lambda.
    monkeypatch.setattr(models, 'create', flat_lcnn)
    opt = make_opt(tmp_path, '-loadParams', FLAT, '-lambda', lam, '-initialSparsity', '0.01')
    trainer, net = lua_step(opt, monkeypatch)
    assert all(m.lambda_ == float(lam) for m in net.modules() if isinstance(m, PooledSpatialConvolution))
    if like_lua:
        assert_like_lua_after_the_step(trainer, net)
    else:
        with pytest.raises(AssertionError, match='Tensor-likes are not close'):
            assert_like_lua_after_the_step(trainer, net)


def test_main_retrains_a_flat_lua_model_and_resumes_the_run(tmp_path, capsys):
    save = tmp_path / 'run'
    argv = DIGITS + ['-epochSize', '3']
    code, out, err = run_main(argv + ['-retrain', FLAT, '-nEpochs', '1', '-save', str(save)], capsys)
    assert code == 0, err
    assert 'Epoch: [1][3/3]\t' in out and 'Epoch: [1][TESTING SUMMARY]' in out
    code, out, err = run_main(argv + ['-resume', str(save), '-nEpochs', '2'], capsys)
    assert code == 0, err
    assert 'Epoch: [2][3/3]\t' in out and 'Epoch: [1][' not in out
    first, second = (t7.load_model(str(save / f'model_{n}.t7')) for n in (1, 2))
    assert all(not torch.equal(a, b) for a, b in zip(models.parameters_lua_order(first),
                                                     models.parameters_lua_order(second)))


def test_main_resumes_a_lua_run(tmp_path, capsys):
    # A run folder as Lua's train.lua leaves it: the model flattened by getParameters, optimState's dfdx flat.
    save = tmp_path / 'lua_run'
    save.mkdir()
    (save / 'model_1.t7').write_bytes(pathlib.Path(FLAT).read_bytes())
    dfdx = torch.randn(3171, generator=torch.Generator().manual_seed(0)) * 1e-3
    t7.save(str(save / 'optimState_1.t7'), {'learningRate': 0.01, 'learningRateDecay': 0.0, 'momentum': 0.9,
                                            'dampening': 0.0, 'weightDecay': 0, 'evalCounter': 3, 'dfdx': dfdx})
    code, out, err = run_main(DIGITS + ['-epochSize', '3', '-resume', str(save), '-nEpochs', '2'], capsys)
    assert code == 0, err
    assert f'Loading model from file: {save}/model_1.t7' in out and 'Epoch: [2][3/3]\t' in out
    state = t7.load(str(save / 'optimState_2.t7'))
    assert state['evalCounter'] == 6 and state['dfdx'].shape == (3171,)


def test_main_load_params_from_a_flat_lua_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, 'create', flat_lcnn)
    save = tmp_path / 'run'
    code, out, err = run_main(DIGITS + ['-loadParams', FLAT, '-epochSize', '3', '-nEpochs', '1', '-lambda', '0.5',
                                        '-save', str(save)], capsys)
    assert code == 0, err
    assert 'Epoch: [1][3/3]\t' in out and os.path.isfile(save / 'model_1.t7')


@pytest.mark.parametrize('crop, message', [
    ('48', r'-cropSize 48: the network makes an output of size \d+x10 from a batch of 2 3x48x48 images, not one row '
           r'per image \(a View sized for other images\)'),
    ('4', r'-cropSize 4: the network cannot take 3x4x4 images \(.*\); give the -cropSize \(and -imageSize\) it was '
          r'made for$')])
@pytest.mark.parametrize('test_only', [False, True])
def test_a_crop_the_lua_model_cannot_take_stops_before_the_first_batch(tmp_path, capsys, crop, message, test_only):
    save = tmp_path / 'run'
    argv = DIGITS[:2] + ['-imageSize', crop, '-cropSize', crop] + DIGITS[6:] + ['-epochSize', '2', '-retrain', FLAT,
                                                                               '-save', str(save)]
    code, out, err = run_main(argv + (['-testOnly'] if test_only else []), capsys)
    assert code == 1 and err.count('\n') == 1 and err.startswith('main.py: '), err
    assert re.search(message, err.strip()), err
    assert 'Epoch: [1]' not in out and not save.exists()


def test_the_input_size_check_leaves_modes_and_sparsity_logging_as_they_were(capsys):
    net = model_setup.load_model(FLAT, '-retrain').train()
    layers = [m for m in net.modules() if isinstance(m, PooledSpatialConvolution)]
    for m in layers:
        m.log_sparsity = True
    layers[0].eval()
    modes = {m: m.training for m in net.modules()}
    model_setup.check_input_size(net, opts.parse(DIGITS))
    assert capsys.readouterr().out == ''
    assert {m: m.training for m in net.modules()} == modes and all(m.log_sparsity for m in layers)


@pytest.mark.parametrize('argv, first_lr, says', [
    ([], 0.1, '=> {path} carries its own LRregime (Lua code, which does not run here) and holds a residual network: '
              'using the regime of models/resnet-lcnn.lua'),
    (['-netType', 'alexnet-lcnn'], 0.01, None),  # given: that file's regime (none: the default), as asked
])
def test_a_lua_resnet_s_own_regime_runs_without_net_type(tmp_path, capsys, argv, first_lr, says):
    # train.lua takes model.LRregime, the bytecode the file carries, over any -netType: for a ResNet file that is
    # models/resnet-lcnn.lua's regime (10x the default rate at epoch 1).
    path = tmp_path / 'resnet8-lcnn.t7'
    path.write_bytes(lzma.decompress((ZOO.parent / 'resnet8-lcnn.t7.xz').read_bytes()))
    opt = make_opt(tmp_path, '-retrain', str(path), *argv)
    net, _ = model_setup.setup(opt, runtime.Dist())
    out = capsys.readouterr().out
    regime = train.model_regime(net, opt)(1, 'sgd', opt)
    if says:
        assert regime[0]['learningRate'] == first_lr and says.format(path=path) in out
    else:
        assert regime[0]['learningRate'] == first_lr and 'carries its own LRregime' not in out


def test_a_plain_lua_model_with_a_regime_warns_that_the_default_runs(tmp_path, capsys):
    lua = t7.load(FLAT)
    lua.fields['LRregime'] = t7.LuaFunction(b'\x1bLJ\x02')
    path = tmp_path / 'with_regime.t7'
    t7.save(path, lua)
    model_setup.setup(make_opt(tmp_path, '-retrain', str(path)), runtime.Dist())
    assert (f'WARNING: {path} carries its own LRregime (Lua code, which does not run here) and -netType alexnet-lcnn '
            'defines none: the default regime runs') in capsys.readouterr().out


def test_retrain_of_a_checkpoint_table_takes_its_one_network(tmp_path, capsys):
    net, criterion = t7.load(FLAT), t7.TorchObject('nn.ClassNLLCriterion', {'sizeAverage': True})
    t7.save(tmp_path / 'one.t7', {'model': net, 'criterion': criterion, 'epoch': 3})
    t7.save(tmp_path / 'two.t7', {'model': net, 'ema': t7.load(FLAT)})
    loaded = model_setup.load_model(str(tmp_path / 'one.t7'), '-retrain')
    assert capsys.readouterr().out == f'-retrain {tmp_path / "one.t7"}: using the network at model of the table the ' \
                                      'file holds\n'
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), t7.load_model(FLAT)(x))
    with pytest.raises(UserError, match=re.escape(
            f'-retrain {tmp_path / "two.t7"}: cannot read it as a Torch7 model: it holds a Lua table, not an nn module; the nn modules in it: ema '
            f'(nn.Sequential), model (nn.Sequential); save the one to use as a file of its own: python -c "import t7; '
            f"t7.save_model('net.t7', t7.load_model(t7.find(t7.load('{tmp_path / 'two.t7'}'), 'ema')))\"")):
        model_setup.load_model(str(tmp_path / 'two.t7'), '-retrain')
