"""t7 files with 4-byte longs (Torch7 on Windows or a 32-bit system, or `DiskFile:longSize(4)`): t7.load reads them
as File.lua's readObject does there, and t7.save(..., long_size=4) writes them."""
import io
import lzma
import pathlib
import struct

import pytest
import torch

import t7

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
FILES = sorted((FIXTURES / 'nn_zoo').glob('*.t7')) + sorted(FIXTURES.glob('*.t7'))
# Fields that hold more than a 4-byte long can: Lua's uninitialised LongStorage in nn.Reshape's batchsize, and
# serialization_zoo's +-2^40 entries.
TOO_BIG_FOR_FOUR_BYTES = {'Reshape_batchMode_false.module.t7', 'Reshape_nonbatch.module.t7',
                          'old_SpatialConvolutionMM_model.module.t7', 'serialization_zoo.t7',
                          'serialization_zoo.ascii.t7'}


def string(s):
    return struct.pack('<i', len(s)) + s.encode()


def torch_header(index, class_name):
    return struct.pack('<ii', 4, index) + string('V 1') + string(class_name)


def test_hand_written_file_with_four_byte_longs():
    # {t = a 2x3 FloatTensor viewing its storage transposed, s = LongStorage{3, -224, 2^31 - 1}}, byte by byte as
    # torch.save writes it when longs take 4 bytes.
    tensor = (torch_header(2, 'torch.FloatTensor') + struct.pack('<i2i2ii', 2, 2, 3, 1, 2, 1)
              + torch_header(3, 'torch.FloatStorage') + struct.pack('<i6f', 6, 0, 1, 2, 3, 4, 5))
    storage = torch_header(4, 'torch.LongStorage') + struct.pack('<i3i', 3, 3, -224, 2 ** 31 - 1)
    data = struct.pack('<iii', 3, 1, 2) + struct.pack('<i', 2) + string('t') + tensor \
        + struct.pack('<i', 2) + string('s') + storage
    value = t7.load(data)
    assert value['t'].tolist() == [[0, 2, 4], [1, 3, 5]] and value['t'].stride() == (1, 2)
    assert value['s'].typename == 'torch.LongStorage'
    assert value['s'].data.dtype == torch.int64 and value['s'].data.tolist() == [3, -224, 2 ** 31 - 1]
    written = io.BytesIO()
    t7.save(written, value, long_size=4)
    assert t7.equal(t7.load(written.getvalue()), value)


@pytest.mark.parametrize('path', FILES, ids=lambda p: p.name)
def test_real_files_read_back_with_four_byte_longs(path):
    value = t7.load(path)
    written = io.BytesIO()
    if path.name in TOO_BIG_FOR_FOUR_BYTES:
        with pytest.raises(t7.T7Error, match=r'^cannot write root\S* with 4-byte longs: -?\d+ does not fit in one$'):
            t7.save(written, value, long_size=4)
        return
    t7.save(written, value, long_size=4)
    eight = io.BytesIO()
    t7.save(eight, value)
    assert len(written.getvalue()) <= len(eight.getvalue())
    assert t7.equal(t7.load(written.getvalue()), value)


def resaved_lua_model(name, tmp_path, **encoding):
    """The fixture model `name` and its copy saved with t7.save(..., **encoding), after checking that both build
    the same network."""
    original = tmp_path / f'{name}.t7'
    original.write_bytes(lzma.decompress((FIXTURES / f'{name}.t7.xz').read_bytes()))
    copy = tmp_path / f'{name}.copy.t7'
    t7.save(copy, t7.load(original), **encoding)
    want, got = t7.load_model(original).state_dict(), t7.load_model(copy).state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    return original, copy


@pytest.mark.parametrize('name', ['alexnet-lcnn', 'resnet8-lcnn.cuda'])
def test_lua_model_with_four_byte_longs_builds_the_same_network(name, tmp_path):
    original, four = resaved_lua_model(name, tmp_path, long_size=4)
    assert four.stat().st_size < original.stat().st_size


def test_damaged_file_keeps_the_eight_byte_error():
    # Read with 4-byte longs, this storage declares 0 elements and stops 20 bytes before the end: not taken.
    storage = torch_header(1, 'torch.FloatStorage')
    with pytest.raises(t7.T7Error, match=r'^corrupt t7 file: torch.FloatStorage at byte 0 declares 1099511627776 '):
        t7.load(storage + struct.pack('<q', 2 ** 40) + bytes(16))
    truncated = lzma.decompress((FIXTURES / 'resnet8-lcnn.t7.xz').read_bytes())[:-100]
    with pytest.raises(t7.T7Error, match=r'^truncated t7 file: .* at byte \d+, only \d+ left$'):
        t7.load(truncated)


def test_damaged_four_byte_file_names_the_damage():
    four = io.BytesIO()
    t7.save(four, t7.load(lzma.decompress((FIXTURES / 'resnet8-lcnn.t7.xz').read_bytes())), long_size=4)
    with pytest.raises(t7.T7Error, match=r'^truncated t7 file: .* at byte \d+, only \d+ left \(read with 4-byte '
                                         r'longs, as Torch7 writes them on Windows and 32-bit systems\)$'):
        t7.load(four.getvalue()[:-100])


def test_four_byte_longs_refuse_values_they_cannot_hold():
    with pytest.raises(t7.T7Error, match=r'^cannot write root with 4-byte longs: 2147483648 does not fit in one$'):
        t7.save(io.BytesIO(), torch.tensor([1, 2 ** 31]), long_size=4)
    with pytest.raises(t7.T7Error, match=r'^t7.save long_size must be 4 or 8, not 2$'):
        t7.save(io.BytesIO(), {}, long_size=2)
    assert t7.load(_saved(torch.tensor([-2 ** 31, 2 ** 31 - 1]), 4)).tolist() == [-2 ** 31, 2 ** 31 - 1]


def _saved(value, long_size):
    f = io.BytesIO()
    t7.save(f, value, long_size=long_size)
    return f.getvalue()
