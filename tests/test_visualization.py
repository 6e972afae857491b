"""Tests of visualization/plot.py (training curves from log.txt) and visualization/tradeoff.py (accuracy vs
speedup sweep): log parsing in Lua's exact line formats, the CSV, the one-line errors, and a whole sweep through
main.py run as a program on a stand-in network."""
import csv
import lzma
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import benchmark
from layers import PooledSpatialConvolution
from layers.activation import LogSoftMax
from layers.legacy import named
from layers.shape import View
from visualization import plot, tradeoff
from tests.drivers import main_driver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


# --- logs in the formats of lcnn's train.lua / test.lua ---------------------------------------------------------

def batch_line(epoch, batch, n, err, top1):
    return (('Epoch: [%d][%d/%d]\tTime %.3f(%.3f) Err %.4f Top1-%%: %.2f {%.2f, %.2f}'
             ' Top5-%%: %.2f {%.2f, %.2f} LR %.0e DataTime %.3f') %
            (epoch, batch, n, 0.5, 0.4, err, top1, top1, top1, 90.0, 90.0, 90.0, 0.01, 0.001))


def summary_train_line(epoch, time_s, loss, top1):
    return (('Epoch: [%d][TRAINING SUMMARY] Total Time(s): %.2f\t'
             'average loss (per batch): %.2f \t '
             'accuracy(%%):\t top-1 %.2f\t') % (epoch, time_s, loss, top1))


def summary_test_line(epoch, time_s, loss, top1, top5):
    return (('Epoch: [%d][TESTING SUMMARY] Total Time(s): %.2f \t'
             'average loss (per batch): %.2f \t '
             'accuracy [Center](%%):\t top-1 %.2f\t top-5 %.2f') % (epoch, time_s, loss, top1, top5))


def lua_log(epochs):
    """A log.txt as main.lua / main.py writes it: options, per-batch lines, summaries, blank lines."""
    lines = ['[program started on Sun Nov 22 01:14:05 2026] ', '[command line arguments] ', 'LR 1 ',
             'Saving everything to: cache/x', '==> doing epoch on training data:']
    for epoch, (train, test) in epochs:
        lines.append('==> online epoch # %d' % epoch)
        lines += [batch_line(epoch, b, 2, 2.0 - 0.1 * b, 10.0 * b) for b in (1, 2)]
        lines += [summary_train_line(epoch, *train), '\n']
        lines += ['==> doing epoch on validation data:', summary_test_line(epoch, *test), '\n']
    return '\n'.join(lines) + '\n'


EPOCHS = [(1, ((61.25, 2.31, 12.5), (5.5, 2.2, 20.25, 60.75))),
          (2, ((60.0, 1.05, 55.0), (5.25, 0.75, 80.5, 99.0))),
          (3, ((59.5, 0.4, 88.75), (5.0, 0.31, 95.5, 100.0)))]


def write_run(folder, text, options='alexnet-lcnn,dataset=digits', date='SunNov2201:14:052026'):
    run = folder / options / date
    run.mkdir(parents=True)
    (run / 'log.txt').write_text(text)
    return run


def test_parse_lines_reads_every_summary_in_lua_format():
    run = plot.parse_lines(lua_log(EPOCHS).splitlines(), 'r')
    assert sorted(run.train) == sorted(run.test) == [1, 2, 3]
    assert run.train[2] == plot.EpochSummary(2, 60.0, 1.05, 55.0, None)
    assert run.test[3] == plot.EpochSummary(3, 5.0, 0.31, 95.5, 100.0)
    assert run.series('train', 'top1') == ([1, 2, 3], [12.5, 55.0, 88.75])
    assert run.series('test', 'loss') == ([1, 2, 3], [2.2, 0.75, 0.31])
    assert run.series('test', 'top5') == ([1, 2, 3], [60.75, 99.0, 100.0])
    assert run.last_test().top1 == 95.5


def test_resumed_log_keeps_the_last_line_of_a_repeated_epoch():
    # a run killed during epoch 2 and resumed from model_1.t7 prints epoch 2 again into the same log.txt
    text = lua_log(EPOCHS[:2]) + lua_log([(2, ((30.0, 0.9, 60.0), (3.0, 0.6, 85.0, 99.5)))])
    run = plot.parse_lines(text.splitlines())
    assert run.series('train', 'top1') == ([1, 2], [12.5, 60.0])
    assert run.series('test', 'top1') == ([1, 2], [20.25, 85.0])


def test_last_test_is_the_line_printed_last_not_the_highest_epoch():
    # -testOnly -epochNumber 1 after a training to epoch 3 appends a test of "epoch 1"
    text = lua_log(EPOCHS) + summary_test_line(1, 4.0, 0.2, 97.0, 100.0) + '\n'
    run = plot.parse_lines(text.splitlines())
    assert run.last_test().top1 == 97.0
    assert run.last_test_epoch == 1


def test_nan_loss_and_test_only_logs_parse():
    text = summary_train_line(1, 3.0, float('nan'), 10.0) + '\n' + summary_test_line(7, 1.0, 0.5, 44.3, 68.7) + '\n'
    run = plot.parse_lines(text.splitlines())
    assert str(run.train[1].loss) == 'nan'
    assert run.test[7].top1 == 44.3 and run.test[7].top5 == 68.7


def test_parse_log_takes_a_run_folder_and_names_it(tmp_path):
    run_dir = write_run(tmp_path, lua_log(EPOCHS), options='alexnet-lcnn,lambda=0.1', date='SunNov2201:14:052026')
    run = plot.parse_log(str(run_dir))
    assert run.name == 'alexnet-lcnn,lambda=0.1/SunNov2201:14:052026'
    assert sorted(run.test) == [1, 2, 3]
    log_file = tmp_path / 'lua-log.txt'
    log_file.write_bytes(b'\xff\xfe garbage\n' + lua_log(EPOCHS[:1]).encode())
    assert plot.parse_log(str(log_file)).name == 'lua-log.txt'
    assert plot.parse_log(str(log_file), 'mine').series('train', 'top1') == ([1], [12.5])


@pytest.mark.parametrize('make, message', [
    (lambda p: str(p / 'missing'), 'no such file or folder'),
    (lambda p: (p / 'empty').mkdir() or str(p / 'empty'), 'has no log.txt'),
    (lambda p: (p / 'x.txt').write_text('Epoch: [1][2/3]\tTime\n') and str(p / 'x.txt'), 'no [TRAINING SUMMARY]'),
])
def test_parse_log_errors_say_what_to_give(tmp_path, make, message):
    with pytest.raises(plot.PlotError, match=message.replace('[', r'\[').replace(']', r'\]')):
        plot.parse_log(make(tmp_path))


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_script(args, block_matplotlib=False):
    """A visualization script as a program: (exit code, stdout, stderr)."""
    code = 'import runpy, sys\n'
    if block_matplotlib:
        # an import of a module set to None in sys.modules raises ImportError: matplotlib "not installed"
        code += 'sys.modules["matplotlib"] = None\n'
    code += f'sys.argv = {args!r}\nrunpy.run_path(sys.argv[0], run_name="__main__")\n'
    proc = subprocess.run([PYTHON, '-c', code], cwd=ROOT, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def assert_png_or_missing_matplotlib(code, err, png, prog):
    """With matplotlib installed the PNG is written; without it the script says how to install it, in one line."""
    if has_matplotlib():
        assert code == 0, err
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    else:
        assert code == 1 and not png.exists()
        assert err.splitlines() == [
            f'{prog}: matplotlib is not installed; pip install -r visualization/requirements.txt']


def test_plot_cli_overlays_runs_into_a_png(tmp_path):
    a = write_run(tmp_path / 'a', lua_log(EPOCHS))
    b = tmp_path / 'lua.log'
    b.write_text(lua_log(EPOCHS[:2]))
    png = tmp_path / 'curves.png'
    code, out, err = run_script(['visualization/plot.py', str(a), str(b), '-o', str(png), '-labels', 'ours', 'lua'])
    assert_png_or_missing_matplotlib(code, err, png, 'plot.py')
    if code == 0:
        assert 'ours\n  train top-1 by epoch 1..3: 12.50 55.00 88.75' in out
        assert 'lua\n  train top-1 by epoch 1..2: 12.50 55.00\n  test top-1 by epoch 1..2: 20.25 80.50' in out


def test_plot_cli_without_matplotlib_is_one_line_and_exit_1(tmp_path):
    log = tmp_path / 'log.txt'
    log.write_text(lua_log(EPOCHS))
    png = tmp_path / 'c.png'
    code, out, err = run_script(['visualization/plot.py', str(log), '-o', str(png)], block_matplotlib=True)
    assert code == 1 and not png.exists()
    assert err.splitlines() == ['plot.py: matplotlib is not installed; pip install -r visualization/requirements.txt']


@pytest.mark.parametrize('args, message', [
    (['-labels', 'one', 'two'], 'plot.py: -labels: 2 labels for 1 runs; give one label per run'),
    (['-o', '/nonexistent-dir/c.png'], 'plot.py: -o /nonexistent-dir/c.png: the folder /nonexistent-dir does not '
                                       'exist; create it or write elsewhere'),
])
def test_plot_cli_errors_are_one_line(tmp_path, args, message):
    log = tmp_path / 'log.txt'
    log.write_text(lua_log(EPOCHS))
    code, out, err = run_script(['visualization/plot.py', str(log)] + args)
    if '-o' in args and not has_matplotlib():
        message = 'plot.py: matplotlib is not installed; pip install -r visualization/requirements.txt'
    assert code == 1
    assert err.splitlines() == [message]


def test_plot_cli_output_errors_are_one_line_and_leave_nothing(tmp_path):
    log = tmp_path / 'log.txt'
    log.write_text(lua_log(EPOCHS))
    (tmp_path / 'taken').mkdir()
    for target, message in [(tmp_path / 'c.xyz', f'-o {tmp_path}/c.xyz: matplotlib cannot write .xyz files; end the '
                                                 'name in one of '),
                            (tmp_path / 'taken', f'-o {tmp_path}/taken: cannot write it (Is a directory); give a file '
                                                 'in a folder you can write to')]:
        code, out, err = run_script(['visualization/plot.py', str(log), '-o', str(target)])
        if not has_matplotlib():
            message = 'matplotlib is not installed'
        assert code == 1 and len(err.splitlines()) == 1 and err.startswith('plot.py: ') and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['log.txt', 'taken'] and not any((tmp_path / 'taken').iterdir())


# --- tradeoff.py ------------------------------------------------------------------------------------------------

def test_parse_count_reads_the_benchmark_line_main_py_prints():
    net = nn.Sequential(PooledSpatialConvolution(3, 8, 3, 3, 1, 1, 1, 1, poolSize=2), nn.ReLU())
    with torch.no_grad():
        net[0].alignconv.weight.mul_(torch.rand_like(net[0].alignconv.weight) > 0.5)
    opt = type('Opt', (), {'cropSize': 8})()
    lines = []
    perf = benchmark.benchmark(net, opt, out=lines.append)
    counted, dense = tradeoff.parse_count('\n'.join(lines))
    assert (counted, dense) == (perf.computation, perf.dense_computation)
    assert dense == 8 * 3 * 3 * 3 * 8 * 8 and 0 < counted < dense
    with pytest.raises(tradeoff.TradeoffError, match='no "Counted multiplications'):
        tradeoff.parse_count('Benchmark Summary: memory 1 computation 2')


def test_flag_value_takes_the_last_occurrence():
    flags = ['-nEpochs', '4', '-batchSize', '32', '-nEpochs', '2']
    assert tradeoff.flag_value(flags, '-nEpochs', '55') == '2'
    assert tradeoff.flag_value(flags, '-cropSize', '224') == '224'


def test_default_sweeps_start_with_the_cnn_and_vary_the_dictionary():
    for sweep in (tradeoff.SWEEP, tradeoff.QUICK_SWEEP):
        assert sweep[0].is_cnn and not any(c.is_cnn for c in sweep[1:])
        assert len({c.name for c in sweep}) == len(sweep)
    pools = {tradeoff.flag_value(c.flags, '-poolSize', None) for c in tradeoff.SWEEP[1:]}
    assert len(pools) >= 4
    assert len(tradeoff.QUICK_SWEEP) == 2


def csv_rows():
    return [
        {'name': 'CNN', 'flags': '-netType alexnet', 'train_flags': '-nEpochs 1', 'run_dir': 'r0', 'epochs': 1,
         'top1': 97.5, 'top5': 100.0, 'counted_mults': 1000, 'dense_equiv_mults': 1000, 'counted_speedup': 1.0,
         'lookup_ms': 30.0, 'dense_equiv_ms': 30.0, 'cnn_ms': 30.0, 'measured_speedup': 1.0, 'run_s': 10.5},
        {'name': 'LCNN p8', 'flags': '-netType alexnet-lcnn -poolSize 8', 'train_flags': '-nEpochs 1',
         'run_dir': 'r1', 'epochs': 1, 'top1': 90.25, 'top5': 99.0, 'counted_mults': 40, 'dense_equiv_mults': 600,
         'counted_speedup': 25.0, 'lookup_ms': 6.0, 'dense_equiv_ms': 20.0, 'cnn_ms': 31.0,
         'measured_speedup': 31.0 / 6.0, 'run_s': 4.0},
    ]


def test_csv_round_trip_and_redraw(tmp_path):
    path = tmp_path / 'tradeoff.csv'
    tradeoff.write_csv(csv_rows(), path)
    with open(path, newline='') as f:
        raw = list(csv.DictReader(f))
    assert list(raw[0]) == list(tradeoff.CSV_FIELDS)
    assert raw[1]['measured_speedup'] == '5.16667' and raw[1]['counted_mults'] == '40'
    rows = tradeoff.read_csv(str(path))
    assert [r['name'] for r in rows] == ['CNN', 'LCNN p8']
    assert rows[1]['top1'] == 90.25 and rows[1]['counted_speedup'] == 25.0
    png = tmp_path / 'tradeoff.png'
    code, out, err = run_script(['visualization/tradeoff.py', '-fromCSV', str(path), '-o', str(png)])
    assert_png_or_missing_matplotlib(code, err, png, 'tradeoff.py')


@pytest.mark.parametrize('content, message', [
    (None, 'no such file'),
    ('a,b\n1,2\n', 'not a tradeoff.csv (no column name, top1, counted_speedup, measured_speedup)'),
    ('name,top1,counted_speedup,measured_speedup\nCNN,x,1,1\n', 'line 2: top1 "x" is not a number'),
    ('name,top1,counted_speedup,measured_speedup\n', 'no rows'),
])
def test_read_csv_errors(tmp_path, content, message):
    path = tmp_path / 't.csv'
    if content is not None:
        path.write_text(content)
    with pytest.raises(tradeoff.TradeoffError, match=message.replace('(', r'\(').replace(')', r'\)')):
        tradeoff.read_csv(str(path))


def test_tradeoff_cli_error_is_one_line(tmp_path):
    code, out, err = run_script(['visualization/tradeoff.py', '-fromCSV', str(tmp_path / 'none.csv')])
    assert code == 1
    assert err.splitlines() == [f'tradeoff.py: -fromCSV {tmp_path / "none.csv"}: no such file; give a tradeoff.csv '
                                'written by this script']


# --- a whole sweep through main.py, on stand-in networks small enough for 8x8 crops ---------------------------------

def tiny(opt):
    """Stands in for -netType alexnet (a dense conv) and alexnet-lcnn (a lookup conv with -poolSize, -lambda)."""
    if opt.netType == 'alexnet-lcnn':
        conv = PooledSpatialConvolution(3, 16, 3, 3, 1, 1, 1, 1, poolSize=opt.poolSize, lambda_=getattr(opt, 'lambda'),
                                        initialSparsity=opt.initialSparsity)
    else:
        conv = named(nn.Conv2d(3, 16, 3, padding=1), 'nn.SpatialConvolution')
    return nn.Sequential(conv, named(nn.ReLU(), 'nn.ReLU'), View(16 * 8 * 8),
                         named(nn.Linear(16 * 8 * 8, opt.nClasses), 'nn.Linear'), LogSoftMax())


DRIVER = main_driver('test_visualization')

TINY_FLAGS = ['-imageSize', '8', '-cropSize', '8', '-nEpochs', '2', '-epochSize', '3', '-batchSize', '32',
              '-nDonkeys', '0', '-LR', '5']


def test_sweep_trains_counts_and_times_each_config(tmp_path, monkeypatch):
    # the pure-torch lookup kernels: the same results without compiling the C++ ones in a test
    monkeypatch.setenv('LCNN_LOOKUP_BACKEND', 'torch')
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    sweep = [tradeoff.CNN, tradeoff.lcnn(2, 64, 0.5)]
    work = tmp_path / 'sweep'
    messages = []
    threads = torch.get_num_threads()
    rows = tradeoff.run_sweep(sweep, TINY_FLAGS, str(work), main_cmd=[PYTHON, str(driver)], rounds=1, repeats=1,
                              out=messages.append)
    assert torch.get_num_threads() == threads
    assert [r['name'] for r in rows] == ['CNN', 'LCNN p2 fc64 l0.5']
    cnn, lc = rows
    for row, config in zip(rows, sweep):
        run_dir = os.path.join(ROOT, row['run_dir'])
        assert os.path.isfile(os.path.join(run_dir, 'model_2.t7')) and row['epochs'] == 2
        # the sweep keeps the last checkpoint only
        assert sorted(f for f in os.listdir(run_dir) if f.endswith('.t7')) == [
            'classes.t7', 'model_2.t7', 'optimState_2.t7']
        log = plot.parse_log(run_dir)
        assert (row['top1'], row['top5']) == (log.test[2].top1, log.test[2].top5)
        assert row['flags'] == ' '.join(config.flags)
        assert row['run_s'] == round(sum(s.time for s in list(log.train.values()) + list(log.test.values())), 1)
        assert row['lookup_ms'] > 0 and row['cnn_ms'] > 0
    dense = 16 * 3 * 9 * 64 + 16 * 64 * 10
    assert cnn['counted_mults'] == cnn['dense_equiv_mults'] == dense and cnn['counted_speedup'] == 1.0
    assert cnn['measured_speedup'] == 1.0
    assert lc['dense_equiv_mults'] == dense
    assert lc['counted_speedup'] == dense / lc['counted_mults']
    assert lc['measured_speedup'] == lc['cnn_ms'] / lc['lookup_ms']
    assert not os.path.exists(work / 'benchmark-runs')
    assert any('top-1' in m and 'counted' in m for m in messages)

    # a second call goes on from the finished runs instead of training again
    again = tradeoff.run_sweep(sweep, TINY_FLAGS, str(work), main_cmd=[PYTHON, str(driver)], rounds=1, repeats=1,
                               out=messages.append)
    assert [r['run_dir'] for r in again] == [r['run_dir'] for r in rows]
    assert sum('reusing the finished run' in m for m in messages) == 2


def test_sweep_reports_a_failed_training_in_one_line(tmp_path, monkeypatch):
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    missing = tmp_path / 'missing.t7'
    with pytest.raises(tradeoff.TradeoffError, match=rf'^training CNN: main.py failed \(main.py: -retrain {missing}: '
                       r'file not found\); command: .*driver.py -dataset digits'):
        tradeoff.run_sweep([tradeoff.CNN], TINY_FLAGS + ['-retrain', str(missing)], str(tmp_path / 'w'),
                           main_cmd=[PYTHON, str(driver)], out=lambda m: None)


def test_sweep_reports_bad_training_flags_before_training(tmp_path):
    with pytest.raises(tradeoff.TradeoffError, match='-cropSize 30 is larger than -imageSize 8'):
        tradeoff.run_sweep([tradeoff.CNN], TINY_FLAGS + ['-cropSize', '30'], str(tmp_path / 'w'), out=lambda m: None)
    assert not os.path.exists(tmp_path / 'w')


def test_sweep_must_start_with_the_cnn(tmp_path):
    with pytest.raises(tradeoff.TradeoffError, match='must start with the CNN reference'):
        tradeoff.run_sweep([tradeoff.lcnn(2, 64, 0.5)], TINY_FLAGS, str(tmp_path))


def test_parse_log_reads_a_real_main_py_log(tmp_path):
    # log.txt of `main.py -dataset digits -netType alexnet -imageSize 224 -batchSize 32 -nEpochs 5 -epochSize 60
    # -LR 2 -nDonkeys 1` (the CNN run of tradeoff.py): options, model, 300 per-batch lines, the summaries
    with lzma.open(os.path.join(ROOT, 'tests', 'fixtures', 'digits_alexnet_log.txt.xz')) as f:
        (tmp_path / 'log.txt').write_bytes(f.read())
    run = plot.parse_log(str(tmp_path))
    assert run.series('train', 'top1') == ([1, 2, 3, 4, 5], [77.71, 93.59, 94.53, 96.77, 97.40])
    assert run.series('test', 'top1') == ([1, 2, 3, 4, 5], [95.17, 99.15, 99.15, 98.01, 98.86])
    assert run.series('test', 'loss')[1] == [0.14, 0.04, 0.03, 0.09, 0.04]
    assert run.train[1].time == 248.30 and run.test[5].top5 == 100.0
