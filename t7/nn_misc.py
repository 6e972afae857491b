"""Torch7 nn's GradientReversal, ZeroGrad, L1Penalty, PrintSize, WhiteNoise, the classes built as an nn.Sequential
(Maxout, LayerNormalization, CReLU), Collapse, GatedLinearUnit, Constant, Index and MaskedSelect as PyTorch modules
and back."""

import torch
from torch import nn

from layers import activation, containers, misc, tables
from t7.registry import VERSION_2, builds, writes

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
