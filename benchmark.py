"""Port of lcnn's benchmark.lua and benchmark/PerformanceModule.lua: the per-module MEM / COMP tree of a network."""
import decimal
import math
import weakref
from contextlib import contextmanager

import torch
from torch import nn

from errors import first_line
from layers.legacy import lua_type


class BenchmarkError(Exception):
    """A network the benchmark cannot count, or a count asked for before any forward."""


# Lua classes for which torch.isTypeOf(m, nn.Container / nn.SpatialConvolution / nn.Linear) holds (nn, cunn and
# cudnn as the released models used them); PerformanceModule.lua dispatches on exactly these tests.
_CONTAINERS = frozenset({
    'nn.Container', 'nn.Sequential', 'nn.Concat', 'nn.ConcatTable', 'nn.DepthConcat', 'nn.Parallel',
    'nn.ParallelTable', 'nn.MapTable', 'nn.CReLU', 'nn.Maxout', 'nn.SpatialLPPooling', 'nn.LayerNormalization',
    'nn.Convert', 'nn.Decorator', 'nn.GPU', 'nn.DataParallelTable',
})
_CONVOLUTIONS = frozenset({'nn.SpatialConvolution', 'nn.SpatialDilatedConvolution', 'cudnn.SpatialConvolution'})
_LINEARS = frozenset({'nn.Linear', 'nn.LinearWeightNorm'})
_POOLED = 'cudnn.PooledSpatialConvolution'

# What Lua keeps in `module.output` after a forward, reduced to the element count the counts need (0 for a table
# output, as for a module never run). Weak keys: recording a forward must not keep a model alive.
_output_elements = weakref.WeakKeyDictionary()


@contextmanager
def recording(model):
    """Within this block, forwards of `model` remember each submodule's output size (Lua's `module.output`)."""
    modules = list(model.modules())
    for m in modules:
        _output_elements.pop(m, None)

    def remember(module, inputs, output):
        _output_elements[module] = output.numel() if torch.is_tensor(output) else 0

    handles = [m.register_forward_hook(remember) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forward(model, input):
    """One recorded forward of `input` without autograd; returns the output."""
    with recording(model), torch.no_grad():
        return model(input)


def _elements(module):
    return float(_output_elements.get(module, 0))


def _parameter_elements(module):
    # Lua counts `weight` plus `bias` when the module has one.
    bias = getattr(module, 'bias', None)
    return float(module.weight.numel()) + (float(bias.numel()) if bias is not None else 0.0)


def lua_d(x):
    """LuaJIT's string.format('%d', x) of a Lua number: the double cast to int64 (truncation toward zero; NaN and
    out-of-range values give the x86 'integer indefinite' INT64_MIN)."""
    if math.isfinite(x) and -2.0 ** 63 <= x < 2.0 ** 63:
        return str(int(x))
    return str(-2 ** 63)


def lua_2f(x):
    """LuaJIT 2.1's string.format('%.2f', x): its own exact conversion rounds halfway cases away from zero (glibc
    and Python round them to even), and NaN prints as 'nan' whatever its sign."""
    if math.isnan(x):
        return 'nan'
    if math.isinf(x):
        return 'inf' if x > 0 else '-inf'
    digits = decimal.Decimal(abs(x)).quantize(decimal.Decimal('0.01'), rounding=decimal.ROUND_HALF_UP)
    return ('-' if math.copysign(1.0, x) < 0 else '') + str(digits)


def _lua_div(a, b):
    """a / b as a double (Python raises on division by zero, Lua yields inf or nan)."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


class Performance:
    """nn.Performance of PerformanceModule.lua: `memory` (parameters kept; the align conv counted at its non-zero
    fraction) and `computation` (multiplications of the recorded batch-1 forward) of `module` and, for containers,
    of each child in `children`. Like Lua, the counts are doubles, summed in the same order.

    Pass `input` to run the forward here; otherwise the last forward done through `forward()` or inside
    `recording()` is used. `dense_computation` is ours: the same count with every PooledSpatialConvolution
    replaced by the dense convolution it stands for."""

    def __init__(self, module, input=None):
        if input is not None:
            forward(module, input)
        elif module not in _output_elements:
            raise BenchmarkError('benchmark: no recorded forward for this network; pass an input to '
                                 'Performance(module, input) or run the forward through benchmark.forward()')
        self._measure(module)

    @classmethod
    def _child(cls, module):
        perf = cls.__new__(cls)
        perf._measure(module)
        return perf

    def _measure(self, module):
        self.module = module
        try:
            self.moduleType = lua_type(module)
        except TypeError as e:
            raise BenchmarkError(f'benchmark: cannot count {e}; build the network from Torch7 '
                                 f'counterparts (layers.legacy)') from None
        self.children = []
        self.is_container = self.moduleType in _CONTAINERS
        self.nsp = None
        if self.is_container:
            self.memory = 0.0
            self.computation = 0.0
            self.dense_computation = 0.0
            for child in module._modules.values():
                if child is None:
                    continue
                perf = self._child(child)
                self.children.append(perf)
                self.memory = self.memory + perf.memory
                self.computation = self.computation + perf.computation
                self.dense_computation = self.dense_computation + perf.dense_computation
        elif self.moduleType in _CONVOLUTIONS:
            self.memory = _parameter_elements(module)
            self.computation = _elements(module) * float(module.weight[0].numel())
            self.dense_computation = self.computation
        elif self.moduleType in _LINEARS:
            self.memory = _parameter_elements(module)
            self.computation = float(module.weight.numel())
            self.dense_computation = self.computation
        elif self.moduleType == _POOLED:
            self._pooled(module)
        else:
            self.memory = 0.0
            self.computation = 0.0
            self.dense_computation = 0.0

    def _pooled(self, module):
        pool, align = module.poolconv, module.alignconv
        self.nsp = float(int(torch.count_nonzero(align.weight))) / float(align.weight.numel())
        bias = 0.0 if align.bias is None else float(align.bias.numel())
        self.memory = float(pool.weight.numel()) + float(align.weight.numel()) * self.nsp + bias
        self.computation = (_elements(pool) * float(pool.weight[0].numel())
                            + _elements(module) * float(align.weight[0].numel()) * self.nsp)
        self.dense_computation = _elements(module) * float(module.nInputPlane * module.kH * module.kW)

    def __str__(self):
        return self._text(self.memory, self.computation)

    def _text(self, totalmem, totalcomp):
        text = self.moduleType
        if self.is_container:
            arrows = ''.join(f' -> ({i})' for i in range(1, len(self.children) + 1))
            text += ' {\n  [input' + arrows + ' -> output]'
            for i, child in enumerate(self.children, 1):
                text += f'\n  ({i}): ' + child._text(totalmem, totalcomp).replace('\n', '\n  ')
            text += '\n}'
        return text + (f' MEM={lua_d(self.memory)}({lua_2f(_lua_div(100 * self.memory, totalmem))}%)'
                       f' COMP={lua_d(self.computation)}({lua_2f(_lua_div(100 * self.computation, totalcomp))}%)')


def dense_ratio_line(perf):
    """Our line beyond Lua's output: counted multiplications against the dense network the LCNN stands for."""
    counted, dense = perf.computation, perf.dense_computation
    # A dictionary larger than the layer it stands for (lcnn's default -poolSize 100 -fcPool 1024) costs more.
    ratio = ('no multiplications counted' if counted <= 0 else f'{dense / counted:.2f}x fewer' if dense >= counted
             else f'{counted / dense:.2f}x more')
    return (f'Counted multiplications vs dense equivalent: {lua_d(counted)} vs {lua_d(dense)} '
            f'({ratio}; counted, not timed)')


def _single_model(model):
    # cleanDPT: count the replicated network, not its data-parallel wrapper.
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def benchmark(model, opt, out=print):
    """benchmark(): one batch-1 forward of a 3 x cropSize x cropSize input in evaluate mode, then the Performance
    tree, Lua's summary line and our dense-equivalent line through `out`. Returns the Performance, e.g. for a
    measured timing table to follow."""
    model.eval()
    single = _single_model(model)
    param = next(single.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # Lua benchmarks trainLoader:sample(1); the counts depend on the input's shape only.
    input = torch.zeros(1, 3, opt.cropSize, opt.cropSize, device=device, dtype=dtype)
    try:
        forward(single, input)
    except RuntimeError as e:
        raise BenchmarkError(f'benchmark: forward of a 1x3x{opt.cropSize}x{opt.cropSize} input failed '
                             f'({first_line(e)}); check -cropSize for this network') from None
    perf = Performance(single)
    out(str(perf))
    out('Benchmark Summary: memory %s computation %s' % (lua_d(perf.memory), lua_d(perf.computation)))
    out(dense_ratio_line(perf))
    return perf
