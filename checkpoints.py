"""Port of clcNet's checkpoints.lua (latest.t7, model_best.t7) and of lcnn's per-epoch model_N.t7 /
optimState_N.t7 saving, every file written whole under a temporary name and then renamed into place."""
import copy
import itertools
import os
import re

import t7
from errors import UserError, lua_print

# Temporary names must not look like checkpoints: -resume picks the highest optimState_N.t7 it finds anywhere in
# a file name, so a half-written 'optimState_3.t7.partial' left by a killed run would pass for a finished epoch.
_TMP_PREFIX = '.incomplete-'
_counter = itertools.count()


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path, write):
    """write(f) fills a temporary binary file next to `path`, which then replaces `path` in one rename. It gets a
    file object, not the temporary name: a failure to write it (a full disk) is then reported for `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f'{_TMP_PREFIX}{os.getpid()}-{next(_counter)}')
    try:
        with open(tmp, 'wb', buffering=1 << 20) as f:
            write(f)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(directory)
    except OSError as e:
        raise UserError(f'cannot write {path}: {e.strerror}; check the space and permissions of {directory}') \
            from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_incomplete(directory):
    """Delete the temporary files of a run that was killed while saving."""
    for name in os.listdir(directory):
        if name.startswith(_TMP_PREFIX):
            os.remove(os.path.join(directory, name))


def save_object(path, obj):
    """torch.save(path, obj) of a plain Lua value (tables, numbers, tensors)."""
    _atomic(path, lambda f: t7.save(f, obj))


def save_text(path, text):
    """A small text file (the run's options.json)."""
    _atomic(path, lambda f: f.write(text.encode('utf-8')))


def save_model(path, net):
    """torch.save of the network as its nn/cudnn module tree, from a float32 CPU copy (the training network is
    left untouched, as clcNet's deepCopy(model):float() does)."""
    clean = copy.deepcopy(net).float().cpu()
    _atomic(path, lambda f: t7.save_model(f, clean))


def save_epoch(opt, epoch, net, optim_state):
    """lcnn's end of train(): model_N.t7, then optimState_N.t7, whose presence marks epoch N as complete."""
    save_model(os.path.join(opt.save, f'model_{epoch}.t7'), net)
    save_object(os.path.join(opt.save, f'optimState_{epoch}.t7'), optim_state)


def saved_epochs(folder):
    """The epochs N whose optimState_N.t7 (written after model_N.t7) is in `folder`: lcnn's finished epochs."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    # Whole names only (Lua's pattern also took 'optimState_7.t7.bak' and the like for a finished epoch).
    return sorted(int(m[1]) for name in names if (m := re.fullmatch(r'optimState_([0-9]+)\.t7', name))
                  and os.path.isfile(os.path.join(folder, name)))


def interrupted_line(opt):
    """What a run stopped by Ctrl-C says in its log: what it leaves to resume."""
    if opt.testOnly:
        return 'Interrupted (Ctrl-C) while testing'
    epochs = saved_epochs(opt.save)
    if epochs:
        return (f'Interrupted (Ctrl-C): epoch {epochs[-1]} is the last one saved; python main.py -resume {opt.save} '
                f'goes on from epoch {epochs[-1] + 1}')
    if os.path.isfile(os.path.join(opt.save, 'latest.t7')):
        return f'Interrupted (Ctrl-C): python main.py -resume {opt.save} goes on from its latest.t7'
    return f'Interrupted (Ctrl-C) before any epoch was saved: {opt.save} holds nothing to resume'


def latest(opt):
    """checkpoint.latest: (the latest.t7 table, its optimState) of -resume DIR, or (None, None)."""
    if opt.resume == 'none':
        return None, None
    latest_path = os.path.join(opt.resume, 'latest.t7')
    if not os.path.isfile(latest_path):
        return None, None
    lua_print('=> Loading checkpoint ' + latest_path)
    try:
        info = t7.load(latest_path)
        optim_path = os.path.join(opt.resume, info['optimFile'])
        optim_state = t7.load(optim_path)
    except (t7.T7Error, KeyError, TypeError, OSError) as e:
        raise UserError(f'-resume {opt.resume}: cannot read its latest checkpoint ({e}); '
                        'delete latest.t7 to start over') from None
    return info, optim_state


def save(epoch, net, optim_state, is_best, opt):
    """checkpoint.save: model_N.t7, optimState_N.t7, then latest.t7 naming them (and model_best.t7 if best)."""
    model_file = f'model_{epoch}.t7'
    optim_file = f'optimState_{epoch}.t7'
    save_model(os.path.join(opt.save, model_file), net)
    save_object(os.path.join(opt.save, optim_file), optim_state)
    save_object(os.path.join(opt.save, 'latest.t7'),
                {'epoch': epoch, 'modelFile': model_file, 'optimFile': optim_file})
    if is_best:
        save_model(os.path.join(opt.save, 'model_best.t7'), net)
