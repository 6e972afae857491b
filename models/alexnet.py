"""Port of lcnn's models/alexnet.lua: the dense AlexNet baseline (conv + BatchNorm + ReLU blocks)."""
from torch import nn

from layers.activation import LogSoftMax, SpatialDropout
from layers.shape import View
from models import convolution, batch_norm, relu, max_pooling


def _conv_block(nInputPlane, nOutputPlane, kW, kH, dW=1, dH=1, padW=0, padH=0):
    return nn.Sequential(convolution(nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH),
                         batch_norm(nOutputPlane),
                         relu(True))


def create_model(opt):
    n_classes = opt.nClasses
    features = nn.Sequential(
        _conv_block(3, 96, 11, 11, 4, 4, 2, 2),        # 224 -> 55
        max_pooling(3, 3, 2, 2),                       # 55 -> 27
        _conv_block(96, 256, 5, 5, 1, 1, 2, 2),        # 27 -> 27
        max_pooling(3, 3, 2, 2),                       # 27 -> 13
        _conv_block(256, 384, 3, 3, 1, 1, 1, 1),
        _conv_block(384, 384, 3, 3, 1, 1, 1, 1),
        _conv_block(384, 256, 3, 3, 1, 1, 1, 1),
        max_pooling(3, 3, 2, 2),                       # 13 -> 6
    )
    classifier = nn.Sequential(
        SpatialDropout(opt.dropout),
        _conv_block(256, 4096, 6, 6),                  # the fully connected layers as convolutions
        SpatialDropout(opt.dropout),
        _conv_block(4096, 4096, 1, 1),
        convolution(4096, n_classes, 1, 1),
        View(n_classes),
        LogSoftMax(),
    )
    return nn.Sequential(features, classifier)
