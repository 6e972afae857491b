"""Port of torch7's File.lua writeObject with the Tensor/Storage writers of generic/Tensor.c and generic/Storage.c."""

import math
import numbers
import os
import struct
import sys

import numpy as np
import torch
import torchfile

from t7.read import WRITTEN_BEFORE_FIELDS, LuaFunction, Storage, T7Error, TableKey, TorchObject, swap_bytes

# dtype -> Torch7 CPU tensor class; storages are the same names with Storage.
TENSOR_CLASSES = {
    torch.uint8: 'torch.ByteTensor', torch.int8: 'torch.CharTensor', torch.int16: 'torch.ShortTensor',
    torch.int32: 'torch.IntTensor', torch.int64: 'torch.LongTensor', torch.float32: 'torch.FloatTensor',
    torch.float64: 'torch.DoubleTensor', torch.float16: 'torch.HalfTensor',
}

_MAX_DEPTH = 2000


def _storage_class(dtype):
    return TENSOR_CLASSES[dtype][:-len('Tensor')] + 'Storage'


def _whole_storage(t):
    """A 1-D tensor over all of t's storage, which is what Torch7 writes for any view of it."""
    count = t.untyped_storage().nbytes() // t.element_size()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), 0, (count,), (1,))


def _format_version(version):
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    return f'V {version}' if isinstance(version, int) else f'V {version:.14g}'


class _Writer:
    def __init__(self, f, long_size=8, byteorder='little'):
        self.f = f
        self.long_size = long_size
        self.byteorder = byteorder
        self._order = '<' if byteorder == 'little' else '>'
        self._int_struct = struct.Struct(self._order + 'i')
        self._double_struct = struct.Struct(self._order + 'd')
        self.indices = {}     # id(object) or storage key -> object index
        self.alive = []       # keeps every memoized object alive so that its id is not reused while writing
        self.count = 0
        self.path = ['root']

    def _where(self):
        return ''.join(self.path)

    def _int(self, v):
        self.f.write(self._int_struct.pack(v))

    def _chars(self, data):
        self._int(len(data))
        self.f.write(data)

    def _check_longs(self, values):
        if self.long_size == 4 and any(not -2 ** 31 <= v < 2 ** 31 for v in values):
            raise T7Error(f'cannot write {self._where()} with 4-byte longs: {max(values, key=abs)} does not fit in one')

    def _longs(self, values):
        self._check_longs(values)
        self.f.write(struct.pack(f'{self._order}{len(values)}{"q" if self.long_size == 8 else "i"}', *values))

    def _reference(self, key, obj):
        """Writes the index of an object; returns True when it was written before (only the index is needed)."""
        index = self.indices.get(key)
        if index is not None:
            self._int(index)
            return True
        self.count += 1
        self.indices[key] = self.count
        self.alive.append(obj)
        self._int(self.count)
        return False

    def obj(self, o):
        if len(self.path) > _MAX_DEPTH:
            raise T7Error(f'cannot write {self._where()}: nested deeper than {_MAX_DEPTH} levels')
        if o is None:
            self._int(torchfile.TYPE_NIL)
        elif isinstance(o, (bool, np.bool_)):
            self._int(torchfile.TYPE_BOOLEAN)
            self._int(1 if o else 0)
        elif isinstance(o, numbers.Real) and not isinstance(o, (torch.Tensor, np.ndarray)):
            self._int(torchfile.TYPE_NUMBER)
            self.f.write(self._double_struct.pack(self._number(o)))
        elif isinstance(o, str):
            self._int(torchfile.TYPE_STRING)
            self._chars(o.encode('utf-8'))
        elif isinstance(o, (bytes, bytearray)):
            self._int(torchfile.TYPE_STRING)
            self._chars(bytes(o))
        elif isinstance(o, (list, tuple, dict)):
            self._int(torchfile.TYPE_TABLE)
            if not self._reference(id(o), o):
                self._table(o.items() if isinstance(o, dict) else enumerate(o, 1), len(o))
        elif isinstance(o, np.ndarray):
            self.obj(torch.from_numpy(np.ascontiguousarray(o)))
        elif isinstance(o, torch.Tensor):
            self._int(torchfile.TYPE_TORCH)
            if not self._reference(id(o), o):
                self._tensor(o)
        elif isinstance(o, Storage):
            self._int(torchfile.TYPE_TORCH)
            if not self._reference(self._storage_key(o), o):
                self._class_header(_storage_class(self._dtype(o.data)), 1)
                self._storage_payload(o.data if self._storage_key(o)[0] == 'data' else o.data.reshape(-1))
        elif isinstance(o, TorchObject):
            self._int(torchfile.TYPE_TORCH)
            if not self._reference(id(o), o):
                self._class_header(o.typename, o.version)
                if not isinstance(o.fields, dict):
                    raise T7Error(f'cannot write {self._where()}: fields of {o.typename} must be a dict')
                first, since = WRITTEN_BEFORE_FIELDS.get(o.typename, (None, 0))
                if first is not None and o.version >= since:
                    self.obj(o.fields.get(first))
                self.obj(o.fields)
        elif isinstance(o, LuaFunction):
            self._function(o)
        else:
            raise T7Error(f'cannot write {self._where()}: a {type(o).__name__} has no Torch7 equivalent')

    def _number(self, o):
        try:
            x = float(o)
        except OverflowError:
            raise T7Error(f'cannot write {self._where()}: {o} does not fit in a Lua number') from None
        if isinstance(o, numbers.Integral) and int(o) != x:
            raise T7Error(f'cannot write {self._where()}: integer {o} is not exact as a Lua number (a double)')
        return x

    def _table(self, items, size):
        self._int(size)
        for k, v in items:
            if k is None or isinstance(k, (list, tuple, dict)) or (isinstance(k, float) and math.isnan(k)):
                raise T7Error(f'cannot write {self._where()}: table key {k!r} is not a valid Lua table key'
                              f'{" (wrap a table used as a key in t7.TableKey)" if isinstance(k, tuple) else ""}')
            self.obj(k.table if isinstance(k, TableKey) else k)
            self.path.append(f'.{k}' if isinstance(k, str) else f'[{k!r}]')
            try:
                self.obj(v)
            finally:
                self.path.pop()

    def _class_header(self, typename, version):
        self._chars(_format_version(version).encode('ascii'))
        self._chars(typename.encode('ascii'))

    def _dtype(self, t):
        if t.dtype not in TENSOR_CLASSES:
            raise T7Error(f'cannot write {self._where()}: Torch7 has no tensor type for {t.dtype}; '
                          'convert it (e.g. to torch.uint8 or torch.float32) first')
        return t.dtype

    def _tensor(self, t):
        if t.layout != torch.strided:
            raise T7Error(f'cannot write {self._where()}: a {t.layout} tensor; convert it with .to_dense() first')
        self._class_header(TENSOR_CLASSES[self._dtype(t)], 1)
        if t.numel() == 0:
            # Torch7 has no zero-sized dimensions: an empty tensor has no dimensions and no storage.
            self._int(0)
            self._longs([1])
            self._int(torchfile.TYPE_NIL)
            return
        size, stride = (list(t.shape), list(t.stride())) if t.dim() else ([1], [1])
        self._int(len(size))
        self._longs(size)
        self._longs(stride)
        self._longs([t.storage_offset() + 1])
        self._int(torchfile.TYPE_TORCH)
        key = ('storage', t.untyped_storage().data_ptr(), t.dtype, str(t.device))
        if not self._reference(key, t):
            self._class_header(_storage_class(t.dtype), 1)
            self._storage_payload(_whole_storage(t.detach()))

    def _storage_key(self, s):
        data = s.data
        if (isinstance(data, torch.Tensor) and data.dim() == 1 and data.storage_offset() == 0
                and data.is_contiguous() and data.numel() > 0
                and data.numel() * data.element_size() == data.untyped_storage().nbytes()):
            return ('storage', data.untyped_storage().data_ptr(), data.dtype, str(data.device))
        return ('data', id(s))

    def _storage_payload(self, data):
        data = data.detach().cpu().contiguous()
        self._longs([data.numel()])
        if data.dtype == torch.int64 and self.long_size == 4 and data.numel():
            self._check_longs([int(data.min()), int(data.max())])
            data = data.to(torch.int32)
        if data.numel():
            if self.byteorder != sys.byteorder and data.element_size() > 1:
                data = data.clone()
                swap_bytes(data)
            self.f.write(memoryview(data.view(torch.uint8).numpy() if data.dtype != torch.uint8 else data.numpy()))

    def _function(self, fn):
        typeidx = fn.typeidx
        if typeidx not in (torchfile.TYPE_FUNCTION, torchfile.TYPE_RECUR_FUNCTION,
                           torchfile.LEGACY_TYPE_RECUR_FUNCTION):
            raise T7Error(f'cannot write {self._where()}: LuaFunction has unknown object type {typeidx}')
        self._int(typeidx)
        if typeidx != torchfile.TYPE_FUNCTION and self._reference(id(fn), fn):
            return
        self._chars(bytes(fn.dumped))
        self.path.append('.<upvalues>')
        try:
            self.obj(fn.upvalues)
        finally:
            self.path.pop()


def save(target, obj, long_size=8, byteorder='little'):
    """Writes obj as a binary Torch7 file (little-endian, 8-byte longs) that Lua's torch.load reads.

    long_size=4 writes longs in 4 bytes, for Torch7 on Windows or a 32-bit system (whose C long it is);
    byteorder='big' writes numbers big-endian, for Torch7 on a big-endian machine (PowerPC, SPARC, s390x).

    target: a path (written to a temporary name then renamed, so a failed save leaves no partial file) or a
    binary file object. Lists and tuples become tables with keys 1..n, dicts tables, tensors typed CPU tensors
    (views of one storage keep sharing it), Storage/TorchObject/LuaFunction their Torch7 originals.
    """
    if long_size not in (4, 8):
        raise T7Error(f't7.save long_size must be 4 or 8, not {long_size!r}')
    if byteorder not in ('little', 'big'):
        raise T7Error(f"t7.save byteorder must be 'little' or 'big', not {byteorder!r}")
    if hasattr(target, 'write'):
        _write(target, obj, long_size, byteorder)
        return
    if not isinstance(target, (str, os.PathLike)):
        raise T7Error(f't7.save expects a path or a binary file object, not {type(target).__name__}')
    path = os.fspath(target)
    partial = path + '.partial'
    try:
        with open(partial, 'wb', buffering=1 << 20) as f:
            _write(f, obj, long_size, byteorder)
        os.replace(partial, path)
    except OSError as e:
        raise T7Error(f'cannot write t7 file {path}: {e.strerror}') from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _write(f, obj, long_size=8, byteorder='little'):
    writer = _Writer(f, long_size, byteorder)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 8 * _MAX_DEPTH + 500))
    try:
        writer.obj(obj)
    finally:
        sys.setrecursionlimit(limit)
