"""Port of lcnn's models/resnet-lcnn.lua: ResNet whose residual-path convolutions are lookup layers, with a pool
size for the first conv (-firstPool) and one per stage (-pool1 .. -pool4)."""
from models import convolution, pooled_convolution
from models.resnet import build


def create_model(opt):
    def conv(nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH, poolSize):
        # A dictionary at least as large as the vectors it codes saves nothing: keep that layer dense.
        if poolSize is not None and poolSize >= nOutputPlane * kW * kH:
            poolSize = None
        if poolSize is None:
            return convolution(nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH)
        return pooled_convolution(opt, nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH, poolSize)

    return build(opt, conv, (opt.firstPool, opt.pool1, opt.pool2, opt.pool3, opt.pool4))
