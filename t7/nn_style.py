"""fast-neural-style's InstanceNormalization (texture_nets' too), ShaveImage and TotalVariation as PyTorch modules and
back."""

import torch

from layers import style
from t7.nn_conv import write_parameters
from t7.registry import builds, writes


@builds('InstanceNormalization')
def _instance_normalization(loader, f, path):
    n = f.int('nOutput')
    affine = f.flag('affine', True)
    module = style.InstanceNormalization(n, f.number('eps', 1e-5), affine, device='meta')
    if affine:
        module.weight = loader.parameter(f.tensor('weight', (n,)))
        module.bias = loader.parameter(f.tensor('bias', (n,)))
    return module


@writes('InstanceNormalization', accepts=style.InstanceNormalization)
def _write_instance_normalization(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight', 'bias')
    # The fields of both Lua classes of this name: fast-neural-style's (prev_N) and texture_nets' (affine, running
    # statistics, prev_batch_size); -1 makes either build its inner SpatialBatchNormalization on the first forward.
    n = module.nOutput
    fields.update(nOutput=n, eps=module.eps, prev_N=-1, prev_batch_size=-1, affine=module.weight is not None,
                  momentum=0.0, running_mean=torch.zeros(n), running_var=torch.ones(n))


@builds('ShaveImage')
def _shave_image(loader, f, path):
    return style.ShaveImage(f.int('size'))


@writes('ShaveImage', accepts=style.ShaveImage)
def _write_shave_image(saver, module, fields, path):
    fields['size'] = module.size


@builds('TotalVariation')
def _total_variation(loader, f, path):
    return style.TotalVariation(f.number('strength'))


@writes('TotalVariation', accepts=style.TotalVariation)
def _write_total_variation(saver, module, fields, path):
    fields.update(strength=module.strength, x_diff=saver.empty(module), y_diff=saver.empty(module))
