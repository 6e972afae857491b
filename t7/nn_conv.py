"""Torch7 nn/cudnn convolutions, Linear, Bilinear, LookupTable and OneHot as PyTorch modules and back."""

import torch
from torch import nn

from layers import conv
from layers.legacy import lua_type
from t7.read import T7Error
from t7.registry import builds, class_of, long_storage, pair, set_parameters, writes


def write_parameters(saver, module, fields, *names):
    """`name` and `gradName` fields for each parameter of `module` that is set, as the Lua constructors allocate
    them (the gradient buffers zeroed)."""
    for name in names:
        t = getattr(module, name)
        if t is not None:
            fields[name] = saver.tensor(t)
            fields['grad' + name[0].upper() + name[1:]] = saver.grad(t)


def _padding(f):
    # Files from before padW/padH kept one `padding` for both; SpatialConvolution's backCompatibility says so.
    padding = f.get('padding')
    if padding is not None:
        return f.int('padding'), f.int('padding')
    return f.int('padW', 0), f.int('padH', 0)


def _bias(f, n):
    return f.tensor('bias', (n,), optional=True)


def _cannot(module, path, why):
    return T7Error(f'cannot save {lua_type(module)} ({type(module).__name__}) at {path}: {why}')


# --- convolutions PyTorch has ------------------------------------------------------------------------------------

@builds('SpatialConvolution', 'SpatialConvolutionMM', 'SpatialDilatedConvolution')
def _convolution(loader, f, path):
    n_in, n_out, groups = f.int('nInputPlane'), f.int('nOutputPlane'), f.int('groups', 1)
    kw, kh = f.int('kW'), f.int('kH')
    if groups < 1 or n_in % groups or n_out % groups:
        raise T7Error(f'{f.typename} at {path}: {n_in} -> {n_out} planes cannot be split into {groups} groups')
    # Old nn files keep the weight as a 2-D matrix (and SpatialConvolutionMM always did); Lua views it as 4-D.
    weight = f.tensor('weight', (n_out, n_in // groups, kh, kw))
    bias = _bias(f, n_out)
    pad_w, pad_h = _padding(f)
    dilation = (f.int('dilationH', 1), f.int('dilationW', 1))
    module = nn.Conv2d(n_in, n_out, (kh, kw), (f.int('dH', 1), f.int('dW', 1)), (pad_h, pad_w), dilation,
                       groups=groups, bias=bias is not None, device='meta')
    return set_parameters(loader, module, weight, bias)


@builds('SpatialFullConvolution')
def _full_convolution(loader, f, path):
    n_in, n_out, kw, kh = f.int('nInputPlane'), f.int('nOutputPlane'), f.int('kW'), f.int('kH')
    weight = f.tensor('weight', (n_in, n_out, kh, kw))
    bias = _bias(f, n_out)
    # Files from before adjW/adjH have none (their backCompatibility sets 0).
    module = nn.ConvTranspose2d(n_in, n_out, (kh, kw), (f.int('dH', 1), f.int('dW', 1)),
                                (f.int('padH', 0), f.int('padW', 0)), (f.int('adjH', 0), f.int('adjW', 0)),
                                bias=bias is not None, device='meta')
    return set_parameters(loader, module, weight, bias)


@builds('VolumetricConvolution')
def _volumetric_convolution(loader, f, path):
    n_in, n_out = f.int('nInputPlane'), f.int('nOutputPlane')
    kernel = (f.int('kT'), f.int('kH'), f.int('kW'))
    weight = f.tensor('weight', (n_out, n_in) + kernel)
    bias = _bias(f, n_out)
    module = nn.Conv3d(n_in, n_out, kernel, (f.int('dT', 1), f.int('dH', 1), f.int('dW', 1)),
                       (f.int('padT', 0), f.int('padH', 0), f.int('padW', 0)), bias=bias is not None, device='meta')
    return set_parameters(loader, module, weight, bias)


@builds('VolumetricFullConvolution')
def _volumetric_full_convolution(loader, f, path):
    n_in, n_out = f.int('nInputPlane'), f.int('nOutputPlane')
    kernel = (f.int('kT'), f.int('kH'), f.int('kW'))
    if f.get('adjW') is None:
        # Files from before the adj fields stored the weight nOutputPlane x nInputPlane; Lua transposes it on use.
        weight = f.tensor('weight', (n_out, n_in) + kernel).transpose(0, 1).contiguous()
    else:
        weight = f.tensor('weight', (n_in, n_out) + kernel)
    bias = _bias(f, n_out)
    pad = tuple(f.int(name, f.int(old, 0)) for name, old in (('padT', 'pT'), ('padH', 'pH'), ('padW', 'pW')))
    module = nn.ConvTranspose3d(n_in, n_out, kernel, (f.int('dT', 1), f.int('dH', 1), f.int('dW', 1)), pad,
                                (f.int('adjT', 0), f.int('adjH', 0), f.int('adjW', 0)), bias=bias is not None,
                                device='meta')
    return set_parameters(loader, module, weight, bias)


@builds('Linear', 'LinearNoBias')
def _linear(loader, f, path):
    weight = f.tensor('weight')
    if weight.dim() != 2:
        f.fail('weight', 'a 2-D tensor')
    n_out, n_in = weight.shape
    bias = _bias(f, n_out)
    return set_parameters(loader, nn.Linear(n_in, n_out, bias=bias is not None, device='meta'), weight, bias)


def _plain_convolution(module, path, dilated=False):
    if module.padding_mode != 'zeros' or isinstance(module.padding, str):
        raise _cannot(module, path, f'Torch7 convolutions pad with zeros by a number of pixels, not '
                                    f'{module.padding!r} {module.padding_mode} padding')
    if not dilated and any(d != 1 for d in module.dilation):
        raise _cannot(module, path, 'it has no dilation; name it nn.SpatialDilatedConvolution with layers.named')
    if module.groups != 1 and not lua_type(module).startswith('cudnn.'):
        raise _cannot(module, path, f'groups={module.groups}: only cudnn.SpatialConvolution has groups; name it so '
                                    'with layers.named')


@writes('SpatialConvolution', 'SpatialConvolutionMM', 'SpatialDilatedConvolution', accepts=nn.Conv2d)
def _write_convolution(saver, module, fields, path):
    name = class_of(lua_type(module))
    _plain_convolution(module, path, dilated=name == 'SpatialDilatedConvolution')
    (kh, kw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, pair(module.padding)
    fields.update(nInputPlane=module.in_channels, nOutputPlane=module.out_channels, kW=kw, kH=kh, dW=dw, dH=dh,
                  padW=pw, padH=ph)
    write_parameters(saver, module, fields, 'weight', 'bias')
    if name == 'SpatialConvolutionMM':
        # SpatialConvolutionMM's constructor makes the weight a matrix nOutputPlane x (nInputPlane*kH*kW).
        fields['weight'] = fields['weight'].view(module.out_channels, -1)
        fields['gradWeight'] = fields['gradWeight'].view(module.out_channels, -1)
    if name == 'SpatialDilatedConvolution':
        fields.update(dilationH=module.dilation[0], dilationW=module.dilation[1])
    if lua_type(module).startswith('cudnn.'):
        fields['groups'] = module.groups
        fields['iSize'] = long_storage([0, 0, 0, 0])


@writes('SpatialFullConvolution', accepts=nn.ConvTranspose2d)
def _write_full_convolution(saver, module, fields, path):
    _plain_convolution(module, path)
    if module.groups != 1:
        raise _cannot(module, path, f'groups={module.groups}: Torch7 full convolutions have no groups')
    (kh, kw), (dh, dw), (ph, pw), (ah, aw) = (module.kernel_size, module.stride, pair(module.padding),
                                              pair(module.output_padding))
    fields.update(nInputPlane=module.in_channels, nOutputPlane=module.out_channels, kW=kw, kH=kh, dW=dw, dH=dh,
                  padW=pw, padH=ph, adjW=aw, adjH=ah, ones=saver.empty(module))
    write_parameters(saver, module, fields, 'weight', 'bias')


@writes('VolumetricConvolution', accepts=nn.Conv3d)
@writes('VolumetricFullConvolution', accepts=nn.ConvTranspose3d)
def _write_volumetric_convolution(saver, module, fields, path):
    _plain_convolution(module, path)
    if module.groups != 1:
        raise _cannot(module, path, f'groups={module.groups}: Torch7 volumetric convolutions have no groups')
    (kt, kh, kw), (dt, dh, dw), (pt, ph, pw) = module.kernel_size, module.stride, module.padding
    fields.update(nInputPlane=module.in_channels, nOutputPlane=module.out_channels, kT=kt, kW=kw, kH=kh, dT=dt,
                  dW=dw, dH=dh, padT=pt, padW=pw, padH=ph)
    write_parameters(saver, module, fields, 'weight', 'bias')
    if isinstance(module, nn.ConvTranspose3d):
        at, ah, aw = module.output_padding
        # Its constructor makes the buffers that its updateOutput hands to THNN without checking them.
        fields.update(adjT=at, adjW=aw, adjH=ah, ones=saver.empty(module), finput=saver.empty(module),
                      fgradInput=saver.empty(module))


@writes('Linear', accepts=nn.Linear)
def _write_linear(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight', 'bias')


@writes('LinearNoBias', accepts=nn.Linear)
def _write_linear_no_bias(saver, module, fields, path):
    # The rnn package's Linear without a bias (which nn.Linear gained later with its bias flag).
    if module.bias is not None:
        raise _cannot(module, path, 'it has a bias')
    write_parameters(saver, module, fields, 'weight')


# --- the project's convolution layers ----------------------------------------------------------------------------

def conn_table(f):
    """The connTable of a SpatialConvolutionMap or SpatialFullConvolutionMap, checked."""
    table = f.tensor('connTable')
    if table.dim() != 2 or table.size(1) != 2 or table.numel() == 0 or table.min() < 1:
        f.fail('connTable', 'a K x 2 table of 1-based {input plane, output plane} pairs')
    return table


@builds('SpatialConvolutionMap')
def _convolution_map(loader, f, path):
    table = conn_table(f)
    kw, kh = f.int('kW'), f.int('kH')
    module = conv.SpatialConvolutionMap(table, kw, kh, f.int('dW', 1), f.int('dH', 1), device='meta')
    module.nInputPlane = f.int('nInputPlane', module.nInputPlane)
    module.nOutputPlane = f.int('nOutputPlane', module.nOutputPlane)
    if module.nInputPlane < int(table[:, 0].max()) or module.nOutputPlane < int(table[:, 1].max()):
        f.fail('connTable', f'plane numbers within {module.nInputPlane} inputs and {module.nOutputPlane} outputs')
    return set_parameters(loader, module, f.tensor('weight', (table.size(0), kh, kw)),
                          f.tensor('bias', (module.nOutputPlane,)))


@builds('SpatialSubSampling')
def _subsampling(loader, f, path):
    n = f.int('nInputPlane')
    module = conv.SpatialSubSampling(n, f.int('kW'), f.int('kH'), f.int('dW', 1), f.int('dH', 1), device='meta')
    weight = f.tensor('weight')
    if weight.dim() > 1 and weight.size(0) == n and weight.is_contiguous():
        # The C code takes one number per plane from the first nInputPlane of the weight's memory, whatever its
        # shape: torch's 2012 demos saved nInputPlane x kH x kW weights.
        weight = weight.reshape(-1)[:n]
    else:
        weight = f.tensor('weight', (n,))
    return set_parameters(loader, module, weight, f.tensor('bias', (n,)))


@builds('TemporalConvolution')
def _temporal_convolution(loader, f, path):
    n_in, n_out = f.int('inputFrameSize'), f.int('outputFrameSize')
    if f.typename.startswith('cudnn.'):
        # cudnn's is a SpatialConvolution over a (time x frame) image: time is its H axis, the frame its W axis.
        kw, dw, pad = f.int('kH'), f.int('dH', 1), f.int('padH', 0)
    else:
        kw, dw, pad = f.int('kW'), f.int('dW', 1), 0
    module = conv.TemporalConvolution(n_in, n_out, kw, dw, device='meta', pad=pad)
    return set_parameters(loader, module, f.tensor('weight', (n_out, kw * n_in)), f.tensor('bias', (n_out,)))


@builds('SpatialConvolutionLocal')
def _local_convolution(loader, f, path):
    n_in, n_out = f.int('nInputPlane'), f.int('nOutputPlane')
    module = conv.SpatialConvolutionLocal(n_in, n_out, f.int('iW'), f.int('iH'), f.int('kW'), f.int('kH'),
                                          f.int('dW', 1), f.int('dH', 1), f.int('padW', 0), f.int('padH', 0),
                                          device='meta')
    for name in ('oW', 'oH'):
        if f.int(name, getattr(module, name)) != getattr(module, name):
            f.fail(name, f'{getattr(module, name)} (what the input size, kernel, stride and padding give)')
    return set_parameters(loader, module, f.tensor('weight', tuple(module.weight.shape)),
                          f.tensor('bias', tuple(module.bias.shape)))


@builds('SpatialDepthWiseConvolution')
def _depthwise_convolution(loader, f, path):
    n_in, n_out, kw, kh = f.int('nInputPlane'), f.int('nOutputPlane'), f.int('kW'), f.int('kH')
    bias = f.tensor('bias', (n_out, n_in), optional=True)
    pad_w, pad_h = _padding(f)
    module = conv.SpatialDepthWiseConvolution(n_in, n_out, kw, kh, f.int('dW', 1), f.int('dH', 1), pad_w, pad_h,
                                              bias=bias is not None, device='meta')
    return set_parameters(loader, module, f.tensor('weight', (n_out, n_in, kh, kw)), bias)


@builds('Bilinear')
def _bilinear(loader, f, path):
    weight = f.tensor('weight')
    if weight.dim() != 3:
        f.fail('weight', 'a 3-D tensor outputSize x inputSize1 x inputSize2')
    n_out, n_in1, n_in2 = weight.shape
    bias = _bias(f, n_out)
    module = conv.Bilinear(n_in1, n_in2, n_out, bias=bias is not None, device='meta')
    return set_parameters(loader, module, weight, bias)


@builds('LookupTable')
def _lookup_table(loader, f, path):
    weight = f.tensor('weight')
    if weight.dim() != 2:
        f.fail('weight', 'a 2-D tensor nIndex x nOutput')
    max_norm, norm_type = f.get('maxNorm'), f.get('normType')
    module = conv.LookupTable(*weight.shape, paddingValue=f.int('paddingValue', 0),
                              maxNorm=None if max_norm is None else f.number('maxNorm'),
                              normType=None if norm_type is None else f.number('normType'),
                              scaleGradByFreq=f.flag('shouldScaleGradByFreq'), device='meta')
    if module.normType is not None and module.normType <= 0:
        f.fail('normType', 'a positive number')
    module.weight = loader.parameter(weight)
    return module


@builds('OneHot')
def _one_hot(loader, f, path):
    module = conv.OneHot(f.int('outputSize'))
    # Its output has the module's type (a model saved as doubles feeds doubles on), which the output buffer keeps.
    output = f.get('output')
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        module.like = torch.empty(0, dtype=output.dtype)
    return module


@writes('SpatialConvolutionMap', accepts=conv.SpatialConvolutionMap)
def _write_convolution_map(saver, module, fields, path):
    fields.update(kW=module.kW, kH=module.kH, dW=module.dW, dH=module.dH, nInputPlane=module.nInputPlane,
                  nOutputPlane=module.nOutputPlane, connTable=saver.tensor(module.connTable))
    write_parameters(saver, module, fields, 'weight', 'bias')


@writes('SpatialSubSampling', accepts=conv.SpatialSubSampling)
def _write_subsampling(saver, module, fields, path):
    fields.update(nInputPlane=module.nInputPlane, kW=module.kW, kH=module.kH, dW=module.dW, dH=module.dH)
    write_parameters(saver, module, fields, 'weight', 'bias')


@writes('TemporalConvolution', accepts=conv.TemporalConvolution)
def _write_temporal_convolution(saver, module, fields, path):
    fields.update(inputFrameSize=module.inputFrameSize, outputFrameSize=module.outputFrameSize)
    if lua_type(module).startswith('cudnn.'):
        fields.update(nInputPlane=1, nOutputPlane=module.outputFrameSize, kW=module.inputFrameSize, kH=module.kW,
                      dW=1, dH=module.dW, padW=0, padH=module.pad, groups=1)
    elif module.pad:
        raise _cannot(module, path, 'nn.TemporalConvolution has no padding (cudnn.TemporalConvolution has)')
    else:
        fields.update(kW=module.kW, dW=module.dW)
    write_parameters(saver, module, fields, 'weight', 'bias')


@writes('SpatialConvolutionLocal', accepts=conv.SpatialConvolutionLocal)
def _write_local_convolution(saver, module, fields, path):
    fields.update({name: getattr(module, name) for name in (
        'nInputPlane', 'nOutputPlane', 'kW', 'kH', 'iW', 'iH', 'dW', 'dH', 'padW', 'padH', 'oW', 'oH')})
    write_parameters(saver, module, fields, 'weight', 'bias')


@writes('SpatialDepthWiseConvolution', accepts=conv.SpatialDepthWiseConvolution)
def _write_depthwise_convolution(saver, module, fields, path):
    fields.update({name: getattr(module, name) for name in (
        'nInputPlane', 'nOutputPlane', 'kW', 'kH', 'dW', 'dH', 'padW', 'padH')})
    write_parameters(saver, module, fields, 'weight', 'bias')


@writes('Bilinear', accepts=conv.Bilinear)
def _write_bilinear(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight', 'bias')
    fields['gradInput'] = [saver.empty(module), saver.empty(module)]


@writes('LookupTable', accepts=conv.LookupTable)
def _write_lookup_table(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight')
    fields.update(paddingValue=module.paddingValue, shouldScaleGradByFreq=module.scaleGradByFreq,
                  _count=torch.empty(0, dtype=torch.int32), _input=torch.empty(0, dtype=torch.int64))
    if module.maxNorm is not None:
        fields['maxNorm'] = module.maxNorm
    if module.normType is not None:
        fields['normType'] = module.normType


@writes('OneHot', accepts=conv.OneHot)
def _write_one_hot(saver, module, fields, path):
    fields['outputSize'] = module.outputSize
