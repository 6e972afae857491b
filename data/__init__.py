"""Port of lcnn's data.lua: build the train/test loaders and run their jobs on -nDonkeys worker processes."""
import copy
import os

import torch
import torch.utils.data

from data.image import DataError
from errors import lua_print

__all__ = ['DataError', 'setup', 'check', 'train_batches', 'test_batches']


def setup(opt, check=None):
    """(trainLoader, testLoader) for opt.dataset / opt.netType.

    `check(trainLoader, testLoader)`, when given, runs as soon as the loaders know their classes and sizes, before
    anything that reads images (the mean/std estimate), so that a wrong flag costs no wait.
    """
    if opt.dataset == 'digits':
        from data import digits
        loaders = digits.setup(opt)
    elif opt.netType.startswith('clcnet'):
        from data import dataloader
        loaders = dataloader.setup(opt)
    elif opt.dataset != 'imagenet':
        raise DataError(f"unknown -dataset '{opt.dataset}': use imagenet (an ImageNet-style -data folder) or digits")
    else:
        from data import donkey
        return donkey.setup(opt, check)
    if check is not None:
        check(*loaders)
    return loaders


def verify(opt, train_loader, test_loader):
    """The checks of the loaders against the options that need no image: the classes of train and val, the class
    count against -nClasses, and a test set that holds at least one batch of -batchSize (lcnn tests whole
    batches only; clcNet also the last short one)."""
    classes = list(train_loader.classes)
    val_only = [c for c in test_loader.classes if c not in classes]
    if val_only:
        raise DataError(f"class '{val_only[0]}' has images in val/ but no train/ folder under -data {opt.data}: "
                        'give it training images or take it out of val/')
    if len(classes) != opt.nClasses:
        raise DataError(f'the data loader has {len(classes)} classes but -nClasses is {opt.nClasses}: '
                        f'pass -nClasses {len(classes)}')
    n_test = test_loader.size()
    if n_test <= 0:
        raise DataError('the test loader has no images: add images to the val/ folder of -data')
    if not opt.netType.startswith('clcnet') and n_test < opt.batchSize:
        raise DataError(f'-batchSize {opt.batchSize} is larger than the {n_test} validation images, so no batch '
                        f'would be tested: use -batchSize {n_test} or less')


def check(opt, train_loader, test_loader):
    """data.lua's checks after the loaders exist (verify()), then its lines and classes.t7 in opt.save.

    Returns (nClasses, nTest).
    """
    import checkpoints
    verify(opt, train_loader, test_loader)
    classes = list(train_loader.classes)
    lua_print('nClasses: ', len(classes))
    os.makedirs(opt.save, exist_ok=True)
    checkpoints.save_object(os.path.join(opt.save, 'classes.t7'), classes)
    n_test = test_loader.size()
    lua_print('nTest: ', n_test)
    return len(classes), n_test


def _seed_donkey(worker_id):
    """Each donkey reseeds its copy of the loader's generator with manualSeed + id (ids from 1), as data.lua does."""
    from data.donkey import TorchRandom
    info = torch.utils.data.get_worker_info()
    seed = info.dataset.seed + worker_id + 1
    info.dataset.loader.rng = TorchRandom(seed)
    lua_print(f'Starting donkey with id: {worker_id + 1} seed: {seed}')


class _TestJobs(torch.utils.data.Dataset):
    """Job k of test.lua's queue: items k*batchSize .. (k+1)*batchSize-1 through the test hook."""

    def __init__(self, loader, batch_size, seed):
        self.loader, self.batch_size, self.seed = loader, batch_size, seed

    def __len__(self):
        return self.loader.size() // self.batch_size

    def __getitem__(self, k):
        before = self.loader.hooks.load_errors
        inputs, labels = self.loader.get(k * self.batch_size, (k + 1) * self.batch_size)
        return inputs, labels, self.loader.hooks.load_errors - before


class _TrainJobs(torch.utils.data.IterableDataset):
    """train.lua's endless jobs: trainLoader:sample(batchSize) from each donkey's own generator."""

    def __init__(self, loader, batch_size, seed):
        self.loader, self.batch_size, self.seed = loader, batch_size, seed

    def __iter__(self):
        while True:
            before = self.loader.hooks.load_errors
            inputs, labels = self.loader.sample(self.batch_size)
            yield inputs, labels, self.loader.hooks.load_errors - before


def _donkeys(jobs, n_donkeys):
    return torch.utils.data.DataLoader(jobs, batch_size=None, num_workers=n_donkeys, worker_init_fn=_seed_donkey,
                                       persistent_workers=n_donkeys > 0, pin_memory=torch.cuda.is_available())


def _collect(hooks, batches, n_donkeys):
    """Yield (inputs, labels); failures counted in worker processes are added to the main process count."""
    for inputs, labels, errors in batches:
        if n_donkeys > 0:
            hooks.load_errors += int(errors)
        yield inputs, labels


class _Epoch:
    """An iterable of n (inputs, labels) batches with a length, for progress bars."""

    def __init__(self, batches, n):
        self._batches, self._n = batches, n

    def __len__(self):
        return self._n

    def __iter__(self):
        for _, batch in zip(range(self._n), self._batches):
            yield batch


def _kept(loader, key, make):
    """A worker pool (or stream) kept on the loader across calls, as Lua's donkeys live the whole run.

    Pools run on a copy of the loader without the kept pools: a pool referring back to the loader would form a
    cycle, and the garbage collector closes multiprocessing's queues before the pool can tell its workers to stop.
    """
    if key not in loader._iterators:
        loader._iterators[key] = make(copy.copy(loader))
    return loader._iterators[key]


def train_batches(loader, opt, n):
    """The next n training batches (opt.batchSize each) from donkeys that live across calls, as Lua's threads do.

    With -nDonkeys 0 they are made in this process from the loader's own generator (seeded -manualSeed).
    """
    bs, donkeys = opt.batchSize, opt.nDonkeys
    if donkeys == 0:
        return _Epoch(_collect(loader.hooks, iter(_donkeys(_TrainJobs(loader, bs, opt.manualSeed), 0)), 0), n)
    stream = _kept(loader, ('train', bs, donkeys), lambda twin: _collect(
        loader.hooks, iter(_donkeys(_TrainJobs(twin, bs, opt.manualSeed), donkeys)), donkeys))
    return _Epoch(stream, n)


def test_batches(loader, opt):
    """One validation pass: floor(size / batchSize) batches in test.lua's job order (batch k = items k*bs ...)."""
    bs, donkeys = opt.batchSize, opt.nDonkeys
    if donkeys == 0:
        pool = _donkeys(_TestJobs(loader, bs, opt.manualSeed), 0)
    else:
        pool = _kept(loader, ('test', bs, donkeys),
                     lambda twin: _donkeys(_TestJobs(twin, bs, opt.manualSeed), donkeys))
    return _Epoch(_collect(loader.hooks, iter(pool), donkeys), len(pool))
