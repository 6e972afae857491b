"""Benchmark of t7.load (torch7's File.lua readObject port) against a raw read of the same ~300 MB model file."""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import t7  # noqa: E402


def _module(typename, **fields):
    fields.setdefault('output', torch.empty(0))
    fields.setdefault('gradInput', torch.empty(0))
    fields.setdefault('_type', 'torch.FloatTensor')
    fields.setdefault('train', False)
    return t7.TorchObject(typename, fields)


def _conv(n_in, n_out, k):
    w = torch.randn(n_out, n_in, k, k)
    return _module('cudnn.SpatialConvolution', nInputPlane=n_in, nOutputPlane=n_out, kW=k, kH=k, dW=1, dH=1,
                   padW=k // 2, padH=k // 2, groups=1, weight=w, bias=torch.randn(n_out),
                   gradWeight=torch.zeros_like(w), gradBias=torch.zeros(n_out))


def make_model(megabytes):
    """An nn.Sequential of convolutions and a Linear, like a saved AlexNet: many small objects, a few big tensors."""
    layers = []
    total = 0
    while total < megabytes * 2 ** 20 * 0.8:
        conv = _conv(256, 256, 3)
        layers.append(conv)
        layers.append(_module('cudnn.ReLU', inplace=True))
        total += 2 * conv.weight.numel() * 4
    w = torch.randn(1000, int(megabytes * 2 ** 20 * 0.2 / 8 / 1000))
    layers.append(_module('nn.Linear', weight=w, bias=torch.randn(1000), gradWeight=torch.zeros_like(w),
                          gradBias=torch.zeros(1000)))
    return _module('nn.Sequential', modules=layers)


def _time_interleaved(fns, repeats):
    """Median seconds of each function, alternating them so that load on a shared machine hits all alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--megabytes', type=float, default=300)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.t7')
        t7.save(path, make_model(args.megabytes))
        size = os.path.getsize(path)

        def raw_read():
            with open(path, 'rb') as f:
                f.read()

        def raw_readinto():
            # Lower bound: numpy asks the kernel for huge pages, so it pays fewer page faults than any other buffer.
            buffer = np.empty(size, dtype=np.uint8)
            with open(path, 'rb', buffering=0) as f:
                f.readinto(buffer)

        def load():
            t7.load(path)

        raw_read()
        rows = zip(['raw read', 'readinto', 't7.load'],
                   _time_interleaved([raw_read, raw_readinto, load], args.repeats))
        rows = dict(rows)
    print(f'file: {size / 2 ** 20:.1f} MiB, median of {args.repeats} runs each (warm page cache)')
    print(f"{'what':<12}{'seconds':>10}{'MiB/s':>10}")
    for name, seconds in rows.items():
        print(f"{name:<12}{seconds:>10.3f}{size / 2 ** 20 / seconds:>10.0f}")
    ratio = rows['t7.load'] / rows['raw read']
    print(f"ratio t7.load / raw read: {ratio:.2f} (target <= 1.5); "
          f"t7.load / readinto into numpy: {rows['t7.load'] / rows['readinto']:.2f}")
    return 0 if ratio <= 1.5 else 1


if __name__ == '__main__':
    sys.exit(main())
