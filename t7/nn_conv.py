"""Torch7 nn/cudnn convolutions and Linear as PyTorch modules and back."""

from torch import nn

from layers.legacy import lua_type
from t7.read import T7Error
from t7.registry import builds, long_storage, pair, set_parameters, writes


@builds('SpatialConvolution', 'SpatialConvolutionMM')
def _convolution(loader, f, path):
    n_in, n_out, groups = f.int('nInputPlane'), f.int('nOutputPlane'), f.int('groups', 1)
    kw, kh = f.int('kW'), f.int('kH')
    if groups < 1 or n_in % groups or n_out % groups:
        raise T7Error(f'{f.typename} at {path}: {n_in} -> {n_out} planes cannot be split into {groups} groups')
    # Old nn files keep the weight as a 2-D matrix; Lua views it as 4-D on reading, so does this.
    weight = f.tensor('weight', (n_out, n_in // groups, kh, kw))
    bias = f.tensor('bias', (n_out,), optional=True)
    padding = f.get('padding')
    pad_w, pad_h = (padding, padding) if padding is not None else (f.int('padW', 0), f.int('padH', f.int('padW', 0)))
    conv = nn.Conv2d(n_in, n_out, (kh, kw), (f.int('dH', 1), f.int('dW', 1)), (int(pad_h), int(pad_w)),
                     groups=groups, bias=bias is not None, device='meta')
    return set_parameters(loader, conv, weight, bias)


@builds('Linear')
def _linear(loader, f, path):
    weight = f.tensor('weight')
    if weight.dim() != 2:
        f.fail('weight', 'a 2-D tensor')
    n_out, n_in = weight.shape
    bias = f.tensor('bias', (n_out,), optional=True)
    return set_parameters(loader, nn.Linear(n_in, n_out, bias=bias is not None, device='meta'), weight, bias)


@writes('SpatialConvolution', 'SpatialConvolutionMM', accepts=nn.Conv2d)
def _write_convolution(saver, module, fields, path):
    typename = lua_type(module)
    if module.dilation != (1, 1) or module.padding_mode != 'zeros' or isinstance(module.padding, str):
        raise T7Error(f'cannot save {typename} at {path}: Torch7 convolutions have no dilation, '
                      f'string padding or {module.padding_mode} padding')
    if module.groups != 1 and not typename.startswith('cudnn.'):
        raise T7Error(f'cannot save {typename} at {path} with groups={module.groups}: only '
                      'cudnn.SpatialConvolution has groups; name it so with layers.named')
    (kh, kw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, pair(module.padding)
    fields.update(nInputPlane=module.in_channels, nOutputPlane=module.out_channels, kW=kw, kH=kh, dW=dw, dH=dh,
                  padW=pw, padH=ph)
    fields['weight'] = saver.tensor(module.weight)
    fields['gradWeight'] = saver.grad(module.weight)
    if module.bias is not None:
        fields['bias'] = saver.tensor(module.bias)
        fields['gradBias'] = saver.grad(module.bias)
    if typename.startswith('cudnn.'):
        fields['groups'] = module.groups
        fields['iSize'] = long_storage([0, 0, 0, 0])


@writes('Linear', accepts=nn.Linear)
def _write_linear(saver, module, fields, path):
    fields['weight'] = saver.tensor(module.weight)
    fields['gradWeight'] = saver.grad(module.weight)
    if module.bias is not None:
        fields['bias'] = saver.tensor(module.bias)
        fields['gradBias'] = saver.grad(module.bias)
