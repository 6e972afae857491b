"""Tests of issue 14's training-efficiency tools: -classes, -samplesPerClass (digits and -data folders),
-resetClassifier for lcnn networks, -freezeDictionary, and visualization/fewshot.py on a tiny budget."""
import contextlib
import copy
import csv
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import data
import main
import model as model_setup
import models
import opts
import t7
import train
from data import digits
from layers.activation import LogSoftMax
from layers.shape import View
from layers.PooledSpatialConvolution import PooledSpatialConvolution
from runtime import Dist, worker_opt
from visualization import fewshot, plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = Path(__file__).parent / 'fixtures'
# 8x8 digits with no crop margin: a training image then renders to the same tensor every time it is drawn
SMALL = ['-dataset', 'digits', '-imageSize', '8', '-cropSize', '8', '-batchSize', '16', '-nDonkeys', '0',
         '-noProgress']


def tiny(opt):
    """Stands in for -netType alexnet (a dense first layer) and alexnet-lcnn (a lookup first layer), at 8x8, ending
    like AlexNet in a 1x1-output classifier convolution, nn.View(nClasses) and LogSoftMax."""
    if opt.netType == 'alexnet-lcnn':
        first = PooledSpatialConvolution(3, 8, 3, 3, 1, 1, 1, 1, poolSize=opt.poolSize,
                                         lambda_=getattr(opt, 'lambda'), initialSparsity=opt.initialSparsity)
    else:
        first = models.convolution(3, 8, 3, 3, 1, 1, 1, 1)
    return nn.Sequential(first, models.batch_norm(8), models.relu(True),
                         models.convolution(8, opt.nClasses, 8, 8), View(opt.nClasses), LogSoftMax())


def parse(*argv):
    return opts.parse(list(SMALL) + list(argv))


# --- options ----------------------------------------------------------------------------------------------------

def test_options_are_listed_default_to_todays_behaviour_and_stay_out_of_the_run_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    help_text = opts.help_text()
    for name in ('-classes', '-samplesPerClass', '-freezeDictionary'):
        assert f'\n  {name} ' in help_text
    opt = opts.parse(['-dataset', 'digits'])
    assert (opt.classes, opt.samplesPerClass, opt.freezeDictionary, opt.nClasses) == ('', 0, False, 10)
    assert os.path.basename(os.path.dirname(opt.save)) == 'alexnet-lcnn,dataset=digits'
    opt = opts.parse(['-dataset', 'digits', '-classes', '5,6,7,8,9', '-samplesPerClass', '2', '-freezeDictionary'])
    assert opt.nClasses == 5 and opt.samplesPerClass == 2 and opt.freezeDictionary is True
    assert os.path.basename(os.path.dirname(opt.save)) == \
        'alexnet-lcnn,classes=5,6,7,8,9,dataset=digits,freezeDictionary=t,samplesPerClass=2'
    # -classes gives the new classifier its size, as -nClasses does
    assert opts.parse(['-dataset', 'digits', '-classes', '1,2,3,4,5,6', '-resetClassifier']).nClasses == 6
    # fewer than 5 classes report top-n for top-5 (util.compute_score)
    assert opts.parse(['-dataset', 'digits', '-classes', '3,7']).nClasses == 2


@pytest.mark.parametrize('argv, words', [
    (['-samplesPerClass', '-1'], ['-samplesPerClass -1', 'whole number']),
    (['-samplesPerClass', '2.5'], ['-samplesPerClass 2.5', 'whole number']),
    (['-classes', '1,,2'], ["-classes '1,,2'", 'distinct class names']),
    (['-classes', '1,2,1'], ["-classes '1,2,1'", 'distinct class names']),
    (['-netType', 'clcneta', '-samplesPerClass', '2'], ['-samplesPerClass', "lcnn's loaders"]),
])
def test_option_errors_are_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        opts.parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('main.py: ')
    for word in words:
        assert word in err


# --- -samplesPerClass and -classes on the digits --------------------------------------------------------------------

WHOLE_TRAIN = {}


def full_train():
    """{rendered image bytes: index in the whole train split} and the split's labels (8x8, normalised)."""
    if not WHOLE_TRAIN:
        train, _ = digits.setup(parse())
        inputs, labels = train.get(0, train.size())
        WHOLE_TRAIN['index'] = {x.numpy().tobytes(): i for i, x in enumerate(inputs)}
        WHOLE_TRAIN['labels'] = labels
    return WHOLE_TRAIN['index'], WHOLE_TRAIN['labels']


def handed_out(opt, n_batches=40):
    """(train-split index, label) of every image the training loader hands out in n_batches batches."""
    train, _ = data.setup(opt)
    index, _ = full_train()
    seen = []
    for inputs, labels in train.train_batches(opt, n_batches):
        seen += [(index[x.numpy().tobytes()], int(y)) for x, y in zip(inputs, labels)]
    return seen


def test_samples_per_class_trains_on_exactly_k_images_of_each_class():
    seen = handed_out(parse('-samplesPerClass', '2'))
    _, labels = full_train()
    images = set(seen)
    assert len(seen) == 640
    for c in range(10):
        mine = {i for i, y in images if y == c}
        assert len(mine) == 2, c
        assert all(int(labels[i]) == c for i in mine)
    train, test = data.setup(parse('-samplesPerClass', '2'))
    assert train.size() == 20 and test.size() == 359


def test_subset_is_the_same_for_both_networks_and_changes_with_the_seed():
    def chosen(*argv):
        return sorted(set(i for i, _ in handed_out(parse('-samplesPerClass', '5', *argv), 30)))

    cnn = chosen('-netType', 'alexnet')
    lcnn = chosen('-netType', 'alexnet-lcnn', '-poolSize', '4')
    assert cnn == lcnn and len(cnn) == 50
    assert chosen('-manualSeed', '3') != cnn
    # a smaller K keeps part of the larger one's images
    smaller = set(i for i, _ in handed_out(parse('-samplesPerClass', '2'), 30))
    assert smaller < set(cnn)


def test_subset_seed_is_the_runs_in_every_ddp_worker():
    opt = parse('-samplesPerClass', '3', '-manualSeed', '7')
    other = worker_opt(opt, Dist(1, 2))
    assert other.manualSeed != opt.manualSeed
    a, _ = digits.setup(opt)
    b, _ = digits.setup(other)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_classes_renumbers_labels_and_restricts_both_splits():
    train, test = data.setup(parse('-classes', '7,5,9,0,1'))
    whole_train, whole_test = data.setup(parse())
    assert train.classes == test.classes == ['7', '5', '9', '0', '1']
    for part, whole in ((train, whole_train), (test, whole_test)):
        x, y = part.get(0, part.size())
        wx, wy = whole.get(0, whole.size())
        for new, old in enumerate((7, 5, 9, 0, 1)):
            assert torch.equal(x[y == new], wx[wy == old])
        assert part.size() == int(sum((wy == c).sum() for c in (7, 5, 9, 0, 1)))
    opt = parse('-classes', '7,5,9,0,1')
    _, labels = next(iter(train.train_batches(opt, 1)))
    assert set(labels.tolist()) <= {0, 1, 2, 3, 4}


def test_unknown_class_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main.main(SMALL + ['-classes', '1,2,3,4,x', '-save', str(tmp_path / 'r')])
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "main.py: -classes: digits (train) has no class 'x' (its classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9); give names "
        'from it']


# --- the same on an ImageNet-style -data folder -----------------------------------------------------------------

@pytest.fixture(scope='module')
def tinynet(tinynet):
    """The folder as the Lua code names folders: a string ending in '/'."""
    return f'{tinynet}/'


def folder_setup(tinynet, tmp_path, *argv):
    cache = tmp_path / 'cache'
    cache.mkdir(exist_ok=True)
    for name in ('imagenet_trainCache.t7', 'imagenet_testCache.t7', 'imagenet_meanstdCache.t7'):
        shutil.copy(FIX / name, cache)
    opt = opts.parse(['-data', tinynet, '-cache', str(cache), '-nDonkeys', '0', '-batchSize', '4', *argv])
    return opt, data.setup(opt)


# tinynet's five classes, in another order than its cache's
REORDERED = ['n04266014', 'n07920052', 'n02123045', 'n01930112', 'n03000134']


def test_folder_loader_samples_per_class_and_classes(tinynet, tmp_path):
    opt, (whole, whole_val) = folder_setup(tinynet, tmp_path)
    assert whole.classes != REORDERED and sorted(whole.classes) == sorted(REORDERED)
    subset = ('-classes', ','.join(REORDERED), '-samplesPerClass', '2')
    opt, (train, val) = folder_setup(tinynet, tmp_path, *subset)
    assert train.classes == val.classes == REORDERED
    seen = []

    def hook(path, rng):
        seen.append(path)
        return torch.zeros(3, 2, 2)

    train.hooks.train_hook = hook
    labels = torch.cat([y for _, y in train.train_batches(opt, 40)])
    by_class = {}
    for path, label in zip(seen, labels.tolist()):
        by_class.setdefault(label, set()).add(path)
    assert {k: len(v) for k, v in by_class.items()} == {c: 2 for c in range(5)}
    assert all(f'/train/{REORDERED[label]}/' in p for label, paths in by_class.items() for p in paths)
    # the validation split keeps every image, relabelled in the order given
    expected = [(whole_val.cached_path(i), REORDERED.index(whole_val.classes[c]))
                for i, c in enumerate(whole_val.imageClass.tolist())]
    assert sorted((val.cached_path(i), int(val.imageClass[i])) for i in range(val.size())) == sorted(expected)
    # the caches still describe all of -data
    assert cached_train_size(tmp_path) == whole.size() == 18
    _, (again, _) = folder_setup(tinynet, tmp_path, *subset)
    assert [again.cached_path(i) for i in range(again.size())] == [train.cached_path(i) for i in range(train.size())]
    picks = {tuple(train.cached_path(i) for i in range(10))}
    for seed in ('5', '6'):
        _, (other, _) = folder_setup(tinynet, tmp_path, *subset, '-manualSeed', seed)
        assert other.size() == 10
        picks.add(tuple(other.cached_path(i) for i in range(10)))
    assert len(picks) > 1


def cached_train_size(tmp_path):
    return int(t7.load(tmp_path / 'cache' / 'imagenet_trainCache.t7').numSamples)


# --- -resetClassifier and -freezeDictionary ---------------------------------------------------------------------

def lcnn_opt(*argv):
    return parse('-netType', 'alexnet-lcnn', '-poolSize', '4', *argv)


def test_reset_classifier_replaces_the_last_layer_and_its_view():
    net = tiny(lcnn_opt())
    before = copy.deepcopy(net)
    model_setup.reset_classifier(net, 3)
    assert net[3].out_channels == 3 and net[4].sizes == (3,)
    for a, b in zip(models.parameters_lua_order(net)[:-2], models.parameters_lua_order(before)[:-2]):
        assert torch.equal(a, b)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    # model.lua's initialisation for the new layer: zero bias
    assert torch.equal(net[3].bias, torch.zeros(3))
    # a lookup classifier keeps its dictionary and draws new combinations
    lookup = nn.Sequential(PooledSpatialConvolution(8, 10, 1, 1, poolSize=4), View(10))
    dictionary = lookup[0].poolconv.weight.clone()
    model_setup.reset_classifier(lookup, 5)
    assert lookup[0].nOutputPlane == 5 and lookup[0].alignconv.weight.shape == (5, 4, 1, 1)
    assert torch.equal(lookup[0].poolconv.weight, dictionary) and lookup[1].sizes == (5,)


def test_freeze_dictionary_leaves_dictionaries_out_of_the_optimizer():
    net = tiny(lcnn_opt())
    model_setup.freeze_dictionaries(net)
    trainer = train.Trainer(net, nn.NLLLoss(), lcnn_opt('-noCheckpoint', '-save', '/nonexistent'), Dist())
    assert all(p is not net[0].poolconv.weight for p in trainer.params)
    assert any(p is net[0].alignconv.weight for p in trainer.params)
    with pytest.raises(main.UserError, match='-freezeDictionary: this network has no lookup layer'):
        model_setup.freeze_dictionaries(tiny(parse('-netType', 'alexnet')))


def lookups(path):
    net = t7.load_model(str(path))
    return [(m.poolconv.weight.clone(), m.alignconv.weight.clone(), m.alignconv.bias.clone())
            for m in net.modules() if isinstance(m, PooledSpatialConvolution)], net


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setattr(models, 'create', tiny)


def run_main(argv, capsys):
    """main.main in this process; returns its stdout (the run must succeed)."""
    main.main(argv)
    return capsys.readouterr().out


def test_freeze_dictionary_keeps_every_dictionary_while_the_coefficients_learn(tmp_path, capsys, tiny_models):
    pretrained = tmp_path / 'pre.t7'
    t7.save_model(str(pretrained), tiny(lcnn_opt('-classes', '0,1,2,3,4')))
    pre, _ = lookups(pretrained)
    # weight decay and momentum too: neither may move a fixed dictionary
    tune = SMALL + ['-netType', 'alexnet-lcnn', '-poolSize', '4', '-nEpochs', '1', '-epochSize', '4', '-LR', '5',
                    '-classes', '5,6,7,8,9', '-samplesPerClass', '3', '-retrain', str(pretrained),
                    '-resetClassifier', '-weightDecay', '0.05', '-momentum', '0.9']
    out = run_main(tune + ['-freezeDictionary', '-save', str(tmp_path / 'frozen')], capsys)
    assert ' => Replacing classifier with 5-way classifier' in out
    assert '=> Dictionaries of 1 lookup layers kept fixed (-freezeDictionary)' in out
    frozen, net = lookups(tmp_path / 'frozen' / 'model_1.t7')
    assert net[3].out_channels == 5 and net[4].sizes == (5,)
    for (d0, a0, b0), (d1, a1, b1) in zip(pre, frozen):
        assert torch.equal(d0, d1)
        assert not torch.equal(a0, a1) and not torch.equal(b0, b1)
    # resuming keeps the trained classifier, and the optimState of the trained parameters fits again
    out = run_main(tune + ['-freezeDictionary', '-resume', str(tmp_path / 'frozen'), '-nEpochs', '2'], capsys)
    assert 'Replacing classifier' not in out and '==> online epoch # 2' in out
    resumed, _ = lookups(tmp_path / 'frozen' / 'model_2.t7')
    assert torch.equal(resumed[0][0], pre[0][0]) and not torch.equal(resumed[0][1], frozen[0][1])
    # the same fine-tuning without the flag moves the dictionary
    run_main(tune + ['-save', str(tmp_path / 'free')], capsys)
    free, _ = lookups(tmp_path / 'free' / 'model_1.t7')
    assert not torch.equal(pre[0][0], free[0][0])


def test_load_params_with_reset_classifier_copies_all_but_the_last_layer(tmp_path, tiny_models):
    saved = tiny(lcnn_opt())
    path = tmp_path / 'saved.t7'
    t7.save_model(str(path), saved)
    opt = lcnn_opt('-classes', '0,1,2,3,4,5', '-loadParams', str(path), '-resetClassifier', '-save',
                   str(tmp_path / 's'))
    net, _ = model_setup.setup(opt, Dist())
    ours, theirs = models.parameters_lua_order(net), models.parameters_lua_order(saved)
    for a, b in zip(ours[:-2], theirs[:-2]):
        assert torch.equal(a, b)
    assert ours[-2].shape == (6, 8, 8, 8) and torch.equal(ours[-1], torch.zeros(6))


# --- visualization/fewshot.py -----------------------------------------------------------------------------------

TINY_BUDGET = fewshot.Budget(flags=['-imageSize', '8', '-cropSize', '8', '-batchSize', '16', '-LR', '5'],
                             scratch_iterations=4, test_every=2, pretrain_iterations=2, transfer_iterations=2,
                             seeds=[4], scratch_k=[1, fewshot.ALL], transfer_k=[2])


def in_process(argv):
    """main.main in this process (the tiny networks standing in), as fewshot.run_sweep launches a run."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main.main(argv)
        except SystemExit as e:
            return e.code, err.getvalue()
    return 0, err.getvalue()


def test_fewshot_runs_both_protocols_writes_the_csv_and_figures_and_reuses_runs(tmp_path, tiny_models):
    work, out = tmp_path / 'work', tmp_path / 'out'
    out.mkdir()
    messages = []
    rows, logs = fewshot.run_sweep(TINY_BUDGET, str(work), launch=in_process, out=messages.append, progress=False)
    assert [(r['protocol'], r['model'], r['K'], r['epochs'], r['iterations']) for r in rows] == [
        ('pretrain', 'CNN', 'all', 1, 2), ('transfer', 'CNN', '2', 1, 2),
        ('pretrain', 'LCNN', 'all', 1, 2), ('transfer', 'LCNN', '2', 1, 2),
        ('scratch', 'CNN', '1', 1, 4), ('scratch', 'CNN', 'all', 2, 4),
        ('scratch', 'LCNN', '1', 1, 4), ('scratch', 'LCNN', 'all', 2, 4)]
    for row in rows:
        log = plot.parse_log(os.path.join(ROOT, row['run_dir']))
        assert (row['top1'], row['top5']) == (log.test[row['epochs']].top1, log.test[row['epochs']].top5)
        assert row['seed'] == (1 if row['protocol'] == 'pretrain' else 4)
        assert sorted(log.test) == list(range(1, row['epochs'] + 1))
    assert 'training on 10 images of 10 classes, testing on 359' in \
        (work / 'scratch' / 'CNN' / 'K1' / 'seed4' / 'log.txt').read_text()
    transfer_log = (work / 'transfer' / 'LCNN' / 'K2' / 'seed4' / 'log.txt').read_text()
    assert 'training on 10 images of 5 classes, testing on 179' in transfer_log
    assert 'kept fixed (-freezeDictionary)' in transfer_log
    assert 'Replacing classifier with 5-way classifier' in transfer_log
    assert 'freezeDictionary false' in (work / 'transfer' / 'CNN' / 'K2' / 'seed4' / 'log.txt').read_text()
    # the pretrained networks (made once, at fewshot.PRETRAIN_SEED) keep only their last model
    assert sorted(f for f in os.listdir(work / 'pretrain' / 'CNN' / 'Kall' / 'seed1') if f.endswith('.t7')) == [
        'classes.t7', 'model_1.t7']
    fewshot.write_csv(rows, str(out / 'fewshot.csv'))
    fewshot.draw_fewshot(rows, str(out / 'fewshot.png'))
    fewshot.draw_iterations(rows, logs, str(out / 'iterations.png'))
    with open(out / 'fewshot.csv', newline='') as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:7] == ['protocol', 'model', 'K', 'seed', 'epochs', 'top1', 'top5']
    assert [{k: str(v) for k, v in r.items()} for r in rows] == table
    for name in ('fewshot.png', 'iterations.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(os.listdir(out)) == ['fewshot.csv', 'fewshot.png', 'iterations.png']

    # a second sweep reuses every finished run
    messages.clear()
    again, _ = fewshot.run_sweep(TINY_BUDGET, str(work), launch=in_process, out=messages.append, progress=False)
    assert again == rows and len(messages) == 8 and all('(reused)' in m for m in messages)
    # a run is redone when its flags change, or when the pretrained network it starts from was made again
    runs = fewshot.plan(TINY_BUDGET, str(work))
    assert all(fewshot.finished(run) for run in runs)
    runs[0].argv = runs[0].argv + ['-LR', '3']
    assert fewshot.finished(runs[0]) is None
    os.utime(runs[1].needs[0], ns=(0, 0))
    assert fewshot.finished(runs[1]) is None and fewshot.finished(runs[3]) is not None


def test_fewshot_reports_a_failed_run_in_one_line(tmp_path):
    budget = fewshot.Budget(flags=['-imageSize', '8', '-cropSize', '30', '-batchSize', '16', '-LR', '5'],
                            scratch_iterations=1, test_every=1, pretrain_iterations=1, transfer_iterations=1,
                            seeds=[1], scratch_k=[1], transfer_k=[1])
    with pytest.raises(fewshot.FewshotError, match=r'^pretrain CNN K=all seed 1: main.py failed \(main.py: '
                       r'-cropSize 30 is larger than -imageSize 8; give an -imageSize at least as large\); its flags: '
                       r'-dataset digits'):
        fewshot.run_sweep(budget, str(tmp_path / 'w'), out=lambda m: None, progress=False)
    assert not (tmp_path / 'w' / 'pretrain' / 'CNN' / 'Kall' / 'seed1').exists()  # a failed start leaves no folder


def test_fewshot_bad_seeds_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        fewshot.main(['-seeds', '1,x'])
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        'fewshot.py: -seeds 1,x: give whole numbers separated by commas, e.g. 1,2']
