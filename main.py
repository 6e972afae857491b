"""Port of lcnn's main.lua and clcNet's main.lua: parse the options, build data and model, then train and test
epoch after epoch, test once (-testOnly) or benchmark (-benchmark); on one process, on -nGPU N local processes,
or as one process of a torchrun job (torch.distributed DDP)."""
import contextlib
import math
import os
import socket
import sys

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

import benchmark
import checkpoints
import data
import model as model_setup
import opts
import t7
import test
import runtime
import train
from errors import UserError, console, lua_print
from layers import lookup
from runtime import Dist, progress, unwrap

# the errors a user causes and fixes (bad flags, files, data); anything else is a bug and keeps its traceback
USER_ERRORS = (UserError, t7.T7Error, data.DataError, benchmark.BenchmarkError, lookup.LookupInferenceError)


def check_inputs(opt):
    """What can be checked before anything is written: the -data folder and the files named by flags."""
    if opt.dataset != 'digits':
        if not os.path.isdir(opt.data):
            raise UserError(f'-data {opt.data}: no such folder; give the dataset folder that holds train/ and val/')
        if not os.path.isdir(os.path.join(opt.data, 'train')):
            raise UserError(f'-data {opt.data}: it has no train/ folder; give the dataset folder that holds '
                            'train/ and val/')
    for flag in ('retrain', 'loadParams', 'optimState'):
        path = getattr(opt, flag)
        if path != 'none' and not os.path.isfile(path):
            raise UserError(f'-{flag} {path}: file not found')


def run_benchmark(net, loader, opt):
    """benchmark.lua: the FLOP tree of one forward; with -lookup also the measured per-layer times (on the CPU,
    where the lookup kernels run)."""
    benchmark.benchmark(net, opt, out=lua_print)
    if opt.lookup:
        example, _ = loader.get(0, 1)
        lua_print(lookup.format_timing(lookup.time_layers(net.cpu(), example)))


def test_lookup(net, criterion, opt, dist, loader):
    """-testOnly -lookup: the network compiled into the fast lookup engine (each layer timed on a validation
    batch to pick its faster form), tested on the CPU."""
    if dist.world > 1:
        raise UserError('-lookup evaluates on the CPU in one process: leave out -nGPU (or run without torchrun)')
    example, _ = loader.get(0, min(opt.batchSize, loader.size()))
    compiled = lookup.compile(net.cpu(), example)
    test.Tester(compiled, criterion, opt, Dist()).test(opt.epochNumber, loader)


def run_lcnn(opt, dist, train_loader, test_loader):
    """lcnn's main.lua after data.lua: model.lua, train.lua, test.lua, then the epoch loop."""
    model, criterion = model_setup.setup(opt, dist)
    if opt.benchmark:
        if dist.main:
            run_benchmark(unwrap(model), test_loader, opt)
        return
    if opt.testOnly:
        if opt.lookup:
            test_lookup(unwrap(model), criterion, opt, dist, test_loader)
        else:
            test.Tester(model, criterion, opt, dist).test(opt.epochNumber, test_loader)
        return
    trainer = train.Trainer(model, criterion, opt, dist)
    tester = test.Tester(model, criterion, opt, dist)
    epochs = range(opt.epochNumber, opt.nEpochs + 1)
    with progress(opt, dist, total=len(epochs), desc='epochs', unit='epoch', position=1) as bar:
        for epoch in epochs:
            trainer.train(epoch, train_loader)
            tester.test(epoch, test_loader)
            bar.update(1)


def run_clcnet(opt, dist, train_loader, val_loader):
    """clcNet's main.lua: checkpoint, model, Trainer, epochs with model_best / latest checkpoints."""
    checkpoint, optim_state = checkpoints.latest(opt)
    model, criterion = model_setup.setup_clcnet(opt, checkpoint, dist)
    if opt.benchmark:
        if dist.main:
            run_benchmark(unwrap(model), val_loader, opt)
        return
    trainer = train.ClcTrainer(model, criterion, opt, optim_state, dist)
    if opt.testOnly:
        top1_err, top5_err = trainer.test(0, val_loader)
        lua_print(' * Results top1: %6.3f  top5: %6.3f' % (top1_err, top5_err))
        return
    start = int(checkpoint['epoch']) + 1 if checkpoint is not None else opt.epochNumber
    best_top1 = best_top5 = math.inf
    epochs = range(start, opt.nEpochs + 1)
    with progress(opt, dist, total=len(epochs), desc='epochs', unit='epoch', position=1) as bar:
        for epoch in epochs:
            trainer.train(epoch, train_loader)
            top1, top5 = trainer.test(epoch, val_loader)
            best = top1 < best_top1
            if best:
                best_top1, best_top5 = top1, top5
                lua_print(' * Best model ', top1, top5)
            if dist.main and not opt.noCheckpoint:
                checkpoints.save(epoch, unwrap(model), trainer.optimState, best, opt)
            bar.update(1)
    lua_print(' * Finished top1: %6.3f  top5: %6.3f' % (best_top1, best_top5))


def setup_data(data_opt, dist):
    """data.setup with this process's options (its share of the batch, its seed); rank 0 first, since it may
    write the caches the others then read."""
    if dist.main:
        loaders = data.setup(data_opt)
    if dist.world > 1:
        torch_dist.barrier()
    if not dist.main:
        loaders = data.setup(data_opt)
    return loaders


def run(opt, dist):
    """Everything main.lua does, in one process of `dist`."""
    if dist.main:
        os.makedirs(opt.save, exist_ok=True)
        checkpoints.remove_incomplete(opt.save)
        console.open_log(os.path.join(opt.save, 'log.txt'), opts.log_text(opt), append=opt.resume != 'none')
        runtime.progress_aware_printing(opt, dist)
    lua_print(opts.format(opt))
    # every worker draws its own samples and dropout masks; rank 0 keeps -manualSeed (DDP starts all workers
    # from rank 0's parameters)
    data_opt = runtime.worker_opt(opt, dist)
    torch.manual_seed(data_opt.manualSeed)
    lua_print('Saving everything to: ' + opt.save)
    train_loader, test_loader = setup_data(data_opt, dist)
    if dist.main:
        data.check(opt, train_loader, test_loader)
    if opt.netType.startswith('clcnet'):
        run_clcnet(opt, dist, train_loader, test_loader)
    else:
        run_lcnn(opt, dist, train_loader, test_loader)


def _one_line(error):
    return ' '.join(str(error).split()) or type(error).__name__


def _free_port():
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(local_rank, opt, world, rank_offset, local_world):
    """One process of a DDP job: join the process group, then run; a user error ends it with one line."""
    rank = rank_offset + local_rank
    joined = False
    try:
        device = model_setup.select_device(opt, local_rank)
        if device.type == 'cpu':
            # the processes of this machine share its cores instead of each taking all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        torch_dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', rank=rank, world_size=world)
        joined = True
        if rank != 0:
            # one Lua process printed; the other workers stay silent on stdout
            console.quiet = True
            sys.stdout = open(os.devnull, 'w')
        try:
            run(opt, Dist(rank, world, device))
        finally:
            torch_dist.destroy_process_group()
    except USER_ERRORS as e:
        # once joined, the workers go in step and rank 0 reports for all of them
        if rank == 0 or not joined:
            print(f'main.py: {_one_line(e)}', file=sys.stderr)
        sys.exit(1)
    finally:
        console.close()


def main(argv=None):
    opt = opts.parse(sys.argv[1:] if argv is None else argv)
    try:
        check_inputs(opt)
        if 'WORLD_SIZE' in os.environ and int(os.environ['WORLD_SIZE']) > 1:
            # started by torchrun: it set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT
            world = int(os.environ['WORLD_SIZE'])
            local_rank = int(os.environ.get('LOCAL_RANK', 0))
            _worker(local_rank, opt, world, int(os.environ['RANK']) - local_rank,
                    int(os.environ.get('LOCAL_WORLD_SIZE', world)))
        elif opt.nGPU > 1:
            os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
            os.environ['MASTER_PORT'] = str(_free_port())
            try:
                mp.spawn(_worker, args=(opt, int(opt.nGPU), 0, int(opt.nGPU)), nprocs=int(opt.nGPU))
            except mp.ProcessExitedException as e:
                if e.exit_code is not None and e.exit_code > 0:
                    sys.exit(e.exit_code)  # the worker has printed its one line
                print(f'main.py: worker {e.error_index} was killed ({e}); the other workers were stopped',
                      file=sys.stderr)
                sys.exit(1)
        else:
            try:
                run(opt, Dist(0, 1, model_setup.select_device(opt)))
            finally:
                console.close()
    except USER_ERRORS as e:
        print(f'main.py: {_one_line(e)}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == '__main__':
    main()
