"""The run plumbing train.py and test.py share (the parts of main.lua, train.lua and test.lua that place a process
among the workers, time it, show progress and deal it its validation batches), kept apart so neither imports the other."""
import copy
import sys
import time

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from errors import UserError, console


class Timer:
    """torch.Timer's wall-clock part."""

    def __init__(self):
        self.start = time.perf_counter()

    def reset(self):
        self.start = time.perf_counter()

    def time(self):
        return time.perf_counter() - self.start


class Dist:
    """Where this process stands among the training processes: rank, world size, its device."""

    def __init__(self, rank=0, world=1, device=None):
        self.rank = rank
        self.world = world
        self.device = torch.device('cpu') if device is None else device

    @property
    def main(self):
        return self.rank == 0

    def mean(self, values):
        """The mean over the processes of each number in `values` (a no-op for one process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch_dist.all_reduce(t)
        return (t / self.world).tolist()

    def sum(self, values):
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch_dist.all_reduce(t)
        return t.tolist()

    def broadcast_buffers(self, net):
        """Rank 0's buffers (BatchNorm running statistics) everywhere, so every rank evaluates one model."""
        if self.world == 1:
            return
        for buf in net.buffers():
            torch_dist.broadcast(buf, 0)

    def _comm_device(self):
        # NCCL only moves CUDA tensors; gloo takes CPU ones
        return self.device if self.device.type == 'cuda' else torch.device('cpu')


def unwrap(model):
    """The network inside a DistributedDataParallel wrapper (what Lua's cleanDPT returns)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def progress(opt, dist, **kwargs):
    """A tqdm bar on stderr for rank 0, or a silent one when stderr is no terminal or with -noProgress."""
    disable = (not dist.main or getattr(opt, 'noProgress', False) or not sys.stderr.isatty())
    return tqdm(file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def progress_aware_printing(opt, dist):
    """Make lua_print lift the bars out of the way while it writes, so log lines never mix with a bar."""
    if dist.main and not getattr(opt, 'noProgress', False) and sys.stderr.isatty():
        console.before_write = lambda: tqdm.external_write_mode(file=sys.stderr)


def worker_opt(opt, dist):
    """The options a worker loads its share of each batch with: batchSize / world and, but for rank 0, a seed of
    its own (so the workers draw different samples)."""
    if dist.world == 1:
        return opt
    if opt.batchSize % dist.world:
        raise UserError(f'-batchSize {opt.batchSize} (per -breakBatch piece) does not split evenly over '
                        f'{dist.world} workers; use a multiple of {dist.world}')
    sub = copy.copy(opt)
    sub.batchSize = opt.batchSize // dist.world
    sub.manualSeed = opt.manualSeed + 7919 * dist.rank
    # -samplesPerClass picks the run's images from the run's seed (data.imagenet.subset_seed)
    sub.subsetSeed = opt.manualSeed
    return sub


def to_device(tensor, dist, dtype=None):
    tensor = tensor.to(dist.device, non_blocking=True)
    return tensor if dtype is None else tensor.to(dtype)



class _Batches(Dataset):
    """Item j is validation batch numbers[j] (1-based): the images loader.get() returns for that slice."""

    def __init__(self, loader, images_per_batch, numbers):
        self.loader = loader
        self.images_per_batch = images_per_batch
        self.numbers = numbers

    def __len__(self):
        return len(self.numbers)

    def __getitem__(self, j):
        start = (self.numbers[j] - 1) * self.images_per_batch
        return self.loader.get(start, min(start + self.images_per_batch, self.loader.size()))


class BatchShard:
    """This process's validation batches (numbered from 1), in order, made by -nDonkeys worker processes.

    lcnn tests floor(nTest / batchSize) whole batches; clcNet (`partial`) every image, the last batch shorter,
    and with -tenCrop a batch holds batchSize / 10 images of 10 crops. One process takes the loader's own
    test_batches(); with several, batch k goes to rank (k - 1) mod world, so every batch is scored whole, exactly
    as one process would score it.
    """

    def __init__(self, loader, opt, dist, partial=False):
        self.loader = loader
        self.opt = opt
        self.dist = dist
        self.partial = partial
        n_images = loader.size()
        self.images_per_batch = opt.batchSize // getattr(loader, 'n_crops', 1)
        if partial:
            self.total = -(-n_images // self.images_per_batch)
        else:
            self.total = n_images // self.images_per_batch
        self.numbers = list(range(1 + dist.rank, self.total + 1, dist.world))

    def __len__(self):
        return len(self.numbers)

    def __iter__(self):
        """(batch number, inputs, labels) triples."""
        # clcNet's DataLoader (the one with num_batches, run by -nThreads workers) keeps the last partial batch in
        # its own pass, lcnn's loaders (-nDonkeys) leave it out; take the loader's pass when it is the one wanted
        clcnet_loader = hasattr(self.loader, 'num_batches')
        if self.dist.world == 1 and self.partial == clcnet_loader:
            batches = self.loader.test_batches(self.opt)
        else:
            workers = self.opt.nThreads if clcnet_loader else self.opt.nDonkeys
            batches = DataLoader(_Batches(self.loader, self.images_per_batch, self.numbers), batch_size=None,
                                 num_workers=workers)
        for number, (inputs, labels) in zip(self.numbers, batches):
            yield number, inputs, labels
