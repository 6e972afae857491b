"""Tests of layers/lookup.py and layers/csrc/lookup.cpp: the fast lookup inference engine (issues 7, 13)."""
import copy
import lzma
import os
import pickle
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import t7
from layers import PooledSpatialConvolution, activation, legacy, lookup
from layers.containers import ConcatTable
from layers.shape import View
from layers.tables import CAddTable
from layers.lookup import LookupConv2d, LookupInferenceError

FIXTURES = Path(__file__).parent / 'fixtures'


def close(out, ref, tol=1e-4):
    """The issue's criterion: max abs difference <= tol * max |reference|."""
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), f'max abs diff {err} vs max |ref| {ref.abs().max().item()}'


def sparsify(psc, density, gen):
    """Keep about `density` of the align weights, all above the layer's pruning threshold."""
    w = psc.alignconv.weight
    with torch.no_grad():
        keep = torch.rand(w.shape, generator=gen) < density
        w.copy_(torch.where(keep, w.sign() * (psc.sparseTh + w.abs()), torch.zeros_like(w)))
        psc.alignconv.bias.normal_(0, 0.1, generator=gen)
    return psc


def randomize_bn(bn, gen):
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.2, generator=gen)
        bn.running_var.uniform_(0.3, 2.0, generator=gen)
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.normal_(0, 0.2, generator=gen)
    return bn


def psc(c, o, k, s, p, pool, density, gen):
    return sparsify(PooledSpatialConvolution(c, o, k, k, s, s, p, p, poolSize=pool), density, gen)


@pytest.fixture(autouse=True)
def seeded_single_thread():
    """Layers draw their initial weights from the global generator: make every test reproducible. One thread,
    since on a busy shared machine OpenMP waits for descheduled threads dominate small kernels (the threads test
    sets its own)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def cpp():
    """The compiled kernels (built on first use, then cached in torch's extension directory)."""
    assert lookup.resolve_backend('cpp') == 'cpp'
    yield
    torch.ops.lcnn_lookup.set_isa('auto')


# ----------------------------------------------------------------------------------------------------------------
# single layers

# (kernel, stride, pad, input size): every geometry the alexnet-lcnn / resnet-lcnn models use, and a stride 2 whose
# GEMM stores end on a part of a vector inside an input row (27 x 27 = 15 blocks of 48 columns and 9).
GEOMETRIES = [(11, 4, 2, 35), (5, 1, 2, 13), (3, 1, 1, 9), (6, 1, 0, 6), (1, 1, 0, 5), (7, 2, 3, 20), (3, 2, 1, 14),
              (1, 2, 0, 14), (3, 2, 1, 27)]


@pytest.mark.parametrize('density', [0.005, 0.05, 0.5])
@pytest.mark.parametrize('k,s,p,size', GEOMETRIES)
@pytest.mark.parametrize('batch', [1, 3])
def test_layer_matches_pooled_convolution(cpp, k, s, p, size, density, batch):
    gen = torch.Generator().manual_seed(k * 100 + s * 10 + p + batch)
    layer = psc(6, 37, k, s, p, 5, density, gen).eval()
    x = torch.randn(batch, 6, size, size, generator=gen)
    with torch.no_grad():
        ref = layer(x)
        fused = LookupConv2d.from_pooled(layer)
        close(fused(x), ref)
        close(fused.set_path('dense')(x), ref)


def test_fully_connected_lookup_large_dictionary(cpp):
    # fc6-like: the kernel covers the whole input, so each output is one long gathered dot product at batch 1.
    gen = torch.Generator().manual_seed(5)
    layer = psc(40, 70, 6, 1, 0, 300, 0.05, gen).eval()
    for batch in (1, 2, 5, 8, 16, 17, 32, 64):  # 8, 16, 32, 64: one, two or four vectors of images, any ISA
        x = torch.randn(batch, 40, 6, 6, generator=gen)
        with torch.no_grad():
            close(LookupConv2d.from_pooled(layer)(x), layer(x))


def test_random_geometries(cpp):
    """Seeded sweep over shapes the fixed cases miss: non-square kernels and inputs, odd channel counts, big
    batches, fused post-ops, several tile remainders."""
    rng = random.Random(1234)
    gen = torch.Generator().manual_seed(1234)
    for _ in range(30):
        kh, kw = rng.randint(1, 7), rng.randint(1, 7)
        s, p = rng.randint(1, 4), rng.randint(0, 3)
        h, w = rng.randint(max(1, kh - 2 * p), 24), rng.randint(max(1, kw - 2 * p), 24)
        c, o, dictionary = rng.randint(1, 9), rng.randint(1, 40), rng.randint(1, 12)
        batch, density = rng.choice([1, 1, 2, 4, 7, 16, 19]), rng.choice([0.005, 0.02, 0.1, 0.5, 1.0])
        layer = sparsify(PooledSpatialConvolution(c, o, kw, kh, s, s, p, p, poolSize=dictionary), density, gen)
        mods = [layer]
        if rng.random() < 0.5:
            mods.append(randomize_bn(nn.BatchNorm2d(o), gen))
        if rng.random() < 0.6:
            mods.append(nn.ReLU())
        ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
        if rng.random() < 0.5 and min(ho, wo) >= 3:
            mods.append(nn.MaxPool2d(3, rng.choice([1, 2]), rng.choice([0, 1]), ceil_mode=rng.random() < 0.5))
        model = nn.Sequential(*mods).eval()
        x = torch.randn(batch, c, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x)
            compiled = lookup.compile(model, path='lookup')
            assert len(compiled) == 1, 'conv, batch norm, ReLU and pooling fuse into one layer'
            close(compiled(x), ref)


@pytest.mark.parametrize('isa', ['avx512', 'avx2', 'base'])
def test_instruction_set_variants(cpp, isa):
    try:
        torch.ops.lcnn_lookup.set_isa(isa)
    except RuntimeError as e:
        # A CPU without these instructions must refuse them rather than crash later.
        assert 'does not support' in str(e)
        assert torch.ops.lcnn_lookup.isa() != isa
        return
    gen = torch.Generator().manual_seed(7)
    try:
        # strided with few and with many input channels, padded, fully connected at batch 1, 2, 8 and 16 (batches
        # of whole vectors take their own path)
        for (c, k, s, p, size), batch in [((5, 11, 4, 2, 35), 1), ((3, 7, 2, 3, 30), 2), ((5, 3, 2, 1, 27), 1),
                                          ((5, 3, 1, 1, 9), 5),
                                          ((5, 6, 1, 0, 6), 1), ((5, 6, 1, 0, 6), 2), ((5, 6, 1, 0, 6), 8),
                                          ((5, 6, 1, 0, 6), 16)]:
            layer = psc(c, 29, k, s, p, 40, 0.1, gen).eval()
            x = torch.randn(batch, c, size, size, generator=gen)
            with torch.no_grad():
                model = nn.Sequential(layer, nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True)).eval()
                close(lookup.compile(model, path='lookup')(x), model(x))
                close(lookup.compile(nn.Sequential(layer).eval(), path='lookup')(x), layer(x))
        check_fully_connected_batch_one(gen)
        check_residual_and_pointwise(gen)
    finally:
        torch.ops.lcnn_lookup.set_isa('auto')


def check_fully_connected_batch_one(gen):
    """Fully connected layers at batch 1 skip the weight rows of zero inputs (dictionary of a 1x1 lookup layer,
    and the dense path's matrix-vector product); output counts around the vector width and the L1 chunk."""
    for outputs in (1, 15, 17, 1000, 4097):
        x = torch.randn(1, 300, 1, 1, generator=gen).relu()  # about half the inputs are zero
        model = nn.Sequential(psc(300, outputs, 1, 1, 0, 23, 0.3, gen), nn.ReLU(), nn.Conv2d(outputs, 7, 1)).eval()
        compiled = lookup.compile(model, path='lookup')
        with torch.no_grad():
            close(compiled(x), model(x))
        dense = nn.Conv2d(300, outputs, 1).eval()
        with torch.no_grad():
            close(lookup.compile(nn.Sequential(dense))(x), dense(x))
    # A kernel covering its input: one gathered dot product per output, over 16-bit offsets and, past 65536
    # responses, 32-bit ones; tap counts per output that are and are not multiples of the vector width.
    for dictionary, density in ((40, 0.2), (1900, 0.02)):
        layer = psc(3, 9, 6, 1, 0, dictionary, density, gen).eval()
        x = torch.randn(1, 3, 6, 6, generator=gen)
        fused = LookupConv2d.from_pooled(layer)
        assert fused._tap_offsets(6, 6).dtype == (torch.int16 if dictionary * 36 <= 1 << 16 else torch.int32)
        assert len(set(fused.rowptr.diff().tolist())) > 1
        with torch.no_grad():
            close(fused(x), layer(x))


def test_fully_connected_batch_one(cpp):
    check_fully_connected_batch_one(torch.Generator().manual_seed(8))


@pytest.mark.parametrize('inputs', [300, 1500, 5000, 9000])
def test_matrix_vector_parts_at_any_thread_count(cpp, inputs):
    """At batch 1 a fully connected product cuts its nonzero inputs (about half of these) into parts of 256 rows,
    at most 16, summed separately and then in order (1, 2, 9 and 16 parts here): the same bits at any thread count,
    also where the outputs are sliced as well (more threads than parts, or parts the threads cannot share evenly:
    9 at 2 and 5 threads), and close to PyTorch. Dense layers, with and without a ReLU, and a 1x1 lookup layer's
    dictionary."""
    gen = torch.Generator().manual_seed(inputs)
    x = torch.randn(1, inputs, 1, 1, generator=gen).relu()
    models = [nn.Sequential(nn.Conv2d(inputs, outputs, 1), *relu).eval()
              for outputs in (17, 1000) for relu in ([], [nn.ReLU()])]
    models.append(nn.Sequential(psc(inputs, 40, 1, 1, 0, 600, 0.3, gen), nn.ReLU()).eval())
    previous = torch.ops.lcnn_lookup.set_min_task_work(1)
    try:
        for model in models:
            compiled = lookup.compile(model, path='lookup')
            with torch.no_grad():
                # Most threads first: a slice left out would show stale sums of an earlier call otherwise.
                outs = at_threads([5, 3, 2, 1], lambda: compiled(x))
                close(outs[0], model(x))
            for out in outs[1:]:
                assert torch.equal(out, outs[0])
    finally:
        torch.ops.lcnn_lookup.set_min_task_work(previous)


def at_threads(counts, fn):
    """fn() run with torch's intra-op pool at each thread count."""
    threads = torch.get_num_threads()
    try:
        out = []
        for count in counts:
            torch.set_num_threads(count)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(threads)


def test_zeroed_borders_are_kept_only_while_nothing_else_writes_the_planes():
    # A layer's zeroed plane borders are kept for the next call with the same layout; a layer of another kind in
    # between (unpadded or strided, writing planes over those borders) must make the next call zero them again.
    gen = torch.Generator().manual_seed(21)
    padded = psc(8, 6, 3, 1, 1, 12, 0.3, gen).eval()
    others = [psc(8, 6, 3, 1, 0, 12, 0.3, gen).eval(), psc(8, 6, 3, 2, 1, 12, 0.3, gen).eval()]
    compiled = [lookup.compile(m, path='lookup') for m in [padded] + others]
    x = torch.randn(1, 8, 15, 15, generator=gen) + 3  # nonzero everywhere, so planes written over the borders are too
    with torch.no_grad():
        ref = padded(x)
        for other, model in zip(compiled[1:], others):
            close(compiled[0](x), ref)
            close(other(x), model(x))
            close(compiled[0](x), ref)
            close(compiled[0](x), ref)


@pytest.mark.parametrize('batch', [1, 2, 5])
def test_threads_give_identical_results(cpp, batch):
    """Every output element is computed by one thread in a fixed order: bit-identical at any thread count (both
    forms of every layer, whole networks, pooled / residual / fully connected layers). The second run at 2 threads
    reuses the dictionary planes an image split over threads keeps per layout (their zeros from the first). At
    batch 1 and 2 threads activations are kept in strips: AlexNet's 27x27 and 13x13 ones (a shorter second strip,
    whose unused row is NaN here, zeros otherwise) and the ResNets' on 256, 72 and 100 pixels, 64x64, 32x32, 16x16,
    18x18, 25x25 and 13x13 (pooled, residual and shortcut layers writing them, stride-2 layers and shortcuts reading
    them, 18 rows in strips of 9 and 25 in strips of 13 and 12 too, whose second strip starts on the other stride
    phase); the bits are those of plain activations too."""
    gen = torch.Generator().manual_seed(3 + batch)
    nets = [(alexnet_lcnn_small(0.05, gen), torch.randn(batch, 3, 224, 224, generator=gen))]
    nets += [(resnet_lcnn_small(0.1, gen, size), torch.randn(batch, 3, size, size, generator=gen))
             for size in (64, 256, 72, 100)]
    previous = torch.ops.lcnn_lookup.set_min_task_work(1)  # split every loop, however small
    strips = torch.ops.lcnn_lookup.set_strips(2)  # NaN in the rows a shorter last strip leaves unused
    try:
        for model, x in nets:
            for path in ('lookup', 'dense'):
                compiled = lookup.compile(model, path=path)
                with torch.no_grad():
                    outs = at_threads([1, 2, 3, 2], lambda: compiled(x))
                    torch.ops.lcnn_lookup.set_strips(0)
                    outs += at_threads([2], lambda: compiled(x))
                    torch.ops.lcnn_lookup.set_strips(2)
                assert all(torch.equal(outs[0], out) for out in outs[1:])
                close(outs[0], model(x))
    finally:
        torch.ops.lcnn_lookup.set_min_task_work(previous)
        torch.ops.lcnn_lookup.set_strips(strips)


@pytest.mark.parametrize('net', ['alexnet', 'resnet'])
def test_unused_strip_rows_hold_no_denormals(cpp, net):
    """At batch 1 and 2 threads the dictionary's GEMM multiplies (and never stores) the rows a shorter last strip
    leaves unused. They are zeroed: left as allocated they held what freed memory held, at times denormal floats,
    and each multiplication of one takes a microcode assist (AlexNet LCNN-fast's 13x13 dictionary GEMMs then took
    50-250 us per thread instead of 10-15). With the freed memory full of denormals, no thread multiplies one."""
    gen = torch.Generator().manual_seed(31)
    size = 224 if net == 'alexnet' else 100  # the ResNet's 25x25 planes in strips of 13 and 12
    model = alexnet_lcnn_small(0.05, gen, width=16) if net == 'alexnet' else resnet_lcnn_small(0.1, gen, size)
    x = torch.randn(1, 3, size, size, generator=gen)
    compiled = lookup.compile(model, path='lookup')
    op = torch.ops.lcnn_lookup

    def forward():
        # Blocks of 4-256 KB (the sizes of the forward's activations) full of denormals, freed just before it: the
        # allocator hands them out again.
        junk = [torch.full((n,), 1e-40) for n in range(1 << 10, 1 << 16, 1 << 9)]
        del junk
        op.denormal_operands(True)
        compiled(x)
        return op.denormal_operands(True)

    with torch.no_grad():
        compiled(x)
        assert not any(at_threads([1, 2, 2, 2], forward))


@pytest.mark.parametrize('size,stride', [((14, 14), 2), ((13, 13), 2), ((7, 7), 1), ((20, 20), 3),
                                         ((15, 22), (2, 3)), ((9, 100), (3, 2)), ((10, 17), (2, 1)),
                                         ((31, 33), 4)])
def test_strided_shortcut_at_any_thread_count(cpp, size, stride):
    """A ResNet shortcut, 1x1 with a stride, as its dense form: the GEMM gathers the rows and columns the stride
    reads block by block and, with few column blocks (7x7 outputs: 48 + 1 columns), is split among the threads by
    panels. With each instruction set: same bits at 1, 2 and 3 threads, the same bits as the layer at stride 1 on
    the subsampled input, and PyTorch's convolution's values."""
    gen = torch.Generator().manual_seed(size[1])
    conv, bn = nn.Conv2d(40, 72, 1, stride), randomize_bn(nn.BatchNorm2d(72), gen)
    model = nn.Sequential(conv, bn).eval()
    layer = lookup.compile(model, path='dense')
    plain = copy.deepcopy(model)
    plain[0].stride = (1, 1)
    plain = lookup.compile(plain, path='dense')
    x = torch.randn(2, 40, *size, generator=gen)
    sh, sw = conv.stride
    previous = torch.ops.lcnn_lookup.set_min_task_work(1)
    tried = []
    try:
        for isa in ('avx512', 'avx2', 'base'):
            try:
                torch.ops.lcnn_lookup.set_isa(isa)
            except RuntimeError as e:
                assert 'does not support' in str(e)
                continue
            tried.append(isa)
            for batch in (x[:1], x):
                with torch.no_grad():
                    outs = at_threads([1, 2, 3], lambda: layer(batch))
                    ref = model(batch)
                    assert torch.equal(outs[0], plain(batch[:, :, ::sh, ::sw].contiguous()))
                assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
                close(outs[0], ref)
    finally:
        torch.ops.lcnn_lookup.set_min_task_work(previous)
        torch.ops.lcnn_lookup.set_isa('auto')
    assert 'base' in tried


@pytest.mark.parametrize('side', [7, 13, 20])
def test_taps_split_by_channels_or_tiles(cpp, side):
    """An image split over threads takes its taps channel by channel (each channel's one or two tiles in a row)
    when its output planes are at most two tiles (7x7, 13x13), tile by tile otherwise (20x20). Chunks of 1 item,
    of a few and of the default size: the same bits as at 1 thread, and PyTorch's values."""
    gen = torch.Generator().manual_seed(side)
    model = nn.Sequential(psc(48, 40, 3, 1, 1, 30, 0.2, gen), randomize_bn(nn.BatchNorm2d(40), gen), nn.ReLU()).eval()
    compiled = lookup.compile(model, path='lookup')
    x = torch.randn(1, 48, side, side, generator=gen)
    with torch.no_grad():
        ref = model(x)
        for work in (1, 1 << 11, None):
            previous = torch.ops.lcnn_lookup.set_min_task_work(work or 1 << 15)
            try:
                outs = at_threads([3, 2, 1], lambda: compiled(x))
            finally:
                torch.ops.lcnn_lookup.set_min_task_work(previous)
            close(outs[-1], ref)
            assert torch.equal(outs[0], outs[-1]) and torch.equal(outs[1], outs[-1]), work


# Run in a child process: a read past the input's last element faults on the guard page after it.
GUARDED_GEMM_SCRIPT = """
import ctypes, mmap, sys, torch
from torch import nn
sys.path.insert(0, 'tests')
from test_lookup import at_threads, close, psc
from layers import lookup

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def guarded(x):
    # x's values in memory that ends where an inaccessible page begins.
    pages = (x.numel() * 4 + PAGE - 1) // PAGE
    region = mmap.mmap(-1, (pages + 1) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    assert libc.mprotect(base + pages * PAGE, PAGE, 0) == 0, ctypes.get_errno()  # PROT_NONE
    out = torch.frombuffer(region, dtype=torch.float32, count=x.numel(), offset=pages * PAGE - x.numel() * 4)
    out = out.view(x.shape)
    out.copy_(x)
    return out


gen = torch.Generator().manual_seed(31)
assert lookup.resolve_backend('cpp') == 'cpp'
torch.ops.lcnn_lookup.set_min_task_work(1)
isas = []
for isa in ('avx512', 'avx2', 'base'):
    try:
        torch.ops.lcnn_lookup.set_isa(isa)
    except RuntimeError:
        continue
    isas.append(isa)
    for side in (1, 2, 3, 5, 7, 13):
        # The third: 64 channels over a dictionary of 4, summed in 4 chunks of 16 channels (the last one's rows
        # are the input's last).
        for model, path in ((nn.Sequential(psc(24, 20, 3, 1, 1, 30, 0.3, gen), nn.ReLU()), 'lookup'),
                            (nn.Sequential(nn.Conv2d(24, 20, 1), nn.ReLU()), 'dense'),
                            (nn.Sequential(psc(64, 20, 3, 1, 1, 4, 0.3, gen), nn.ReLU()), 'lookup')):
            model.eval()
            compiled = lookup.compile(model, path=path)
            x = guarded(torch.randn(1, model[0].nInputPlane if path == 'lookup' else 24, side, side, generator=gen))
            with torch.no_grad():
                outs = at_threads([2, 1], lambda: compiled(x))
                close(outs[0], model(x.clone()))
            assert torch.equal(outs[0], outs[1])
print(' '.join(isas))
"""


def test_gemm_reads_nothing_past_its_input(cpp):
    """A GEMM block whose columns end inside a vector reads its rows in place: full vectors run on into the next
    row, and the last rows load only the block's columns. With the input ending at an inaccessible page, 1x1 to
    13x13 inputs (1 to 169 columns) through a lookup layer's dictionary and a dense 1x1 layer: no fault, PyTorch's
    values, the same bits at 1 and 2 threads, with each instruction set."""
    done = subprocess.run([sys.executable, '-c', GUARDED_GEMM_SCRIPT], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert 'base' in done.stdout.split(), done.stdout


@pytest.mark.parametrize('channels,side', [(24, 10), (48, 10), (96, 16), (96, 7), (98, 9), (96, 17)])
def test_small_planes_sum_the_dictionary_in_chunks(cpp, channels, side):
    """A stride-1 layer over at most 256 positions sums its dictionary in chunks of input channels (1, 2 or 4 here
    with a dictionary of 6: 24, 48 and 96 channels; 98, not a multiple of 4, takes 2 of 49), then adds the chunks in
    order: PyTorch's values, the same bits at 1, 2 and 3 threads with chunks of work of one item and the default,
    and at batch 1 and 3 (the plan takes a batch image by image). A 17x17 plane takes no chunks."""
    gen = torch.Generator().manual_seed(channels + side)
    model = nn.Sequential(psc(channels, 20, 3, 1, 1, 6, 0.3, gen), randomize_bn(nn.BatchNorm2d(20), gen),
                          nn.ReLU(), psc(20, 12, 3, 1, 1, 4, 0.3, gen)).eval()
    compiled = lookup.compile(model, path='lookup')
    for batch in (1, 3):
        x = torch.randn(batch, channels, side, side, generator=gen)
        ref = module_by_module(compiled, x)
        for work in (1, None):
            previous = torch.ops.lcnn_lookup.set_min_task_work(work) if work else None
            try:
                with torch.no_grad():
                    outs = at_threads([1, 2, 3], lambda: compiled(x))
            finally:
                if previous:
                    torch.ops.lcnn_lookup.set_min_task_work(previous)
            assert all(torch.equal(out, ref) for out in outs), (batch, work)
        with torch.no_grad():
            close(ref, model(x))


def test_big_dictionaries_run_in_blocks(cpp):
    """Dictionaries too big for L1 are taken in blocks of planes (convolutions, with and without pooling) or of
    responses (fully connected, batch 1 and batch): same results as the reference, identical at any thread
    count. The same dictionary with ~9 taps per channel (under 9 per block of planes) takes all planes at once."""
    gen = torch.Generator().manual_seed(17)
    conv = psc(16, 24, 3, 1, 1, 200, 0.05, gen)  # ~90 taps per channel, 5 blocks of planes at 13x13
    cases = [(nn.Sequential(conv, randomize_bn(nn.BatchNorm2d(24), gen), nn.ReLU()), (3, 16, 13, 13)),
             (nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(3, 2)), (2, 16, 13, 13)),
             (nn.Sequential(psc(16, 24, 3, 1, 1, 200, 0.005, gen), nn.ReLU(), nn.MaxPool2d(3, 2)), (2, 16, 13, 13)),
             (nn.Sequential(psc(16, 40, 6, 1, 0, 300, 0.05, gen), nn.ReLU()), (1, 16, 6, 6)),
             (nn.Sequential(psc(16, 40, 6, 1, 0, 300, 0.05, gen), nn.ReLU()), (17, 16, 6, 6))]
    previous = torch.ops.lcnn_lookup.set_min_task_work(1)
    try:
        for model, shape in cases:
            model.eval()
            x = torch.randn(shape, generator=gen)
            compiled = lookup.compile(model, path='lookup')
            with torch.no_grad():
                outs = at_threads([1, 2, 3], lambda: compiled(x))
                close(outs[0], model(x))
            assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
            if shape[2:] == (6, 6):  # 300 x 36 responses: two blocks of 8192, at batch 1 as for the batch
                assert lookup.lookup_layers(compiled)[0]._cache['fc_taps'][0].shape == (2, 41)
    finally:
        torch.ops.lcnn_lookup.set_min_task_work(previous)
    # Responses that fit one block keep the layer's CSR taps (no reordered copy).
    small = nn.Sequential(psc(16, 40, 6, 1, 0, 30, 0.05, gen), nn.ReLU()).eval()
    compiled = lookup.compile(small, path='lookup')
    with torch.no_grad():
        close(compiled(torch.ones(1, 16, 6, 6)), small(torch.ones(1, 16, 6, 6)))
    layer = lookup.lookup_layers(compiled)[0]
    assert layer._cache['fc_taps'][0] is layer.rowptr


def test_max_pool_kernel_matches_torch(cpp):
    gen = torch.Generator().manual_seed(11)
    for shape, (k, s, p, ceil) in [((1, 5, 55, 55), (3, 2, 0, False)), ((3, 4, 12, 17), (3, 2, 1, True)),
                                   ((2, 3, 9, 9), (2, 2, 0, True)), ((1, 2, 10, 7), (3, 1, 1, False)),
                                   ((5, 2, 11, 11), (4, 3, 2, True))]:
        x = torch.randn(shape, generator=gen)
        ref = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
        assert torch.equal(torch.ops.lcnn_lookup.max_pool(x, [k, k, s, s, p, p, int(ceil)], False), ref)
        chwn = x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # batch-innermost memory, same values
        assert torch.equal(torch.ops.lcnn_lookup.max_pool(chwn, [k, k, s, s, p, p, int(ceil)], True), ref.relu())
    # Channels-last inputs (a dense convolution's output before its pooling) are read as they are, into NCHW;
    # channel counts around whole vectors.
    for shape, (k, s, p, ceil) in [((2, 19, 13, 13), (3, 2, 0, False)), ((1, 37, 12, 17), (3, 2, 1, True)),
                                   ((3, 16, 9, 8), (2, 2, 0, True)), ((1, 5, 10, 7), (3, 1, 1, False))]:
        x = torch.randn(shape, generator=gen)
        nhwc = x.contiguous(memory_format=torch.channels_last)
        ref = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
        for relu in (False, True):
            out = torch.ops.lcnn_lookup.max_pool(nhwc, [k, k, s, s, p, p, int(ceil)], relu)
            assert out.is_contiguous() and torch.equal(out, ref.relu() if relu else ref)


def test_a_dense_layer_with_pooling_convolves_channels_last(cpp):
    """A layer on PyTorch's convolution with a max pooling after it hands oneDNN channels-last weights (its output
    then goes to the pooling in that layout) and gives NCHW, the same at any thread count."""
    gen = torch.Generator().manual_seed(12)
    model = nn.Sequential(psc(16, 24, 5, 1, 2, 30, 0.05, gen), nn.ReLU(), nn.MaxPool2d(3, 2),
                          psc(24, 24, 3, 1, 1, 30, 0.05, gen), nn.ReLU()).eval()
    compiled = lookup.compile(model, path='dense')
    x = torch.randn(3, 16, 27, 27, generator=gen)
    first, second = lookup.lookup_layers(compiled)
    with torch.no_grad():
        outs = at_threads([1, 2], lambda: compiled(x))
        assert torch.equal(outs[0], outs[1]) and outs[0].is_contiguous()
        close(outs[0], model(x))
        pooled = first._call_for('dense', 3, 27, 27)
        assert pooled.kind == 'aten_conv' and pooled.tensors[0].is_contiguous(memory_format=torch.channels_last)
        assert pooled(x, None).is_contiguous()
        plain = second._call_for('dense', 3, 13, 13)
        assert plain.kind == 'aten_conv' and plain.tensors[0].is_contiguous()


# ----------------------------------------------------------------------------------------------------------------
# whole networks


def alexnet_lcnn_small(density, gen, width=8):
    """alexnet-lcnn's layer geometry (models/alexnet-lcnn.lua) with fewer channels."""
    c = [width, 2 * width, 3 * width, 2 * width, 2 * width, 8 * width]

    def block(conv, n):
        return [conv, randomize_bn(nn.BatchNorm2d(n, 1e-3), gen), legacy.named(nn.ReLU(True), 'cudnn.ReLU')]

    features = nn.Sequential(
        *block(psc(3, c[0], 11, 4, 2, 3, density, gen), c[0]), nn.MaxPool2d(3, 2),
        *block(psc(c[0], c[1], 5, 1, 2, 10, density, gen), c[1]), nn.MaxPool2d(3, 2),
        *block(psc(c[1], c[2], 3, 1, 1, 10, density, gen), c[2]),
        *block(psc(c[2], c[3], 3, 1, 1, 10, density, gen), c[3]),
        *block(psc(c[3], c[4], 3, 1, 1, 10, density, gen), c[4]), nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(
        activation.Dropout(0.5), *block(psc(c[4], c[5], 6, 1, 0, 16, density, gen), c[5]),
        activation.Dropout(0.5, v1=True), *block(psc(c[5], c[5], 1, 1, 0, 16, density, gen), c[5]),
        nn.Conv2d(c[5], 10, 1), View(10), activation.LogSoftMax())
    return nn.Sequential(features, classifier).eval()


def resnet_lcnn_small(density, gen, size=64):
    """resnet-lcnn's structure (models/resnet-lcnn.lua, basic blocks, shortcut B) with fewer channels, for inputs of
    size x size."""
    def bn(n):
        return randomize_bn(nn.BatchNorm2d(n), gen)

    def block(cin, cout, stride):
        body = nn.Sequential(psc(cin, cout, 3, stride, 1, 6, density, gen), bn(cout), nn.ReLU(True),
                             psc(cout, cout, 3, 1, 1, 6, density, gen), bn(cout))
        short = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride), bn(cout))
        return nn.Sequential(ConcatTable(body, short), CAddTable(True), nn.ReLU(True))

    return nn.Sequential(psc(3, 8, 7, 2, 3, 3, density, gen), bn(8), nn.ReLU(True), nn.MaxPool2d(3, 2, 1),
                         block(8, 8, 1), block(8, 16, 2), block(16, 24, 2), nn.AvgPool2d(-(-size // 16), 1),
                         View(24).setNumInputDims(3), nn.Linear(24, 10), activation.LogSoftMax()).eval()


@pytest.mark.parametrize('density', [0.005, 0.5])
def test_alexnet_lcnn_shaped(cpp, density):
    gen = torch.Generator().manual_seed(int(density * 1000))
    model = alexnet_lcnn_small(density, gen)
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        ref = model(x)
        for path in ('lookup', 'dense'):
            compiled = lookup.compile(model, path=path)
            close(compiled(x), ref)
            close(compiled(x[:1]), model(x[:1]))  # nn.View makes a batch of one 1-D, as in Lua
        timed = lookup.compile(model, x[:1], repeats=1)
    assert {m.path for m in lookup.lookup_layers(timed)} <= {'lookup', 'dense'}
    close(timed(x), ref)
    # Every convolution block became one fused layer: 7 lookup layers and the dense classifier.
    layers = lookup.lookup_layers(timed)
    assert [m.has_lookup for m in layers] == [True] * 7 + [False]
    assert not any(isinstance(m, (PooledSpatialConvolution, nn.BatchNorm2d, nn.MaxPool2d)) for m in timed.modules())


@pytest.mark.parametrize('density', [0.005, 0.5])
def test_resnet_lcnn_shaped(cpp, density):
    gen = torch.Generator().manual_seed(int(density * 1000) + 1)
    model = resnet_lcnn_small(density, gen)
    x = torch.randn(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        ref = model(x)
        close(lookup.compile(model, path='lookup')(x), ref)
        close(lookup.compile(model, path='dense')(x), ref)
        close(lookup.compile(model)(x[:1]), model(x[:1]))


def test_loading_weights_into_a_compiled_network_replaces_its_derived_forms(cpp):
    gen = torch.Generator().manual_seed(19)
    model = alexnet_lcnn_small(0.05, gen)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, PooledSpatialConvolution):
                m.alignconv.weight.neg_()  # the same taps (|w| as before), other values
                m.poolconv.weight.mul_(1.5)
            elif isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and m.bias is not None:
                m.bias.add_(0.1)
    x = torch.randn(2, 3, 224, 224, generator=gen)
    for path in ('lookup', 'dense'):
        want = lookup.compile(other, path=path)
        compiled = lookup.compile(model, path=path)
        with torch.no_grad():
            compiled(x), compiled(x[:1]), module_by_module(compiled, x)  # plans, calls and derived weights made
            compiled.load_state_dict(want.state_dict())
            assert torch.equal(compiled(x), want(x)) and torch.equal(compiled(x[:1]), want(x[:1]))
            assert torch.equal(module_by_module(compiled, x), want(x))


def test_a_saved_compiled_network_runs_in_a_new_process(cpp, tmp_path):
    gen = torch.Generator().manual_seed(20)
    compiled = lookup.compile(resnet_lcnn_small(0.1, gen), path='lookup')
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        torch.save({'model': compiled, 'x': x, 'out': compiled(x)}, tmp_path / 'compiled.pt')
    script = (f'import torch; from layers import lookup; saved = torch.load({str(tmp_path / "compiled.pt")!r}, '
              'weights_only=False); assert torch.equal(saved["model"](saved["x"]), saved["out"]); print("same")')
    done = subprocess.run([sys.executable, '-c', script], cwd=Path(__file__).parent.parent, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout == 'same\n', done.stderr


def test_each_checkout_builds_in_its_own_folder(monkeypatch, tmp_path):
    # torch writes the source's absolute path into the build's ninja file: checkouts sharing a folder rebuild in turn.
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    here = lookup._build_directory()
    assert here == lookup._build_directory() and here.parent == tmp_path
    monkeypatch.setattr(lookup, '_CSRC', tmp_path / 'clone' / 'layers' / 'csrc' / 'lookup.cpp')
    there = lookup._build_directory()
    assert there != here and there.parent == tmp_path and there.name.startswith('lcnn_lookup_')


def test_compiled_model_copies(cpp):
    """Prepared per-shape calls are closures: copies (deepcopy, pickling, as multiprocessing does) rebuild them."""
    gen = torch.Generator().manual_seed(18)
    model = resnet_lcnn_small(0.1, gen)
    compiled = lookup.compile(model, path='lookup')
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        out = compiled(x)  # prepares the calls and derived weights first
        for again in (copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
            assert isinstance(again, lookup.LookupNetwork) and torch.equal(again(x), out)


def module_by_module(compiled, x):
    with torch.no_grad():
        return nn.Sequential.forward(compiled, x)


def plan_for(compiled, x):
    """The plan the compiled network made for inputs shaped like x (at the current kernel generation)."""
    return compiled._plans[(lookup._state['generation'], compiled.training, *x.shape)]


def test_plans_are_kept_for_the_shapes_used_last(cpp, monkeypatch):
    gen = torch.Generator().manual_seed(24)
    compiled = lookup.compile(resnet_lcnn_small(0.1, gen), path='lookup')
    built = []
    make = lookup._Plan.__init__
    monkeypatch.setattr(lookup._Plan, '__init__', lambda self, *a: built.append(a[1:]) or make(self, *a))
    full, last = torch.randn(4, 3, 64, 64, generator=gen), torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        outs = [compiled(x) for x in (full, last, full, last, full)]
        assert built == [(4, 3, 64, 64), (1, 3, 64, 64)]  # a dataset's full batches and its last short one
        assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
        for n in range(2, 2 + lookup._PLANS_KEPT):
            compiled(torch.randn(n, 3, 64, 64, generator=gen))
    assert len(compiled._plans) == lookup._PLANS_KEPT
    assert [key[2:] for key in compiled._plans][0] == (1, 3, 64, 64)  # the batch of 4 was made first: dropped
    # a change of form makes every plan stale: the next forward drops them all, with the tensors they hold
    lookup.lookup_layers(compiled)[0].set_path('dense')
    with torch.no_grad():
        compiled(last)
    assert [key[2:] for key in compiled._plans] == [(1, 3, 64, 64)]


def test_a_compiled_model_refuses_to_train(cpp):
    gen = torch.Generator().manual_seed(25)
    compiled = lookup.compile(alexnet_lcnn_small(0.05, gen), path='lookup')
    for model in (compiled, nn.Sequential(compiled), lookup.lookup_layers(compiled)[0]):
        with pytest.raises(lookup.LookupInferenceError, match=r'only infers .* train the original model, then '
                                                              r'compile it again$'):
            model.train()
    # nothing was switched, dropouts included
    assert not any(m.training for m in compiled.modules())
    assert compiled.eval() is compiled and compiled.train(False) is compiled


@pytest.mark.parametrize('maker,size,tail', [(alexnet_lcnn_small, 224, ['Dropout', 'LookupConv2d', 'LookupConv2d',
                                                                          'View', 'LogSoftMax']),
                                             (resnet_lcnn_small, 64, [])])
def test_network_runs_in_one_call(cpp, maker, size, tail, monkeypatch):
    """A compiled Sequential runs its layers up to the first module the kernels cannot run (here alexnet's
    test-time-scaling Dropout) in one run_plan call, resnet's classifier (average pooling, View, Linear,
    LogSoftMax) included, with the same bits as module by module, for each form and batch, and at any thread count;
    the rest runs in Python."""
    gen = torch.Generator().manual_seed(21)
    model = maker(0.05, gen)
    calls = []
    conv = LookupConv2d.forward
    monkeypatch.setattr(LookupConv2d, 'forward', lambda self, *a: calls.append(self) or conv(self, *a))
    for path in ('lookup', 'dense'):
        compiled = lookup.compile(model, path=path)
        assert isinstance(compiled, lookup.LookupNetwork)
        for batch in (1, 3):
            x = torch.randn(batch, 3, size, size, generator=gen)
            ref = module_by_module(compiled, x)
            calls.clear()
            with torch.no_grad():
                outs = at_threads([1, 2, 3], lambda: compiled(x))
            assert all(torch.equal(out, ref) for out in outs)
            plan = plan_for(compiled, x)
            assert [type(m).__name__ for m in plan.rest] == tail
            # A batch goes image by image up to alexnet's fc6 (6x6 on 6x6), through all of resnet's convolutions (its
            # classifier on the whole batch), and not at all in the dense form, whose first layer is PyTorch's
            # convolution.
            if path == 'dense':
                assert plan.per_image == 0
            elif maker is alexnet_lcnn_small:
                assert plan.code[plan.per_image + 5:plan.per_image + 7] == [6, 6]
            else:
                assert plan.code[plan.per_image] == plan.KINDS['avg_pool']
            assert len(calls) == 3 * sum(isinstance(m, LookupConv2d) for m in plan.rest)
            close(outs[0], model(x))


def lookup_features(gen):
    return [psc(3, 8, 3, 1, 1, 4, 0.3, gen), randomize_bn(nn.BatchNorm2d(8), gen), nn.ReLU(True),
            psc(8, 16, 3, 1, 1, 4, 0.3, gen), nn.ReLU(True)]  # 16 x 12 x 12 from 12 x 12


@pytest.mark.parametrize('classifier,left', [
    (lambda: [nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), View(-1).setNumInputDims(3),
              nn.Linear(16 * 7 * 7, 10), nn.ReLU(True), nn.Dropout(), nn.Linear(10, 7, bias=False),
              activation.SoftMax()], 0),
    (lambda: [nn.AvgPool2d(4, divisor_override=5), nn.Flatten(), nn.Linear(16 * 3 * 3, 5), activation.LogSoftMax()],
     0),
    # Lua's View rule: a 1-D vector at batch 1, so the softmax takes dimension 0 there and 1 for a batch.
    (lambda: [nn.AvgPool2d(12), View(16), nn.Linear(16, 4), activation.LogSoftMax()], 0),
    (lambda: [nn.AvgPool2d(2), nn.Flatten(), nn.Tanh(), nn.Linear(16 * 6 * 6, 4), activation.LogSoftMax()], 3),
    (lambda: [nn.AvgPool2d(12), View(16), activation.LogSoftMax(instance=True)], 1),
])
def test_classifier_runs_in_the_plan(cpp, classifier, left):
    """The pooling, views, Linear, ReLU and softmax a network ends with run inside run_plan, each as the one ATen
    call its forward makes: same bits as module by module at any thread count and batch; the first other module
    (a Tanh, a cudnn instance softmax) and all after it run in Python. The output takes no gradient: the compiled
    model only infers."""
    gen = torch.Generator().manual_seed(25)
    model = nn.Sequential(*lookup_features(gen), *classifier()).eval()
    compiled = lookup.compile(model, path='lookup')
    for batch in (1, 3):
        x = torch.randn(batch, 3, 12, 12, generator=gen)
        ref = module_by_module(compiled, x)
        outs = at_threads([1, 2, 3], lambda: compiled(x))
        assert all(torch.equal(out, ref) for out in outs) and not outs[0].requires_grad
        plan = plan_for(compiled, x)
        assert plan.rest == list(compiled)[len(compiled) - left:] if left else plan.rest == []
        with torch.no_grad():
            close(outs[0], model(x))


def test_classifier_that_does_not_fit_fails_as_its_module_does(cpp):
    gen = torch.Generator().manual_seed(26)
    compiled = lookup.compile(nn.Sequential(*lookup_features(gen), View(15), nn.Linear(15, 2)).eval(), path='lookup')
    with pytest.raises(RuntimeError, match='nn.View: input and desired view do not match'):
        compiled(torch.randn(1, 3, 12, 12, generator=gen))
    compiled = lookup.compile(nn.Sequential(*lookup_features(gen), nn.Flatten(), nn.Linear(15, 2)).eval(),
                              path='lookup')
    with pytest.raises(RuntimeError, match='cannot be multiplied'):
        compiled(torch.randn(2, 3, 12, 12, generator=gen))


@pytest.mark.parametrize('size', [17, 20])
def test_network_plan_sizes_with_ceil_mode_pooling(cpp, size):
    """The plan works out each layer's input size itself (tap offsets depend on it): strided layers and ceil-mode
    poolings, whose last window may hang over the edge, give the sizes the layers get module by module."""
    gen = torch.Generator().manual_seed(size)
    model = nn.Sequential(psc(3, 8, 3, 1, 1, 4, 0.2, gen), randomize_bn(nn.BatchNorm2d(8), gen), nn.ReLU(),
                          nn.MaxPool2d(3, 2, ceil_mode=True), psc(8, 8, 3, 2, 0, 4, 0.2, gen),
                          randomize_bn(nn.BatchNorm2d(8), gen), nn.ReLU(), nn.MaxPool2d(2, 2, 1, ceil_mode=True),
                          psc(8, 4, 1, 1, 0, 4, 0.5, gen)).eval()
    compiled = lookup.compile(model, path='lookup')
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        out = compiled(x)
    plan = plan_for(compiled, x)
    assert plan.rest == [] and len(lookup.lookup_layers(compiled)) == 3
    assert torch.equal(out, module_by_module(compiled, x))
    close(out, model(x))


def test_batch_goes_image_by_image_up_to_the_fully_connected_layers(cpp):
    """A batch runs image by image through the layers before the first fully connected one (each thread keeps an
    image's activations in its cache), and the rest on the whole batch: same bits as module by module at any thread
    count, including batches the threads cannot share evenly."""
    gen = torch.Generator().manual_seed(24)
    model = nn.Sequential(psc(3, 8, 3, 1, 1, 4, 0.2, gen), randomize_bn(nn.BatchNorm2d(8), gen), nn.ReLU(),
                          nn.MaxPool2d(2, 2), psc(8, 16, 6, 1, 0, 4, 0.2, gen), nn.ReLU(),
                          psc(16, 5, 1, 1, 0, 4, 0.5, gen)).eval()
    compiled = lookup.compile(model, path='lookup')
    previous = torch.ops.lcnn_lookup.set_min_task_work(1)
    try:
        for batch in (1, 4, 5):
            x = torch.randn(batch, 3, 12, 12, generator=gen)
            with torch.no_grad():
                outs = at_threads([1, 2, 3], lambda: compiled(x))
            plan = plan_for(compiled, x)
            assert plan.rest == [] and 0 < plan.per_image < len(plan.code)
            first_fc = plan.code[plan.per_image:plan.per_image + 7]
            assert first_fc[0] == plan.KINDS['conv'] and first_fc[5:] == [6, 6]  # the 6x6 layer on 6x6 inputs
            ref = module_by_module(compiled, x)
            assert all(torch.equal(out, ref) for out in outs)
            close(outs[0], model(x))
    finally:
        torch.ops.lcnn_lookup.set_min_task_work(previous)


def test_network_plan_follows_changes(cpp):
    """The plan is rebuilt when a layer changes form or the input its shape; a hook on any layer it would run makes
    the forward go module by module (layer timing relies on it); bad inputs get the layers' own errors."""
    gen = torch.Generator().manual_seed(22)
    model = resnet_lcnn_small(0.1, gen)
    compiled = lookup.compile(model, path='lookup')
    x = torch.randn(1, 3, 64, 64, generator=gen)
    kinds = lambda: [call.kind for m in lookup.lookup_layers(compiled) for call in m._calls.values()]
    with torch.no_grad():
        compiled(x)
        assert 'aten_conv' not in kinds()
        lookup.lookup_layers(compiled)[2].set_path('dense')  # a 3x3 convolution: PyTorch's, inside the plan
        after = compiled(x)
        plan = plan_for(compiled, x)
        assert 'aten_conv' in kinds() and not plan.rest[:-4] and torch.equal(after, module_by_module(compiled, x))
        bigger = torch.randn(2, 3, 96, 96, generator=gen)
        assert torch.equal(compiled(bigger), module_by_module(compiled, bigger))
        seen = []
        hook = lookup.lookup_layers(compiled)[4].register_forward_hook(lambda m, a, out: seen.append(out.shape))
        assert torch.equal(compiled(x), after) and len(seen) == 1
        hook.remove()
        compiled(x)
        assert len(seen) == 1
        hook = compiled[1].register_forward_pre_hook(lambda m, a: seen.append('block'))  # a residual block
        compiled(x)
        assert seen[-1] == 'block'
        hook.remove()
        with pytest.raises(LookupInferenceError, match='float32'):
            compiled(x.double())


def test_plans_run_from_several_python_threads_at_once(cpp):
    """The plan's run releases the GIL while the kernels work: another Python thread keeps running meanwhile, and
    forwards of two inputs from two Python threads at once (each with its own buffers and its own team of torch
    threads) give the bits of each forward alone."""
    gen = torch.Generator().manual_seed(29)
    compiled = lookup.compile(resnet_lcnn_small(0.1, gen), path='lookup')
    big = torch.randn(512, 3, 64, 64, generator=gen)
    xs = [torch.randn(1, 3, 64, 64, generator=gen) for _ in range(2)]
    with torch.no_grad():
        alone = [compiled(x) for x in xs]
        compiled(big)
        start = time.perf_counter()
        compiled(big)
        forward = time.perf_counter() - start

    def big_forwards():
        with torch.no_grad():
            for _ in range(20):
                compiled(big)

    def gaps_while(target):
        # The gaps between this thread's wake-ups while target runs in another thread: with the GIL held by every
        # forward, most of them would last a forward.
        worker, gaps = threading.Thread(target=target), []
        worker.start()
        last = time.perf_counter()
        while worker.is_alive():
            time.sleep(1e-4)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        worker.join()
        return gaps

    gaps = at_threads([1], lambda: gaps_while(big_forwards))[0]
    assert statistics.median(gaps) < forward / 3, (statistics.median(gaps), forward)

    begin, outs = threading.Barrier(2), [[], []]

    def forwards(k):
        begin.wait()
        with torch.no_grad():
            outs[k] += [compiled(xs[k]) for _ in range(50)]

    threads = [threading.Thread(target=forwards, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(o) for o in outs] == [50, 50]
    assert all(torch.equal(y, alone[k]) for k in range(2) for y in outs[k])


def test_run_plan_checks_its_instructions(cpp):
    """A plan is checked as it runs: a step planned for another input size, a residual without its stack entry, or
    a classifier step inside a residual block, is refused rather than computed from wrong tap offsets."""
    gen = torch.Generator().manual_seed(23)
    compiled = lookup.compile(resnet_lcnn_small(0.1, gen), path='lookup')
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        compiled(x)
    plan = plan_for(compiled, x)

    def run(x, code, per_image=0):
        return lookup._state['kernels'].Plan(plan.tensors, code, per_image).run(x)

    with pytest.raises(RuntimeError, match='planned for 64x64'):
        run(torch.randn(1, 3, 72, 72), plan.code)
    with pytest.raises(RuntimeError, match='stack is empty'):
        run(x, plan.code[:3] + [1] + plan.code[4:])  # first step, res 1
    with pytest.raises(RuntimeError, match='unknown instruction'):
        run(x, [10])
    with pytest.raises(RuntimeError, match='inside a residual block'):
        run(x, [0, 9])
    with pytest.raises(RuntimeError, match='per_image'):
        run(x, plan.code, len(plan.code) + 1)
    assert torch.equal(run(x, plan.code, plan.per_image), compiled(x))


def test_compile_leaves_model_untouched(cpp):
    gen = torch.Generator().manual_seed(2)
    model = resnet_lcnn_small(0.1, gen).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lookup.compile(model)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compile_without_example_times_a_synthetic_input(cpp, monkeypatch):
    """No example input: each layer is timed on what it gets from random inputs at 224x224 (the first layer's
    channel count), one image and a batch of 16, which decide its form for single images and for batches."""
    gen = torch.Generator().manual_seed(4)
    model = nn.Sequential(psc(3, 8, 11, 4, 2, 3, 0.05, gen), nn.ReLU(), nn.MaxPool2d(3, 2),
                          psc(8, 16, 5, 1, 2, 6, 0.05, gen), psc(16, 16, 3, 1, 1, 6, 0.05, gen)).eval()
    seen = []
    lookup_wins = {('0', 1): True, ('0', 16): True, ('3', 1): False, ('3', 16): True, ('4', 1): True,
                   ('4', 16): False}

    def measure(layer, x, repeats):
        seen.append((layer.source, tuple(x.shape)))
        return (2.0, 1.0) if lookup_wins[layer.source, x.shape[0]] else (1.0, 2.0)  # (dense ms, lookup ms)

    monkeypatch.setattr(lookup, '_measure', measure)
    compiled = lookup.compile(model)
    assert sorted(seen) == sorted([('0', (1, 3, 224, 224)), ('3', (1, 8, 27, 27)), ('4', (1, 16, 27, 27)),
                                   ('0', (16, 3, 224, 224)), ('3', (16, 8, 27, 27)), ('4', (16, 16, 27, 27))])
    layers = lookup.lookup_layers(compiled)
    assert [(m.path, m.batch_path) for m in layers] == [('lookup', 'lookup'), ('dense', 'lookup'), ('lookup', 'dense')]
    used = []
    for m in layers:  # the form each layer's kernel call is made for (module by module or in the network's plan)
        call_for = m._call_for
        m._call_for = lambda path, n, h, w, call_for=call_for: used.append(path) or call_for(path, n, h, w)
    for batch in (1, 2):
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        with torch.no_grad():
            close(compiled(x), model(x))
    assert used == ['lookup', 'dense', 'lookup', 'lookup', 'lookup', 'dense']


def test_a_near_tie_keeps_the_dense_form(cpp, monkeypatch):
    """A lookup form timed only a little faster than dense is noise away from being slower: dense is kept (the
    whole network here no faster with it)."""
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(psc(3, 8, 3, 1, 1, 3, 0.05, gen), psc(8, 8, 3, 1, 1, 3, 0.05, gen)).eval()
    lookup_ms = {'0': 0.97, '1': 0.9}  # dense takes 1 ms for both

    monkeypatch.setattr(lookup, '_measure', lambda layer, x, repeats: (1.0, lookup_ms[layer.source]))
    monkeypatch.setattr(lookup, '_network_times', lambda compiled, x, layer, repeats: (10.0, 10.0))
    compiled = lookup.compile(model, torch.randn(1, 3, 12, 12, generator=gen))
    assert [(m.path, m.batch_path) for m in lookup.lookup_layers(compiled)] == [('dense', 'dense'),
                                                                                ('lookup', 'lookup')]


def tie_network(gen):
    """Layers '0' and '1': 3x3 convolutions (dense form: PyTorch's, which ends image-by-image running of a batch);
    '2': a 1x1 one (dense form: the kernels' own GEMM)."""
    return nn.Sequential(psc(3, 8, 3, 1, 1, 3, 0.1, gen), psc(8, 8, 3, 1, 1, 3, 0.1, gen),
                         psc(8, 8, 1, 1, 0, 3, 0.1, gen)).eval()


@pytest.mark.parametrize('lookup_ms, network_ms, forms', [
    # A near tie on the first 3x3 layer: the network timed faster with its lookup form keeps the batch image by
    # image, then the same for the second.
    ({'0': 1.03, '1': 1.1, '2': 0.5}, {'0': (10.0, 9.0), '1': (9.0, 8.5)},
     [('dense', 'lookup'), ('dense', 'lookup'), ('lookup', 'lookup')]),
    # The network not faster by the margin: dense stays, and the layers after it are not tried.
    ({'0': 1.03, '1': 1.04, '2': 0.5}, {'0': (10.0, 9.95)}, [('dense', 'dense'), ('dense', 'dense'),
                                                              ('lookup', 'lookup')]),
    # Clearly slower in its lookup form (over 1 / NETWORK_TIE): never tried, nor anything after it.
    ({'0': 1.3, '1': 1.04, '2': 0.5}, {}, [('dense', 'dense'), ('dense', 'dense'), ('lookup', 'lookup')]),
    # The first layer's lookup wins alone; the tie after it is tried; a tie on the 1x1 layer is not (its dense
    # form runs image by image too).
    ({'0': 0.5, '1': 1.0, '2': 1.0}, {'1': (10.0, 9.5)}, [('lookup', 'lookup'), ('dense', 'lookup'),
                                                           ('dense', 'dense')]),
])
def test_a_near_tie_at_a_batch_is_settled_on_the_whole_network(cpp, monkeypatch, lookup_ms, network_ms, forms):
    """At a batch, a layer whose dense form is PyTorch's convolution and whose lookup form timed alone within
    NETWORK_TIE takes the lookup form when the whole network then times faster (by NETWORK_MARGIN): on the dense one
    the batch would stop going image by image there. Layers in network order, up to the first that stays dense."""
    gen = torch.Generator().manual_seed(6)
    model = tie_network(gen)
    tried = []

    def network_times(compiled, x, layer, repeats):
        tried.append(layer.source)
        assert x.shape[0] == 2 and layer.path_for(2) == 'dense'
        return network_ms[layer.source]

    monkeypatch.setattr(lookup, '_measure', lambda layer, x, repeats: (1.0, lookup_ms[layer.source]))
    monkeypatch.setattr(lookup, '_network_times', network_times)
    x = torch.randn(2, 3, 12, 12, generator=gen)
    compiled = lookup.compile(model, x)
    assert tried == list(network_ms)
    assert [(m.path, m.batch_path) for m in lookup.lookup_layers(compiled)] == forms
    with torch.no_grad():
        close(compiled(x), model(x))
    plan = plan_for(compiled, x)
    # Image by image to the end with both 3x3 layers on lookup, else only up to the first left dense.
    assert (plan.per_image == len(plan.code)) == (forms[1][1] == 'lookup')


@pytest.mark.parametrize('example', [True, False])
def test_a_near_tie_at_batch_1_is_settled_on_the_whole_network(cpp, monkeypatch, example):
    """At batch 1 every layer kept dense whose lookup form timed alone within NETWORK_TIE (a 1x1 one too) takes the
    lookup form for single images when the whole network on one image then times faster by NETWORK_MARGIN; an
    example of one image decides batches alike, without one the synthetic batch keeps its own rule (only PyTorch
    convolutions, up to the first left dense)."""
    gen = torch.Generator().manual_seed(8)
    model = tie_network(gen)
    lookup_ms = {'0': 1.03, '1': 1.5 if example else 1.03, '2': 1.05}  # dense: 1 ms each
    network_ms = {1: {'0': (10.0, 9.5), '1': (10.0, 10.0), '2': (10.0, 9.95)}, 16: {'0': (10.0, 9.0),
                                                                                     '1': (10.0, 10.0)}}
    tried = []

    def network_times(compiled, x, layer, repeats):
        n = x.shape[0]
        tried.append((n, layer.source))
        assert layer.path_for(n) == 'dense'
        return network_ms[n][layer.source]

    monkeypatch.setattr(lookup, '_measure', lambda layer, x, repeats: (1.0, lookup_ms[layer.source]))
    monkeypatch.setattr(lookup, '_network_times', network_times)
    x = torch.randn(1, 3, 12, 12, generator=gen)
    compiled = lookup.compile(model, x if example else None)
    forms = [(m.path, m.batch_path) for m in lookup.lookup_layers(compiled)]
    if example:  # '1' clearly slower: never tried; '2' tried, the network not faster by the margin
        assert tried == [(1, '0'), (1, '2')]
        assert forms == [('lookup', 'lookup'), ('dense', 'dense'), ('dense', 'dense')]
    else:  # the batch of 16 tries the 3x3 layers only, and none after the first left dense
        assert tried == [(1, '0'), (1, '1'), (1, '2'), (16, '0'), (16, '1')]
        assert forms == [('lookup', 'lookup'), ('dense', 'dense'), ('dense', 'dense')]
    with torch.no_grad():
        close(compiled(x), model(x))


def test_the_whole_network_is_timed_on_both_forms(cpp, monkeypatch):
    """The network-level timing runs the network on each form (alternating), leaves the layer dense, and the
    compiled network computes what the model does whichever form it keeps."""
    gen = torch.Generator().manual_seed(7)
    model = tie_network(gen)
    x = torch.randn(2, 3, 12, 12, generator=gen)
    compiled = lookup.compile(model, path='dense')
    layer = lookup.lookup_layers(compiled)[0]
    used = []
    call_for = layer._call_for
    layer._call_for = lambda path, n, h, w: used.append(path) or call_for(path, n, h, w)
    dense, lookup_ms = lookup._network_times(compiled, x, layer, 3)
    assert dense > 0 and lookup_ms > 0 and (layer.path, layer.batch_path) == ('dense', 'dense')
    assert set(used) == {'dense', 'lookup'}
    # On one image it is the form for single images that changes, and the one for batches stays as it was.
    layer.set_path('dense', 'lookup')
    used.clear()
    dense, lookup_ms = lookup._network_times(compiled, x[:1], layer, 3)
    assert dense > 0 and lookup_ms > 0 and (layer.path, layer.batch_path) == ('dense', 'lookup')
    assert set(used) == {'dense', 'lookup'}
    layer.set_path('dense')
    monkeypatch.setattr(lookup, '_measure', lambda layer, x, repeats: (1.0, 1.0))  # every layer a near tie
    timed = []
    network_times = lookup._network_times
    monkeypatch.setattr(lookup, '_network_times', lambda c, x, layer, r: timed.append(layer.source) or
                        network_times(c, x, layer, r))
    compiled = lookup.compile(model, x)
    assert timed[0] == '0' and all(m.path == 'dense' for m in lookup.lookup_layers(compiled))  # batches only
    with torch.no_grad():
        close(compiled(x), model(x))


def test_cost_model_when_the_network_refuses_the_synthetic_size(cpp):
    gen = torch.Generator().manual_seed(4)
    small = psc(64, 64, 3, 1, 1, 8, 0.02, gen)     # few multiplications per output: lookup
    large = psc(64, 64, 3, 1, 1, 500, 0.05, gen)   # dictionary larger than the input: dense
    model = nn.Sequential(small, large, View(64 * 5 * 5)).eval()  # takes 5x5 inputs only
    compiled = lookup.compile(model)
    assert [m.path for m in lookup.lookup_layers(compiled)] == ['lookup', 'dense']
    x = torch.randn(2, 64, 5, 5, generator=gen)
    with torch.no_grad():
        close(compiled(x), model(x))


def test_residual_blocks_are_fused(cpp):
    gen = torch.Generator().manual_seed(15)
    model = resnet_lcnn_small(0.1, gen)
    compiled = lookup.compile(model, path='lookup')
    blocks = [m for m in compiled.modules() if isinstance(m, lookup.LookupResidual)]
    assert len(blocks) == 3
    assert not any(isinstance(m, (ConcatTable, CAddTable)) for m in compiled.modules())
    last = blocks[0].body[-1]
    assert last.relu and last.fused[-2:] == ('nn.CAddTable', 'nn.ReLU')
    x = torch.randn(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        close(compiled(x), model(x))
        close(compiled(x[:1]), model(x[:1]))


def check_residual_and_pointwise(gen):
    """A block's last convolution adds the shortcut before its ReLU, on both paths; the dense path of 1x1 and
    fully connected layers is our GEMM (stride, tails of rows and columns, batch innermost after a fully
    connected layer)."""
    for batch, cin, cout, size, stride in [(1, 5, 9, 7, 1), (3, 13, 17, 10, 2), (2, 40, 3, 15, 1)]:
        body = nn.Sequential(psc(cin, cout, 3, stride, 1, 4, 0.3, gen), randomize_bn(nn.BatchNorm2d(cout), gen))
        short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), randomize_bn(nn.BatchNorm2d(cout), gen))
        block = nn.Sequential(ConcatTable(body, short), CAddTable(True), nn.ReLU(True)).eval()
        x = torch.randn(batch, cin, size, size, generator=gen)
        for path in ('lookup', 'dense'):
            with torch.no_grad():
                close(lookup.compile(block, path=path)(x), block(x))
    for batch in (1, 2, 19):
        fc = nn.Sequential(nn.Conv2d(6, 33, 4), nn.ReLU(), nn.Conv2d(33, 21, 1)).eval()
        x = torch.randn(batch, 6, 4, 4, generator=gen)
        with torch.no_grad():
            close(lookup.compile(fc)(x), fc(x))


def test_residual_and_pointwise(cpp):
    check_residual_and_pointwise(torch.Generator().manual_seed(16))


def fixture_model(tmp_path, name):
    path = tmp_path / f'{name}.t7'
    path.write_bytes(lzma.decompress((FIXTURES / f'{name}.t7.xz').read_bytes()))
    return t7.load_model(path)


@pytest.mark.parametrize('name', ['alexnet-lcnn', 'resnet8-lcnn'])
def test_fixture_models_match_lua(cpp, tmp_path, name):
    model = fixture_model(tmp_path, name)
    x = t7.load(FIXTURES / 'alexnet-lcnn.input.t7')
    lua = t7.load(FIXTURES / f'{name}.output.t7')
    with torch.no_grad():
        # alexnet: per-layer choice timed on batch 1; resnet8: every pooled layer on the lookup kernel.
        compiled = lookup.compile(model, x[:1], repeats=1) if name == 'alexnet-lcnn' else \
            lookup.compile(model, path='lookup')
        out = compiled(x)
    close(out, lua)
    if name == 'resnet8-lcnn':
        assert all(m.path == 'lookup' for m in lookup.lookup_layers(compiled) if m.has_lookup)
    lookup.export(compiled, tmp_path / f'{name}.h5')
    with torch.no_grad():
        assert torch.equal(lookup.load(tmp_path / f'{name}.h5')(x), out)


# ----------------------------------------------------------------------------------------------------------------
# fallback


def test_forced_torch_backend(monkeypatch):
    monkeypatch.setenv('LCNN_LOOKUP_BACKEND', 'torch')
    gen = torch.Generator().manual_seed(9)
    model = resnet_lcnn_small(0.05, gen)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        compiled = lookup.compile(model, path='lookup')
    assert {m.backend for m in lookup.lookup_layers(compiled)} == {'torch'}
    with torch.no_grad():
        close(compiled(x), model(x))
    alex = alexnet_lcnn_small(0.02, gen)
    x = torch.randn(1, 3, 224, 224, generator=gen)
    with torch.no_grad():
        close(lookup.compile(alex, path='lookup')(x), alex(x))


def test_no_compiler_falls_back_with_one_warning(monkeypatch):
    def no_compiler():
        raise RuntimeError('Error building extension: c++: command not found')

    monkeypatch.delenv('LCNN_LOOKUP_BACKEND', raising=False)
    monkeypatch.setattr(lookup, '_build_extension', no_compiler)
    monkeypatch.setitem(lookup._state, 'kernels', None)
    monkeypatch.setitem(lookup._state, 'backend', None)
    gen = torch.Generator().manual_seed(10)
    model = nn.Sequential(psc(4, 9, 3, 2, 1, 5, 0.2, gen), nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = torch.randn(2, 4, 16, 16, generator=gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        first = lookup.compile(model, path='lookup')
        second = lookup.compile(model)
    assert len(caught) == 1 and 'pure-torch fallback' in str(caught[0].message)
    assert 'g++), ninja and the Python headers (Debian and Ubuntu: python3.' in str(caught[0].message)
    assert lookup.lookup_layers(first)[0].backend == 'torch'
    with torch.no_grad():
        close(first(x), model(x))
        close(second(x), model(x))
    with pytest.raises(LookupInferenceError, match='could not be built.*install a C.. compiler .g..., ninja and the '
                                                   'Python headers'):
        lookup.resolve_backend('cpp')


def _extension_dir(monkeypatch, tmp_path, calls):
    """A fresh extension root, with cpp_extension.load replaced by a recorder; returns the kernels' build folder."""
    from torch.utils import cpp_extension
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    monkeypatch.setattr(cpp_extension, 'load', lambda **kw: calls.append(kw))
    build = lookup._build_directory()
    assert build.parent == tmp_path  # as torch puts extensions under TORCH_EXTENSIONS_DIR
    build.mkdir()
    return build


def test_a_killed_build_s_lock_is_named_not_waited_on(monkeypatch, tmp_path):
    calls = []
    lock = _extension_dir(monkeypatch, tmp_path, calls) / 'lock'
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    monkeypatch.setitem(lookup._state, 'kernels', None)
    monkeypatch.setitem(lookup._state, 'backend', None)
    with pytest.raises(LookupInferenceError, match=re.escape(f'{lock} is 60 minutes old') + '.*delete that file'):
        lookup.resolve_backend('auto')  # not the pure-torch fallback: deleting the file is all it takes
    assert calls == [] and lookup._state['backend'] is None


def test_the_build_waits_for_another_process_s_lock(monkeypatch, tmp_path, capsys):
    calls = []
    build = _extension_dir(monkeypatch, tmp_path, calls)
    (build / 'lock').touch()
    release = threading.Timer(0.5, (build / 'lock').unlink)
    release.start()
    start = time.monotonic()
    lookup._build_extension()
    assert time.monotonic() - start >= 0.5
    assert [c['build_directory'] for c in calls] == [str(build)]
    err = capsys.readouterr().err
    assert 'waiting for another process to finish building them' in err
    assert f'lookup kernels: compiling them into {build} (once per checkout' in err  # no library built there yet
    (build / f'{build.name}.so').touch()
    lookup._build_extension()  # no lock, a library built: no wait, no word
    assert len(calls) == 2 and capsys.readouterr().err == ''


def test_bad_arguments():
    with pytest.raises(LookupInferenceError, match='unknown'):
        lookup.resolve_backend('gpu')
    with pytest.raises(LookupInferenceError, match="path 'fast'"):
        lookup.compile(nn.Sequential(), path='fast')
    with pytest.raises(LookupInferenceError, match='meta device, which holds shapes but no weights'):
        lookup.compile(nn.Sequential(nn.Conv2d(2, 3, 3, device='meta')))
    model = nn.Sequential(nn.Conv2d(2, 3, 3))
    for call, message in [(lambda: lookup.compile('model.t7'), 'expected a torch.nn.Module, got str'),
                          (lambda: lookup.compile(model, [torch.zeros(1, 2, 5, 5)]), 'must be a tensor .* got list'),
                          (lambda: lookup.compile(model, repeats=0), 'repeats must be a positive integer, got 0'),
                          (lambda: lookup.time_layers(model, None), 'time_layers: the example input must be a tensor')]:
        with pytest.raises(LookupInferenceError, match=message):
            call()
    conv = LookupConv2d.from_conv(nn.Conv2d(2, 3, 3))
    with pytest.raises(LookupInferenceError, match='no lookup form'):
        conv.set_path('lookup')
    with pytest.raises(LookupInferenceError, match='float32'):
        conv(torch.zeros(1, 2, 5, 5, dtype=torch.float64))
    with pytest.raises(LookupInferenceError, match='the input is on meta; the lookup engine runs on CPU'):
        conv(torch.zeros(1, 2, 5, 5, device='meta'))


def test_an_input_of_other_channels_is_named(cpp):
    gen = torch.Generator().manual_seed(21)
    for model in (alexnet_lcnn_small(0.1, gen), resnet_lcnn_small(0.1, gen)):
        compiled = lookup.compile(model, path='lookup')
        with torch.no_grad():
            compiled(torch.randn(1, 3, 64 if len(model) > 2 else 224, 64 if len(model) > 2 else 224))
            for x in (torch.randn(1, 4, 224, 224), torch.randn(2, 1, 64, 64)):
                with pytest.raises(LookupInferenceError, match=f'expected an input of 3 channels, got {x.shape[1]}'):
                    compiled(x)
                with pytest.raises(LookupInferenceError, match='expected an input of 3 channels'):
                    module_by_module(compiled, x)


def test_damaged_sparse_forms_are_refused_before_the_kernels_read_them():
    gen = torch.Generator().manual_seed(22)
    good = LookupConv2d.from_pooled(psc(4, 6, 3, 1, 1, 5, 0.3, gen))
    parts = dict(bias=good.bias, dict_weight=good.dict_weight, rowptr=good.rowptr, taps=good.taps,
                 values=good.values)
    make = lambda **changed: LookupConv2d(4, 6, 3, 1, 1, **{**parts, **changed})
    make()
    far = good.taps.clone()
    far[0, -1] = 5
    falling = good.rowptr.clone()
    falling[2] = falling[3] + 1
    for changed, message in [(dict(taps=far), 'taps outside the 5 dictionary entries or the 3x3 kernel'),
                             (dict(taps=good.taps - 1), 'taps outside'),
                             (dict(rowptr=falling), 'row pointers must rise from 0'),
                             (dict(rowptr=good.rowptr[:-1]), 'row pointers'),
                             (dict(values=good.values[:-1]), 'taps for'),
                             (dict(dict_weight=good.dict_weight[:, :3]), r'dictionary of size \(5, 3\) for 4 input'),
                             (dict(bias=good.bias[:5]), 'bias of size')]:
        with pytest.raises(LookupInferenceError, match=message + '.*damaged'):
            make(**changed)
    with pytest.raises(LookupInferenceError, match='must be positive'):
        LookupConv2d(4, 6, 3, 0, 1, **parts)


# ----------------------------------------------------------------------------------------------------------------
# timing table and HDF5 export


def test_time_layers_rows(cpp):
    gen = torch.Generator().manual_seed(12)
    model = resnet_lcnn_small(0.05, gen)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    rows = lookup.time_layers(model, x, repeats=2)
    compiled = lookup.compile(model)
    assert len(rows) == len(lookup.lookup_layers(compiled)) + 1
    assert rows[-1].name.startswith('total') and rows[-1].lookup_ms > 0 and rows[-1].dense_ms > 0
    plain = [r for r in rows[:-1] if r.lookup_ms is None]
    assert len(plain) == 2 and all(r.chosen == 'dense' for r in plain)  # the two shortcut convolutions
    text = lookup.format_timing(rows)
    # A layer on lookup that timed slower alone than its dense form (2 repeats on a busy machine can make one) adds
    # the table's footnote on near ties.
    footnote = any(r.network is not None for r in rows)
    assert len(text.splitlines()) == len(rows) + 2 + footnote and 'total (whole network)' in text


def test_time_layers_shows_why_a_layer_slower_alone_runs_lookup(cpp, monkeypatch):
    """A layer on its lookup form that times slower alone than dense (kept for the whole network's time) gets the
    network's time ratio in its row, measured there; the forms are left as they were."""
    gen = torch.Generator().manual_seed(14)
    compiled = lookup.compile(tie_network(gen), path='lookup')
    layers = lookup.lookup_layers(compiled)
    layers[1].set_path('dense')
    tried = []

    def network_times(net, x, layer, repeats):
        tried.append(layer.source)
        assert net is compiled and layer.path_for(x.shape[0]) == 'lookup'
        return 10.0, 9.7

    monkeypatch.setattr(lookup, '_measure', lambda layer, x, repeats: (1.0, 1.05))
    monkeypatch.setattr(lookup, '_network_times', network_times)
    rows = lookup.time_layers(compiled, torch.randn(1, 3, 12, 12, generator=gen), repeats=2)
    assert tried == ['0', '2'] and [r.network for r in rows] == [pytest.approx(0.97), None, pytest.approx(0.97), None]
    assert [m.path for m in layers] == ['lookup', 'dense', 'lookup']
    text = lookup.format_timing(rows)
    assert text.count('lookup (network 0.97x)') == 2 and 'near tie on lookup' in text.splitlines()[-1]


@pytest.mark.parametrize('maker', [alexnet_lcnn_small, resnet_lcnn_small])
def test_hdf5_round_trip(cpp, tmp_path, maker):
    gen = torch.Generator().manual_seed(13)
    model = maker(0.05, gen)
    x = torch.randn(2, 3, 224 if maker is alexnet_lcnn_small else 64, 224 if maker is alexnet_lcnn_small else 64,
                    generator=gen)
    compiled = lookup.compile(model, path='lookup')
    lookup.lookup_layers(compiled)[1].set_path('dense')  # a folded lookup layer is stored in its sparse form
    lookup.lookup_layers(compiled)[2].set_path('lookup', 'dense')
    lookup.export(compiled, tmp_path / 'net.h5')
    loaded = lookup.load(tmp_path / 'net.h5')
    assert isinstance(loaded, lookup.LookupNetwork)
    paths = lambda m: [(layer.path, layer.batch_path) for layer in lookup.lookup_layers(m)]
    assert paths(loaded) == paths(compiled)
    with torch.no_grad():
        assert torch.equal(loaded(x), compiled(x))
        close(loaded(x), model(x))


def test_hdf5_holds_no_training_graph(cpp, tmp_path):
    import h5py
    gen = torch.Generator().manual_seed(14)
    compiled = lookup.compile(nn.Sequential(psc(4, 6, 3, 1, 1, 5, 0.3, gen), randomize_bn(nn.BatchNorm2d(6), gen),
                                            nn.ReLU()).eval())
    lookup.export(compiled, tmp_path / 'one.h5')
    with h5py.File(tmp_path / 'one.h5') as f:
        layer = f['model/children/0000']
        assert layer.attrs['type'] == 'LookupConv2d'
        assert sorted(layer) == ['bias', 'col', 'dict_weight', 'rowptr', 'values']
        assert layer['rowptr'][-1] == layer['values'].shape[0] == layer['col'].shape[0]


def test_a_damaged_export_is_refused_not_run(cpp, tmp_path):
    import h5py
    gen = torch.Generator().manual_seed(23)
    compiled = lookup.compile(alexnet_lcnn_small(0.05, gen), path='lookup')
    lookup.export(compiled, tmp_path / 'net.h5')
    for name, damage, message in [('col', lambda v: v + 25 * 5000000, 'taps outside'),
                                  ('dict_weight', lambda v: v[:2], 'taps outside the 2 dictionary entries'),
                                  ('values', None, 'row pointers, taps and values .they go together')]:
        path = tmp_path / f'{name}.h5'
        path.write_bytes((tmp_path / 'net.h5').read_bytes())
        with h5py.File(path, 'a') as f:
            group = f['model/children/0000/children/0001']
            value = group[name][()]
            del group[name]
            if damage is not None:
                group[name] = damage(value)
        with pytest.raises(LookupInferenceError, match=message):
            lookup.load(path)


def test_export_and_load_errors(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(LookupInferenceError, match='cannot store Odd at 1'):
        lookup.export(nn.Sequential(nn.ReLU(), Odd()), tmp_path / 'x.h5')
    (tmp_path / 'bad.h5').write_bytes(b'not hdf5')
    with pytest.raises(LookupInferenceError, match='cannot read'):
        lookup.load(tmp_path / 'bad.h5')
