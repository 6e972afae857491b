"""Tests for t7/__main__.py: `python -m t7 print` prints models as Lua's print(model) does and other values as a tree;
`python -m t7 convert` writes TorchScript that plain torch.jit.load runs without this project."""
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import t7
from t7.__main__ import lua_string, main, tree

ZOO = pathlib.Path(__file__).parent / 'fixtures' / 'nn_zoo'
FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def module(typename, **fields):
    return t7.TorchObject(typename, fields)


def run(capsys, *argv):
    status = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return status, out, err


# What nn's __tostring__ functions build for these files (Sequential.lua, ConcatTable.lua and each module's).
EXPECTED = {
    'Sequential_convnet': '''\
        nn.Sequential {
          [input -> (1) -> (2) -> (3) -> (4) -> (5) -> (6) -> (7) -> (8) -> output]
          (1): nn.SpatialConvolution(3 -> 6, 3x3, 1,1, 1,1)
          (2): nn.SpatialBatchNormalization (4D) (6)
          (3): nn.ReLU
          (4): nn.SpatialMaxPooling(2x2, 2,2)
          (5): nn.View(96)
          (6): nn.Dropout(0.500000)
          (7): nn.Linear(96 -> 4)
          (8): nn.SoftMax
        }''',
    'Sequential_residual': '''\
        nn.Sequential {
          [input -> (1) -> (2) -> (3) -> output]
          (1): nn.ConcatTable {
            input
              |`-> (1): nn.Sequential {
              |      [input -> (1) -> (2) -> output]
              |      (1): nn.SpatialConvolution(4 -> 4, 3x3, 1,1, 1,1)
              |      (2): nn.SpatialBatchNormalization (4D) (4)
              |    }
               `-> (2): nn.Identity
               ... -> output
          }
          (2): nn.CAddTable
          (3): nn.ReLU
        }''',
    'ConcatTable': '''\
        nn.ConcatTable {
          input
            |`-> (1): nn.Linear(5 -> 3)
            |`-> (2): nn.Identity
             `-> (3): nn.Sequential {
                   [input -> (1) -> (2) -> output]
                   (1): nn.Linear(5 -> 2)
                   (2): nn.Tanh
                 }
             ... -> output
        }''',
    'DepthConcat': '''\
        nn.DepthConcat {
          input
            |`-> (1): nn.SpatialConvolution(3 -> 4, 3x3)
            |`-> (2): nn.SpatialConvolution(3 -> 2, 1x1)
            |`-> (3): nn.SpatialConvolution(3 -> 2, 2x2)
             `-> (4): nn.SpatialConvolution(3 -> 3, 5x5)
             ... -> output
        }''',
    'MapTable': '''\
        nn.MapTable {
          nn.Linear(5 -> 3)
        }''',
    'cudnn_net': '''\
        nn.Sequential {
          [input -> (1) -> (2) -> (3) -> (4) -> (5) -> (6) -> (7) -> (8) -> (9) -> output]
          (1): cudnn.SpatialConvolution(3 -> 8, 3x3, 1,1, 1,1)
          (2): cudnn.SpatialBatchNormalization
          (3): cudnn.ReLU
          (4): cudnn.SpatialMaxPooling(2x2, 2,2)
          (5): cudnn.SpatialConvolution(8 -> 8, 3x3, 1,1, 1,1)
          (6): cudnn.SpatialAveragePooling(2x2, 2,2)
          (7): nn.View(32)
          (8): nn.Linear(32 -> 5)
          (9): cudnn.LogSoftMax
        }''',
    # A 2014 file: MM layers without padW/padH print their strides (nil ~= 0 in Lua) and no padding.
    'old_SpatialConvolutionMM_model': '''\
        nn.Sequential {
          [input -> (1) -> (2) -> (3) -> (4) -> (5) -> (6) -> (7) -> (8) -> (9) -> output]
          (1): nn.SpatialConvolutionMM(3 -> 6, 3x3, 1,1)
          (2): nn.ReLU
          (3): nn.SpatialMaxPooling(2x2, 2,2)
          (4): nn.SpatialConvolutionMM(6 -> 8, 3x3, 1,1)
          (5): nn.Tanh
          (6): nn.SpatialMaxPooling(2x2, 2,2)
          (7): nn.Reshape(32)
          (8): nn.Linear(32 -> 10)
          (9): nn.LogSoftMax
        }''',
    'gModule_lstm_split': 'nn.gModule',
    'Reshape_batchMode_true': 'nn.Reshape(2x6)',
    'Unsqueeze': 'nn.Unsqueeze(dim 2)',
    'SelectTable_neg': 'nn.SelectTable(-1)',
    'Linear_nobias': 'nn.Linear(5 -> 3) without bias',
    'SpatialFullConvolution_adj': 'nn.SpatialFullConvolution(3 -> 4, 3x3, 2,2, 1,1, 1,1)',
    'SpatialZeroPadding_neg_crop': 'nn.SpatialZeroPadding(l=-1, r=0, t=-2, b=-1)',
    'Normalize_inf': 'nn.Normalize(inf)',
    'LeakyReLU': 'nn.LeakyReLU(0.1)',
    'lcnn_PooledSpatialConvolution': 'cudnn.PooledSpatialConvolution(3 -> 6, 3x3, pool4)',
    'Bilinear_nobias': 'nn.Bilinear(4x3 -> 5)  without bias',
}


@pytest.mark.parametrize('case', sorted(EXPECTED))
def test_print_is_luas_print_of_the_model(capsys, case):
    status, out, err = run(capsys, 'print', ZOO / f'{case}.module.t7')
    assert (status, err) == (0, '')
    assert out == textwrap.dedent(EXPECTED[case]) + '\n'


def test_print_of_modules_lua_built_by_hand():
    assert lua_string(module('nn.SpatialMaxPooling', kW=3, kH=3, dW=2, dH=2, padW=1, padH=0)) == \
        'nn.SpatialMaxPooling(3x3, 2,2, 1,0)'
    assert lua_string(module('nn.Dropout', p=0.25)) == 'nn.Dropout(0.250000)'
    assert lua_string(module('nn.gModule', name='encoder')) == 'encoder'
    assert lua_string(module('nn.SpatialLPPooling', modules=[module('nn.Sqrt')])) == \
        'nn.Sequential {\n  [input -> (1) -> output]\n  (1): nn.Sqrt\n}'
    assert lua_string(module('nn_plus.ChannelInterlace', channel=8, group=2)) == \
        'ChannelInterlace : #channel=8, #group=2, group size=4'
    # A field the class's __tostring__ needs is missing: the class name still says what it is.
    assert lua_string(module('nn.Linear')) == 'nn.Linear'


def test_print_of_other_values_is_a_tree(capsys):
    status, out, err = run(capsys, 'print', FIXTURES / 'imagenet_trainCache.t7')
    assert status == 0 and out.startswith('dataLoader {\n  classIndices : {\n    n01930112 : 5\n')
    assert '\n  classListSample : <root.classList>\n' in out
    assert '\n  imagePath : [torch.CharTensor of size 18x50]\n' in out
    checkpoint = {'protos': {'rnn': t7.load(ZOO / 'MapTable.module.t7')}, 'vocab': {'a': 1}, 'seen': [1.5, True]}
    checkpoint['self'] = checkpoint
    assert tree(checkpoint) == textwrap.dedent('''\
        {
          protos : {
            rnn : nn.MapTable {
              nn.Linear(5 -> 3)
            }
          }
          seen : {
            1 : 1.5
            2 : true
          }
          self : <root>
          vocab : {
            a : 1
          }
        }''')
    keyed = {}
    keyed[t7.TableKey(keyed)] = 'me'
    assert tree(keyed) == '{\n  <root> : me\n}'


def test_errors_are_one_line(capsys, tmp_path):
    for argv, status, message in [
        (['print', tmp_path / 'missing.t7'], 1, 'cannot open t7 file .*missing.t7: No such file or directory'),
        (['print', FIXTURES / 'lua_model_trees.json'], 1, 'this does not look like a Torch7 file'),
        (['convert', ZOO / 'FlattenTable.module.t7', tmp_path / 'f.pt'], 1,
         'cannot convert .*FlattenTable.module.t7 to TorchScript: nn.FlattenTable takes arbitrarily nested tables'),
        (['convert', ZOO / 'Identity.module.t7', tmp_path / 'no' / 'f.pt'], 1, r'cannot write .*f\.pt'),
        (['printt', 'x'], 2, 'usage: python -m t7 print FILE'),
        ([], 2, 'usage'),
    ]:
        got, out, err = run(capsys, *argv)
        assert got == status and out == '', argv
        assert err.count('\n') == 1 and err.startswith('python -m t7: '), err
        assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


CLEAN_RUN = '''
import sys, torch
for folder in sys.argv[1:]:
    model = torch.jit.load(folder + '/model.pt')
    out = model(torch.load(folder + '/x.pt', weights_only=True))
    expected = torch.load(folder + '/y.pt', weights_only=True)
    outs, wants = (out, expected) if isinstance(out, list) else ([out], [expected])
    assert len(outs) == len(wants)
    print(max(float((o - w).abs().max()) for o, w in zip(outs, wants)))
'''


def test_converted_files_run_with_torch_jit_load_alone(capsys, tmp_path):
    """Tensor or table in, tensor or table out: each file runs in a Python that cannot import this project."""
    folders = []
    for case in ['Sequential_residual', 'ParallelTable', 'JoinTable_2', 'SplitTable_2']:
        folder = tmp_path / case
        folder.mkdir()
        status, out, err = run(capsys, 'convert', ZOO / f'{case}.module.t7', folder / 'model.pt')
        assert status == 0 and err == '' and out.startswith(f'wrote {folder / "model.pt"}: TorchScript of nn.')
        torch.save(t7.load(ZOO / f'{case}.input.t7'), folder / 'x.pt')
        torch.save(t7.load(ZOO / f'{case}.output.t7'), folder / 'y.pt')
        folders.append(str(folder))
    # -I: no PYTHONPATH, no user site, not even the script's folder; the cwd is elsewhere too.
    result = subprocess.run([sys.executable, '-I', '-c', CLEAN_RUN, *folders], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    diffs = [float(line) for line in result.stdout.split()]
    assert len(diffs) == 4 and max(diffs) <= 1e-5


def checkpoint(**protos):
    """A training checkpoint laid out as char-rnn saves one: the network next to its criterion, options and data."""
    criterion = module('nn.ClassNLLCriterion', output=0, gradInput=torch.empty(0), sizeAverage=True)
    return {'protos': {**protos, 'criterion': criterion}, 'opt': {'rnn_size': 3}, 'vocab': {'a': 1, 'b': 2},
            'epoch': 1.5}


def test_convert_of_a_checkpoint_takes_its_one_network(capsys, tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    t7.save(tmp_path / 'ckpt.t7', checkpoint(rnn=t7.to_lua(net)))
    status, out, err = run(capsys, 'convert', tmp_path / 'ckpt.t7', tmp_path / 'rnn.pt')
    assert (status, err) == (0, '') and out.startswith(f'wrote {tmp_path / "rnn.pt"}: TorchScript of nn.Sequential '
                                                       'at protos.rnn;')
    x = torch.randn(4, 3)
    assert torch.allclose(torch.jit.load(tmp_path / 'rnn.pt')(x), net(x), atol=1e-6)
    # The printed checkpoint is the whole table, its modules as Lua prints them.
    status, out, err = run(capsys, 'print', tmp_path / 'ckpt.t7')
    assert status == 0 and 'protos : {\n    criterion : nn.ClassNLLCriterion\n    rnn : nn.Sequential {\n' in out
    assert '      (1): nn.Linear(3 -> 2)\n' in out and 'rnn_size : 3' in out


def test_convert_of_a_file_holding_several_networks_or_none(capsys, tmp_path):
    net = t7.to_lua(torch.nn.Sequential(torch.nn.Linear(3, 2)))
    t7.save(tmp_path / 'two.t7', checkpoint(enc=net, dec=t7.to_lua(torch.nn.Linear(2, 3))))
    t7.save(tmp_path / 'none.t7', checkpoint())
    t7.save(tmp_path / 'tensor.t7', torch.zeros(2, 3))
    for argv, message in [
        (['two.t7', 'x.pt'], r'two.t7 holds a Lua table, not an nn module; the nn modules in it: protos.dec '
                             r'\(nn.Linear\), protos.enc \(nn.Sequential\); name the one to convert: '
                             r'python -m t7 convert .*two.t7 .*x.pt protos.dec$'),
        (['none.t7', 'x.pt'], r'none.t7 holds a Lua table, not an nn module, and no nn module inside it$'),
        (['tensor.t7', 'x.pt'], r'tensor.t7 holds a torch.float32 tensor of size 2x3, not an nn module'),
        (['two.t7', 'x.pt', 'protos'], r'two.t7 has at protos a Lua table, .* give PLACE protos.dec$'),
        (['two.t7', 'x.pt', 'protos.criterion'], r'two.t7: the module at protos.criterion: nn.ClassNLLCriterion at '
                                                 r'model is a criterion \(a loss function\)'),
        (['two.t7', 'x.pt', 'protos.rnn'], r'nothing at protos.rnn: protos has no key rnn$'),
        (['two.t7', 'x.pt', 'opt'], r'has at opt a Lua table, not an nn module, and no nn module inside it$'),
    ]:
        status, out, err = run(capsys, 'convert', *[tmp_path / a for a in argv[:2]], *argv[2:])
        assert status == 1 and out == '' and err.count('\n') == 1, err
        assert re.search(message, err.strip()), err
    status, out, err = run(capsys, 'convert', tmp_path / 'two.t7', tmp_path / 'enc.pt', 'protos.enc')
    assert status == 0 and 'TorchScript of nn.Sequential at protos.enc;' in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['enc.pt', 'none.t7', 'tensor.t7', 'two.t7']


def test_convert_onto_its_own_source_is_refused_and_leaves_it(capsys, tmp_path):
    t7.save_model(tmp_path / 'model.t7', torch.nn.Sequential(torch.nn.Linear(3, 2)))
    before = (tmp_path / 'model.t7').read_bytes()
    (tmp_path / 'link.t7').symlink_to(tmp_path / 'model.t7')
    for target in ('model.t7', 'link.t7'):
        status, out, err = run(capsys, 'convert', tmp_path / 'model.t7', tmp_path / target)
        assert status == 1 and out == '' and err.count('\n') == 1, err
        assert f'{tmp_path / target} is the file being converted' in err and 'give another name' in err
    assert (tmp_path / 'model.t7').read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['link.t7', 'model.t7']


def test_load_model_of_a_checkpoint_names_the_modules_inside(tmp_path):
    ckpt = checkpoint(rnn=t7.to_lua(torch.nn.Linear(3, 2)))
    with pytest.raises(t7.T7Error, match=r"^t7.load_model got a Lua table, not an nn module; the nn modules in it: "
                                         r"protos.rnn \(nn.Linear\); .*t7.find\(value, 'protos.rnn'\)"):
        t7.load_model(ckpt)
    assert isinstance(t7.load_model(t7.find(ckpt, 'protos.rnn')), torch.nn.Linear)
    with pytest.raises(t7.T7Error, match=r'^nn.ClassNLLCriterion at model is a criterion \(a loss function\), not a '
                                         r'layer'):
        t7.load_model(t7.find(ckpt, 'protos.criterion'))


def test_print_of_the_rnn_packages_decorators_and_recurrent_modules():
    lstm = module('nn.FastLSTM', inputSize=6, outputSize=4, recurrentModule=module('nn.Sequential', modules=[]))
    linear = t7.to_lua(torch.nn.Linear(6, 4))
    step = module('nn.Sequential', modules=[module('nn.MaskZero', modules=[lstm], nInputDim=1),
                                            module('nn.MaskZero', modules=[linear], nInputDim=1),
                                            module('nn.GRU', inputSize=3, outputSize=2, p=0.25),
                                            module('nn.LSTM', input_dim=3, hidden_dim=2)])
    recursor = module('nn.Recursor', modules=[step])
    assert lua_string(module('nn.Sequencer', modules=[recursor])) == textwrap.dedent('''\
        nn.Sequencer @ nn.Recursor @ nn.Sequential {
          [input -> (1) -> (2) -> (3) -> (4) -> output]
          (1): nn.MaskZero @ nn.FastLSTM(6 -> 4)
          (2): nn.MaskZero @ nn.Linear(6 -> 4)
          (3): nn.GRU(3 -> 2, 0.25)
          (4): nn.LSTM
        }''')


def test_deeply_nested_tables_print_and_refuse_to_convert_in_one_line(capsys, tmp_path):
    value = inner = {}
    for _ in range(1200):
        inner['x'] = {}
        inner = inner['x']
    t7.save(tmp_path / 'deep.t7', value)
    status, out, err = run(capsys, 'print', tmp_path / 'deep.t7')
    assert (status, err) == (0, '') and out.count('\n') == 2 * 1200 + 1
    status, out, err = run(capsys, 'convert', tmp_path / 'deep.t7', tmp_path / 'deep.pt')
    assert status == 1 and err.endswith('deep.t7 holds a Lua table, not an nn module, and no nn module inside it\n')
