"""Tests of the torch.distributed path on CPU (gloo): DDP workers keep identical parameters after every step and
match one process trained on the same global batches; sharded validation gives the one-process numbers."""
import contextlib
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import opts
import test as lcnn_test
import runtime
import train
from errors import console
from layers.activation import LogSoftMax
from layers.shape import View
from layers.PooledSpatialConvolution import PooledSpatialConvolution

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 4


def tiny_net():
    """No BatchNorm, no dropout: the one-process and the DDP updates are then the same arithmetic."""
    return nn.Sequential(
        PooledSpatialConvolution(3, 6, 3, 3, 1, 1, 1, 1, poolSize=4, lambda_=0.5, initialSparsity=0.3),
        nn.ReLU(),
        View(6 * 4 * 4),
        nn.Linear(96, 10),
        LogSoftMax(),
    )


def make_opt(save, *argv):
    opt = opts.parse(['-dataset', 'digits', '-nDonkeys', '0', '-noCheckpoint', '-LR', '30', *argv])
    opt.save = save
    return opt


class ShardLoader:
    """Each batch the trainer asks for is this rank's slice (opt.batchSize long) of the next global piece."""

    def __init__(self, pieces, rank):
        self.pieces, self.rank = pieces, rank

    def train_batches(self, opt, n):
        per = opt.batchSize
        for x, y in self.pieces[:n]:
            yield x[self.rank * per:(self.rank + 1) * per], y[self.rank * per:(self.rank + 1) * per]


class ValLoader:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def size(self):
        return len(self.y)

    def get(self, start, stop):
        return self.x[start:stop], self.y[start:stop]

    def test_batches(self, opt):
        return iter([self.get(k * opt.batchSize, (k + 1) * opt.batchSize)
                     for k in range(self.size() // opt.batchSize)])


def _data():
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(GLOBAL_BATCH, 3, 4, 4, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g))
               for _ in range(STEPS)]
    test = (torch.randn(50, 3, 4, 4, generator=g), torch.randint(0, 10, (50,), generator=g))
    return batches, test


def _train(model, opt, pieces, d, test_data, after_step=None):
    trainer = train.Trainer(model, nn.NLLLoss(), opt, d)
    if after_step is not None:
        step = trainer.optim.step

        def checked_step():
            step()
            after_step(trainer.params)
        trainer.optim.step = checked_step
    trainer.train(1, ShardLoader(pieces, d.rank))
    tested = lcnn_test.Tester(model, nn.NLLLoss(), opt, d).test(1, ValLoader(*test_data))
    return [p.detach().clone() for p in trainer.params], trainer.optim.lua_state(), tested


def _worker(rank, port, init_state, save):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    console.quiet = rank != 0
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        net = tiny_net()
        net.load_state_dict(init_state)
        model = nn.parallel.DistributedDataParallel(net)
        batches, test_data = _data()
        # -breakBatch 2: each global batch in two pieces of 4, each piece split over the 2 workers
        pieces = [(x[i:i + 4], y[i:i + 4]) for x, y in batches for i in (0, 4)]
        opt = make_opt(save, '-batchSize', str(GLOBAL_BATCH), '-breakBatch', '2', '-epochSize', str(STEPS))
        spread = []

        def compare_ranks(params):
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            everyone = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(everyone, flat)
            spread.append(max((other - flat).abs().max().item() for other in everyone))

        params, state, tested = _train(model, opt, pieces, runtime.Dist(rank, WORLD), test_data, compare_ranks)
        torch.save({'params': params, 'dfdx': state['dfdx'], 'spread': spread, 'tested': tested},
                   os.path.join(save, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def _free_port():
    with contextlib.closing(socket.socket()) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_gloo_workers_match_one_process(tmp_path, capsys):
    torch.manual_seed(3)
    init_state = tiny_net().state_dict()
    mp.spawn(_worker, args=(_free_port(), init_state, str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD)]
    # identical parameters on both ranks after every one of the STEPS updates
    assert len(ranks[0]['spread']) == STEPS
    assert all(r['spread'] == [0.0] * STEPS for r in ranks)

    # one process, the whole global batch at once
    net = tiny_net()
    net.load_state_dict(init_state)
    batches, test_data = _data()
    opt = make_opt(str(tmp_path), '-batchSize', str(GLOBAL_BATCH), '-epochSize', str(STEPS))
    params, state, tested = _train(net, opt, batches, runtime.Dist(), test_data)
    assert not all(torch.equal(p, q) for p, q in zip(params, tiny_net().parameters()))
    for got, want in zip(ranks[0]['params'], params):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]['dfdx'], state['dfdx'], rtol=1e-5, atol=1e-6)
    # validation split over the workers reduces to the one-process per-batch averages
    for r in ranks:
        for got, want in zip(r['tested'], tested):
            assert abs(got - want) < 1e-4
