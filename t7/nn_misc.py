"""Torch7 nn's GradientReversal, ZeroGrad, L1Penalty, PrintSize, WhiteNoise, the classes built as an nn.Sequential
(Maxout, LayerNormalization, CReLU), Collapse, GatedLinearUnit, Constant, Index, MaskedSelect, MixtureTable,
TemporalSubSampling, FeatureLPPooling, UpSampling, PartialLinear, SpatialFullConvolutionMap, TemporalRowConvolution,
TemporalDynamicKMaxPooling, SpatialFractionalMaxPooling, Kmeans, ZipTable, ZipTableOneToMany, CAddTensorTable, the
dilated and replication-padded volumetric classes as PyTorch modules and back, and the refusal of the
classes that cannot convert."""

import torch
from torch import nn

from layers import activation, containers, misc, tables
from t7.nn_conv import conn_table, write_parameters
from t7.read import T7Error
from t7.registry import VERSION_2, builds, long_storage, set_parameters, writes

# GradientReversal's version 2 saves lambda; its read of an older file takes 1.
VERSION_2.add('GradientReversal')


@builds('GradientReversal')
def _gradient_reversal(loader, f, path):
    return misc.GradientReversal(f.number('lambda', 1) if f.obj.version >= 2 else 1)


@writes('GradientReversal', accepts=misc.GradientReversal)
def _write_gradient_reversal(saver, module, fields, path):
    fields['lambda'] = module.lambda_


@builds('ZeroGrad')
def _zero_grad(loader, f, path):
    return misc.ZeroGrad()


@writes('ZeroGrad', accepts=misc.ZeroGrad)
def _write_zero_grad(saver, module, fields, path):
    """ZeroGrad has no fields besides nn.Module's."""


@builds('L1Penalty')
def _l1_penalty(loader, f, path):
    return misc.L1Penalty(f.number('l1weight'), f.flag('sizeAverage'), f.flag('provideOutput', True))


@writes('L1Penalty', accepts=misc.L1Penalty)
def _write_l1_penalty(saver, module, fields, path):
    fields.update(l1weight=module.l1weight, sizeAverage=module.sizeAverage, provideOutput=module.provideOutput)


@builds('PrintSize')
def _print_size(loader, f, path):
    prefix = f.get('prefix', 'PrintSize')
    if not isinstance(prefix, str):
        f.fail('prefix', 'a string')
    return misc.PrintSize(prefix)


@writes('PrintSize', accepts=misc.PrintSize)
def _write_print_size(saver, module, fields, path):
    fields['prefix'] = module.prefix


@builds('WhiteNoise')
def _white_noise(loader, f, path):
    return misc.WhiteNoise(f.number('mean', 0), f.number('std', 0.1))


@writes('WhiteNoise', accepts=misc.WhiteNoise)
def _write_white_noise(saver, module, fields, path):
    fields.update(mean=module.mean, std=module.std, noise=saver.empty(module))


# Maxout and LayerNormalization keep nn.Sequential's forward over the modules their constructors add.
@builds('Maxout', 'LayerNormalization')
def _sequential_subclass(loader, f, path):
    return nn.Sequential(*loader.children(f, path))


@writes('Maxout', 'LayerNormalization', accepts=nn.Sequential)
def _write_sequential_subclass(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)


@builds('CReLU')
def _crelu(loader, f, path):
    return misc.CReLU(f.int('nInputDims'), f.flag('inplace'))


@writes('CReLU', accepts=misc.CReLU)
def _write_crelu(saver, module, fields, path):
    # The modules CReLU's constructor adds, which its updateOutput runs on the flattened input.
    relu = nn.ReLU(module.inplace)
    branches = containers.ConcatTable(tables.Identity(), activation.MulConstant(-1))
    saver.keep.append(branches)
    fields.update(nInputDims=module.nInputDims, inplace=module.inplace,
                  modules=[saver.obj(m, f'{path}.modules[{i}]')
                           for i, m in enumerate((branches, tables.JoinTable(2), relu))])


@builds('Collapse')
def _collapse(loader, f, path):
    return misc.Collapse(f.int('nInputDim'))


@writes('Collapse', accepts=misc.Collapse)
def _write_collapse(saver, module, fields, path):
    fields['nInputDim'] = module.nInputDim


@builds('GatedLinearUnit')
def _gated_linear_unit(loader, f, path):
    return misc.GatedLinearUnit(None if f.get('dim') is None else f.int('dim'))


@writes('GatedLinearUnit', accepts=misc.GatedLinearUnit)
def _write_gated_linear_unit(saver, module, fields, path):
    if module.dim is not None:
        fields['dim'] = module.dim


@builds('Constant')
def _constant(loader, f, path):
    value = f.get('value')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor([float(value)])
    if not isinstance(value, torch.Tensor):
        f.fail('value', 'a tensor')
    return misc.Constant(value.clone(), None if f.get('nInputDim') is None else f.int('nInputDim'))


@writes('Constant', accepts=misc.Constant)
def _write_constant(saver, module, fields, path):
    fields['value'] = saver.tensor(module.value)
    if module.nInputDim is not None:
        fields['nInputDim'] = module.nInputDim


@builds('Index')
def _index(loader, f, path):
    return misc.Index(f.int('dimension'))


@writes('Index', accepts=misc.Index)
def _write_index(saver, module, fields, path):
    fields.update(dimension=module.dimension, gradInput=[saver.empty(module), saver.empty(module)])


@builds('MaskedSelect')
def _masked_select(loader, f, path):
    return misc.MaskedSelect()


@writes('MaskedSelect', accepts=misc.MaskedSelect)
def _write_masked_select(saver, module, fields, path):
    fields.update(_maskIndices=torch.zeros(0, dtype=torch.int64), _maskIndexBuffer=torch.zeros(0, dtype=torch.int64),
                  _maskIndexBufferCPU=torch.zeros(0, dtype=torch.float32), _gradBuffer=saver.empty(module),
                  _gradMask=torch.zeros(0, dtype=torch.uint8))


@builds('MixtureTable')
def _mixture_table(loader, f, path):
    return misc.MixtureTable(None if f.get('dim') is None else f.int('dim'))


@writes('MixtureTable', accepts=misc.MixtureTable)
def _write_mixture_table(saver, module, fields, path):
    if module.dim is not None:
        fields['dim'] = module.dim
    fields.update(size=long_storage([]), size2=long_storage([]), batchSize=0, backwardSetup=False, gradInput={})


@builds('TemporalSubSampling')
def _temporal_sub_sampling(loader, f, path):
    n = f.int('inputFrameSize')
    module = misc.TemporalSubSampling(n, f.int('kW'), f.int('dW', 1), device='meta')
    return set_parameters(loader, module, f.tensor('weight', (n,)), f.tensor('bias', (n,)))


@writes('TemporalSubSampling', accepts=misc.TemporalSubSampling)
def _write_temporal_sub_sampling(saver, module, fields, path):
    fields.update(inputFrameSize=module.inputFrameSize, kW=module.kW, dW=module.dW)
    write_parameters(saver, module, fields, 'weight', 'bias')


@builds('FeatureLPPooling')
def _feature_lp_pooling(loader, f, path):
    return misc.FeatureLPPooling(f.int('width'), f.int('stride'), f.number('power'), f.flag('batch_mode'))


@writes('FeatureLPPooling', accepts=misc.FeatureLPPooling)
def _write_feature_lp_pooling(saver, module, fields, path):
    power = int(module.power) if module.power.is_integer() else module.power
    fields.update(width=module.width, stride=module.stride, power=power, batch_mode=module.batch_mode)


@builds('UpSampling')
def _upsampling(loader, f, path):
    mode = f.get('mode', 'nearest')
    if mode not in ('nearest', 'linear'):
        f.fail('mode', "'nearest' or 'linear'")
    if f.get('scale_factor') is not None:
        return misc.UpSampling(f.int('scale_factor'), mode)
    if mode == 'nearest':
        f.fail('scale_factor', 'a number (nearest neighbour upsampling needs one)')
    depth = [] if f.get('odepth') is None else [f.int('odepth')]
    return misc.UpSampling(None, mode, depth + [f.int('oheight'), f.int('owidth')])


@writes('UpSampling', accepts=misc.UpSampling)
def _write_upsampling(saver, module, fields, path):
    fields.update(mode=module.mode, inputSize=long_storage([0] * 5), outputSize=long_storage([0] * 5))
    if module.scale_factor is not None:
        fields['scale_factor'] = module.scale_factor
    else:
        fields['oheight'], fields['owidth'] = module.size[-2:]
        if len(module.size) == 3:
            fields['odepth'] = module.size[0]


# --- volumetric classes that PyTorch has built in -------------------------------------------------------------------

@builds('VolumetricReplicationPadding')
def _volumetric_replication_padding(loader, f, path):
    left = f.int('pleft')
    pads = [left] + [f.int(name, left) for name in ('pright', 'ptop', 'pbottom', 'pfront', 'pback')]
    return nn.ReplicationPad3d(tuple(pads))


@writes('VolumetricReplicationPadding', accepts=nn.ReplicationPad3d)
def _write_volumetric_replication_padding(saver, module, fields, path):
    fields.update(zip(('pleft', 'pright', 'ptop', 'pbottom', 'pfront', 'pback'), module.padding))


@builds('VolumetricDilatedConvolution')
def _volumetric_dilated_convolution(loader, f, path):
    n_in, n_out = f.int('nInputPlane'), f.int('nOutputPlane')
    kernel = (f.int('kT'), f.int('kH'), f.int('kW'))
    weight = f.tensor('weight', (n_out, n_in) + kernel)
    bias = f.tensor('bias', (n_out,), optional=True)
    module = nn.Conv3d(n_in, n_out, kernel, (f.int('dT', 1), f.int('dH', 1), f.int('dW', 1)),
                       (f.int('padT', 0), f.int('padH', 0), f.int('padW', 0)),
                       (f.int('dilationT', 1), f.int('dilationH', 1), f.int('dilationW', 1)),
                       bias=bias is not None, device='meta')
    return set_parameters(loader, module, weight, bias)


@writes('VolumetricDilatedConvolution', accepts=nn.Conv3d)
def _write_volumetric_dilated_convolution(saver, module, fields, path):
    if module.groups != 1 or module.padding_mode != 'zeros' or isinstance(module.padding, str):
        raise T7Error(f'cannot save {type(module).__name__} at {path} as nn.VolumetricDilatedConvolution: Torch7 '
                      f'pads it with zeros by a number of pixels and has no groups')
    (kt, kh, kw), (dt, dh, dw), (pt, ph, pw), (lt, lh, lw) = (module.kernel_size, module.stride, module.padding,
                                                              module.dilation)
    fields.update(nInputPlane=module.in_channels, nOutputPlane=module.out_channels, kT=kt, kW=kw, kH=kh, dT=dt,
                  dW=dw, dH=dh, padT=pt, padW=pw, padH=ph, dilationT=lt, dilationW=lw, dilationH=lh,
                  finput=saver.empty(module), fgradInput=saver.empty(module))
    write_parameters(saver, module, fields, 'weight', 'bias')


@builds('VolumetricDilatedMaxPooling')
def _volumetric_dilated_max_pooling(loader, f, path):
    kernel = (f.int('kT'), f.int('kH'), f.int('kW'))
    return nn.MaxPool3d(kernel, (f.int('dT', kernel[0]), f.int('dH', kernel[1]), f.int('dW', kernel[2])),
                        (f.int('padT', 0), f.int('padH', 0), f.int('padW', 0)),
                        (f.int('dilationT', 1), f.int('dilationH', 1), f.int('dilationW', 1)),
                        ceil_mode=f.flag('ceil_mode'))


@writes('VolumetricDilatedMaxPooling', accepts=nn.MaxPool3d)
def _write_volumetric_dilated_max_pooling(saver, module, fields, path):
    if module.return_indices:
        raise T7Error(f'cannot save {type(module).__name__} at {path}: Torch7 max pooling returns no indices')
    kernel, stride, padding, dilation = (tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3 for v in (
        module.kernel_size, module.stride or module.kernel_size, module.padding, module.dilation))
    fields.update({f'{what}{axis}': n for what, values in (('k', kernel), ('d', stride), ('pad', padding),
                                                            ('dilation', dilation))
                   for axis, n in zip('THW', values)})
    fields.update(ceil_mode=bool(module.ceil_mode), indices=torch.empty(0, dtype=torch.int64))


@builds('PartialLinear')
def _partial_linear(loader, f, path):
    n_out = f.int('outputsize')
    network = loader.module(f.get('network'), f'{path}.network')
    partition = f.get('partition')
    if partition is None:
        partition = torch.arange(1, n_out + 1, dtype=torch.float64)
    if not isinstance(partition, torch.Tensor) or partition.dim() != 1:
        f.fail('partition', 'a 1-D tensor of column indices')
    bias = f.tensor('bias', (1, n_out), optional=True)
    return misc.PartialLinear(network, None if bias is None else loader.parameter(bias), partition.clone())


@writes('PartialLinear', accepts=misc.PartialLinear)
def _write_partial_linear(saver, module, fields, path):
    lookup = module.network[0][1]
    n_out, n_in = lookup.weight.shape
    fields.update(network=saver.obj(module.network, f'{path}.network'), inputsize=n_in, outputsize=n_out,
                  allcolumns=torch.arange(1, n_out + 1, dtype=torch.float64), partition=module.partition)
    write_parameters(saver, module, fields, 'bias')


@builds('SpatialFullConvolutionMap')
def _full_convolution_map(loader, f, path):
    table = conn_table(f)
    n_in, n_out = f.int('nInputPlane', int(table[:, 0].max())), f.int('nOutputPlane', int(table[:, 1].max()))
    kw, kh = f.int('kW'), f.int('kH')
    weight = loader.parameter(f.tensor('weight', (table.size(0), kh, kw)))
    bias = loader.parameter(f.tensor('bias', (n_out,)))
    return misc.SpatialFullConvolutionMap(table.clone(), kw, kh, f.int('dW', 1), f.int('dH', 1), n_in, n_out,
                                          weight, bias)


@writes('SpatialFullConvolutionMap', accepts=misc.SpatialFullConvolutionMap)
def _write_full_convolution_map(saver, module, fields, path):
    fields.update(kW=module.kW, kH=module.kH, dW=module.dW, dH=module.dH, connTable=module.connTable,
                  nInputPlane=module.nInputPlane, nOutputPlane=module.nOutputPlane)
    write_parameters(saver, module, fields, 'weight', 'bias')


@builds('TemporalRowConvolution')
def _temporal_row_convolution(loader, f, path):
    n, k = f.int('inputFrameSize'), f.int('kW')
    bias = f.tensor('bias', (n,), optional=True)
    return misc.TemporalRowConvolution(n, k, f.int('dW', 1), f.flag('featFirst'),
                                       loader.parameter(f.tensor('weight', (n, 1, k))),
                                       None if bias is None else loader.parameter(bias))


@writes('TemporalRowConvolution', accepts=misc.TemporalRowConvolution)
def _write_temporal_row_convolution(saver, module, fields, path):
    fields.update(inputFrameSize=module.inputFrameSize, kW=module.kW, dW=module.dW, featFirst=module.featFirst,
                  finput=saver.empty(module), fgradInput=saver.empty(module))
    write_parameters(saver, module, fields, 'weight', 'bias')


@builds('TemporalDynamicKMaxPooling')
def _temporal_dynamic_k_max_pooling(loader, f, path):
    return misc.TemporalDynamicKMaxPooling(f.int('minK'), f.number('factor', 0))


@writes('TemporalDynamicKMaxPooling', accepts=misc.TemporalDynamicKMaxPooling)
def _write_temporal_dynamic_k_max_pooling(saver, module, fields, path):
    fields.update(minK=module.minK, factor=module.factor)


@builds('SpatialFractionalMaxPooling')
def _fractional_max_pooling(loader, f, path):
    samples = f.get('randomSamples')
    if not f.flag('newRandomPool') or not isinstance(samples, torch.Tensor) or samples.dim() != 3:
        raise T7Error(f'unsupported module {f.typename} at {path}: its pooling regions are drawn at random on every '
                      f'forward (fixPoolingRegions was not called before saving, or no forward saved its samples), '
                      f'so no conversion can reproduce its output')
    sizes = (dict(outW=f.int('outW'), outH=f.int('outH')) if f.get('outW') is not None
             else dict(ratioW=float(f.number('ratioW')), ratioH=float(f.number('ratioH'))))
    return misc.SpatialFractionalMaxPooling(f.int('poolSizeW'), f.int('poolSizeH'), samples.clone(), **sizes)


@writes('SpatialFractionalMaxPooling', accepts=misc.SpatialFractionalMaxPooling)
def _write_fractional_max_pooling(saver, module, fields, path):
    fields.update(poolSizeW=module.poolSizeW, poolSizeH=module.poolSizeH, newRandomPool=True,
                  randomSamples=module.randomSamples, indices=torch.empty(0, dtype=torch.int64))
    if module.outW is not None:
        fields.update(outW=module.outW, outH=module.outH)
    else:
        fields.update(ratioW=module.ratioW, ratioH=module.ratioH)


@builds('Kmeans')
def _kmeans(loader, f, path):
    return misc.Kmeans(loader.parameter(f.tensor('weight', (f.int('k'), f.int('dim')))))


@writes('Kmeans', accepts=misc.Kmeans)
def _write_kmeans(saver, module, fields, path):
    k, dim = module.weight.shape
    fields.update(k=k, dim=dim, loss=0, clusterSampleCount=torch.zeros(k, dtype=module.weight.dtype))
    write_parameters(saver, module, fields, 'weight')


def _refuse(why):
    def builder(loader, f, path):
        raise T7Error(f'unsupported module {f.typename} at {path}: {why}')
    return builder


builds('SparseLinear', 'IndexLinear')(_refuse(
    'it takes sparse input (tables of {index, value} pairs) that the converted PyTorch modules do not carry; '
    'convert the dense nn.Linear with the same weight and bias instead'))
builds('VolumetricFractionalMaxPooling')(_refuse(
    'its pooling regions are drawn at random (PyTorch offers no way to pass the saved samples in Lua\'s order)'))


@builds('ZipTable')
def _zip_table(loader, f, path):
    return misc.ZipTable()


@builds('ZipTableOneToMany')
def _zip_table_one_to_many(loader, f, path):
    return misc.ZipTableOneToMany()


@builds('CAddTensorTable')
def _cadd_tensor_table(loader, f, path):
    return misc.CAddTensorTable()


@writes('ZipTable', accepts=misc.ZipTable)
@writes('CAddTensorTable', accepts=misc.CAddTensorTable)
def _write_table_module(saver, module, fields, path):
    fields['gradInput'] = {}
    if isinstance(module, misc.ZipTable):
        fields['output'] = {}


@writes('ZipTableOneToMany', accepts=misc.ZipTableOneToMany)
def _write_zip_table_one_to_many(saver, module, fields, path):
    fields.update(output={}, gradInput={}, gradInputEl=saver.empty(module))
