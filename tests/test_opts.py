"""Tests of opts.py, the port of lcnn's / clcNet's opts.lua and torch7's CmdLine.lua."""
import math
import os
import time

import pytest
from hypothesis import given, strategies as st

import opts

# Every option with its default, written out by hand from lcnn's opts.lua, then clcNet's options lcnn lacks, then
# ours. Integral Lua numbers are Python ints.
DEFAULTS = {
    'cache': './cache/', 'data': 'data/', 'dataset': 'imagenet', 'manualSeed': 2, 'GPU': 1, 'nGPU': 1,
    'noCheckpoint': False, 'testOnly': False, 'benchmark': False, 'logSparsity': False, 'nLastIterAccuracy': 100,
    'nDonkeys': 8, 'imageSize': 256, 'cropSize': 224, 'nClasses': 1000,
    'nEpochs': 55, 'epochSize': 10000, 'epochNumber': 1, 'batchSize': 128, 'breakBatch': 1,
    'LR': 1, 'momentum': 0.9, 'weightDecay': 0, 'shareGradInput': True, 'updateLRregime': False, 'constantLR': -1,
    'netType': 'alexnet-lcnn', 'criterion': 'classnll', 'depth': 18, 'shortcutType': 'B', 'optimType': 'sgd',
    'retrain': 'none', 'resume': 'none', 'loadParams': 'none', 'optimState': 'none', 'dropout': 0.5,
    'poolSize': 100, 'pool1': 100, 'pool2': 100, 'pool3': 100, 'pool4': 100, 'lambda': 0, 'firstPool': 3,
    'fcPool': 1024, 'classifierPool': 0, 'initialSparsity': 0.01,
    # clcNet
    'backend': 'cudnn', 'cudnn': 'fastest', 'gen': 'gen', 'precision': 'single', 'nThreads': 2, 'tenCrop': False,
    'a': 0, 'b': 0, 'c': 0, 'd': 0, 'optnet': False, 'resetClassifier': False,
    # lcnn-torch
    'lookup': False, 'noProgress': False, 'classes': '', 'samplesPerClass': 0, 'freezeDictionary': False,
}
BOOLEANS = [k for k, v in DEFAULTS.items() if isinstance(v, bool)]

NOV_2 = time.strptime('2026-11-02 00:22:16', '%Y-%m-%d %H:%M:%S')  # a Monday, day < 10


@pytest.fixture
def frozen(monkeypatch, tmp_path):
    """Clock stopped at NOV_2 and the working directory at tmp_path (paths.concat starts from it)."""
    monkeypatch.setattr(opts.time, 'localtime', lambda *a: NOV_2)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fails(capsys, argv):
    """Parse argv expecting the one-line usage error; returns that line."""
    with pytest.raises(SystemExit) as e:
        opts.parse(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == ''
    assert err.endswith('\n') and err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith('main.py: ')
    return err.strip()


def test_every_default(frozen):
    opt = opts.parse([])
    got = vars(opt)
    assert set(got) == set(DEFAULTS) | {'save'}
    for name, value in DEFAULTS.items():
        assert got[name] == value, name
        assert type(got[name]) is type(value), name
    assert opt.save == f'{os.getcwd()}/cache/alexnet-lcnn/MonNov200:22:162026'
    assert opt.lambda_ == 0 and getattr(opt, 'lambda') == 0


@pytest.mark.parametrize('name', BOOLEANS)
def test_boolean_alone_flips_its_default(frozen, name):
    extra = {'resetClassifier': ['-nClasses', '5'], 'lookup': ['-testOnly']}.get(name, [])
    assert getattr(opts.parse(['-' + name] + extra), name) is (not DEFAULTS[name])


def test_boolean_takes_a_following_true_or_false(frozen):
    opt = opts.parse(['-shareGradInput', 'true', '-testOnly', 'true', '-tenCrop', 'false', '-noCheckpoint'])
    assert opt.shareGradInput is True and opt.testOnly is True and opt.tenCrop is False
    assert opt.noCheckpoint is True
    assert opts.parse(['-shareGradInput', 'false']).shareGradInput is False
    # Any other token after a boolean is the next option, not its value.
    opt = opts.parse(['-testOnly', '-nGPU', '2'])
    assert opt.testOnly is True and opt.nGPU == 2


def test_string_and_number_values(frozen):
    opt = opts.parse(['-data', '-h', '-netType', 'resnet-lcnn', '-LR', '1e-3', '-batchSize', '0x40',
                      '-constantLR', '-1.5', '-retrain', '', '-depth', ' 34 '])
    assert opt.data == '-h'  # the token after a string option is its value, whatever it looks like
    assert opt.netType == 'resnet-lcnn' and opt.retrain == ''
    assert opt.LR == 0.001 and opt.constantLR == -1.5
    assert opt.batchSize == 64 and type(opt.batchSize) is int
    assert opt.depth == 34 and type(opt.depth) is int
    assert opts.parse(['-LR', '2', '-LR', '3']).LR == 3


@pytest.mark.parametrize('text, value', [
    ('1e3', 1000), ('0x10', 16), (' 5', 5), ('5.', 5), ('.5', 0.5), ('5 ', 5), ('\t7\n', 7), ('+3', 3),
    ('-0x10', -16), ('0X1P4', 16), ('0x.8', 0.5), ('0x1.8p1', 3), ('0b101', 5), ('007', 7), ('-2.50', -2.5),
    ('1E-2', 0.01), ('+.5e+1', 5), ('1e400', math.inf), ('1e-400', 0), ('1e16', 1e16), ('0x1p99999', math.inf),
    ('inf', math.inf), ('-inf', -math.inf), (' INFINITY ', math.inf), ('-nan', math.nan), ('NaN', math.nan),
    ('1e', None), ('abc', None), ('', None), ('  ', None), ('.', None), ('0x', None), ('1.2.3', None),
    ('- 5', None), ('5L', None), ('5i', None), ('1_000', None), ('0b102', None), ('0b1.1', None), ('0x1e+2', None),
    ('1e1048576', None), ('infx', None), ('++5', None), ('5e+', None), ('0xg', None), ('1 000', None),
])
def test_lua_tonumber(text, value):
    got = opts.lua_tonumber(text)
    if value is None:
        assert got is None
    elif isinstance(value, float) and math.isnan(value):
        assert math.isnan(got)
    else:
        assert got == value
        # Integral values up to 2**53 come back as int, everything else as float.
        assert type(got) is (int if math.isfinite(value) and value == int(value) and abs(value) <= 2 ** 53
                             else float)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_lua_tonumber_reads_any_float_repr(x):
    assert opts.lua_tonumber(repr(x)) == x


@pytest.mark.parametrize('value, text', [
    (1, '1'), (0.1, '0.1'), (1e-5, '1e-05'), (1e20, '1e+20'), (-1, '-1'), (1 / 3, '0.33333333333333'),
    (math.inf, 'inf'), (True, 'true'), (False, 'false'), ('x y', 'x y'), (None, 'nil'),
])
def test_lua_tostring(value, text):
    assert opts.lua_tostring(value) == text


def test_duplicated_shortcut_type_keeps_the_last_declaration(frozen, capsys):
    assert opts.parse([]).shortcutType == 'B'
    lines = opts.help_text().splitlines()
    assert '  -shortcutType      Options: A | B | C []' in lines
    assert '  -shortcutType      type of short cut in resnet: A|B|C [B]' in lines


def test_break_batch_arithmetic(frozen):
    opt = opts.parse(['-breakBatch', '4'])
    assert (opt.batchSize, opt.epochSize, opt.nLastIterAccuracy) == (32, 40000, 400)
    assert all(type(v) is int for v in (opt.batchSize, opt.epochSize, opt.nLastIterAccuracy))
    opt = opts.parse(['-batchSize', '3', '-breakBatch', '1.5'])  # Lua's 3 % 1.5 == 0
    assert (opt.batchSize, opt.epochSize, opt.nLastIterAccuracy) == (2, 15000, 150)
    opt = opts.parse(['-batchSize', '100', '-breakBatch', '0.5'])  # only breakBatch > 1 splits
    assert (opt.batchSize, opt.epochSize) == (100, 10000)


def test_break_batch_must_divide_batch_size(frozen, capsys):
    line = fails(capsys, ['-batchSize', '128', '-breakBatch', '3'])
    assert '-batchSize 128' in line and '-breakBatch 3' in line and 'divisible' in line
    fails(capsys, ['-batchSize', 'inf', '-breakBatch', '2'])


def test_resume_continues_after_the_highest_optim_state(frozen):
    run = frozen / 'run'
    run.mkdir()
    for name in ['optimState_1.t7', 'optimState_12.t7', 'optimState_3.t7', 'model_12.t7', 'optimState_.t7',
                 'log.txt', 'optimState_x.t7']:
        (run / name).touch()
    opt = opts.parse(['-resume', str(run), '-epochNumber', '40'])
    assert opt.save == str(run)
    assert opt.epochNumber == 13
    assert opt.retrain == f'{run}/model_12.t7'
    assert opt.optimState == f'{run}/optimState_12.t7'
    # whole names only: backups, editor leftovers and folders are no finished epochs (Lua's pattern took them)
    for name in ('optimState_20.t7.bak', 'optimState_21.t7~', 'old_optimState_22.t7'):
        (run / name).touch()
    (run / 'optimState_23.t7').mkdir()
    assert opts.parse(['-resume', str(run) + '/']).retrain == f'{run}//model_12.t7'


def test_resume_from_an_empty_folder_starts_at_epoch_one(frozen):
    (frozen / 'empty').mkdir()
    opt = opts.parse(['-resume', 'empty', '-epochNumber', '5', '-retrain', 'm.t7'])
    assert (opt.save, opt.epochNumber, opt.retrain, opt.optimState) == ('empty', 1, 'm.t7', 'none')


def test_resume_needs_an_existing_folder(frozen, capsys):
    assert "-resume 'nowhere'" in fails(capsys, ['-resume', 'nowhere'])
    (frozen / 'file').touch()
    fails(capsys, ['-resume', 'file'])


def test_save_is_cache_then_cmdline_string_then_date(frozen):
    opt = opts.parse(['-netType', 'resnet-lcnn', '-poolSize', '30', '-lambda', '1e-5', '-shareGradInput',
                      '-pool1', '20', '-LR', '0.1', '-testOnly', '-shortcutType', 'A',
                      # ignored by lcnn (and our display switches):
                      '-data', '/d', '-nEpochs', '3', '-noCheckpoint', '-retrain', 'r', '-loadParams', 'l',
                      '-optimState', 'o', '-noProgress', '-lookup',
                      # given but equal to the default: left out
                      '-depth', '18', '-momentum', '0.9', '-cache', 'runs/./x/../'])
    assert opt.save == (f'{frozen}/runs/resnet-lcnn,LR=0.1,lambda=1e-05,pool1=20,poolSize=30,'
                        'shareGradInput=f,shortcutType=A,testOnly=t/MonNov200:22:162026')
    assert opts.parse(['-cache', '/abs/c']).save == '/abs/c/alexnet-lcnn/MonNov200:22:162026'


def test_explicit_save_is_used_verbatim(frozen):
    assert opts.parse(['-save', 'ckpt/./x', '-poolSize', '30']).save == 'ckpt/./x'


def test_cmdline_string_port():
    cmd = opts.CmdLine()
    cmd.option('-x', 1, '')
    cmd.option('-flag', False, '')
    cmd.option('-name', 'n', '')
    assert cmd.string('p', {'x': 1, 'flag': False, 'name': 'n'}, set()) == 'p'
    assert cmd.string('p', {'x': 2.5, 'flag': True, 'name': 'a b'}, set()) == 'p,flag=t,name=a b,x=2.5'
    assert cmd.string('p', {'x': 2.5, 'flag': True, 'name': 'm'}, {'x', 'name'}) == 'p,flag=t'


def test_paths_concat(frozen):
    assert opts.paths_concat('./cache/', 'a,b=1') == f'{frozen}/cache/a,b=1'
    assert opts.paths_concat('/a/b/', '../c//d/.', 'e') == '/a/c/d/e'
    assert opts.paths_concat('/', '..', 'x') == '/x'
    assert opts.paths_concat('rel', '/abs') == '/abs'


def test_os_date_is_c_percent_c():
    assert opts.os_date(NOV_2) == 'Mon Nov  2 00:22:16 2026'
    later = time.strptime('2026-11-22 13:05:09', '%Y-%m-%d %H:%M:%S')
    assert opts.os_date(later) == 'Sun Nov 22 13:05:09 2026'


@pytest.mark.parametrize('argv, words', [
    (['-foo'], ["'-foo'", 'unknown option']),
    (['-poolsize', '3'], ["'-poolsize'", 'unknown option']),
    (['stray'], ["'stray'"]),
    (['-LR'], ['-LR', 'missing']),
    (['-data'], ['-data', 'missing']),
    (['-LR', 'abc'], ['-LR', "'abc'", 'number']),
    (['-nGPU', '1\n2'], ['-nGPU', r"'1\n2'"]),
    (['-precision', 'quad'], ['-precision', "'quad'"]),
    (['-dataset', 'cifar10'], ['-dataset', "'cifar10'"]),
    (['-netType', 'vgg'], ['-netType', "'vgg'", 'alexnet-lcnn']),
    (['-netType', 'clcnet', '-a', '1'], ['-netType clcnet']),
    (['-resetClassifier'], ['-resetClassifier', '-nClasses']),
    (['-resetClassifier', '-nClasses', '0'], ['-resetClassifier', '-nClasses']),
    (['-optnet', '-shareGradInput', 'true'], ['-shareGradInput', '-optnet']),
    # flags that would otherwise be ignored without a word
    (['-lookup'], ['-lookup', '-testOnly', '-benchmark', 'leave -lookup out']),
    (['-lookup', '-dataset', 'digits', '-nEpochs', '1'], ['-lookup', '-resume RUN -testOnly -lookup']),
    (['-imageSize', '8', '-cropSize', '30'], ['-cropSize 30 is larger than -imageSize 8']),
    (['-dataset', 'digits', '-tenCrop', '-testOnly'], ['-tenCrop', 'digits', 'centre crop', 'leave -tenCrop out']),
])
def test_errors_are_one_line_and_exit_2(frozen, capsys, argv, words):
    line = fails(capsys, argv)
    for word in words:
        assert word in line


def test_lookup_and_ten_crop_where_they_apply(frozen):
    assert opts.parse(['-lookup', '-testOnly']).lookup and opts.parse(['-lookup', '-benchmark']).lookup
    assert opts.parse(['-tenCrop', '-testOnly']).tenCrop
    assert opts.parse(['-benchmark', '-imageSize', '8', '-cropSize', '30']).cropSize == 30  # no image is read


def test_clcnet_named_networks_expand(frozen):
    opt = opts.parse(['-netType', 'clcneta'])
    assert (opt.netType, opt.a, opt.b, opt.c, opt.d) == ('clcnet', 1, 1, 5, 2)
    opt = opts.parse(['-netType', 'clcnetb', '-a', '4'])  # one stage left at 0: the named depths win, as in Lua
    assert (opt.netType, opt.a, opt.b, opt.c, opt.d) == ('clcnet', 1, 1, 7, 3)
    opt = opts.parse(['-netType', 'clcneta', '-a', '2', '-b', '2', '-c', '2', '-d', '2'])
    assert (opt.netType, opt.a, opt.b, opt.c, opt.d) == ('clcneta', 2, 2, 2, 2)
    opt = opts.parse(['-netType', 'clcnet', '-a', '1', '-b', '2', '-c', '3', '-d', '4'])
    assert (opt.netType, opt.d) == ('clcnet', 4)
    # The run folder is named from the command line, before the expansion.
    assert opts.parse(['-netType', 'clcnetb']).save.endswith('/cache/clcnetb/MonNov200:22:162026')


def test_clcnet_zero_epochs_means_its_default(frozen):
    assert opts.parse(['-netType', 'clcnetb', '-nEpochs', '0']).nEpochs == 100
    assert opts.parse(['-netType', 'clcnetb']).nEpochs == 55
    assert opts.parse(['-nEpochs', '0', '-testOnly']).nEpochs == 0


def test_optnet_replaces_the_default_share_grad_input(frozen):
    opt = opts.parse(['-optnet'])
    assert opt.optnet is True and opt.shareGradInput is False


def test_reset_classifier_with_n_classes(frozen):
    opt = opts.parse(['-resetClassifier', '-nClasses', '5'])
    assert opt.resetClassifier is True and opt.nClasses == 5


def test_n_classes_follows_the_dataset(frozen):
    assert opts.parse(['-dataset', 'digits']).nClasses == 10
    assert opts.parse(['-dataset', 'digits', '-nClasses', '7']).nClasses == 7
    assert opts.parse(['-dataset', 'digits', '-nClasses', '0']).nClasses == 10
    assert opts.parse(['-nClasses', '0']).nClasses == 1000
    assert opts.parse(['-nClasses', '1000', '-dataset', 'digits']).nClasses == 1000


@pytest.mark.parametrize('flag', ['-h', '--help', '-help'])
def test_help(frozen, capsys, flag):
    with pytest.raises(SystemExit) as e:
        opts.parse(['-poolSize', '3', flag, '-foo'])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert err == ''
    assert out == opts.help_text()
    lines = out.split('\n')
    assert lines[:5] == ['Usage: main.py [options]', '', 'Torch-7 Imagenet Training script', '', 'Options:']
    assert lines[5] == '  -cache             subdirectory in which to save/log experiments [./cache/]'
    assert '  -LR                learning rate multiplier; multiplies the default LR regime with this number [1]' \
        in lines
    assert '  -shareGradInput    Sharing the gradient memory for resnet [true]' in lines
    assert '  -initialSparsity   initial sparsity of pooled convolutional layers [0.01]' in lines
    assert '  -noProgress        disable tqdm progress bars [false]' in lines
    assert out.endswith('[false]\n\n')
    assert "  -save              Directory in which to save checkpoints ('' = cache/<netType,options>/<date>) []" \
        in lines
    assert sum(line.startswith('  -') for line in lines) == len(DEFAULTS) + 2  # -save, and -shortcutType twice


def test_log_text(frozen):
    opt = opts.Options(LR=0.1, save='/r/x', testOnly=False, depth=18)
    assert opts.log_text(opt) == ('[program started on Mon Nov  2 00:22:16 2026] \n'
                                  '[command line arguments] \n'
                                  'LR 0.1 \n'
                                  'depth 18 \n'
                                  'save /r/x \n'
                                  'testOnly false \n'
                                  '[----------------------] \n')
    assert opts.log_text(opt, date='D').startswith('[program started on D] \n')


def test_format_like_lua_print(frozen):
    opt = opts.Options(netType='alexnet-lcnn', shareGradInput=True, momentum=0.9, a=0, LR=1)
    assert opts.format(opt) == ('{\n'
                                '  LR : 1\n'
                                '  a : 0\n'
                                '  momentum : 0.9\n'
                                '  netType : "alexnet-lcnn"\n'
                                '  shareGradInput : true\n'
                                '}')
    assert opts.format(opts.Options()) == '{}'
    full = opts.format(opts.parse([])).split('\n')
    assert len(full) == len(DEFAULTS) + 3 and '  data : "data/"' in full


def test_clcnet_networks_take_clcnet_rate_and_weight_decay_unless_given(frozen):
    opt = opts.parse(['-netType', 'clcneta'])
    assert (opt.LR, opt.weightDecay) == (0.1, 1e-4)
    opt = opts.parse(['-netType', 'clcneta', '-LR', '0.05', '-weightDecay', '0'])
    assert (opt.LR, opt.weightDecay) == (0.05, 0)
    opt = opts.parse(['-netType', 'alexnet-lcnn'])
    assert (opt.LR, opt.weightDecay) == (1, 0)


@pytest.mark.parametrize('argv, words', [
    (['-batchSize', '0'], ['-batchSize 0', 'at least 1 sample']),
    (['-batchSize', '-4'], ['-batchSize -4']),
    (['-batchSize', '0.5'], ['-batchSize 0.5']),
    (['-batchSize', '2.5'], ['-batchSize 2.5', 'whole number']),
    (['-batchSize', '4.5', '-breakBatch', '1.5'], ['-batchSize 4.5']),
    (['-epochSize', '0'], ['-epochSize 0', 'at least 1 batch']),
    (['-poolSize', '0'], ['-poolSize 0', 'dictionary']),
    (['-pool3', '0'], ['-pool3 0']),
    (['-fcPool', '-1'], ['-fcPool -1']),
    (['-nDonkeys', '-1'], ['-nDonkeys -1', '>= 0']),
    (['-nThreads', '1.5'], ['-nThreads 1.5']),
    (['-nGPU', '0'], ['-nGPU 0']),
    (['-LR', '-0.1'], ['-LR -0.1', 'negative learning rate']),
    (['-LR', 'nan'], ['-LR nan']),
    (['-nEpochs', '2.5'], ['-nEpochs 2.5']),
    (['-epochNumber', '0'], ['-epochNumber 0']),
    (['-cropSize', 'inf'], ['-cropSize inf']),
])
def test_out_of_range_numbers_are_refused(frozen, capsys, argv, words):
    line = fails(capsys, argv)
    for word in words:
        assert word in line


def test_in_range_edges_are_taken(frozen):
    opt = opts.parse(['-LR', '0', '-nDonkeys', '0', '-fcPool', '0', '-classifierPool', '0', '-nEpochs', '0',
                      '-batchSize', '1', '-manualSeed', '-3', '-testOnly'])
    assert (opt.LR, opt.nDonkeys, opt.fcPool, opt.nEpochs, opt.batchSize) == (0, 0, 0, 0, 1)


def _record(run, argv):
    """The options.json main.py writes for a run started with argv."""
    opt = opts.parse(argv + ['-save', str(run)])
    run.mkdir(exist_ok=True)
    (run / opts.RUN_OPTIONS).write_text(opts.record_text(opt))
    return opt


def test_resume_restores_the_recorded_options(frozen):
    run = frozen / 'run'
    first = _record(run, ['-netType', 'clcneta', '-LR', '0.5', '-data', '/d', '-batchSize', '64', '-breakBatch', '2',
                          '-nEpochs', '3', '-dataset', 'digits', '-nClasses', '7'])
    for name in ('optimState_2.t7', 'model_2.t7'):
        (run / name).touch()
    opt = opts.parse(['-resume', str(run)])
    # the recorded options went through the same post-processing again
    for name in ('netType', 'a', 'b', 'c', 'd', 'LR', 'weightDecay', 'data', 'batchSize', 'epochSize', 'nEpochs',
                 'nClasses'):
        assert getattr(opt, name) == getattr(first, name), name
    assert (opt.batchSize, opt.LR, opt.nClasses) == (32, 0.5, 7)
    assert (opt.save, opt.epochNumber, opt.retrain) == (str(run), 3, f'{run}/model_2.t7')
    assert opts.restored_lines(opt) == [f'Restored the options of {run}/options.json']
    # flags given now win, and are named
    opt = opts.parse(['-resume', str(run), '-nEpochs', '5', '-LR', '0.5', '-batchSize', '128'])
    assert (opt.nEpochs, opt.LR, opt.batchSize) == (5, 0.5, 64)
    assert opts.restored_lines(opt) == [f'Restored the options of {run}/options.json; changed on the command line: '
                                        '-batchSize 64 -> 128, -nEpochs 3 -> 5']
    # the record of a resumed run restores the same way
    (run / opts.RUN_OPTIONS).write_text(opts.record_text(opt))
    again = opts.parse(['-resume', str(run)])
    assert vars(again) == vars(opt)
    assert 'command' not in vars(opt) and 'restored' not in opts.format(opt)


def test_options_record_survives_copy_and_pickle(frozen):
    import copy
    import pickle
    opt = opts.parse(['-LR', '0.5'])
    for twin in (copy.copy(opt), pickle.loads(pickle.dumps(opt))):
        assert vars(twin) == vars(opt) and twin.command == opt.command and twin.restored is None


def test_resume_of_a_run_without_recorded_options(frozen):
    run = frozen / 'old'
    run.mkdir()
    opt = opts.parse(['-resume', str(run), '-LR', '0.5'])
    assert opt.LR == 0.5 and opt.epochNumber == 1
    line, = opts.restored_lines(opt)
    assert f'-resume {run}: no options.json there' in line and 'the options of this command line' in line
    assert opts.restored_lines(opts.parse([])) == []


def test_unreadable_recorded_options(frozen, capsys):
    run = frozen / 'run'
    run.mkdir()
    (run / 'options.json').write_text('{"values": ')
    assert 'options.json' in fails(capsys, ['-resume', str(run)])
    (run / 'options.json').write_text('{"values": {"LR": "fast", "gone": 1}, "given": ["LR"]}')
    line = fails(capsys, ['-resume', str(run)])
    assert '-LR' in line and 'number' in line
    (run / 'options.json').write_text('{"values": {"LR": 0.25, "gone": 1}, "given": ["LR"]}')
    assert opts.parse(['-resume', str(run)]).LR == 0.25


@pytest.mark.parametrize('argv, line', [
    (['-optimType', 'foo'], '-optimType foo: use sgd or adam'),
    (['-criterion', 'ranking'], '-criterion ranking: only classnll is available'),
    (['-shortcutType', 'D'], '-shortcutType D: use A, B or C'),
    (['-netType', 'resnet', '-depth', '19'], '-depth 19 for resnet: use one of 8, 18, 34, 50, 101, 152'),
    (['-netType', 'resnet-lcnn', '-depth', '0'], '-depth 0 for resnet-lcnn: use one of'),
])
def test_values_no_code_takes_are_refused_at_parse_time(frozen, capsys, argv, line):
    assert line in fails(capsys, argv)


def test_values_the_code_takes_pass(frozen):
    for argv in (['-optimType', 'adam'], ['-shortcutType', 'A'], ['-netType', 'resnet-lcnn', '-depth', '50'],
                 ['-netType', 'alexnet-lcnn', '-depth', '19']):  # -depth is ResNet's alone
        opts.parse(argv)


def test_resume_refuses_a_change_of_the_saved_network(frozen, capsys):
    run = frozen / 'run'
    _record(run, ['-netType', 'alexnet-lcnn', '-poolSize', '30', '-nEpochs', '2'])
    # before any epoch is saved the run can still be started over with another network
    assert opts.parse(['-resume', str(run), '-poolSize', '20']).poolSize == 20
    (run / 'optimState_2.t7').touch()
    (run / 'model_2.t7').touch()
    for argv, line in [(['-netType', 'alexnet'], "-netType alexnet differs from the run's alexnet-lcnn"),
                       (['-poolSize', '20'], "-poolSize 20 differs from the run's 30")]:
        assert (f'-resume {run}: {line}, but a resumed run goes on with the network it saved; leave -'
                in fails(capsys, ['-resume', str(run), '-nEpochs', '4'] + argv))
    assert opts.parse(['-resume', str(run), '-nEpochs', '4', '-poolSize', '30', '-LR', '0.5']).LR == 0.5
