"""Port of lcnn's main.lua and clcNet's main.lua: parse the options, build data and model, then train and test
epoch after epoch, test once (-testOnly) or benchmark (-benchmark); on one process, on -nGPU N local processes,
or as one process of a torchrun job (torch.distributed DDP)."""
import contextlib
import logging
import math
import os
import shutil
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
    if opt.dataset != 'digits' and not opt.benchmark:
        if not os.path.isdir(opt.data):
            what = 'that is a file, not a folder' if os.path.exists(opt.data) else 'no such folder'
            raise UserError(f'-data {opt.data}: {what}; give the dataset folder that holds train/ and val/')
        if not os.path.isdir(os.path.join(opt.data, 'train')):
            raise UserError(f'-data {opt.data}: it has no train/ folder; give the dataset folder that holds '
                            'train/ and val/')
    for flag in ('retrain', 'loadParams', 'optimState'):
        path = getattr(opt, flag)
        if path != 'none' and os.path.isdir(path):
            raise UserError(f'-{flag} {path}: that is a folder; give a file in it (such as a run folder\'s '
                            f"{'optimState' if flag == 'optimState' else 'model'}_N.t7)")
        if path != 'none' and not os.path.isfile(path):
            raise UserError(f'-{flag} {path}: file not found')


def run_benchmark(net, opt):
    """benchmark.lua: the FLOP tree of one forward; with -lookup also the measured per-layer times (on the CPU,
    where the lookup kernels run). The input is an image of -cropSize (Lua sampled one from the train set; the
    counts and times depend on its size only)."""
    benchmark.benchmark(net, opt, out=lua_print)
    if opt.lookup:
        example = torch.randn(1, 3, opt.cropSize, opt.cropSize, generator=torch.Generator().manual_seed(0))
        lua_print(lookup.format_timing(lookup.time_layers(net.cpu(), example)))


def test_lookup(net, criterion, opt, dist, loader):
    """-testOnly -lookup: the network compiled into the fast lookup engine (each layer timed on a validation
    batch to pick its faster form), tested on the CPU."""
    if dist.world > 1:
        raise UserError('-lookup evaluates on the CPU in one process: leave out -nGPU (or run without torchrun)')
    example, _ = loader.get(0, min(opt.batchSize, loader.size()))
    compiled = lookup.compile(net.cpu(), example)
    test.Tester(compiled, criterion, opt, Dist()).test(opt.epochNumber, loader)


def warn_output_size(net, opt, n_classes):
    """-retrain of a network made for another number of classes: a warning when it has more outputs than the data
    has classes (Lua ran it), one line and no run when some class has no output."""
    outputs = model_setup.output_size(net)
    if opt.retrain == 'none' or outputs is None or outputs == n_classes:
        return
    text = f'-retrain {opt.retrain} has {outputs} outputs but the data has {n_classes} classes'
    if outputs < n_classes:
        missing = (f'class {n_classes} has' if outputs + 1 == n_classes else
                   f'classes {outputs + 1} to {n_classes} have')
        raise UserError(f'{text}: {missing} no score; give a network made for {n_classes} classes (or '
                        f'-resetClassifier -nClasses {n_classes} for a clcNet network)')
    lua_print(f'WARNING: {text}: its first {n_classes} scores are read as the classes of classes.t7')


@contextlib.contextmanager
def batch_norm_hint(opt):
    """torch's refusal of a BatchNorm over one value per channel (a batch of 1) as the flag to change."""
    try:
        yield
    except ValueError as e:
        if 'Expected more than 1 value per channel when training' not in str(e):
            raise
        raise UserError(f'-batchSize {opt.batchSize}: BatchNorm needs more than one value per channel when '
                        'training, so a batch of 1 cannot train this network; give -batchSize 2 or more '
                        '(-testOnly works with 1)') from None


def setup_lcnn(opt, dist, n_classes):
    """lcnn's model.lua: (model, criterion), checked against the data and the crop size."""
    model, criterion = model_setup.setup(opt, dist)
    warn_output_size(unwrap(model), opt, n_classes)
    model_setup.check_input_size(unwrap(model), opt)
    return model, criterion


def run_lcnn(opt, dist, train_loader, test_loader, model, criterion):
    """lcnn's main.lua after model.lua: train.lua, test.lua, then the epoch loop."""
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
            with batch_norm_hint(opt):
                trainer.train(epoch, train_loader)
            tester.test(epoch, test_loader)
            bar.update(1)


def setup_clcnet(opt, dist, n_classes):
    """clcNet's main.lua up to its Trainer: checkpoint, model (checked against the data and the crop size)."""
    checkpoint, optim_state = checkpoints.latest(opt)
    model, criterion = model_setup.setup_clcnet(opt, checkpoint, dist)
    warn_output_size(unwrap(model), opt, n_classes)
    model_setup.check_input_size(unwrap(model), opt)
    return model, criterion, checkpoint, optim_state


def run_clcnet(opt, dist, train_loader, val_loader, model, criterion, checkpoint, optim_state):
    """clcNet's main.lua from its Trainer: epochs with model_best / latest checkpoints."""
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
            with batch_norm_hint(opt):
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


def benchmark_only(opt, dist):
    """-benchmark: the network alone, on an input of -cropSize; no data is read and nothing is written."""
    lua_print(opts.format(opt))
    torch.manual_seed(opt.manualSeed)
    if opt.netType.startswith('clcnet'):
        model, _ = model_setup.setup_clcnet(opt, checkpoints.latest(opt)[0], dist)
    else:
        model, _ = model_setup.setup(opt, dist)
    if dist.main:
        run_benchmark(unwrap(model), opt)


def open_run_folder(opt):
    """The run folder with its log.txt (appended to under -resume) and the record of its options."""
    try:
        os.makedirs(opt.save, exist_ok=True)
        checkpoints.remove_incomplete(opt.save)
        console.open_log(os.path.join(opt.save, 'log.txt'), opts.log_text(opt), append=opt.resume != 'none')
    except OSError as e:
        flag = ('-resume' if opt.resume != 'none' else '-save' if opt.command['values']['save'] else '-cache')
        raise UserError(f'{flag} {getattr(opt, flag[1:])}: cannot write the run folder {opt.save} there '
                        f'({e.strerror}); give a {flag} folder you can write to') from None
    if not (opt.testOnly and opt.resume != 'none'):
        # a test of a run's checkpoint leaves the record of its training as it is
        checkpoints.save_text(os.path.join(opt.save, opts.RUN_OPTIONS), opts.record_text(opt))


def first_on_rank0(dist, first, then):
    """first() on rank 0, then() on the others once rank 0 is through (it may write the caches they read).
    A user error on rank 0 reaches the others, which end with it instead of waiting for rank 0."""
    if dist.world == 1:
        return first()
    failure = [None]
    if dist.main:
        try:
            result = first()
        except USER_ERRORS as e:
            failure = [_one_line(e)]
            error = e
    torch_dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        if dist.main:
            raise error
        raise UserError(failure[0])
    return result if dist.main else then()


def run(opt, dist):
    """Everything main.lua does, in one process of `dist`."""
    if opt.benchmark:
        benchmark_only(opt, dist)
        return
    # every worker draws its own samples and dropout masks; rank 0 keeps -manualSeed (DDP starts all workers
    # from rank 0's parameters)
    data_opt = runtime.worker_opt(opt, dist)

    def prepare():
        open_run_folder(opt)
        runtime.progress_aware_printing(opt, dist)
        lua_print(opts.format(opt))
        for line in opts.restored_lines(opt):
            lua_print(line)
        torch.manual_seed(data_opt.manualSeed)
        lua_print('Saving everything to: ' + opt.save)
        loaders = data.setup(data_opt, check=lambda *loaders: data.verify(opt, *loaders))
        n_classes, _ = data.check(opt, *loaders)
        return loaders + (n_classes,)

    def join():
        torch.manual_seed(data_opt.manualSeed)
        loaders = data.setup(data_opt)
        return loaders + (len(loaders[0].classes),)

    made = _new_folders(opt.save) if opt.resume == 'none' else []
    clcnet = opt.netType.startswith('clcnet')
    try:
        train_loader, test_loader, n_classes = first_on_rank0(dist, prepare, join)
        parts = (setup_clcnet if clcnet else setup_lcnn)(opt, dist, n_classes)
    except USER_ERRORS + (KeyboardInterrupt,):
        if made and dist.main:
            # A start that failed (a bad -retrain, data or crop size) or was interrupted leaves no run folder
            # holding only its log; one that failed later keeps the log of what it ran.
            console.close()
            shutil.rmtree(made[0], ignore_errors=True)
            for folder in made[1:]:
                try:
                    os.rmdir(folder)  # only while empty: another run may have put its folder there meanwhile
                except OSError:
                    break
        raise
    try:
        (run_clcnet if clcnet else run_lcnn)(opt, dist, train_loader, test_loader, *parts)
    except KeyboardInterrupt:
        if dist.main:
            lua_print(checkpoints.interrupted_line(opt))
        raise
    lua_print('Saved everything to: ' + opt.save)


def _new_folders(path):
    """`path` and those of its parent folders that do not exist yet, deepest first (what the run will create)."""
    made = []
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        made.append(path)
        path = os.path.dirname(path)
    return made


def _one_line(error):
    return ' '.join(str(error).split()) or type(error).__name__


def _free_port():
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(local_rank, opt, world, rank_offset, local_world):
    """One process of a DDP job: join the process group, then run; a user error ends it with one line."""
    rank = rank_offset + local_rank
    try:
        device = model_setup.select_device(opt, local_rank)
        if device.type == 'cpu':
            # the processes of this machine share its cores instead of each taking all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        torch_dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', rank=rank, world_size=world)
        if rank != 0:
            # one Lua process printed; the other workers stay silent on stdout
            console.quiet = True
            sys.stdout = open(os.devnull, 'w')
        try:
            run(opt, Dist(rank, world, device))
            # Every worker done before any tears the group down: without this, rank 0 (which holds the group's
            # TCP store) was now and then aborted at exit, after the run had finished ("terminate called without an
            # active exception", in ~5% of the 2-worker CPU test's runs).
            torch_dist.barrier()
        except USER_ERRORS as e:
            # once joined, the workers go in step and rank 0 reports for all of them, at once: mp.spawn stops the
            # other workers as soon as one has ended
            if rank == 0:
                print(f'main.py: {_one_line(e)}', file=sys.stderr, flush=True)
            sys.exit(1)
        finally:
            torch_dist.destroy_process_group()
    except USER_ERRORS as e:
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
            if not torch.cuda.is_available():
                # Lua needed a GPU per -nGPU; here the workers run on the CPU (see _worker), which deserves a word.
                cores = os.cpu_count() or 1
                print(f'-nGPU {opt.nGPU}: no CUDA device here, so {opt.nGPU} worker processes train on the CPU '
                      f'(torch.distributed with gloo), {max(1, cores // int(opt.nGPU))} of its {cores} cores each',
                      flush=True)
            os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
            os.environ['MASTER_PORT'] = str(_free_port())
            # the worker that ends first has printed why; mp.spawn's note that it stops the others is noise
            logging.getLogger('torch.multiprocessing.spawn').setLevel(logging.ERROR)
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
