"""End-to-end tests of main.py on the embedded digits (8x8 crops, a tiny network standing in for -netType):
the run folder, -testOnly, -benchmark, -resume after a kill, -nGPU 2 on CPU, and one-line errors."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import main
import models
import t7
from layers.activation import LogSoftMax
from layers.legacy import named
from layers.shape import View
from tests.drivers import main_driver, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = Path(__file__).parent / 'fixtures'
PYTHON = sys.executable
SMALL = ['-dataset', 'digits', '-imageSize', '8', '-cropSize', '8', '-batchSize', '32', '-nDonkeys', '0',
         '-noProgress']


def tiny(opt):
    """Stands in for the -netType network: the digits at 8x8 need no AlexNet to test the loops. Like the real
    ones, lcnn networks end in LogSoftMax and clcNet's in its Linear classifier."""
    net = nn.Sequential(named(nn.Conv2d(3, 8, 3, padding=1), 'nn.SpatialConvolution'), nn.ReLU(),
                        View(8 * 8 * 8), nn.Linear(512, opt.nClasses))
    if not opt.netType.startswith('clcnet'):
        net.append(LogSoftMax())
    return net


DRIVER = main_driver('test_main')


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setattr(models, 'create', tiny)


def driver(tmp_path):
    path = tmp_path / 'driver.py'
    path.write_text(DRIVER)
    return str(path)


def test_training_run_folder(tmp_path, capsys, tiny_models):
    save = tmp_path / 'run'
    code, out, err = run_main(SMALL + ['-nEpochs', '2', '-epochSize', '3', '-save', str(save)], capsys)
    assert code == 0, err
    assert sorted(os.listdir(save)) == ['classes.t7', 'log.txt', 'model_1.t7', 'model_2.t7', 'optimState_1.t7',
                                        'optimState_2.t7', 'options.json', 'test.log', 'train.log']
    assert t7.load(str(save / 'classes.t7')) == [str(d) for d in range(10)]
    state = t7.load(str(save / 'optimState_2.t7'))
    assert state['evalCounter'] == 6 and state['learningRate'] == 0.01
    n_params = sum(p.numel() for p in models.parameters_lua_order(tiny(main.opts.parse(SMALL))))
    assert state['dfdx'].shape == (n_params,)
    # the saved network is the trained one, readable again
    saved = t7.load_model(str(save / 'model_2.t7'))
    assert [p.shape for p in saved.parameters()] == [p.shape for p in tiny(main.opts.parse(SMALL)).parameters()]
    log = (save / 'log.txt').read_text()
    assert log.startswith('[program started on ')
    assert 'Saving everything to: ' + str(save) + ' \n' in log
    assert log.count('Epoch: [2][TRAINING SUMMARY]') == 1 and log.count('Epoch: [2][TESTING SUMMARY]') == 1
    # stdout carries the same Lua lines, tab-separated
    assert 'Epoch: [1][3/3]\tTime ' in out and '\nnClasses: \t10\n' in out
    assert len((save / 'train.log').read_text().splitlines()) == 3
    # where everything went, at the start and again at the end; optim.Logger's "no path" warning is gone
    assert out.count(f'Saving everything to: {save}\n') == 1 and out.endswith(f'Saved everything to: {save}\n')
    assert 'no path provided' not in out


def test_test_only_with_retrain_and_benchmark(tmp_path, capsys, tiny_models):
    net = tiny(main.opts.parse(SMALL))
    path = tmp_path / 'released.t7'
    t7.save_model(str(path), net)
    save = tmp_path / 'eval'
    code, out, err = run_main(SMALL + ['-testOnly', '-retrain', str(path), '-save', str(save)], capsys)
    assert code == 0, err
    assert 'Loading model from file: ' + str(path) in out
    assert out.count('[TESTING SUMMARY]') == 1 and 'TRAINING' not in out
    assert sorted(os.listdir(save)) == ['classes.t7', 'log.txt', 'options.json', 'test.log']
    code, out, err = run_main(SMALL + ['-benchmark', '-save', str(tmp_path / 'bench')], capsys)
    assert code == 0, err
    assert 'Benchmark Summary: memory ' in out


def test_lookup_engine_for_test_only_and_benchmark(tmp_path, capsys, tiny_models, monkeypatch):
    monkeypatch.setenv('LCNN_LOOKUP_BACKEND', 'torch')
    net = tiny(main.opts.parse(SMALL))
    path = tmp_path / 'released.t7'
    t7.save_model(str(path), net)
    argv = SMALL + ['-retrain', str(path), '-lookup', '-nDonkeys', '0']
    code, out, err = run_main(argv + ['-testOnly', '-save', str(tmp_path / 'plain')], capsys)
    assert code == 0, err
    summary = [line for line in out.splitlines() if '[TESTING SUMMARY]' in line]
    code, out, err = run_main(SMALL + ['-retrain', str(path), '-testOnly', '-save', str(tmp_path / 'dense')], capsys)
    # the compiled network scores the validation set as the original does
    assert [line.split('top-1')[1] for line in summary] == \
        [line.split('top-1')[1] for line in out.splitlines() if '[TESTING SUMMARY]' in line]
    code, out, err = run_main(argv + ['-benchmark', '-save', str(tmp_path / 'bench')], capsys)
    assert code == 0, err
    assert 'Benchmark Summary: memory ' in out and 'total (whole network)' in out


@pytest.mark.parametrize('argv, code, message', [
    (['-dataset', 'imagenet', '-data', '/no/such/folder'], 1, '-data /no/such/folder: no such folder'),
    (['-dataset', 'imagenet', '-data', '{tmp}'], 1, 'it has no train/ folder'),
    (['-dataset', 'imagenet', '-data', '{tmp}/garbage.t7'], 1, '-data {tmp}/garbage.t7: that is a file, not a folder; '
                                                               'give the dataset folder'),
    (['-nClasses', '5'], 1, '-nClasses is 5'),
    (['-retrain', '{tmp}/garbage.t7'], 1, 'cannot read it as a Torch7 model'),
    (['-optimState', '{tmp}/missing.t7'], 1, '-optimState {tmp}/missing.t7: file not found'),
    (['-poolSize', '0'], 2, '-poolSize 0: give a whole number >= 1'),
    (['-epochSize', '0'], 2, '-epochSize 0: give a whole number >= 1'),
    (['-batchSize', '2.5'], 2, '-batchSize 2.5: give a whole number >= 1'),
    (['-nDonkeys', '-1'], 2, '-nDonkeys -1: give a whole number >= 0'),
    (['-LR', '-1'], 2, '-LR -1: give a number >= 0'),
    (['-nEpochs', '0'], 2, '-nEpochs 0 with -epochNumber 1: no epoch to run, so nothing runs'),
    (['-nEpochs', '3', '-epochNumber', '5'], 2, '-nEpochs 3 with -epochNumber 5: no epoch to run, so nothing runs; '
                                                'give -nEpochs 5 or more (or -testOnly to test)'),
    (['-retrain', '{tmp}'], 1, '-retrain {tmp}: that is a folder'),
    (['-optimState', '{tmp}/latest.t7'], 1, '-optimState {tmp}/latest.t7: holds no optimState field'),
    (['-batchSize', '400'], 1, '-batchSize 400 is larger than the 359 validation images'),
    (['-save', '{tmp}/garbage.t7/run'], 1, '-save {tmp}/garbage.t7/run: cannot write the run folder'),
    (['-save', '', '-cache', '{tmp}/garbage.t7'], 1, '-cache {tmp}/garbage.t7: cannot write the run folder'),
])
def test_user_errors_are_one_line(tmp_path, capsys, tiny_models, argv, code, message):
    (tmp_path / 'garbage.t7').write_bytes(b'this is not a torch file')
    t7.save(str(tmp_path / 'latest.t7'), {'epoch': 2, 'modelFile': 'model_2.t7', 'optimFile': 'optimState_2.t7'})
    save = tmp_path / 'run'
    argv = [a.replace('{tmp}', str(tmp_path)) for a in argv]
    got, out, err = run_main(SMALL + ['-save', str(save), '-cache', str(tmp_path / 'cache')] + argv, capsys)
    assert got == code
    assert err.startswith('main.py: ') and err.count('\n') == 1 and 'Traceback' not in err
    assert message.replace('{tmp}', str(tmp_path)) in err
    assert not save.exists() or not [n for n in os.listdir(save) if n.startswith(('model_', 'optimState_'))]


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys, tiny_models):
    (tmp_path / 'garbage.t7').write_bytes(b'this is not a torch file')
    bad = ['-testOnly', '-retrain', str(tmp_path / 'garbage.t7')]
    code, out, err = run_main(SMALL + bad + ['-save', str(tmp_path / 'new' / 'run')], capsys)
    assert code == 1 and 'cannot read it as a Torch7 model' in err and 'Saving everything to' in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['garbage.t7']  # its parent folder went too
    # a folder that was there before the run is the user's: kept, with the log of the failed start
    (tmp_path / 'mine').mkdir()
    code, out, err = run_main(SMALL + bad + ['-save', str(tmp_path / 'mine')], capsys)
    assert code == 1 and sorted(p.name for p in (tmp_path / 'mine').iterdir()) == ['classes.t7', 'log.txt', 'options.json']
    # a crop size the network cannot take fails after the data and the model are set up, still before training
    code, out, err = run_main(SMALL + ['-imageSize', '12', '-cropSize', '12', '-save', str(tmp_path / 'crop')], capsys)
    assert code == 1 and '-cropSize 12' in err and not (tmp_path / 'crop').exists()


def test_nan_loss_stops_without_checkpoint(tmp_path, capsys, tiny_models):
    save = tmp_path / 'run'
    code, out, err = run_main(SMALL + ['-nEpochs', '2', '-epochSize', '5', '-constantLR', '1e30',
                                       '-save', str(save)], capsys)
    assert code == 1
    assert err.startswith('main.py: the training loss became ') and err.count('\n') == 1
    assert sorted(os.listdir(save)) == ['classes.t7', 'log.txt', 'options.json']


def test_program_error_has_no_traceback(tmp_path):
    (tmp_path / 'garbage.t7').write_bytes(b'\x00' * 7)
    result = subprocess.run([PYTHON, os.path.join(ROOT, 'main.py'), *SMALL, '-testOnly', '-retrain',
                             str(tmp_path / 'garbage.t7'), '-save', str(tmp_path / 'run')],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr
    assert result.stderr.startswith(f'main.py: -retrain {tmp_path}/garbage.t7: cannot read it')


def signal_after_epoch_2(argv, save, sig):
    """Runs argv (a long training into `save`) until epoch 2 is saved, then sends it `sig`: (exit code, stderr)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (save / 'optimState_2.t7').exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


def saved_epochs(save):
    return max(int(n[len('optimState_'):-len('.t7')]) for n in os.listdir(save)
               if n.startswith('optimState_') and n.endswith('.t7'))


def test_resume_after_kill(tmp_path):
    save = tmp_path / 'run'
    argv = [PYTHON, driver(tmp_path), *SMALL, '-epochSize', '4', '-save', str(save)]
    signal_after_epoch_2(argv + ['-nEpochs', '1000'], save, signal.SIGKILL)
    done = saved_epochs(save)
    assert done >= 2
    for n in range(1, done + 1):
        # every finished epoch left whole files
        assert t7.load(str(save / f'optimState_{n}.t7'))['evalCounter'] == 4 * n
        t7.load_model(str(save / f'model_{n}.t7'))
    result = subprocess.run(argv + ['-nEpochs', str(done + 1), '-resume', str(save)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f'Loading optimState from file: {save}/optimState_{done}.t7' in result.stdout
    assert f'==> online epoch # {done + 1}\n' in result.stdout and '==> online epoch # 1\n' not in result.stdout
    # the optimizer went on from the saved state: its step counter continues
    assert t7.load(str(save / f'optimState_{done + 1}.t7'))['evalCounter'] == 4 * (done + 1)
    assert not [n for n in os.listdir(save) if n.startswith('.')]
    log = (save / 'log.txt').read_text()
    assert log.count('[program started on ') == 2


def test_ctrl_c_says_what_there_is_to_resume(tmp_path):
    save = tmp_path / 'run'
    argv = [PYTHON, driver(tmp_path), *SMALL, '-epochSize', '4', '-nEpochs', '1000', '-save', str(save)]
    code, err = signal_after_epoch_2(argv, save, signal.SIGINT)
    assert code == 130 and 'Traceback' not in err, err
    done = saved_epochs(save)
    last = (save / 'log.txt').read_text().splitlines()[-1]
    # CmdLine:log's log.txt ends each printed line with a space, as Lua's did
    assert last == (f'Interrupted (Ctrl-C): epoch {done} is the last one saved; python main.py -resume {save} goes '
                    f'on from epoch {done + 1} ')


def test_ctrl_c_before_training_leaves_no_run_folder(tmp_path, capsys, tiny_models, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(main.model_setup, 'check_input_size', interrupted)
    code, out, err = run_main(SMALL + ['-save', str(tmp_path / 'new' / 'run')], capsys)
    assert code == 130 and not (tmp_path / 'new').exists()


def test_two_cpu_workers_from_the_command_line(tmp_path):
    save = tmp_path / 'run'
    result = subprocess.run([PYTHON, driver(tmp_path), *SMALL, '-nGPU', '2', '-nEpochs', '1', '-epochSize', '3',
                             '-save', str(save)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    cores = os.cpu_count()
    assert torch.cuda.is_available() or result.stdout.startswith(f'-nGPU 2: no CUDA device here, so 2 worker processes train on the CPU '
                                    f'(torch.distributed with gloo), {max(1, cores // 2)} of its {cores} cores each\n')
    # rank 0 alone prints, logs and saves
    for text in (result.stdout, (save / 'log.txt').read_text()):
        assert text.count('Epoch: [1][3/3]') == 1 and text.count('[TESTING SUMMARY]') == 1
    assert {'model_1.t7', 'optimState_1.t7'} <= set(os.listdir(save))
    assert len((save / 'test.log').read_text().splitlines()) == 2


def test_clcnet_recipe_checkpoints_best_and_resume(tmp_path, capsys, tiny_models):
    save = tmp_path / 'run'
    clc = SMALL + ['-netType', 'clcneta', '-batchSize', '512', '-LR', '0.1', '-save', str(save)]
    code, out, err = run_main(clc + ['-nEpochs', '2'], capsys)
    assert code == 0, err
    # ceil(1437 / 512) = 3 training batches per epoch, the learning rate falling linearly over the 6 of the run
    assert 'lr = 0.1\n' in out and 'lr = 0.05\n' in out
    assert ' | Epoch: [2][3/3]    Time ' in out
    # every validation image is tested: 359 = 512 - 153, one short batch
    assert ' | Test: [1][1/1]    Time ' in out
    assert out.count(' * Best model \t') >= 1 and ' * Finished top1: ' in out
    assert t7.load(str(save / 'latest.t7')) == {'epoch': 2, 'modelFile': 'model_2.t7', 'optimFile': 'optimState_2.t7'}
    state = t7.load(str(save / 'optimState_2.t7'))
    assert state['nesterov'] is True and state['evalCounter'] == 6
    assert {'model_best.t7', 'model_1.t7', 'model_2.t7'} <= set(os.listdir(save))
    code, out, err = run_main(clc + ['-nEpochs', '3', '-resume', str(save)], capsys)
    assert code == 0, err
    assert f'=> Loading checkpoint {save}/latest.t7' in out and f'=> Resuming model from {save}/model_2.t7' in out
    assert '=> Training epoch # 3\n' in out and 'epoch # 1\n' not in out
    assert t7.load(str(save / 'optimState_3.t7'))['evalCounter'] == 9
    # a fresh classifier for fine-tuning replaces the last Linear
    code, out, err = run_main(clc + ['-nEpochs', '1', '-retrain', str(save / 'model_3.t7'), '-resetClassifier',
                                     '-nClasses', '10', '-save', str(tmp_path / 'tuned')], capsys)
    assert code == 0, err
    assert ' => Replacing classifier with 10-way classifier' in out


# --- what a new user meets (issue 12) -------------------------------------------------------------------------

# the tiny network's 8x8 crops of the tinynet images
IMAGES = ['-imageSize', '10', '-cropSize', '8', '-batchSize', '4', '-nDonkeys', '0', '-noProgress']


def copy_of(tinynet, tmp_path, name, drop=(), val_only=()):
    """A copy of tinynet without the classes `drop`, and with the classes `val_only` in val/ only."""
    root = tmp_path / name
    shutil.copytree(tinynet, root)
    classes = sorted(os.listdir(root / 'train'))
    for c in drop:
        for split in ('train', 'val'):
            shutil.rmtree(root / split / classes[c])
    for c in val_only:
        shutil.rmtree(root / 'train' / classes[c])
    return root


def test_readme_benchmark_of_a_network_needs_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main('-netType resnet-lcnn -depth 18 -pool1 20 -pool2 20 -pool3 20 -pool4 20 '
                              '-benchmark'.split(), capsys)
    assert code == 0, err
    assert 'Benchmark Summary: memory ' in out and 'Counted multiplications vs dense equivalent' in out
    # no -data folder, no metadata cache, no run folder
    assert os.listdir(tmp_path) == []


def test_readme_benchmark_of_a_file_with_lookup_needs_no_data(tmp_path, capsys, monkeypatch, tiny_models):
    monkeypatch.setenv('LCNN_LOOKUP_BACKEND', 'torch')
    monkeypatch.chdir(tmp_path)
    t7.save_model('net.t7', tiny(main.opts.parse([])))
    code, out, err = run_main(['-benchmark', '-retrain', 'net.t7', '-lookup', '-cropSize', '8'], capsys)
    assert code == 0, err
    assert 'Loading model from file: net.t7' in out and 'total (whole network)' in out
    assert os.listdir(tmp_path) == ['net.t7']


def test_resume_dir_alone_goes_on_with_the_recorded_options(tmp_path, capsys, tiny_models):
    save = tmp_path / 'run'
    code, out, err = run_main(SMALL + ['-nEpochs', '1', '-epochSize', '2', '-LR', '0.5', '-save', str(save)], capsys)
    assert code == 0, err
    code, out, err = run_main(['-resume', str(save), '-nEpochs', '2'], capsys)
    assert code == 0, err
    assert (f'Restored the options of {save}/options.json; changed on the command line: -nEpochs 1 -> 2\n'
            in out)
    assert '==> online epoch # 2\n' in out and '==> online epoch # 1\n' not in out
    state = t7.load(str(save / 'optimState_2.t7'))
    # -epochSize 2 and -LR 0.5 came from the record
    assert state['evalCounter'] == 4 and state['learningRate'] == 0.005
    # testing its last checkpoint leaves the record of the run as it was
    code, out, err = run_main(['-resume', str(save), '-testOnly'], capsys)
    assert code == 0 and '-testOnly false -> true' in out and '[TESTING SUMMARY]' in out
    # a finished run says so; stray files are no epochs
    for name in ('optimState_7.t7.bak', 'optimState_8.t7~', 'notes.txt'):
        (save / name).touch()
    code, out, err = run_main(['-resume', str(save)], capsys)
    assert (code, err) == (2, f'main.py: -resume {save}: finished at epoch 2; raise -nEpochs to go on\n')
    # a run from before options were recorded resumes with the flags given, and says so
    os.remove(save / 'options.json')
    code, out, err = run_main(SMALL + ['-epochSize', '2', '-nEpochs', '3', '-resume', str(save)], capsys)
    assert code == 0, err
    assert f'-resume {save}: no options.json there' in out and '==> online epoch # 3\n' in out


def test_a_second_dataset_with_the_same_cache(tinynet, tmp_path, capsys, tiny_models):
    cache = tmp_path / 'cache'
    start = time.time()
    code, out, err = run_main(IMAGES + ['-data', str(tinynet), '-nClasses', '5', '-cache', str(cache), '-testOnly',
                                        '-save', str(tmp_path / 'a')], capsys)
    assert code == 0, err
    # with a fresh cache: the folder scan and the 2 x 10000-sample mean/std estimate
    assert 'Estimating the mean' in out and time.time() - start < 30
    other = copy_of(tinynet, tmp_path, 'other')
    for split in ('train', 'val'):
        for k, c in enumerate(sorted(os.listdir(other / split))):
            os.rename(other / split / c, other / split / f'class{k}')
    code, out, err = run_main(IMAGES + ['-data', str(other), '-nClasses', '5', '-cache', str(cache), '-testOnly',
                                        '-save', str(tmp_path / 'b')], capsys)
    assert code == 1 and err.count('\n') == 1
    assert err.startswith(f'main.py: {cache}/imagenet_trainCache.t7 lists images that are not under -data {other}')
    assert f'give the -data it was made for ({tinynet})' in err and 'give another -cache' in err
    assert 'image can not be loaded' not in out


def test_classes_only_in_val_stop_before_the_estimate(tinynet, tmp_path, capsys, tiny_models):
    data = copy_of(tinynet, tmp_path, 'data', val_only=[2])
    cache = tmp_path / 'cache'
    code, out, err = run_main(IMAGES + ['-data', str(data), '-nClasses', '4', '-cache', str(cache),
                                        '-save', str(tmp_path / 'run')], capsys)
    assert code == 1 and err.count('\n') == 1
    assert "has images in val/ but no train/ folder" in err
    assert 'Estimating' not in out and not (cache / 'imagenet_meanstdCache.t7').exists()
    code, out, err = run_main(IMAGES + ['-data', str(tinynet), '-nClasses', '4', '-cache', str(tmp_path / 'c2'),
                                        '-save', str(tmp_path / 'run')], capsys)
    assert code == 1 and 'pass -nClasses 5' in err and 'Estimating' not in out
    code, out, err = run_main(IMAGES + ['-data', str(tinynet), '-nClasses', '5', '-batchSize', '12',
                                        '-cache', str(tmp_path / 'c3'), '-save', str(tmp_path / 'run')], capsys)
    assert code == 1 and 'larger than the 11 validation images' in err and 'Estimating' not in out


def test_fewer_than_five_classes_train_and_test(tinynet, tmp_path, capsys, tiny_models):
    data = copy_of(tinynet, tmp_path, 'data', drop=[0, 1])
    code, out, err = run_main(IMAGES + ['-data', str(data), '-nClasses', '3', '-cache', str(tmp_path / 'cache'),
                                        '-nEpochs', '1', '-epochSize', '2', '-save', str(tmp_path / 'run')], capsys)
    assert code == 0, err
    # top-5 of 3 classes is top-3: every image
    assert 'Top5-%: 100.00' in out and '\t top-5 100.00\n' in out


def test_unwritable_cache(tinynet, tmp_path, capsys, tiny_models):
    (tmp_path / 'file').write_text('')
    code, out, err = run_main(IMAGES + ['-data', str(tinynet), '-nClasses', '5', '-cache', str(tmp_path / 'file'),
                                        '-save', str(tmp_path / 'run')], capsys)
    assert code == 1 and err.count('\n') == 1
    assert f'-cache {tmp_path}/file: cannot create it' in err


def tiny_batch_norm(opt):
    """tiny with a BatchNorm over one value per channel, as alexnet-lcnn's fully connected layers have."""
    return nn.Sequential(named(nn.Conv2d(3, 8, 8), 'nn.SpatialConvolution'), nn.BatchNorm2d(8), View(8),
                         nn.Linear(8, opt.nClasses), LogSoftMax())


def test_batch_of_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, 'create', tiny_batch_norm)
    code, out, err = run_main(SMALL + ['-batchSize', '1', '-epochSize', '2', '-save', str(tmp_path / 'run')], capsys)
    assert code == 1 and err.count('\n') == 1
    assert err.startswith('main.py: -batchSize 1: BatchNorm needs more than one value per channel')
    code, out, err = run_main(SMALL + ['-batchSize', '1', '-testOnly', '-save', str(tmp_path / 'test')], capsys)
    assert code == 0, err


def test_retrain_with_another_class_count(tmp_path, capsys, tiny_models):
    path = tmp_path / 'twelve.t7'
    t7.save_model(str(path), tiny(main.opts.parse(['-nClasses', '12'])))
    code, out, err = run_main(SMALL + ['-testOnly', '-retrain', str(path), '-save', str(tmp_path / 'run')], capsys)
    assert code == 0, err
    warning = f'WARNING: -retrain {path} has 12 outputs but the data has 10 classes'
    assert out.index(warning) < out.index('[TESTING SUMMARY]')
    # fewer outputs than classes cannot run
    t7.save_model(str(path), tiny(main.opts.parse(['-nClasses', '7'])))
    code, out, err = run_main(SMALL + ['-retrain', str(path), '-save', str(tmp_path / 'train')], capsys)
    assert code == 1 and err.count('\n') == 1 and 'TRAINING' not in out
    assert err.startswith(f'main.py: -retrain {path} has 7 outputs but the data has 10 classes: classes 8 to 10')
