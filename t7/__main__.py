"""Command line for old Torch7 files: `print` ports Lua's print(model) (nn's __tostring__ of each class, and a tree for
any other value); `convert` writes a converted model as a self-contained TorchScript file."""
import os
import sys
import warnings

import torch

from errors import UserError, first_line, lua_tostring
from layers.containers import unscriptable
from t7.convert import find, is_module, load_model, modules_inside, not_a_module
from t7.read import _MAX_DEPTH, LuaFunction, Storage, T7Error, TableKey, TorchObject, load
from t7.write import TENSOR_CLASSES

USAGE = 'usage: python -m t7 print FILE | python -m t7 convert FILE.t7 OUT.pt [PLACE]'


def _d(x):
    return str(int(x))


def _f(x):
    return '%f' % x


def _size(storage):
    return [lua_tostring(v) for v in storage.data.tolist()] if isinstance(storage, Storage) else []


def _pad(f, *names):
    """nn's `(self.padW or self.padH) and (self.padW ~= 0 or self.padH ~= 0)`: ', padW,padH' when padded."""
    values = [f.get(n) for n in names]
    if any(v is not None for v in values) and any(v != 0 for v in values):
        return ', ' + ','.join(lua_tostring(v) for v in values)
    return ''


def _strided(f, strides, pads):
    """The stride part of nn's convolution strings, printed when any stride is not 1 or any pad not 0."""
    if any(f.get(s) != 1 for s in strides) or any(f.get(p) != 0 for p in pads):
        return ', ' + ','.join(_d(f[s]) for s in strides)
    return ''


def _bias(f, text):
    return text + ')' if f.get('bias') is not None else text + ') without bias'


def _convolution(name, f):
    s = f'{name}({_d(f["nInputPlane"])} -> {_d(f["nOutputPlane"])}, {_d(f["kW"])}x{_d(f["kH"])}'
    return s + _strided(f, ('dW', 'dH'), ('padW', 'padH')) + _pad(f, 'padW', 'padH')


def _convolution3d(name, f):
    s = (f'{name}({_d(f["nInputPlane"])} -> {_d(f["nOutputPlane"])}, '
         f'{_d(f["kT"])}x{_d(f["kW"])}x{_d(f["kH"])}')
    return s + _strided(f, ('dT', 'dW', 'dH'), ('padT', 'padW', 'padH')) + _pad(f, 'padT', 'padW', 'padH')


def _pooling(name, f):
    return f'{name}({_d(f["kW"])}x{_d(f["kH"])}, {_d(f["dW"])},{_d(f["dH"])}' + _pad(f, 'padW', 'padH')


def _pooling3d(name, f):
    return (f'{name}({_d(f["kT"])}x{_d(f["kW"])}x{_d(f["kH"])}, {_d(f["dT"])},{_d(f["dW"])},{_d(f["dH"])}'
            + _pad(f, 'padT', 'padW', 'padH'))


def _dilation(f, *names):
    return ', ' + ','.join(lua_tostring(f[n]) for n in names)


def _padding(name, f):
    return f'{name}(l={_d(f["pad_l"])}, r={_d(f["pad_r"])}, t={_d(f["pad_t"])}, b={_d(f["pad_b"])})'


def _indent(text, prefix):
    return text.replace('\n', '\n' + prefix)


def _sequential(name, f):
    # Sequential's __tostring__ names itself nn.Sequential, also for the classes that inherit it.
    modules = f.get('modules') or []
    s = 'nn.Sequential {\n  [input' + ''.join(f' -> ({i})' for i in range(1, len(modules) + 1)) + ' -> output]'
    for i, m in enumerate(modules, 1):
        s += f'\n  ({i}): ' + _indent(lua_string(m), '  ')
    return s + '\n}'


def _branches(name, f):
    """Concat, ConcatTable, ParallelTable and Parallel: one branch per child, input above and output below."""
    modules = f.get('modules') or []
    s = name + ' {\n  input'
    for i, m in enumerate(modules, 1):
        last = i == len(modules)
        s += '\n  ' + ('   `-> ' if last else '  |`-> ') + f'({i}): '
        s += _indent(lua_string(m), '  ' + ('       ' if last else '  |    '))
    return s + '\n     ... -> output\n}'


def _map_table(name, f):
    if f.get('module') is None:
        return name + ' { }'
    return name + ' {\n  ' + _indent(lua_string(f['module']), '        ') + '\n}'


def _decorator(name, f):
    inner = (f.get('modules') or [None])[0]
    return f'{name} @ ' + (lua_string(inner) if isinstance(inner, TorchObject) else 'nil')


_BN_DIMS = {'nn.BatchNormalization': 2, 'nn.SpatialBatchNormalization': 4, 'nn.VolumetricBatchNormalization': 5}

# Lua class -> its __tostring__ (class name, fields) as nn, cudnn, lcnn and clcNet define it.
_TOSTRING = {
    'nn.Sequential': _sequential,
    'nn.Concat': _branches, 'nn.ConcatTable': _branches, 'nn.ParallelTable': _branches, 'nn.Parallel': _branches,
    'nn.MapTable': _map_table,
    'nn.Decorator': _decorator,
    'nn.NaN': lambda name, f: f'{name}({lua_tostring(f["id"])}) @ ' + lua_string(f['modules'][0]),
    'nn.GPU': lambda name, f: f'{name}({lua_tostring(f["device"])}) @ ' + lua_string(f['modules'][0]),
    'nn.gModule': lambda name, f: name if f.get('name') is None else lua_tostring(f['name']),
    'nn.BatchNormalization': lambda name, f: f'{name} ({_BN_DIMS[name]}D) ({f["running_mean"].numel()})',
    'nn.Linear': lambda name, f: (f'{name}({f["weight"].shape[1]} -> {f["weight"].shape[0]})'
                                  + ('' if f.get('bias') is not None else ' without bias')),
    'nn.LinearWeightNorm': lambda name, f: (f'{name}({_d(f["inputSize"])} -> {_d(f["outputSize"])})'
                                            + ('' if f.get('bias') is not None else ' without bias')),
    'nn.PartialLinear': lambda name, f: (f'{name}({_d(f["inputsize"])} -> {_d(f["outputsize"])})'
                                         + ('' if f.get('bias') is not None else ' without bias')),
    'nn.Bilinear': lambda name, f: (f'{name}({f["weight"].shape[1]}x{f["weight"].shape[2]} -> '
                                    f'{f["weight"].shape[0]}) ' + ('' if f.get('bias') is not None
                                                                    else ' without bias')),
    'nn.CReLU': lambda name, f: 'CReLU()',
    'nn.DataParallelTable': lambda name, f: (f'DataParallelTable: {len(f["gpuAssignments"])} x '
                                             + lua_string(f['modules'][0])),
    # The rnn package's AbstractRecurrent (torch-rnn's LSTM has no inputSize: its name alone, as Lua prints it).
    'nn.FastLSTM': lambda name, f: f'{name}({_d(f["inputSize"])} -> {_d(f["outputSize"])})',
    'nn.GRU': lambda name, f: f'{name}({_d(f["inputSize"])} -> {_d(f["outputSize"])}, {"%.2f" % f["p"]})',
    'nn.Dropout': lambda name, f: f'{name}({_f(f["p"])})',
    'nn.SpatialDropout': lambda name, f: f'{name}({_f(f["p"])})',
    'nn.VolumetricDropout': lambda name, f: f'{name}({_f(f["p"])})',
    'nn.ELU': lambda name, f: f'{name} (alpha:{_f(f["alpha"])})',
    'nn.LeakyReLU': lambda name, f: f'{name}({"%g" % f["negval"]})',
    'nn.RReLU': lambda name, f: f'{name} (l:{_f(f["lower"])}, u:{_f(f["upper"])})',
    'nn.WhiteNoise': lambda name, f: f'{name} mean: {_f(f["mean"])}, std: {_f(f["std"])}',
    'nn.Normalize': lambda name, f: f'{name}({_d(f["p"]) if f["p"] % 1 == 0 else _f(f["p"])})',
    'nn.FeatureLPPooling': lambda name, f: (f'{name}(w{_d(f["width"])} s{_d(f["stride"])} power {_d(f["power"])} '
                                            f'batch {_d(f["batch_mode"])}'),
    'nn.View': lambda name, f: f'{name}({", ".join(_size(f["size"]))})',
    'nn.Reshape': lambda name, f: f'{name}({"x".join(_size(f["size"]))})',
    'nn.SelectTable': lambda name, f: f'{name}({lua_tostring(f["index"])})',
    'nn.Unsqueeze': lambda name, f: f'{name}(dim {lua_tostring(f["pos"])})',
    'nn.SpatialConvolution': lambda name, f: _bias(f, _convolution(name, f)),
    'nn.SpatialConvolutionMM': lambda name, f: _bias(f, _convolution(name, f)),
    'nn.SpatialDepthWiseConvolution': lambda name, f: _bias(f, _convolution(name, f)),
    'nn.SpatialDilatedConvolution': lambda name, f: _bias(f, _convolution(name, f)
                                                          + _dilation(f, 'dilationW', 'dilationH')),
    'nn.SpatialFullConvolution': lambda name, f: _bias(f, _convolution(name, f) + _pad(f, 'adjW', 'adjH')),
    'nn.SpatialConvolutionLocal': lambda name, f: (
        f'{name}({_d(f["nInputPlane"])} -> {_d(f["nOutputPlane"])}, {_d(f["iW"])}x{_d(f["iH"])}, '
        f'{_d(f["kW"])}x{_d(f["kH"])}' + _strided(f, ('dW', 'dH'), ('padW', 'padH')) + _pad(f, 'padW', 'padH')
        + ')'),
    'nn.VolumetricConvolution': lambda name, f: _convolution3d(name, f) + ')',
    'nn.VolumetricDilatedConvolution': lambda name, f: _bias(f, _convolution3d(name, f) + _dilation(
        f, 'dilationT', 'dilationW', 'dilationH')),
    'nn.VolumetricFullConvolution': lambda name, f: (_convolution3d(name, f) + _pad(f, 'adjT', 'adjW', 'adjH')
                                                     + ')'),
    'nn.TemporalRowConvolution': lambda name, f: _bias(f, (
        f'{name}({_d(f["inputFrameSize"])}, {_d(f["kW"])}' + (f', {_d(f["dW"])}' if f['dW'] != 1 else '')
        + (f', {lua_tostring(f["padW"])}' if f.get('padW') else ''))),
    'nn.SpatialMaxPooling': lambda name, f: _pooling(name, f) + ')',
    'nn.SpatialAveragePooling': lambda name, f: _pooling(name, f) + ')',
    'nn.SpatialDilatedMaxPooling': lambda name, f: (_pooling(name, f) + _dilation(f, 'dilationW', 'dilationH')
                                                    + ')'),
    'nn.VolumetricMaxPooling': lambda name, f: _pooling3d(name, f) + ')',
    'nn.VolumetricAveragePooling': lambda name, f: _pooling3d(name, f) + ')',
    'nn.VolumetricDilatedMaxPooling': lambda name, f: (_pooling3d(name, f) + _dilation(
        f, 'dilationT', 'dilationW', 'dilationH') + ')'),
    'nn.SpatialFractionalMaxPooling': lambda name, f: (
        f'{name}({_d(f.get("outW") or f["ratioW"])}x{_d(f.get("outH") or f["ratioH"])}, '
        f'{_d(f["poolSizeW"])},{_d(f["poolSizeH"])})'),
    'nn.SpatialMaxUnpooling': lambda name, f: 'nn.SpatialMaxUnpooling associated to ' + lua_string(f['pooling']),
    'nn.VolumetricMaxUnpooling': lambda name, f: 'nn.VolumetricMaxUnpooling associated to ' + lua_string(
        f['pooling']),
    'nn.SpatialZeroPadding': _padding, 'nn.SpatialReflectionPadding': _padding,
    'nn.SpatialReplicationPadding': _padding,
    'nn.VolumetricReplicationPadding': lambda name, f: (
        f'{name}(left={_d(f["pleft"])}, right={_d(f["pright"])}, top={_d(f["ptop"])}, '
        f'bottom={_d(f["pbottom"])}, front={_d(f["pfront"])}, back={_d(f["pback"])})'),
    'nn.UpSampling': lambda name, f: (
        f'{name}({_d(f["scale_factor"])}x, {f["mode"]})' if f.get('scale_factor') is not None
        else f'{name}({"x".join(_d(f[k]) for k in ("odepth", "oheight", "owidth") if f.get(k) is not None)}, '
             f'{f["mode"]})'),
    'nn.SpatialUpSamplingBilinear': lambda name, f: (
        f'{name}({_d(f["scale_factor"])})' if f.get('scale_factor') is not None
        else f'{name}({_d(f["oheight"])}, {_d(f["owidth"])})'),
    'cudnn.PooledSpatialConvolution': lambda name, f: (
        f'{name}({_d(f["nInputPlane"])} -> {_d(f["nOutputPlane"])}, {_d(f["kH"])}x{_d(f["kW"])}, '
        f'pool{_d(f["poolSize"])})'),
    'nn_plus.ChannelInterlace': lambda name, f: (
        f'ChannelInterlace : #channel={_d(f["channel"])}, #group={_d(f["group"])}, '
        f'group size={_d(f["channel"] / f["group"])}'),
}
# Classes that inherit their parent's __tostring__ (printing their own class name).
_INHERITS = {
    'nn.LSTM': 'nn.FastLSTM', 'nn.Sequencer': 'nn.Decorator', 'nn.Recursor': 'nn.Decorator',
    'nn.MaskZero': 'nn.Decorator', 'nn.DontCast': 'nn.Decorator', 'nn.Bottle': 'nn.Decorator',
    'nn.WeightNorm': 'nn.Decorator', 'nn.Serial': 'nn.Decorator', 'nn.Inception': 'nn.Decorator',
    'nn.DepthConcat': 'nn.Concat', 'nn.SpatialBatchNormalization': 'nn.BatchNormalization',
    'nn.VolumetricBatchNormalization': 'nn.BatchNormalization', 'nn.SpatialLPPooling': 'nn.Sequential',
    'nn.LayerNormalization': 'nn.Sequential', 'nn.Maxout': 'nn.Sequential',
    'cudnn.SpatialConvolution': 'nn.SpatialConvolution', 'cudnn.SpatialFullConvolution': 'nn.SpatialFullConvolution',
    'cudnn.VolumetricConvolution': 'nn.VolumetricConvolution',
    'cudnn.VolumetricFullConvolution': 'nn.VolumetricFullConvolution',
    'cudnn.SpatialMaxPooling': 'nn.SpatialMaxPooling', 'cudnn.SpatialAveragePooling': 'nn.SpatialAveragePooling',
    'inn.SpatialMaxPooling': 'nn.SpatialMaxPooling', 'inn.SpatialAveragePooling': 'nn.SpatialAveragePooling',
}


def lua_string(obj):
    """tostring() of a Torch7 object as Lua prints it: its class's __tostring__, or its class name."""
    if not isinstance(obj, TorchObject):
        return lua_tostring(obj)
    name = obj.typename
    tostring = _TOSTRING.get(_INHERITS.get(name, name))
    if tostring is None:
        return name
    try:
        return tostring(name, obj.fields)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError):
        # A field this class's __tostring__ reads is missing or odd: Lua would stop here; the class name tells more.
        return name


def _scalar(value):
    if isinstance(value, torch.Tensor):
        name = TENSOR_CLASSES.get(value.dtype, str(value.dtype))
        return f'[{name} of size {"x".join(map(str, value.shape)) or "0"}]'
    if isinstance(value, Storage):
        return f'[{value.typename} of size {len(value)}]'
    if isinstance(value, LuaFunction):
        return f'function ({len(value.dumped)} bytes of bytecode)'
    if isinstance(value, str) and '\n' not in value:
        return value
    if isinstance(value, (str, bytes)):
        return repr(value)
    return lua_tostring(value)


def _label(key, shown):
    """A table key on one line: a table or object used as a key is named, not expanded."""
    target = key.table if isinstance(key, TableKey) else key
    if id(target) in shown:
        return f'<{shown[id(target)]}>'
    if isinstance(target, TorchObject):
        return lua_string(target).splitlines()[0] if is_module(target) else f'<{target.typename}>'
    if isinstance(target, (dict, list)):
        return f'<table of {len(target)}>'
    return _scalar(target)


def _key_order(item):
    key = item[0]
    if isinstance(key, str):
        return 0, key, 0
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return 1, '', key
    return 2, '', 0


def tree(value, path='root', shown=None):
    """Any loaded value as an indented tree: tables as { key : value }, modules as Lua prints them; a table met
    again (Lua data is often shared or cyclic) is named by where it was first shown."""
    shown = {} if shown is None else shown
    if is_module(value):
        return lua_string(value)
    if not isinstance(value, (dict, list, TorchObject)):
        return _scalar(value)
    if id(value) in shown:
        return f'<{shown[id(value)]}>'
    shown[id(value)] = path
    if isinstance(value, TorchObject):
        head, items = value.typename + ' ', sorted(value.fields.items(), key=_key_order)
    elif isinstance(value, list):
        head, items = '', list(enumerate(value, 1))
    else:
        head, items = '', sorted(value.items(), key=_key_order)
    if not items:
        return head + '{}'
    lines = []
    for key, v in items:
        label = _label(key, shown)
        sub = f'{path}.{key}' if isinstance(key, str) else f'{path}[{label}]'
        lines.append(f'  {label} : ' + _indent(tree(v, sub, shown), '  '))
    return head + '{\n' + '\n'.join(lines) + '\n}'


def print_file(path):
    value = load(path)
    print(lua_string(value) if is_module(value) else tree(value))


def convert(source, target, place=None):
    """Writes the model in `source` as TorchScript: the file's module tree, or, in a file holding a table (a training
    checkpoint), the one nn module inside it that is not a criterion, or the module at `place` ('protos.rnn')."""
    if os.path.exists(target) and os.path.exists(source) and os.path.samefile(source, target):
        raise UserError(f'{target} is the file being converted: writing there would replace the Torch7 model; '
                        'give another name for the TorchScript file (such as model.pt)')
    lua = load(source)
    if place is not None:
        lua = find(lua, place)
        if not is_module(lua):
            raise UserError(f'{source} has at {place} ' + not_a_module(lua, lambda p: f'give PLACE {place}.{p}'))
    elif not is_module(lua):
        inside = modules_inside(lua)
        if len(inside) != 1:
            raise UserError(f'{source} holds ' + not_a_module(
                lua, lambda p: f'name the one to convert: python -m t7 convert {source} {target} {p}'))
        place, lua = inside[0]
    try:
        model = load_model(lua)
    except T7Error as e:
        if place is None:
            raise
        # Places inside the module tree are counted from the module taken, which the file holds at `place`.
        raise T7Error(f'{source}: the module at {place}: {e}') from None
    reason = unscriptable(model)
    if reason:
        raise UserError(f'cannot convert {source} to TorchScript: {reason}')
    with warnings.catch_warnings():
        # torch.jit.script warns that it is deprecated in favour of torch.export, which cannot take Lua tables.
        warnings.simplefilter('ignore', DeprecationWarning)
        try:
            scripted = torch.jit.script(model)
        except RuntimeError as e:
            raise UserError(f'cannot convert {source} to TorchScript: {first_line(e)}') from None
    partial = target + '.partial'
    try:
        torch.jit.save(scripted, partial)
        os.replace(partial, target)
    except (OSError, RuntimeError) as e:
        raise UserError(f'cannot write {target}: {getattr(e, "strerror", None) or e}') from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    print(f'wrote {target}: TorchScript of {lua.typename}{f" at {place}" if place else ""}; '
          'run it with torch.jit.load')


def main(argv):
    """Runs `print FILE` or `convert FILE.t7 OUT.pt`; returns the exit status."""
    if argv in (['-h'], ['--help']):
        print(USAGE)
        return 0
    if not ((argv[:1] == ['print'] and len(argv) == 2) or (argv[:1] == ['convert'] and len(argv) in (3, 4))):
        print(f'python -m t7: {USAGE}', file=sys.stderr)
        return 2
    # Printing and searching a table go one call deeper per level, and t7.load reads up to _MAX_DEPTH levels.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * _MAX_DEPTH + 500))
    try:
        if argv[0] == 'print':
            print_file(argv[1])
        else:
            convert(*argv[1:])
    except UserError as e:
        print(f'python -m t7: {" ".join(str(e).split())}', file=sys.stderr)
        return 1
    except RecursionError:
        print(f'python -m t7: {argv[1]} nests its tables too deeply to {argv[0]}', file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of a pipe (`| head`) has gone: stop quietly, as Lua's print would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        sys.setrecursionlimit(limit)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
