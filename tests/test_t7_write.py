"""Tests for t7/write.py: files Lua Torch7's torch.load reads (File.lua writeObject layout), and round trips."""
import io
import lzma
import math
import pathlib
import struct

import numpy as np
import pytest
import torch

import t7

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def saved(obj):
    buffer = io.BytesIO()
    t7.save(buffer, obj)
    return buffer.getvalue()


def round_trip(obj):
    return t7.load(saved(obj))


@pytest.mark.parametrize('name', ['serialization_zoo.t7', 'optimState_sgd2.t7', 'optimState_sgd2.params.t7',
                                  'imagenet_trainCache.t7', 'imagenet_testCache.t7', 'alexnet-lcnn.output.t7',
                                  'alexnet-lcnn.t7.xz', 'resnet8-lcnn.t7.xz'])
def test_rewriting_a_lua_written_file_reproduces_it_byte_for_byte(name):
    raw = (FIXTURES / name).read_bytes()
    if name.endswith('.xz'):
        raw = lzma.decompress(raw)
    assert saved(t7.load(raw)) == raw


@pytest.mark.parametrize('name', ['optimState_sgd2.cuda.t7', 'alexnet-lcnn.cuda.t7.xz', 'resnet8-lcnn.cuda.t7.xz'])
def test_gpu_saved_files_are_written_back_as_cpu_types(name):
    raw = (FIXTURES / name).read_bytes()
    if name.endswith('.xz'):
        raw = lzma.decompress(raw)
    value = t7.load(raw)
    data = saved(value)
    assert b'\x10\x00\x00\x00torch.CudaTensor' in raw and b'torch.CudaStorage' in raw
    assert b'torch.CudaStorage' not in data and b'torch.CudaLong' not in data
    again = t7.load(data)
    assert t7.equal(again, value)


def test_layout_matches_file_lua():
    # {1.5, x=true} as File.lua writes it: a table (type 3, index 1, 2 entries), then key/value objects.
    expected = (struct.pack('<iii', 3, 1, 2)
                + struct.pack('<id', 1, 1.0) + struct.pack('<id', 1, 1.5)
                + struct.pack('<ii', 2, 1) + b'x' + struct.pack('<ii', 5, 1))
    assert saved({1: 1.5, 'x': True}) == expected
    # A tensor: class header, dims, sizes, strides, 1-based offset, then its storage object with its own index.
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3)[:, 1:]
    expected = (struct.pack('<iii', 4, 1, 3) + b'V 1' + struct.pack('<i', 15) + b'torch.IntTensor'
                + struct.pack('<i', 2) + struct.pack('<2q', 2, 2) + struct.pack('<2q', 3, 1) + struct.pack('<q', 2)
                + struct.pack('<iii', 4, 2, 3) + b'V 1' + struct.pack('<i', 16) + b'torch.IntStorage'
                + struct.pack('<q', 6) + struct.pack('<6i', *range(6)))
    assert saved(t) == expected


def test_every_dtype_round_trips():
    for dtype in [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float64,
                  torch.float16]:
        t = (torch.arange(-5, 7) * 3).to(dtype).reshape(3, 4)
        back = round_trip(t)
        assert back.dtype == dtype and torch.equal(back, t), dtype
    special = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 1e-45], dtype=torch.float32)
    back = round_trip(special)
    assert torch.equal(back.isnan(), special.isnan()) and back[1:].tolist() == special[1:].tolist()
    assert math.copysign(1, back[3]) == -1


def test_views_keep_sharing_one_storage():
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    views = {'base': base, 't': base.t(), 'narrow': base[1:3, 2:5], 'again': base, 'expanded': base[0].expand(3, 6)}
    back = round_trip(views)
    assert back['again'] is back['base']
    for key, view in views.items():
        assert torch.equal(back[key], view), key
        assert back[key].stride() == view.stride() and back[key].storage_offset() == view.storage_offset(), key
        assert back[key].untyped_storage().data_ptr() == back['base'].untyped_storage().data_ptr(), key


def test_storage_objects_share_with_tensors_over_them():
    storage = t7.Storage('torch.FloatStorage', torch.arange(5, dtype=torch.float32))
    view = torch.as_strided(storage.data, (2,), (2,), 1)
    back = round_trip([storage, view, t7.Storage('torch.LongStorage', torch.arange(4)[::2])])
    assert isinstance(back[0], t7.Storage) and back[0].typename == 'torch.FloatStorage'
    assert back[0].data.tolist() == [0, 1, 2, 3, 4] and back[1].tolist() == [1, 3]
    assert back[1].untyped_storage().data_ptr() == back[0].data.untyped_storage().data_ptr()
    assert back[2].typename == 'torch.LongStorage' and back[2].data.tolist() == [0, 2]


def test_odd_tensors():
    assert round_trip(torch.empty(0, 3)).numel() == 0
    scalar = round_trip(torch.tensor(2.5))
    assert scalar.shape == (1,) and scalar.item() == 2.5
    param = torch.nn.Parameter(torch.ones(2, 2))
    assert torch.equal(round_trip(param), torch.ones(2, 2))
    assert torch.equal(round_trip(np.arange(4, dtype=np.int16)), torch.arange(4, dtype=torch.int16))


def test_python_values_round_trip():
    value = {
        'int': 3, 'neg': -2 ** 53, 'float': 0.1, 'inf': math.inf, 'str': 'héllo', 'bytes': b'\x00\xff',
        'list': [1, 'two', [3.5, None], {}], 'tuple': (1, 2), 'bool': False, 'np': np.float32(1.5),
        'keys': {1: 'a', 2.5: 'b', False: 'c', -1: 'd', 'k': 'e'},
    }
    back = round_trip(value)
    assert back['tuple'] == [1, 2] and back['np'] == 1.5
    del value['tuple'], value['np'], back['tuple'], back['np']
    assert back == value
    assert type(back['bytes']) is bytes and type(back['int']) is int


def test_cycles_and_shared_references():
    shared = {'w': torch.ones(2)}
    lst = [1]
    lst.append(lst)
    obj = t7.TorchObject('nn.Sequential', {'modules': [], 'train': False})
    obj.modules.append(obj)
    top = {'a': shared, 'b': shared, 'lst': lst, 'obj': obj}
    top['self'] = top
    back = round_trip(top)
    assert back['self'] is back and back['a'] is back['b']
    assert back['lst'][1] is back['lst']
    assert back['obj'].modules[0] is back['obj']
    assert t7.equal(back, top)


def test_functions_keep_their_object_type():
    recursive = t7.LuaFunction(b'\x1bLJ code', None)
    recursive.upvalues = [{'name': 'self', 'id': 1, 'value': recursive}]
    plain = t7.LuaFunction(b'\x1bLJ plain', {}, typeidx=6)
    legacy = t7.LuaFunction(b'\x1bLJ legacy', [5], typeidx=7)
    back = round_trip([recursive, plain, legacy, recursive])
    assert back[3] is back[0] and back[0].upvalues[0]['value'] is back[0]
    assert [f.typeidx for f in back[:3]] == [8, 6, 7]
    assert back[1].dumped == b'\x1bLJ plain' and back[2].upvalues == [5]


def test_torch_objects_keep_class_and_version():
    obj = t7.TorchObject('nn.SpatialBatchNormalization', {'eps': 1e-3}, version=2)
    data = saved(obj)
    assert b'V 2' in data and b'nn.SpatialBatchNormalization' in data
    back = t7.load(data)
    assert back.typename == 'nn.SpatialBatchNormalization' and back.version == 2 and back.eps == 1e-3


@pytest.mark.parametrize('value, message', [
    ({'a': [1, {2}]}, r'cannot write root.a\[2\]: a set has no Torch7 equivalent'),
    ({'t': torch.ones(2, dtype=torch.bool)}, r'cannot write root.t: Torch7 has no tensor type for torch.bool'),
    ([2 ** 60 + 1], r'integer 1152921504606846977 is not exact as a Lua number'),
    ({math.nan: 1}, r'table key nan is not a valid Lua table key'),
    ({(1, 2): 1}, r'table key \(1, 2\) is not a valid Lua table key'),
    (torch.ones(2).to_sparse(), r'a torch.sparse_coo tensor'),
])
def test_unwritable_values_raise_one_error_naming_the_place(value, message):
    with pytest.raises(t7.T7Error, match=message):
        saved(value)


def test_save_to_path_is_atomic(tmp_path):
    path = tmp_path / 'state.t7'
    t7.save(path, {'x': torch.ones(3)})
    assert torch.equal(t7.load(path)['x'], torch.ones(3))
    with pytest.raises(t7.T7Error, match='a set'):
        t7.save(path, {'x': {1}})
    assert torch.equal(t7.load(str(path))['x'], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['state.t7']
    with pytest.raises(t7.T7Error, match='cannot write t7 file .*no_dir.*No such file'):
        t7.save(tmp_path / 'no_dir' / 'x.t7', 1)


def test_tables_used_as_keys_are_written_as_the_same_lua_table():
    node = {'module': 'linear'}
    other = [1, 2]
    value = {'node': node, t7.TableKey(node): 1, t7.TableKey(other): other}
    back = round_trip(value)
    assert back[t7.TableKey(back['node'])] == 1
    (key,) = [k for k in back if isinstance(k, t7.TableKey) and k.table is not back['node']]
    assert key.table == [1, 2] and back[key] is key.table
    assert t7.equal(back, value)
    # The key and the value are one Lua object: the table is written once, then referenced.
    assert saved(value).count(b'linear') == 1
