"""Tests of train.py / test.py / checkpoints.py: Lua log formats, optim.sgd/adam state, LR regimes, -breakBatch."""
import copy
import math
import os

import pytest
import torch
from torch import nn

import checkpoints
import optim as lua_optim
import opts
import t7
import test as lcnn_test
import runtime
import train
from errors import UserError, console
from layers.activation import LogSoftMax
from layers.shape import View
from layers.PooledSpatialConvolution import PooledSpatialConvolution

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
# optimState_sgd2.t7 was made by optim.sgd from this start on the loss 0.5*||x - 0.25||^2 (lr 0.1, momentum 0.9,
# dampening 0, weightDecay 5e-4); the start is what the saved state and parameters determine (loss 10).
SGD2_START = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0, -2.0, 0.75, 1.0]


def make_opt(tmp_path, *argv):
    opt = opts.parse(['-dataset', 'digits', '-nDonkeys', '0', '-noCheckpoint', *argv])
    opt.save = str(tmp_path)
    return opt


class FakeTrainLoader:
    def __init__(self, batches):
        self.batches = batches

    def train_batches(self, opt, n):
        assert n <= len(self.batches)
        return iter(self.batches[:n])


class FakeTestLoader:
    """size() images whose labels are 0..n-1 mod classes; get() slices them like the real loaders."""

    def __init__(self, inputs, labels):
        self.inputs, self.labels = inputs, labels

    def size(self):
        return len(self.labels)

    def get(self, start, stop):
        return self.inputs[start:stop], self.labels[start:stop]

    def test_batches(self, opt):
        n = self.size() // opt.batchSize
        return iter([self.get(k * opt.batchSize, (k + 1) * opt.batchSize) for k in range(n)])


class FixedScores(nn.Module):
    """Returns a fixed table of scores for each input row (whose first value picks the row); no gradient reaches
    its one parameter, so training leaves it alone and every printed number is known in advance."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.table[x[:, 0].long()] + 0 * self.weight


@pytest.fixture
def fixed_time(monkeypatch):
    monkeypatch.setattr(runtime.Timer, 'time', lambda self: 0.125)


def test_queue_keeps_lua_order_and_sum():
    q = train.Queue()
    assert q.popleft() is None and q.size() == 0
    for v in (1.5, 2.0, 4.25):
        q.pushright(v)
    assert q.popleft() == 1.5
    assert q.size() == 2 and q.sum() == 6.25


def test_logger_writes_optim_logger_format(tmp_path, capsys):
    path = tmp_path / 'train.log'
    logger = lua_optim.Logger(str(path), lua_optim.TRAIN_LOG_KEYS)
    logger.add({'% top1 accuracy (train set)': 12.5, '% top5 accuracy (train set)': 50.0,
                'avg loss (train set)': 2.302585})
    logger.add({'% top1 accuracy (train set)': 100.0, '% top5 accuracy (train set)': 100.0,
                'avg loss (train set)': 1e-5})
    # a new process (resume) appends and writes the header again, as a fresh optim.Logger does
    lua_optim.Logger(str(path), lua_optim.TRAIN_LOG_KEYS).add(
        {'% top1 accuracy (train set)': 0.0, '% top5 accuracy (train set)': 0.0, 'avg loss (train set)': 0.0})
    header = '% top5 accuracy (train set)\tavg loss (train set)\t% top1 accuracy (train set)\t\n'
    assert path.read_text() == (header +
                                ' 5.0000e+01\t 2.3026e+00\t 1.2500e+01\t\n'
                                ' 1.0000e+02\t 1.0000e-05\t 1.0000e+02\t\n' +
                                header +
                                ' 0.0000e+00\t 0.0000e+00\t 0.0000e+00\t\n')
    # optim.Logger's "no path provided" warning was wrong (it logged to the file) and is left out
    assert capsys.readouterr().out == ''


def test_train_lines_are_byte_identical_to_lua(tmp_path, capsys, fixed_time):
    # label 0 ranks first in row 0 and third in row 1, so each batch has top-1 50% and top-5 100%; its
    # log-probabilities -1.5 / -2.5 give Err 2.0000
    table = torch.tensor([[-1.5, -3.0, -4.0, -5.0, -6.0, -7.0],
                          [-2.5, -1.0, -2.0, -5.0, -6.0, -7.0]])
    net = FixedScores(table)
    opt = make_opt(tmp_path, '-batchSize', '4', '-breakBatch', '2', '-epochSize', '2', '-LR', '3',
                   '-nLastIterAccuracy', '1')
    inputs = torch.tensor([[0.0], [1.0]])
    labels = torch.tensor([0, 0])
    trainer = train.Trainer(net, nn.NLLLoss(), opt)
    trainer.train(3, FakeTrainLoader([(inputs, labels)] * 4))
    out = capsys.readouterr().out
    line = ('Epoch: [3][{}/2]\tTime 0.125(0.125) Err 2.0000 Top1-%: 50.00 {{50.00, 50.00}} '
            'Top5-%: 100.00 {{100.00, 100.00}} LR 3e-02 DataTime 0.125\n')
    assert out == ('==> doing epoch on training data:\n'
                   '==> online epoch # 3\n' +
                   line.format(1) + line.format(1) + line.format(2) + line.format(2) +
                   'Epoch: [3][TRAINING SUMMARY] Total Time(s): 0.12\taverage loss (per batch): 2.00 \t '
                   'accuracy(%):\t top-1 50.00\t\n'
                   '\n\n')
    assert (tmp_path / 'train.log').read_text().splitlines()[1] == ' 1.0000e+02\t 2.0000e+00\t 5.0000e+01\t'


def test_test_lines_are_byte_identical_to_lua(tmp_path, capsys, fixed_time):
    table = torch.tensor([[-1.5, -3.0, -4.0, -5.0, -6.0, -7.0],
                          [-2.5, -1.0, -2.0, -5.0, -6.0, -7.0],
                          [-9.0, -1.0, -2.0, -3.0, -4.0, -5.0]])
    net = FixedScores(table)
    # 2100 images in batches of 512: floor(2100/512) = 4 batches, the 52 left over are never tested
    n = 2100
    rows = torch.zeros(n, 1)
    rows[512:1024] = 1
    rows[1536:2048] = 1
    rows[2048:] = 2  # label 0 outside the top 5: these must stay untested
    loader = FakeTestLoader(rows, torch.zeros(n, dtype=torch.long))
    opt = make_opt(tmp_path, '-batchSize', '512')
    top1, top5, loss = lcnn_test.Tester(net, nn.NLLLoss(), opt).test(7, loader)
    assert (top1, top5, loss) == (50.0, 100.0, 2.0)
    assert capsys.readouterr().out == (
        '==> doing epoch on validation data:\n'
        '==> online epoch # 7\n'
        'Epoch: Testing [7][1024/2100] | top1 : [0.00 (50.00)] | top5 : [100.00 (100.00)]\n'
        'Epoch: Testing [7][2048/2100] | top1 : [0.00 (50.00)] | top5 : [100.00 (100.00)]\n'
        'Epoch: [7][TESTING SUMMARY] Total Time(s): 0.12 \taverage loss (per batch): 2.00 \t '
        'accuracy [Center](%):\t top-1 50.00\t top-5 100.00\n'
        '\n\n')
    assert (tmp_path / 'test.log').read_text() == (
        '% top1 accuracy (test set) \t% top5 accuracy (test set) \tavg loss (test set)\t\n'
        ' 5.0000e+01\t 1.0000e+02\t 2.0000e+00\t\n')


def test_log_txt_gets_lua_print_format(tmp_path, capsys):
    log = tmp_path / 'log.txt'
    console.open_log(str(log), '[header] \n')
    try:
        train.lua_print('nClasses: ', 10)
        train.lua_print('\n')
        print('plain', 'print')
    finally:
        console.close()
    assert capsys.readouterr().out == '[header] \nnClasses: \t10\n\n\nplain print\n'
    assert log.read_text() == '[header] \nnClasses:  10 \n\n \nplain print\n'


def tiny_lookup_net(lambda_=0.5):
    return nn.Sequential(
        PooledSpatialConvolution(3, 6, 3, 3, 1, 1, 1, 1, poolSize=4, lambda_=lambda_, initialSparsity=0.3),
        nn.ReLU(),
        View(6 * 4 * 4),
        nn.Linear(96, 10),
        LogSoftMax(),
    )


def _global_batches(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 4, 4, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def _run(net, opt, batches, epoch=1):
    trainer = train.Trainer(net, nn.NLLLoss(), opt)
    trainer.train(epoch, FakeTrainLoader(batches))
    return trainer


def test_break_batch_gives_the_unbroken_update(tmp_path, capsys):
    torch.manual_seed(0)
    net = tiny_lookup_net()
    other = copy.deepcopy(net)
    start = copy.deepcopy(net)
    batches = _global_batches(3, 8)
    whole = _run(net, make_opt(tmp_path, '-batchSize', '8', '-epochSize', '3', '-LR', '20'), batches)
    halves = [(x[i:i + 4], y[i:i + 4]) for x, y in batches for i in (0, 4)]
    broken = _run(other, make_opt(tmp_path, '-batchSize', '8', '-breakBatch', '2', '-epochSize', '3',
                                  '-LR', '20'), halves)
    for a, b in zip(net.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(a, s) for a, s in zip(net.parameters(), start.parameters()))
    sa, sb = whole.optim.lua_state(), broken.optim.lua_state()
    assert sa['evalCounter'] == sb['evalCounter'] == 3
    torch.testing.assert_close(sa['dfdx'], sb['dfdx'], rtol=1e-5, atol=1e-6)
    # the lambda regulariser was applied: some align weights were driven to exactly zero and stay there
    assert (net[0].alignconv.weight == 0).any()


def test_sgd_reproduces_lua_optim_state_fixture():
    fixture = t7.load(os.path.join(FIXTURES, 'optimState_sgd2.t7'))
    params_after = t7.load(os.path.join(FIXTURES, 'optimState_sgd2.params.t7'))
    x = nn.Parameter(torch.tensor(SGD2_START))
    optim = lua_optim.LuaOptim('sgd', [x], {'learningRate': 0.1, 'learningRateDecay': 0, 'momentum': 0.9,
                                        'dampening': 0, 'weightDecay': 5e-4})
    losses = []
    for _ in range(2):
        x.grad = None
        loss = 0.5 * ((x - 0.25) ** 2).sum()
        losses.append(loss.item())
        loss.backward()
        optim.step()
    assert losses[0] == 10 and abs(losses[1] - 8.0990657806396484) < 1e-5
    torch.testing.assert_close(x.detach(), params_after, rtol=0, atol=2e-6)
    state = optim.lua_state()
    assert sorted(state) == sorted(fixture)
    for key, value in fixture.items():
        if key == 'dfdx':
            assert state[key].dtype == torch.float32
            torch.testing.assert_close(state[key], value, rtol=0, atol=2e-6)
        else:
            assert state[key] == value


@pytest.mark.parametrize('name', ['optimState_sgd2.t7', 'optimState_sgd2.cuda.t7'])
def test_lua_optim_state_round_trip(tmp_path, name):
    fixture = t7.load(os.path.join(FIXTURES, name))
    x = nn.Parameter(t7.load(os.path.join(FIXTURES, 'optimState_sgd2.params.t7')).clone())
    # two parameter tensors: dfdx is cut in getParameters order
    a, b = nn.Parameter(x.detach()[:4].clone()), nn.Parameter(x.detach()[4:].clone().view(3, 2))
    optim = lua_optim.LuaOptim('sgd', [a, b], fixture)
    path = tmp_path / 'optimState_2.t7'
    checkpoints.save_object(str(path), optim.lua_state())
    reread = t7.load(str(path))
    assert sorted(reread) == sorted(fixture)
    assert torch.equal(reread['dfdx'], fixture['dfdx'].float())
    assert all(reread[k] == v for k, v in fixture.items() if k != 'dfdx')
    # one more optim.sgd step continues the saved momentum: buf = 0.9 buf + g + wd x; x -= lr buf
    flat = torch.cat([a.detach().reshape(-1), b.detach().reshape(-1)]).double()
    grad = flat - 0.25
    buf = 0.9 * fixture['dfdx'].double() + grad + 5e-4 * flat
    expected = flat - 0.1 * buf
    loss = 0.5 * ((a - 0.25) ** 2).sum() + 0.5 * ((b - 0.25) ** 2).sum()
    loss.backward()
    optim.step()
    got = torch.cat([a.detach().reshape(-1), b.detach().reshape(-1)]).double()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert optim.lua_state()['evalCounter'] == 3
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]


def test_optim_state_of_another_network_is_refused():
    fixture = t7.load(os.path.join(FIXTURES, 'optimState_sgd2.t7'))
    with pytest.raises(UserError, match="'dfdx' has 10 values but this network has 11 parameters that train; give the "
                                        r'optimState saved with this network, and the flags that choose what trains '
                                        r'\(-freezeDictionary\) as they were then'):
        lua_optim.LuaOptim('sgd', [nn.Parameter(torch.zeros(11))], fixture)


def test_sgd_learning_rate_decay_and_nesterov_follow_optim_sgd():
    x = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optim = lua_optim.LuaOptim('sgd', [x], {'learningRate': 0.5, 'learningRateDecay': 0.25, 'momentum': 0.5,
                                        'dampening': 0.0, 'nesterov': True, 'weightDecay': 0.1})
    ref, buf = x.detach().clone(), None
    for n in range(3):
        x.grad = 3 * x.detach() ** 2
        d = 3 * ref ** 2 + 0.1 * ref
        buf = d.clone() if buf is None else 0.5 * buf + d
        ref = ref - 0.5 / (1 + n * 0.25) * (d + 0.5 * buf)
        optim.step()
        torch.testing.assert_close(x.detach(), ref)
    # dampening left out of the table defaults to the momentum, as in optim.sgd
    y = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    plain = lua_optim.LuaOptim('sgd', [y], {'learningRate': 1.0, 'momentum': 0.5})
    for g in (1.0, 1.0):
        y.grad = torch.tensor([g], dtype=torch.float64)
        plain.step()
    # buf: 1, then 0.5*1 + (1-0.5)*1 = 1
    assert y.item() == pytest.approx(1.0 - 1.0 - 1.0)


def test_adam_follows_optim_adam():
    x = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    config = {'learningRate': 0.1, 'learningRateDecay': 0.5, 'weightDecay': 0.01, 'epsilon': 1e-2}
    optim = lua_optim.LuaOptim('adam', [x], config)
    ref = x.detach().clone()
    m = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    for t in range(1, 4):
        x.grad = torch.sin(x.detach())
        g = torch.sin(ref) + 0.01 * ref
        clr = 0.1 / (1 + (t - 1) * 0.5)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        step = clr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        ref = ref - step * m / (v.sqrt() + 1e-2)
        optim.step()
        torch.testing.assert_close(x.detach(), ref)
    state = optim.lua_state()
    assert state['t'] == 3
    torch.testing.assert_close(state['m'], m.float())
    torch.testing.assert_close(state['denom'], (v.sqrt() + 1e-2).float())
    # the saved table restarts the same optimizer
    y = nn.Parameter(x.detach().clone())
    again = lua_optim.LuaOptim('adam', [y], state)
    x.grad = torch.sin(x.detach())
    y.grad = torch.sin(y.detach())
    optim.step()
    again.step()
    torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_lr_regimes(tmp_path, capsys):
    opt = make_opt(tmp_path, '-LR', '2', '-momentum', '0.8', '-weightDecay', '0.3')
    trainer = train.Trainer(FixedScores(torch.zeros(1, 5)), nn.NLLLoss(), opt)
    st = trainer.optim.state
    assert st['learningRate'] == 2 and st['weightDecay'] == 0.3
    trainer.set_regime(1)
    assert (st['learningRate'], st['weightDecay'], st['momentum']) == (0.02, 0, 0.8)
    st['momentum'] = 0.1
    trainer.set_regime(5)  # same regime, same rate: the optimizer state is left alone
    assert st['momentum'] == 0.1
    trainer.set_regime(19)
    assert (st['learningRate'], st['momentum']) == (0.01, 0.8)
    trainer.set_regime(60)
    assert st['learningRate'] == pytest.approx(2e-4)
    opt.constantLR = 0.5
    trainer.set_regime(60)
    assert st['learningRate'] == 0.5
    # a model's own LRregime (resnet's switches weight decay off at epoch 17) replaces the default one
    net = FixedScores(torch.zeros(1, 5))
    from models.resnet import lr_regime
    net.LRregime = lr_regime
    opt.constantLR = -1
    trainer = train.Trainer(net, nn.NLLLoss(), opt)
    trainer.set_regime(8)
    assert (trainer.optim.state['learningRate'], trainer.optim.state['weightDecay']) == (0.06, 5e-4)
    trainer.set_regime(17)
    assert (trainer.optim.state['learningRate'], trainer.optim.state['weightDecay']) == (0.02, 0)


def test_nan_loss_is_a_user_error(tmp_path, capsys):
    net = FixedScores(torch.full((1, 6), float('nan')))
    opt = make_opt(tmp_path, '-batchSize', '2', '-epochSize', '3')
    batches = [(torch.zeros(2, 1), torch.tensor([0, 1]))] * 3
    with pytest.raises(UserError, match=r'training loss became nan at epoch 4, batch 1'):
        _run(net, opt, batches, epoch=4)


def test_clcnet_linear_learning_rate(tmp_path, capsys):
    opt = make_opt(tmp_path, '-netType', 'clcneta', '-LR', '0.1', '-nEpochs', '3')
    trainer = train.ClcTrainer(FixedScores(torch.zeros(1, 5)), nn.CrossEntropyLoss(), opt)
    assert trainer.optim.state['nesterov'] is True and trainer.optim.state['weightDecay'] == 1e-4
    assert trainer.learning_rate_linear(1, 1, 10) == 0.1
    assert trainer.learning_rate_linear(2, 6, 10) == pytest.approx(0.1 * (1 - 15 / 30))
    assert trainer.learning_rate_linear(3, 10, 10) == pytest.approx(0.1 / 30)


def test_clcnet_score_is_an_error_rate_over_summed_crops():
    # two images x two crops; image 0's crops sum to class 2, image 1's to class 0
    out = torch.tensor([[0.0, 1.0, 3.0, 0, 0, 0], [1.0, 0.0, 0.5, 0, 0, 0],
                        [2.0, 0.0, 0.0, 0, 0, 0], [0.0, 1.5, 0.0, 0, 0, 0]])
    top1, top5 = train.clc_compute_score(out, torch.tensor([2, 1]), 2)
    assert (top1, top5) == (50.0, 0.0)


def test_failed_save_leaves_nothing(tmp_path):
    target = tmp_path / 'optimState_1.t7'
    with pytest.raises(t7.T7Error):
        checkpoints.save_object(str(target), {'bad': object()})
    assert os.listdir(tmp_path) == []
    (tmp_path / '.incomplete-123-0').write_bytes(b'half')
    checkpoints.remove_incomplete(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_failed_write_names_the_checkpoint_not_its_temporary_file(tmp_path, monkeypatch):
    import errno
    import t7.write

    def full_disk(f, obj, *rest):
        f.write(b'T7')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(t7.write, '_write', full_disk)
    for save in (lambda p: checkpoints.save_object(p, {'a': 1}), lambda p: checkpoints.save_model(p, nn.Linear(2, 3))):
        with pytest.raises(UserError, match=rf'^cannot write {tmp_path}/model_1.t7: No space left on device; check the '
                                            rf'space and permissions of {tmp_path}$'):
            save(str(tmp_path / 'model_1.t7'))
        assert os.listdir(tmp_path) == []


def _unxz(name, tmp_path):
    import lzma
    path = tmp_path / name[:-len('.xz')]
    path.write_bytes(lzma.decompress((open(os.path.join(FIXTURES, name), 'rb').read())))
    return str(path)


def test_lua_released_model_retrains_and_checkpoints(tmp_path, capsys):
    import model as model_setup
    path = _unxz('alexnet-lcnn.t7.xz', tmp_path)
    opt = make_opt(tmp_path, '-retrain', path, '-batchSize', '2', '-epochSize', '1', '-nClasses', '10')
    model, criterion = model_setup.setup(opt, runtime.Dist())
    assert f'Loading model from file: {path}\n' in capsys.readouterr().out
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, 3, 224, 224, generator=g), torch.tensor([3, 7]))
    trainer = train.Trainer(model, criterion, opt)
    trainer.train(1, FakeTrainLoader([batch]))
    state = trainer.optim.lua_state()
    checkpoints.save_epoch(opt, 1, model, state)
    saved = t7.load(str(tmp_path / 'optimState_1.t7'))
    # dfdx covers getParameters' whole vector: poolconv.weight, alignconv.bias, alignconv.weight, BN, ...
    assert saved['dfdx'].numel() == sum(p.numel() for p in model.parameters()) == 2999507
    assert saved['evalCounter'] == 1 and saved['learningRate'] == 0.01
    again = t7.load_model(str(tmp_path / 'model_1.t7'))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch[0]), model(batch[0]))


def test_retrained_lua_resnet_keeps_its_model_regime(tmp_path, capsys):
    import model as model_setup
    path = _unxz('resnet8-lcnn.t7.xz', tmp_path)
    opt = make_opt(tmp_path, '-netType', 'resnet-lcnn', '-depth', '8', '-retrain', path)
    model, criterion = model_setup.setup(opt, runtime.Dist())
    trainer = train.Trainer(model, criterion, opt)
    trainer.set_regime(1)
    assert (trainer.optim.state['learningRate'], trainer.optim.state['weightDecay']) == (0.1, 5e-4)
    # alexnet's file defines no regime: train.lua's own one applies
    opt = make_opt(tmp_path, '-retrain', _unxz('alexnet-lcnn.t7.xz', tmp_path))
    model, criterion = model_setup.setup(opt, runtime.Dist())
    trainer = train.Trainer(model, criterion, opt)
    trainer.set_regime(1)
    assert (trainer.optim.state['learningRate'], trainer.optim.state['weightDecay']) == (0.01, 0)
