"""Port of torch/nn's pooling, unpooling and up-sampling modules that PyTorch lacks or runs differently, and of the
paddings of nnx (SpatialPadding) and DeepMask (SpatialSymmetricPadding)."""
from typing import List

import torch
from torch import nn
import torch.nn.functional as F


class SpatialAveragePooling(nn.AvgPool2d):
    """nn.SpatialAveragePooling with divide=false: Lua multiplies the window averages (counted as
    count_include_pad says) by kW*kH. With divide=true it is nn.AvgPool2d."""
    lua_type = 'nn.SpatialAveragePooling'

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divide=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        self.divide = bool(divide)
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.window = kernel[0] * kernel[1]

    def forward(self, x):
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        return y if self.divide else y * self.window


class TemporalMaxPooling(nn.Module):
    """nn.TemporalMaxPooling(kW, dW): max over windows of kW frames of a (batch x) time x frame input."""
    lua_type = 'nn.TemporalMaxPooling'

    def __init__(self, kW, dW=None):
        super().__init__()
        self.kW, self.dW = kW, kW if dW is None else dW

    def forward(self, x):
        return F.max_pool1d(x.transpose(-1, -2), self.kW, self.dW).transpose(-1, -2)


class SpatialLPPooling(nn.Sequential):
    """nn.SpatialLPPooling(nInputPlane, pnorm, kW, kH, dW, dH): the Lua container of Square (or Power(p)), a
    kW x kH average pooling, MulConstant(kW*kH) and Sqrt (or Power(1/p)): the p-norm of each window."""
    lua_type = 'nn.SpatialLPPooling'

    def __init__(self, *modules, kW, kH, dW, dH):
        super().__init__(*modules)
        self.kW, self.kH, self.dW, self.dH = kW, kH, dW, dH


class SpatialUpSamplingNearest(nn.Module):
    """nn.SpatialUpSamplingNearest(scale): each pixel of a (batch of) C x H x W image repeated scale x scale."""
    lua_type = 'nn.SpatialUpSamplingNearest'

    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = int(scale_factor)

    def forward(self, x):
        return x.repeat_interleave(self.scale_factor, -1).repeat_interleave(self.scale_factor, -2)


class SpatialUpSamplingBilinear(nn.Module):
    """nn.SpatialUpSamplingBilinear(scale or {oheight=, owidth=}): bilinear up-sampling to H*scale x W*scale (or
    the given size) that maps the corner pixels onto each other (PyTorch's align_corners=True)."""
    lua_type = 'nn.SpatialUpSamplingBilinear'

    def __init__(self, scale_factor=0, oheight=0, owidth=0):
        super().__init__()
        if (scale_factor > 0) == (oheight > 0 and owidth > 0):
            raise ValueError('SpatialUpSamplingBilinear: give either an integer scale_factor or oheight and owidth')
        self.scale_factor, self.oheight, self.owidth = int(scale_factor), int(oheight), int(owidth)

    def forward(self, x):
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        size: List[int] = [self.oheight, self.owidth]
        if self.scale_factor > 0:
            size = [x.size(2) * self.scale_factor, x.size(3) * self.scale_factor]
        y = F.interpolate(x, size=size, mode='bilinear', align_corners=True)
        return y.squeeze(0) if single else y


class SpatialPadding(nn.Module):
    """nnx's nn.SpatialPadding(pad_l, pad_r, pad_t, pad_b, y_dim, x_dim, val) of the 2011-2013 models (nn's
    SpatialZeroPadding grew out of it): pads, or crops where negative, the 1-based dimensions y_dim and x_dim
    (2 and 3: the planes of one C x H x W image) with `val`."""
    lua_type = 'nn.SpatialPadding'

    def __init__(self, pad_l, pad_r=None, pad_t=None, pad_b=None, y_dim=2, x_dim=3, val=0.0):
        super().__init__()
        self.pad_l = int(pad_l)
        self.pad_r, self.pad_t, self.pad_b = (self.pad_l if p is None else int(p) for p in (pad_r, pad_t, pad_b))
        self.y_dim, self.x_dim, self.val = int(y_dim), int(x_dim), float(val)

    def forward(self, x):
        dims = [self.y_dim - 1, self.x_dim - 1]
        x = x.movedim(dims, [-2, -1])
        x = F.pad(x, [self.pad_l, self.pad_r, self.pad_t, self.pad_b], value=self.val)
        return x.movedim([-2, -1], dims)


class _KeepsIndices:
    """What the max pooling tied to a max unpooling adds to it: it keeps where its maxima were and the size of its
    input, as Lua's keeps `indices` and its input's sizes (`iheight`, `iwidth`, and `itime` in 3-D)."""

    def forward(self, x):
        out, self.indices = self.pool(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                      return_indices=True)
        self.input_size = tuple(x.shape[-self.dims:])
        return out


class IndexedMaxPool2d(_KeepsIndices, nn.MaxPool2d):
    """The nn.SpatialMaxPooling that an nn.SpatialMaxUnpooling is tied to."""
    pool, dims = staticmethod(F.max_pool2d), 2


class IndexedMaxPool3d(_KeepsIndices, nn.MaxPool3d):
    """The nn.VolumetricMaxPooling that an nn.VolumetricMaxUnpooling is tied to."""
    pool, dims = staticmethod(F.max_pool3d), 3


class SpatialMaxUnpooling(nn.Module):
    """nn.SpatialMaxUnpooling(pooling): puts each value back where the tied pooling's last forward found its
    maximum, zeros elsewhere, in a map of that pooling's input size (ENet and SegNet decoders)."""
    lua_type = 'nn.SpatialMaxUnpooling'
    not_scriptable = 'nn.SpatialMaxUnpooling reads the indices its SpatialMaxPooling kept in its last forward'
    unpool = staticmethod(F.max_unpool2d)

    def __init__(self, pooling):
        super().__init__()
        # Not a child: the pooling module sits where the encoder has it, and is run there.
        self.__dict__['pooling'] = pooling

    def forward(self, x):
        pool = self.pooling
        return self.unpool(x, pool.indices, pool.kernel_size, pool.stride, pool.padding, pool.input_size)


class VolumetricMaxUnpooling(SpatialMaxUnpooling):
    """nn.VolumetricMaxUnpooling(pooling): the same for volumes and their tied VolumetricMaxPooling."""
    lua_type = 'nn.VolumetricMaxUnpooling'
    not_scriptable = 'nn.VolumetricMaxUnpooling reads the indices its VolumetricMaxPooling kept in its last forward'
    unpool = staticmethod(F.max_unpool3d)


class SpatialSymmetricPadding(nn.Module):
    """DeepMask's nn.SpatialSymmetricPadding(pad_l, pad_r, pad_t, pad_b) on N x C x H x W: crops where a pad is
    negative, then mirrors the border rows and columns, edge included (cba|abcd, where nn's reflection gives
    dcb|abcd): rows first, then columns, so the corners mirror the padded rows."""
    lua_type = 'nn.SpatialSymmetricPadding'

    def __init__(self, pad_l, pad_r=None, pad_t=None, pad_b=None):
        super().__init__()
        self.pad_l = int(pad_l)
        self.pad_r, self.pad_t, self.pad_b = (self.pad_l if p is None else int(p) for p in (pad_r, pad_t, pad_b))

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError('nn.SpatialSymmetricPadding: only Dimension=4 implemented')
        x = F.pad(x, [min(self.pad_l, 0), min(self.pad_r, 0), min(self.pad_t, 0), min(self.pad_b, 0)])
        left, right, top, bottom = (max(p, 0) for p in (self.pad_l, self.pad_r, self.pad_t, self.pad_b))
        if max(top, bottom) > x.size(2) or max(left, right) > x.size(3):
            raise ValueError('nn.SpatialSymmetricPadding: input is too small')
        x = torch.cat([x[:, :, :top].flip(2), x, x[:, :, x.size(2) - bottom:].flip(2)], 2)
        return torch.cat([x[:, :, :, :left].flip(3), x, x[:, :, :, x.size(3) - right:].flip(3)], 3)
