"""Port of lcnn's donkey.lua hooks and dataLoader API (datasets/imagenet.lua) onto the embedded UCI digits (digits.h5).

The 8x8 images (grey levels 0..16, shown as v/16) go through the LCNN recipe: loadImage scales the short side to
-imageSize with torch/image's bilinear arithmetic, the train hook takes a random -cropSize crop at
ceil(uniform(1e-2, iH-oH)), the test hook the centre crop at ceil((iH-oH)/2), then per-channel mean/std; the grey
channel is replicated into 3 so every -netType takes the images unchanged.

Choices that differ from donkey.lua, on purpose:
  - no horizontal flip in the train hook (a mirrored 2, 3, 4, 5, 7 or 9 is not that digit; `hflip=True` restores it);
  - mean/std are the donkey.lua estimator (average of per-image channel means and of per-image unbiased channel
    stds) over the centre crop of every train image instead of 10000 random crops: exact, and cheap enough that no
    cache file is written;
  - -imageSize equal to -cropSize is allowed (Lua's train crop would step outside the image): the crop is then 0;
  - -classes and -samplesPerClass (ours) keep some classes and K images of each after the mean/std is taken over the
    whole train split, so that every subset is normalised alike.

Speed: upscaling then cropping an 8x8 image is a product of a (crop x 8) row-weight block, the image, and an
(8 x crop) column-weight block, so a batch is two batched matmuls, with no upscaled copy of the dataset in memory.
"""
import copy
import functools
import math
import os

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from data.dataloader import Batches
from data.image import DataError
from data.imagenet import class_selection, few_examples, report_subset, subset_seed

H5_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits.h5')
SPLITS = ('train', 'val')


def linear_resize_matrix(src_len, dst_len):
    """The (dst_len x src_len) matrix M for which M @ v is torch/image's 1-D bilinear resampling of v."""
    m = np.zeros((dst_len, src_len), dtype=np.float32)
    if dst_len == src_len:
        np.fill_diagonal(m, 1)
    elif dst_len > src_len:
        if src_len == 1:
            m[:, 0] = 1
        else:
            # float32 like the C code, so the sample positions (and their truncation) are the same
            scale = np.float32(src_len - 1) / np.float32(dst_len - 1)
            pos = np.arange(dst_len - 1, dtype=np.float32) * scale
            left = pos.astype(np.int64)
            frac = pos - left.astype(np.float32)
            rows = np.arange(dst_len - 1)
            m[rows, left] = 1 - frac
            m[rows, left + 1] += frac
            m[-1, -1] = 1
    else:
        # shrinking averages every source cell the destination cell covers, partial cells weighted by coverage
        scale = np.float32(src_len) / np.float32(dst_len)
        start, start_frac = 0, np.float32(0)
        for di in range(dst_len):
            end_pos = np.float32(di + 1) * scale
            end = int(end_pos)
            end_frac = end_pos - np.float32(end)
            m[di, start] += 1 - start_frac
            m[di, start + 1:end] += 1
            if end < src_len:
                m[di, end] += end_frac
            m[di] /= m[di].sum()
            start, start_frac = end, end_frac
    return m


def _n_workers(opt):
    # a clcNet network brings clcNet's -nThreads; the LCNN recipe has -nDonkeys
    return opt.nThreads if str(opt.netType).startswith('clcnet') else opt.nDonkeys


def _seed_worker(seed, worker_id):
    # the Lua donkeys are numbered from 1 and seeded manualSeed + id
    torch.manual_seed(seed + worker_id + 1)
    torch.set_num_threads(1)


class _SampleStream(IterableDataset):
    """Endless class-balanced training batches; each worker process draws its own with its own seed."""

    def __init__(self, loader, batch_size):
        self.loader = loader
        self.batch_size = batch_size

    def __iter__(self):
        while True:
            yield self.loader.sample(self.batch_size)


class _TestBatches(Dataset):
    """Batch k is items k*batch_size .. (k+1)*batch_size - 1, as test.lua queues them."""

    def __init__(self, loader, batch_size):
        self.loader = loader
        self.batch_size = batch_size

    def __len__(self):
        return self.loader.size() // self.batch_size

    def __getitem__(self, k):
        return self.loader.get(k * self.batch_size, (k + 1) * self.batch_size)


class DigitsLoader:
    """One split of the digits with lcnn's dataLoader interface: classes, size(), path(i), get(), sample()."""

    def __init__(self, split, image_size, crop_size, meanstd=None, hflip=False, h5_path=H5_PATH):
        if split not in SPLITS:
            raise DataError(f"digits: unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if crop_size > image_size:
            raise DataError(f'digits: -cropSize {crop_size} is larger than -imageSize {image_size}; '
                            'give an -imageSize at least as large')
        if crop_size < 2:
            raise DataError(f'digits: -cropSize {crop_size} leaves no pixel spread to normalise; give 2 or more')
        if not os.path.isfile(h5_path):
            raise DataError(f'digits: {h5_path} is missing; make it with data/make_digits.py')
        with h5py.File(h5_path, 'r') as f:
            images = f[split]['images'][()]
            labels = f[split]['labels'][()]
            levels = int(f.attrs['levels'])
            self.classes = [str(c) for c in f.attrs['classes']]
        self.split = split
        self.image_size = image_size
        self.crop_size = crop_size
        self.meanstd = meanstd
        self.hflip = hflip
        self.images = torch.from_numpy(images.astype(np.float32) / levels)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self._resize = torch.from_numpy(linear_resize_matrix(images.shape[1], image_size))
        counts = torch.bincount(self.labels, minlength=len(self.classes))
        if bool((counts == 0).any()):
            raise DataError(f'digits: class {int(torch.argmin(counts))} has no {split} images in {h5_path}; '
                            'regenerate it with data/make_digits.py')
        self._index_classes()
        self._stream = None
        self._stream_key = None

    def _index_classes(self):
        # class-balanced sampling picks a class, then a member: keep each class's members in a padded table
        counts = torch.bincount(self.labels, minlength=len(self.classes))
        self._class_count = counts
        self._members = torch.zeros(len(self.classes), int(counts.max()), dtype=torch.int64)
        for c in range(len(self.classes)):
            members = torch.nonzero(self.labels == c).flatten()
            self._members[c, :len(members)] = members

    def subset(self, wanted, samples_per_class, seed):
        """Keep the classes of -classes (relabelled 0.. in that order) and, when samples_per_class > 0, that many
        images of each (imagenet.few_examples, the same draw as the folder loader's); returns self."""
        chosen = class_selection(self.classes, wanted, f'digits ({self.split})')
        keep, labels = [], []
        for label, c in enumerate(chosen):
            members = torch.nonzero(self.labels == c).flatten().numpy()
            if samples_per_class > 0:
                members = few_examples(members, samples_per_class, seed, self.classes[c])
            keep.append(torch.from_numpy(members))
            labels.append(torch.full((len(members),), label, dtype=torch.int64))
        keep = torch.cat(keep)
        self.images = self.images[keep]
        self.labels = torch.cat(labels)
        self.classes = [self.classes[c] for c in chosen]
        self._index_classes()
        return self

    def __getstate__(self):
        # copies (and worker processes) get the data, not the running train iterator
        state = dict(self.__dict__)
        state['_stream'] = None
        state['_stream_key'] = None
        return state

    def size(self):
        return len(self.labels)

    def path(self, i):
        return f'digits/{self.split}/{i}'

    def _render(self, idx, top, left, flip):
        offsets = torch.arange(self.crop_size)
        rows = self._resize[top[:, None] + offsets]
        cols = self._resize[left[:, None] + offsets]
        if bool(flip.any()):
            cols[flip] = cols[flip].flip(1)
        # rows of the source first, then columns, as image.scale does
        grey = torch.bmm(rows, torch.bmm(self.images[idx], cols.transpose(1, 2)))
        out = torch.empty(len(idx), 3, self.crop_size, self.crop_size)
        for c in range(3):
            if self.meanstd is None:
                out[:, c] = grey
            else:
                torch.sub(grey, self.meanstd['mean'][c], out=out[:, c])
                out[:, c].div_(self.meanstd['std'][c])
        return out

    def get(self, start, stop):
        """Test-hook images and 0-based labels of items start .. stop-1."""
        if not 0 <= start < stop <= self.size():
            raise IndexError(f'digits {self.split}: range [{start}, {stop}) is outside 0..{self.size()}')
        idx = torch.arange(start, stop)
        margin = self.image_size - self.crop_size
        corner = torch.full((len(idx),), math.ceil(margin / 2), dtype=torch.int64)
        flip = torch.zeros(len(idx), dtype=torch.bool)
        return self._render(idx, corner, corner, flip), self.labels[idx].clone()

    def _train_corner(self, n):
        margin = self.image_size - self.crop_size
        if margin == 0:
            return torch.zeros(n, dtype=torch.int64)
        u = torch.rand(n, dtype=torch.float64)
        return torch.ceil(1e-2 + (margin - 1e-2) * u).to(torch.int64)

    def sample(self, n):
        """n train-hook images: a uniform class, then a uniform image of it (lcnn's class-balanced sampler)."""
        cls = torch.randint(0, len(self.classes), (n,))
        pick = torch.ceil(torch.rand(n, dtype=torch.float64) * self._class_count[cls]).to(torch.int64)
        idx = self._members[cls, (pick - 1).clamp(min=0)]
        top = self._train_corner(n)
        left = self._train_corner(n)
        flip = torch.rand(n) > 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        return self._render(idx, top, left, flip), cls

    def train_batches(self, opt, n):
        """The next n sample(opt.batchSize) batches, made by -nDonkeys (clcNet networks: -nThreads) processes.

        The workers (and their random streams) live on between calls, like the Lua donkeys, so successive epochs
        keep drawing fresh crops; batch k comes from worker k mod their number, so the stream is reproducible.
        """
        key = (opt.batchSize, _n_workers(opt), opt.manualSeed)
        if self._stream_key != key:
            # the stream gets a copy without `_stream`: a cycle through the iterator would leave its shutdown to
            # the garbage collector, which can take the worker queues apart first (and then waits on the workers)
            self._stream = iter(DataLoader(_SampleStream(copy.copy(self), opt.batchSize), batch_size=None,
                                           num_workers=_n_workers(opt), pin_memory=torch.cuda.is_available(),
                                           worker_init_fn=functools.partial(_seed_worker, opt.manualSeed)))
            self._stream_key = key
        return Batches(self._stream, n)

    def test_batches(self, opt):
        """The floor(size / opt.batchSize) get() batches in order (test.lua's loop), made by worker processes."""
        return iter(DataLoader(_TestBatches(self, opt.batchSize), batch_size=None, num_workers=_n_workers(opt),
                               pin_memory=torch.cuda.is_available(),
                               worker_init_fn=functools.partial(_seed_worker, opt.manualSeed)))


def estimate_meanstd(loader):
    """donkey.lua's estimator (mean of per-image channel means and stds) over every image's centre crop."""
    # A centre crop is R @ X @ C.T, so its sum and sum of squares reduce to 8x8 algebra on X (in float64):
    # sum = 1'R X C'1 and sum of squares = trace(X' R'R X C'C); no crop is ever materialised.
    margin = loader.image_size - loader.crop_size
    corner = math.ceil(margin / 2)
    block = loader._resize[corner:corner + loader.crop_size].double()
    gram = block.T @ block
    weight = block.sum(0)
    images = loader.images.double()
    n = loader.crop_size ** 2
    total = torch.einsum('i,kij,j->k', weight, images, weight)
    squares = (gram @ images @ gram * images).sum((1, 2))
    mean = total / n
    std = ((squares - n * mean ** 2).clamp(min=0) / (n - 1)).sqrt()
    return {'mean': [mean.mean().item()] * 3, 'std': [std.mean().item()] * 3}


def setup(opt):
    """(trainLoader, testLoader) for -dataset digits, normalised with the train split's mean/std, restricted to
    -classes and -samplesPerClass (after the mean/std, so that every subset is normalised alike)."""
    train = DigitsLoader('train', opt.imageSize, opt.cropSize)
    meanstd = estimate_meanstd(train)
    train.meanstd = meanstd
    test = DigitsLoader('val', opt.imageSize, opt.cropSize, meanstd=meanstd)
    if opt.classes != '' or opt.samplesPerClass > 0:
        train.subset(opt.classes, opt.samplesPerClass, subset_seed(opt))
        test.subset(opt.classes, 0, subset_seed(opt))
        report_subset(train, test)
    return train, test
