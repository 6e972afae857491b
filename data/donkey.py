"""Port of lcnn's datasets/donkey.lua: loadImage, the train/test hooks, the metadata caches, the mean/std estimate."""
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import t7
from data import image
from data.image import DataError
from data.imagenet import DataLoader, remap, report_subset, subset_seed
from errors import lua_print

MEANSTD_SAMPLES = 10000


class TorchRandom:
    """torch7's default generator (THRandom.c): MT19937 seeded by torch.manualSeed, with torch.random/uniform.

    The same seed gives the same draws as the Lua donkeys, so samples and the mean/std estimate match Lua's.
    """

    def __init__(self, seed):
        key = np.empty(624, np.uint32)
        key[0] = seed & 0xffffffff
        for j in range(1, 624):
            prev = int(key[j - 1])
            key[j] = (1812433253 * (prev ^ (prev >> 30)) + j) & 0xffffffff
        self.seed = seed
        self._gen = np.random.MT19937()
        # pos 624: the first draw regenerates the state, as torch's `left = 1` does.
        self._gen.state = {'bit_generator': 'MT19937', 'state': {'key': key, 'pos': 624}}

    def raw(self):
        """THRandom_random: the next 32-bit output."""
        return int(self._gen.random_raw())

    def random(self, a, b):
        """torch.random(a, b): an integer in [a, b]."""
        return self.raw() % (b + 1 - a) + a

    def uniform(self, a=0.0, b=1.0):
        """torch.uniform(a, b): a double in [a, b)."""
        return self.raw() * (1.0 / 4294967296.0) * (b - a) + a


def _scaled_shape(arr, image_size):
    """Size loadImage scales a decoded H x W x C array to: short side image_size, long side truncated."""
    return image.scaled_size(arr.shape[0], arr.shape[1], image_size)


def load_image(path, opt):
    """loadImage: image.load(path, 3, 'float') scaled so that its short side is opt.imageSize (3 x H x W)."""
    arr = image.load_bytes(path)
    h, w = _scaled_shape(arr, opt.imageSize)
    out = image.scale_crop(arr, h, w)
    return torch.from_numpy(out if out.shape[0] == 3 else np.repeat(out, 3, axis=0))


class Hooks:
    """donkey.lua's testHook and trainHook with what they close over: -data, the sizes, mean and std.

    mean/std stay None until loaded or estimated; while they are None the crops are not normalised.
    `load_errors` counts images that could not be loaded in this process.
    """

    def __init__(self, data, image_size, crop_size, mean=None, std=None):
        self.data = data
        self.image_size = image_size
        self.crop_size = crop_size
        self.mean = mean
        self.std = std
        self.load_errors = 0

    def _load(self, path, train):
        """Decoded bytes and scaled (H, W); an unreadable image becomes a mean-filled square, as in Lua."""
        try:
            arr = image.load_bytes(path)
            return arr, _scaled_shape(arr, self.image_size)
        except DataError as e:
            self.load_errors += 1
            if train:
                lua_print('ERROR: image can not be loaded!!! ', str(e))
            else:
                lua_print('ERROR: image can not be loaded!!!')
            # Lua fills with mean[1] even for the other channels; before the mean is known Lua would crash,
            # so an unreadable image then contributes zeros.
            fill = np.float32(self.mean[0] if self.mean is not None else 0.0)
            return np.full((self.image_size, self.image_size, 1), fill, np.float32), (self.image_size,) * 2

    def _finish(self, arr, size, y0, x0, flip):
        """Crop (and flip) the scaled image, replicate grey, then subtract mean and divide by std per channel."""
        crop = self.crop_size
        out = image.scale_crop(arr, size[0], size[1], y0, x0, crop, crop, flip)
        res = out if out.shape[0] == 3 else np.empty((3, crop, crop), np.float32)
        for c in range(3):
            # One channel at a time keeps the scalar operand on numpy's fast path.
            plane = out[c if out.shape[0] == 3 else 0]
            if self.mean is not None:
                np.subtract(plane, np.float32(self.mean[c]), out=res[c])
            elif res is not out:
                res[c] = plane
            if self.std is not None:
                np.divide(res[c], np.float32(self.std[c]), out=res[c])
        return torch.from_numpy(res)

    def _check_crop(self, h, w):
        if h < self.crop_size or w < self.crop_size:
            raise DataError(f'image.crop: a {self.crop_size}x{self.crop_size} crop does not fit a {w}x{h} image; '
                            f'use a -cropSize no larger than -imageSize')

    def test_hook(self, path):
        """testHook: center_crop of a cached path moved under -data at '/val/'."""
        return self.center_crop(remap(path, self.data, 'val'))

    def train_hook(self, path, rng):
        """trainHook: random_crop of a cached path moved under -data at '/train/'."""
        return self.random_crop(remap(path, self.data, 'train'), rng)

    def center_crop(self, path):
        """The center crop (offsets rounded up) of the loaded image, normalised."""
        arr, (h, w) = self._load(path, train=False)
        self._check_crop(h, w)
        x0 = math.ceil((w - self.crop_size) / 2)
        y0 = math.ceil((h - self.crop_size) / 2)
        return self._finish(arr, (h, w), y0, x0, False)

    def random_crop(self, path, rng):
        """A crop starting at ceil(uniform(1e-2, room)) (never 0), hflip with p 0.5, normalised."""
        arr, (h, w) = self._load(path, train=True)
        y0 = math.ceil(rng.uniform(1e-2, h - self.crop_size))
        x0 = math.ceil(rng.uniform(1e-2, w - self.crop_size))
        if y0 + self.crop_size > h or x0 + self.crop_size > w:
            raise DataError(f'image.crop: a {self.crop_size}x{self.crop_size} crop at {x0},{y0} does not fit a '
                            f'{w}x{h} image; use a -cropSize smaller than -imageSize')
        flip = rng.uniform() > 0.5
        return self._finish(arr, (h, w), y0, x0, flip)


def _channel_average(loader, n_samples, what, stat):
    lua_print(f'Estimating the {what} (per-channel, shared for all pixels) over {n_samples} randomly sampled '
              'training images')
    total = np.zeros(3)
    for _ in tqdm(range(n_samples), desc=f'{what} estimate', disable=None):
        img = loader.sample(1)[0][0].numpy().reshape(3, -1)
        total += stat(img)
    return (total / n_samples).tolist()


def estimate_mean_std(loader, n_samples=MEANSTD_SAMPLES):
    """Per-channel mean and std over random training crops, as donkey.lua estimates them.

    Mean: average of n_samples per-image channel means; std: average of the unbiased per-image channel stds of
    n_samples further samples. Drawn one by one from `loader.rng` in this process, like Lua with -nDonkeys 0.
    Sets loader.hooks.mean in between: the Lua hook already subtracts the new mean from the std samples.
    """
    tm = time.time()
    loader.hooks.mean = loader.hooks.std = None
    mean = _channel_average(loader, n_samples, 'mean', lambda x: x.mean(axis=1, dtype=np.float64))
    loader.hooks.mean = mean
    std = _channel_average(loader, n_samples, 'std', lambda x: x.std(axis=1, dtype=np.float64, ddof=1))
    lua_print('Time to estimate:', time.time() - tm)
    return mean, std


def _load_cache(path):
    try:
        return t7.load(path)
    except t7.T7Error as e:
        raise DataError(f'cannot read cache {path}: {e}; delete it to rebuild it') from None


def _loader(cache, opt, split, force_classes=None):
    """Read a dataLoader cache, or scan -data and write one."""
    if os.path.isfile(cache):
        lua_print(f"Loading {'train' if split == 'train' else 'test'} metadata from cache")
        loader = DataLoader.from_t7(_load_cache(cache), cache)
        loader.paths[0] = opt.data
        return loader
    lua_print(f"Creating {'train' if split == 'train' else 'test'} metadata")
    loader = DataLoader.scan([opt.data], [3, opt.imageSize, opt.imageSize], [3, opt.cropSize, opt.cropSize],
                             split, forceClasses=force_classes, verbose=True)
    t7.save(cache, loader.to_t7())
    return loader


def setup(opt):
    """donkey.lua's main part: the train and test loaders of an ImageNet-style -data folder, with their hooks.

    Caches under -cache are read when present and written otherwise; the mean/std is estimated when missing.
    """
    if not os.path.isdir(opt.data):
        raise DataError(f"could not chdir to '{opt.data}': -data must be a folder with train/ and val/")
    os.makedirs(opt.cache, exist_ok=True)
    prefix = os.path.join(opt.cache, opt.dataset)
    hooks = Hooks(opt.data, opt.imageSize, opt.cropSize)
    train_loader = _loader(prefix + '_trainCache.t7', opt, 'train')
    test_loader = _loader(prefix + '_testCache.t7', opt, 'val', force_classes=train_loader.classes)
    rng = TorchRandom(opt.manualSeed)
    for loader in (train_loader, test_loader):
        loader.hooks = hooks
        loader.rng = rng
    meanstd_cache = prefix + '_meanstdCache.t7'
    if os.path.isfile(meanstd_cache):
        meanstd = _load_cache(meanstd_cache)
        try:
            hooks.mean = [float(v) for v in meanstd['mean']]
            hooks.std = [float(v) for v in meanstd['std']]
        except (KeyError, TypeError, ValueError):
            raise DataError(f'{meanstd_cache} has no mean/std lists; delete it to estimate them again') from None
        lua_print('Loaded mean and std from cache.')
    else:
        hooks.mean, hooks.std = estimate_mean_std(train_loader)
        t7.save(meanstd_cache, {'mean': hooks.mean, 'std': hooks.std})
    # After the caches and the mean/std, which describe all of -data: every subset is normalised alike.
    if opt.classes != '' or opt.samplesPerClass > 0:
        train_loader = train_loader.subset(opt.classes, opt.samplesPerClass, subset_seed(opt))
        test_loader = test_loader.subset(opt.classes, 0, subset_seed(opt))
        report_subset(train_loader, test_loader)
    return train_loader, test_loader
