"""Fast lookup inference for LCNN models (new; the Lua code only trained lookup layers and counted lookups).

`compile(model)` turns every PooledSpatialConvolution (with the batch norm, ReLU and max pooling that follow it)
into one fused inference layer that runs either the sparse lookup kernel of layers/csrc/lookup.cpp or the exactly
equivalent dense convolution, whichever is faster, and each residual block into a LookupResidual whose sum and ReLU
happen in its last convolution; `time_layers` measures both forms per layer; `export` / `load` keep a compiled
network in HDF5 without the training graph.

How the kernels work and why: see the header of layers/csrc/lookup.cpp. Convolutions take and give NCHW tensors;
after a fully connected layer at batch > 1 the output is an NCHW-shaped view of (channels, batch) memory, which the
next fully connected layer reads without a copy (any other module sees an ordinary tensor). The kernels split work
over torch's intra-op threads (torch.set_num_threads) and give bit-identical results at any thread count.
"""
import collections
import copy
import hashlib
import os
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from layers import activation, containers, legacy, shape, tables
from layers.ChannelInterlace import ChannelInterlace
from layers.PooledSpatialConvolution import PooledSpatialConvolution

__all__ = ['LookupInferenceError', 'LookupConv2d', 'LookupResidual', 'compile', 'time_layers', 'format_timing',
           'export', 'load', 'resolve_backend', 'LayerTiming', 'lookup_layers', 'SYNTHETIC_SIZE',
           'SYNTHETIC_BATCHES']

# When `compile` can measure nothing (no example input, and the network refuses the synthetic one), a layer keeps
# its lookup form when the dense equivalent needs at least this many times more multiplications: the prototype
# study on this machine kind found that layers below ~3-4x lose to oneDNN's dense convolution.
COST_MODEL_MIN_RATIO = 4.0

_BACKEND_ENV = 'LCNN_LOOKUP_BACKEND'
_CSRC = Path(__file__).resolve().parent / 'csrc' / 'lookup.cpp'
# No -march=native: the kernels pick AVX-512 / AVX2 / SSE2 code at run time (see lookup.cpp), so a cached build
# stays valid on any x86-64 machine. -ffp-contract=fast lets GCC fuse multiply-adds in ISO C++ mode.
_CFLAGS = ['-O3', '-fopenmp', '-ffp-contract=fast']
_LDFLAGS = ['-fopenmp']
# A build of the kernels takes 1-2 minutes on 2 cores; a lock file much older than that was left by a build that
# was killed (torch removes it on errors and Ctrl-C, not on SIGTERM or SIGKILL).
_STALE_LOCK_SECONDS = 600
# What a build of the kernels needs (pybind11 comes with torch; its bindings include Python.h).
_BUILD_NEEDS = (f'a C++ compiler (g++), ninja and the Python headers (Debian and Ubuntu: python'
                f'{sys.version_info.major}.{sys.version_info.minor}-dev)')
_state = {'backend': None, 'kernels': None, 'generation': 0}


class LookupInferenceError(Exception):
    """A model, option or file the lookup inference engine cannot handle; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Kernel build and backend choice


def _build_extension():
    """Compile (or load from torch's extension cache) the C++ kernels: registers torch.ops.lcnn_lookup and returns
    the module that holds the Plan class."""
    from torch.utils import cpp_extension
    if shutil.which('ninja') is None:
        # `pip install ninja` puts the binary next to the interpreter, which is not on PATH in an unactivated venv.
        venv_bin = Path(sys.executable).parent
        if (venv_bin / 'ninja').exists():
            os.environ['PATH'] = f'{venv_bin}{os.pathsep}{os.environ.get("PATH", "")}'
    build = _build_directory()
    # torch takes its lock before it creates a build directory that it was given.
    build.mkdir(parents=True, exist_ok=True)
    _wait_for_lock(build / 'lock')
    library = build / f'{build.name}.so'
    newest = max(f.stat().st_mtime for f in _CSRC.parent.iterdir())
    if not library.exists() or library.stat().st_mtime < newest:
        print(f'lookup kernels: compiling them into {build} (once per checkout, torch version and change of '
              f'layers/csrc; about a minute)', file=sys.stderr, flush=True)
    return cpp_extension.load(name=build.name, sources=[str(_CSRC)], extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS,
                              is_python_module=True, verbose=False, build_directory=str(build))


def _build_directory():
    """Where the kernels are built: the folder torch would pick for them (for a CPU build of torch), named here so
    that its lock can be checked (torch waits on an existing lock forever, without a word)."""
    from torch.utils import cpp_extension
    # One folder per checkout: torch writes the source's absolute path into the build's ninja file, so two
    # checkouts sharing a folder would rebuild (and wait on each other's lock) every time they take turns.
    checkout = hashlib.sha1(str(_CSRC).encode()).hexdigest()[:8]
    name = 'lcnn_lookup_' + ''.join(c if c.isalnum() else '_' for c in torch.__version__) + '_' + checkout
    if os.environ.get('TORCH_EXTENSIONS_DIR'):
        return Path(os.environ['TORCH_EXTENSIONS_DIR']) / name
    python = f'py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, "abiflags", "")}'
    return Path(cpp_extension.get_default_build_root()) / f'{python}_cpu' / name


def _wait_for_lock(lock):
    """Wait while another process builds the kernels (it holds `lock`); a lock older than _STALE_LOCK_SECONDS was
    left by a killed build and ends in a LookupInferenceError that names the file to delete."""
    told = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > _STALE_LOCK_SECONDS:
            raise LookupInferenceError(f'lookup kernels: {lock} is {age / 60:.0f} minutes old, left by a build that '
                                       f'was killed; delete that file and run again')
        if not told:
            print(f'lookup kernels: waiting for another process to finish building them (lock {lock}, '
                  f'{age:.0f} s old; if no other process is building them, delete that file)', file=sys.stderr,
                  flush=True)
            told = True
        time.sleep(1)


def resolve_backend(requested=None):
    """The kernel backend: 'cpp' (the compiled kernels) or 'torch' (pure-torch fallback, slower, same results).

    `requested` (or the LCNN_LOOKUP_BACKEND environment variable) may be 'auto', 'cpp' or 'torch'. 'auto' builds
    the kernels on first use and falls back to 'torch' with one warning when that fails (no compiler)."""
    requested = requested or os.environ.get(_BACKEND_ENV) or 'auto'
    if requested not in ('auto', 'cpp', 'torch'):
        raise LookupInferenceError(f"lookup backend '{requested}' is unknown: use auto, cpp or torch "
                                   f"(argument or {_BACKEND_ENV})")
    if requested == 'torch':
        return 'torch'
    if _state['backend'] is None:
        try:
            if _state['kernels'] is None:
                _state['kernels'] = _build_extension()
            _state['backend'] = 'cpp'
        except LookupInferenceError:
            raise
        except Exception as e:  # any other failure to compile or load means: no usable compiler here
            _state['backend'] = 'torch'
            _state['error'] = f'{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ""}'
            if requested == 'auto':
                warnings.warn(f'lookup kernels could not be built ({_state["error"]}); using the pure-torch '
                              f'fallback, which is much slower. Install {_BUILD_NEEDS} to get the fast path.',
                              RuntimeWarning, stacklevel=2)
    if requested == 'cpp' and _state['backend'] != 'cpp':
        raise LookupInferenceError(f'lookup kernels could not be built ({_state["error"]}): install {_BUILD_NEEDS}, '
                                   f'or use backend torch')
    return _state['backend']


# ----------------------------------------------------------------------------------------------------------------
# The fused inference layer


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(int(x) for x in v)


def _pool_params(pool):
    """(kH, kW, sH, sW, padH, padW, ceil) of an nn.MaxPool2d, or None when the kernels cannot run it."""
    if pool.return_indices or _pair(pool.dilation) != (1, 1):
        return None
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size), \
        _pair(pool.padding)
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        return None
    return (k[0], k[1], s[0], s[1], p[0], p[1], int(bool(pool.ceil_mode)))


def _pooled_size(n, k, s, p, ceil):
    """Output length of a max pooling over n (PyTorch's rule: with ceil_mode the last window starts inside)."""
    out = (n + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    return out - 1 if ceil and (out - 1) * s >= n + p else out


def _bn_affine(bn):
    """(scale, shift) of an eval-mode batch norm, or None when it has no running statistics to fold."""
    if not bn.track_running_stats or bn.running_mean is None:
        return None
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _time_ms(fn, repeats, warmup=2):
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# Rows per panel of a GEMM operand, as layers/csrc/lookup.cpp reads it.
_PANEL_ROWS = 8
# Dictionary responses per block pass of a fully connected lookup layer: 32 KB at batch 1, so that the gathers
# of a block pass hit L1 (with AlexNet-accurate's fc6, 36864 responses, the network took 8% less time at batch 1
# on one thread and 10% on two than with one pass over all responses from L2; with AlexNet-fast's, 18432, the
# same); at batch 16 each response is a row of the batch, 512 KB (in L2; blocks of 4096 gave the same times).
_FC_BLOCK = 8192


def _pack_rows(weight):
    """An (M, K) matrix as the kernels' GEMM reads it: panels of 8 rows, each stored k-major (8 values per k),
    rows past M zero."""
    m, k = weight.shape
    rows = -(-m // _PANEL_ROWS) * _PANEL_ROWS
    padded = torch.zeros(rows, k, dtype=torch.float32)
    padded[:m] = weight
    return padded.view(rows // _PANEL_ROWS, _PANEL_ROWS, k).transpose(1, 2).contiguous()


class _Kernel:
    """One call of a compiled kernel with its fixed arguments, made once per layer, form and input shape: callable
    as (x, residual), and readable as an instruction of a network plan (see _Plan)."""
    __slots__ = ('kind', 'op', 'tensors', 'geom', 'relu', 'pool')

    def __init__(self, kind, tensors, geom, relu, pool):
        self.kind, self.tensors, self.geom, self.relu, self.pool = kind, tensors, geom, relu, pool
        self.op = getattr(torch.ops.lcnn_lookup, kind)  # conv, dense or aten_conv

    def __call__(self, x, residual):
        return self.op(x, *self.tensors, self.geom, self.relu, self.pool, residual)


class LookupConv2d(nn.Module):
    """Inference form of a convolution block: conv [+ batch norm] [+ ReLU] [+ max pooling].

    A block made from a PooledSpatialConvolution keeps its sparse form (dictionary weight and a CSR list of align
    taps, batch norm folded into tap values and bias) and runs either the lookup kernel ('lookup') or the dense
    convolution obtained by folding dictionary and align weights into one kernel ('dense'): `path` for a single
    image, `batch_path` for a batch (a fully connected layer can be bound by reading its weights at batch 1 and by
    arithmetic on a batch, where the dense form's GEMM may win). A block made from a plain convolution only has the
    dense form. Everything is a buffer: the layer is inference-only.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *, bias, dict_weight=None,
                 rowptr=None, taps=None, values=None, dense_weight=None, groups=1, dilation=1, relu=False,
                 pool=None, path=None, batch_path=None, backend_name=None, source='', fused=()):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation, self.groups = _pair(padding), _pair(dilation), int(groups)
        self.relu, self.pool = bool(relu), (tuple(int(v) for v in pool) if pool else None)
        self.source, self.fused = source, tuple(fused)
        self.register_buffer('bias', bias.detach().float().contiguous())
        self.has_lookup = dict_weight is not None
        if self.has_lookup and any(t is None for t in (rowptr, taps, values)):
            raise LookupInferenceError(f'{source or "LookupConv2d"}: a dictionary needs its row pointers, taps and '
                                       f'values (they go together); the layer (or the export it was read from) is '
                                       f'damaged')
        if self.has_lookup:
            self.register_buffer('dict_weight', dict_weight.detach().float().contiguous())
            self.register_buffer('rowptr', rowptr.to(torch.int64).contiguous())
            self.register_buffer('taps', taps.to(torch.int32).contiguous())   # (3, nnz): dictionary entry, row, col
            self.register_buffer('values', values.detach().float().contiguous())
        if dense_weight is None and not self.has_lookup:
            raise LookupInferenceError('LookupConv2d needs a dense weight or a dictionary with align taps')
        self.register_buffer('dense_weight', None if dense_weight is None else dense_weight.detach().float())
        self._check_form()
        self.backend = resolve_backend(backend_name)
        self._offsets = {}
        self._cache, self._calls = {}, {}
        self._geom = [*self.kernel_size, *self.stride, *self.padding]
        self._pool_list = list(self.pool) if self.pool else []
        self.set_path(path or ('lookup' if self.has_lookup else 'dense'), batch_path)

    def __getstate__(self):
        # The prepared calls (closures on the pure-torch backend, which do not pickle) and the derived weights are
        # rebuilt on first use.
        state = self.__dict__.copy()
        state['_calls'], state['_cache'], state['_offsets'] = {}, {}, {}
        return state

    def __setstate__(self, state):
        # In a new process the kernels are not loaded yet: build or load them now (or fall back to pure torch, with
        # the warning, where they cannot be built), as a newly compiled layer would.
        if state.get('backend') == 'cpp':
            state['backend'] = resolve_backend()
        super().__setstate__(state)

    def train(self, mode=True):
        if mode:
            _refuse_training(self.source or 'LookupConv2d')
        return super().train(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # The derived forms (packed and transposed weights, tap offsets, prepared calls, network plans) were made
        # from the weights just replaced; a dense kernel folded from the old sparse form is folded again.
        if self.has_lookup and prefix + 'dense_weight' not in state_dict:
            self.dense_weight = None
        self._offsets = {}
        self.set_path(self.path, self.batch_path)

    # -- construction -------------------------------------------------------------------------------------------

    def _check_form(self):
        """Sizes and taps that fit together: the kernels index memory with them unchecked, so a damaged export (or a
        hand-made layer) must stop here and not read past a buffer."""
        where = self.source or 'LookupConv2d'
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation

        def fail(what):
            raise LookupInferenceError(f'{where}: {what}; the layer (or the export it was read from) is damaged')

        if min(self.in_channels, self.out_channels, kh, kw, sh, sw, dh, dw, self.groups) < 1 or min(ph, pw) < 0:
            fail('channels, kernel, stride, dilation and groups must be positive and padding not negative')
        if self.in_channels % self.groups or self.out_channels % self.groups:
            fail(f'{self.groups} groups do not divide {self.in_channels} -> {self.out_channels} channels')
        if tuple(self.bias.shape) != (self.out_channels,):
            fail(f'bias of size {tuple(self.bias.shape)} for {self.out_channels} output channels')
        dense = self.dense_weight
        if dense is not None and tuple(dense.shape) != (self.out_channels, self.in_channels // self.groups, kh, kw):
            fail(f'dense weight of size {tuple(dense.shape)} for {self.in_channels} -> {self.out_channels} {kh}x{kw}')
        if not self.has_lookup:
            return
        if self.groups != 1 or (dh, dw) != (1, 1):
            fail('a lookup form has no groups or dilation')
        if self.dict_weight.dim() != 2 or self.dict_weight.shape[1] != self.in_channels or not self.dict_weight.numel():
            fail(f'dictionary of size {tuple(self.dict_weight.shape)} for {self.in_channels} input channels')
        nnz = self.values.numel()
        rowptr, taps = self.rowptr, self.taps
        if self.values.dim() != 1 or tuple(taps.shape) != (3, nnz):
            fail(f'{tuple(taps.shape)} taps for {tuple(self.values.shape)} values')
        if (rowptr.dim() != 1 or rowptr.numel() != self.out_channels + 1 or rowptr[0] != 0 or rowptr[-1] != nnz
                or bool((rowptr.diff() < 0).any())):
            fail(f'row pointers must rise from 0 to the {nnz} taps over {self.out_channels} rows')
        if nnz and not all(0 <= int(t.min()) and int(t.max()) < n
                           for t, n in zip(taps, (self.dict_weight.shape[0], kh, kw))):
            fail(f'taps outside the {self.dict_weight.shape[0]} dictionary entries or the {kh}x{kw} kernel')

    @classmethod
    def from_pooled(cls, psc, bn=None, relu=False, pool=None, **kw):
        """Fold a PooledSpatialConvolution (and an eval batch norm after it) into sparse form."""
        align = psc.alignconv.weight.detach()
        out_ch = align.shape[0]
        # The Lua layer zeroes |w| <= sparseTh on every forward; inference uses what that forward would use.
        o, d, u, v = (align.abs() > psc.sparseTh).nonzero(as_tuple=True)
        values = align[o, d, u, v].double()
        bias = psc.alignconv.bias.detach().double() if psc.alignconv.bias is not None else \
            torch.zeros(out_ch, dtype=torch.float64)
        if bn is not None:
            scale, shift = _bn_affine(bn)
            values = values * scale[o]
            bias = bias * scale + shift
        sh, sw = psc.dH, psc.dW
        # Taps of one output channel in the order the kernel walks memory: phase plane, then row, then column.
        plane = (d * sh + u % sh) * sw + v % sw
        key = ((o * (align.shape[1] * sh * sw) + plane) * (psc.kH // sh + 1) + u // sh) * (psc.kW // sw + 1) + v // sw
        order = torch.argsort(key)
        o, d, u, v, values = o[order], d[order], u[order], v[order], values[order]
        rowptr = torch.zeros(out_ch + 1, dtype=torch.int64)
        rowptr[1:] = torch.bincount(o, minlength=out_ch).cumsum(0)
        return cls(psc.nInputPlane, psc.nOutputPlane, (psc.kH, psc.kW), (psc.dH, psc.dW), (psc.padH, psc.padW),
                   bias=bias, dict_weight=psc.poolconv.weight.detach().view(psc.poolSize, psc.nInputPlane),
                   rowptr=rowptr, taps=torch.stack([d, u, v]), values=values, relu=relu, pool=pool, **kw)

    @classmethod
    def from_conv(cls, conv, bn=None, relu=False, pool=None, **kw):
        """Fold a plain convolution (and an eval batch norm after it) into one dense convolution."""
        weight = conv.weight.detach().double()
        bias = conv.bias.detach().double() if conv.bias is not None else \
            torch.zeros(conv.out_channels, dtype=torch.float64)
        if bn is not None:
            scale, shift = _bn_affine(bn)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = bias * scale + shift
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=bias,
                   dense_weight=weight, groups=conv.groups, dilation=conv.dilation, relu=relu, pool=pool, **kw)

    # -- paths --------------------------------------------------------------------------------------------------

    def set_path(self, path, batch_path=None):
        """Choose 'lookup' or 'dense' for a single image (`path`) and for a batch (`batch_path`, default the same);
        the dense kernel is folded from the sparse form when one of them needs it."""
        batch_path = batch_path or path
        for p in (path, batch_path):
            if p not in ('lookup', 'dense'):
                raise LookupInferenceError(f"unknown path '{p}': use lookup or dense")
            if p == 'lookup' and not self.has_lookup:
                raise LookupInferenceError(f'{self.source or "layer"} is a plain convolution: it has no lookup form')
        if 'dense' in (path, batch_path) and self.dense_weight is None:
            self.dense_weight = self.folded_weight()
        if 'dense' not in (path, batch_path):
            self.dense_weight = None
        self.path, self.batch_path = path, batch_path
        self._cache, self._calls = {}, {}
        _state['generation'] += 1  # network plans built on the old forms are stale
        return self

    def path_for(self, batch):
        """The form this layer runs at a batch size."""
        return self.path if batch == 1 else self.batch_path

    def folded_weight(self):
        """The dense kernel equal to dictionary followed by align taps: W[o, c, u, v] = sum_d A[o, d, u, v] D[d, c]."""
        kh, kw = self.kernel_size
        d, u, v = self.taps.long()
        rows = torch.repeat_interleave(torch.arange(self.out_channels), self.rowptr.diff())
        # A sparse (o, u, v) x d matrix times the dictionary: memory stays at the size of the result.
        align = torch.sparse_coo_tensor(torch.stack([(rows * kh + u) * kw + v, d]), self.values,
                                        (self.out_channels * kh * kw, self.dict_weight.shape[0]),
                                        check_invariants=False)
        flat = torch.sparse.mm(align, self.dict_weight)
        return flat.view(self.out_channels, kh, kw, self.in_channels).permute(0, 3, 1, 2).contiguous()

    # -- forward ------------------------------------------------------------------------------------------------

    def _tap_offsets(self, h, w):
        """Per tap, its flat offset (in units of the batch size) in the kernel's padded phase planes."""
        key = (h, w)
        if key not in self._offsets:
            (sh, sw), (ph, pw) = self.stride, self.padding
            hq, wq = -(-(h + 2 * ph) // sh), -(-(w + 2 * pw) // sw)
            d, u, v = self.taps.long()
            off = (((d * sh + u % sh) * sw + v % sw) * hq + u // sh) * wq + v // sw
            planes = self.dict_weight.shape[0] * sh * sw * hq * wq
            if planes <= 1 << 16:
                off = torch.where(off >= 1 << 15, off - (1 << 16), off).to(torch.int16)  # uint16 bit pattern
            elif planes < 1 << 31:
                off = off.to(torch.int32)
            else:
                raise LookupInferenceError(f'{self.source}: input {h}x{w} too large for the lookup kernel')
            self._offsets[key] = off.contiguous()
        return self._offsets[key]

    def _cached(self, key, make):
        """A form of the weights derived on first use (packed for the GEMM, transposed for the matrix-vector
        product): only the layers and paths that run that way pay for the copy."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _post(self, y, residual):
        if residual is not None:
            y = y + residual
        if self.pool is None:
            return torch.relu_(y) if self.relu else y
        if self.backend == 'cpp':
            return torch.ops.lcnn_lookup.max_pool(y, self._pool_list, self.relu)
        kh, kw, sh, sw, ph, pw, ceil = self.pool
        if self.relu:
            y = torch.relu_(y)
        return F.max_pool2d(y, (kh, kw), (sh, sw), (ph, pw), ceil_mode=bool(ceil))

    def _covers_input(self, h, w):
        """True when the kernel spans the whole (unpadded) input: the layer is a fully connected one."""
        return (h, w) == self.kernel_size and self._plain()

    def _plain(self):
        return self.padding == (0, 0) and self.groups == 1 and self.dilation == (1, 1)

    def _dense_call(self, n, h, w):
        """The dense form for inputs of batch n and size h x w, as a function of (x, residual)."""
        covers = self._covers_input(h, w)
        if self.backend == 'cpp' and (covers or (self.kernel_size == (1, 1) and self._plain())):
            weight = self.dense_weight.view(self.out_channels, -1)
            if covers and n == 1:
                # One input vector: the product that skips zero inputs wants the weight transposed.
                packed, wt = None, self._cached('dense_t', lambda: weight.t().contiguous())
            else:
                packed, wt = self._cached('dense_pack', lambda: _pack_rows(weight)), None
            return _Kernel('dense', (packed, wt, self.bias), [*self.kernel_size, *self.stride, self.out_channels],
                           self.relu, self._pool_list)
        if covers:
            # oneDNN's convolution of a kernel covering its input is ~10x slower than this product.
            weight = self.dense_weight.view(self.out_channels, -1)
            return lambda x, residual: self._post(F.linear(x.reshape(x.shape[0], -1), weight, self.bias).view(
                x.shape[0], self.out_channels, 1, 1), residual)
        if self.backend == 'cpp':
            weight = self.dense_weight
            if self.pool is not None:
                # oneDNN's convolution channels-last, its output read as it is by the max pooling, which writes NCHW:
                # LCNN-accurate AlexNet's conv2 (64 -> 192 5x5 + pooling) alone took 21-26% less time at batch 16
                # than in NCHW, at 1 and 2 threads; the whole network 3-5% less.
                weight = self._cached('dense_cl',
                                      lambda: self.dense_weight.contiguous(memory_format=torch.channels_last))
            return _Kernel('aten_conv', (weight, self.bias),
                           [*self.stride, *self.padding, *self.dilation, self.groups], self.relu, self._pool_list)
        return lambda x, residual: self._post(F.conv2d(x, self.dense_weight, self.bias, self.stride, self.padding,
                                                       self.dilation, self.groups), residual)

    def _lookup_torch(self, x, residual):
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding

        def csr():
            d, u, v = self.taps.long()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # torch's "sparse CSR is beta" notice; the one warning is ours
                return torch.sparse_csr_tensor(self.rowptr, (d * kh + u) * kw + v, self.values,
                                               (self.out_channels, self.dict_weight.shape[0] * kh * kw),
                                               check_invariants=False)

        resp = F.conv2d(x, self.dict_weight[:, :, None, None], padding=(ph, pw))
        cols = F.unfold(resp, (kh, kw), stride=(sh, sw))
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        y = torch.sparse.mm(self._cached('csr', csr), cols.transpose(0, 1).reshape(cols.shape[1], -1))
        y = y.view(self.out_channels, n, ho, wo).transpose(0, 1) + self.bias.view(-1, 1, 1)
        return self._post(y, residual)

    def forward(self, x, residual=None):
        """The block's output; `residual` (shaped like the output) is added before the ReLU, as in a residual
        block whose sum this layer ends (see LookupResidual)."""
        return self._run(x, residual, self.path_for(x.shape[0]))

    def _run(self, x, residual, path):
        if x.requires_grad:
            x = x.detach()
        if x.dtype != torch.float32 or x.dim() != 4:
            raise LookupInferenceError(f'{self.source or "lookup layer"}: expected a 4-D float32 input, got '
                                       f'{x.dim()}-D {x.dtype}')
        if x.device.type != 'cpu':
            raise LookupInferenceError(f'{self.source or "lookup layer"}: the input is on {x.device}; the lookup '
                                       f'engine runs on CPU: pass x.cpu()')
        n, c, h, w = x.shape
        self._check_channels(c)
        return self._call_for(path, n, h, w)(x, residual)

    def _check_channels(self, c):
        """The kernels read the input's planes unchecked: an input of other channels is refused here."""
        if c != self.in_channels:
            raise LookupInferenceError(f'{self.source or "lookup layer"}: expected an input of {self.in_channels} '
                                       f'channels, got {c}')

    def _call_for(self, path, n, h, w):
        """The call of this form for inputs of batch n and size h x w, built once: at batch 1 the Python around a
        kernel would otherwise cost a good part of a small layer's time."""
        key = (path, n == 1, h, w)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = self._dense_call(n, h, w) if path == 'dense' else self._lookup_call(n, h, w)
        return call

    def output_size(self, h, w):
        """Height and width of the output for an h x w input (after the fused pooling)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if self.pool is None:
            return h, w
        kh, kw, sh, sw, ph, pw, ceil = self.pool
        return _pooled_size(h, kh, sh, ph, ceil), _pooled_size(w, kw, sw, pw, ceil)

    def _lookup_call(self, n, h, w):
        """The lookup form for inputs of batch n and size h x w, as a function of (x, residual)."""
        if self.backend == 'torch':
            return self._lookup_torch
        dictionary = self.dict_weight
        if n == 1 and (h, w) == (1, 1) and self._covers_input(h, w):
            # A fully connected dictionary at batch 1: the product that skips zero inputs, on the transpose.
            packed, dt = None, self._cached('dict_t', lambda: dictionary.t().contiguous())
        else:
            packed, dt = self._cached('dict_pack', lambda: _pack_rows(dictionary)), None
        if self._covers_input(h, w):
            rowptr, offsets, values = self._cached('fc_taps', lambda: self._block_major(h, w))
        else:
            rowptr, offsets, values = self.rowptr, self._tap_offsets(h, w), self.values
        return _Kernel('conv', (packed, dt, rowptr, offsets, values, self.bias), self._geom + [dictionary.shape[0]],
                       self.relu, self._pool_list)

    def _block_major(self, h, w):
        """The taps of a fully connected use reordered block-major: for each block of _FC_BLOCK dictionary
        responses, every output's taps into it (rowptr (blocks, outputs + 1), one CSR per block). A block pass
        then reads one contiguous stream of taps while its responses stay in cache (the order of a row's taps
        within a block is kept). Responses that fit one block keep the CSR taps themselves."""
        offsets = self._tap_offsets(h, w)
        (sh, sw) = self.stride
        responses = self.dict_weight.shape[0] * sh * sw * -(-h // sh) * -(-w // sw)
        blocks = -(-responses // _FC_BLOCK)
        if blocks == 1:
            return self.rowptr, offsets, self.values
        flat = offsets.long() & 0xFFFF if offsets.dtype == torch.int16 else offsets.long()
        rows = torch.repeat_interleave(torch.arange(self.out_channels), self.rowptr.diff())
        key = flat // _FC_BLOCK * self.out_channels + rows
        order = torch.argsort(key, stable=True)
        starts = torch.zeros(blocks * self.out_channels + 1, dtype=torch.int64)
        starts[1:] = torch.bincount(key, minlength=blocks * self.out_channels).cumsum(0)
        grid = torch.arange(blocks)[:, None] * self.out_channels + torch.arange(self.out_channels + 1)[None, :]
        return starts[grid].contiguous(), offsets[order].contiguous(), self.values[order].contiguous()

    def extra_repr(self):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        s = f'{self.in_channels} -> {self.out_channels}, {kh}x{kw}, stride {sh}x{sw}, pad {ph}x{pw}'
        if self.has_lookup:
            density = self.values.numel() / max(1, self.out_channels * self.dict_weight.shape[0] * kh * kw)
            s += f', dictionary {self.dict_weight.shape[0]}, {100 * density:.2f}% taps'
        if self.fused:
            s += ', fused ' + '+'.join(self.fused)
        return s + f', path {self.path}' + (f', batch path {self.batch_path}' if self.batch_path != self.path else '')


class LookupResidual(nn.Module):
    """Inference form of a residual block as the ResNet model files build it, ConcatTable(body, shortcut) ->
    CAddTable [-> ReLU]: `body` ends with a LookupConv2d that adds the shortcut's output (and applies the ReLU)
    in its output loop, so the sum never makes a pass of its own over memory."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        residual = x if type(self.shortcut) is nn.Identity else self.shortcut(x)
        layers = self.body._modules.values() if isinstance(self.body, nn.Sequential) else [self.body]
        *head, last = layers
        for m in head:
            x = m(x)
        return last(x, residual)


def _is_identity(m):
    """True for modules that return their input in eval mode (a Dropout that rescales at test time does not)."""
    if isinstance(m, activation.Dropout):
        return not (m.training or m.stochastic_inference or (m.p > 0 and m.v1))
    return type(m) is nn.Identity or (type(m) is nn.Dropout and not m.training)


def _leaves(module):
    """The modules a Sequential runs, nested Sequentials opened (running them in turn is the same forward)."""
    for m in module._modules.values():
        if type(m) is nn.Sequential:
            yield from _leaves(m)
        else:
            yield m


class _Plan:
    """The longest head of a network that the kernels can run as one run_plan call, for one input shape (its
    layers, then the classifier that ends it: pooling, views, Linear, ReLU, softmax), and the modules after it (run
    in Python)."""

    KINDS = {'conv': 1, 'dense': 2, 'aten_conv': 3, 'avg_pool': 4, 'reshape': 5, 'linear': 6, 'log_softmax': 7,
             'softmax': 8, 'relu': 9}  # run_plan's instruction numbers

    def __init__(self, network, n, c, h, w):
        self.tensors, self.code, self.rest = [], [], []
        # The instructions run image by image (see run_plan): the blocks before the first fully connected layer or
        # ATen convolution (oneDNN's results for one image can differ in the last bits from its results for a batch).
        self.per_image, batched = 0, False
        slots = {}

        def slot(t):
            if t is None:
                return -1
            if id(t) not in slots:
                slots[id(t)] = len(self.tensors)
                self.tensors.append(t)
            return slots[id(t)]

        first = True
        channels = c

        def step(layer, h, w, src=0, dst=0, res=0):
            nonlocal batched, first, channels
            call = layer._call_for(layer.path_for(n), n, h, w) if isinstance(layer, LookupConv2d) else None
            if not isinstance(call, _Kernel):
                return None
            if first:
                layer._check_channels(c)  # the network's input, which no layer after the first could be handed
            first = False
            batched = batched or call.kind == 'aten_conv' or call.geom[:2] == [h, w]
            self.code += [self.KINDS[call.kind], src, dst, res, int(call.relu), h, w]
            self.code += [slot(t) for t in call.tensors]
            self.code += [len(call.geom), *call.geom, len(call.pool), *call.pool]
            if not src:
                channels = layer.out_channels
            return layer.output_size(h, w)

        def block(m, h, w):
            if isinstance(m, LookupConv2d):
                return step(m, h, w)
            if isinstance(m, LookupResidual):
                body = list(m.body._modules.values()) if isinstance(m.body, nn.Sequential) else [m.body]
                short = m.shortcut
                if isinstance(short, nn.Sequential) and len(short) == 1:
                    short = short[0]
                if not body:
                    return None
                self.code.append(0)  # the block's input, for the shortcut and the sum
                if type(short) is not nn.Identity and step(short, h, w, src=1, dst=1) is None:
                    return None
                for i, layer in enumerate(body):
                    if (hw := step(layer, h, w, res=int(i == len(body) - 1))) is None:
                        return None
                    h, w = hw
                return h, w
            return (h, w) if _is_identity(m) else None

        leaves = list(_leaves(network))
        for i, m in enumerate(leaves):
            code = len(self.code)
            if (hw := block(m, h, w)) is None:
                del self.code[code:]  # a block that cannot run whole stays in Python with all after it
                self.rest = leaves[i:]
                break
            h, w = hw
            if not batched:
                self.per_image = len(self.code)
        if self.code:
            # The classifier that follows the last kernel, on the whole batch (as module by module).
            out = (n, channels, h, w)
            while self.rest and (out := self._classifier_step(self.rest[0], out, slot)) is not None:
                self.rest.pop(0)
        # Registering a hook adds it to these dicts in place. Checked as one list, ResNet-18's took 0.5 us per forward,
        # module by module 3.9 us.
        self.hook_dicts = [d for m in network.modules() if m is not network
                           for d in (m._forward_hooks, m._forward_pre_hooks)]
        # Converted for the kernels once, not on every call (see lookup.cpp's Plan).
        self.run = _state['kernels'].Plan(self.tensors, self.code, self.per_image).run if self.code else None

    def _classifier_step(self, m, size, slot):
        """Append m as one of run_plan's classifier instructions (the same ATen call its forward makes) and return
        its output's shape; None (nothing appended) for a module they do not cover, or one that would fail on
        this shape (it then runs in Python, which raises its own error)."""
        if _is_identity(m):
            return size
        meta = torch.empty(size, device='meta')
        kind = type(m)
        try:
            if kind is nn.AvgPool2d:
                k, s, p = (nn.modules.utils._pair(v) for v in (m.kernel_size, m.stride, m.padding))
                out = F.avg_pool2d(meta, k, s, p, m.ceil_mode, m.count_include_pad, m.divisor_override)
                self.code += [self.KINDS['avg_pool'], 9, *k, *s, *p, int(m.ceil_mode), int(m.count_include_pad),
                              m.divisor_override or 0]
            elif kind in (shape.View, shape.Reshape, nn.Flatten):
                out = m(meta)
                self.code += [self.KINDS['reshape'], out.dim(), *out.shape]
            elif kind is nn.Linear and size[-1] == m.in_features:
                out = torch.empty((*size[:-1], m.out_features), device='meta')
                bias = None if m.bias is None else m.bias.detach()
                self.code += [self.KINDS['linear'], slot(m.weight.detach()), slot(bias)]
            elif kind is nn.ReLU:
                out = meta
                self.code.append(self.KINDS['relu'])
            elif kind in (activation.LogSoftMax, activation.SoftMax) and not m.instance:
                out = meta
                name = 'log_softmax' if kind is activation.LogSoftMax else 'softmax'
                self.code += [self.KINDS[name], activation._lua_softmax_dim(meta)]
            else:
                return None
        except RuntimeError:
            return None
        return tuple(out.shape)

    def hooked(self):
        """True when a hook waits on a module inside the network (layer timing, capture of inputs): the plan would
        run it without calling it, or skip the nested Sequential it sits in, so the forward goes module by
        module."""
        hooks = nn.modules.module
        return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks) or any(self.hook_dicts)

    def __call__(self, x):
        if self.run is not None:
            x = self.run(x)
        for m in self.rest:
            x = m(x)
        return x


def _refuse_training(where):
    # train() would switch dropouts (and any batch norm left unfused) to training while the fused ones stay folded:
    # outputs of no model at all.
    raise LookupInferenceError(f'{where}: a compiled lookup model only infers (batch norm is folded into its weights, '
                               f'nothing takes gradients); train the original model, then compile it again')


# Plans kept per network, for the input shapes used last (a loop over a dataset alternates full batches and a last
# short one; rebuilding a plan took 0.05 ms for the fast AlexNet and 0.16 ms for ResNet-18, 2-4% of their forward
# at batch 1).
_PLANS_KEPT = 8


class LookupNetwork(nn.Sequential):
    """A compiled Sequential network. Its forward runs the lookup layers (and the residual blocks, dropouts and
    nested Sequentials between them) and the classifier after them in one call into the kernels, planned once per
    input shape; whatever follows the first module that call cannot run (a max pooling between blocks, a Dropout
    that rescales, a Tanh, ...) runs as the Sequential would. A
    batch goes image by image through the layers before the first fully connected one (or PyTorch convolution),
    one image per thread at a time, and on the whole batch after it."""

    def forward(self, x):
        if x.dtype != torch.float32 or x.dim() != 4 or x.device.type != 'cpu':
            return super().forward(x)  # each layer then says what is wrong with the input
        plans = self.__dict__.setdefault('_plans', {})
        key = (_state['generation'], self.training, *x.shape)  # train() would make dropouts count
        plan = plans.get(key)
        if plan is None:
            for stale in [k for k in plans if k[0] != key[0]]:
                del plans[stale]  # made on forms a set_path or load_state_dict has since replaced
            if len(plans) >= _PLANS_KEPT:
                del plans[next(iter(plans))]  # the one made first
            plan = plans[key] = _Plan(self, *x.shape)
        if plan.hooked():
            return super().forward(x)
        return plan(x.detach() if x.requires_grad else x)

    def train(self, mode=True):
        if mode:
            _refuse_training('the compiled network')  # before any module has changed mode
        return super().train(False)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop('_plans', None)  # holds the layers' tensors again; rebuilt on the next forward
        return state


def _as_network(model):
    """A compiled model whose top is a plain Sequential runs as a LookupNetwork (when the kernels are built)."""
    if type(model) is nn.Sequential and lookup_layers(model) and all(m.backend == 'cpp' for m in lookup_layers(model)):
        model.__class__ = LookupNetwork
    return model


# ----------------------------------------------------------------------------------------------------------------
# compile()


def _is_sequential(m):
    return isinstance(m, nn.Sequential)


def _absorb(children, i, prefix, backend_name):
    """Fuse children[i] (a convolution) with the batch norm / ReLU / max pooling that follow it.

    Returns (fused module, number of children consumed)."""
    conv = children[i][1]
    j, bn, relu, pool, fused = i + 1, None, False, None, []
    if j < len(children) and isinstance(children[j][1], nn.BatchNorm2d) and _bn_affine(children[j][1]) is not None:
        bn, j = children[j][1], j + 1
        fused.append(legacy.lua_type(bn))
    if j < len(children) and type(children[j][1]) is nn.ReLU:
        relu, j = True, j + 1
        fused.append(legacy.lua_type(children[j - 1][1]))
    if j < len(children) and isinstance(children[j][1], nn.MaxPool2d) and _pool_params(children[j][1]):
        pool, j = _pool_params(children[j][1]), j + 1
        fused.append(legacy.lua_type(children[j - 1][1]))
    source = prefix + children[i][0]
    if isinstance(conv, PooledSpatialConvolution):
        made = LookupConv2d.from_pooled(conv, bn, relu, pool, backend_name=backend_name, source=source, fused=fused)
    else:
        made = LookupConv2d.from_conv(conv, bn, relu, pool, backend_name=backend_name, source=source, fused=fused)
    return made, j - i


def _convertible(m):
    if isinstance(m, PooledSpatialConvolution):
        return True
    return (isinstance(m, nn.Conv2d) and m.padding_mode == 'zeros' and not isinstance(m.padding, str)
            and type(m) is nn.Conv2d)


def _rebuild(module, prefix, backend_name):
    """An inference copy of `module`: convolution blocks fused, everything else deep-copied (containers are
    re-created around their new children so the big training weights are never duplicated)."""
    if _convertible(module):
        return _absorb([('', module)], 0, prefix.rstrip('.'), backend_name)[0]
    if not module._modules:
        return copy.deepcopy(module)
    new = copy.copy(module)
    for key, value in module.__dict__.items():
        if key.startswith('_') and isinstance(value, (dict, set)):
            new.__dict__[key] = copy.copy(value)  # hook and bookkeeping tables must not be shared
    new._parameters = collections.OrderedDict((k, copy.deepcopy(v)) for k, v in module._parameters.items())
    new._buffers = collections.OrderedDict((k, copy.deepcopy(v)) for k, v in module._buffers.items())
    new._forward_hooks = collections.OrderedDict()
    new._forward_pre_hooks = collections.OrderedDict()
    new._modules = collections.OrderedDict()
    children = list(module._modules.items())
    i = 0
    while i < len(children):
        name, child = children[i]
        if child is not None and _convertible(child) and _is_sequential(module):
            made, used = _absorb(children, i, prefix, backend_name)
            new._modules[name] = made
            i += used
            continue
        new._modules[name] = None if child is None else _rebuild(child, f'{prefix}{name}.', backend_name)
        i += 1
    return _fuse_residual(new) or new


def _last_conv(body):
    """The LookupConv2d a residual body ends with, when it can take the sum into its output loop."""
    last = body[-1] if isinstance(body, nn.Sequential) and len(body) else body
    if isinstance(last, LookupConv2d) and last.pool is None and not last.relu:
        return last
    return None


def _fuse_residual(seq):
    """Sequential(ConcatTable(body, shortcut), CAddTable [, ReLU]) as one LookupResidual, else None."""
    kids = list(seq._modules.values()) if isinstance(seq, nn.Sequential) else []
    if not 2 <= len(kids) <= 3 or type(kids[0]) is not containers.ConcatTable or type(kids[1]) is not tables.CAddTable \
            or (len(kids) == 3 and type(kids[2]) is not nn.ReLU) or len(kids[0]) != 2:
        return None
    body, shortcut = kids[0][0], kids[0][1]
    last = _last_conv(body)
    if last is None:
        return None
    last.relu = len(kids) == 3
    last.fused += tuple(legacy.lua_type(m) for m in kids[1:])
    return LookupResidual(body, shortcut)


def lookup_layers(model):
    """The LookupConv2d modules of a compiled model, in registration order (forward order in a Sequential)."""
    return [m for m in model.modules() if isinstance(m, LookupConv2d)]


def _capture_inputs(model, example_input):
    """Run `model` once and return {layer: input tensor} for each LookupConv2d."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.setdefault(mod, args[0].detach().clone()))
             for m in lookup_layers(model)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _measure(layer, x, repeats):
    """(dense ms, lookup ms) of one layer on input x (lookup is None for plain convolutions): medians of `repeats`
    calls after warm-up, the two forms alternating so that load from other processes hits both alike. The layer
    is left on its dense path, so that choosing dense afterwards does not fold the weights again."""
    layer.set_path('dense')
    paths = ['dense', 'lookup'] if layer.has_lookup else ['dense']
    times = {p: [] for p in paths}
    with torch.no_grad():
        for r in range(repeats + 2):
            for p in paths:
                t0 = time.perf_counter()
                layer._run(x, None, p)
                if r >= 2:
                    times[p].append(time.perf_counter() - t0)
    ms = {p: 1e3 * statistics.median(t) for p, t in times.items()}
    return ms['dense'], ms.get('lookup')


def compile(model, example_input=None, *, path='auto', backend=None, repeats=5):
    """An inference-only copy of `model` in which each PooledSpatialConvolution (and each plain convolution),
    together with the eval batch norm, ReLU and max pooling right after it in a Sequential, is one LookupConv2d;
    a residual block (ConcatTable, CAddTable, ReLU) becomes a LookupResidual whose sum and ReLU run in the output
    loop of its last convolution.

    path: 'lookup' or 'dense' forces every lookup-capable layer; 'auto' chooses per layer by timing both forms of
    each layer on the input it gets inside the network (medians of `repeats` alternating runs) and keeping the
    faster (lookup only when clearly so: LOOKUP_MARGIN). The input is `example_input` (its choice holds for single
    images and batches alike), or else random inputs at the network's input size (SYNTHETIC_SIZE, lcnn's -cropSize
    default, with the first layer's channel count) at the batch sizes of SYNTHETIC_BATCHES: the first decides a
    layer's form for single images (`path`), the second for batches (`batch_path`); a network that does not take
    that size falls back to a multiplication count (see _cost_ratio). A layer kept dense whose lookup form timed
    within NETWORK_TIE of it is settled on the whole network's time: at batch 1 every such layer (see
    _settle_single), at a batch those whose dense form is a PyTorch convolution (see _keep_images_apart). backend:
    'auto', 'cpp' or 'torch' (see `resolve_backend()`). Outputs equal the eval-mode model up to float rounding
    (batch norm is folded)."""
    if path not in ('auto', 'lookup', 'dense'):
        raise LookupInferenceError(f"compile: path '{path}' is unknown: use auto, lookup or dense")
    if not isinstance(model, nn.Module):
        raise LookupInferenceError(f'compile: expected a torch.nn.Module, got {type(model).__name__} (for a Torch7 '
                                   f'file, t7.load_model(path) makes one)')
    _check_example('compile', example_input, optional=True)
    if not isinstance(repeats, int) or repeats < 1:
        raise LookupInferenceError(f'compile: repeats must be a positive integer, got {repeats!r}')
    devices = {t.device.type for t in list(model.parameters()) + list(model.buffers())}
    if 'meta' in devices:
        raise LookupInferenceError('compile: the model is on the meta device, which holds shapes but no weights; '
                                   'load its weights first')
    if devices - {'cpu'}:
        raise LookupInferenceError(f'compile: the model is on {", ".join(sorted(devices - {"cpu"}))}; the lookup '
                                   f'engine runs on CPU: pass model.cpu()')
    backend_name = resolve_backend(backend)
    compiled = _as_network(_rebuild(model, '', backend_name).eval())
    for p in compiled.parameters():
        p.requires_grad_(False)
    layers = [m for m in lookup_layers(compiled) if m.has_lookup]
    if path in ('lookup', 'dense'):
        for layer in layers:
            layer.set_path(path)
        return compiled
    if not layers:
        return compiled
    if example_input is None:
        runs = _synthetic_inputs(compiled)
        if runs is None:
            for layer in layers:
                layer.set_path('lookup' if _cost_ratio(layer) >= COST_MODEL_MIN_RATIO else 'dense')
            return compiled
    else:
        runs = [(example_input, _capture_inputs(compiled, example_input))]
    ties = [set() for _ in runs]  # per run, the layers kept dense whose two forms timed within NETWORK_TIE
    for layer in layers:
        faster = []
        for (_, inputs), tied in zip(runs, ties):
            if layer in inputs:
                dense, lookup = _measure(layer, inputs[layer], repeats)
                faster.append('lookup' if lookup <= LOOKUP_MARGIN * dense else 'dense')
                if faster[-1] == 'dense' and NETWORK_TIE * lookup <= dense:
                    tied.add(layer)
        if faster:
            # One example decides both; the synthetic batch of one decides `path`, the batch `batch_path`.
            layer.set_path(faster[0], faster[-1])
    for (x, inputs), tied in zip(runs, ties):
        if x.shape[0] == 1:
            _settle_single(compiled, x, tied, repeats, both=len(runs) == 1)
        else:
            _keep_images_apart(compiled, x, inputs, tied, repeats)
    return compiled


def _settle_single(compiled, x, ties, repeats, both):
    """At batch 1 the whole network is one call into the kernels whatever the forms, but a layer's neighbours still
    change what its form costs (which core's cache holds its input, how PyTorch's convolution splits the image among
    the threads): each layer in `ties` takes its lookup form for single images (for batches too when `both`, an
    example of one image deciding both) when the whole network on the image x then times faster (NETWORK_MARGIN).
    ResNet-18-accurate's 64 -> 128 stride-2 layer timed 0.94-1.16x alone, in either order from run to run; the
    network took 1.8-2.6% less time with its lookup form at 1 and 2 threads (medians of 60)."""
    for layer in lookup_layers(compiled):
        if layer in ties:
            dense, lookup = _network_times(compiled, x, layer, repeats)
            if lookup <= NETWORK_MARGIN * dense:
                layer.set_path('lookup', 'lookup' if both else layer.batch_path)


def _keep_images_apart(compiled, x, inputs, ties, repeats):
    """A batch runs image by image only up to the first layer on an ATen convolution (see _Plan): one chosen there
    for a batch sends every layer after it through memory with the whole batch. A layer whose lookup form timed
    about as fast (`ties`) takes it when that makes the whole network faster on the batch x (ResNet-18-accurate at
    batch 16: its 64 -> 128 stride-2 layer timed within 5% in both forms alone, and the network took 3-7% longer
    with the dense one). Layers in network order, up to the first that stays on an ATen convolution."""
    n = x.shape[0]
    for layer in lookup_layers(compiled):
        if layer not in inputs or layer.path_for(n) != 'dense':
            continue
        call = layer._call_for('dense', n, *inputs[layer].shape[2:])
        if not (isinstance(call, _Kernel) and call.kind == 'aten_conv'):
            continue
        if layer not in ties:
            return
        dense, lookup = _network_times(compiled, x, layer, repeats)
        if lookup > NETWORK_MARGIN * dense:
            return
        layer.set_path(layer.path, 'lookup')


def _network_times(compiled, x, layer, repeats):
    """(dense ms, lookup ms): medians of 2 x `repeats` forwards of the whole network on x (6 x `repeats` on one
    image) with `layer` on each form for x's batch size (`path` for one image, `batch_path` for more), two at a time,
    the forms alternating; the layer is left on the dense form for that size. A forward of one image is short, and
    its ratio of the two forms noisier: ResNet-18-accurate's over six compiles spread over 0.98-1.04 in medians of
    10 forwards each way, over 0.97-0.99 in medians of 30."""
    single, batch, times = layer.path, layer.batch_path, {'dense': [], 'lookup': []}
    one_image = x.shape[0] == 1
    with torch.no_grad():
        for _ in range(3 * repeats if one_image else repeats):
            for form in ('lookup', 'dense'):
                layer.set_path(*((form, batch) if one_image else (single, form)))
                compiled(x)  # untimed: builds the plan and the form's packed weights
                for _ in range(2):
                    t0 = time.perf_counter()
                    compiled(x)
                    times[form].append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times['dense']), 1e3 * statistics.median(times['lookup'])


def _check_example(where, example_input, optional=False):
    if example_input is None and optional:
        return
    if not isinstance(example_input, torch.Tensor):
        raise LookupInferenceError(f'{where}: the example input must be a tensor (a batch of images, N x C x H x W), '
                                   f'got {type(example_input).__name__}')


# A layer takes its lookup form only when that timed at most this share of its dense form: on a near tie the two
# medians swap places from one run to the next with the machine's load, and the dense form can never be slower
# than itself.
LOOKUP_MARGIN = 0.95
# A layer whose lookup form timed alone at most 1 / NETWORK_TIE of its dense form takes it (at batch 1, or at a batch
# to keep it image by image: see _settle_single and _keep_images_apart) when the whole network then times at most
# NETWORK_MARGIN of its time with the dense form (a network's median moves less with load than a layer's).
# ResNet-18-accurate's 64 -> 128 stride-2 layer timed 0.95-1.05x alone at batch 16, the network 0.86-0.98x with it
# (medians of 5); at batch 1, over 18 compiles at 1 and 2 threads, 0.94-1.16x alone (beyond the band of 1 / 0.9 in
# some) and the network 0.96-0.99x with it (medians of 30).
NETWORK_TIE = 0.8
NETWORK_MARGIN = 0.99

# Height and width of the random inputs `compile` times layers on when it is given no example (lcnn's -cropSize
# default, the size the ImageNet models of both Lua repositories take), and their batch sizes: one image, and a
# batch standing for all others.
SYNTHETIC_SIZE = 224
SYNTHETIC_BATCHES = (1, 16)


def _synthetic_inputs(compiled):
    """[(input, {layer: its input})] from one forward of a random input at SYNTHETIC_SIZE per batch size of
    SYNTHETIC_BATCHES, or None when the network does not take that size."""
    first = lookup_layers(compiled)[0]
    gen = torch.Generator().manual_seed(0)
    runs = []
    try:
        for n in SYNTHETIC_BATCHES:
            x = torch.randn(n, first.in_channels, SYNTHETIC_SIZE, SYNTHETIC_SIZE, generator=gen)
            runs.append((x, _capture_inputs(compiled, x)))
    except (RuntimeError, ValueError, LookupInferenceError):
        return None
    return runs


def _cost_ratio(layer):
    """Dense over lookup multiplications per output position (no input size needed)."""
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    dense = layer.out_channels * layer.in_channels * kh * kw
    lookup = layer.dict_weight.numel() * sh * sw + layer.values.numel()
    return dense / max(lookup, 1)


# ----------------------------------------------------------------------------------------------------------------
# Per-layer timing for `main.py -benchmark -lookup`


@dataclass
class LayerTiming:
    """One row of the timing table: milliseconds of a layer (or of the whole network) in both forms; `network`, for
    a layer on its lookup form that timed slower alone, the whole network's time with that form over its time with
    the dense one (compile keeps a near tie on lookup for it: see _settle_single and _keep_images_apart)."""
    name: str
    dense_ms: float
    lookup_ms: float | None
    chosen: str
    network: float | None = None


_SHORT = {'SpatialBatchNormalization': 'bn', 'ReLU': 'relu', 'SpatialMaxPooling': 'pool', 'CAddTable': 'add'}


def time_layers(model, example_input, repeats=20):
    """Measured milliseconds per fused layer, dense vs lookup, and a totals row.

    `model` is a compiled model, or any model (compiled here with `example_input`). Each layer is timed on the
    input it gets inside the network (median of `repeats` after warm-up). The last row times the whole network:
    dense = every lookup-capable layer on its folded dense kernel, lookup = the network as compiled."""
    _check_example('time_layers', example_input)
    network_repeats = max(3, repeats // 4)  # fewer rounds where each times many forwards: compile, whole network
    compiled = model if lookup_layers(model) else compile(model, example_input, repeats=network_repeats)
    compiled.eval()
    inputs = _capture_inputs(compiled, example_input)
    rows = []
    batch = example_input.shape[0]
    for layer in lookup_layers(compiled):
        if layer not in inputs:
            continue
        chosen = (layer.path, layer.batch_path)
        dense, lookup = _measure(layer, inputs[layer], repeats)
        layer.set_path(*chosen)
        network = None
        if layer.path_for(batch) == 'lookup' and lookup > dense:
            network_dense, network_lookup = _network_times(compiled, example_input, layer, network_repeats)
            layer.set_path(*chosen)
            network = network_lookup / network_dense
        x = inputs[layer]
        (kh, kw), sh = layer.kernel_size, layer.stride[0]
        what = f'{layer.in_channels}->{layer.out_channels} {kh}x{kw}/{sh}'
        for lua in layer.fused:
            what += '+' + _SHORT.get(lua.split('.')[-1], lua.split('.')[-1])
        rows.append(LayerTiming(f'{layer.source or "model"} ({what}, in {x.shape[2]}x{x.shape[3]})', dense, lookup,
                                layer.path_for(batch), network))
    chosen = {layer: (layer.path, layer.batch_path) for layer in lookup_layers(compiled)}
    try:
        for layer in chosen:
            layer.set_path('dense')
        dense_total = _time_ms(lambda: compiled(example_input), repeats)
    finally:
        for layer, paths in chosen.items():
            layer.set_path(*paths)
    compiled_total = _time_ms(lambda: compiled(example_input), repeats)
    rows.append(LayerTiming('total (whole network)', dense_total, compiled_total, 'as compiled'))
    return rows


def format_timing(rows):
    """The timing rows as a text table (milliseconds, speedup of lookup over dense per row)."""
    head = ('layer', 'dense ms', 'lookup ms', 'speedup', 'chosen')
    body = []
    for r in rows:
        lookup = '-' if r.lookup_ms is None else f'{r.lookup_ms:.3f}'
        speed = '-' if r.lookup_ms is None else f'{r.dense_ms / r.lookup_ms:.2f}x'
        chosen = r.chosen if r.network is None else f'{r.chosen} (network {r.network:.2f}x)'
        body.append((r.name, f'{r.dense_ms:.3f}', lookup, speed, chosen))
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    fmt = lambda row: '  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    lines = [fmt(head), '  '.join('-' * w for w in widths)] + [fmt(row) for row in body]
    if any(r.network is not None for r in rows):
        lines.append('(network Nx: the whole network\'s time with that layer on lookup over its time with it on dense, '
                     'timed here; compile keeps such a near tie on lookup when it found the network faster by 1%)')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------------------
# HDF5 export / load


_FORMAT = 'lcnn-lookup-inference'
_VERSION = 2  # 2: LookupResidual nodes, batch_path


def _none_to(v, default):
    return default if v is None else v


# Modules stored by their attributes alone: (type name in the file, class test, attributes).
_SIMPLE = [
    ('Concat', lambda m: isinstance(m, containers.Concat), ('dimension',)),
    ('ConcatTable', lambda m: isinstance(m, containers.ConcatTable), ()),
    ('CAddTable', lambda m: isinstance(m, tables.CAddTable), ('inplace',)),
    ('MulConstant', lambda m: isinstance(m, activation.MulConstant), ('constant_scalar', 'inplace')),
    ('LogSoftMax', lambda m: isinstance(m, activation.LogSoftMax), ('instance',)),
    ('SoftMax', lambda m: isinstance(m, activation.SoftMax), ('instance',)),
    ('Dropout', lambda m: isinstance(m, activation.Dropout), ('p', 'v1')),
    ('SpatialDropout', lambda m: isinstance(m, activation.SpatialDropout), ('p',)),
    ('Threshold', lambda m: type(m) is nn.Threshold, ('threshold', 'value', 'inplace')),
    ('nn.Dropout', lambda m: type(m) in (nn.Dropout, nn.Dropout2d), ('p',)),
    ('Sequential', lambda m: isinstance(m, nn.Sequential), ()),
    ('Identity', lambda m: isinstance(m, nn.Identity), ()),
    ('ReLU', lambda m: type(m) is nn.ReLU, ('inplace',)),
    ('LogSoftmax', lambda m: isinstance(m, nn.LogSoftmax), ('dim',)),
    ('Softmax', lambda m: isinstance(m, nn.Softmax), ('dim',)),
    ('Flatten', lambda m: isinstance(m, nn.Flatten), ('start_dim', 'end_dim')),
    ('ChannelInterlace', lambda m: isinstance(m, ChannelInterlace), ('channel', 'group')),
]


def _write_node(group, module, where):
    lua = module.__dict__.get('lua_type')
    if lua:
        group.attrs['lua_type'] = lua
    kind, attrs = next(((name, attrs) for name, test, attrs in _SIMPLE if test(module)), (None, ()))
    if kind is not None:
        for a in attrs:
            group.attrs[a] = getattr(module, a)
    elif isinstance(module, LookupConv2d):
        kind = 'LookupConv2d'
        m = module
        for a in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation', 'groups', 'relu',
                  'path', 'batch_path', 'source'):
            group.attrs[a] = getattr(m, a)
        group.attrs['pool'] = np.array(m.pool or (), dtype=np.int64)
        group.attrs['fused'] = '+'.join(m.fused)
        group['bias'] = m.bias.numpy()
        if m.has_lookup:
            kh, kw = m.kernel_size
            d, u, v = m.taps.long()
            group['dict_weight'] = m.dict_weight.numpy()
            group['rowptr'] = m.rowptr.numpy()
            group['col'] = ((d * kh + u) * kw + v).to(torch.int32).numpy()
            group['values'] = m.values.numpy()
        else:
            group['dense_weight'] = m.dense_weight.numpy()
    elif isinstance(module, LookupResidual):
        kind = 'LookupResidual'
    elif type(module) is nn.MaxPool2d:
        kind = 'MaxPool2d'
        for a in ('kernel_size', 'stride', 'padding', 'dilation'):
            group.attrs[a] = _pair(getattr(module, a))
        group.attrs['ceil_mode'] = module.ceil_mode
    elif type(module) is nn.AvgPool2d:
        kind = 'AvgPool2d'
        for a in ('kernel_size', 'stride', 'padding'):
            group.attrs[a] = _pair(getattr(module, a))
        group.attrs['ceil_mode'] = module.ceil_mode
        group.attrs['count_include_pad'] = module.count_include_pad
        group.attrs['divisor_override'] = _none_to(module.divisor_override, 0)
    elif type(module) is nn.BatchNorm2d:
        kind = 'BatchNorm2d'
        group.attrs['num_features'], group.attrs['eps'] = module.num_features, module.eps
        group.attrs['affine'] = module.affine
        group.attrs['track_running_stats'] = module.track_running_stats
        for t in ('weight', 'bias', 'running_mean', 'running_var'):
            if getattr(module, t) is not None:
                group[t] = getattr(module, t).detach().numpy()
    elif type(module) is nn.Linear:
        kind = 'Linear'
        group['weight'] = module.weight.detach().numpy()
        if module.bias is not None:
            group['bias'] = module.bias.detach().numpy()
    elif type(module) is shape.View:
        kind = 'View'
        group.attrs['sizes'] = np.array(module.sizes, dtype=np.int64)
        group.attrs['num_input_dims'] = _none_to(module.num_input_dims, -1)
    else:
        raise LookupInferenceError(f'export: cannot store {type(module).__name__} at {where or "model"}; compile '
                                   f'the model first (layers.lookup.compile) or remove that module')
    group.attrs['type'] = kind
    if module._modules:
        children = group.create_group('children')
        for i, (name, child) in enumerate(module._modules.items()):
            sub = children.create_group(f'{i:04d}')
            sub.attrs['name'] = name
            _write_node(sub, child, f'{where}.{name}' if where else name)


def export(compiled, path):
    """Write a compiled model to HDF5: per lookup layer its dictionary weight, CSR align taps (rowptr, col over
    (dictionary, row, column), values with batch norm folded), bias, geometry, fused ReLU / pooling and chosen
    path; plain convolutions as folded dense kernels; the rest of the graph (containers, pooling, classifier,
    View, softmax, ...) with its parameters. `load` rebuilds a runnable module from the file alone."""
    import h5py
    with h5py.File(path, 'w') as f:
        f.attrs['format'], f.attrs['version'] = _FORMAT, _VERSION
        _write_node(f.create_group('model'), compiled, '')


def _tensor(group, name):
    return torch.from_numpy(group[name][()]) if name in group else None


def _read_node(group, backend_name):
    a = group.attrs
    kind = a['type']
    kids = []
    if 'children' in group:
        for key in sorted(group['children']):
            sub = group['children'][key]
            kids.append((str(sub.attrs['name']), _read_node(sub, backend_name)))
    tup = lambda name: tuple(int(v) for v in a[name])
    if kind == 'Sequential':
        m = nn.Sequential(collections.OrderedDict(kids))
    elif kind in ('Concat', 'ConcatTable'):
        m = containers.Concat(int(a['dimension'])) if kind == 'Concat' else containers.ConcatTable()
        for name, child in kids:
            m.add_module(name, child)
    elif kind == 'CAddTable':
        m = tables.CAddTable(bool(a['inplace']))
    elif kind == 'MulConstant':
        m = activation.MulConstant(float(a['constant_scalar']), bool(a['inplace']))
    elif kind == 'LogSoftMax':
        m = activation.LogSoftMax(bool(a.get('instance', False)))
    elif kind == 'SoftMax':
        m = activation.SoftMax(bool(a.get('instance', False)))
    elif kind == 'Dropout':
        m = activation.Dropout(float(a['p']), bool(a['v1']))
    elif kind == 'SpatialDropout':
        m = activation.SpatialDropout(float(a['p']))
    elif kind == 'Threshold':
        m = nn.Threshold(float(a['threshold']), float(a['value']), bool(a['inplace']))
    elif kind == 'nn.Dropout':
        m = nn.Dropout(float(a['p']))
    elif kind == 'Identity':
        m = nn.Identity()
    elif kind == 'ReLU':
        m = nn.ReLU(bool(a['inplace']))
    elif kind == 'LogSoftmax':
        m = nn.LogSoftmax(int(a['dim']))
    elif kind == 'Softmax':
        m = nn.Softmax(int(a['dim']))
    elif kind == 'Flatten':
        m = nn.Flatten(int(a['start_dim']), int(a['end_dim']))
    elif kind == 'ChannelInterlace':
        m = ChannelInterlace(int(a['channel']), int(a['group']))
    elif kind == 'LookupResidual':
        parts = dict(kids)
        m = LookupResidual(parts['body'], parts['shortcut'])
    elif kind == 'MaxPool2d':
        m = nn.MaxPool2d(tup('kernel_size'), tup('stride'), tup('padding'), tup('dilation'),
                         ceil_mode=bool(a['ceil_mode']))
    elif kind == 'AvgPool2d':
        m = nn.AvgPool2d(tup('kernel_size'), tup('stride'), tup('padding'), bool(a['ceil_mode']),
                         bool(a['count_include_pad']), int(a['divisor_override']) or None)
    elif kind == 'BatchNorm2d':
        m = nn.BatchNorm2d(int(a['num_features']), float(a['eps']), affine=bool(a['affine']),
                           track_running_stats=bool(a['track_running_stats']))
        with torch.no_grad():
            for t in ('weight', 'bias', 'running_mean', 'running_var'):
                if t in group:
                    getattr(m, t).copy_(_tensor(group, t))
    elif kind == 'Linear':
        w, b = _tensor(group, 'weight'), _tensor(group, 'bias')
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
    elif kind == 'View':
        nid = int(a['num_input_dims'])
        m = shape.View(*[int(s) for s in a['sizes']], num_input_dims=None if nid < 0 else nid)
    elif kind == 'LookupConv2d':
        kh, kw = tup('kernel_size')
        sparse = {}
        if 'col' in group:
            col = _tensor(group, 'col').long()
            taps = torch.stack([col // (kh * kw), col // kw % kh, col % kw])
            sparse = dict(dict_weight=_tensor(group, 'dict_weight'), rowptr=_tensor(group, 'rowptr'), taps=taps,
                          values=_tensor(group, 'values'))
        m = LookupConv2d(int(a['in_channels']), int(a['out_channels']), (kh, kw), tup('stride'), tup('padding'),
                         bias=_tensor(group, 'bias'), dense_weight=_tensor(group, 'dense_weight'),
                         groups=int(a['groups']), dilation=tup('dilation'), relu=bool(a['relu']),
                         pool=tup('pool') or None, path=str(a['path']),
                         batch_path=str(a['batch_path']) if 'batch_path' in a else None, backend_name=backend_name,
                         source=str(a['source']), fused=[t for t in str(a['fused']).split('+') if t], **sparse)
    else:
        raise LookupInferenceError(f'load: unknown module type {kind!r} in {group.name}; the file was written by a '
                                   f'newer version, re-export it with this one')
    if 'lua_type' in a:
        legacy.named(m, str(a['lua_type']))
    return m


def load(path, backend=None):
    """Rebuild the inference module written by `export` (eval mode, ready to run)."""
    import h5py
    try:
        f = h5py.File(path, 'r')
    except OSError as e:
        raise LookupInferenceError(f'load: cannot read {path} as HDF5 ({e}); pass a file written by '
                                   f'layers.lookup.export') from None
    with f:
        if f.attrs.get('format') != _FORMAT or 'model' not in f:
            raise LookupInferenceError(f'load: {path} is not a lookup inference export; write one with '
                                       f'layers.lookup.export')
        if int(f.attrs['version']) > _VERSION:
            raise LookupInferenceError(f'load: {path} has format version {f.attrs["version"]}, this code reads '
                                       f'up to {_VERSION}; update lcnn-torch')
        return _as_network(_read_node(f['model'], resolve_backend(backend)).eval())
