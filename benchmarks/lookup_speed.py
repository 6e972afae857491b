"""Wall-clock benchmark of layers/lookup.py's compiled lookup inference against dense eager PyTorch (issues 7, 13).

No Lua counterpart: lcnn only counted multiplications (benchmark/PerformanceModule.lua).
Compares, in one run, median milliseconds per forward (steady state: blocks of repeated forwards after warm-up,
dense and lookup blocks alternating so that load from other processes hits both alike):
  * dense eager AlexNet with LCNN's channel counts (conv + batch norm + ReLU + max pooling, fully connected layers
    as nn.Linear: PyTorch's conv2d of a 6x6 kernel over a 6x6 input is >10x slower than the same product through
    Linear, so Linear is the fair dense baseline) vs the compiled alexnet-lcnn (models/alexnet-lcnn.lua's layers)
    for LCNN-fast (dictionaries 3,30,30,30,30,512,512) and LCNN-accurate (3,500,500,500,30,1024,1024);
  * dense ResNet-18 (models.create 'resnet') vs the compiled ResNet-18-LCNN (models.create 'resnet-lcnn'),
    fast (firstPool 3, pool1-4 = 8) and accurate (firstPool 3, pool1-4 = 128);
at batch 1 and 16, with torch threads = 1 and at the machine's core count (both models at the same count; the
thread counts alternate in the same blocks, so that their comparison sees the same load).
The lookup model is compiled with the timed batch as example input, and once without any example (layers timed
on a synthetic input, `lookup.compile(model)`): both are timed. Align weights get one uniform
density per network, chosen so that the whole network needs the target factor fewer multiplications than its
dense equivalent (counted as lcnn's benchmark counts them: dictionary over the padded input, align taps scaled by
their density; paper targets: AlexNet 31x / 3.2x as in the issue, ResNet-18 29.2x / 5.0x). The
table shows ms, speedup, the counted multiplication ratio and speedup / ratio; a second table compares the
thread counts (speedup at all cores over speedup at 1, the lookup engine's own gain and dense PyTorch's), followed by
the machine's memory read bandwidth at both counts (it bounds what more cores gain the fully connected layers at
batch 1, which read all their weights once per image); then per-layer tables
(layers.lookup.time_layers) show where the time goes. The tables print the machine's load average before and after
the timings.

Run: .venv/bin/python benchmarks/lookup_speed.py [--repeats N] [--quick] [--nets ...] [--batches ...] [--threads ...]
"""
import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import models  # noqa: E402
import opts  # noqa: E402
from layers import PooledSpatialConvolution, activation, lookup  # noqa: E402
from layers.shape import View  # noqa: E402

N_CLASSES = 1000
BANDWIDTH_MB = 16  # AlexNet's fc8 weight; more than the caches of this project's machines hold
# (input planes, output planes, kernel, stride, pad, max pooling after): AlexNet with LCNN's channel counts.
ALEXNET = [(3, 64, 11, 4, 2, True), (64, 192, 5, 1, 2, True), (192, 384, 3, 1, 1, False),
           (384, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, True)]
CONFIGS = {
    'AlexNet': {'LCNN-fast': ((3, 30, 30, 30, 30, 512, 512), 31.0),
                'LCNN-accurate': ((3, 500, 500, 500, 30, 1024, 1024), 3.2)},
    'ResNet-18': {'LCNN-fast': ((3, 8, 8, 8, 8), 29.2), 'LCNN-accurate': ((3, 128, 128, 128, 128), 5.0)},
}


def alexnet_dense():
    layers = []
    for cin, cout, k, s, p, pool in ALEXNET:
        layers += [nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout, 1e-3), nn.ReLU(True)]
        if pool:
            layers.append(nn.MaxPool2d(3, 2))
    layers += [nn.Flatten(), activation.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.BatchNorm1d(4096, 1e-3),
               nn.ReLU(True), activation.Dropout(0.5), nn.Linear(4096, 4096), nn.BatchNorm1d(4096, 1e-3), nn.ReLU(True),
               nn.Linear(4096, N_CLASSES), activation.LogSoftMax()]
    return nn.Sequential(*layers)


def alexnet_lcnn(dicts):
    """models/alexnet-lcnn.lua's network with one dictionary size per layer (the Lua options share one size
    between conv2-5, which LCNN-accurate's 500,500,500,30 does not)."""
    features = nn.Sequential()
    for (cin, cout, k, s, p, pool), size in zip(ALEXNET, dicts):
        features.extend([PooledSpatialConvolution(cin, cout, k, k, s, s, p, p, poolSize=size),
                         nn.BatchNorm2d(cout, 1e-3), nn.ReLU(True)])
        if pool:
            features.append(nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(
        activation.Dropout(0.5), PooledSpatialConvolution(256, 4096, 6, 6, poolSize=dicts[5]),
        nn.BatchNorm2d(4096, 1e-3), nn.ReLU(True), activation.Dropout(0.5),
        PooledSpatialConvolution(4096, 4096, 1, 1, poolSize=dicts[6]),
        nn.BatchNorm2d(4096, 1e-3), nn.ReLU(True), nn.Conv2d(4096, N_CLASSES, 1), View(N_CLASSES),
        activation.LogSoftMax())
    return nn.Sequential(features, classifier)


def resnet18(pools=None):
    args = ['-netType', 'resnet', '-depth', '18']
    if pools is not None:
        args[1] = 'resnet-lcnn'
        for flag, pool in zip(('-firstPool', '-pool1', '-pool2', '-pool3', '-pool4'), pools):
            args += [flag, str(pool)]
    # models/resnet.lua's " | ResNet-18 ImageNet" line would land between this script's own lines.
    with contextlib.redirect_stdout(io.StringIO()):
        return models.create(opts.parse(args))


def count_multiplications(model, x):
    """(lookup network total, dense-equivalent total, sum over align convs of their dense tap count), counted per
    lcnn's PerformanceModule: a convolution costs output elements x weight[0] elements, Linear its weight, a
    pooled convolution its dictionary conv (over the padded input) plus its align conv scaled by the density."""
    stats = {'lcnn': 0.0, 'dense': 0.0, 'align': 0.0}

    def hook(mod, args, out):
        if isinstance(mod, PooledSpatialConvolution):
            hp, wp = args[0].shape[2] + 2 * mod.padH, args[0].shape[3] + 2 * mod.padW
            dictionary = hp * wp * mod.poolSize * mod.nInputPlane
            full = out.numel() * mod.poolSize * mod.kH * mod.kW
            density = (mod.alignconv.weight != 0).float().mean().item()
            stats['lcnn'] += dictionary + full * density
            stats['align'] += full
            stats['dense'] += out.numel() * mod.nInputPlane * mod.kH * mod.kW
        elif isinstance(mod, nn.Conv2d) and not getattr(mod, '_inside_pooled', False):
            n = out.numel() * mod.weight[0].numel()
            stats['lcnn'] += n
            stats['dense'] += n
        elif isinstance(mod, nn.Linear):
            stats['lcnn'] += mod.weight.numel()
            stats['dense'] += mod.weight.numel()

    for m in model.modules():
        if isinstance(m, PooledSpatialConvolution):
            m.poolconv._inside_pooled = m.alignconv._inside_pooled = True
    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return stats['lcnn'], stats['dense'], stats['align']


def set_density(model, density, gen):
    """Draw round(density * size) align weights of every pooled convolution at random places (magnitudes as
    Torch7's reset draws them, kept above the layer's pruning threshold); the others are zero."""
    for m in model.modules():
        if isinstance(m, PooledSpatialConvolution):
            w = m.alignconv.weight
            count = round(density * w.numel())
            stdv = 1 / w[0].numel() ** 0.5
            values = torch.empty(w.numel())
            values.zero_()
            where = torch.randperm(w.numel(), generator=gen)[:count]
            magnitude = m.sparseTh + stdv * torch.rand(count, generator=gen)
            values[where] = torch.where(torch.rand(count, generator=gen) < 0.5, -magnitude, magnitude)
            with torch.no_grad():
                w.copy_(values.view(w.shape))


def calibrate(model, gen):
    """Batch norm statistics from one random batch, so activations keep a sane scale through the network
    (random weights would otherwise drift towards denormals or overflow and distort the timings)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 224, 224, generator=gen))
    return model.eval()


def block_medians(fns, repeats, blocks=3, warmup=2):
    """Median ms of each function: `blocks` rounds, each running every function `repeats / blocks` times in a row
    after `warmup` untimed calls (steady state, as repeated inference runs), so that load from other processes
    on a shared machine hits all functions alike."""
    times = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(blocks):
            for t, fn in zip(times, fns):
                for _ in range(warmup):
                    fn()
                for _ in range(max(1, repeats // blocks)):
                    t0 = time.perf_counter()
                    fn()
                    t.append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


def at_threads(threads, model, x):
    """A forward of model on x with torch's intra-op pool at `threads` (set on each call: a no-op unless the count
    changes, which happens on a block's untimed warm-up call)."""
    def run():
        torch.set_num_threads(threads)
        return model(x)
    return run


def read_bandwidth(threads, repeats):
    """GB/s of torch's sum over BANDWIDTH_MB at each thread count (alternating blocks): about the rate at which the
    fully connected layers at batch 1 can stream their weights from memory."""
    data = torch.ones(BANDWIDTH_MB << 18)
    medians = block_medians([at_threads(t, torch.sum, data) for t in threads], repeats)
    return {t: (BANDWIDTH_MB << 20) / ms / 1e6 for t, ms in zip(threads, medians)}


def forms(compiled, batch):
    """The form each lookup-capable layer of a compiled network runs at this batch size: L lookup, d dense."""
    return ''.join('L' if layer.path_for(batch) == 'lookup' else 'd'
                   for layer in lookup.lookup_layers(compiled) if layer.has_lookup)


def build(family, config, gen):
    dicts, target = CONFIGS[family][config]
    lcnn = alexnet_lcnn(dicts) if family == 'AlexNet' else resnet18(dicts)
    x = torch.randn(1, 3, 224, 224, generator=gen)
    set_density(lcnn, 1.0, gen)
    _, dense_total, align_full = count_multiplications(lcnn, x)
    set_density(lcnn, 0.0, gen)
    base, _, _ = count_multiplications(lcnn, x)  # dictionaries and dense layers
    density = (dense_total / target - base) / align_full
    if density <= 0:
        raise SystemExit(f'{family} {config}: the dictionaries alone exceed 1/{target} of the dense multiplications')
    set_density(lcnn, density, gen)
    calibrate(lcnn, gen)
    lcnn_total, dense_total, _ = count_multiplications(lcnn, x)
    return lcnn, density, dense_total / lcnn_total


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=30, help='timed forwards per measurement at batch 1 (median)')
    parser.add_argument('--quick', action='store_true', help='AlexNet only, batch 1, 1 thread, no per-layer tables')
    parser.add_argument('--nets', default='all',
                        help="comma-separated subset of 'AlexNet LCNN-fast', ... (family or full name); default all")
    parser.add_argument('--batches', default='1,16', help='batch sizes (default 1,16)')
    parser.add_argument('--threads', default='1,all', help="thread counts, 'all' = the machine's cores (default 1,all)")
    parser.add_argument('--no-layers', action='store_true', help='leave out the per-layer tables')
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    args.batches = [int(b) for b in args.batches.split(',')]
    args.threads = sorted({cores if t == 'all' else int(t) for t in args.threads.split(',')})
    names = [f'{family} {config}' for family in CONFIGS for config in CONFIGS[family]]
    wanted = names if args.nets == 'all' else [n for n in names if any(w.strip() in n for w in args.nets.split(','))]
    if not wanted:
        raise SystemExit(f"--nets {args.nets}: none of {', '.join(names)}")
    args.nets = wanted
    if args.quick:
        args.nets, args.batches, args.threads, args.no_layers = [names[0], names[1]], [1], [1], True
    return args


def main():
    args = parse_args()
    gen = torch.Generator().manual_seed(0)
    torch.set_num_threads(1)
    backend = lookup.resolve_backend()
    print(f'lookup kernels: backend {backend}' + (f', {torch.ops.lcnn_lookup.isa()}' if backend == 'cpp' else '')
          + f'; torch {torch.__version__}; {os.cpu_count()} cores')
    families = sorted({name.split()[0] for name in args.nets}, key=list(CONFIGS).index)
    dense_models = {f: calibrate(alexnet_dense() if f == 'AlexNet' else resnet18(), gen) for f in families}
    lcnn_models, no_example = {}, {}
    for name in args.nets:
        family, config = name.split()
        lcnn_models[name] = build(family, config, gen)
        # Compiled once without an example input: every layer timed on a synthetic input, whatever the batch.
        no_example[name] = lookup.compile(lcnn_models[name][0])
        print(f'{name}: uniform align density {100 * lcnn_models[name][1]:.3f}%')
    results, per_layer, chosen = {}, [], {}
    rows = {threads: [] for threads in args.threads}
    load_before = os.getloadavg()
    for name in args.nets:
        family = name.split()[0]
        lcnn, _, ratio = lcnn_models[name]
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224, generator=gen)
            # Compiled at each thread count (its per-layer choices are timed at that count). All thread counts are
            # timed in the same alternating blocks, so that the all-cores / 1-thread comparisons do not span
            # minutes of a shared machine's changing load.
            compiled, fns = {}, []
            for threads in args.threads:
                torch.set_num_threads(threads)
                compiled[threads] = lookup.compile(lcnn, x)
                fns += [at_threads(threads, m, x) for m in (dense_models[family], compiled[threads], no_example[name])]
            repeats = args.repeats if batch == 1 else max(6, args.repeats // 3)
            medians = block_medians(fns, repeats)
            chosen[name, batch] = [forms(compiled[t], batch) for t in args.threads] + [forms(no_example[name], batch)]
            for i, threads in enumerate(args.threads):
                dense_ms, lookup_ms, plain_ms = medians[3 * i:3 * i + 3]
                results[name, batch, threads] = (dense_ms, lookup_ms)
                speedup = dense_ms / lookup_ms
                rows[threads].append((name, batch, dense_ms, lookup_ms, plain_ms, speedup, ratio, speedup / ratio))
            torch.set_num_threads(1)
            if 1 in compiled and not args.no_layers and family == 'AlexNet' and (batch == 1 or 'fast' in name):
                per_layer.append((f'{name}, batch {batch}, 1 thread',
                                  lookup.time_layers(compiled[1], x, repeats=repeats)))
    load = ' before, '.join(', '.join(f'{v:.1f}' for v in avg) for avg in (load_before, os.getloadavg())) + ' after'
    for threads in args.threads:
        print(f'\ntorch threads = {threads}: median ms per forward (dense eager PyTorch vs compiled lookup, compiled '
              f'with the timed batch as example input / without one); machine load average {load} on '
              f'{os.cpu_count()} cores')
        head = f'{"network":<24} {"batch":>5} {"dense ms":>9} {"lookup ms":>9} {"no-ex ms":>9} {"speedup":>8} ' \
               f'{"mult ratio":>10} {"speedup/ratio":>13}'
        print(head)
        print('-' * len(head))
        for name, batch, dense_ms, lookup_ms, plain_ms, speedup, ratio, eff in rows[threads]:
            print(f'{name:<24} {batch:>5} {dense_ms:>9.2f} {lookup_ms:>9.2f} {plain_ms:>9.2f} {speedup:>7.2f}x '
                  f'{ratio:>9.1f}x {eff:>13.2f}')
    if len(args.threads) > 1:
        top = args.threads[-1]
        print(f'\n{top} threads against 1 (same run): speedup at {top} / speedup at 1 (= lookup gain / dense gain), '
              f'and each side\'s own gain (ms at 1 / at {top})')
        head = f'{"network":<24} {"batch":>5} {"speedup ratio":>13} {"lookup gain":>11} {"dense gain":>10}'
        print(head)
        print('-' * len(head))
        for name in args.nets:
            for batch in args.batches:
                (d1, l1), (dn, ln) = results[name, batch, 1], results[name, batch, top]
                print(f'{name:<24} {batch:>5} {(dn / ln) / (d1 / l1):>13.2f} {l1 / ln:>10.2f}x {d1 / dn:>9.2f}x')
        bandwidth = read_bandwidth([1, top], args.repeats)
        print(f'memory read bandwidth (torch sum over {BANDWIDTH_MB} MB): {bandwidth[1]:.1f} GB/s at 1 thread, '
              f'{bandwidth[top]:.1f} at {top} ({bandwidth[top] / bandwidth[1]:.2f}x); at batch 1 the fully connected '
              f'layers read their weights and taps once per image, so this caps what more cores gain them')
    print('\nforms the compiled networks run, per lookup-capable layer in network order (L lookup, d dense): '
          'compiled with the timed batch at each thread count, and without an example input')
    head = f'{"network":<24} {"batch":>5} ' + ' '.join(f'{f"example, {t} thr":<20}' for t in args.threads) + ' no example'
    print(head)
    print('-' * len(head))
    for (name, batch), strings in chosen.items():
        print((f'{name:<24} {batch:>5} ' + ' '.join(f'{s:<20}' for s in strings)).rstrip())
    torch.set_num_threads(1)
    for title, timing in per_layer:
        print(f'\nper layer, {title} (dense = folded dense conv in PyTorch; lookup = fused lookup kernel):')
        print(lookup.format_timing(timing))


if __name__ == '__main__':
    main()
