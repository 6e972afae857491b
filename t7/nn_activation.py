"""Torch7 nn/cudnn transfer functions, constant arithmetic, softmax and dropout as PyTorch modules and back."""

from torch import nn

from layers import legacy
from layers.legacy import lua_type
from t7.read import T7Error
from t7.registry import builds, long_storage, writes


@builds('MulConstant')
def _mul_constant(loader, f, path):
    return legacy.MulConstant(f.number('constant_scalar'), inplace=f.flag('inplace'))


@builds('ReLU')
def _relu(loader, f, path):
    inplace = f.flag('inplace')
    threshold, value = f.number('threshold', 0), f.number('val', 0)
    if threshold == 0 and value == 0:
        return nn.ReLU(inplace=inplace)
    return nn.Threshold(threshold, value, inplace=inplace)


@builds('Threshold')
def _threshold(loader, f, path):
    return nn.Threshold(f.number('threshold', 1e-6), f.number('val', 0), inplace=f.flag('inplace'))


@builds('LogSoftMax')
def _log_softmax(loader, f, path):
    return legacy.LogSoftMax()


@builds('SoftMax')
def _softmax(loader, f, path):
    return legacy.SoftMax()


@builds('Dropout')
def _dropout(loader, f, path):
    if f.flag('stochastic_inference'):
        raise T7Error(f'{f.typename} at {path}: stochastic_inference=true (dropout at test time) is not supported')
    # Files from before nn's v2 flag behave as v1.
    return legacy.Dropout(f.number('p', 0.5), v1=not f.flag('v2'), inplace=f.flag('inplace'))


@builds('SpatialDropout')
def _spatial_dropout(loader, f, path):
    if f.flag('stochastic_inference'):
        raise T7Error(f'{f.typename} at {path}: stochastic_inference=true (dropout at test time) is not supported')
    return legacy.SpatialDropout(f.number('p', 0.5))


@writes('MulConstant', accepts=legacy.MulConstant)
def _write_mul_constant(saver, module, fields, path):
    fields['constant_scalar'] = module.constant_scalar
    fields['inplace'] = bool(module.inplace)


@writes('ReLU', accepts=(nn.ReLU, nn.Threshold))
def _write_relu(saver, module, fields, path):
    typename = lua_type(module)
    fields['inplace'] = bool(module.inplace)
    if isinstance(module, nn.Threshold):
        if typename.startswith('cudnn.') and (module.threshold != 0 or module.value != 0):
            raise T7Error(f'cannot save {typename} at {path}: cudnn.ReLU has no threshold or value')
        threshold, value = module.threshold, module.value
    else:
        threshold, value = 0, 0
    if typename.startswith('cudnn.'):
        fields['mode'] = 'CUDNN_ACTIVATION_RELU'
    else:
        fields.update(threshold=threshold, val=value)


@writes('Threshold', accepts=nn.Threshold)
def _write_threshold(saver, module, fields, path):
    fields.update(threshold=module.threshold, val=module.value, inplace=bool(module.inplace))


@writes('SoftMax', accepts=legacy.SoftMax)
@writes('LogSoftMax', accepts=legacy.LogSoftMax)
def _write_softmax(saver, module, fields, path):
    if lua_type(module).startswith('cudnn.'):
        fields.update(algorithm='CUDNN_SOFTMAX_ACCURATE', iSize=long_storage([0, 0, 0, 0]))


@writes('Dropout', accepts=nn.Dropout)
def _write_dropout(saver, module, fields, path):
    fields.update(p=module.p, stochastic_inference=False, v2=not getattr(module, 'v1', False),
                  noise=saver.empty(module))
    if module.inplace:
        fields['inplace'] = True


@writes('SpatialDropout', accepts=nn.Dropout2d)
def _write_spatial_dropout(saver, module, fields, path):
    fields.update(p=module.p, stochastic_inference=False, noise=saver.empty(module))
