"""Port of fb.resnet.torch's (and clcNet's identical) datasets/transforms.lua: the clcNet train/val augmentations.

Images are 3 x H x W float tensors. Random draws use torch's global generator with Torch7's semantics:
torch.uniform(a, b) is a + (b - a) * U[0, 1), torch.random(a, b) an integer uniform in [a, b], torch.randperm a
uniform permutation; the data-loading workers seed it (see data/dataloader.py). No transform changes its input in
place (the Lua colour jitter blends in place, into a tensor nobody else holds; here it blends into a new one).

Only the transforms the ImageNet recipe uses are ported (not RandomCrop, RandomScale, Rotation).
"""
import math

import numpy as np
import torch

from data.image import crop, hflip


def _uniform(a=0.0, b=1.0):
    return a + (b - a) * torch.rand((), dtype=torch.float64).item()


def _random(a, b):
    return int(torch.randint(a, b + 1, ()).item())


def _lua_round(x):
    # C's round(): halves go away from zero (Python's round() would go to even)
    f = math.floor(x)
    return f + 1 if x - f >= 0.5 else f


def _cubic_taps(src_len, dst_len):
    """Source indices (dst_len x 4) and weights (dst_len x 4) of torch/image's 1-D bicubic resampling."""
    index = np.zeros((dst_len, 4), dtype=np.int64)
    weight = np.zeros((dst_len, 4), dtype=np.float64)
    if dst_len == src_len:
        index[:, 1] = np.arange(dst_len)
        weight[:, 1] = 1
        return index, weight
    if src_len == 1:
        # the C code copies the pixel into all but the last destination pixel, which it leaves unset
        weight[:, 1] = 1
        return index, weight
    # positions in float32 as in the C code; with a single destination pixel its step is the whole source
    scale = np.float32(src_len - 1) / np.float32(max(dst_len - 1, 1))
    pos = np.arange(dst_len - 1, dtype=np.float32) * scale
    i1 = pos.astype(np.int64)
    t = (pos - i1.astype(np.float32)).astype(np.float64)
    # Catmull-Rom weights of p0..p3 for p1 + t/2 (p2 - p0 + t (2p0 - 5p1 + 4p2 - p3 + t (3(p1 - p2) + p3 - p0)))
    w0 = 0.5 * (-t + 2 * t ** 2 - t ** 3)
    w1 = 1 + 0.5 * (-5 * t ** 2 + 3 * t ** 3)
    w2 = 0.5 * (t + 4 * t ** 2 - 3 * t ** 3)
    w3 = 0.5 * (-t ** 2 + t ** 3)
    # outside the source the missing neighbour is extrapolated: p0 = 2 p1 - p2, p3 = 2 p2 - p1
    lo = i1 == 0
    hi = i1 + 2 >= src_len
    w1 = w1 + np.where(lo, 2 * w0, 0) - np.where(hi, w3, 0)
    w2 = w2 - np.where(lo, w0, 0) + np.where(hi, 2 * w3, 0)
    w0 = np.where(lo, 0, w0)
    w3 = np.where(hi, 0, w3)
    index[:-1] = np.stack([np.maximum(i1 - 1, 0), i1, np.minimum(i1 + 1, src_len - 1),
                           np.minimum(i1 + 2, src_len - 1)], axis=1)
    weight[:-1] = np.stack([w0, w1, w2, w3], axis=1)
    index[-1, 1] = src_len - 1
    weight[-1, 1] = 1
    return index, weight


def _resample(img, dim, dst_len):
    index, weight = _cubic_taps(img.shape[dim], dst_len)
    shape = [1, 1, 1]
    shape[dim] = dst_len
    out = None
    for k in range(4):
        w = torch.from_numpy(weight[:, k]).to(img.dtype).view(shape)
        term = img.index_select(dim, torch.from_numpy(index[:, k])) * w
        out = term if out is None else out + term
    return out


def scale_bicubic(img, width, height):
    """image.scale(img, width, height, 'bicubic'): separable, rows first; sizes truncated as Lua's do."""
    width = max(int(width), 1)
    height = max(int(height), 1)
    return _resample(_resample(img, 2, width), 1, height)


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class ColorNormalize:
    def __init__(self, meanstd):
        self.mean = [float(m) for m in meanstd['mean']]
        self.std = [float(s) for s in meanstd['std']]

    def __call__(self, img):
        img = img.clone()
        for i in range(3):
            img[i].sub_(self.mean[i]).div_(self.std[i])
        return img


class Scale:
    """Scale the smaller edge to `size`, keeping the aspect ratio (unchanged if already that size)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        h, w = img.shape[1], img.shape[2]
        if (w <= h and w == self.size) or (h <= w and h == self.size):
            return img
        if w < h:
            return scale_bicubic(img, self.size, h / w * self.size)
        return scale_bicubic(img, w / h * self.size, self.size)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        x1 = math.ceil((img.shape[2] - self.size) / 2)
        y1 = math.ceil((img.shape[1] - self.size) / 2)
        return crop(img, x1, y1, x1 + self.size, y1 + self.size)


class TenCrop:
    """Centre and four corner crops of the image, then the same five of its mirror: a 10 x 3 x size x size batch."""

    def __init__(self, size):
        self.size = size
        self.center = CenterCrop(size)

    def __call__(self, img):
        h, w, s = img.shape[1], img.shape[2], self.size
        out = []
        for view in (img, hflip(img)):
            out.append(self.center(view))
            out.append(crop(view, 0, 0, s, s))
            out.append(crop(view, w - s, 0, w, s))
            out.append(crop(view, 0, h - s, s, h))
            out.append(crop(view, w - s, h - s, w, h))
        return torch.stack(out)


class RandomSizedCrop:
    """Inception-style crop: 8%-100% of the area, aspect 3/4-4/3, up to 10 tries, else Scale + CenterCrop."""

    def __init__(self, size):
        self.size = size
        self.fallback = Compose([Scale(size), CenterCrop(size)])

    def __call__(self, img):
        height, width = img.shape[1], img.shape[2]
        for _ in range(10):
            target_area = _uniform(0.08, 1.0) * (height * width)
            aspect = _uniform(3 / 4, 4 / 3)
            w = _lua_round(math.sqrt(target_area * aspect))
            h = _lua_round(math.sqrt(target_area / aspect))
            if _uniform() < 0.5:
                w, h = h, w
            if h <= height and w <= width:
                y1 = _random(0, height - h)
                x1 = _random(0, width - w)
                return scale_bicubic(crop(img, x1, y1, x1 + w, y1 + h), self.size, self.size)
        return self.fallback(img)


class HorizontalFlip:
    def __init__(self, prob):
        self.prob = prob

    def __call__(self, img):
        return hflip(img) if _uniform() < self.prob else img


class Lighting:
    """AlexNet PCA lighting noise: add eigvec @ (alpha * eigval) to the channels, alpha ~ N(0, alphastd)."""

    def __init__(self, alphastd, eigval, eigvec):
        self.alphastd = alphastd
        self.eigval = torch.as_tensor(eigval, dtype=torch.float64)
        self.eigvec = torch.as_tensor(eigvec, dtype=torch.float64)

    def __call__(self, img):
        if self.alphastd == 0:
            return img
        alpha = torch.empty(3, dtype=torch.float64).normal_(0, self.alphastd)
        rgb = (self.eigvec * alpha.view(1, 3) * self.eigval.view(1, 3)).sum(1)
        img = img.clone()
        for i in range(3):
            img[i].add_(rgb[i].item())
        return img


def _blend(img1, img2, alpha):
    return img1.mul(alpha).add_(img2, alpha=1 - alpha)


def _grayscale(img):
    grey = torch.zeros_like(img[0])
    grey.add_(img[0], alpha=0.299).add_(img[1], alpha=0.587).add_(img[2], alpha=0.114)
    return grey.expand_as(img)


class Saturation:
    def __init__(self, var):
        self.var = var

    def __call__(self, img):
        grey = _grayscale(img)
        return _blend(img, grey, 1.0 + _uniform(-self.var, self.var))


class Brightness:
    def __init__(self, var):
        self.var = var

    def __call__(self, img):
        return _blend(img, torch.zeros_like(img), 1.0 + _uniform(-self.var, self.var))


class Contrast:
    def __init__(self, var):
        self.var = var

    def __call__(self, img):
        grey = torch.full_like(img, _grayscale(img)[0].mean().item())
        return _blend(img, grey, 1.0 + _uniform(-self.var, self.var))


class RandomOrder:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for i in torch.randperm(len(self.transforms)).tolist():
            img = self.transforms[i](img)
        return img


class ColorJitter:
    """Brightness, contrast and saturation jitter (those with a non-zero strength) in a random order."""

    def __init__(self, brightness=0, contrast=0, saturation=0):
        ts = []
        if brightness != 0:
            ts.append(Brightness(brightness))
        if contrast != 0:
            ts.append(Contrast(contrast))
        if saturation != 0:
            ts.append(Saturation(saturation))
        self.order = RandomOrder(ts) if ts else None

    def __call__(self, img):
        return self.order(img) if self.order else img
