"""Torch7 nn/cudnn batch normalization as PyTorch modules and back."""

import torch
from torch import nn

from layers.legacy import lua_type
from t7.read import T7Error
from t7.registry import builds, class_of, set_parameters, writes


@builds('SpatialBatchNormalization', 'BatchNormalization')
def _batch_norm(loader, f, path):
    mean = f.tensor('running_mean')
    eps = f.number('eps', 1e-5)
    var = f.tensor('running_var', optional=True)
    if f.obj.version < 2 and f.get('running_std') is not None:
        # BatchNormalization:read of nn converts files from before running_var this way.
        var = f.tensor('running_std').pow(-2).add(-eps)
    if var is None:
        f.fail('running_var', 'a floating point tensor')
    n = mean.numel()
    weight = f.tensor('weight', (n,), optional=True)
    bias = f.tensor('bias', (n,), optional=True)
    affine = f.flag('affine', weight is not None)
    if affine != (weight is not None and bias is not None):
        raise T7Error(f'{f.typename} at {path}: affine={affine} but weight/bias are '
                      f'{"missing" if affine else "present"}')
    spatial = class_of(f.typename).startswith('Spatial')
    bn = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(n, eps=eps, momentum=f.number('momentum', 0.1),
                                                         affine=affine, device='meta')
    if affine:
        set_parameters(loader, bn, weight, bias)
    bn.running_mean = mean.reshape(n)
    bn.running_var = var.reshape(n)
    bn.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    return bn


@writes('BatchNormalization', accepts=nn.BatchNorm1d)
@writes('SpatialBatchNormalization', accepts=nn.BatchNorm2d)
def _write_batch_norm(saver, module, fields, path):
    if not module.track_running_stats or module.running_mean is None:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: Torch7 BatchNormalization keeps running '
                      'statistics; this one has track_running_stats=False')
    if module.momentum is None:
        raise T7Error(f'cannot save {lua_type(module)} at {path}: momentum=None (a cumulative average) has no '
                      'Torch7 equivalent; set a momentum such as 0.1')
    fields.update(eps=module.eps, momentum=module.momentum, affine=module.affine,
                  running_mean=saver.tensor(module.running_mean), running_var=saver.tensor(module.running_var))
    if module.affine:
        fields.update(weight=saver.tensor(module.weight), bias=saver.tensor(module.bias),
                      gradWeight=saver.grad(module.weight), gradBias=saver.grad(module.bias))
