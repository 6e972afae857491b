"""Port of fast-neural-style's own modules (jcjohnson/fast-neural-style: InstanceNormalization.lua,
ShaveImage.lua, TotalVariation.lua), which its released style-transfer models (.t7, 2016) are made of."""
import torch
from torch import Tensor, nn
import torch.nn.functional as F

from layers.misc import IdentityWithGradient


class InstanceNormalization(nn.Module):
    """nn.InstanceNormalization(nOutput, eps[, momentum, affine]) of fast-neural-style and texture_nets: each plane
    of each image of an N x C x H x W batch normalised by its own mean and (biased) variance, then scaled and
    shifted per channel unless affine is false; the same in training and evaluation (Lua runs a
    SpatialBatchNormalization of N*C planes in training mode)."""
    lua_type = 'nn.InstanceNormalization'

    def __init__(self, nOutput, eps=1e-5, affine=True, device=None):
        super().__init__()
        self.nOutput, self.eps = int(nOutput), float(eps)
        if affine:
            self.weight = nn.Parameter(torch.empty(nOutput, device=device))
            self.bias = nn.Parameter(torch.empty(nOutput, device=device))
            if not self.weight.is_meta:
                with torch.no_grad():
                    self.weight.uniform_()
                    self.bias.zero_()
        else:
            self.weight = self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.size(1) != self.nOutput:
            raise ValueError(f'nn.InstanceNormalization: input must be N x {self.nOutput} x H x W')
        return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class ShaveImage(nn.Module):
    """nn.ShaveImage(size): removes `size` pixels from each border of an N x C x H x W batch."""
    lua_type = 'nn.ShaveImage'

    def __init__(self, size):
        super().__init__()
        self.size = int(size)

    def forward(self, x: Tensor) -> Tensor:
        s = self.size
        return x[:, :, s:x.size(2) - s, s:x.size(3) - s]


class _TotalVariationGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, strength):
        ctx.save_for_backward(x)
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        x, = ctx.saved_tensors
        # Lua's x_diff and y_diff over the first H-1 rows and W-1 columns, sent back to the pixels they join.
        corner = x[:, :, :-1, :-1]
        x_diff = corner - x[:, :, :-1, 1:]
        y_diff = corner - x[:, :, 1:, :-1]
        grad = torch.zeros_like(x)
        grad[:, :, :-1, :-1] += x_diff + y_diff
        grad[:, :, :-1, 1:] -= x_diff
        grad[:, :, 1:, :-1] -= y_diff
        return grad_output + ctx.strength * grad, None


class TotalVariation(IdentityWithGradient):
    """nn.TotalVariation(strength): passes its input on; in training its backward adds `strength` times the
    gradient of the total variation of the input to the gradient (the smoothness term fast-neural-style trains
    with). TorchScript runs it as the identity."""
    lua_type = 'nn.TotalVariation'

    def __init__(self, strength):
        super().__init__()
        self.strength = float(strength)

    @torch.jit.unused
    def with_gradient(self, x: Tensor) -> Tensor:
        return _TotalVariationGradient.apply(x, self.strength)
