"""NaN and infinities through the compiled lookup engine (layers/csrc/lookup_kernels.h): outputs are NaN or
infinite exactly where PyTorch's eval forward has them, through the fused ReLU and max pooling of every path,
instruction set and thread count."""
import math

import pytest
import torch
from torch import nn

from layers import PooledSpatialConvolution, lookup

ISAS = ['avx512', 'avx2', 'base']
SPECIAL = [math.nan, math.inf, -math.inf]

# After the convolution: nothing, ReLU, and max pooling without and with ReLU; 3x3 stride 2 has a register path of
# its own with AVX-512, 2x2 goes through the general one.
TAILS = {
    'none': lambda: [],
    'relu': lambda: [nn.ReLU()],
    'pool3': lambda: [nn.MaxPool2d(3, 2, 1)],
    'relu_pool3': lambda: [nn.ReLU(), nn.MaxPool2d(3, 2, 1)],
    'pool2': lambda: [nn.MaxPool2d(2, 2, ceil_mode=True)],
    'relu_pool2': lambda: [nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True)],
}

# (input channels, kernel, stride, padding, input size): padded stride 1, stride-phase planes computed from few input
# channels and by the GEMM's scatter from more, and 1x1 (the dense path's own GEMM).
GEOMETRIES = [(3, 3, 1, 1, 13), (3, 5, 2, 2, 19), (6, 3, 2, 1, 17), (5, 1, 1, 0, 9)]


@pytest.fixture(autouse=True)
def kernels():
    """The compiled kernels, every loop split among the threads however small; ISA, threads and split restored."""
    assert lookup.resolve_backend('cpp') == 'cpp'
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    previous = torch.ops.lcnn_lookup.set_min_task_work(1)
    yield
    torch.ops.lcnn_lookup.set_min_task_work(previous)
    torch.ops.lcnn_lookup.set_isa('auto')
    torch.set_num_threads(threads)


def use(isa, threads):
    try:
        torch.ops.lcnn_lookup.set_isa(isa)
    except RuntimeError as e:
        assert 'does not support' in str(e)
        pytest.skip(f'this CPU lacks {isa}')
    torch.set_num_threads(threads)


def dense_align(layer, gen):
    """Every align weight kept (above the pruning threshold): the taps then read every dictionary value a window
    covers, as PyTorch's convolution does. A pruned tap is skipped, where PyTorch multiplies its zero weight with
    the NaN or infinity (giving NaN) instead."""
    w = layer.alignconv.weight
    with torch.no_grad():
        w.copy_(w.sign() * (layer.sparseTh + w.abs()))
        layer.alignconv.bias.normal_(0, 0.1, generator=gen)
    return layer


def dictionary_size(path):
    """The dense path folds the dictionary into the kernel: an infinite input then meets the products of the two
    weights in one sum, where PyTorch first spreads it over the dictionary (+inf in one response, -inf in another:
    NaN). With a single dictionary channel both forms add the same infinite terms."""
    return 5 if path == 'lookup' else 1


def poisoned(shape, value, gen):
    """A random input with `value` at a corner of the first image and inside the last one."""
    x = torch.randn(shape, generator=gen)
    n, c, h, w = shape
    x[0, c - 1, 0, 0] = value
    x[n - 1, 0, h // 2, w // 3] = value
    return x


def same_specials(out, ref, tol=1e-4):
    """NaN and +-inf where the reference has them, the finite values within tol of the largest finite one."""
    assert out.shape == ref.shape
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), \
        f'NaN at {int(torch.isnan(out).sum())} places, PyTorch at {int(torch.isnan(ref).sum())}'
    assert torch.equal(torch.isposinf(out), torch.isposinf(ref)) and torch.equal(torch.isneginf(out),
                                                                                  torch.isneginf(ref))
    finite = torch.isfinite(ref)
    if finite.any():
        err = (out[finite] - ref[finite]).abs().max().item()
        assert err <= tol * ref[finite].abs().max().item()


def check_compiled(model, path, shape, gen):
    """The model compiled into one fused layer on `path` against its eval forward, for each special value."""
    compiled = lookup.compile(model, path=path)
    assert len(compiled) == 1, 'the ReLU and the pooling are fused into the layer'
    for value in SPECIAL:
        x = poisoned(shape, value, gen)
        with torch.no_grad():
            ref = model(x)
            assert not math.isnan(value) or torch.isnan(ref).any()
            same_specials(compiled(x), ref)


@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('isa', ISAS)
@pytest.mark.parametrize('path', ['lookup', 'dense'])
@pytest.mark.parametrize('tail', list(TAILS))
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('c,k,s,p,size', GEOMETRIES)
def test_convolution(c, k, s, p, size, batch, tail, path, isa, threads):
    use(isa, threads)
    gen = torch.Generator().manual_seed(c * 100 + k * 10 + s + batch)
    layer = dense_align(PooledSpatialConvolution(c, 8, k, k, s, s, p, p, poolSize=dictionary_size(path)), gen)
    check_compiled(nn.Sequential(layer, *TAILS[tail]()).eval(), path, (batch, c, size, size), gen)


# Fully connected: the kernel covers the input (a gathered dot product per output at batch 1, one FMA per tap over
# the batch otherwise; the dense path's matrix-vector product and GEMM), and over a 1x1 input (the dictionary as a
# matrix-vector product at batch 1). 16 images fill whole vectors, which take their own path.
@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('isa', ISAS)
@pytest.mark.parametrize('path', ['lookup', 'dense'])
@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('batch', [1, 3, 16])
@pytest.mark.parametrize('c,size', [(6, 4), (40, 1)])
def test_fully_connected(c, size, batch, relu, path, isa, threads):
    use(isa, threads)
    gen = torch.Generator().manual_seed(c + size + batch)
    layer = dense_align(PooledSpatialConvolution(c, 37, size, size, 1, 1, 0, 0,
                                                  poolSize=dictionary_size(path)), gen)
    check_compiled(nn.Sequential(layer, *([nn.ReLU()] if relu else [])).eval(), path, (batch, c, size, size), gen)


def test_max_pool_kernel():
    """The standalone pooling (after a dense convolution), with and without ReLU, at windows with NaN, +-inf,
    all -inf, and at the borders; NCHW and channels-last inputs."""
    gen = torch.Generator().manual_seed(5)
    for isa in ISAS:
        try:
            torch.ops.lcnn_lookup.set_isa(isa)
        except RuntimeError:
            continue
        for shape, (k, s, p, ceil) in [((2, 3, 33, 35), (3, 2, 1, False)), ((1, 2, 12, 17), (3, 2, 0, True)),
                                       ((2, 2, 9, 9), (2, 2, 0, True)), ((1, 2, 10, 7), (3, 1, 1, False)),
                                       ((1, 19, 11, 11), (3, 2, 0, False))]:
            x = torch.randn(shape, generator=gen)
            flat = x.view(-1)
            picks = torch.randperm(flat.numel(), generator=gen)[:12]
            flat[picks[:4]] = math.nan
            flat[picks[4:8]] = math.inf
            flat[picks[8:]] = -math.inf
            x[0, 0, :3, :3] = -math.inf
            ref = nn.functional.max_pool2d(x, k, s, p, ceil_mode=ceil)
            for relu in (False, True):
                for layout in (x, x.contiguous(memory_format=torch.channels_last)):
                    out = torch.ops.lcnn_lookup.max_pool(layout, [k, k, s, s, p, p, int(ceil)], relu)
                    same_specials(out, ref.relu() if relu else ref, tol=0)
