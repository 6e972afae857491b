"""Port of torch/nn's BatchNormalization forward, SpatialCrossMapLRN, Normalize and local normalisations (and of
nnx's older SpatialNormalization)."""
import math
from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F


class _LuaBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Torch7's BatchNormalization forward: a training batch of one sample is normalised with the running
    statistics, which it leaves alone, and one sample without its batch dimension is taken as such a batch (the
    output keeps the batch dimension Lua adds; Lua accepts that sample in evaluate mode only)."""

    def forward(self, x):
        if x.dim() == self.n_dim - 1:
            x = x.unsqueeze(0)
        elif x.dim() != self.n_dim:
            raise ValueError('only mini-batch supported (' + str(self.n_dim) + 'D tensor), got ' + str(x.dim())
                             + 'D tensor instead')
        momentum = 0.0 if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training and x.size(0) > 1, momentum, self.eps)


class BatchNormalization(_LuaBatchNorm, nn.BatchNorm1d):
    """nn.BatchNormalization(nOutput, eps, momentum, affine) over a batch x nOutput input."""
    lua_type = 'nn.BatchNormalization'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_dim = 2


class SpatialBatchNormalization(_LuaBatchNorm, nn.BatchNorm2d):
    """nn.SpatialBatchNormalization(nOutput, eps, momentum, affine) over batch x nOutput x H x W."""
    lua_type = 'nn.SpatialBatchNormalization'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_dim = 4


class VolumetricBatchNormalization(_LuaBatchNorm, nn.BatchNorm3d):
    """nn.VolumetricBatchNormalization(nOutput, eps, momentum, affine) over batch x nOutput x T x H x W."""
    lua_type = 'nn.VolumetricBatchNormalization'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_dim = 5


class SpatialCrossMapLRN(nn.Module):
    """nn.SpatialCrossMapLRN(size, alpha, beta, k): x / (k + alpha/size * sum of x^2 over `size` neighbouring
    channels)^beta, on a batch or one C x H x W sample."""
    lua_type = 'nn.SpatialCrossMapLRN'

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        if x.dim() == 3:
            return F.local_response_norm(x.unsqueeze(0), self.size, self.alpha, self.beta, self.k).squeeze(0)
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)


class Normalize(nn.Module):
    """nn.Normalize(p, eps): each row of a 1-D or 2-D input divided by its p-norm, (sum |x|^p + eps)^(1/p), or by
    max |x| + eps for p = math.inf."""
    lua_type = 'nn.Normalize'

    def __init__(self, p, eps=1e-10):
        super().__init__()
        if not p > 0:
            raise ValueError(f'nn.Normalize: {p}-norm not supported')
        self.p, self.eps = float(p), float(eps)
        self.max_norm = math.isinf(self.p)

    def forward(self, x):
        if x.dim() > 2:
            raise ValueError('nn.Normalize: only 1d layer supported, got a ' + str(x.dim()) + 'D input')
        rows = x.reshape(1, -1) if x.dim() == 1 else x
        if self.max_norm:
            norm = rows.abs().amax(1, keepdim=True) + self.eps
        else:
            norm = (rows.abs().pow(self.p).sum(1, keepdim=True) + self.eps).pow(1 / self.p)
        return (rows / norm).view_as(x)


def _estimator_weights(kernel, planes):
    """The kernels Lua's constructor gives a local mean (or std) estimator: one SpatialConvolution summing all
    planes for a 2-D kernel; for a 1-D kernel a per-plane horizontal pass (a one-to-one SpatialConvolutionMap)
    then a vertical SpatialConvolution over all planes. Returns (map weight, map bias, weight, bias), the map
    ones empty for a 2-D kernel."""
    if kernel.dim() == 2:
        return (torch.empty(0), torch.empty(0), kernel.expand(1, planes, *kernel.shape).clone(), torch.zeros(1))
    k = kernel.numel()
    return (kernel.reshape(1, 1, k).repeat(planes, 1, 1), torch.zeros(planes),
            kernel.reshape(1, 1, k, 1).repeat(1, planes, 1, 1), torch.zeros(1))


def _kernel(kernel, name):
    """A float copy of the averaging kernel (Lua's default: 9x9 ones), checked as the Lua constructors do."""
    kernel = torch.ones(9, 9) if kernel is None else torch.as_tensor(kernel, dtype=torch.float32).clone()
    if kernel.dim() not in (1, 2):
        raise ValueError(f'{name}: averaging kernel must be 2D or 1D')
    if any(s % 2 == 0 for s in kernel.shape):
        raise ValueError(f'{name}: averaging kernel must have ODD dimensions')
    return kernel


def _local_sums(x, map_weight, map_bias, weight, bias, pad_w: int, pad_h: int):
    """A local estimator's output for a batch: one plane of weighted neighbourhood sums over all input planes."""
    x = F.pad(x, [pad_w, pad_w, pad_h, pad_h])
    if map_weight.numel() > 0:
        x = F.conv2d(x, map_weight.unsqueeze(1), map_bias, groups=map_weight.size(0))
    return F.conv2d(x, weight, bias)


class _LocalNormalization(nn.Module):
    def __init__(self, nInputPlane, kernel):
        super().__init__()
        self.nInputPlane = int(nInputPlane)
        self.pad_h = kernel.size(0) // 2
        self.pad_w = kernel.size(1) // 2 if kernel.dim() == 2 else self.pad_h

    def set_estimator(self, prefix, weights):
        for suffix, t in zip(('map_weight', 'map_bias', 'weight', 'bias'), weights):
            self.register_buffer(f'{prefix}_{suffix}', t)

    def coefficients(self, x):
        """What the mean estimator gives on ones: the share of each neighbourhood inside the image."""
        ones = torch.ones_like(x[:1])
        return _local_sums(ones, self.mean_map_weight, self.mean_map_bias, self.mean_weight, self.mean_bias,
                           self.pad_w, self.pad_h)


class SpatialSubtractiveNormalization(_LocalNormalization):
    """nn.SpatialSubtractiveNormalization(nInputPlane, kernel): subtracts from every plane the local mean over all
    planes (the kernel normalised to sum 1/nInputPlane), corrected at the borders by the share of the kernel that
    lies inside the image."""
    lua_type = 'nn.SpatialSubtractiveNormalization'

    def __init__(self, nInputPlane=1, kernel=None):
        kernel = _kernel(kernel, 'SpatialSubtractiveNormalization')
        super().__init__(nInputPlane, kernel)
        kernel /= kernel.sum() * self.nInputPlane
        self.register_buffer('kernel', kernel)
        self.set_estimator('mean', _estimator_weights(kernel, self.nInputPlane))

    def forward(self, x):
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        sums = _local_sums(x, self.mean_map_weight, self.mean_map_bias, self.mean_weight, self.mean_bias,
                           self.pad_w, self.pad_h)
        y = x - sums / self.coefficients(x)
        return y.squeeze(0) if single else y


class SpatialDivisiveNormalization(_LocalNormalization):
    """nn.SpatialDivisiveNormalization(nInputPlane, kernel, threshold, thresval): divides every plane by the local
    standard deviation over all planes (border-corrected like the subtractive one); deviations not above
    `threshold` are replaced by `thresval`."""
    lua_type = 'nn.SpatialDivisiveNormalization'

    def __init__(self, nInputPlane=1, kernel=None, threshold=1e-4, thresval=None):
        kernel = _kernel(kernel, 'SpatialDivisiveNormalization')
        super().__init__(nInputPlane, kernel)
        self.threshold = float(threshold)
        self.thresval = float(threshold if thresval is None else thresval)
        kernel /= kernel.sum() * (self.nInputPlane if kernel.dim() == 2 else math.sqrt(self.nInputPlane))
        self.register_buffer('kernel', kernel)
        weights = _estimator_weights(kernel, self.nInputPlane)
        self.set_estimator('mean', weights)
        self.set_estimator('std', tuple(t.clone() for t in weights))

    def forward(self, x):
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        stds = _local_sums(x * x, self.std_map_weight, self.std_map_bias, self.std_weight, self.std_bias,
                           self.pad_w, self.pad_h).sqrt() / self.coefficients(x)
        stds = torch.where(stds > self.threshold, stds, torch.full_like(stds, self.thresval))
        y = x / stds
        return y.squeeze(0) if single else y


class SpatialContrastiveNormalization(nn.Module):
    """nn.SpatialContrastiveNormalization(nInputPlane, kernel, threshold, thresval): the subtractive then the
    divisive normalisation with one kernel (Lua hands the same kernel tensor to both, which normalise it in
    place one after the other). `parts` gives the two instead (how t7.load_model rebuilds a saved one)."""
    lua_type = 'nn.SpatialContrastiveNormalization'

    def __init__(self, nInputPlane=1, kernel=None, threshold=1e-4, thresval=None, parts=None):
        super().__init__()
        self.nInputPlane = int(nInputPlane)
        self.threshold = float(threshold)
        self.thresval = float(threshold if thresval is None else thresval)
        if parts is None:
            subtractive = SpatialSubtractiveNormalization(nInputPlane, kernel)
            parts = subtractive, SpatialDivisiveNormalization(nInputPlane, subtractive.kernel, self.threshold,
                                                              self.thresval)
        self.subtractive, self.divisive = parts
        # Lua's kernel field: the tensor both parts normalised in place, as the divisive part holds it.
        self.register_buffer('kernel', self.divisive.kernel.clone())

    def forward(self, x):
        return self.divisive(self.subtractive(x))


class SpatialNormalization(nn.Module):
    """nnx's nn.SpatialNormalization (2011-2012, later replaced by SpatialContrastiveNormalization) on one image
    (planes x H x W, or H x W as one plane): `convo` and `convostd` are its saved Sequentials (padding, a
    one-to-one SpatialConvolutionMap of the kernel, Sum over the planes, Replicate), `coef` what convo gives on
    ones. The local mean convo(x) / coef is subtracted, and the result divided by its local deviation
    sqrt(convostd(x0^2)) / coef, raised to a threshold where lower: the fixed one when it was given, else the mean
    deviation of this image (at least 1e-3)."""
    lua_type = 'nn.SpatialNormalization'

    def __init__(self, nfeatures: int, convo: nn.Module, convostd: nn.Module, threshold: Optional[float] = None):
        super().__init__()
        self.nfeatures = int(nfeatures)
        self.convo, self.convostd = convo, convostd
        self.threshold = threshold

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(0)
        coef = self.convo(torch.ones(self.nfeatures, x.size(1), x.size(2), dtype=x.dtype, device=x.device))
        zero_mean = x - self.convo(x) / coef
        std = self.convostd(zero_mean.square()).sqrt() / coef
        fixed = self.threshold
        floor = std.mean().clamp(min=1e-3) if fixed is None else torch.tensor(fixed, dtype=x.dtype)
        return zero_mean / torch.where(std > floor, std, floor)
