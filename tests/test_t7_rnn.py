"""torch-rnn's LSTM, VanillaRNN and LanguageModel files and the rnn package's SeqLSTM, Sequencer, Recursor and
MaskZero (issue 11): converted, compared with the recurrences of their Lua files written out step by step, compiled,
written back and read again."""
import math

import torch
from torch import nn

import t7
from layers.containers import specialize
from layers.conv import LookupTable
from layers import lua_type
from layers.rnn import LSTM, RecurrentStep
from layers.shape import Reshape, View
from layers.tables import TABLE
from t7.__main__ import main


def obj(typename, **fields):
    return t7.TorchObject(typename, dict(output=torch.empty(0), gradInput=torch.empty(0), **fields))


def recurrent(typename, d, h):
    torch.manual_seed(d * 10 + h)
    gates = 4 if typename == 'nn.LSTM' else 1
    # remember_states and the states of the last training batch are saved too; sampling resets them to zero.
    return obj(typename, input_dim=d, hidden_dim=h, weight=torch.randn(d + h, gates * h) * 0.5,
               bias=torch.randn(gates * h) * 0.1, remember_states=True, h0=torch.randn(5, h), c0=torch.randn(5, h))


def lua_lstm(x, w, b, h_size):
    n, t, d = x.shape
    h = c = torch.zeros(n, h_size, dtype=x.dtype)
    out = []
    for step in range(t):
        a = b + x[:, step] @ w[:d] + h @ w[d:]
        i, f, o = (a[:, k * h_size:(k + 1) * h_size].sigmoid() for k in range(3))
        c = f * c + i * a[:, 3 * h_size:].tanh()
        h = o * c.tanh()
        out.append(h)
    return torch.stack(out, 1)


def lua_rnn(x, w, b, h_size):
    h, out = torch.zeros(x.size(0), h_size, dtype=x.dtype), []
    for step in range(x.size(1)):
        h = (b + x[:, step] @ w[:x.size(2)] + h @ w[x.size(2):]).tanh()
        out.append(h)
    return torch.stack(out, 1)


def language_model():
    """Two layers as torch-rnn's LanguageModel builds them with -batchnorm 1 (an LSTM, then a VanillaRNN), each
    BatchNormalization between Views that Lua resizes to the batch on every forward."""
    v, d, h = 7, 4, 5
    lookup = t7.to_lua(LookupTable(v, d))
    lstm, vanilla = recurrent('nn.LSTM', d, h), recurrent('nn.VanillaRNN', h, h)
    view_in, view_out = t7.to_lua(View(1, 1, -1).setNumInputDims(3)), t7.to_lua(View(1, -1).setNumInputDims(2))
    bn = t7.to_lua(nn.BatchNorm1d(h).eval())
    bn.running_mean, bn.running_var = torch.randn(h) * 0.1, torch.rand(h) + 0.5
    view1, view2 = t7.to_lua(View(1, 1, -1).setNumInputDims(3)), t7.to_lua(View(1, -1).setNumInputDims(2))
    linear = t7.to_lua(nn.Linear(h, v))
    net = obj('nn.Sequential', modules=[lookup, lstm, view_in, bn, view_out, vanilla, view1, linear, view2])
    tokens = {i: c for i, c in enumerate('abcdefg', 1)}
    model = obj('nn.LanguageModel', net=net, view1=view1, view2=view2, rnns=[lstm, vanilla], bn_view_in=[view_in],
                bn_view_out=[view_out], idx_to_token=tokens, token_to_idx={c: i for i, c in tokens.items()},
                vocab_size=v, model_type='lstm', wordvec_dim=d, rnn_size=h, num_layers=2, dropout=0, batchnorm=1)

    def lua_forward(x):
        n, t = x.shape
        hidden = lua_lstm(lookup.weight[x - 1], lstm.weight, lstm.bias, h).reshape(n * t, h)
        hidden = (hidden - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias
        hidden = lua_rnn(hidden.reshape(n, t, h), vanilla.weight, vanilla.bias, h).reshape(n * t, h)
        return (hidden @ linear.weight.t() + linear.bias).reshape(n, t, v)
    return model, lua_forward


def test_language_model_matches_torch_rnns_recurrences(tmp_path):
    lua, lua_forward = language_model()
    model = t7.load_model(lua)
    for n, t in [(3, 6), (1, 1), (2, 9)]:
        x = torch.randint(1, 8, (n, t))
        with torch.no_grad():
            out = model(x)
        torch.testing.assert_close(out, lua_forward(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.jit.script(model)(x), out)
    t7.save_model(tmp_path / 'lm.t7', model)
    written = t7.load(tmp_path / 'lm.t7')
    assert written.typename == 'nn.LanguageModel' and written.token_to_idx == lua.token_to_idx
    modules = written.net.modules
    assert written.view1 is modules[6] and written.view2 is modules[8] and written.bn_view_in[0] is modules[2]
    assert [m.typename for m in written.rnns] == ['nn.LSTM', 'nn.VanillaRNN'] and written.rnns[0] is modules[1]
    assert (modules[1].hidden_dim, modules[1].remember_states, len(modules[1].gradInput)) == (5, True, 3)
    x = torch.randint(1, 8, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(t7.load_model(tmp_path / 'lm.t7')(x), model(x))
    # The parameters train: one backward reaches the recurrent weights.
    model.train()
    model(x).sum().backward()
    assert model.net[1].weight.grad.abs().sum() > 0 and model.net[5].bias.grad.abs().sum() > 0


def test_recurrent_layers_take_their_initial_states_as_a_table():
    lstm = t7.load_model(recurrent('nn.LSTM', 3, 2))
    x, c0, h0 = torch.randn(2, 4, 3), torch.randn(2, 2), torch.randn(2, 2)
    # Lua's {c0, h0, x} and {h0, x} inputs: the same recurrences started from those states.
    w, b = lstm.weight.detach(), lstm.bias.detach()
    with torch.no_grad():
        full = lstm([c0, h0, x])
        torch.testing.assert_close(lstm([h0, x]), lstm.run(x, torch.zeros(2, 2), h0))
    assert not torch.allclose(full, lstm(x)) and torch.allclose(lstm(x), lua_lstm(x, w, b, 2), atol=1e-6)
    specialize(lstm, TABLE)
    torch.testing.assert_close(torch.jit.script(lstm)([c0, h0, x]), full)
    vanilla = t7.load_model(recurrent('nn.VanillaRNN', 3, 2))
    h, out = h0, []
    for step in range(4):
        h = (vanilla.bias + x[:, step] @ vanilla.weight[:3] + h @ vanilla.weight[3:]).tanh()
        out.append(h)
    with torch.no_grad():
        torch.testing.assert_close(vanilla([h0, x]), torch.stack(out, 1))
        specialize(vanilla, TABLE)
        torch.testing.assert_close(torch.jit.script(vanilla)([h0, x]), torch.stack(out, 1))


def test_two_lstm_classes_of_one_name():
    # The rnn package's nn.LSTM is a step module around its recurrentModule; torch-rnn's has input_dim/hidden_dim.
    rnn_package = t7.load_model(obj('nn.LSTM', inputSize=3, outputSize=4, recurrentModule=obj('nn.Identity')))
    assert isinstance(rnn_package, RecurrentStep) and rnn_package.cell and lua_type(rnn_package) == 'nn.LSTM'
    assert t7.to_lua(rnn_package).recurrentModule.typename == 'nn.Identity'
    assert isinstance(t7.load_model(recurrent('nn.LSTM', 3, 4)), LSTM)
    try:
        t7.load_model(obj('nn.LSTM', inputSize=3))
    except t7.T7Error as e:
        assert str(e) == 'nn.LSTM at model: field input_dim must be a number, found None'
    else:
        raise AssertionError('an nn.LSTM without its fields was converted')


def test_torch_rnn_checkpoint_converts_from_the_command_line(tmp_path, capsys):
    lua, lua_forward = language_model()
    t7.save(tmp_path / 'checkpoint_100.t7', {'model': lua, 'opt': {'rnn_size': 5}, 'i': 100,
                                              'train_loss_history': [2.5, 2.25]})
    assert main(['convert', str(tmp_path / 'checkpoint_100.t7'), str(tmp_path / 'lm.pt')]) == 0
    assert 'TorchScript of nn.LanguageModel at model;' in capsys.readouterr().out
    x = torch.randint(1, 8, (2, 3))
    torch.testing.assert_close(torch.jit.load(tmp_path / 'lm.pt')(x), lua_forward(x), atol=1e-5, rtol=1e-5)
    assert isinstance(t7.load_model(t7.find(t7.load(tmp_path / 'checkpoint_100.t7'), 'model')).net[1], LSTM)


def seq_lstm(d, h, **flags):
    torch.manual_seed(d + h)
    return obj('nn.SeqLSTM', inputsize=d, outputsize=h, hiddensize=h, weight=torch.randn(d + h, 4 * h) * 0.5,
               bias=torch.randn(4 * h) * 0.1, _remember='neither', **flags)


def test_rnn_packages_seq_lstm_in_a_sequencer_model(tmp_path):
    """nn.Sequential(SeqLSTM, Sequencer(MaskZero(Linear)), Sequencer(LogSoftMax)) over T x N x D, as the rnn
    package's language-model examples build it."""
    lstm = seq_lstm(3, 4, maskzero=True)
    linear = t7.to_lua(nn.Linear(4, 5))
    step = obj('nn.Recursor', module=obj('nn.MaskZero', module=linear, modules=[linear], nInputDim=1),
               rho=9999999, step=1)
    step.recurrentModule = step.module
    lua = obj('nn.Sequential', modules=[lstm, obj('nn.Sequencer', module=step, modules=[step], _remember='neither'),
                                        obj('nn.Sequencer', module=obj('nn.Recursor', recurrentModule=obj(
                                            'nn.LogSoftMax')))])
    model = t7.load_model(lua)
    x = torch.randn(6, 2, 3)
    x[2:4, 1] = 0  # a padded sample: its states restart from zero, its outputs are masked
    with torch.no_grad():
        out = model(x)
    hidden = lua_lstm(x.transpose(0, 1)[:1], lstm.weight, lstm.bias, 4)
    expected = (hidden @ linear.weight.t() + linear.bias).log_softmax(-1)
    torch.testing.assert_close(out[:, :1], expected.transpose(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2:4, 1], torch.full((2, 5), -math.log(5)))
    after = lua_lstm(x[4:, 1:].transpose(0, 1), lstm.weight, lstm.bias, 4)
    torch.testing.assert_close(out[4:, 1], (after[0] @ linear.weight.t() + linear.bias).log_softmax(-1))
    torch.testing.assert_close(torch.jit.script(model)(x), out)
    t7.save_model(tmp_path / 'seq.t7', model)
    written = t7.load(tmp_path / 'seq.t7')
    assert written.modules[0].maskzero is True and written.modules[1].module.recurrentModule.nInputDim == 1
    torch.testing.assert_close(t7.load_model(tmp_path / 'seq.t7')(x), out)


def test_seq_lstm_batch_first_and_a_sequencer_of_a_table():
    lstm = seq_lstm(2, 3, batchfirst=True)
    x = torch.randn(4, 5, 2)
    torch.testing.assert_close(t7.load_model(lstm)(x), lua_lstm(x, lstm.weight, lstm.bias, 3))
    sequencer = t7.load_model(obj('nn.Sequencer', module=obj('nn.Recursor', recurrentModule=obj('nn.Tanh'))))
    steps = [torch.randn(2, 3), torch.randn(2, 3)]
    out = sequencer(steps)
    assert isinstance(out, list) and all(torch.equal(o, s.tanh()) for o, s in zip(out, steps))
    specialize(sequencer, TABLE)
    assert all(torch.equal(o, s.tanh()) for o, s in zip(torch.jit.script(sequencer)(steps), steps))


def test_rnn_packages_projections_and_neuraltalks_language_model_are_named():
    for lua, message in [
        (obj('nn.LanguageModel', core=obj('nn.gModule'), vocab_size=9),
         "unsupported module nn.LanguageModel at model: only torch-rnn's nn.LanguageModel (an nn.Sequential in its "
         "field net) converts"),
        (obj('cudnn.LSTM', inputSize=2, hiddenSize=3, numLayers=1, weight=torch.zeros(60)),
         "unsupported module cudnn.LSTM at model: cudnn's recurrent modules (one flat cuDNN weight buffer) do not "
         "convert"),
        (obj('cudnn.GRU', inputSize=2, hiddenSize=3, numLayers=1, weight=torch.zeros(45)),
         "unsupported module cudnn.GRU at model: cudnn's recurrent modules"),
        (obj('nn.SeqLSTM', inputsize=2, outputsize=3, hiddensize=5),
         'unsupported module nn.SeqLSTM at model: a projection (hiddensize 5 != outputsize 3, SeqLSTMP)'),
    ]:
        try:
            t7.load_model(lua)
        except t7.T7Error as e:
            assert str(e).startswith(message), str(e)
        else:
            raise AssertionError(f'{lua.typename} converted')


def fast_lstm(d, h):
    """nn.FastLSTM(d, h) as the rnn package's buildModel lays out its recurrentModule ({x, h, c} -> {h, c}, gates
    in the order input, hidden, forget, output)."""
    def seq(*m):
        return obj('nn.Sequential', modules=list(m))

    def cat(*m):
        return obj('nn.ConcatTable', modules=list(m))

    def sel(i):
        return obj('nn.SelectTable', index=i)

    def par(*m):
        return obj('nn.ParallelTable', modules=list(m))

    i2g = t7.to_lua(nn.Linear(d, 4 * h))
    o2g = obj('nn.LinearNoBias', weight=torch.randn(4 * h, h))
    gates = seq(obj('nn.NarrowTable', offset=1, length=2), par(i2g, o2g), obj('nn.CAddTable'),
                t7.to_lua(Reshape(4, h)), obj('nn.SplitTable', dimension=1, nInputDims=2),
                par(obj('nn.Sigmoid'), obj('nn.Tanh'), obj('nn.Sigmoid'), obj('nn.Sigmoid')))
    hidden = seq(obj('nn.NarrowTable', offset=1, length=2), obj('nn.CMulTable'))
    cell = seq(cat(sel(3), sel(5)), obj('nn.CMulTable'))
    output = seq(cat(seq(sel(1), obj('nn.Tanh')), sel(2)), obj('nn.CMulTable'))
    step = seq(cat(gates, sel(3)), obj('nn.FlattenTable'), cat(seq(cat(hidden, cell), obj('nn.CAddTable')), sel(4)),
               obj('nn.FlattenTable'), cat(output, sel(1)))
    lstm = obj('nn.FastLSTM', inputSize=d, outputSize=h, recurrentModule=step, modules=[step], step=1, rho=9999,
               i2g=i2g, o2g=o2g, zeroTensor=torch.empty(0))

    def lua_forward(xs):
        state = cell_state = torch.zeros(xs.size(1), h)
        outs = []
        for x in xs:
            a = (x @ i2g.weight.t() + i2g.bias + state @ o2g.weight.t()).view(-1, 4, h)
            i, g, f, o = a[:, 0].sigmoid(), a[:, 1].tanh(), a[:, 2].sigmoid(), a[:, 3].sigmoid()
            cell_state = i * g + f * cell_state
            state = o * cell_state.tanh()
            outs.append(state)
        return torch.stack(outs)
    return lstm, lua_forward


def test_rnn_packages_fast_lstm_in_a_sequencer(tmp_path, capsys):
    """Sequencer(Recursor(Sequential(MaskZero(FastLSTM), MaskZero(Linear)))), as a real 2016 file holds it: the
    LSTM carries its state from step to step and starts from zeros at every forward."""
    torch.manual_seed(3)
    lstm, lua_lstm_forward = fast_lstm(3, 4)
    linear = t7.to_lua(nn.Linear(4, 2))
    body = obj('nn.Sequential', modules=[obj('nn.MaskZero', module=lstm, modules=[lstm], nInputDim=1),
                                         obj('nn.MaskZero', module=linear, modules=[linear], nInputDim=1)])
    recursor = obj('nn.Recursor', module=body, recurrentModule=body, modules=[body])
    lua = obj('nn.Sequencer', module=recursor, modules=[recursor])
    model = t7.load_model(lua)
    x = torch.randn(5, 2, 3)
    x[3, 1] = 0
    with torch.no_grad():
        out = model(x)
        again = model(x)
    expected = lua_lstm_forward(x) @ linear.weight.t() + linear.bias
    expected[3, 1] = 0  # MaskZero zeroes the output of the all-zero step; the LSTM's own state goes on
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, out)
    t7.save_model(tmp_path / 'fast.t7', model)
    written = t7.load(tmp_path / 'fast.t7').module.module.modules[0].module
    assert (written.typename, written.inputSize, written.outputSize) == ('nn.FastLSTM', 3, 4)
    assert written.recurrentModule is written.modules[0]
    torch.testing.assert_close(t7.load_model(tmp_path / 'fast.t7')(x), out)
    t7.save(tmp_path / 'model.t7', lua)
    assert main(['convert', str(tmp_path / 'model.t7'), str(tmp_path / 'model.pt')]) == 1
    assert "the rnn package's step-by-step recurrent modules (FastLSTM, LSTM, GRU) keep their state in Python" in \
        capsys.readouterr().err


def test_rnn_packages_gru_passes_its_state_on():
    # A GRU's recurrentModule maps {x, h} to the next h; here h + x, so that the state is a running sum.
    gru = obj('nn.GRU', inputSize=2, outputSize=2, p=0, recurrentModule=obj('nn.CAddTable'))
    model = t7.load_model(obj('nn.Sequencer', module=gru, modules=[gru]))
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(model(x), x.cumsum(0))
    torch.testing.assert_close(model([s for s in x])[3], x.sum(0))


def test_lstm_whose_step_is_masked():
    # The rnn package's LSTM:maskZero() puts its recurrentModule in a MaskZero: the states of an all-zero input
    # become zero, so that the next step starts afresh.
    torch.manual_seed(4)
    lstm, lua_lstm_forward = fast_lstm(3, 4)
    lstm.recurrentModule = obj('nn.MaskZero', module=lstm.recurrentModule, modules=[lstm.recurrentModule],
                               nInputDim=1)
    model = t7.load_model(obj('nn.Sequencer', module=lstm, modules=[lstm]))
    x = torch.randn(4, 2, 3)
    x[1, 0] = 0
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out[1, 0], torch.zeros(4))
    torch.testing.assert_close(out[2:, :1], lua_lstm_forward(x[2:, :1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 1:], lua_lstm_forward(x[:, 1:]), atol=1e-5, rtol=1e-5)
