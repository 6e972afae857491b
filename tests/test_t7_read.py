"""Tests for t7/read.py: reading files written by real Lua Torch7 (File.lua readObject semantics)."""
import io
import lzma
import math
import pathlib
import struct

import numpy as np
import pytest
import torch
import torchfile

import t7

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def expected_misc():
    """The values misc.expected.txt lists (printed by Lua), keyed by their label."""
    lines = (FIXTURES / 'misc.expected.txt').read_text().splitlines()
    values = {}
    for line in lines:
        parts = line.strip().split('\t')
        values[parts[0]] = parts[1:]
    return values


@pytest.fixture(scope='module')
def zoo():
    return t7.load(FIXTURES / 'serialization_zoo.t7')


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp('t7models')
    paths = {}
    for name in ['alexnet-lcnn', 'alexnet-lcnn.cuda', 'resnet8-lcnn', 'resnet8-lcnn.cuda']:
        paths[name] = folder / f'{name}.t7'
        paths[name].write_bytes(lzma.decompress((FIXTURES / f'{name}.t7.xz').read_bytes()))
    return paths


def test_zoo_scalars_and_strings(zoo):
    assert zoo['int'] == 42 and type(zoo['int']) is int
    assert zoo['negint'] == -7
    assert zoo['float'] == 3.25 and type(zoo['float']) is float
    assert zoo['tiny'] == 1e-300
    assert zoo['big'] == 2 ** 53 and type(zoo['big']) is int
    assert zoo['frac'] == 1 / 3
    assert zoo['inf'] == math.inf and zoo['ninf'] == -math.inf
    assert zoo['t'] is True and zoo['f'] is False
    assert zoo['str'] == 'hello' and zoo['empty'] == ''
    assert zoo['utf8'] == 'café €'
    assert zoo['bin'] == b'a\x00b\xff'


def test_zoo_tables(zoo):
    assert zoo['list'] == [10, 20, 'thirty', [40]]
    assert zoo['holes'] == {1: 'a', 3: 'c'}
    assert zoo['numkeys'] == {-1: 'minus one', 0: 'zero', 2.5: 'two and a half'}
    assert zoo['boolkeys'] == {True: 'yes', False: 'no'}
    assert zoo['nested'] == {'a': {'b': {'c': {'d': 'deep'}}}}
    assert zoo['self'] is zoo


def test_zoo_tensors_of_every_type(zoo):
    expected = {
        'byte': (torch.uint8, [0, 1, 127, 128, 255]),
        'char': (torch.int8, [-128, 0, 127]),
        'short': (torch.int16, [-32768, 32767]),
        'int_t': (torch.int32, [-2 ** 31, 2 ** 31 - 1]),
        'long': (torch.int64, [[1, -2, 3], [2 ** 40, 0, -2 ** 40]]),
        'double': (torch.float64, [[1, 2, 3], [4, 5, 6]]),
        'float_scalar1': (torch.float32, [1.5]),
    }
    for key, (dtype, values) in expected.items():
        assert zoo[key].dtype == dtype, key
        assert zoo[key].tolist() == values, key
    assert zoo['float_empty'].dtype == torch.float32 and zoo['float_empty'].numel() == 0
    assert isinstance(zoo['storage'], t7.Storage) and zoo['storage'].typename == 'torch.FloatStorage'
    assert zoo['storage'].data.tolist() == [1.0, 2.0, 3.0]
    assert zoo['longstorage'].data.dtype == torch.int64 and zoo['longstorage'].data.tolist() == [3, 224, 224]


def test_zoo_shared_storage_and_views(zoo):
    base = zoo['double']
    assert zoo['double_again'] is base
    view, narrow = zoo['double_view'], zoo['double_narrow']
    assert view.stride() == (1, 3) and view.storage_offset() == 0
    # misc.expected.txt's "offset 2" is Lua's 1-based storageOffset of the narrowed view.
    assert narrow.stride() == (3, 1) and narrow.storage_offset() + 1 == int(expected_misc()['zoo reload ok; '
                                                                                            'double_view stride'][-1])
    assert torch.equal(view, base.t()) and torch.equal(narrow, base[:, 1:])
    for t in (view, narrow):
        assert t.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    try:
        base[0, 1] = 100.0
        assert view[1, 0] == 100.0 and narrow[0, 0] == 100.0
    finally:
        base[0, 1] = 2.0


def test_zoo_function_is_inert_bytecode(zoo):
    fn = zoo['fn']
    assert isinstance(fn, t7.LuaFunction)
    assert fn.dumped.startswith(b'\x1bLJ') and len(fn.dumped) == 47
    assert fn.upvalues == {}


def test_tensors_own_writable_memory(zoo, tmp_path):
    path = tmp_path / 'copy.t7'
    path.write_bytes((FIXTURES / 'serialization_zoo.t7').read_bytes())
    loaded = t7.load(path)
    path.unlink()
    t = loaded['long']
    t += 1
    assert t[0, 0] == 2
    assert loaded['storage'].data.untyped_storage().resizable()


def test_ascii_mode_file():
    data = t7.load(FIXTURES / 'serialization_zoo.ascii.t7')
    assert data['int'] == 42 and data['str'] == 'hello'
    assert data['double'].dtype == torch.float64 and data['double'].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert data['long'].tolist() == [[1, -2, 3], [2 ** 40, 0, -2 ** 40]]
    assert t7.equal(t7.load(FIXTURES / 'serialization_zoo.ascii.t7', mode='ascii'), data)


def test_ascii_strings_keep_leading_whitespace_and_newlines():
    # One string, " a\nb", written as torch7's ascii mode does: its length, a newline, the raw bytes, a newline.
    assert t7.load(b'2\n5\n \na\nb\n', mode='ascii') == ' \na\nb'


def test_every_kind_of_source_gives_the_same_value(zoo):
    path = FIXTURES / 'serialization_zoo.t7'
    raw = path.read_bytes()

    class Pipe:
        """A non-seekable stream, like stdin."""

        def __init__(self, data):
            self.buffer = io.BytesIO(data)

        def read(self, n=-1):
            return self.buffer.read(n)

    prefixed = io.BytesIO(b'HEADER' + raw)
    prefixed.seek(6)
    for source in [str(path), path, raw, bytearray(raw), io.BytesIO(raw), open(path, 'rb'), Pipe(raw), prefixed]:
        assert t7.equal(t7.load(source), zoo)
        if hasattr(source, 'close'):
            source.close()


def test_optim_state_matches_lua_print():
    expected = expected_misc()
    for name in ['optimState_sgd2.t7', 'optimState_sgd2.cuda.t7']:
        state = t7.load(FIXTURES / name)
        assert set(state) == {'dampening', 'dfdx', 'evalCounter', 'learningRate', 'learningRateDecay', 'momentum',
                              'weightDecay'}
        for key in ['dampening', 'evalCounter', 'learningRate', 'learningRateDecay', 'momentum', 'weightDecay']:
            assert state[key] == float(expected[key][1]), key
        assert state['dfdx'].dtype == torch.float32
        lua = torch.tensor([float(v) for v in expected['dfdx'][1].split()])
        torch.testing.assert_close(state['dfdx'], lua, rtol=0, atol=1e-6)
    params = t7.load(FIXTURES / 'optimState_sgd2.params.t7')
    lua = torch.tensor([float(v) for v in expected['params after 2 steps'][0].split()])
    torch.testing.assert_close(params, lua, rtol=0, atol=1e-6)


def test_data_loader_caches():
    for split in ['train', 'test']:
        cache = t7.load(FIXTURES / f'imagenet_{split}Cache.t7')
        assert isinstance(cache, t7.TorchObject) and cache.typename == 'dataLoader'
        assert cache.imagePath.dtype == torch.int8 and cache.imagePath.dim() == 2
        assert cache.imageClass.dtype == torch.int64 and cache.imageClass.min() >= 1
        assert cache.imagePath.shape[0] == cache.imageClass.shape[0] == cache.numSamples
        assert cache.classList is cache.classListSample
        assert cache.classes == ['n07920052', 'n03000134', 'n04266014', 'n02123045', 'n01930112']
        first = bytes(cache.imagePath[0].to(torch.uint8).tolist()).split(b'\0')[0].decode()
        assert first.startswith('/data/tinynet/')
    assert 'forceClasses' in cache


def test_gpu_saved_models_load_like_cpu_ones(models):
    for name in ['alexnet-lcnn', 'resnet8-lcnn']:
        cpu, gpu = t7.load(models[name]), t7.load(models[f'{name}.cuda'])
        assert cpu.typename == gpu.typename == 'nn.Sequential'
        assert cpu._type == 'torch.FloatTensor' and gpu._type == 'torch.CudaTensor'
        cpu_tensors, gpu_tensors = tensors_by_path(cpu), tensors_by_path(gpu)
        assert cpu_tensors.keys() == gpu_tensors.keys()
        for path, t in cpu_tensors.items():
            assert t.dtype == gpu_tensors[path].dtype and torch.equal(t, gpu_tensors[path]), path
        pooling = [p for p in gpu_tensors if p.endswith('.indices')]
        assert pooling and all(gpu_tensors[p].dtype == torch.int64 for p in pooling)


def tensors_by_path(obj, path='model', found=None):
    found = {} if found is None else found
    if isinstance(obj, torch.Tensor):
        found[path] = obj
    elif isinstance(obj, t7.TorchObject):
        for k, v in obj.fields.items():
            tensors_by_path(v, f'{path}.{k}', found)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            tensors_by_path(v, f'{path}[{i}]', found)
    return found


def test_model_modules_share_parameters(models):
    model = t7.load(models['alexnet-lcnn.cuda'])
    psc = model.modules[0].modules[0]
    assert psc.typename == 'cudnn.PooledSpatialConvolution'
    assert psc.weight is psc.poolconv.weight and psc.bias is psc.alignconv.bias
    assert psc.m.modules == [psc.poolconv, psc.alignconv]
    assert psc.m.modules[0] is psc.poolconv
    bn = model.modules[0].modules[1]
    assert bn.typename == 'nn.SpatialBatchNormalization' and bn.version == 2 and bn.eps == 0.001


def test_resnet_keeps_its_lr_regime_function(models):
    model = t7.load(models['resnet8-lcnn'])
    assert isinstance(model.LRregime, t7.LuaFunction) and model.LRregime.dumped.startswith(b'\x1bLJ')


def test_torch_object_field_access():
    obj = t7.TorchObject('nn.Foo', {'a': 1})
    assert obj.a == 1 and obj['a'] == 1 and 'a' in obj
    obj.b = 2
    assert obj.fields == {'a': 1, 'b': 2}
    with pytest.raises(AttributeError, match="nn.Foo object has no field 'c'"):
        obj.c


def table(index, entries):
    """Hand-made binary t7 bytes of a table: entries are (key bytes, value bytes)."""
    out = struct.pack('<iii', 3, index, len(entries))
    return out + b''.join(k + v for k, v in entries)


def number(x):
    return struct.pack('<id', 1, x)


def reference(index):
    return struct.pack('<ii', 3, index)


def test_list_like_table_referenced_while_read_becomes_the_same_list():
    # {1, {x = <the outer table>}, <the outer table>}: the inner references point at the list, not a stale dict.
    data = table(1, [(number(1), number(7)),
                     (number(2), table(2, [(struct.pack('<ii', 2, 1) + b'x', reference(1))])),
                     (number(3), reference(1))])
    outer = t7.load(data)
    assert isinstance(outer, list) and outer[0] == 7
    assert outer[1]['x'] is outer and outer[2] is outer


def test_bool_and_number_keys_that_python_cannot_separate_raise():
    data = table(1, [(struct.pack('<ii', 5, 1), number(1)), (number(1), number(2))])
    with pytest.raises(t7.T7Error, match=r'keys True and 1 \(at byte 32\)'):
        t7.load(data)


def test_tds_containers_are_read_with_torchfiles_readers():
    def tds(index, name, size, body):
        return struct.pack('<iii', 4, index, 3) + b'V 1' + struct.pack('<i', len(name)) + name + \
            struct.pack('<i', size) + struct.pack('<i', 0) + body

    vec = tds(1, b'tds.Vec', 2, number(4) + struct.pack('<ii', 2, 1) + b'x')
    assert t7.load(vec) == [4, 'x']
    hashed = tds(1, b'tds.Hash', 1, struct.pack('<ii', 2, 1) + b'k' + number(2.5))
    assert t7.load(hashed) == {'k': 2.5}


def test_unknown_torch_class_with_custom_serializer_raises():
    data = struct.pack('<iii', 4, 1, 3) + b'V 1' + struct.pack('<i', 15) + b'torch.Generator' + number(5)
    with pytest.raises(t7.T7Error, match=r'torch.Generator at byte 0 is not stored as a table of fields'):
        t7.load(data)


def test_tensor_outside_its_storage_raises():
    header = struct.pack('<iii', 4, 1, 3) + b'V 1' + struct.pack('<i', 17) + b'torch.FloatTensor'
    geometry = struct.pack('<i3q', 1, 4, 1, 1)
    storage = struct.pack('<iii', 4, 2, 3) + b'V 1' + struct.pack('<i', 18) + b'torch.FloatStorage'
    data = header + geometry + storage + struct.pack('<q3f', 3, 1, 2, 3)
    with pytest.raises(t7.T7Error, match='reaches element 4 of a storage of 3'):
        t7.load(data)


@pytest.mark.parametrize('kind, dtype', [
    ('Byte', torch.uint8), ('Char', torch.int8), ('Short', torch.int16), ('Int', torch.int32),
    ('Long', torch.int64), ('Float', torch.float32), ('Double', torch.float64), ('Half', torch.float16),
    ('CudaByte', torch.uint8), ('CudaChar', torch.int8), ('CudaShort', torch.int16), ('CudaInt', torch.int32),
    ('CudaLong', torch.int64), ('Cuda', torch.float32), ('CudaDouble', torch.float64), ('CudaHalf', torch.float16),
])
def test_every_tensor_and_storage_class(kind, dtype):
    values = torch.tensor([[1, 2], [3, 5]], dtype=dtype)

    def header(index, name):
        name = name.encode()
        return struct.pack('<iii', 4, index, 3) + b'V 1' + struct.pack('<i', len(name)) + name

    storage = header(2, f'torch.{kind}Storage') + struct.pack('<q', 4) + values.numpy().tobytes()
    tensor = header(1, f'torch.{kind}Tensor') + struct.pack('<i5q', 2, 2, 2, 1, 2, 1) + storage
    loaded = t7.load(table(3, [(number(1), tensor), (number(2), reference(2))]))
    assert loaded[0].dtype == dtype and torch.equal(loaded[0], values.t())
    assert loaded[1].typename == f'torch.{kind}Storage' and loaded[1].data.dtype == dtype


def test_bad_mode_and_source_raise_one_clear_error(tmp_path):
    with pytest.raises(t7.T7Error, match="mode must be 'binary', 'ascii' or None"):
        t7.load(b'0000', mode='b64')
    with pytest.raises(t7.T7Error, match='expects a path, bytes or a binary file object, not int'):
        t7.load(3)
    with pytest.raises(t7.T7Error, match='cannot open t7 file .*missing.t7: No such file'):
        t7.load(tmp_path / 'missing.t7')
    with pytest.raises(t7.T7Error, match='empty'):
        t7.load(b'')


def string(text):
    return struct.pack('<ii', 2, len(text)) + text.encode()


def test_tables_used_as_keys_keep_lua_identity():
    # {[t] = t, x = t, [{}] = 'other'} with t = {y = 1}: the key stands for the very table read as the values.
    t = table(2, [(string('y'), number(1))])
    data = table(1, [(t, reference(2)), (string('x'), reference(2)), (table(3, []), string('other'))])
    outer = t7.load(data)
    inner = outer['x']
    assert inner == {'y': 1}
    assert outer[t7.TableKey(inner)] is inner
    keys = [k for k in outer if isinstance(k, t7.TableKey)]
    assert len(keys) == 2 and keys[0].table is inner and keys[1].table == {}
    assert outer[keys[1]] == 'other' and t7.TableKey({}) not in outer


def test_a_table_that_is_its_own_key_and_value():
    value = t7.load(table(1, [(reference(1), reference(1))]))
    assert value[t7.TableKey(value)] is value and len(value) == 1
    buffer = io.BytesIO()
    t7.save(buffer, value)
    assert buffer.getvalue() == table(1, [(reference(1), reference(1))])
    again = t7.load(buffer.getvalue())
    assert again[t7.TableKey(again)] is again


def test_list_like_table_used_as_a_key_before_it_is_complete():
    # a = {{[a] = true}}: the key taken while `a` was still being read stands for the list `a` became.
    data = table(1, [(number(1), table(2, [(reference(1), struct.pack('<ii', 5, 1))]))])
    outer = t7.load(data)
    assert isinstance(outer, list)
    (key,) = outer[0]
    assert key.table is outer and outer[0][t7.TableKey(outer)] is True


def torchfile_mismatch(ours, theirs, pairs, where):
    """Where a value we read differs from torchfile's reading of it, or None. One Lua object must be one Python
    object in both readings (pairs maps ids both ways). Returns rather than asserts so that a failure does not
    print the arguments of hundreds of recursive frames."""
    if isinstance(ours, t7.TableKey):
        ours = ours.table
    if isinstance(ours, (dict, list, t7.TorchObject, t7.Storage, t7.LuaFunction, torch.Tensor)):
        mine, other = pairs.get(('ours', id(ours))), pairs.get(('theirs', id(theirs)))
        if mine is not None or other is not None:
            return None if mine is theirs and other is ours else f'{where}: one Lua object read as two, or two as one'
        pairs['ours', id(ours)], pairs['theirs', id(theirs)] = theirs, ours
    if isinstance(ours, t7.TorchObject):
        if not (isinstance(theirs, torchfile.TorchObject) and theirs.torch_typename().decode() == ours.typename):
            return f'{where}: not a {ours.typename}'
        return torchfile_table_mismatch(ours.fields, theirs._obj, pairs, f'{where}<{ours.typename}>')
    if isinstance(ours, (dict, list)):
        if not isinstance(theirs, torchfile.hashable_uniq_dict):
            return f'{where}: not a table'
        return torchfile_table_mismatch(ours if isinstance(ours, dict) else dict(enumerate(ours, 1)), theirs, pairs,
                                        where)
    if isinstance(ours, (torch.Tensor, t7.Storage)):
        data = ours.data if isinstance(ours, t7.Storage) else ours
        theirs = torch.from_numpy(np.array(theirs)) if isinstance(theirs, np.ndarray) else None
        same = (theirs is not None and theirs.numel() == data.numel() and theirs.dtype == data.dtype
                and t7.equal(theirs.reshape(-1), data.reshape(-1)))
        return None if same else f'{where}: different tensor'
    if isinstance(ours, t7.LuaFunction):
        if theirs.dumped != ours.dumped:
            return f'{where}: different bytecode'
        return torchfile_mismatch(ours.upvalues, theirs.upvalues, pairs, f'{where}.<upvalues>')
    if isinstance(ours, str):
        return None if theirs == ours.encode() else f'{where}: {ours!r}'
    return None if type(theirs) in (type(ours), int, float) and theirs == ours else f'{where}: {ours!r}'


def torchfile_table_mismatch(ours, theirs, pairs, where):
    if len(ours) != len(theirs):
        return f'{where}: {len(ours)} entries, torchfile has {len(theirs)}'
    for k, v in ours.items():
        if not isinstance(k, (t7.TableKey, t7.TorchObject)):
            key = k.encode() if isinstance(k, str) else k
            problem = (torchfile_mismatch(v, theirs[key], pairs, f'{where}.{k}') if key in theirs
                       else f'{where}: no key {k!r}')
            if problem:
                return problem
    # Table keys come in file order in both readings.
    objects = [(k, v) for k, v in ours.items() if isinstance(k, (t7.TableKey, t7.TorchObject))]
    their_objects = [(k, v) for k, v in theirs.items() if isinstance(k, (dict, torchfile.TorchObject))]
    if len(objects) != len(their_objects):
        return f'{where}: {len(objects)} table keys, torchfile has {len(their_objects)}'
    for (k, v), (tk, tv) in zip(objects, their_objects):
        problem = (torchfile_mismatch(k, tk, pairs, f'{where}[key]')
                   or torchfile_mismatch(v, tv, pairs, f'{where}[{type(k).__name__}]'))
        if problem:
            return problem
    return None


@pytest.mark.parametrize('name', ['nn_zoo/gModule_2in_1out.module.t7', 'nn_zoo/gModule_lstm_split.module.t7',
                                  'nn_zoo/gModule_lstm_narrow.module.t7', 'nn_zoo/gModule_shared_2out.module.t7',
                                  'nn_zoo/gModule_unet.module.t7', 'serialization_zoo.t7'])
def test_values_equal_torchfiles(name):
    """nngraph files use tables as keys everywhere (mapindex, reverseMap, graph nodes and edges); torchfile reads
    them when it keeps every table a dict (its list heuristic compares tensors with == and fails)."""
    with open(FIXTURES / name, 'rb') as f:
        theirs = torchfile.T7Reader(f, use_list_heuristic=False).read_obj()
    assert torchfile_mismatch(t7.load(FIXTURES / name), theirs, {}, 'root') is None


def test_nngraph_file_keeps_node_identity():
    g = t7.load(FIXTURES / 'nn_zoo' / 'gModule_shared_2out.module.t7')
    for node in g.forwardnodes:
        data = node.data
        for i in range(1, 1 + sum(type(k) is int for k in data['mapindex'])):
            source = data['mapindex'][i]
            assert data['mapindex'][t7.TableKey(source)] == i
            assert any(n.data is source for n in g.forwardnodes)
        for consumer in data['reverseMap']:
            assert consumer.typename == 'nngraph.Node' and any(consumer is n for n in g.backwardnodes)
    assert g.outnode is g.backwardnodes[0] and g.innode is g.forwardnodes[0]


def torch_object(index, typename, version, body):
    name = typename.encode()
    return (struct.pack('<iii', 4, index, len(version)) + version.encode() + struct.pack('<i', len(name)) + name
            + body)


def test_data_parallel_table_reads_its_gpu_assignments_first(tmp_path):
    # cunn's DataParallelTable:__write (version 2): the gpuAssignments table, then the table of all fields.
    identity = torch_object(5, 'nn.Identity', 'V 1', table(6, []))
    gpus = table(2, [(number(1), number(1)), (number(2), number(2))])
    fields = table(3, [(string('dimension'), number(1)), (string('gpuAssignments'), reference(2)),
                       (string('modules'), table(4, [(number(1), identity)]))])
    dpt = t7.load(torch_object(1, 'nn.DataParallelTable', 'V 2', gpus + fields))
    assert dpt.gpuAssignments == [1, 2] and dpt.dimension == 1 and dpt.modules[0].typename == 'nn.Identity'
    # Inside a container the objects after it are read from the right place.
    after = t7.load(table(9, [(number(1), torch_object(1, 'nn.DataParallelTable', 'V 2', gpus + fields)),
                              (number(2), string('next'))]))
    assert after[1] == 'next' and after[0].modules[0].typename == 'nn.Identity'
    # Before version 2 it wrote its fields alone.
    old = t7.load(torch_object(1, 'nn.DataParallelTable', 'V 1', table(3, [(string('dimension'), number(2))])))
    assert old.fields == {'dimension': 2}
    t7.save(tmp_path / 'dpt.t7', dpt)
    assert (tmp_path / 'dpt.t7').read_bytes().startswith(struct.pack('<iii', 4, 1, 3) + b'V 2')
    again = t7.load(tmp_path / 'dpt.t7')
    assert again.gpuAssignments == [1, 2] and again.modules[0].typename == 'nn.Identity'
