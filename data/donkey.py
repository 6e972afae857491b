"""Port of lcnn's datasets/donkey.lua: loadImage, the train/test hooks, the metadata caches, the mean/std estimate."""
import collections
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import checkpoints
import t7
from data import image
from data.image import DataError
from data.imagenet import DataLoader, remap, report_subset, subset_seed
from errors import lua_print

MEANSTD_SAMPLES = 10000
# How many of a cache's images must be found under -data for the cache to serve it.
CACHE_SAMPLE = 8
# What the mean/std estimate keeps of scaled images in memory.
MEMO_BYTES = 1 << 30


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


class ScaledImages:
    """loadImage's results by path, the most recently used first, up to `limit` bytes: the mean/std estimate
    draws 20000 crops, from few distinct images on a small set."""

    def __init__(self, limit=MEMO_BYTES):
        self.limit = limit
        self._items = collections.OrderedDict()
        self._bytes = 0

    def get(self, path):
        item = self._items.get(path)
        if item is not None:
            self._items.move_to_end(path)
        return item

    def put(self, path, scaled):
        self._items[path] = scaled
        self._bytes += scaled.nbytes
        while self._bytes > self.limit and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes


class Hooks:
    """donkey.lua's testHook and trainHook with what they close over: -data, the sizes, mean and std.

    mean/std stay None until loaded or estimated; while they are None the crops are not normalised.
    `load_errors` counts images that could not be loaded in this process. With `memo` (a ScaledImages) each path is
    decoded and scaled once and crops are cut from the whole scaled image: the same values as cropping while
    scaling, which is what happens without it.
    """

    def __init__(self, data, image_size, crop_size, mean=None, std=None):
        self.data = data
        self.image_size = image_size
        self.crop_size = crop_size
        self.mean = mean
        self.std = std
        self.load_errors = 0
        self.memo = None

    def _load(self, path):
        """Decoded bytes and scaled (H, W); an unreadable image becomes a mean-filled square, as in Lua."""
        try:
            arr = image.load_bytes(path)
            return arr, _scaled_shape(arr, self.image_size)
        except DataError as e:
            self.load_errors += 1
            reason = str(e)
            lua_print('ERROR: image can not be loaded!!! ', reason if path in reason else f'{path}: {reason}')
            # Lua fills with mean[1] even for the other channels; before the mean is known Lua would crash,
            # so an unreadable image then contributes zeros.
            fill = np.float32(self.mean[0] if self.mean is not None else 0.0)
            return np.full((self.image_size, self.image_size, 1), fill, np.float32), (self.image_size,) * 2

    def _crop(self, path, place):
        """The crop that place(h, w) -> (y0, x0, flip) chooses in the loaded image scaled to h x w: C x crop x crop
        float32, C = 1 (grey) or 3."""
        crop = self.crop_size
        scaled = self.memo.get(path) if self.memo is not None else None
        if scaled is None:
            errors = self.load_errors
            arr, (h, w) = self._load(path)
            if self.memo is None:
                y0, x0, flip = place(h, w)
                return image.scale_crop(arr, h, w, y0, x0, crop, crop, flip)
            scaled = image.scale_crop(arr, h, w)
            if self.load_errors == errors:
                self.memo.put(path, scaled)
        y0, x0, flip = place(*scaled.shape[1:])
        out = scaled[:, y0:y0 + crop, x0:x0 + crop]
        return out[:, :, ::-1] if flip else out

    def _finish(self, out):
        """Replicate grey, then subtract mean and divide by std per channel (into a new array when `out` is a view
        of a memoised image)."""
        crop = self.crop_size
        res = out if out.shape[0] == 3 and out.base is None else np.empty((3, crop, crop), np.float32)
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

    def test_hook(self, path):
        """testHook: center_crop of a cached path moved under -data at '/val/'."""
        return self.center_crop(remap(path, self.data, 'val'))

    def train_hook(self, path, rng):
        """trainHook: random_crop of a cached path moved under -data at '/train/'."""
        return self.random_crop(remap(path, self.data, 'train'), rng)

    def center_crop(self, path):
        """The center crop (offsets rounded up) of the loaded image, normalised."""
        def place(h, w):
            if h < self.crop_size or w < self.crop_size:
                raise DataError(f'image.crop: a {self.crop_size}x{self.crop_size} crop does not fit a {w}x{h} '
                                f'image; use a -cropSize no larger than -imageSize')
            return math.ceil((h - self.crop_size) / 2), math.ceil((w - self.crop_size) / 2), False
        return self._finish(self._crop(path, place))

    def random_crop(self, path, rng):
        """A crop starting at ceil(uniform(1e-2, room)) (never 0), hflip with p 0.5, normalised."""
        def place(h, w):
            y0 = math.ceil(rng.uniform(1e-2, h - self.crop_size))
            x0 = math.ceil(rng.uniform(1e-2, w - self.crop_size))
            if y0 + self.crop_size > h or x0 + self.crop_size > w:
                raise DataError(f'image.crop: a {self.crop_size}x{self.crop_size} crop at {x0},{y0} does not fit a '
                                f'{w}x{h} image; use a -cropSize smaller than -imageSize')
            return y0, x0, rng.uniform() > 0.5
        return self._finish(self._crop(path, place))


def _channel_average(loader, n_samples, what, stat, show):
    lua_print(f'Estimating the {what} (per-channel, shared for all pixels) over {n_samples} randomly sampled '
              'training images')
    total = np.zeros(3)
    for _ in tqdm(range(n_samples), desc=f'{what} estimate', unit='image', disable=None if show else True):
        img = loader.sample(1)[0][0].numpy().reshape(3, -1)
        total += stat(img)
    return (total / n_samples).tolist()


def estimate_mean_std(loader, n_samples=MEANSTD_SAMPLES, show=True):
    """Per-channel mean and std over random training crops, as donkey.lua estimates them.

    Mean: average of n_samples per-image channel means; std: average of the unbiased per-image channel stds of
    n_samples further samples. Drawn one by one from `loader.rng` in this process, like Lua with -nDonkeys 0,
    each distinct image decoded and scaled once (as far as ScaledImages holds them).
    Sets loader.hooks.mean in between: the Lua hook already subtracts the new mean from the std samples.
    """
    tm = time.time()
    hooks = loader.hooks
    hooks.mean = hooks.std = None
    hooks.memo = ScaledImages()
    try:
        mean = _channel_average(loader, n_samples, 'mean', lambda x: x.mean(axis=1, dtype=np.float64), show)
        hooks.mean = mean
        std = _channel_average(loader, n_samples, 'std', lambda x: x.std(axis=1, dtype=np.float64, ddof=1), show)
    finally:
        hooks.memo = None
    lua_print('Time to estimate:', time.time() - tm)
    return mean, std


def _load_cache(path):
    try:
        return t7.load(path)
    except t7.T7Error as e:
        raise DataError(f'cannot read cache {path}: {e}; delete it to rebuild it') from None


def _check_images_exist(loader, cache, opt, made_for):
    """A cache made elsewhere (the released ones hold the authors' absolute paths) serves -data when a sample of
    its images is there once moved under -data: the first, the last and some evenly spaced between."""
    n = loader.size()
    for i in sorted({round(k * (n - 1) / (CACHE_SAMPLE - 1)) for k in range(CACHE_SAMPLE)}):
        if not os.path.isfile(loader.path(i)):
            prefix = os.path.join(opt.cache, opt.dataset)
            ways = f'delete {prefix}_*Cache.t7 (or give another -cache) to scan -data again'
            if os.path.abspath(made_for) != os.path.abspath(opt.data):
                ways = f'give the -data it was made for ({made_for}), or ' + ways
            raise DataError(f'{cache} lists images that are not under -data {opt.data} (no {loader.path(i)}, '
                            f'listed as {loader.cached_path(i)}): {ways}')


def _loader(cache, opt, split, force_classes=None):
    """Read a dataLoader cache (checked against -data), or scan -data and write one."""
    if os.path.isfile(cache):
        lua_print(f"Loading {'train' if split == 'train' else 'test'} metadata from cache")
        loader = DataLoader.from_t7(_load_cache(cache), cache)
        made_for = loader.paths[0]
        loader.paths[0] = opt.data
        _check_images_exist(loader, cache, opt, made_for)
        return loader
    lua_print(f"Creating {'train' if split == 'train' else 'test'} metadata")
    loader = DataLoader.scan([opt.data], [3, opt.imageSize, opt.imageSize], [3, opt.cropSize, opt.cropSize],
                             split, forceClasses=force_classes, verbose=True)
    checkpoints.save_object(cache, loader.to_t7())
    return loader


def setup(opt, check=None):
    """donkey.lua's main part: the train and test loaders of an ImageNet-style -data folder, with their hooks.

    Caches under -cache are read when present (and their images found under -data) and written otherwise; then
    check(train, test) if given; then the mean/std is estimated when missing.
    """
    if not os.path.isdir(opt.data):
        raise DataError(f"could not chdir to '{opt.data}': -data must be a folder with train/ and val/")
    try:
        os.makedirs(opt.cache, exist_ok=True)
    except OSError as e:
        raise DataError(f'-cache {opt.cache}: cannot create it ({e.strerror}); give a -cache folder you can write '
                        'to') from None
    prefix = os.path.join(opt.cache, opt.dataset)
    hooks = Hooks(opt.data, opt.imageSize, opt.cropSize)
    train_loader = _loader(prefix + '_trainCache.t7', opt, 'train')
    test_loader = _loader(prefix + '_testCache.t7', opt, 'val', force_classes=train_loader.classes)
    rng = TorchRandom(opt.manualSeed)
    for loader in (train_loader, test_loader):
        loader.hooks = hooks
        loader.rng = rng
    if check is not None:
        check(train_loader, test_loader)
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
        hooks.mean, hooks.std = estimate_mean_std(train_loader, show=not getattr(opt, 'noProgress', False))
        checkpoints.save_object(meanstd_cache, {'mean': hooks.mean, 'std': hooks.std})
    # After the caches and the mean/std, which describe all of -data: every subset is normalised alike.
    if opt.classes != '' or opt.samplesPerClass > 0:
        train_loader = train_loader.subset(opt.classes, opt.samplesPerClass, subset_seed(opt))
        test_loader = test_loader.subset(opt.classes, 0, subset_seed(opt))
        report_subset(train_loader, test_loader)
    return train_loader, test_loader
