"""Tests for benchmark.py, the port of lcnn's benchmark.lua and benchmark/PerformanceModule.lua."""
import lzma
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import benchmark
import t7
from benchmark import BenchmarkError, Performance, lua_2f, lua_d
from layers import PooledSpatialConvolution, named
from layers.containers import Concat, ConcatTable
from layers.activation import Dropout, LogSoftMax
from layers.shape import View
from layers.tables import CAddTable

FIXTURES = Path(__file__).parent / 'fixtures'


def conv(*args, **kwargs):
    return named(nn.Conv2d(*args, **kwargs), 'cudnn.SpatialConvolution')


def hand_model():
    """A net covering every counting rule, its counts worked out by hand (input 1x3x6x6):

    conv 3->4 3x3 pad 1: 144 outputs x 27 = 3888 mults, 108 + 4 params.
    grouped conv 3->6 3x3 pad 1, 3 groups, no bias: 216 outputs x 9 = 1944, 54 params.
    psc1 10->8 3x3 pad 1 pool 4: poolconv 4x8x8 = 256 outputs x 10 = 2560; align 8x4x3x3 = 288 weights of which 72
      survive the forward (0.25), 288 outputs x 36 x 0.25 = 2592; params 40 + 72 + 8 = 120; dense 288 x 90 = 25920.
    conv 8->1 1x1: 36 x 8 = 288, 9 params.
    psc2 1->1 7x7 pad 3 pool 1, no bias: poolconv 12x12 = 144 x 1; align 27 of 49 non-zero: 36 x 49 x 27/49 = 972;
      params 1 + 49 * (27/49) = 27.999999999999996 in doubles, which Lua's %d truncates to 27; dense 36 x 49 = 1764.
    Linear 9->5: 45 mults, 50 params; Linear 9->5 without bias: 45, 45.
    Totals: memory 418, computation 12478, dense 33894.
    """
    torch.manual_seed(0)
    psc1 = PooledSpatialConvolution(10, 8, 3, 3, 1, 1, 1, 1, poolSize=4)
    align = torch.zeros(288)
    align[:72] = 0.5
    align[72:82] = 1e-6  # under sparseTh: the forward zeroes these before anything is counted
    with torch.no_grad():
        psc1.alignconv.weight.copy_(align[torch.randperm(288)].view(8, 4, 3, 3))
    psc2 = PooledSpatialConvolution(1, 1, 7, 7, 1, 1, 3, 3, poolSize=1).noBias()
    align = torch.zeros(49)
    align[:27] = -0.5
    with torch.no_grad():
        psc2.alignconv.weight.copy_(align.view(1, 1, 7, 7))
    return nn.Sequential(
        Concat(2, conv(3, 4, 3, padding=1),
               nn.Sequential(conv(3, 6, 3, padding=1, groups=3, bias=False), named(nn.ReLU(), 'cudnn.ReLU'))),
        psc1, conv(8, 1, 1), psc2, nn.MaxPool2d(2, 2), View(9),
        ConcatTable(nn.Linear(9, 5), nn.Sequential(nn.Linear(9, 5, bias=False), nn.ReLU())),
        CAddTable(), LogSoftMax())


HAND_TEXT = """\
nn.Sequential {
  [input -> (1) -> (2) -> (3) -> (4) -> (5) -> (6) -> (7) -> (8) -> (9) -> output]
  (1): nn.Concat {
    [input -> (1) -> (2) -> output]
    (1): cudnn.SpatialConvolution MEM=112(26.79%) COMP=3888(31.16%)
    (2): nn.Sequential {
      [input -> (1) -> (2) -> output]
      (1): cudnn.SpatialConvolution MEM=54(12.92%) COMP=1944(15.58%)
      (2): cudnn.ReLU MEM=0(0.00%) COMP=0(0.00%)
    } MEM=54(12.92%) COMP=1944(15.58%)
  } MEM=166(39.71%) COMP=5832(46.74%)
  (2): cudnn.PooledSpatialConvolution MEM=120(28.71%) COMP=5152(41.29%)
  (3): cudnn.SpatialConvolution MEM=9(2.15%) COMP=288(2.31%)
  (4): cudnn.PooledSpatialConvolution MEM=27(6.70%) COMP=1116(8.94%)
  (5): nn.SpatialMaxPooling MEM=0(0.00%) COMP=0(0.00%)
  (6): nn.View MEM=0(0.00%) COMP=0(0.00%)
  (7): nn.ConcatTable {
    [input -> (1) -> (2) -> output]
    (1): nn.Linear MEM=50(11.96%) COMP=45(0.36%)
    (2): nn.Sequential {
      [input -> (1) -> (2) -> output]
      (1): nn.Linear MEM=45(10.77%) COMP=45(0.36%)
      (2): nn.ReLU MEM=0(0.00%) COMP=0(0.00%)
    } MEM=45(10.77%) COMP=45(0.36%)
  } MEM=95(22.73%) COMP=90(0.72%)
  (8): nn.CAddTable MEM=0(0.00%) COMP=0(0.00%)
  (9): nn.LogSoftMax MEM=0(0.00%) COMP=0(0.00%)
} MEM=418(100.00%) COMP=12478(100.00%)"""


def test_hand_model_counts_and_tree():
    model = hand_model()
    perf = Performance(model, torch.randn(1, 3, 6, 6))
    assert str(perf) == HAND_TEXT
    assert (perf.memory, perf.computation, perf.dense_computation) == (418, 12478, 33894)
    concat, psc1, _, psc2 = perf.children[:4]
    assert [c.moduleType for c in concat.children] == ['cudnn.SpatialConvolution', 'nn.Sequential']
    assert psc1.nsp == 0.25 and (psc1.memory, psc1.computation, psc1.dense_computation) == (120, 5152, 25920)
    assert psc2.memory == 1 + 49 * (27 / 49) < 28
    assert perf.children[6].children[1].children[0].module is model[6][1][0]


def test_benchmark_prints_tree_summary_and_dense_ratio():
    model = hand_model()
    model.train()
    lines = []
    perf = benchmark.benchmark(model, SimpleNamespace(cropSize=6), out=lines.append)
    assert lines == [HAND_TEXT, 'Benchmark Summary: memory 418 computation 12478',
                     'Counted multiplications vs dense equivalent: 12478 vs 33894 (2.72x fewer; counted, not timed)']
    assert isinstance(perf, Performance) and perf.module is model
    assert not model.training  # benchmark.lua evaluates the model first


def test_a_network_that_counts_more_than_its_dense_form_says_more():
    perf = SimpleNamespace(computation=747631399.0, dense_computation=714188480.0)
    assert benchmark.dense_ratio_line(perf) == ('Counted multiplications vs dense equivalent: 747631399 vs 714188480 '
                                                '(1.05x more; counted, not timed)')


def test_benchmark_unwraps_data_parallel():
    lines = []
    benchmark.benchmark(nn.DataParallel(hand_model()), SimpleNamespace(cropSize=6), out=lines.append)
    assert lines[0] == HAND_TEXT


@pytest.mark.parametrize('name, ratio_line', [
    ('alexnet-lcnn', 'Counted multiplications vs dense equivalent: 29814787 vs 710133440 '
                     '(23.82x fewer; counted, not timed)'),
    ('resnet8-lcnn', 'Counted multiplications vs dense equivalent: 66776171 vs 889229312 '
                     '(13.32x fewer; counted, not timed)'),
])
def test_released_models_match_lua_output_byte_for_byte(tmp_path, name, ratio_line):
    path = tmp_path / f'{name}.t7'
    path.write_bytes(lzma.decompress((FIXTURES / f'{name}.t7.xz').read_bytes()))
    model = t7.load_model(path)
    lines = []
    benchmark.benchmark(model, SimpleNamespace(cropSize=224), out=lines.append)
    # Lua's print ends each line with a newline; the fixture is exactly those two prints.
    printed = ''.join(line + '\n' for line in lines[:2]).encode()
    assert printed == (FIXTURES / f'{name}.benchmark.txt').read_bytes()
    assert lines[2] == ratio_line


def test_performance_needs_a_recorded_forward():
    model = hand_model()
    model(torch.randn(1, 3, 6, 6))  # a plain forward records nothing
    with pytest.raises(BenchmarkError, match='no recorded forward'):
        Performance(model)
    benchmark.forward(model, torch.randn(1, 3, 6, 6))
    assert str(Performance(model)) == HAND_TEXT


def test_module_without_torch7_counterpart_is_an_error():
    with pytest.raises(BenchmarkError, match='Conv1d'):
        Performance(nn.Sequential(nn.Conv1d(1, 1, 1)), torch.zeros(1, 1, 4))


def test_forward_failure_names_crop_size():
    with pytest.raises(BenchmarkError, match='-cropSize'):
        benchmark.benchmark(hand_model(), SimpleNamespace(cropSize=1), out=lambda line: None)


def test_network_without_parameters_prints_lua_nan_percentages():
    perf = Performance(nn.Sequential(Dropout(0.5), nn.ReLU()), torch.zeros(1, 2))
    assert str(perf) == ('nn.Sequential {\n  [input -> (1) -> (2) -> output]\n'
                         '  (1): nn.Dropout MEM=0(nan%) COMP=0(nan%)\n'
                         '  (2): nn.ReLU MEM=0(nan%) COMP=0(nan%)\n'
                         '} MEM=0(nan%) COMP=0(nan%)')
    assert benchmark.dense_ratio_line(perf) == ('Counted multiplications vs dense equivalent: 0 vs 0 '
                                                '(no multiplications counted; counted, not timed)')


def test_lua_number_formatting():
    # %d casts the double to int64: truncation toward zero, INT64_MIN when it cannot.
    assert [lua_d(x) for x in (27.999999999999996, -2.5, 0.0, 2.0 ** 60)] == ['27', '-2', '0', str(2 ** 60)]
    assert lua_d(math.nan) == lua_d(1e300) == '-9223372036854775808'
    # LuaJIT's %f rounds the exact binary value, halves away from zero (C and Python give 0.12 for 0.125);
    # 2.505 is really 2.50499999... so it stays 2.50.
    assert [lua_2f(x) for x in (0.125, -0.125, 2.505, 0.375, 99.994999, -0.0)] == \
        ['0.13', '-0.13', '2.50', '0.38', '99.99', '-0.00']
    assert [lua_2f(x) for x in (math.nan, -math.nan, math.inf, -math.inf)] == ['nan', 'nan', 'inf', '-inf']
