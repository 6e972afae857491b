"""Torch7 nn/cudnn transfer functions, softmaxes, arithmetic and dropouts as PyTorch modules and back."""

import torch
from torch import nn

from layers import activation
from layers.legacy import lua_type
from t7.read import T7Error, TorchObject
from t7.nn_conv import write_parameters
from t7.registry import builds, class_of, long_storage, writes


def _cudnn(module):
    return lua_type(module).startswith('cudnn.')


def _real(f, name, default=None):
    # Lua numbers are doubles; PyTorch's functional signatures (and TorchScript) want floats, not ints.
    return float(f.number(name, default))


# --- thresholds and rectifiers -----------------------------------------------------------------------------------

@builds('ReLU')
def _relu(loader, f, path):
    # Files from before the inplace flag (ReLU of 2014) compute out of place: flag() reads a missing one as false.
    inplace = f.flag('inplace')
    threshold, value = _real(f, 'threshold', 0), _real(f, 'val', 0)
    if threshold == 0 and value == 0:
        return nn.ReLU(inplace=inplace)
    return nn.Threshold(threshold, value, inplace=inplace)


@builds('Threshold')
def _threshold(loader, f, path):
    return nn.Threshold(_real(f, 'threshold', 1e-6), _real(f, 'val', 0), inplace=f.flag('inplace'))


@builds('ReLU6')
def _relu6(loader, f, path):
    return nn.ReLU6(inplace=f.flag('inplace'))


@builds('HardTanh', 'Clamp')
def _hard_tanh(loader, f, path):
    low, high = _real(f, 'min_val', -1), _real(f, 'max_val', 1)
    if not high > low:
        raise T7Error(f'{f.typename} at {path}: max_val {high} must be larger than min_val {low}')
    return nn.Hardtanh(low, high, inplace=f.flag('inplace'))


@builds('ClippedReLU')
def _clipped_relu(loader, f, path):
    # cudnn's min(max(x, 0), ceiling).
    ceiling = _real(f, 'ceiling', None)
    if not ceiling > 0:
        raise T7Error(f'{f.typename} at {path}: ceiling {ceiling} must be positive')
    return nn.Hardtanh(0, ceiling, inplace=f.flag('inplace'))


@builds('LeakyReLU')
def _leaky_relu(loader, f, path):
    return nn.LeakyReLU(_real(f, 'negval', 0.01), inplace=f.flag('inplace'))


@builds('ELU')
def _elu(loader, f, path):
    return nn.ELU(_real(f, 'alpha', 1), inplace=f.flag('inplace'))


@builds('PReLU')
def _prelu(loader, f, path):
    planes = f.int('nOutputPlane', 0)
    module = nn.PReLU(max(planes, 1), device='meta')
    module.weight = loader.parameter(f.tensor('weight', (max(planes, 1),)))
    return module


@builds('RReLU')
def _rrelu(loader, f, path):
    low, high = _real(f, 'lower', 1 / 8), _real(f, 'upper', 1 / 3)
    if not 0 <= low <= high:
        raise T7Error(f'{f.typename} at {path}: needs 0 <= lower <= upper, found lower={low} upper={high}')
    return nn.RReLU(low, high, inplace=f.flag('inplace'))


@writes('ReLU', accepts=(nn.ReLU, nn.Threshold))
def _write_relu(saver, module, fields, path):
    threshold, value = (module.threshold, module.value) if isinstance(module, nn.Threshold) else (0, 0)
    if _cudnn(module):
        if threshold != 0 or value != 0:
            raise T7Error(f'cannot save {lua_type(module)} at {path}: cudnn.ReLU has no threshold or value')
        fields['mode'] = 'CUDNN_ACTIVATION_RELU'
    # nn.ReLU's fields are kept for cudnn.ReLU too: stand-ins that run cudnn files on the CPU derive from nn.ReLU.
    fields.update(threshold=threshold, val=value, inplace=bool(module.inplace))


@writes('Threshold', accepts=nn.Threshold)
def _write_threshold(saver, module, fields, path):
    fields.update(threshold=module.threshold, val=module.value, inplace=bool(module.inplace))


@writes('ReLU6', accepts=nn.ReLU6)
def _write_relu6(saver, module, fields, path):
    fields['inplace'] = bool(module.inplace)


@writes('HardTanh', 'Clamp', accepts=nn.Hardtanh)
def _write_hard_tanh(saver, module, fields, path):
    fields.update(min_val=module.min_val, max_val=module.max_val, inplace=bool(module.inplace))


@writes('ClippedReLU', accepts=nn.Hardtanh)
def _write_clipped_relu(saver, module, fields, path):
    if module.min_val != 0:
        raise T7Error(f'cannot save cudnn.ClippedReLU at {path}: it clips below at 0, not {module.min_val}')
    fields.update(ceiling=module.max_val, inplace=bool(module.inplace))


@writes('LeakyReLU', accepts=nn.LeakyReLU)
def _write_leaky_relu(saver, module, fields, path):
    fields.update(negval=module.negative_slope, inplace=bool(module.inplace))


@writes('ELU', accepts=nn.ELU)
def _write_elu(saver, module, fields, path):
    fields.update(alpha=module.alpha, inplace=bool(module.inplace))


@writes('PReLU', accepts=nn.PReLU)
def _write_prelu(saver, module, fields, path):
    # Lua's nOutputPlane 0 is the shared slope; one plane of slope is the same thing for any input.
    fields['nOutputPlane'] = module.num_parameters if module.num_parameters > 1 else 0
    write_parameters(saver, module, fields, 'weight')


@writes('RReLU', accepts=nn.RReLU)
def _write_rrelu(saver, module, fields, path):
    fields.update(lower=module.lower, upper=module.upper, inplace=bool(module.inplace), noise=saver.empty(module))


# --- element-wise functions --------------------------------------------------------------------------------------

_PLAIN = {'Tanh': nn.Tanh, 'Sigmoid': nn.Sigmoid, 'SoftSign': nn.Softsign, 'LogSigmoid': nn.LogSigmoid,
          'TanhShrink': nn.Tanhshrink, 'Abs': activation.Abs, 'Square': activation.Square, 'Exp': activation.Exp,
          'Log': activation.Log, 'SoftMin': activation.SoftMin}


@builds(*_PLAIN)
def _plain(loader, f, path):
    return _PLAIN[class_of(f.typename)]()


def _write_function(saver, module, fields, path):
    if _cudnn(module):
        # cudnn.Tanh and cudnn.Sigmoid are cudnn's pointwise activations, which may run in place.
        fields['inplace'] = False


for _name, _cls in _PLAIN.items():
    if _name != 'TanhShrink':
        writes(_name, accepts=_cls)(_write_function)


@writes('TanhShrink', accepts=nn.Tanhshrink)
def _write_tanh_shrink(saver, module, fields, path):
    # The Lua module computes through a Tanh module of its own, made by its constructor.
    fields['tanh'] = TorchObject('nn.Tanh', {'output': saver.empty(module), 'gradInput': saver.empty(module),
                                            '_type': fields['_type']})


@builds('HardShrink')
def _hard_shrink(loader, f, path):
    return nn.Hardshrink(_real(f, 'lambda', 0.5))


@builds('SoftShrink')
def _soft_shrink(loader, f, path):
    return nn.Softshrink(_real(f, 'lambda', 0.5))


@builds('SoftPlus')
def _soft_plus(loader, f, path):
    return nn.Softplus(_real(f, 'beta', 1), _real(f, 'threshold', 20))


@builds('Sqrt')
def _sqrt(loader, f, path):
    return activation.Sqrt(_real(f, 'eps', 0))


@builds('Power')
def _power(loader, f, path):
    return activation.Power(_real(f, 'pow'))


@writes('HardShrink', accepts=nn.Hardshrink)
@writes('SoftShrink', accepts=nn.Softshrink)
def _write_shrink(saver, module, fields, path):
    fields['lambda'] = module.lambd


@writes('SoftPlus', accepts=nn.Softplus)
def _write_soft_plus(saver, module, fields, path):
    fields.update(beta=module.beta, threshold=module.threshold)


@writes('Sqrt', accepts=activation.Sqrt)
def _write_sqrt(saver, module, fields, path):
    fields['eps'] = module.eps


@writes('Power', accepts=activation.Power)
def _write_power(saver, module, fields, path):
    fields['pow'] = module.pow


# --- softmax -------------------------------------------------------------------------------------------------------

def _instance(typename):
    # cudnn.SoftMax and cudnn.LogSoftMax normalise whole samples; their Spatial classes and nn's, per position.
    return typename in ('cudnn.SoftMax', 'cudnn.LogSoftMax')


@builds('SoftMax', 'SpatialSoftMax')
def _softmax(loader, f, path):
    return activation.SoftMax(instance=_instance(f.typename))


@builds('LogSoftMax', 'SpatialLogSoftMax')
def _log_softmax(loader, f, path):
    return activation.LogSoftMax(instance=_instance(f.typename))


@writes('SoftMax', 'SpatialSoftMax', accepts=activation.SoftMax)
@writes('LogSoftMax', 'SpatialLogSoftMax', accepts=activation.LogSoftMax)
def _write_softmax(saver, module, fields, path):
    typename = lua_type(module)
    if module.instance != _instance(typename):
        raise T7Error(f'cannot save {typename} at {path} with instance={module.instance}: only cudnn.SoftMax and '
                      'cudnn.LogSoftMax normalise over whole samples (instance=True), and they only do that')
    if typename == 'cudnn.SpatialLogSoftMax':
        # The one cudnn softmax whose constructor (not its updateOutput) sets the mode and the log algorithm.
        fields.update(algorithm='CUDNN_SOFTMAX_LOG', mode='CUDNN_SOFTMAX_MODE_CHANNEL')
    elif _cudnn(module):
        fields['algorithm'] = 'CUDNN_SOFTMAX_ACCURATE'
    if _cudnn(module):
        fields['iSize'] = long_storage([0, 0, 0, 0])


# --- constants and learned arithmetic ------------------------------------------------------------------------------

@builds('MulConstant', 'AddConstant')
def _constant(loader, f, path):
    value = f.get('constant_scalar')
    if isinstance(value, torch.Tensor):
        raise T7Error(f'{f.typename} at {path}: a tensor constant_scalar is not supported, only a number')
    cls = activation.MulConstant if f.typename.endswith('MulConstant') else activation.AddConstant
    return cls(_real(f, 'constant_scalar'), inplace=f.flag('inplace'))


@writes('MulConstant', accepts=activation.MulConstant)
@writes('AddConstant', accepts=activation.AddConstant)
def _write_constant(saver, module, fields, path):
    fields.update(constant_scalar=module.constant_scalar, inplace=bool(module.inplace))


@builds('Mul')
def _mul(loader, f, path):
    module = activation.Mul(device='meta')
    module.weight = loader.parameter(f.tensor('weight', (1,)))
    return module


@builds('Add')
def _add(loader, f, path):
    bias = f.tensor('bias')
    scalar = f.flag('scalar')
    if scalar and bias.numel() != 1:
        f.fail('bias', 'a 1-element tensor (scalar=true)')
    module = activation.Add(bias.numel(), scalar, device='meta')
    module.bias = loader.parameter(bias.reshape(bias.numel()) if bias.dim() != 1 else bias)
    return module


@builds('CMul', 'CAdd')
def _cmul(loader, f, path):
    name = 'weight' if f.typename.endswith('CMul') else 'bias'
    t = f.tensor(name)
    module = (activation.CMul if name == 'weight' else activation.CAdd)(*t.shape, device='meta')
    setattr(module, name, loader.parameter(t))
    return module


@writes('Mul', accepts=activation.Mul)
def _write_mul(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight')


@writes('Add', accepts=activation.Add)
def _write_add(saver, module, fields, path):
    write_parameters(saver, module, fields, 'bias')
    fields['_ones'] = torch.ones(1, dtype=module.bias.dtype)
    if module.scalar:
        fields['scalar'] = True


@writes('CMul', accepts=activation.CMul)
@writes('CAdd', accepts=activation.CAdd)
def _write_cmul(saver, module, fields, path):
    name = 'weight' if isinstance(module, activation.CMul) else 'bias'
    fields['size'] = long_storage(list(getattr(module, name).shape))
    write_parameters(saver, module, fields, name)


# --- dropout -------------------------------------------------------------------------------------------------------

@builds('Dropout')
def _dropout(loader, f, path):
    # Files from before nn's v2 flag behave as v1.
    return activation.Dropout(_real(f, 'p', 0.5), v1=not f.flag('v2'), inplace=f.flag('inplace'),
                              stochastic_inference=f.flag('stochastic_inference'))


@builds('SpatialDropout', 'VolumetricDropout')
def _feature_dropout(loader, f, path):
    cls = activation.SpatialDropout if f.typename.endswith('SpatialDropout') else activation.VolumetricDropout
    return cls(_real(f, 'p', 0.5), stochastic_inference=f.flag('stochastic_inference'))


@writes('Dropout', accepts=nn.Dropout)
def _write_dropout(saver, module, fields, path):
    fields.update(p=module.p, stochastic_inference=bool(getattr(module, 'stochastic_inference', False)),
                  v2=not getattr(module, 'v1', False), noise=saver.empty(module))
    if module.inplace:
        fields['inplace'] = True


@writes('SpatialDropout', accepts=activation.SpatialDropout)
@writes('VolumetricDropout', accepts=activation.VolumetricDropout)
def _write_feature_dropout(saver, module, fields, path):
    fields.update(p=module.p, stochastic_inference=module.stochastic_inference, noise=saver.empty(module))
