"""Port of clcNet's models/clcnet.lua: channel local convolution blocks (grouped 3x3, ChannelInterlace, grouped
1x1) with fb.resnet.torch's initialisation."""
import math

import torch
from torch import nn

from layers.shape import View
from layers.ChannelInterlace import ChannelInterlace
from models import convolution, batch_norm, relu, average_pooling, linear, find_modules


def _clc_block(input_n, output_n, stride, g1, g2):
    return nn.Sequential(
        convolution(input_n, input_n, 3, 3, stride, stride, 1, 1, groups=g1),
        batch_norm(input_n),
        ChannelInterlace(input_n, g1),
        convolution(input_n, output_n, 1, 1, 1, 1, 0, 0, groups=g2),
        batch_norm(output_n),
        relu(True),
    )


def _initialize(model):
    # fb.resnet.torch's ConvInit (He init on fan-out; with cuDNN >= 4 the conv biases are dropped), BNInit, and
    # zero Linear biases, in findModules order.
    with torch.no_grad():
        for name in ('cudnn.SpatialConvolution', 'nn.SpatialConvolution'):
            for conv in find_modules(model, name):
                n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
                conv.weight.normal_(0, math.sqrt(2 / n))
                conv.bias = None
        for bn in find_modules(model, 'nn.SpatialBatchNormalization'):
            bn.weight.fill_(1)
            bn.bias.zero_()
        for fc in find_modules(model, 'nn.Linear'):
            fc.bias.zero_()


def create_model(opt, abcd=None):
    """clcNet with stage depths `abcd` = (a, b, c, d); None takes them from -a -b -c -d."""
    if abcd is None:
        abcd = (opt.a, opt.b, opt.c, opt.d)
        if min(abcd) < 1:
            raise ValueError(f'-netType {opt.netType} needs -a -b -c -d all >= 1 (got {abcd}); '
                             'or use -netType clcneta / clcnetb')
    a, b, c, d = abcd
    model = nn.Sequential(
        convolution(3, 32, 3, 3, 2, 2, 1, 1),
        batch_norm(32),
        relu(True),
        _clc_block(32, 64, 1, 16, 2),
        _clc_block(64, 128, 2, 32, 2),
        *(_clc_block(128, 128, 1, 64, 2) for _ in range(a)),
        _clc_block(128, 256, 2, 64, 2),
        *(_clc_block(256, 256, 1, 128, 2) for _ in range(b)),
        _clc_block(256, 512, 2, 128, 2),
        *(_clc_block(512, 512, 1, 256, 2) for _ in range(c)),
        _clc_block(512, 1024, 2, 256, 2),
        *(_clc_block(1024, 1024, 1, 512, 2) for _ in range(d)),
        average_pooling(7, 7, 1, 1, 'cudnn.SpatialAveragePooling'),
        View(1024, num_input_dims=3),
        linear(1024, 1000),              # the Lua file fixes 1000 classes (-resetClassifier replaces it)
    )
    _initialize(model)
    return model
