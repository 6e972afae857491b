"""The Lua class name every module carries: Torch7's class for each PyTorch module the project builds or converts."""
from torch import nn

# Lua class names of the plain PyTorch modules the models are built from. A module created for a cudnn.* Lua
# class records that with `named(...)`; everything else falls back to this table.
_DEFAULT_LUA_TYPES = {
    nn.Sequential: 'nn.Sequential',
    nn.Conv2d: 'nn.SpatialConvolution',
    nn.BatchNorm2d: 'nn.SpatialBatchNormalization',
    nn.ReLU: 'nn.ReLU',
    nn.MaxPool2d: 'nn.SpatialMaxPooling',
    nn.AvgPool2d: 'nn.SpatialAveragePooling',
    nn.Dropout: 'nn.Dropout',
    nn.Linear: 'nn.Linear',
    nn.Identity: 'nn.Identity',
    # PyTorch modules that compute what these Lua classes compute (t7.save_model writes them as such).
    nn.ConvTranspose2d: 'nn.SpatialFullConvolution',
    nn.Conv3d: 'nn.VolumetricConvolution',
    nn.ConvTranspose3d: 'nn.VolumetricFullConvolution',
    nn.MaxPool3d: 'nn.VolumetricMaxPooling',
    nn.AvgPool3d: 'nn.VolumetricAveragePooling',
    nn.AdaptiveMaxPool2d: 'nn.SpatialAdaptiveMaxPooling',
    nn.AdaptiveAvgPool2d: 'nn.SpatialAdaptiveAveragePooling',
    nn.PixelShuffle: 'nn.PixelShuffle',
    nn.ZeroPad2d: 'nn.SpatialZeroPadding',
    nn.ReflectionPad2d: 'nn.SpatialReflectionPadding',
    nn.ReplicationPad2d: 'nn.SpatialReplicationPadding',
    nn.BatchNorm1d: 'nn.BatchNormalization',
    nn.BatchNorm3d: 'nn.VolumetricBatchNormalization',
    nn.Threshold: 'nn.Threshold',
    nn.ReLU6: 'nn.ReLU6',
    nn.PReLU: 'nn.PReLU',
    nn.RReLU: 'nn.RReLU',
    nn.LeakyReLU: 'nn.LeakyReLU',
    nn.ELU: 'nn.ELU',
    nn.Tanh: 'nn.Tanh',
    nn.Sigmoid: 'nn.Sigmoid',
    nn.Hardtanh: 'nn.HardTanh',
    nn.Hardshrink: 'nn.HardShrink',
    nn.Softshrink: 'nn.SoftShrink',
    nn.Tanhshrink: 'nn.TanhShrink',
    nn.Softplus: 'nn.SoftPlus',
    nn.Softsign: 'nn.SoftSign',
    nn.LogSigmoid: 'nn.LogSigmoid',
}


def lua_type(module):
    """The Lua class name of `module` (what torch.type() would say of its Torch7 counterpart)."""
    name = getattr(module, 'lua_type', None)
    if name:
        return name
    for cls in type(module).__mro__:
        if cls in _DEFAULT_LUA_TYPES:
            return _DEFAULT_LUA_TYPES[cls]
    raise TypeError(f'{type(module).__name__} has no Torch7 counterpart')


def named(module, name):
    """Record that `module` stands for the Lua class `name` (e.g. 'cudnn.SpatialConvolution'); returns it."""
    module.lua_type = name
    return module
