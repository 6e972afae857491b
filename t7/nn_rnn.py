"""torch-rnn's LSTM, VanillaRNN and LanguageModel (jcjohnson/torch-rnn), and the rnn package's SeqLSTM, Sequencer,
Recursor and MaskZero (Element-Research/rnn), as PyTorch modules and back."""

from torch import nn

from layers import rnn
from t7.nn_conv import write_parameters
from t7.read import T7Error, TorchObject
from t7.registry import Fields, builds, class_of, writes

_RECURRENT = {'LSTM': rnn.LSTM, 'VanillaRNN': rnn.VanillaRNN}
# What torch-rnn's LanguageModel keeps besides its net: written back as they were read.
_LANGUAGE_MODEL_DATA = ('idx_to_token', 'token_to_idx', 'vocab_size', 'model_type', 'wordvec_dim', 'rnn_size',
                        'num_layers', 'dropout', 'batchnorm')


def _refuse_cudnn(f, path):
    if f.typename.startswith('cudnn.'):
        # cudnn.LSTM/GRU share the class names but keep all layers' weights in one flat cuDNN buffer.
        raise T7Error(f'unsupported module {f.typename} at {path}: cudnn\'s recurrent modules (one flat cuDNN weight '
                      f'buffer) do not convert')


@builds(*_RECURRENT)
def _recurrent(loader, f, path):
    _refuse_cudnn(f, path)
    if f.get('hidden_dim') is None and f.get('recurrentModule') is not None:
        # The rnn package (Element-Research) has an nn.LSTM too: a step module around its recurrentModule.
        return _recurrent_step(loader, f, path)
    d, h = f.int('input_dim'), f.int('hidden_dim')
    cls = _RECURRENT[class_of(f.typename)]
    module = cls(d, h, device='meta')
    gates = 4 if cls is rnn.LSTM else 1
    module.weight = loader.parameter(f.tensor('weight', (d + h, gates * h)))
    module.bias = loader.parameter(f.tensor('bias', (gates * h,)))
    module.remember_states = f.flag('remember_states')
    return module


@writes(*_RECURRENT, accepts=(rnn.LSTM, rnn.VanillaRNN, rnn.RecurrentStep))
def _write_recurrent(saver, module, fields, path):
    if isinstance(module, rnn.RecurrentStep):
        _write_recurrent_step(saver, module, fields, path)
        return
    write_parameters(saver, module, fields, 'weight', 'bias')
    fields.update(input_dim=module.input_dim, hidden_dim=module.hidden_dim, remember_states=module.remember_states,
                  h0=saver.empty(module), buffer1=saver.empty(module), buffer2=saver.empty(module),
                  grad_h0=saver.empty(module), grad_x=saver.empty(module))
    if isinstance(module, rnn.LSTM):
        fields.update(c0=saver.empty(module), cell=saver.empty(module), gates=saver.empty(module),
                      buffer3=saver.empty(module), grad_a_buffer=saver.empty(module), grad_c0=saver.empty(module))
        fields['gradInput'] = [fields['grad_c0'], fields['grad_h0'], fields['grad_x']]
    else:
        fields['gradInput'] = [fields['grad_h0'], fields['grad_x']]


@builds('LanguageModel')
def _language_model(loader, f, path):
    net = f.get('net')
    if not isinstance(net, TorchObject) or class_of(net.typename) != 'Sequential':
        # neuraltalk2 has an nn.LanguageModel too: a captioning model around its `core` graph, not this one.
        raise T7Error(f'unsupported module {f.typename} at {path}: only torch-rnn\'s {f.typename} (an nn.Sequential '
                      f'in its field net) converts')
    flatten = [f.get('view1')] + list(f.get('bn_view_in') or [])
    unflatten = [f.get('view2')] + list(f.get('bn_view_out') or [])
    lua_modules = net.fields.get('modules') or []
    reshapes = [rnn.FLATTEN if any(m is v for v in flatten) else rnn.UNFLATTEN if any(m is v for v in unflatten)
                else 0 for m in lua_modules]
    module = rnn.LanguageModel(loader.children(Fields(net, f'{path}.net'), f'{path}.net'), reshapes)
    for name in _LANGUAGE_MODEL_DATA:
        if f.get(name) is not None:
            setattr(module, 'lua_' + name, f.get(name))
    return module


@writes('LanguageModel', accepts=rnn.LanguageModel)
def _write_language_model(saver, module, fields, path):
    net = saver.obj(nn.Sequential(*module.net), f'{path}.net')
    children = net.fields['modules']
    flatten = [m for m, how in zip(children, module.reshapes) if how == rnn.FLATTEN]
    unflatten = [m for m, how in zip(children, module.reshapes) if how == rnn.UNFLATTEN]
    if not flatten or not unflatten:
        raise T7Error(f'cannot save nn.LanguageModel at {path}: its net has no views around the Linear')
    fields.update(net=net, view1=flatten[-1], view2=unflatten[-1], bn_view_in=flatten[:-1],
                  bn_view_out=unflatten[:-1],
                  rnns=[m for m in children if class_of(m.typename) in _RECURRENT])


@builds('SeqLSTM')
def _seq_lstm(loader, f, path):
    d, r = f.int('inputsize'), f.int('outputsize')
    if f.get('hiddensize') is not None and f.int('hiddensize') != r:
        raise T7Error(f'unsupported module {f.typename} at {path}: a projection (hiddensize {f.int("hiddensize")} '
                      f'!= outputsize {r}, SeqLSTMP) does not convert')
    module = rnn.SeqLSTM(d, r, f.flag('batchfirst'), f.flag('maskzero'), device='meta')
    module.weight = loader.parameter(f.tensor('weight', (d + r, 4 * r)))
    module.bias = loader.parameter(f.tensor('bias', (4 * r,)))
    return module


@writes('SeqLSTM', accepts=rnn.SeqLSTM)
def _write_seq_lstm(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight', 'bias')
    fields.update(inputsize=module.input_dim, outputsize=module.hidden_dim, hiddensize=module.hidden_dim,
                  batchfirst=module.batchfirst, maskzero=module.maskzero, _remember='neither',
                  **{name: saver.empty(module) for name in ('cell', 'gates', 'buffer1', 'buffer2', 'buffer3',
                                                            'grad_a_buffer', 'h0', 'c0', 'grad_c0', 'grad_h0')})


def _step_module(loader, f, path, name):
    inner = f.get(name)
    if inner is None:
        modules = f.get('modules') or []
        inner = modules[0] if isinstance(modules, list) and modules else None
    if inner is None:
        raise T7Error(f'{f.typename} at {path} has no module')
    return loader.module(inner, f'{path}.{name}')


@builds('FastLSTM', 'GRU')
def _recurrent_step(loader, f, path):
    _refuse_cudnn(f, path)
    if f.get('recurrentModule') is None:
        raise T7Error(f'{f.typename} at {path} has no recurrentModule')
    return rnn.RecurrentStep(loader.module(f.get('recurrentModule'), f'{path}.recurrentModule'), f.int('inputSize'),
                             f.int('outputSize'), cell=class_of(f.typename) != 'GRU')


@writes('FastLSTM', 'GRU', accepts=rnn.RecurrentStep)
def _write_recurrent_step(saver, module, fields, path):
    step = saver.obj(module.step, f'{path}.recurrentModule')
    fields.update(inputSize=module.inputSize, outputSize=module.outputSize, recurrentModule=step, modules=[step],
                  sharedClones={}, step=1, rho=9999, outputs={}, gradInputs={}, _gradOutputs={}, gradOutputs={},
                  zeroTensor=saver.empty(module))
    if module.cell:
        fields.update(cells={}, gradCells={})


@builds('Sequencer')
def _sequencer(loader, f, path):
    return rnn.Sequencer(_step_module(loader, f, path, 'module'))


@builds('Recursor')
def _recursor(loader, f, path):
    return rnn.Recursor(_step_module(loader, f, path, 'recurrentModule'))


@builds('MaskZero')
def _mask_zero(loader, f, path):
    return rnn.MaskZero(_step_module(loader, f, path, 'module'), f.int('nInputDim'))


@writes('Sequencer', accepts=rnn.Sequencer)
def _write_sequencer(saver, module, fields, path):
    inner = saver.obj(module.module, f'{path}.module')
    fields.update(module=inner, modules=[inner], output={}, tableoutput={}, tablegradInput={}, _output={},
                  _remember='neither')


@writes('Recursor', accepts=rnn.Recursor)
def _write_recursor(saver, module, fields, path):
    inner = saver.obj(module.module, f'{path}.module')
    fields.update(module=inner, recurrentModule=inner, modules=[inner], sharedClones={1: inner}, rho=9999999,
                  step=1, outputs={}, gradInputs={}, _gradOutputs={})


@writes('MaskZero', accepts=rnn.MaskZero)
def _write_mask_zero(saver, module, fields, path):
    inner = saver.obj(module.module, f'{path}.module')
    fields.update(module=inner, modules=[inner], nInputDim=module.nInputDim)
