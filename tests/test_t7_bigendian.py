"""t7 files written on a big-endian machine (Torch7 on PowerPC, SPARC or s390x writes every number in the machine's
byte order, THDiskFile's native encoding): t7.load tells them by their first bytes and reads them as
`DiskFile:bigEndianEncoding()` does, and t7.save(..., byteorder='big') writes them."""
import io
import lzma
import pathlib
import struct

import pytest
import torch

import t7
from tests.test_t7_longsize import FILES, TOO_BIG_FOR_FOUR_BYTES, resaved_lua_model

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def string(s):
    return struct.pack('>i', len(s)) + s.encode()


def torch_header(index, class_name):
    return struct.pack('>ii', 4, index) + string('V 1') + string(class_name)


@pytest.mark.parametrize('long_code', ['q', 'i'], ids=['eight-byte longs', 'four-byte longs'])
def test_hand_written_big_endian_file(long_code):
    # {t = a 2x3 FloatTensor viewing its storage transposed, s = LongStorage{3, -224, 2^31 - 1},
    #  h = HalfStorage{1.5, -2}, x = 0.1, ok = true}, byte by byte as torch.save writes it on a big-endian machine.
    longs = lambda *v: struct.pack(f'>{len(v)}{long_code}', *v)  # noqa: E731
    tensor = (torch_header(2, 'torch.FloatTensor') + struct.pack('>i', 2) + longs(2, 3) + longs(1, 2) + longs(1)
              + torch_header(3, 'torch.FloatStorage') + longs(6) + struct.pack('>6f', 0, 1, 2, 3, 4, 5))
    storage = torch_header(4, 'torch.LongStorage') + longs(3) + longs(3, -224, 2 ** 31 - 1)
    half = torch_header(5, 'torch.HalfStorage') + longs(2) + struct.pack('>2e', 1.5, -2)
    data = (struct.pack('>iii', 3, 1, 5) + struct.pack('>i', 2) + string('t') + tensor
            + struct.pack('>i', 2) + string('s') + storage + struct.pack('>i', 2) + string('h') + half
            + struct.pack('>i', 2) + string('x') + struct.pack('>id', 1, 0.1)
            + struct.pack('>i', 2) + string('ok') + struct.pack('>ii', 5, 1))
    value = t7.load(data)
    assert value['t'].tolist() == [[0, 2, 4], [1, 3, 5]] and value['t'].stride() == (1, 2)
    assert value['s'].data.dtype == torch.int64 and value['s'].data.tolist() == [3, -224, 2 ** 31 - 1]
    assert value['h'].data.dtype == torch.float16 and value['h'].data.tolist() == [1.5, -2]
    assert value['x'] == 0.1 and value['ok'] is True
    written = io.BytesIO()
    t7.save(written, value, long_size=8 if long_code == 'q' else 4, byteorder='big')
    assert written.getvalue() == data


@pytest.mark.parametrize('path', FILES, ids=lambda p: p.name)
def test_real_files_read_back_big_endian(path):
    value = t7.load(path)
    for long_size in (8, 4):
        if long_size == 4 and path.name in TOO_BIG_FOR_FOUR_BYTES:
            continue
        little, big = io.BytesIO(), io.BytesIO()
        t7.save(little, value, long_size=long_size)
        t7.save(big, value, long_size=long_size, byteorder='big')
        assert len(big.getvalue()) == len(little.getvalue())
        assert big.getvalue() != little.getvalue() or len(little.getvalue()) < 8
        assert t7.equal(t7.load(big.getvalue()), value)


@pytest.mark.parametrize('name', ['alexnet-lcnn', 'resnet8-lcnn.cuda'])
def test_lua_model_written_big_endian_builds_the_same_network(name, tmp_path):
    original, big = resaved_lua_model(name, tmp_path, byteorder='big')
    assert big.read_bytes()[:4] == b'\x00\x00\x00\x04' and original.read_bytes()[:4] == b'\x04\x00\x00\x00'


@pytest.mark.parametrize('long_size, how', [(8, 'big-endian'), (4, 'big-endian with 4-byte longs')])
def test_damaged_big_endian_file_says_how_it_was_read(long_size, how):
    written = io.BytesIO()
    t7.save(written, t7.load(lzma.decompress((FIXTURES / 'resnet8-lcnn.t7.xz').read_bytes())),
            long_size=long_size, byteorder='big')
    with pytest.raises(t7.T7Error, match=rf'^truncated t7 file: .* at byte \d+, only \d+ left \(read as {how}, as '
                                         r'Torch7 writes on big-endian machines such as PowerPC: its first number is '
                                         r'a type code in that order\)$'):
        t7.load(written.getvalue()[:-100])


def test_little_endian_files_are_not_taken_for_big_endian():
    # A file holding nil starts with four zero bytes, the same in both orders; a number or a table starts with a
    # small type code in its first byte.
    for value in (None, 2.5, {'a': 1}, [torch.arange(3)]):
        f = io.BytesIO()
        t7.save(f, value)
        assert t7.equal(t7.load(f.getvalue()), value)
    with pytest.raises(t7.T7Error, match=r"^t7.save byteorder must be 'little' or 'big', not 'native'$"):
        t7.save(io.BytesIO(), {}, byteorder='native')
