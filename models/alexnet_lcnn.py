"""Port of lcnn's models/alexnet-lcnn.lua: AlexNet with every conv / fully connected layer as a lookup layer."""
from torch import nn

from layers.activation import Dropout, LogSoftMax
from layers.shape import View
from models import convolution, batch_norm, relu, max_pooling, pooled_convolution


def create_model(opt):
    n_classes = opt.nClasses

    def pooled(*args):
        return pooled_convolution(opt, *args)

    def bn(n):
        return batch_norm(n, 1e-3)

    features = nn.Sequential(
        pooled(3, 64, 11, 11, 4, 4, 2, 2, opt.firstPool),   # 224 -> 55
        bn(64), relu(True),
        max_pooling(3, 3, 2, 2),                            # 55 -> 27
        pooled(64, 192, 5, 5, 1, 1, 2, 2, opt.poolSize),
        bn(192), relu(True),
        max_pooling(3, 3, 2, 2),                            # 27 -> 13
        pooled(192, 384, 3, 3, 1, 1, 1, 1, opt.poolSize),
        bn(384), relu(True),
        pooled(384, 256, 3, 3, 1, 1, 1, 1, opt.poolSize),
        bn(256), relu(True),
        pooled(256, 256, 3, 3, 1, 1, 1, 1, opt.poolSize),
        bn(256), relu(True),
        max_pooling(3, 3, 2, 2),                            # 13 -> 6
    )

    # The fully connected layers are convolutions over the 6x6 map, then 1x1; a pool size of 0 keeps them dense.
    def fully_connected(nInputPlane, nOutputPlane, k, pool):
        if pool > 0:
            return pooled(nInputPlane, nOutputPlane, k, k, 1, 1, 0, 0, pool)
        return convolution(nInputPlane, nOutputPlane, k, k)

    classifier = nn.Sequential(
        Dropout(opt.dropout),
        fully_connected(256, 4096, 6, opt.fcPool),
        bn(4096), relu(),
        Dropout(opt.dropout),
        fully_connected(4096, 4096, 1, opt.fcPool),
        bn(4096), relu(),
        fully_connected(4096, n_classes, 1, opt.classifierPool),
        View(n_classes),
        LogSoftMax(),
    )
    return nn.Sequential(features, classifier)
