"""Port of lcnn's visualization/accuracy.sh + plot.py: training curves (top-1 and loss per epoch) from run logs."""
import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field

_NUM = r'([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)'
# The summary lines train.lua and test.lua print (and train.py / test.py print byte for byte). Whitespace is
# matched loosely because the Lua formats mix tabs and spaces and a copied log may have lost them.
_TRAIN_RE = re.compile(r'Epoch: \[(\d+)\]\[TRAINING SUMMARY\] Total Time\(s\): ' + _NUM +
                       r'\s+average loss \(per batch\): ' + _NUM + r'\s+accuracy\(%\):\s+top-1 ' + _NUM)
_TEST_RE = re.compile(r'Epoch: \[(\d+)\]\[TESTING SUMMARY\] Total Time\(s\): ' + _NUM +
                      r'\s+average loss \(per batch\): ' + _NUM + r'\s+accuracy \[Center\]\(%\):\s+top-1 ' + _NUM +
                      r'\s+top-5 ' + _NUM)


class PlotError(Exception):
    """A log or option the plotting tools cannot use; the message says what to do."""


@dataclass
class EpochSummary:
    """One [TRAINING SUMMARY] or [TESTING SUMMARY] line (top5 is None on training lines: Lua prints none)."""
    epoch: int
    time: float
    loss: float
    top1: float
    top5: float | None = None


@dataclass
class RunLog:
    """The per-epoch summaries of one run, keyed by epoch. A resumed run appends to its log.txt and may repeat an
    epoch; the line printed last wins, as it belongs to the checkpoint the run went on from."""
    name: str
    train: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    last_test_epoch: int | None = None

    def series(self, split, key):
        """(epochs, values) of `key` ('top1', 'top5', 'loss') for split 'train' or 'test', in epoch order."""
        rows = getattr(self, split)
        epochs = sorted(rows)
        return epochs, [getattr(rows[e], key) for e in epochs]

    def last_test(self):
        """The summary of the last [TESTING SUMMARY] line in the log, or None."""
        return None if self.last_test_epoch is None else self.test[self.last_test_epoch]


def parse_lines(lines, name='run'):
    """Parse log lines (lcnn's log.txt, ours or the Lua one) into a RunLog. Lines that are not summaries are ignored."""
    run = RunLog(name)
    for line in lines:
        if 'SUMMARY]' not in line:
            continue
        m = _TRAIN_RE.search(line)
        if m:
            epoch = int(m.group(1))
            run.train[epoch] = EpochSummary(epoch, float(m.group(2)), float(m.group(3)), float(m.group(4)))
            continue
        m = _TEST_RE.search(line)
        if m:
            epoch = int(m.group(1))
            run.test[epoch] = EpochSummary(epoch, float(m.group(2)), float(m.group(3)), float(m.group(4)),
                                           float(m.group(5)))
            run.last_test_epoch = epoch
    return run


def log_path(path):
    """The log file a command-line argument names: a run folder means its log.txt."""
    if os.path.isdir(path):
        candidate = os.path.join(path, 'log.txt')
        if not os.path.isfile(candidate):
            raise PlotError(f'{path}: this folder has no log.txt; give a run folder of main.py or a log file')
        return candidate
    if not os.path.isfile(path):
        raise PlotError(f'{path}: no such file or folder; give a run folder of main.py or a log file')
    return path


def run_name(path):
    """The legend label of a run: its folder name for a run folder or a log.txt in it, else the file name.
    Run folders are dates (cache/<netType,options>/<date>), so the options folder is kept in front of them."""
    path = os.path.abspath(path)
    if os.path.isfile(path) and os.path.basename(path) == 'log.txt':
        path = os.path.dirname(path)
    if os.path.isdir(path):
        parent = os.path.basename(os.path.dirname(path))
        return f'{parent}/{os.path.basename(path)}' if ',' in parent else os.path.basename(path)
    return os.path.basename(path)


def parse_log(path, name=None):
    """The RunLog of a run folder or log file. Raises PlotError when it holds no summary line."""
    file = log_path(path)
    # Lua's log.txt may carry stray bytes (accuracy.sh greps it with -a); they never sit inside summary lines.
    with open(file, encoding='utf-8', errors='replace') as f:
        run = parse_lines(f, name if name is not None else run_name(path))
    if not run.train and not run.test:
        raise PlotError(f'{file}: no [TRAINING SUMMARY] or [TESTING SUMMARY] line; is it a log.txt of main.py '
                        'or of th main.lua, with at least one finished epoch?')
    return run


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError('matplotlib is not installed; pip install -r visualization/requirements.txt') from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def draw_curves(runs, output):
    """Top-1 and loss per epoch, train solid and test dashed, one colour per run; written as PNG to `output`."""
    plt = import_pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, run in enumerate(runs):
        colour = colours[i % len(colours)]
        for split, style in (('train', '-'), ('test', '--')):
            epochs, top1 = run.series(split, 'top1')
            if not epochs:
                continue
            label = f'{run.name} ({split})'
            ax_acc.plot(epochs, top1, style, color=colour, marker='o', markersize=3, label=label)
            epochs, loss = run.series(split, 'loss')
            ax_loss.plot(epochs, loss, style, color=colour, marker='o', markersize=3, label=label)
    ax_acc.set_ylabel('top-1 accuracy (%)')
    ax_loss.set_ylabel('average loss (per batch)')
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel('epoch')
        ax.grid(True, alpha=0.3)
        # epochs are whole numbers; matplotlib would otherwise put ticks at 1.5 on short runs
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(loc='best', fontsize='small')
    fig.tight_layout()
    save_figure(fig, output)
    plt.close(fig)


def save_figure(fig, output):
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise PlotError(f'-o {output}: the folder {folder} does not exist; create it or write elsewhere')
    kind = os.path.splitext(output)[1][1:].lower() or 'png'
    if kind not in fig.canvas.get_supported_filetypes():
        raise PlotError(f'-o {output}: matplotlib cannot write .{kind} files; end the name in one of '
                        f'{", ".join("." + k for k in sorted(fig.canvas.get_supported_filetypes()))}')
    # a temporary name, renamed once complete: an interrupted or failed write leaves no half figure at -o
    tmp = os.path.join(folder, f'.{os.path.basename(output)}.{os.getpid()}.{kind}')
    try:
        fig.savefig(tmp, dpi=120, format=kind)
        os.replace(tmp, output)
    except OSError as e:
        raise PlotError(f'-o {output}: cannot write it ({e.strerror}); give a file in a folder you can write '
                        'to') from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _summary_text(run):
    """What plot.py prints for each run, like lcnn's plot.py printed its series."""
    def fmt(values):
        return ' '.join('nan' if math.isnan(v) else f'{v:.2f}' for v in values)
    lines = [run.name]
    for split in ('train', 'test'):
        epochs, top1 = run.series(split, 'top1')
        if epochs:
            lines.append(f'  {split} top-1 by epoch {epochs[0]}..{epochs[-1]}: {fmt(top1)}')
    return '\n'.join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog='plot.py', description='Top-1 and loss per epoch from log.txt files '
                                '(of main.py or of the Lua th main.lua), several runs overlaid.')
    p.add_argument('runs', nargs='+', metavar='RUN_DIR_OR_LOG', help='a run folder (its log.txt is read) or a log file')
    p.add_argument('-o', '--output', default='curves.png', help='PNG file to write [curves.png]')
    p.add_argument('-labels', '--labels', nargs='+', metavar='LABEL',
                   help='legend labels, one per run [the run folder or file names]')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.labels is not None and len(args.labels) != len(args.runs):
            raise PlotError(f'-labels: {len(args.labels)} labels for {len(args.runs)} runs; give one label per run')
        names = args.labels or [None] * len(args.runs)
        runs = [parse_log(path, name) for path, name in zip(args.runs, names)]
        draw_curves(runs, args.output)
    except PlotError as e:
        print(f'plot.py: {e}', file=sys.stderr)
        sys.exit(1)
    for run in runs:
        print(_summary_text(run))
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
