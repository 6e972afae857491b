"""Port of lcnn's models/resnet.lua: the ImageNet ResNets (depth 8 to 152, shortcut types A/B/C) and their own
learning-rate regime; models/resnet_lcnn.py builds the same tree with lookup convolutions."""
from torch import nn

from layers.containers import Concat, ConcatTable
from layers.activation import MulConstant, LogSoftMax
from layers.shape import View
from layers.tables import CAddTable
from models import convolution, batch_norm, relu, max_pooling, average_pooling, linear

# (first epoch, last epoch, learning rate before the -LR multiplier, weight decay)
_REGIMES = (
    (1, 7, 1e-1, 5e-4),
    (8, 16, 3e-2, 5e-4),
    (17, 25, 1e-2, 0),
    (26, 30, 3e-3, 0),
    (31, 1e8, 1e-3, 0),
)

# depth -> (residual blocks per stage, features entering the classifier, block kind)
CONFIGS = {
    8: ((1, 1, 1, 1), 512, 'basic'),
    18: ((2, 2, 2, 2), 512, 'basic'),
    34: ((3, 4, 6, 3), 512, 'basic'),
    50: ((3, 4, 6, 3), 2048, 'bottleneck'),
    101: ((3, 4, 23, 3), 2048, 'bottleneck'),
    152: ((3, 8, 36, 3), 2048, 'bottleneck'),
}


def lr_regime(epoch, optimType, opt):
    """The model's LRregime: ({learningRate, weightDecay}, whether `epoch` starts a new regime)."""
    for first, last, learning_rate, weight_decay in _REGIMES:
        if first <= epoch <= last:
            return {'learningRate': learning_rate * opt.LR, 'weightDecay': weight_decay}, epoch == first
    raise ValueError(f'epoch {epoch} is outside the ResNet learning-rate regime: epochs start at 1')


def _full_convolution(nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH, poolSize):
    return convolution(nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH)


def build(opt, conv, pools):
    """The ResNet tree of both model files. `conv(nIn, nOut, kW, kH, dW, dH, padW, padH, poolSize)` makes every
    residual-path convolution; `pools` = (first conv, stage 1..4) pool sizes handed to it (None for dense)."""
    depth = opt.depth
    if depth not in CONFIGS:
        raise ValueError(f"invalid -depth {depth} for {opt.netType}: use one of {', '.join(map(str, CONFIGS))}")
    shortcut_type = opt.shortcutType or 'B'
    if shortcut_type not in ('A', 'B', 'C'):
        raise ValueError(f"invalid -shortcutType '{shortcut_type}': use A, B or C")
    # The Lua file stops on any -dataset but imagenet; its ImageNet network is the only one there is, and the
    # embedded dataset is fed at the same crop size, so it is built for every dataset.
    counts, n_features, kind = CONFIGS[depth]
    i_channels = 64

    def shortcut(nInputPlane, nOutputPlane, stride):
        if shortcut_type == 'C' or (shortcut_type == 'B' and nInputPlane != nOutputPlane):
            # Dense even in resnet-lcnn: its Lua file hands these an undefined `poolsize`.
            return nn.Sequential(convolution(nInputPlane, nOutputPlane, 1, 1, stride, stride),
                                 batch_norm(nOutputPlane))
        if nInputPlane != nOutputPlane:
            # Type A: subsample, then append as many zero channels as there are input channels.
            return nn.Sequential(average_pooling(1, 1, stride, stride),
                                 Concat(2, nn.Identity(), MulConstant(0)))
        return nn.Identity()

    def residual(path, nInputPlane, nOutputPlane, stride):
        return nn.Sequential(ConcatTable(path, shortcut(nInputPlane, nOutputPlane, stride)),
                             CAddTable(True),
                             relu(True))

    def basicblock(n, stride, pool):
        nonlocal i_channels
        n_in, i_channels = i_channels, n
        path = nn.Sequential(conv(n_in, n, 3, 3, stride, stride, 1, 1, pool), batch_norm(n), relu(True),
                             conv(n, n, 3, 3, 1, 1, 1, 1, pool), batch_norm(n))
        return residual(path, n_in, n, stride)

    def bottleneck(n, stride, pool):
        nonlocal i_channels
        n_in, i_channels = i_channels, n * 4
        path = nn.Sequential(conv(n_in, n, 1, 1, 1, 1, 0, 0, pool), batch_norm(n), relu(True),
                             conv(n, n, 3, 3, stride, stride, 1, 1, pool), batch_norm(n), relu(True),
                             conv(n, n * 4, 1, 1, 1, 1, 0, 0, pool), batch_norm(n * 4))
        return residual(path, n_in, n * 4, stride)

    block = basicblock if kind == 'basic' else bottleneck

    def layer(features, count, stride, pool):
        return nn.Sequential(*(block(features, stride if i == 0 else 1, pool) for i in range(count)))

    print(f' | ResNet-{depth} ImageNet')
    model = nn.Sequential(
        conv(3, 64, 7, 7, 2, 2, 3, 3, pools[0]),
        batch_norm(64),
        relu(True),
        max_pooling(3, 3, 2, 2, 1, 1),
        layer(64, counts[0], 1, pools[1]),
        layer(128, counts[1], 2, pools[2]),
        layer(256, counts[2], 2, pools[3]),
        layer(512, counts[3], 2, pools[4]),
        average_pooling(7, 7, 1, 1, 'cudnn.SpatialAveragePooling'),
        View(n_features, num_input_dims=3),
        linear(n_features, 1000),        # the Lua file fixes 1000 classes whatever -nClasses says
        LogSoftMax(),
    )
    model.LRregime = lr_regime
    return model


def create_model(opt):
    return build(opt, _full_convolution, (None,) * 5)
