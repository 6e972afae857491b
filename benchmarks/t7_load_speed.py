"""Benchmark of t7.load_model (torch7's torch.load of an nn model, converted to PyTorch) against reading the same
file into fresh memory, on a ~700 MB LCNN model file laid out the way Lua's train.lua saves one."""

import argparse
import contextlib
import gc
import io
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
import opts  # noqa: E402
import t7  # noqa: E402


def _network(fc_pool):
    argv = ['-netType', 'alexnet-lcnn', '-fcPool', str(fc_pool), '-nClasses', '1000']
    with contextlib.redirect_stdout(io.StringIO()):
        return models.create(opts.parse(argv))


def _parameter_count(fc_pool):
    with torch.device('meta'):
        return sum(p.numel() for p in _network(fc_pool).parameters())


def fc_pool_for(megabytes):
    """The -fcPool at which an alexnet-lcnn file (weights and their gradient buffers, float32) holds `megabytes`
    MB; the count is linear in fcPool."""
    low, high = _parameter_count(64), _parameter_count(128)
    per_pool = (high - low) / 64
    wanted = megabytes * 1e6 / 8
    return max(1, round(64 + (wanted - low) / per_pool))


def write_model(path, megabytes):
    """A Lua-style alexnet-lcnn file: every parameter a view into one flat storage, as getParameters leaves a
    model that train.lua then saves (with its gradient buffers)."""
    net = _network(fc_pool_for(megabytes)).eval()
    params = models.parameters_lua_order(net)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    t7.save_model(path, net)


def _time_interleaved(fns, repeats):
    """Median seconds of each function, alternating them so that load on a shared machine hits all alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            gc.collect()
            start = time.perf_counter()
            result = fn()
            spent.append(time.perf_counter() - start)
            del result
    return [statistics.median(spent) for spent in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--megabytes', type=float, default=700, help='size of the model file to build (MB)')
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.t7')
        write_model(path, args.megabytes)
        size = os.path.getsize(path)

        def read():
            with open(path, 'rb') as f:
                return f.read()

        names = ['read into fresh memory', 't7.load', 't7.load_model']
        fns = [read, lambda: t7.load(path), lambda: t7.load_model(path)]
        fns[2]()
        seconds = dict(zip(names, _time_interleaved(fns, args.repeats)))
    print(f'file: alexnet-lcnn, {size / 1e6:.0f} MB, parameters flat as getParameters leaves them; '
          f'median of {args.repeats} runs each, interleaved, warm page cache')
    print(f"| {'what':<24} | {'seconds':>8} | {'MB/s':>6} | {'ratio':>6} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 8}|{'-' * 8}|")
    base = seconds[names[0]]
    for name in names:
        print(f'| {name:<24} | {seconds[name]:>8.3f} | {size / 1e6 / seconds[name]:>6.0f} | '
              f'{seconds[name] / base:>5.2f}x |')
    ratio = seconds['t7.load_model'] / base
    print(f'load_model / read: {ratio:.2f} (target <= 1.5)')
    return 0 if ratio <= 1.5 else 1


if __name__ == '__main__':
    sys.exit(main())
