"""Accuracy vs speedup of AlexNet LCNN (lcnn's README figure accuracy-vs-speedup.jpg), remade on the embedded digits.

Trains a sweep of dictionary sizes and sparsity factors with main.py (plain alexnet is the CNN reference), then for
each run takes the last [TESTING SUMMARY] top-1 of its log.txt, the multiplications `main.py -benchmark` counts, and
the wall-clock time of one batch-1 forward with the lookup engine (layers.lookup, torch threads 1). Speedups are over
the CNN, as in the paper: counted = CNN multiplications / run's multiplications, measured = CNN ms / run's ms.
Writes tradeoff.csv and tradeoff.png; `-fromCSV` redraws the figure from a CSV without training.
"""
import argparse
import contextlib
import csv
import glob
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from visualization.plot import PlotError, import_pyplot, parse_log, save_figure  # noqa: E402

MAIN = os.path.join(ROOT, 'main.py')

# Every run of the sweep: the embedded dataset, no bars in captured output.
COMMON_FLAGS = ['-dataset', 'digits', '-noProgress']
# The training recipe all points share: the README's main job (alexnet-lcnn reaches ~97% on the digits with it),
# one epoch shorter so that the seven runs fit in well under an hour on 2 CPU cores.
TRAIN_FLAGS = ['-imageSize', '224', '-batchSize', '32', '-nEpochs', '5', '-epochSize', '60', '-LR', '2',
               '-nDonkeys', '1']
# -quick: a smoke run of the whole pipeline (AlexNet needs its 224 crop, so only the runs get shorter).
QUICK_TRAIN_FLAGS = ['-imageSize', '224', '-batchSize', '16', '-nEpochs', '1', '-epochSize', '2', '-nDonkeys', '0']


@dataclass
class Config:
    """One point of the sweep: its name in the CSV and figure, and the main.py flags that make it."""
    name: str
    flags: list

    @property
    def is_cnn(self):
        return '-netType' in self.flags and self.flags[self.flags.index('-netType') + 1] == 'alexnet'


CNN = Config('CNN', ['-netType', 'alexnet'])


def lcnn(pool, fc_pool, lambda_):
    return Config(f'LCNN p{pool} fc{fc_pool} l{lambda_:g}',
                  ['-netType', 'alexnet-lcnn', '-poolSize', str(pool), '-fcPool', str(fc_pool), '-lambda',
                   f'{lambda_:g}'])


# Dictionary sizes from the conv layers' own width (64) down to a few vectors without sparsity, then the sparsity
# factor at small dictionaries: with -firstPool 3 the first layer's dictionary cannot shrink, and it holds most
# of the remaining multiplications until -lambda zeroes its align weights. The lambdas stay small because with
# -LR 2 a lambda of 10 removed half the first layer's multiplications in one epoch and the test accuracy collapsed.
SWEEP = [CNN, lcnn(64, 256, 0), lcnn(32, 64, 0), lcnn(8, 16, 0), lcnn(8, 16, 0.5), lcnn(8, 16, 2), lcnn(4, 8, 2)]
QUICK_SWEEP = [CNN, lcnn(8, 16, 2)]

_COUNT_RE = re.compile(r'Counted multiplications vs dense equivalent: (\d+) vs (\d+) \(')

CSV_FIELDS = ('name', 'flags', 'train_flags', 'run_dir', 'epochs', 'top1', 'top5', 'counted_mults', 'dense_equiv_mults',
              'counted_speedup', 'lookup_ms', 'dense_equiv_ms', 'cnn_ms', 'measured_speedup', 'run_s')


class TradeoffError(Exception):
    """A run, file or option the sweep cannot use; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Training and counting, through main.py as a user runs it


def flag_value(flags, name, default):
    """The value the last `name` in a main.py flag list gives (main.py lets a later flag override an earlier one)."""
    value = default
    for i, flag in enumerate(flags[:-1]):
        if flag == name:
            value = flags[i + 1]
    return value


def finished_run(config_dir, n_epochs):
    """The newest run folder under `config_dir` (main.py's <cache>/<netType,options>/<date>) whose log tests epoch
    `n_epochs` and which holds model_<n_epochs>.t7; None if there is none."""
    found = []
    for log_file in glob.glob(os.path.join(glob.escape(config_dir), '*', '*', 'log.txt')):
        run_dir = os.path.dirname(log_file)
        if not os.path.isfile(os.path.join(run_dir, f'model_{n_epochs}.t7')):
            continue
        try:
            log = parse_log(run_dir)
        except PlotError:
            continue
        if n_epochs in log.test:
            found.append((os.path.getmtime(log_file), run_dir))
    return max(found)[1] if found else None


def _run_main(main_cmd, argv, what):
    """main.py with `argv`; its stdout (also in the run's log.txt) is returned, its failure raised as one line."""
    proc = subprocess.run(main_cmd + argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        last = lines[-1] if lines else f'exit code {proc.returncode}'
        raise TradeoffError(f'{what}: main.py failed ({last}); command: {" ".join(main_cmd + argv)}')
    return proc.stdout


def train(config, train_flags, work_dir, main_cmd, out=print):
    """(run folder, its last epoch) of `config`: trained now unless a finished run with the same flags is there
    already (a sweep stopped half-way goes on where it was)."""
    n_epochs = int(flag_value(train_flags + config.flags, '-nEpochs', '55'))
    config_dir = os.path.join(work_dir, _slug(config.name))
    run_dir = finished_run(config_dir, n_epochs)
    if run_dir is not None:
        out(f'  reusing the finished run {run_dir}')
        drop_earlier_checkpoints(run_dir, n_epochs)
        return run_dir, n_epochs
    out(f'  training; main.py writes its log.txt under {config_dir}')
    _run_main(main_cmd, COMMON_FLAGS + train_flags + config.flags + ['-cache', config_dir], f'training {config.name}')
    run_dir = finished_run(config_dir, n_epochs)
    if run_dir is None:
        raise TradeoffError(f'training {config.name}: main.py ended without a tested model_{n_epochs}.t7 under '
                            f'{config_dir}; look at the log.txt there')
    drop_earlier_checkpoints(run_dir, n_epochs)
    return run_dir, n_epochs


def drop_earlier_checkpoints(run_dir, n_epochs):
    """Delete model_k.t7 and optimState_k.t7 for k < n_epochs: an AlexNet checkpoint is ~470 MB and the sweep
    reads only the last one (kept with its optimState, so the run can still be continued with -resume)."""
    for name in os.listdir(run_dir):
        m = re.fullmatch(r'(?:model|optimState)_(\d+)\.t7', name)
        if m and int(m.group(1)) < n_epochs:
            os.remove(os.path.join(run_dir, name))


def count_multiplications(checkpoint, train_flags, work_dir, main_cmd):
    """(counted, dense equivalent) multiplications of a checkpoint, from `main.py -benchmark -retrain` output."""
    scratch = os.path.join(work_dir, 'benchmark-runs')
    argv = COMMON_FLAGS + train_flags + ['-benchmark', '-retrain', checkpoint, '-cache', scratch]
    text = _run_main(main_cmd, argv, f'counting {checkpoint}')
    # the benchmark's own run folder holds nothing but a copy of this output
    shutil.rmtree(scratch, ignore_errors=True)
    return parse_count(text, checkpoint)


def parse_count(text, source='main.py -benchmark'):
    """(counted, dense equivalent) from the 'Counted multiplications vs dense equivalent' line of a benchmark."""
    m = _COUNT_RE.search(text)
    if m is None:
        raise TradeoffError(f'{source}: the benchmark printed no "Counted multiplications vs dense equivalent" '
                            'line; is main.py this project\'s?')
    return int(m.group(1)), int(m.group(2))


def _slug(name):
    return re.sub(r'[^A-Za-z0-9.]+', '_', name).strip('_')


# ----------------------------------------------------------------------------------------------------------------
# Measured time: the lookup engine in this process, one thread, runs interleaved so that load from other
# processes on the machine hits every model alike


def example_input(train_flags):
    """One centre-cropped validation digit, normalised as main.py's test loader does, as a batch of 1."""
    import opts
    from data import DataError, digits
    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):
            opt = opts.parse(COMMON_FLAGS + train_flags)
    except SystemExit:
        # opts.parse printed its one line and exited, as main.py would: that line is the reason
        raise TradeoffError(f'training flags {" ".join(train_flags)}: '
                            f'{refusal.getvalue().strip().removeprefix("main.py: ")}') from None
    try:
        _, test_loader = digits.setup(opt)
    except DataError as e:
        raise TradeoffError(f'training flags {" ".join(train_flags)}: {e}') from None
    inputs, _ = test_loader.get(0, 1)
    return inputs


def compile_checkpoint(checkpoint, example):
    """(compiled lookup model, its dense equivalent) of a model_N.t7: every lookup layer folded to one dense
    convolution in the second, the faster form per layer (measured on `example`) in the first."""
    import t7
    from layers import lookup
    try:
        model = t7.load_model(checkpoint)
        return lookup.compile(model, example), lookup.compile(model, path='dense')
    except (t7.T7Error, lookup.LookupInferenceError) as e:
        raise TradeoffError(f'{checkpoint}: {e}') from None


def time_interleaved(models, example, rounds=7, repeats=5):
    """Median milliseconds of a forward of `example` for each of {name: model}: `rounds` rounds, each timing every
    model `repeats` times in turn after one warm-up call."""
    import torch
    samples = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            model(example)
        for _ in range(rounds):
            for name, model in models.items():
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(example)
                    samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


# ----------------------------------------------------------------------------------------------------------------
# The sweep


def run_sweep(sweep, train_flags, work_dir, main_cmd=None, rounds=7, repeats=5, out=print):
    """Train, count and time every config of `sweep` (the CNN reference first); returns one CSV row per config."""
    import torch
    main_cmd = main_cmd or [sys.executable, MAIN]
    if not sweep or not sweep[0].is_cnn:
        raise TradeoffError('the sweep must start with the CNN reference (-netType alexnet): speedups are over it')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _sweep(sweep, train_flags, work_dir, main_cmd, rounds, repeats, out)
    finally:
        torch.set_num_threads(threads)


def _sweep(sweep, train_flags, work_dir, main_cmd, rounds, repeats, out):
    example = example_input(train_flags)
    rows, cnn = [], None
    for i, config in enumerate(sweep, 1):
        out(f'[{i}/{len(sweep)}] {config.name}: {" ".join(config.flags)}')
        run_dir, epoch = train(config, train_flags, work_dir, main_cmd, out)
        log = parse_log(run_dir, config.name)
        checkpoint = os.path.join(run_dir, f'model_{epoch}.t7')
        counted, dense = count_multiplications(checkpoint, train_flags, work_dir, main_cmd)
        compiled, dense_model = compile_checkpoint(checkpoint, example)
        if cnn is None:
            cnn = {'model': compiled, 'counted': counted}
            ms = time_interleaved({'cnn': compiled}, example, rounds, repeats)
            ms['lookup'] = ms['dense'] = ms['cnn']
        else:
            ms = time_interleaved({'cnn': cnn['model'], 'dense': dense_model, 'lookup': compiled}, example,
                                  rounds, repeats)
        test = log.last_test()
        row = {
            'name': config.name, 'flags': ' '.join(config.flags), 'train_flags': ' '.join(train_flags),
            'run_dir': os.path.relpath(run_dir, ROOT),
            'epochs': epoch, 'top1': test.top1, 'top5': test.top5,
            'counted_mults': counted, 'dense_equiv_mults': dense, 'counted_speedup': cnn['counted'] / counted,
            'lookup_ms': ms['lookup'], 'dense_equiv_ms': ms['dense'], 'cnn_ms': ms['cnn'],
            'measured_speedup': ms['cnn'] / ms['lookup'],
            # what the epochs took by the log's summaries (main.py's start-up and data set-up not counted)
            'run_s': round(sum(e.time for e in list(log.train.values()) + list(log.test.values())), 1),
        }
        rows.append(row)
        out(f'  top-1 {test.top1:.2f}%  counted {row["counted_speedup"]:.2f}x  measured {row["measured_speedup"]:.2f}x '
            f'({ms["lookup"]:.1f} ms vs CNN {ms["cnn"]:.1f} ms, dense equivalent {ms["dense"]:.1f} ms)')
    return rows


def write_csv(rows, path):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row[k]) for k in CSV_FIELDS})


def _csv_value(v):
    return f'{v:.6g}' if isinstance(v, float) else v


def read_csv(path):
    """The rows of a tradeoff.csv, numbers as floats; the first row is the CNN reference."""
    if not os.path.isfile(path):
        raise TradeoffError(f'-fromCSV {path}: no such file; give a tradeoff.csv written by this script')
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [k for k in ('name', 'top1', 'counted_speedup', 'measured_speedup') if k not in columns]
        if missing:
            raise TradeoffError(f'{path}: not a tradeoff.csv (no column {", ".join(missing)}); give a CSV written '
                                'by this script')
        rows = []
        for line, row in enumerate(reader, 2):
            try:
                for k in ('top1', 'counted_speedup', 'measured_speedup'):
                    row[k] = float(row[k])
            except ValueError:
                raise TradeoffError(f'{path}, line {line}: {k} "{row[k]}" is not a number') from None
            rows.append(row)
    if not rows:
        raise TradeoffError(f'{path}: no rows; run the sweep first')
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The figure


def draw(rows, output, title='AlexNet LCNN on the embedded digits'):
    """The paper's layout (accuracy on x, speedup on y, LCNN green dots, the CNN an orange cross) with both speedups
    of each LCNN run joined by a grey line. The y axis is logarithmic: sparse runs reach 100x and more counted."""
    plt = import_pyplot()
    from matplotlib.ticker import FuncFormatter
    cnn, lcnn_rows = rows[0], rows[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for r in lcnn_rows:
        ax.plot([r['top1'], r['top1']], [r['measured_speedup'], r['counted_speedup']], '-', color='#bdbdbd',
                linewidth=1.5, zorder=1)
        ax.annotate(r['name'].replace('LCNN ', ''), (r['top1'], r['counted_speedup']), textcoords='offset points',
                    xytext=(7, -3), fontsize=7, color='#555555')
    if lcnn_rows:
        acc = [r['top1'] for r in lcnn_rows]
        ax.plot(acc, [r['counted_speedup'] for r in lcnn_rows], 'o', color='#7cb342', markeredgecolor='#33691e',
                markersize=8, label='LCNN, counted multiplications', zorder=3)
        ax.plot(acc, [r['measured_speedup'] for r in lcnn_rows], 's', color='#1e88e5', markeredgecolor='#0d47a1',
                markersize=6, label='LCNN, measured (lookup engine, 1 thread)', zorder=3)
    ax.plot([cnn['top1']], [1.0], 'x', color='#e69500', markersize=10, markeredgewidth=2.5, label='CNN (AlexNet)',
            zorder=3)
    ax.set_yscale('log')
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}x'))
    top = max([1.0] + [r['counted_speedup'] for r in lcnn_rows])
    ax.set_ylim(0.7, top * 1.6)
    ax.margins(x=0.1)
    ax.set_xlabel('Accuracy (top-1 %, digits validation)')
    ax.set_ylabel('Speedup over the CNN')
    ax.set_title(title, fontsize=10)
    ax.grid(True, which='major', alpha=0.3)
    ax.legend(loc='best', fontsize=8)
    fig.tight_layout()
    save_figure(fig, output)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog='tradeoff.py', description='Train a sweep of AlexNet LCNN dictionary sizes and '
                                'sparsity factors on the embedded digits; plot accuracy vs speedup over the CNN.')
    p.add_argument('-quick', action='store_true', help='two configs, very short runs: a smoke test of the pipeline')
    p.add_argument('-dir', help='folder of the sweep\'s runs [cache/tradeoff, or cache/tradeoff-quick]')
    p.add_argument('-csv', help='CSV to write [visualization/tradeoff.csv, or <dir>/tradeoff.csv with -quick]')
    p.add_argument('-o', '--output',
                   help='PNG to write [visualization/tradeoff.png, or <dir>/tradeoff.png with -quick]')
    p.add_argument('-fromCSV', metavar='CSV', help='only draw the figure from this CSV (no training)')
    p.add_argument('-rounds', type=int, default=7, help='timing rounds per model (median over all) [7]')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work_dir = os.path.abspath(args.dir or os.path.join(ROOT, 'cache', 'tradeoff-quick' if args.quick else 'tradeoff'))
    out_dir = work_dir if args.quick else os.path.join(ROOT, 'visualization')
    csv_path = args.csv or os.path.join(out_dir, 'tradeoff.csv')
    png_path = args.output or os.path.join(out_dir, 'tradeoff.png')
    try:
        if args.rounds < 1:
            raise TradeoffError(f'-rounds {args.rounds}: give at least 1')
        if args.fromCSV:
            rows = read_csv(args.fromCSV)
        else:
            # fail before hours of training, not after
            import_pyplot()
            os.makedirs(work_dir, exist_ok=True)
            start = time.perf_counter()
            sweep, flags = (QUICK_SWEEP, QUICK_TRAIN_FLAGS) if args.quick else (SWEEP, TRAIN_FLAGS)
            rows = run_sweep(sweep, flags, work_dir, rounds=args.rounds)
            write_csv(rows, csv_path)
            print(f'wrote {csv_path} ({time.perf_counter() - start:.0f} s in all)')
        draw(rows, png_path)
    except (TradeoffError, PlotError) as e:
        print(f'tradeoff.py: {e}', file=sys.stderr)
        sys.exit(1)
    print(f'wrote {png_path}')


if __name__ == '__main__':
    main()
