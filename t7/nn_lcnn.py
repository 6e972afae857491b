"""lcnn's PooledSpatialConvolution and clcNet's ChannelInterlace as the project's layers and back."""

import torch
from torch import nn

from layers.ChannelInterlace import ChannelInterlace
from layers.PooledSpatialConvolution import PooledSpatialConvolution
from t7.read import T7Error, TorchObject
from t7.registry import builds, class_of, tensor_type, writes


def _describe_conv(conv):
    if not isinstance(conv, nn.Conv2d):
        return type(conv).__name__
    return (f'weight {"x".join(map(str, conv.weight.shape))}, stride {conv.stride}, padding {conv.padding}, '
            f'groups {conv.groups}')


@builds('PooledSpatialConvolution')
def _pooled_convolution(loader, f, path):
    poolconv, alignconv = f.get('poolconv'), f.get('alignconv')
    if not isinstance(poolconv, TorchObject) or not isinstance(alignconv, TorchObject):
        raise T7Error(f'{f.typename} at {path}: fields poolconv and alignconv must be convolution modules')
    # Built on the meta device: no initial weights drawn (nor the global RNG moved) for the saved convs to replace.
    layer = PooledSpatialConvolution(f.int('nInputPlane'), f.int('nOutputPlane'), f.int('kW'), f.int('kH'),
                                     f.int('dW'), f.int('dH'), f.int('padW'), f.int('padH'), f.int('poolSize'),
                                     lambda_=f.number('lambda', 0.1), initialSparsity=1.0, device='meta')
    # The threshold is stored, not recomputed: it is what the Lua forward compares the align weights with.
    layer.sparseTh = f.number('sparseTh')
    for name, saved in (('poolconv', poolconv), ('alignconv', alignconv)):
        ours = getattr(layer, name)
        theirs = loader.module(saved, f'{path}.{name}')
        if (not isinstance(theirs, nn.Conv2d) or theirs.weight.shape != ours.weight.shape
                or theirs.stride != ours.stride or theirs.padding != ours.padding or theirs.groups != 1):
            raise T7Error(f'{f.typename} at {path}: {name} ({_describe_conv(theirs)}) does not match the layer '
                          f'({_describe_conv(ours)})')
        setattr(layer, name, theirs)
    return layer


@builds('ChannelInterlace')
def _channel_interlace(loader, f, path):
    channel, group = f.int('channel'), f.int('group')
    layer = ChannelInterlace(channel, group)
    for name in ('f_idx', 'b_idx'):
        saved = f.get(name)
        # :cuda() turns every tensor of a module into a CudaTensor, so the 1-based indices may be floats.
        if not isinstance(saved, torch.Tensor) or saved.numel() != channel:
            f.fail(name, f'a tensor of {channel} indices')
        index = saved.reshape(channel).to(torch.float64)
        if not torch.equal(index.sort().values, torch.arange(1, channel + 1, dtype=torch.float64)):
            f.fail(name, f'a permutation of 1..{channel}')
        setattr(layer, name, index.to(torch.long) - 1)
    return layer


@writes('PooledSpatialConvolution', accepts=PooledSpatialConvolution)
def _write_pooled_convolution(saver, module, fields, path):
    # The Lua class never calls its parent's constructor: no gradInput of its own; its output is alignconv's.
    del fields['gradInput']
    poolconv = saver.obj(module.poolconv, f'{path}.poolconv', reached=False)
    alignconv = saver.obj(module.alignconv, f'{path}.alignconv', reached=False)
    for name, conv in (('poolconv', poolconv), ('alignconv', alignconv)):
        if class_of(conv.typename) != 'SpatialConvolution':
            raise T7Error(f'cannot save {path}.{name}: a PooledSpatialConvolution needs a SpatialConvolution '
                          f'there, not {conv.typename}')
    sequential = TorchObject('nn.Sequential', {
        'output': saver.empty(module), 'gradInput': saver.empty(module), '_type': tensor_type(module),
        'modules': [poolconv, alignconv]})
    fields.update(nInputPlane=module.nInputPlane, nOutputPlane=module.nOutputPlane, kW=module.kW, kH=module.kH,
                  dW=module.dW, dH=module.dH, padW=module.padW, padH=module.padH, poolSize=module.poolSize,
                  sparseTh=module.sparseTh, poolconv=poolconv, alignconv=alignconv, m=sequential)
    fields['lambda'] = module.lambda_
    fields['output'] = alignconv.output
    fields['weight'] = poolconv.weight
    fields['gradWeight'] = poolconv.gradWeight
    if 'bias' in alignconv.fields:
        fields['bias'] = alignconv.bias
        fields['gradBias'] = alignconv.gradBias


@writes('ChannelInterlace', accepts=ChannelInterlace)
def _write_channel_interlace(saver, module, fields, path):
    fields.update(channel=module.channel, group=module.group, f_idx=module.f_idx.detach().cpu() + 1,
                  b_idx=module.b_idx.detach().cpu() + 1)
