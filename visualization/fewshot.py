"""Training efficiency of LCNN against the CNN (lcnn's README "Training efficiency results", paper sections 4.3 and
4.4), remade on the embedded digits: top-1 with few examples per class, and top-1 over the first iterations.

Two protocols, every run a `main.py -dataset digits` training of plain alexnet (the CNN) and alexnet-lcnn:
  scratch:  K images per class of all ten digits (-samplesPerClass K; 'all' = the whole train split), both networks
            initialised afresh;
  transfer: both networks are first trained on digits 0-4 (-classes 0,1,2,3,4, the whole split, the same budget),
            then learn digits 5-9 from K images per class: each network starts from its own 0-4 network with the last
            layer replaced (-retrain ... -resetClassifier), everything else transferred; the LCNN keeps its
            dictionaries fixed (-freezeDictionary) and learns its lookup coefficients and the rest, the CNN fine-tunes
            every layer.
At one seed the CNN and the LCNN see the same K images (the subset depends on -manualSeed and K only). Runs are
tested on the whole validation split of their classes after every epoch; top-1 and top-5 are the last test's.
Writes fewshot.csv (one row per run), fewshot.png (top-1 against K, mean and spread over seeds) and iterations.png
(top-1 against training iterations on the whole train split, from the scratch runs' log.txt).
"""
import argparse
import csv
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from visualization.plot import PlotError, import_pyplot, parse_log  # noqa: E402

MAIN = os.path.join(ROOT, 'main.py')

ALL = 'all'
PRETRAIN_CLASSES = '0,1,2,3,4'
PRETRAIN_SEED = 1
NEW_CLASSES = '5,6,7,8,9'
# Every run: the embedded digits, no bars in the captured output, batches made in the main process (on 2 shared
# cores a donkey process only competes with the training for them).
COMMON_FLAGS = ['-dataset', 'digits', '-noProgress', '-nDonkeys', '0']
# The LCNN: dictionaries of 32 (conv) and 64 (fully connected) vectors, no sparsity factor; 97.7% on the whole
# digits set in tradeoff.csv. The README main job's smaller 8 / 16 trailed the CNN by 15 points after 20 iterations
# (64% against 79%, one seed), this one matched it (80%).
MODELS = {
    'CNN': ['-netType', 'alexnet'],
    'LCNN': ['-netType', 'alexnet-lcnn', '-poolSize', '32', '-fcPool', '64'],
}
RECORD = 'fewshot-run.json'
CSV_FIELDS = ('protocol', 'model', 'K', 'seed', 'epochs', 'top1', 'top5', 'iterations', 'batch_size', 'run_s',
              'run_dir')


class FewshotError(Exception):
    """A run or option the sweep cannot use; the message says what to do."""


@dataclasses.dataclass
class Budget:
    """What the sweep trains: the flags every run shares, the training iterations (batches) of each kind of run,
    how often the scratch runs on the whole train split are tested (the points of iterations.png), the seeds, and
    the K values of each protocol. Pretraining runs once per network, at PRETRAIN_SEED."""
    flags: list
    scratch_iterations: int
    test_every: int
    pretrain_iterations: int
    transfer_iterations: int
    seeds: list
    scratch_k: list
    transfer_k: list


# AlexNet takes only crops of 223 to 254 pixels (its 6x6 "fully connected" convolution must meet a 6x6 map), so the
# cost is set by the number of iterations and by the tests (one pass over the 359 validation digits costs about 3
# training batches). Batches of 32 as in the README's main job: with 8, BatchNorm's running statistics lag so far
# behind the batch ones that the first tests stay at chance. LR regimes are per epoch and the first lasts 18
# epochs, so a run trains the same whether its iterations make one epoch (tested once: the runs on K images) or
# several (tested after each). 20 iterations of 32 are under half a pass over the train split.
FULL = Budget(flags=['-imageSize', '224', '-batchSize', '32', '-LR', '2'],
              scratch_iterations=20, test_every=5, pretrain_iterations=40, transfer_iterations=10,
              seeds=[1, 2, 3], scratch_k=[1, 2, 5, 10, 20, ALL], transfer_k=[1, 2, 5, 10])
# --quick: the whole pipeline in a few minutes (one seed, three K values per protocol, two iterations a run).
QUICK = Budget(flags=FULL.flags, scratch_iterations=2, test_every=1, pretrain_iterations=2, transfer_iterations=2,
               seeds=[1], scratch_k=[1, 10, ALL], transfer_k=[1, 5, 10])


@dataclasses.dataclass
class Run:
    """One main.py training: its place in the sweep, its command line and its folder."""
    protocol: str
    model: str
    k: object
    seed: int
    argv: list
    run_dir: str
    epochs: int
    epoch_size: int
    batch_size: int
    needs: list = dataclasses.field(default_factory=list)


def _samples(k):
    return [] if k == ALL else ['-samplesPerClass', str(k)]


def plan(budget, work_dir):
    """The runs of the sweep in the order they are made: per network, its pretraining first, then the transfer runs
    that start from it, then the scratch runs."""
    batch_size = int(budget.flags[budget.flags.index('-batchSize') + 1])
    runs = []

    def add(protocol, model, k, seed, schedule, extra, needs=()):
        epochs, epoch_size = schedule
        run_dir = os.path.join(work_dir, protocol, model, f'K{k}', f'seed{seed}')
        argv = (COMMON_FLAGS + budget.flags + MODELS[model] +
                ['-nEpochs', str(epochs), '-epochSize', str(epoch_size), '-manualSeed', str(seed)] + extra +
                ['-save', run_dir])
        runs.append(Run(protocol, model, k, seed, argv, run_dir, epochs, epoch_size, batch_size, list(needs)))
        return runs[-1]

    for model in MODELS:
        pre = add('pretrain', model, ALL, PRETRAIN_SEED, (1, budget.pretrain_iterations),
                  ['-classes', PRETRAIN_CLASSES])
        weights = os.path.join(pre.run_dir, 'model_1.t7')
        freeze = ['-freezeDictionary'] if model == 'LCNN' else []
        for seed in budget.seeds:
            for k in budget.transfer_k:
                add('transfer', model, k, seed, (1, budget.transfer_iterations),
                    ['-classes', NEW_CLASSES, '-retrain', weights, '-resetClassifier', '-noCheckpoint'] +
                    _samples(k) + freeze, needs=[weights])
    tested = (budget.scratch_iterations // budget.test_every, budget.test_every)
    for model in MODELS:
        for seed in budget.seeds:
            for k in budget.scratch_k:
                add('scratch', model, k, seed, tested if k == ALL else (1, budget.scratch_iterations),
                    _samples(k) + ['-noCheckpoint'])
    return runs


# ----------------------------------------------------------------------------------------------------------------
# Running, and reusing what finished before


def _stamp(run):
    """What a finished run was made from: its command line and the files it started from (size, mtime)."""
    inputs = {}
    for path in run.needs:
        st = os.stat(path)
        inputs[path] = [st.st_size, st.st_mtime_ns]
    return {'argv': run.argv, 'inputs': inputs}


def finished(run):
    """The record of `run` when its folder holds a finished run made from the same command line and inputs."""
    try:
        with open(os.path.join(run.run_dir, RECORD)) as f:
            record = json.load(f)
        stamp = _stamp(run)
    except (OSError, ValueError):
        return None
    if record.get('argv') != stamp['argv'] or record.get('inputs') != stamp['inputs']:
        return None
    try:
        log = parse_log(run.run_dir)
    except PlotError:
        return None
    return record if run.epochs in log.test else None


def launch_main(argv):
    """How a run is trained by default: main.py as a program; returns (exit code, its stderr). Its stdout is
    dropped: main.py copies everything it prints into the run's log.txt."""
    proc = subprocess.run([sys.executable, MAIN] + argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    return proc.returncode, proc.stderr


def execute(run, launch):
    """Train `run` in a clean folder; returns its record (seconds it took, written last)."""
    if os.path.isdir(run.run_dir):
        shutil.rmtree(run.run_dir)
    os.makedirs(os.path.dirname(run.run_dir), exist_ok=True)
    start = time.perf_counter()
    code, stderr = launch(run.argv)
    if code != 0:
        lines = stderr.strip().splitlines()
        last = lines[-1] if lines else f'exit code {code}'
        raise FewshotError(f'{run.protocol} {run.model} K={run.k} seed {run.seed}: main.py failed ({last}); '
                           f'its flags: {" ".join(run.argv)}')
    if run.protocol == 'pretrain':
        # the transfer runs start from the last model only (an AlexNet checkpoint is hundreds of MB)
        for name in os.listdir(run.run_dir):
            m = re.fullmatch(r'(model|optimState)_(\d+)\.t7', name)
            if m and (m.group(1) == 'optimState' or int(m.group(2)) != run.epochs):
                os.remove(os.path.join(run.run_dir, name))
    record = dict(_stamp(run), seconds=round(time.perf_counter() - start, 1))
    tmp = os.path.join(run.run_dir, RECORD + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(run.run_dir, RECORD))
    return record


def run_sweep(budget, work_dir, launch=launch_main, out=None, progress=True):
    """Make (or reuse) every run of `budget` under work_dir, each trained by `launch(argv)`; returns one row per
    run (CSV_FIELDS) and {(protocol, model, K, seed): its log}."""
    runs = plan(budget, work_dir)
    rows, logs = [], {}
    with tqdm(total=len(runs), desc='fewshot runs', unit='run', disable=not progress) as bar:
        say = out or bar.write
        for i, run in enumerate(runs, 1):
            what = f'[{i}/{len(runs)}] {run.protocol} {run.model} K={run.k} seed {run.seed}'
            bar.set_postfix_str(f'{run.protocol} {run.model} K={run.k} seed {run.seed}')
            record = finished(run)
            reused = record is not None
            if not reused:
                record = execute(run, launch)
            log = parse_log(run.run_dir, run.model)
            if run.epochs not in log.test:
                raise FewshotError(f'{what}: main.py ended without testing epoch {run.epochs}; look at '
                                   f'{os.path.join(run.run_dir, "log.txt")}')
            test = log.test[run.epochs]
            logs[run.protocol, run.model, str(run.k), run.seed] = log
            rows.append({
                'protocol': run.protocol, 'model': run.model, 'K': str(run.k), 'seed': run.seed,
                'epochs': run.epochs, 'top1': test.top1, 'top5': test.top5,
                'iterations': run.epochs * run.epoch_size, 'batch_size': run.batch_size,
                'run_s': record['seconds'], 'run_dir': os.path.relpath(run.run_dir, ROOT),
            })
            say(f'{what}: top-1 {test.top1:.2f}% top-5 {test.top5:.2f}% '
                f'({"reused" if reused else "%.0f s" % record["seconds"]})')
            bar.update(1)
    return rows, logs


def write_csv(rows, path):
    """The rows as CSV, written under a temporary name and then renamed (never half-written)."""
    tmp = path + '.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Figures

COLOURS = {'CNN': '#e69500', 'LCNN': '#2e7d32'}
CHANCE = {'scratch': 10.0, 'transfer': 20.0}
TITLES = {'scratch': 'From scratch: digits 0-9, K images per class',
          'transfer': 'Transfer: pretrained on 0-4, learn 5-9 from K per class'}
LEGEND = {'scratch': {'CNN': 'CNN (AlexNet)', 'LCNN': 'LCNN (dictionaries of 32, fc 64)'},
          'transfer': {'CNN': 'CNN, all layers fine-tuned', 'LCNN': 'LCNN, dictionaries transferred and fixed'}}


def _by_k(rows, protocol, model):
    """{K label: [top-1 of each seed]} in the order the sweep ran them."""
    out = {}
    for r in rows:
        if r['protocol'] == protocol and r['model'] == model:
            out.setdefault(r['K'], []).append(r['top1'])
    return out


def _save(fig, path):
    plt = import_pyplot()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def draw_fewshot(rows, path):
    """Top-1 against K for each protocol: mean over seeds (line), min-max over seeds (band), each seed (dots)."""
    plt = import_pyplot()
    protocols = [p for p in ('scratch', 'transfer') if any(r['protocol'] == p for r in rows)]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.6 * len(protocols), 4.3), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        ks = []
        for r in rows:
            if r['protocol'] == protocol and r['K'] not in ks:
                ks.append(r['K'])
        for model in MODELS:
            by_k = _by_k(rows, protocol, model)
            xs = [i for i, k in enumerate(ks) if k in by_k]
            values = [by_k[ks[i]] for i in xs]
            if not xs:
                continue
            colour = COLOURS[model]
            ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.15,
                            linewidth=0)
            ax.plot(xs, [statistics.mean(v) for v in values], '-o', color=colour, markersize=5,
                    label=LEGEND[protocol][model])
            for x, v in zip(xs, values):
                ax.plot([x] * len(v), v, '.', color=colour, alpha=0.5, markersize=4)
        ax.axhline(CHANCE[protocol], color='#9e9e9e', linestyle=':', linewidth=1, label='chance')
        ax.set_xticks(range(len(ks)))
        ax.set_xticklabels(ks)
        ax.set_xlabel('training images per class (K)')
        ax.set_ylabel('top-1 accuracy (%), validation')
        ax.set_ylim(0, 100)
        ax.set_title(TITLES[protocol], fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc='lower right', fontsize=8)
    n_seeds = len({r['seed'] for r in rows})
    fig.suptitle(f'AlexNet CNN vs LCNN on the embedded digits ({n_seeds} seed{"s" * (n_seeds > 1)}: '
                 'line = mean, band = min-max)', fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def draw_iterations(rows, logs, path):
    """Test top-1 after every epoch against training iterations, scratch runs on the whole train split."""
    plt = import_pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.3))
    for model in MODELS:
        runs = [(r, logs['scratch', model, ALL, r['seed']]) for r in rows
                if r['protocol'] == 'scratch' and r['model'] == model and r['K'] == ALL]
        if not runs:
            continue
        per_epoch = runs[0][0]['iterations'] // runs[0][0]['epochs']
        epochs = sorted(set.intersection(*(set(log.test) for _, log in runs)))
        xs = [e * per_epoch for e in epochs]
        values = [[log.test[e].top1 for _, log in runs] for e in epochs]
        colour = COLOURS[model]
        ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.15,
                        linewidth=0)
        ax.plot(xs, [statistics.mean(v) for v in values], '-o', color=colour, markersize=5,
                label=LEGEND['scratch'][model])
    batch = rows[0]['batch_size'] if rows else '?'
    ax.set_xlabel(f'training iterations (batches of {batch})')
    ax.set_ylabel('top-1 accuracy (%), validation')
    ax.set_ylim(0, 100)
    ax.set_title('The first iterations, all training images (mean, min-max over seeds)', fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog='fewshot.py', description='LCNN vs CNN with few examples per class (from '
                                'scratch, and with dictionaries transferred from digits 0-4) and over the first '
                                'iterations, on the embedded digits. Finished runs are reused.')
    p.add_argument('--quick', '-quick', action='store_true',
                   help='one seed, three K values per protocol, a few iterations (a few minutes on 2 cores)')
    p.add_argument('-o', '--output', default=os.path.join(ROOT, 'visualization'), metavar='DIR',
                   help='folder for fewshot.csv, fewshot.png and iterations.png [visualization/]')
    p.add_argument('-work', metavar='DIR', help='folder of the runs [cache/fewshot, or cache/fewshot-quick]')
    p.add_argument('-seeds', metavar='S,S,...', help='these -manualSeed values instead of the budget\'s '
                   '(e.g. a first pass with fewer; the runs made are reused by a later full sweep)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    budget = QUICK if args.quick else FULL
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(',')]
        except ValueError:
            print(f'fewshot.py: -seeds {args.seeds}: give whole numbers separated by commas, e.g. 1,2',
                  file=sys.stderr)
            sys.exit(1)
        budget = dataclasses.replace(budget, seeds=seeds)
    work_dir = os.path.abspath(args.work or os.path.join(ROOT, 'cache', 'fewshot-quick' if args.quick else 'fewshot'))
    out_dir = os.path.abspath(args.output)
    try:
        # fail before the training, not after
        import_pyplot()
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise FewshotError(f'-o {args.output}: cannot create that folder ({e.strerror}); write elsewhere') \
                from None
        start = time.perf_counter()
        rows, logs = run_sweep(budget, work_dir)
        csv_path = os.path.join(out_dir, 'fewshot.csv')
        write_csv(rows, csv_path)
        draw_fewshot(rows, os.path.join(out_dir, 'fewshot.png'))
        draw_iterations(rows, logs, os.path.join(out_dir, 'iterations.png'))
    except (FewshotError, PlotError) as e:
        print(f'fewshot.py: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    for name in ('fewshot.csv', 'fewshot.png', 'iterations.png'):
        print(f'wrote {os.path.join(out_dir, name)}')
    print(f'{len(rows)} runs, {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
    main()
