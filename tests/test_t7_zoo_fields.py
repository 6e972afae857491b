"""t7.save_model writes each leaf nn module of the zoo (tests/fixtures/nn_zoo) with the fields the Lua-written file
has: same names, same Lua types and, for the configuration and the data, the same values; the only fields it leaves
out are the buffers that the class's own updateOutput creates when they are missing."""
import csv
import pathlib

import pytest
import torch

import t7

ZOO = pathlib.Path(__file__).parent / 'fixtures' / 'nn_zoo'
with open(ZOO / 'cases.tsv', newline='') as _f:
    CASES = [row['case'] for row in csv.DictReader(_f, delimiter='\t')]

# Zoo cases of the leaf module families (the containers, graphs, shape and table modules are covered elsewhere).
OTHERS = ('Sequential_', 'Concat', 'DepthConcat', 'ParallelTable', 'MapTable', 'Parallel_', 'gModule', 'Padding_',
          'View', 'Reshape', 'Transpose', 'Squeeze', 'Unsqueeze', 'Replicate', 'Narrow', 'Select', 'Identity', 'Copy',
          'Contiguous', 'JoinTable', 'SplitTable', 'FlattenTable', 'Sum', 'Mean', 'Max', 'Min', 'CAddTable',
          'CSubTable', 'CMulTable', 'CDivTable', 'CMaxTable', 'CMinTable', 'DotProduct', 'MM', 'MV',
          'CosineDistance', 'PairwiseDistance', 'old_SpatialConvolutionMM_model')
LEAF_CASES = [c for c in CASES if not c.startswith(OTHERS)]

# Buffers that updateOutput makes itself (`self.x = self.x or input.new()` and the like), by class; the Lua files
# have them because they were written after a forward.
_CONV_BUFFERS = {'finput', 'fgradInput'}
MADE_BY_FORWARD = {
    'SpatialConvolution': _CONV_BUFFERS, 'SpatialConvolutionMM': _CONV_BUFFERS,
    'SpatialDilatedConvolution': _CONV_BUFFERS, 'SpatialFullConvolution': _CONV_BUFFERS,
    'VolumetricConvolution': _CONV_BUFFERS, 'SpatialConvolutionLocal': _CONV_BUFFERS,
    'SpatialDepthWiseConvolution': _CONV_BUFFERS, 'Linear': {'addBuffer'}, 'Bilinear': {'buff2'},
    'LookupTable': {'copiedInput'}, 'Cosine': {'_weightNorm', '_inputNorm'},
    'SpatialMaxPooling': {'iheight', 'iwidth'}, 'SpatialDilatedMaxPooling': {'iheight', 'iwidth'},
    'VolumetricMaxPooling': {'itime', 'iheight', 'iwidth'}, 'TemporalMaxPooling': {'indices'},
    'SpatialAdaptiveMaxPooling': {'indices'}, 'PixelShuffle': {'_intermediateShape', '_outShape', '_shuffleOut'},
    'BatchNormalization': {'save_mean', 'save_std'}, 'SpatialBatchNormalization': {'save_mean', 'save_std'},
    'VolumetricBatchNormalization': {'save_mean', 'save_std'}, 'SpatialCrossMapLRN': {'scale'},
    'Normalize': {'_output', 'norm', 'normp', 'buffer', '_indices'},
    'SpatialSubtractiveNormalization': {'_inpsz', 'ones', '_coef', 'localsums', 'adjustedsums'},
    'SpatialDivisiveNormalization': {'ones', '_coef', 'localstds', 'adjustedstds', 'thresholdedstds'},
    'SoftMin': {'mininput'}, 'SoftSign': {'temp'}, 'LogSigmoid': {'buffer'},
    'CMul': {'_output', '_weight', '_expand', '_repeat'}, 'CAdd': {'_output', '_bias', '_expand', '_repeat'},
    'Euclidean': {'_input', '_weight', '_expand', '_expand2', '_repeat', '_repeat2'},
    'WeightedEuclidean': {'_input', '_weight', '_diagCov', '_expand', '_expand2', '_expand3', '_repeat',
                          '_repeat2', '_repeat3'},
}
# What the CPU stand-in for cudnn's grouped convolution keeps between forwards.
MADE_BY_FORWARD['cudnn.SpatialConvolution'] = _CONV_BUFFERS | {'_gin', '_gout', '_gfinput'}
# Fields of old files that the current classes read under another name (padding -> padW/padH, running_std ->
# running_var): the writer writes the current ones.
OLD_NAMES = {'padding', 'running_std'}
# Values that a forward leaves in the Lua file (the sizes of the last input), not configuration.
STATE = {'inputSize', 'outputSize'}
DATA = {'weight', 'bias', 'running_mean', 'running_var', 'diagCov', 'connTable', 'kernel'}


def lua_kind(value):
    if isinstance(value, bool):
        return 'boolean'
    if isinstance(value, (int, float)):
        return 'number'
    if isinstance(value, torch.Tensor):
        return str(value.dtype)
    if isinstance(value, (t7.Storage, t7.TorchObject)):
        return value.typename
    return type(value).__name__


def made_by_forward(typename):
    name = typename.partition('.')[2]
    return MADE_BY_FORWARD.get(typename, MADE_BY_FORWARD.get(name, set()))


def compare(lua, ours, where, problems):
    assert lua.typename == ours.typename, where
    for name, theirs in lua.fields.items():
        if name not in ours.fields:
            if name not in made_by_forward(lua.typename) | OLD_NAMES:
                problems.append(f'{where} ({lua.typename}): no field {name}')
            continue
        mine = ours.fields[name]
        if lua_kind(mine) != lua_kind(theirs):
            problems.append(f'{where}.{name}: {lua_kind(mine)}, Lua has {lua_kind(theirs)}')
        elif isinstance(theirs, (bool, int, float, str)) and name != '_type' and mine != theirs:
            problems.append(f'{where}.{name} = {mine!r}, Lua has {theirs!r}')
        elif isinstance(theirs, t7.Storage) and name not in STATE and mine.data.tolist() != theirs.data.tolist():
            problems.append(f'{where}.{name} = {mine.data.tolist()}, Lua has {theirs.data.tolist()}')
        elif name in DATA and not torch.equal(mine.reshape(-1), theirs.reshape(-1)):
            problems.append(f'{where}.{name}: other values than Lua')
        elif isinstance(theirs, t7.TorchObject):
            compare(theirs, mine, f'{where}.{name}', problems)
        elif isinstance(theirs, list) and len(theirs) == len(mine):
            for i, (a, b) in enumerate(zip(theirs, mine)):
                if isinstance(a, t7.TorchObject):
                    compare(a, b, f'{where}.{name}[{i}]', problems)


@pytest.mark.parametrize('case', LEAF_CASES)
def test_written_module_has_the_fields_of_the_lua_file(case):
    lua = t7.load(ZOO / f'{case}.module.t7')
    ours = t7.to_lua(t7.load_model(lua))
    problems = []
    compare(lua, ours, case, problems)
    assert not problems, '\n'.join(problems)


def test_the_leaf_cases_cover_every_family():
    assert len(LEAF_CASES) == 161
    assert {'SpatialConvolutionMap_random', 'SpatialContrastiveNormalization_k5', 'cudnn_net', 'LookupTable_maxNorm',
            'old_VolumetricMaxPooling_v1', 'Euclidean', 'SpatialLPPooling_p3'} <= set(LEAF_CASES)
