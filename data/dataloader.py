"""Port of fb.resnet.torch's (and clcNet's identical) dataloader.lua: batches of the ImageNet recipe made by workers.

`setup(opt)` returns (trainLoader, valLoader) over the gen/imagenet.t7 image list (data/imagenet_gen.py), with
the interface the LCNN loaders have (classes, size(), path(i), get(start, stop), sample(n), train_batches(opt, n),
test_batches(opt)) plus fb.resnet's epoch iterator `run()` and its batch count `num_batches()`.

Lua semantics kept:
  - an epoch is torch.randperm(size) cut into batches of batchSize, the last one shorter; ceil(size / batchSize)
    batches (`num_batches()`, the Lua DataLoader:size());
  - with -tenCrop the val batches hold floor(batchSize / 10) images, each as 10 consecutive crops;
  - workers (-nThreads, 0 = this process) use one intra-op thread and, unless -manualSeed is 0, are seeded
    manualSeed + id with ids 1.. -nThreads for the first epoch; each later epoch's workers take the next
    -nThreads ids, so their random streams go on instead of repeating (the Lua threads live on);
  - labels are 0-based int64 here (Lua: 1-based); inputs float32, or float16 / float64 with -precision half / double.
Batch size, seed and worker count are read from the opt that train_batches(opt, n) / test_batches(opt) get (run()
uses setup's), so a distributed process loading its share of each batch with a seed of its own has its own stream.
The permutations come from a generator per such setting, seeded with its -manualSeed (Lua: the main thread's
global generator), so they do not depend on what else draws random numbers.
"""
import functools
import math

import torch
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset, Sampler

from data.image import DataError
from data.imagenet_gen import ImagenetDataset, load_info

_DTYPES = {'single': torch.float32, 'half': torch.float16, 'double': torch.float64}


def _init_worker(first_seed, worker_id):
    if first_seed is not None:
        torch.manual_seed(first_seed + worker_id)
    torch.set_num_threads(1)


class _Items(Dataset):
    """Indexed by a list of item indices: loads and preprocesses them into one batch."""

    def __init__(self, dataset, n_crops, dtype):
        self.dataset = dataset
        self.preprocess = dataset.preprocess()
        self.n_crops = n_crops
        self.dtype = dtype

    def __len__(self):
        return self.dataset.size()

    def __getitem__(self, indices):
        inputs, targets = [], []
        for i in indices:
            img, target = self.dataset.get(i)
            inputs.append(self.preprocess(img))
            targets.append(target)
        batch = torch.cat(inputs) if self.n_crops > 1 else torch.stack(inputs)
        return batch.to(self.dtype), torch.tensor(targets, dtype=torch.int64)


class _Slices(Sampler):
    """Consecutive slices of `order`, batch_size long (the last one shorter)."""

    def __init__(self, order, batch_size):
        self.order = order
        self.batch_size = batch_size

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start:start + self.batch_size].tolist()


class Batches:
    """The next n batches of an iterator, with a length (for progress bars)."""

    def __init__(self, batches, n):
        self._batches = batches
        self._n = n

    def __len__(self):
        return self._n

    def __iter__(self):
        # range first: zip stops before drawing a batch past the n-th
        for _, batch in zip(range(self._n), self._batches):
            yield batch


class _Epochs:
    """The epochs of one (batch size, seed, workers) setting: its permutation generator and how many began."""

    def __init__(self, batch_size, seed, n_threads):
        self.batch_size = batch_size
        self.seed = seed
        self.n_threads = n_threads
        self.generator = torch.Generator().manual_seed(seed)
        self.started = 0
        self.current = None


class DataLoader:
    """One split of the image list with its recipe, batched like fb.resnet's DataLoader."""

    def __init__(self, dataset, opt, split):
        self.dataset = dataset
        self.split = split
        self.classes = dataset.classes
        self.opt = opt
        self.n_crops = 10 if split == 'val' and opt.tenCrop else 1
        precision = getattr(opt, 'precision', 'single')
        if precision not in _DTYPES:
            raise DataError(f"unknown -precision '{precision}'; use single, half or double")
        self._items = _Items(dataset, self.n_crops, _DTYPES[precision])
        self._epochs = {}
        self.batch_size = self._epochs_for(opt).batch_size

    def __getstate__(self):
        # A worker process needs the images and their recipe, not the epochs of this process: their running
        # iterators and permutation generators. A torch.Generator pickles its state as a temporary tensor, whose
        # shared-memory file is closed again before a worker started with 'spawn' (the start method inside
        # -nGPU's processes) can open it: the worker dies with "unable to resize file".
        state = self.__dict__.copy()
        state['_epochs'] = {}
        return state

    def _epochs_for(self, opt):
        batch_size = opt.batchSize // self.n_crops
        if batch_size < 1:
            raise DataError(f'-batchSize {opt.batchSize} holds no image of {self.n_crops} crops with -tenCrop; '
                            f'give -batchSize {self.n_crops} or more')
        key = (batch_size, opt.manualSeed, opt.nThreads)
        if key not in self._epochs:
            self._epochs[key] = _Epochs(*key)
        return self._epochs[key]

    def size(self):
        """Number of images (the LCNN loaders' size(); fb.resnet's DataLoader:size() is num_batches())."""
        return self.dataset.size()

    def num_batches(self):
        return math.ceil(self.size() / self.batch_size)

    def path(self, i):
        return self.dataset.path(i)

    def get(self, start, stop):
        """Items start .. stop-1 through this split's recipe (random for train), in this process."""
        if not 0 <= start < stop <= self.size():
            raise IndexError(f'{self.split} loader: range [{start}, {stop}) is outside 0..{self.size()}')
        return self._items[list(range(start, stop))]

    def sample(self, n):
        """n images drawn uniformly (with replacement) through this split's recipe, in this process."""
        return self._items[torch.randint(0, self.size(), (n,)).tolist()]

    def _epoch(self, epochs, order):
        first_seed = None
        if epochs.seed != 0:
            first_seed = epochs.seed + epochs.started * epochs.n_threads + 1
        epochs.started += 1
        return iter(TorchDataLoader(self._items, batch_size=None, sampler=_Slices(order, epochs.batch_size),
                                    num_workers=epochs.n_threads, pin_memory=torch.cuda.is_available(),
                                    worker_init_fn=functools.partial(_init_worker, first_seed)))

    def _shuffled_epoch(self, epochs):
        return self._epoch(epochs, torch.randperm(self.size(), generator=epochs.generator))

    def run(self):
        """One epoch: (inputs, labels) batches of a fresh permutation, num_batches() of them."""
        return self._shuffled_epoch(self._epochs_for(self.opt))

    def train_batches(self, opt, n):
        """The next n batches of shuffled epochs (opt.batchSize, opt.manualSeed, opt.nThreads), a new epoch
        starting whenever one ends."""
        return Batches(self._train_stream(self._epochs_for(opt)), n)

    def _train_stream(self, epochs):
        while True:
            batch = next(epochs.current, None) if epochs.current is not None else None
            if batch is None:
                epochs.current = self._shuffled_epoch(epochs)
                batch = next(epochs.current)
            yield batch

    def test_batches(self, opt):
        """Every item once, in order, in batches of opt.batchSize (/ 10 with -tenCrop), the last one shorter."""
        return self._epoch(self._epochs_for(opt), torch.arange(self.size()))


def setup(opt):
    """DataLoader.create: (trainLoader, valLoader) for the clcNet recipe on -data, listed in -gen."""
    info = load_info(opt)
    return tuple(DataLoader(ImagenetDataset(info, opt, split), opt, split) for split in ('train', 'val'))
