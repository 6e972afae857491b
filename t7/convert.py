"""Port of the nn/cudnn/lcnn/clcNet module classes (their fields, read and updateOutput) to PyTorch and back: the
tree walk; the per-class converters live in t7/nn_<family>.py and register in t7.registry."""

import bisect
import os
import warnings

import torch
from torch import nn

from errors import first_line
from layers.containers import input_kind, specialize
from layers.legacy import lua_type, named
# importing the family modules fills the registry
from t7 import (nn_activation, nn_containers, nn_conv, nn_decorators, nn_distance, nn_graph, nn_lcnn,  # noqa: F401
                nn_misc, nn_normalization, nn_pooling, nn_rnn, nn_shape, nn_style, nn_tables)
from t7.read import LuaFunction, T7Error, TorchObject, load
from t7.registry import (BUILDERS, VERSION_2, WRITERS, Fields, class_of, describe, float_dtype, storage_view,
                         tensor_type)
from t7.write import save


class _Loader:
    """The walk over a Lua module tree. What keeps it as fast as reading the file: builders create their modules
    without initial weights (device='meta', or no parameters) and then assign the saved tensors, taken with
    `Fields.tensor` (no copy) and made parameters with `parameter` / `set_parameters`; nothing is drawn at random,
    copied or converted unless the Lua layout demands it."""

    def __init__(self):
        self.modules = {}     # id(TorchObject) -> nn.Module, so that a module shared in Lua stays shared
        self.parameters = {}  # view_key -> nn.Parameter, so that a tensor shared in Lua stays shared
        self.extents = []     # sorted, disjoint (first byte, end byte) of the parameters left on the file's memory
        self.owners = {}      # extent -> place of the module whose parameter it is
        self.building = set()  # ids of the modules being built, to refuse a module that contains itself
        self.place = 'model'  # of the module being built, for the parameters it takes

    def module(self, obj, path):
        if not isinstance(obj, TorchObject):
            raise T7Error(f'{path} is not an nn module (found {type(obj).__name__})')
        known = self.modules.get(id(obj))
        if known is not None:
            return known
        if id(obj) in self.building:
            raise T7Error(f'{obj.typename} at {path} contains itself')
        builder = BUILDERS.get(class_of(obj.typename))
        if builder is None and is_criterion(obj):
            raise T7Error(f'{obj.typename} at {path} is a criterion (a loss function), not a layer: t7.load_model '
                          f'converts the network, not its criterion')
        if builder is None:
            raise T7Error(f'unsupported module {obj.typename} at {path}: t7.load_model has no converter for this '
                          f'class (it knows {len(BUILDERS)} nn/cudnn classes); add one in t7/nn_<family>.py')
        self.building.add(id(obj))
        outer, self.place = self.place, path
        try:
            module = builder(self, Fields(obj, path), path)
        except (RuntimeError, ValueError, TypeError, LookupError, ArithmeticError, AttributeError) as e:
            # A field of a shape or kind the builder did not expect: the file, not the builder, is at fault.
            raise T7Error(f'{obj.typename} at {path} cannot be built: {first_line(e)}') from None
        finally:
            self.building.discard(id(obj))
            self.place = outer
        named(module, obj.typename)
        for key, value in obj.fields.items():
            # Functions such as resnet's LRregime are model data with no PyTorch meaning: kept to be written back.
            if isinstance(key, str) and key.isidentifier() and isinstance(value, LuaFunction):
                setattr(module, 'lua_' + key, value)
        self.modules[id(obj)] = module
        return module

    def children(self, fields, path):
        modules = fields.get('modules', [])
        if isinstance(modules, dict) and not modules:
            modules = []
        if not isinstance(modules, list):
            raise T7Error(f'{fields.typename} at {path}: field modules must be a list of modules')
        return [self.module(m, f'{path}.modules[{i}]') for i, m in enumerate(modules)]

    def parameter(self, tensor):
        """The nn.Parameter for a Lua weight or bias tensor: one per distinct view (storage, offset, sizes,
        strides), so that Lua's shared weights (`share`, clones, getParameters' flat vector) stay shared.

        Parameters that are disjoint views of one storage stay on it, each with its own version counter. A view
        that overlaps another parameter without being the same view gets a copy of its values: two Parameters
        aliasing part of their memory would make autograd and the optimizer silently wrong.
        """
        if tensor.numel() == 0:
            return nn.Parameter(storage_view(tensor))
        key = view_key(tensor)
        known = self.parameters.get(key)
        if known is not None:
            return known
        span = byte_span(tensor)
        extents = self.extents
        i = bisect.bisect_left(extents, span)
        overlap = (extents[i - 1] if i > 0 and extents[i - 1][1] > span[0] else
                   extents[i] if i < len(extents) and extents[i][0] < span[1] else None)
        if overlap is not None:
            # Lua trained such views as one (a decoder's weight as the encoder's transposed, say); here they train
            # apart, which the user must hear of.
            warnings.warn(f'{self.place}: a {"x".join(map(str, tensor.shape))} parameter shares memory with one of '
                          f'{self.owners[overlap]} without being the same view (a transposed or narrowed weight, '
                          f'say); it gets a copy of its own, so training no longer keeps the two tied',
                          stacklevel=2)
            data = tensor.detach().clone()
        else:
            extents.insert(i, span)
            self.owners[span] = self.place
            data = storage_view(tensor)
        # The memory of every key stays alive while loading (the file's tree holds it, or the Parameter made on it
        # does), so no other tensor can take its address and match a key by accident.
        known = self.parameters[key] = nn.Parameter(data, requires_grad=True)
        return known


def view_key(t):
    """What identifies a view: its storage, dtype, offset, sizes and strides (a stride of a size-1 dimension never
    moves, so it does not count)."""
    strides = tuple(0 if n == 1 else s for n, s in zip(t.shape, t.stride()))
    return t.untyped_storage().data_ptr(), t.dtype, t.storage_offset(), tuple(t.shape), strides


def byte_span(t):
    """(first byte, end byte) of the memory a non-empty view t can touch."""
    first = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return first, first + (last + 1) * t.element_size()


def is_module(obj):
    """Whether a Torch object is an nn module or criterion (it has a converter or the fields every nn.Module has)."""
    return isinstance(obj, TorchObject) and (class_of(obj.typename) is not None
                                             or {'output', 'gradInput'} <= set(obj.fields))


def is_criterion(obj):
    return obj.typename.endswith('Criterion')


def modules_inside(value):
    """[(place, module)] of the nn modules (criteria left out) in a loaded table or object that is not a module
    itself, such as char-rnn's checkpoint {protos={rnn=..., criterion=...}, opt=..., vocab=...}: the outermost
    ones, each once, in key order. A place is the dotted Lua keys that lead to it ('protos.rnn'; 1-based list
    indices), as `find` takes it."""
    found, seen = [], set()
    # Depth first with a stack of its own: Lua data nests deeper than Python's recursion limit.
    stack = [(value, '')]
    while stack:
        v, place = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if is_module(v):
            if not is_criterion(v):
                found.append((place, v))
            continue
        if isinstance(v, TorchObject):
            v = v.fields
        items = v.items() if isinstance(v, dict) else enumerate(v, 1) if isinstance(v, list) else ()
        keyed = sorted(((k, c) for k, c in items if isinstance(k, (str, int)) and not isinstance(k, bool)),
                       key=lambda item: (1, item[0], 0) if isinstance(item[0], str) else (0, '', item[0]))
        stack.extend((child, f'{place}.{key}' if place else str(key)) for key, child in reversed(keyed))
    return found


def find(value, place):
    """The value at a dotted place ('protos.rnn') of a loaded table or object; T7Error when nothing is there."""
    here = value
    for i, key in enumerate(place.split('.')):
        table = here.fields if isinstance(here, TorchObject) else here
        if isinstance(table, list) and key.isdigit() and 1 <= int(key) <= len(table):
            here = table[int(key) - 1]
        elif isinstance(table, dict) and key in table:
            here = table[key]
        elif isinstance(table, dict) and key.isdigit() and int(key) in table:
            here = table[int(key)]
        else:
            at = '.'.join(place.split('.')[:i]) or 'the top'
            raise T7Error(f'nothing at {place}: {at} has no key {key}')
    return here


def load_model(source):
    """Builds a PyTorch module, in eval mode, from a Torch7 file holding an nn/cudnn module tree (or from that tree,
    already loaded).

    Every module gets the project's class for its Lua class and `lua_type` = the saved class name; parameters
    that Lua shared stay shared. Lua functions stored on a module (resnet's LRregime) are kept as `lua_<name>`
    attributes. Errors name the module's place in the tree with Python's 0-based indices (model.modules[2]).
    A table or object that only holds modules (a training checkpoint) is refused with their places.
    """
    obj = load(source) if isinstance(source, (str, bytes, bytearray, memoryview, os.PathLike)) or hasattr(
        source, 'read') else source
    if not is_module(obj):
        raise T7Error('t7.load_model got ' + not_a_module(
            obj, lambda place: f"convert one of them: t7.load_model(t7.find(value, '{place}'))"))
    try:
        model = _Loader().module(obj, 'model')
        # What flows between modules (a tensor or a table) is fixed here, so that torch.jit.script compiles it.
        specialize(model, input_kind(model))
    except RecursionError:
        raise T7Error('the module tree is nested too deeply to convert') from None
    return model.eval()


def not_a_module(value, how):
    """Why a loaded value is not an nn module tree, naming the nn modules it holds (one line); `how(place)` says how
    to take the one at `place`."""
    if isinstance(value, TorchObject):
        what = f'a {value.typename} object'
    elif isinstance(value, (dict, list)):
        what = 'a Lua table'
    else:
        what = describe(value)[:80]
    inside = modules_inside(value)
    if not inside:
        return f'{what}, not an nn module, and no nn module inside it'
    places = ', '.join(f'{place} ({m.typename})' for place, m in inside)
    return f'{what}, not an nn module; the nn modules in it: {places}; {how(inside[0][0])}'


class _Saver:
    def __init__(self):
        self.objects = {}  # id(nn.Module) -> TorchObject, so that shared modules stay shared
        self.tensors = {}  # id(tensor) -> the tensor written for it (and its gradient buffer)
        self.keep = []     # modules and tensors whose ids are keys above

    def obj(self, module, path, reached=True):
        known = self.objects.get(id(module))
        if known is not None:
            return known
        try:
            typename = lua_type(module)
        except TypeError:
            raise T7Error(f'cannot save {type(module).__name__} at {path}: it has no Torch7 counterpart') from None
        writer = WRITERS.get(class_of(typename))
        if writer is None:
            raise T7Error(f'cannot save {typename} ({type(module).__name__}) at {path}: t7.save_model writes '
                          f'{", ".join(sorted(WRITERS))}')
        expected = writer[0] if isinstance(writer[0], tuple) else (writer[0],)
        if not isinstance(module, expected):
            raise T7Error(f'cannot save {type(module).__name__} at {path} as {typename}: '
                          f'expected a {" or ".join(c.__name__ for c in expected)}')
        obj = TorchObject(typename, {}, 2 if class_of(typename) in VERSION_2 else 1)
        self.objects[id(module)] = obj
        self.keep.append(module)
        fields = obj.fields
        fields['output'] = self.empty(module)
        fields['gradInput'] = self.empty(module)
        fields['_type'] = tensor_type(module)
        if reached:
            fields['train'] = module.training
        writer[1](self, module, fields, path)
        for name, value in vars(module).items():
            if name.startswith('lua_') and name != 'lua_type':
                fields[name[len('lua_'):]] = value
        return obj

    def empty(self, module):
        return torch.empty(0, dtype=float_dtype(module))

    def tensor(self, t):
        """The tensor written for parameter or buffer t: one Lua tensor per PyTorch tensor."""
        if t is None:
            return None
        written = self.tensors.get(id(t))
        if written is None:
            written = self.tensors[id(t)] = t.detach()
            self.keep.append(t)
        return written

    def grad(self, t):
        """A zero gradient buffer of t's shape, as Lua modules allocate gradWeight/gradBias; one per parameter."""
        if t is None:
            return None
        key = ('grad', id(t))
        written = self.tensors.get(key)
        if written is None:
            written = self.tensors[key] = torch.zeros(t.shape, dtype=t.dtype)
        return written

    def children(self, module, path):
        # _modules rather than children(): a module added twice to a container is written twice, as Lua has it.
        mods = [m for m in module._modules.values() if m is not None]
        return [self.obj(m, f'{path}.modules[{i}]') for i, m in enumerate(mods)]



def to_lua(module):
    """The TorchObject tree Lua would have for a PyTorch module (what save_model writes)."""
    if not isinstance(module, nn.Module):
        raise T7Error(f't7.save_model expects a torch.nn.Module, not {type(module).__name__}')
    return _Saver().obj(module, 'model')


def save_model(target, module):
    """Writes a PyTorch model (from models.create or load_model) as the nn/cudnn module tree Lua would have.

    Each module is written as its `lua_type` class with the fields that class's constructor creates and its
    forward reads (gradient buffers included, as Lua allocates them); `lua_<name>` attributes are written back
    as fields. Errors name the module's place in the tree (model.modules[2]).
    """
    save(target, to_lua(module))
