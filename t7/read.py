"""Port of torch7's File.lua readObject with the Tensor/Storage readers of generic/Tensor.c and generic/Storage.c."""

import ctypes
import io
import math
import os
import re
import struct
import sys

import torch
import torchfile

from errors import UserError


class T7Error(UserError):
    """A Torch7 file that cannot be read or a value that cannot be written (a UserError: main.py prints it)."""


# Torch7 class name -> dtype. CPU and cutorch types alike: tensors are loaded on the CPU.
TENSOR_DTYPES = {
    'torch.ByteTensor': torch.uint8, 'torch.CharTensor': torch.int8, 'torch.ShortTensor': torch.int16,
    'torch.IntTensor': torch.int32, 'torch.LongTensor': torch.int64, 'torch.FloatTensor': torch.float32,
    'torch.DoubleTensor': torch.float64, 'torch.HalfTensor': torch.float16,
    'torch.CudaByteTensor': torch.uint8, 'torch.CudaCharTensor': torch.int8,
    'torch.CudaShortTensor': torch.int16, 'torch.CudaIntTensor': torch.int32,
    'torch.CudaLongTensor': torch.int64, 'torch.CudaTensor': torch.float32,
    'torch.CudaDoubleTensor': torch.float64, 'torch.CudaHalfTensor': torch.float16,
}
STORAGE_DTYPES = {name[:-len('Tensor')] + 'Storage': dtype for name, dtype in TENSOR_DTYPES.items()}

# Classes whose __write puts one object before the table of all fields (from the version given on), read into the
# field named here: cunn's DataParallelTable writes its gpuAssignments first, to pick the GPUs before the replicas
# are read; nn.GPU (which has no version) its {_type, device}, to read its fields on that device.
WRITTEN_BEFORE_FIELDS = {'nn.DataParallelTable': ('gpuAssignments', 2), 'nn.GPU': ('gpuHeader', 0)}

# Every Lua-written file interleaves objects with at least this many bytes, which bounds counts before allocating.
_MIN_OBJECT_BYTES = 4
_MAX_DEPTH = 2000
_MAX_TENSOR_DIMS = 64


class TorchObject:
    """An instance of a Torch7 class without its own serializer (nn modules, dataLoader, ...).

    Fields are reachable as `obj.fields[name]`, `obj[name]` or `obj.name`; assigning `obj.name = v` sets a field.
    """

    __slots__ = ('typename', 'fields', 'version')

    def __init__(self, typename, fields=None, version=1):
        object.__setattr__(self, 'typename', typename)
        object.__setattr__(self, 'fields', {} if fields is None else fields)
        object.__setattr__(self, 'version', version)

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, 'fields')[name]
        except KeyError:
            raise AttributeError(f'{self.typename} object has no field {name!r}') from None

    def __setattr__(self, name, value):
        if name in TorchObject.__slots__:
            object.__setattr__(self, name, value)
        else:
            self.fields[name] = value

    def __getitem__(self, name):
        return self.fields[name]

    def __setitem__(self, name, value):
        self.fields[name] = value

    def __contains__(self, name):
        return name in self.fields

    def __repr__(self):
        return f'TorchObject({self.typename}, fields={sorted(map(str, self.fields))})'


class Storage:
    """A Torch7 storage: `data` is a 1-D CPU tensor owning the elements; tensors read from the same file share it."""

    __slots__ = ('typename', 'data')

    def __init__(self, typename, data):
        self.typename = typename
        self.data = data

    def __len__(self):
        return self.data.numel()

    def __eq__(self, other):
        return (isinstance(other, Storage) and self.data.dtype == other.data.dtype
                and self.data.shape == other.data.shape and bool(torch.equal(self.data, other.data)))

    __hash__ = object.__hash__

    def __repr__(self):
        return f'Storage({self.typename}, size={len(self)})'


class LuaFunction:
    """A serialized Lua function, kept as inert bytecode and upvalues; it is never executed.

    `typeidx` is the File.lua object type it was stored with (6 function, 7 legacy recursive, 8 recursive)
    so that writing it back reproduces the same layout.
    """

    __slots__ = ('dumped', 'upvalues', 'typeidx')

    def __init__(self, dumped, upvalues=None, typeidx=torchfile.TYPE_RECUR_FUNCTION):
        self.dumped = dumped
        self.upvalues = {} if upvalues is None else upvalues
        self.typeidx = typeidx

    def __repr__(self):
        return f'LuaFunction({len(self.dumped)} bytes of bytecode)'


class TableKey:
    """A Lua table used as a table key (nngraph's mapindex and reverseMap, any table-keyed Lua table).

    Python dicts cannot be keys, so the key is this stand-in for the table: like Lua, it hashes and compares by the
    identity of `table`, so `t7.TableKey(node_data)` finds the entry keyed by that very table. Reading gives one
    stand-in per table, and writing it writes the table itself (the same Lua object as the table used as a value).
    """

    __slots__ = ('table',)

    def __init__(self, table):
        self.table = table

    def __hash__(self):
        return id(self.table)

    def __eq__(self, other):
        return isinstance(other, TableKey) and other.table is self.table

    def __repr__(self):
        kind = 'list' if isinstance(self.table, list) else 'table'
        return f'TableKey({kind} of {len(self.table)} entries at {id(self.table):#x})'


class _InProgress:
    """Marks an object index whose tensor or storage is still being read."""


_IN_PROGRESS = _InProgress()


def swap_bytes(tensor):
    """Reverses the bytes of every element of a contiguous tensor, in place (THDiskFile_reverseMemory)."""
    size = tensor.element_size()
    raw = tensor.view(-1).view(torch.uint8).view(-1, size)
    raw.copy_(raw.flip(1))


class _BinaryStream:
    """Sequential reads from a file object of known length, with every size checked first.

    long_size: bytes of a Torch7 long (tensor sizes, strides and offsets, storage sizes, LongStorage elements): 8
    where torch.save ran on 64-bit Linux or macOS, 4 on Windows and 32-bit builds (their C long).
    byteorder: 'little', or 'big' for a file written on a big-endian machine (PowerPC, SPARC, s390x), whose every
    number of more than one byte comes byte-reversed (THDiskFile's non-native encoding); strings do not.
    """

    def __init__(self, f, length, long_size=8, byteorder='little'):
        self.f = f
        self.pos = 0
        self.length = length
        self.long_size = long_size
        self.byteorder = byteorder
        self._order = '<' if byteorder == 'little' else '>'
        self._int_struct = struct.Struct(self._order + 'i')
        self._double_struct = struct.Struct(self._order + 'd')

    def remaining(self):
        return self.length - self.pos

    def _need(self, n, what):
        if n > self.length - self.pos:
            raise T7Error(f'truncated t7 file: {what} needs {n} bytes at byte {self.pos}, '
                          f'only {self.length - self.pos} left')

    def raw(self, n, what):
        self._need(n, what)
        data = self.f.read(n)
        if len(data) != n:
            raise T7Error(f'truncated t7 file: {what} needs {n} bytes at byte {self.pos}, got {len(data)}')
        self.pos += n
        return data

    def int(self, what='an int'):
        return self._int_struct.unpack(self.raw(4, what))[0]

    def long(self, what='a long'):
        return self.longs(1, what)[0]

    def double(self, what='a number'):
        return self._double_struct.unpack(self.raw(8, what))[0]

    def longs(self, n, what):
        code = f'{self._order}{n}{"q" if self.long_size == 8 else "i"}'
        return list(struct.unpack(code, self.raw(self.long_size * n, what)))

    def chars(self, n, what):
        return self.raw(n, what)

    def fill(self, tensor, what):
        """Reads the elements of a contiguous tensor straight into its memory."""
        if tensor.dtype == torch.int64 and self.long_size == 4:
            # Torch7 reads 4-byte longs into its C long, sign-extended.
            narrow = torch.empty(tensor.shape, dtype=torch.int32)
            self.fill(narrow, what)
            tensor.copy_(narrow)
            return
        nbytes = tensor.numel() * tensor.element_size()
        self._need(nbytes, what)
        if nbytes:
            # A ctypes view, not .numpy(): numpy sharing would make the tensor's storage non-resizable.
            view = memoryview((ctypes.c_char * nbytes).from_address(tensor.data_ptr())).cast('B')
            got = self.f.readinto(view)
            while got is not None and 0 < got < nbytes:
                more = self.f.readinto(view[got:])
                if not more:
                    break
                got += more
            if got != nbytes:
                raise T7Error(f'truncated t7 file: {what} needs {nbytes} bytes at byte {self.pos}, got {got}')
            if self.byteorder != sys.byteorder and tensor.element_size() > 1:
                swap_bytes(tensor)
        self.pos += nbytes

    def min_bytes(self, kind):
        """Smallest encoding of one element of a storage of this dtype."""
        return self.long_size if kind == torch.int64 else kind.itemsize


class _AsciiStream:
    """Reads Torch7's ascii mode: numbers as whitespace-separated text, chars raw, one newline after each write."""

    _TOKEN = re.compile(rb'[ \t\n\r\v\f]*([^ \t\n\r\v\f]+)')

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.length = len(data)

    def remaining(self):
        return self.length - self.pos

    def _end_of_item(self):
        # Torch's auto-spacing writes one newline after every write call; the reader swallows exactly that one.
        if self.pos < self.length and self.data[self.pos] == 0x0A:
            self.pos += 1

    def _tokens(self, n, what, parse):
        values = []
        for _ in range(n):
            m = self._TOKEN.match(self.data, self.pos)
            if m is None:
                raise T7Error(f'truncated t7 file: {what} expected at byte {self.pos}')
            try:
                values.append(parse(m.group(1)))
            except ValueError:
                raise T7Error(f'corrupt ascii t7 file: {what} expected at byte {m.start(1)}, '
                              f'found {m.group(1)[:20]!r}') from None
            self.pos = m.end()
        if n:
            self._end_of_item()
        return values

    def int(self, what='an int'):
        value = self._tokens(1, what, int)[0]
        if not -2 ** 31 <= value < 2 ** 31:
            raise T7Error(f'corrupt ascii t7 file: {what} {value} out of range before byte {self.pos}')
        return value

    def long(self, what='a long'):
        return self.longs(1, what)[0]

    def double(self, what='a number'):
        return self._tokens(1, what, float)[0]

    def longs(self, n, what):
        values = self._tokens(n, what, int)
        if any(not -2 ** 63 <= v < 2 ** 63 for v in values):
            raise T7Error(f'corrupt ascii t7 file: {what} out of range before byte {self.pos}')
        return values

    def chars(self, n, what):
        if n > self.length - self.pos:
            raise T7Error(f'truncated t7 file: {what} needs {n} bytes at byte {self.pos}, '
                          f'only {self.length - self.pos} left')
        data = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        if n:
            self._end_of_item()
        return data

    def fill(self, tensor, what):
        n = tensor.numel()
        if tensor.element_size() == 1:
            raw = self.chars(n, what)
            if n:
                tensor.copy_(torch.frombuffer(bytearray(raw), dtype=tensor.dtype))
            return
        parse = float if tensor.is_floating_point() else int
        values = self._tokens(n, what, parse)
        try:
            tensor.copy_(torch.tensor(values, dtype=torch.float64 if parse is float else torch.int64))
        except RuntimeError as e:
            raise T7Error(f'corrupt ascii t7 file: {what} before byte {self.pos}: {e}') from None

    def min_bytes(self, kind):
        # A number in ascii takes a digit and a separator, a char its own byte.
        return 1 if kind.itemsize == 1 else 2


class _Reader(torchfile.T7Reader):
    """torchfile's reader with its read loop redone (bounds checks, shared storages, str, Cuda*/Half types, ascii);
    torchfile's own readers still serve the tds.Vec and tds.Hash classes."""

    def __init__(self, stream):
        super().__init__(None, use_list_heuristic=False, use_int_heuristic=True, utf8_decode_strings=True)
        self.s = stream
        self.depth = 0
        self.tables = []              # every container built, for the list fix-up pass
        self.in_progress = set()      # ids of tables whose entries are being read
        self.referenced_early = set() # ids of those tables that were referenced before they were complete
        self.replaced = {}            # id(placeholder dict) -> (that dict, the list that replaced it)
        self.table_keys = {}          # id(table) -> its TableKey, so that a table is one key however often used

    # torchfile's readers for tds.Vec and tds.Hash call back into these two, which go through the checked stream.
    def read_int(self):
        return self.s.int()

    def read_string(self, disable_utf8=False):
        start = self.s.pos
        size = self.s.int('a string length')
        if size < 0:
            raise T7Error(f'corrupt t7 file: negative string length {size} at byte {start}')
        data = self.s.chars(size, 'a string')
        if disable_utf8:
            return data
        try:
            return data.decode('utf-8')
        except UnicodeDecodeError:
            return data

    def read_class_name(self, what):
        start = self.s.pos
        name = self.read_string(disable_utf8=True)
        try:
            return name.decode('ascii')
        except UnicodeDecodeError:
            raise T7Error(f'corrupt t7 file: {what} at byte {start} is not ASCII: {name[:40]!r}') from None

    def read_obj(self):
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise T7Error(f'corrupt t7 file: objects nested deeper than {_MAX_DEPTH} levels at byte {self.s.pos}')
        try:
            return self._read_obj()
        finally:
            self.depth -= 1

    def _read_obj(self):
        start = self.s.pos
        typeidx = self.s.int('an object type')
        if typeidx == torchfile.TYPE_NIL:
            return None
        if typeidx == torchfile.TYPE_NUMBER:
            x = self.s.double()
            if x.is_integer() and abs(x) <= 2 ** 53:
                return int(x)
            return x
        if typeidx == torchfile.TYPE_BOOLEAN:
            return self.s.int('a boolean') == 1
        if typeidx == torchfile.TYPE_STRING:
            return self.read_string()
        if typeidx == torchfile.TYPE_FUNCTION:
            func = LuaFunction(b'', None, typeidx)
            self._read_function_body(func)
            return func
        if typeidx not in (torchfile.TYPE_TABLE, torchfile.TYPE_TORCH, torchfile.TYPE_RECUR_FUNCTION,
                           torchfile.LEGACY_TYPE_RECUR_FUNCTION):
            hint = ' (this does not look like a Torch7 file)' if start == 0 else ''
            raise T7Error(f'corrupt t7 file: unknown object type {typeidx} at byte {start}{hint}')
        index = self.s.int('an object index')
        known = self.objects.get(index)
        if known is not None:
            if known is _IN_PROGRESS:
                raise T7Error(f'corrupt t7 file: object {index} referenced at byte {start} '
                              'from inside its own tensor or storage')
            if id(known) in self.in_progress:
                self.referenced_early.add(id(known))
            return known
        if typeidx == torchfile.TYPE_TABLE:
            return self._read_table(index, start, as_fields=False)
        if typeidx == torchfile.TYPE_TORCH:
            return self._read_torch(index, start)
        func = LuaFunction(b'', None, typeidx)
        self.objects[index] = func
        self._read_function_body(func)
        return func

    def _read_function_body(self, func):
        start = self.s.pos
        size = self.s.int('a function size')
        if size < 0:
            raise T7Error(f'corrupt t7 file: negative function size {size} at byte {start}')
        func.dumped = self.s.chars(size, 'function bytecode')
        func.upvalues = self.read_obj()
        self.tables.append(func)

    def _read_table(self, index, start, as_fields):
        size = self.s.int('a table size')
        if size < 0 or size * 2 * _MIN_OBJECT_BYTES > self.s.remaining():
            raise T7Error(f'corrupt t7 file: table at byte {start} declares {size} entries, '
                          f'more than the {self.s.remaining()} bytes left can hold')
        table = {}
        self.objects[index] = table
        self.tables.append(table)
        self.in_progress.add(id(table))
        try:
            for _ in range(size):
                key_start = self.s.pos
                key = self.read_obj()
                if isinstance(key, (dict, list)):
                    key = self._table_key(key)
                self._check_key(key, key_start, table)
                table[key] = self.read_obj()
        finally:
            self.in_progress.discard(id(table))
        if as_fields or not table or not all(type(k) is int and 1 <= k <= len(table) for k in table):
            return table
        items = [table[i] for i in range(1, len(table) + 1)]
        self.objects[index] = items
        self.tables.append(items)
        if id(table) in self.referenced_early:
            # the placeholder is kept alive with its list, so that its id cannot be taken by another table
            self.replaced[id(table)] = (table, items)
        return items

    def _table_key(self, table):
        key = self.table_keys.get(id(table))
        if key is None:
            key = self.table_keys[id(table)] = TableKey(table)
        return key

    @staticmethod
    def _check_key(key, key_start, table):
        if key is None or (isinstance(key, float) and math.isnan(key)):
            raise T7Error(f'corrupt t7 file: table key at byte {key_start} is {key!r}, which Lua forbids')
        if key in table:
            numeric = (bool, int, float)
            other = next((k for k in table if type(k) in numeric and k == key), key) if type(key) in numeric else key
            if type(other) is not type(key) and bool in (type(other), type(key)):
                raise T7Error(f'unsupported t7 data: table has keys {other!r} and {key!r} (at byte {key_start}), '
                              'which a Python dict cannot tell apart')
            raise T7Error(f'corrupt t7 file: duplicate table key {key!r} at byte {key_start}')

    def _read_torch(self, index, start):
        version = self.read_class_name('a class version')
        if version.startswith('V '):
            try:
                version_number = float(version[2:])
            except ValueError:
                raise T7Error(f'corrupt t7 file: bad class version {version!r} at byte {start}') from None
            if version_number.is_integer():
                version_number = int(version_number)
            class_name = self.read_class_name('a class name')
        else:
            class_name, version_number = version, 0
        if class_name in STORAGE_DTYPES:
            self.objects[index] = _IN_PROGRESS
            obj = self._read_storage(class_name, start)
            self.objects[index] = obj
            return obj
        if class_name in TENSOR_DTYPES:
            self.objects[index] = _IN_PROGRESS
            obj = self._read_tensor(class_name, start)
            self.objects[index] = obj
            return obj
        if class_name.startswith('tds.') and class_name.encode() in torchfile.type_handlers:
            self.objects[index] = _IN_PROGRESS
            obj = torchfile.type_handlers[class_name.encode()](self, version_number)
            # torchfile's dicts compare by identity; the plain dict keeps == meaning what it means elsewhere.
            obj = dict(obj) if isinstance(obj, dict) else obj
            self.objects[index] = obj
            self.tables.append(obj)
            return obj
        obj = TorchObject(class_name, None, version_number)
        self.objects[index] = obj
        written_first, since = WRITTEN_BEFORE_FIELDS.get(class_name, (None, 0))
        if written_first is not None and version_number >= since:
            first = self.read_obj()
        fields_start = self.s.pos
        fields_type = self.s.int('an object type')
        if fields_type != torchfile.TYPE_TABLE:
            raise T7Error(f'unsupported t7 data: {class_name} at byte {start} is not stored as a table of fields '
                          f'(found object type {fields_type} at byte {fields_start}); classes with their own '
                          'serializer are not supported')
        fields_index = self.s.int('an object index')
        known = self.objects.get(fields_index)
        if known is None:
            fields = self._read_table(fields_index, fields_start, as_fields=True)
        elif isinstance(known, dict):
            fields = dict(known)
        elif isinstance(known, list):
            fields = {i + 1: v for i, v in enumerate(known)}
        else:
            raise T7Error(f'corrupt t7 file: fields of {class_name} at byte {fields_start} refer to a non-table')
        if fields is not known:
            self.tables.append(fields)
        if written_first is not None and version_number >= since:
            fields.setdefault(written_first, first)
        obj.fields = fields
        return obj

    def _read_storage(self, class_name, start):
        dtype = STORAGE_DTYPES[class_name]
        size = self.s.long('a storage size')
        if size < 0 or size * self.s.min_bytes(dtype) > self.s.remaining():
            raise T7Error(f'corrupt t7 file: {class_name} at byte {start} declares {size} elements, '
                          f'more than the {self.s.remaining()} bytes left can hold')
        data = torch.empty(size, dtype=dtype)
        self.s.fill(data, f'{class_name} data')
        return Storage(class_name, data)

    def _read_tensor(self, class_name, start):
        dtype = TENSOR_DTYPES[class_name]
        ndim = self.s.int('a tensor dimension count')
        if not 0 <= ndim <= _MAX_TENSOR_DIMS:
            raise T7Error(f'corrupt t7 file: {class_name} at byte {start} has {ndim} dimensions')
        size = self.s.longs(ndim, 'tensor sizes')
        stride = self.s.longs(ndim, 'tensor strides')
        offset = self.s.long('a tensor offset') - 1
        storage_start = self.s.pos
        storage = self.read_obj()
        if ndim == 0:
            return torch.empty(0, dtype=dtype)
        if not isinstance(storage, Storage) or storage.data.dtype != dtype:
            raise T7Error(f'corrupt t7 file: {class_name} at byte {start} has no {class_name[:-6]}Storage '
                          f'(found {type(storage).__name__} at byte {storage_start})')
        if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
            raise T7Error(f'corrupt t7 file: {class_name} at byte {start} has negative sizes, strides or offset')
        if math.prod(size) >= 2 ** 62:
            raise T7Error(f'corrupt t7 file: {class_name} at byte {start} declares {math.prod(size)} elements')
        if all(n > 0 for n in size):
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= len(storage):
                raise T7Error(f'corrupt t7 file: {class_name} at byte {start} reaches element {last + 1} of a '
                              f'storage of {len(storage)}')
        elif offset > len(storage):
            raise T7Error(f'corrupt t7 file: {class_name} at byte {start} starts past its storage')
        return torch.as_strided(storage.data, size, stride, offset)

    def read_root(self):
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 6 * _MAX_DEPTH + 500))
        try:
            root = self.read_obj()
        except T7Error:
            raise
        except (ValueError, TypeError, OverflowError, RuntimeError, MemoryError, struct.error) as e:
            raise T7Error(f'corrupt t7 file near byte {self.s.pos}: {e}') from None
        finally:
            sys.setrecursionlimit(limit)
        if self.replaced:
            root = self._replace_placeholders(root)
        return root

    def _replace_placeholders(self, root):
        """Points references taken while a list-like table was still a dict at the list that replaced it."""
        swap = self.replaced

        def final(v):
            return swap[id(v)][1] if isinstance(v, dict) and id(v) in swap and swap[id(v)][0] is v else v

        moved = set()
        for key in self.table_keys.values():
            if final(key.table) is not key.table:
                key.table = final(key.table)
                moved.add(key)
        for container in self.tables:
            if isinstance(container, dict):
                items = [(k, final(v)) for k, v in container.items()]
                if moved and any(k in moved for k, _ in items):
                    # those keys hash differently now: the dict is rebuilt, in the same order
                    container.clear()
                container.update(items)
            elif isinstance(container, list):
                container[:] = [final(v) for v in container]
            else:
                container.upvalues = final(container.upvalues)
        return final(root)


def _looks_ascii(head):
    # A binary file starts with its object's type code 0..8 in four bytes; an ascii file with its decimal digits.
    return len(head) > 0 and head[:1].isdigit()


# Formats people save next to (or instead of) Torch7 files, by their first bytes: what the file is and what opens it.
_OTHER_FORMATS = (
    (b'PK\x03\x04', "a zip archive (PyTorch's torch.save writes those): open it with torch.load"),
    (b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19', "a PyTorch file in torch.save's legacy format: open it with "
                                                   "torch.load"),
    (b'\x80', 'a Python pickle: open it with pickle or torch.load, from a source you trust'),
    (b'version https://git-lfs', 'a git-lfs pointer, not the file itself: fetch the file with `git lfs pull`'),
    (b'\x89HDF', 'an HDF5 file: open it with h5py'),
    (b'\x93NUMPY', 'a numpy .npy file: open it with numpy.load'),
    # the released models and caches travel compressed (alexnet-lcnn-fast.t7.xz, cache.tar.gz)
    (b'\xfd7zXZ\x00', 'an xz-compressed file: decompress it first (xz -dk FILE)'),
    (b'\x1f\x8b', 'a gzip-compressed file: unpack it first (tar xzf FILE for a .tar.gz, gunzip -k FILE otherwise)'),
    (b'BZh', 'a bzip2-compressed file: decompress it first (bunzip2 -k FILE)'),
)


def _refuse_other_formats(head):
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic[:16]):
            raise T7Error(f'not a t7 file: it is {what}')


def load(source, mode=None):
    """Reads one Lua value from a Torch7 file (a path, bytes, or a binary file object such as io.BytesIO).

    mode: 'binary', 'ascii' or None to detect it from the first byte. Binary files have 8-byte longs (torch.save on
    64-bit Linux and macOS) or 4-byte longs (Torch7 on Windows or a 32-bit system): a binary file that does not read
    with 8-byte longs is read again with 4-byte ones. They are little-endian, or big-endian when written on such a
    machine (PowerPC, SPARC, s390x), which their first bytes tell.
    """
    if mode not in (None, 'binary', 'ascii'):
        raise T7Error(f"t7.load mode must be 'binary', 'ascii' or None, not {mode!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_file(io.BytesIO(bytes(source)), mode)
    if isinstance(source, (str, os.PathLike)):
        try:
            f = open(source, 'rb')
        except OSError as e:
            raise T7Error(f'cannot open t7 file {os.fspath(source)}: {e.strerror}') from None
        with f:
            return _load_file(f, mode)
    if hasattr(source, 'read'):
        return _load_file(source, mode)
    raise T7Error(f't7.load expects a path, bytes or a binary file object, not {type(source).__name__}')


def _load_file(f, mode):
    try:
        seekable = f.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if seekable:
        start = f.tell()
        length = f.seek(0, io.SEEK_END) - start
        f.seek(start)
    else:
        data = f.read()
        if not isinstance(data, bytes):
            raise T7Error('t7.load needs a binary file object (opened with "rb")')
        f, length = io.BytesIO(data), len(data)
    if length == 0:
        raise T7Error('not a t7 file: it is empty (0 bytes at byte 0)')
    head = f.read(16)
    if not isinstance(head, bytes):
        raise T7Error('t7.load needs a binary file object (opened with "rb")')
    f.seek(-len(head), io.SEEK_CUR)
    if mode is None:
        _refuse_other_formats(head)
    if mode is None:
        mode = 'ascii' if _looks_ascii(head) else 'binary'
    if mode == 'ascii':
        return _Reader(_AsciiStream(f.read())).read_root()
    byteorder = _byteorder(head)
    start = f.tell()
    eight = _BinaryStream(f, length, byteorder=byteorder)
    try:
        return _Reader(eight).read_root()
    except T7Error as error:
        # Read as 8-byte longs, a file with 4-byte ones pairs each size with the next (or a storage size with its
        # first element): absurd sizes that fail the checks at the first tensor or storage. The 4-byte reading is
        # kept only when it ends on the file's last byte, as torch.save's one object does: a damaged 8-byte file
        # can also read with 4-byte longs, stopping early. When both fail, the error of the reading that went
        # further is the one that describes the damage.
        f.seek(start)
        four = _BinaryStream(f, length, long_size=4, byteorder=byteorder)
        try:
            value = _Reader(four).read_root()
        except T7Error as error_four:
            raise (_noted(error_four, four) if four.pos > eight.pos else _noted(error, eight)) from None
        if four.remaining():
            raise _noted(error, eight) from None
        return value


def _byteorder(head):
    # A binary file starts with the type code of its object, 0..8: a Torch object's is 04 00 00 00 when written
    # on a little-endian machine and 00 00 00 04 on a big-endian one (Torch7 writes in the machine's order).
    little, big = int.from_bytes(head[:4], 'little', signed=True), int.from_bytes(head[:4], 'big', signed=True)
    return 'big' if len(head) >= 4 and not 0 <= little <= 8 and 0 <= big <= 8 else 'little'


def _noted(error, stream):
    """The error of a reading, saying how the file was read when that was not torch.save's usual way."""
    if stream.byteorder == 'big':
        longs = ' with 4-byte longs' if stream.long_size == 4 else ''
        return T7Error(f'{error} (read as big-endian{longs}, as Torch7 writes on big-endian machines such as PowerPC: '
                       'its first number is a type code in that order)')
    if stream.long_size == 4:
        return T7Error(f'{error} (read with 4-byte longs, as Torch7 writes them on Windows and 32-bit systems)')
    return error


def equal(a, b):
    """Structural equality of two loaded values (tensors by dtype, shape and values, NaN equal to NaN; tables,
    Torch objects and functions by content), safe on the cycles Lua data may contain."""
    assumed = set()

    def same(x, y):
        if x is y:
            return True
        if isinstance(x, (dict, list, TorchObject, LuaFunction, Storage, torch.Tensor)):
            if (id(x), id(y)) in assumed:
                return True
            assumed.add((id(x), id(y)))
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype
                    and x.shape == y.shape and _same_values(x, y))
        if isinstance(x, Storage) or isinstance(y, Storage):
            return isinstance(x, Storage) and isinstance(y, Storage) and same(x.data, y.data)
        if isinstance(x, TorchObject) or isinstance(y, TorchObject):
            return (isinstance(x, TorchObject) and isinstance(y, TorchObject) and x.typename == y.typename
                    and x.version == y.version and same(x.fields, y.fields))
        if isinstance(x, LuaFunction) or isinstance(y, LuaFunction):
            return (isinstance(x, LuaFunction) and isinstance(y, LuaFunction) and x.typeidx == y.typeidx
                    and x.dumped == y.dumped and same(x.upvalues, y.upvalues))
        if isinstance(x, TableKey) or isinstance(y, TableKey):
            return isinstance(x, TableKey) and isinstance(y, TableKey) and same(x.table, y.table)
        if isinstance(x, dict) or isinstance(y, dict):
            if not (isinstance(x, dict) and isinstance(y, dict) and len(x) == len(y)):
                return False
            # Keys that are Lua objects (tables, Torch objects, tensors, functions) are matched in file order.
            x_objects, y_objects = [k for k in x if _is_object(k)], [k for k in y if _is_object(k)]
            return (len(x_objects) == len(y_objects)
                    and all(k in y and same(v, y[k]) for k, v in x.items() if not _is_object(k))
                    and all(same(kx, ky) and same(x[kx], y[ky]) for kx, ky in zip(x_objects, y_objects)))
        if isinstance(x, list) or isinstance(y, list):
            return (isinstance(x, list) and isinstance(y, list) and len(x) == len(y)
                    and all(same(u, v) for u, v in zip(x, y)))
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        if isinstance(x, bool) or isinstance(y, bool) or isinstance(x, (str, bytes)) or isinstance(y, (str, bytes)):
            return type(x) is type(y) and x == y
        return x == y

    return same(a, b)


def _is_object(key):
    return isinstance(key, (TableKey, TorchObject, LuaFunction, Storage, torch.Tensor))


def _same_values(x, y):
    x, y = x.detach().cpu(), y.detach().cpu()
    if x.is_floating_point():
        return bool(((x == y) | (torch.isnan(x) & torch.isnan(y))).all())
    return bool(torch.equal(x, y))
