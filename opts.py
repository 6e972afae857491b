"""Port of lcnn's opts.lua (plus clcNet's opts.lua options) on a port of torch7's CmdLine.lua: the command line."""
import json
import math
import os
import re
import sys
import time
from types import SimpleNamespace

import checkpoints
import models
from models import resnet

PROG = 'main.py'

# Classes of the datasets -dataset accepts; -nClasses 0 (clcNet's "unset") and -dataset digits without -nClasses
# resolve through this table.
DATASET_CLASSES = {'imagenet': 1000, 'digits': 10}

CLCNET_NETTYPES = ('clcnet', 'clcneta', 'clcnetb')
# clcNet's stage depths (a, b, c, d) behind its two named networks.
CLCNET_DEFAULT_LR = 0.1
CLCNET_DEFAULT_WEIGHT_DECAY = 1e-4
CLCNET_STAGES = {'clcneta': (1, 1, 5, 2), 'clcnetb': (1, 1, 7, 3)}
CLCNET_DEFAULT_EPOCHS = 100

# A run folder's record of its options (RUN_OPTIONS, JSON), which -resume DIR restores: every option but these.
RUN_OPTIONS = 'options.json'
NOT_RESTORED = frozenset({'resume', 'save', 'epochNumber'})
# Options that only shape the network a run creates: a resumed run loads the one it saved, so changing them does
# nothing but make the record false.
NETWORK_OPTIONS = frozenset({'netType', 'depth', 'shortcutType', 'dropout', 'poolSize', 'pool1', 'pool2', 'pool3',
                             'pool4', 'firstPool', 'fcPool', 'classifierPool', 'a', 'b', 'c', 'd'})

# Numeric options outside the values their code can take: (name, lowest value, whole numbers only, why).
# Checked as given, before -breakBatch divides the batch.
_INF = math.inf
_RANGES = (
    ('batchSize', 1, True, 'a batch needs at least 1 sample'),
    ('epochSize', 1, True, 'an epoch needs at least 1 batch'),
    ('nEpochs', -_INF, True, 'epochs are counted in whole numbers'),
    ('epochNumber', 1, True, 'epochs are numbered from 1'),
    ('nDonkeys', 0, True, 'a count of data loading processes (0 loads in the main process)'),
    ('nThreads', 0, True, 'a count of data loading processes (0 loads in the main process)'),
    ('nGPU', 1, True, 'a count of processes'),
    ('GPU', 1, True, 'GPUs are numbered from 1'),
    ('manualSeed', -_INF, True, 'a seed is a whole number'),
    ('nLastIterAccuracy', 1, True, 'the recent accuracy needs at least 1 iteration'),
    ('imageSize', 1, True, 'a size in pixels'),
    ('cropSize', 1, True, 'a size in pixels'),
    ('nClasses', 0, True, 'a count of classes'),
    ('poolSize', 1, True, 'a lookup dictionary needs at least 1 entry'),
    ('firstPool', 1, True, 'a lookup dictionary needs at least 1 entry'),
    ('pool1', 1, True, 'a lookup dictionary needs at least 1 entry'),
    ('pool2', 1, True, 'a lookup dictionary needs at least 1 entry'),
    ('pool3', 1, True, 'a lookup dictionary needs at least 1 entry'),
    ('pool4', 1, True, 'a lookup dictionary needs at least 1 entry'),
    ('fcPool', 0, True, 'a dictionary size (0 keeps the layer dense)'),
    ('classifierPool', 0, True, 'a dictionary size (0 keeps the layer dense)'),
    ('LR', 0, False, 'a negative learning rate climbs the loss instead of descending it'),
    ('momentum', 0, False, 'momentum is not negative'),
    ('weightDecay', 0, False, 'weight decay is not negative'),
    ('lambda', 0, False, 'a negative regulariser rewards dense weights'),
    ('initialSparsity', 0, False, 'a threshold on weight magnitudes is not negative'),
    ('dropout', 0, False, 'a ratio is not negative'),
    ('a', 0, True, 'a count of layers'),
    ('b', 0, True, 'a count of layers'),
    ('c', 0, True, 'a count of layers'),
    ('d', 0, True, 'a count of layers'),
)

# lcnn leaves these out of the run folder name; ours are display / inference switches that change nothing trained.
SAVE_NAME_IGNORE = frozenset({'netType', 'retrain', 'loadParams', 'optimState', 'cache', 'data', 'nEpochs',
                              'noCheckpoint', 'lookup', 'noProgress'})

_WS = '[ \t\n\v\f\r]*'
# LuaJIT's tonumber grammar (lj_strscan with STRSCAN_OPT_TONUM): decimal, hex (with a binary exponent), binary,
# inf/infinity/nan in any case, optional sign, surrounding C whitespace. Anything else (suffixes, '_', a bare '.')
# is not a number.
_NUMBER = re.compile(
    _WS + r'(?P<sign>[+-]?)(?:'
    r'0[xX](?P<hex>(?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?(?P<hexp>[0-9]+))?)'
    r'|0[bB](?P<bin>[01]+)'
    r'|(?P<dec>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?(?P<dexp>[0-9]+))?)'
    r'|(?P<inf>[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)'
    r'|(?P<nan>[nN][aA][nN])'
    r')' + _WS + r'\Z', re.ASCII)
_MAX_EXPONENT = 1 << 20  # LuaJIT rejects exponents this large instead of saturating
_MAX_BINARY_DIGITS = 64

_DAYS = ('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')
_MONTHS = ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec')


def lua_number(x):
    """A Lua number as Python: int when integral and |x| <= 2**53 (so %d and indexing work), else float."""
    if isinstance(x, int):
        return x
    if math.isfinite(x) and x.is_integer() and abs(x) <= 2 ** 53:
        return int(x)
    return x


def lua_tonumber(text):
    """Lua's tonumber(text) as LuaJIT 2.1 parses it, or None where Lua gives nil."""
    m = _NUMBER.match(text)
    if m is None:
        return None
    negative = m['sign'] == '-'
    if m['inf'] is not None:
        return -math.inf if negative else math.inf
    if m['nan'] is not None:
        return math.nan
    exponent = m['dexp'] or m['hexp']
    if exponent is not None and int(exponent) >= _MAX_EXPONENT:
        return None
    if m['dec'] is not None:
        value = float(m['dec'])
    elif m['hex'] is not None:
        try:
            value = float.fromhex('0x' + m['hex'])
        except OverflowError:
            value = math.inf  # Lua scales with ldexp, which saturates
    else:
        if len(m['bin'].lstrip('0')) > _MAX_BINARY_DIGITS:
            return None
        value = float(int(m['bin'], 2))
    return lua_number(-value if negative else value)


def lua_tostring(value):
    """Lua's tostring for the values an option table holds (numbers use LuaJIT's %.14g)."""
    if value is None:
        return 'nil'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return '%.14g' % value
    return str(value)


def os_date(when=None):
    """Lua's os.date(): C's %c in the C locale, e.g. 'Sun Nov  2 00:22:16 2026' (day padded with a space)."""
    t = time.localtime() if when is None else when
    return (f'{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} '
            f'{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}')


def paths_concat(*names):
    """torch's paths.concat on POSIX: start at the working directory, an absolute name restarts at '/', '.' is
    dropped, '..' removes the previous component, and trailing slashes go."""
    out = os.getcwd()
    for name in names:
        if name.startswith('/'):
            out = '/'
        for part in name.split('/'):
            if part in ('', '.'):
                continue
            if part == '..':
                out = out.rstrip('/')
                out = out[:out.rfind('/') + 1]
                continue
            if not out.endswith('/'):
                out += '/'
            out += part
        out += '/'
        while len(out) > 1 and out.endswith('/'):
            out = out[:-1]
    return out


class Options(SimpleNamespace):
    """The parsed option table (Lua's opt): one attribute per option name; vars(opt) gives name -> value.

    Kept beside the table, out of vars(opt) (print(opt) and log.txt show Lua's fields only): `command`, what a run
    folder records (`values`: every option before post-processing, `given`: the names set on a command line), and
    `restored`, what -resume read: (the options file or None, [(name, recorded value, command-line value)]).
    """
    __slots__ = ('command', 'restored')

    def __reduce__(self):
        # copies and the pickles DDP workers get keep the slots
        return (type(self), (), (dict(vars(self)), {k: getattr(self, k) for k in self.__slots__ if hasattr(self, k)}))

    @property
    def lambda_(self):
        # 'lambda' is a Python keyword: opt.lambda cannot be written, getattr(opt, 'lambda') can.
        return getattr(self, 'lambda')


class _Option:
    def __init__(self, key, default, help):
        self.key = key
        self.name = key.lstrip('-')
        self.default = default
        self.help = help
        self.type = 'boolean' if isinstance(default, bool) else 'string' if isinstance(default, str) else 'number'


def _fail(message):
    print(f'{PROG}: {message}', file=sys.stderr)
    raise SystemExit(2)


class CmdLine:
    """torch.CmdLine: single-dash options with typed defaults, help lines, the run-name string and the log."""

    def __init__(self, argseparator=',', keyseparator='='):
        self.argseparator = argseparator
        self.keyseparator = keyseparator
        self.options = {}
        self.helplines = []

    def text(self, txt=''):
        self.helplines.append(txt)

    def option(self, key, default, help):
        # A key declared twice keeps the last declaration, but both stay in the help, as in Lua.
        self.options[key] = _Option(key, default, help)
        self.helplines.append(self.options[key])

    def default(self):
        return {o.name: o.default for o in self.options.values()}

    def parse(self, argv):
        """Returns (params, given): the option values and the names set on the command line. Exits on -h and on
        bad input. Booleans flip their default when given alone, or take a following 'true' / 'false'."""
        params = self.default()
        given = set()
        i = 0
        while i < len(argv):
            token = argv[i]
            if token in ('-help', '-h', '--help'):
                sys.stdout.write(self.help())
                raise SystemExit(0)
            option = self.options.get(token)
            if option is None:
                if token.startswith('-') and len(token) > 1:
                    _fail(f'unknown option {token!r} ({PROG} -h lists the options)')
                _fail(f'unexpected argument {token!r}: {PROG} takes only -options ({PROG} -h lists them)')
            if option.type == 'boolean':
                if i + 1 < len(argv) and argv[i + 1] in ('true', 'false'):
                    value = argv[i + 1] == 'true'
                    i += 2
                else:
                    value = not option.default
                    i += 1
            else:
                if i + 1 >= len(argv):
                    _fail(f'missing argument for option {token} (it takes a {option.type})')
                value = argv[i + 1]
                if option.type == 'number':
                    number = lua_tonumber(value)
                    if number is None:
                        _fail(f'invalid value {value!r} for option {token} (should be a number)')
                    value = number
                i += 2
            params[option.name] = value
            given.add(option.name)
        return params, given

    def string(self, prefix, params, ignore):
        """The run name: prefix, then 'key=value' for every non-default option outside ignore, sorted, joined
        with the argument separator (booleans as t / f)."""
        parts = []
        for name, value in params.items():
            option = self.options.get('-' + name)
            if name in ignore or option is None or value == option.default:
                continue
            if isinstance(value, bool):
                value = 't' if value else 'f'
            parts.append(name + self.keyseparator + lua_tostring(value))
        parts.sort()
        return self.argseparator.join([prefix] + parts) if parts else prefix

    def help(self, prog=PROG):
        lines = [f'Usage: {prog} [options]']
        width = max(len(o.key) for o in self.options.values())
        for entry in self.helplines:
            if isinstance(entry, _Option):
                lines.append(f'  {entry.key.ljust(width)} {entry.help} [{lua_tostring(entry.default)}]')
            else:
                lines.append(entry)
        return '\n'.join(lines) + '\n'


def _declare():
    cmd = CmdLine()
    cmd.text()
    cmd.text('Torch-7 Imagenet Training script')
    cmd.text()
    cmd.text('Options:')
    # lcnn's declarations, in its order (general, data, training, optimization, model).
    cmd.option('-cache', './cache/', 'subdirectory in which to save/log experiments')
    cmd.option('-data', 'data/', 'Home of the dataset')
    cmd.option('-dataset', 'imagenet', 'Dataset Name: imagenet is the only option')
    cmd.option('-manualSeed', 2, 'Manually set RNG seed')
    cmd.option('-GPU', 1, 'Default preferred GPU')
    cmd.option('-nGPU', 1, 'Number of GPUs to use by default')
    cmd.option('-noCheckpoint', False, "Don't save model checkpoints")
    cmd.option('-testOnly', False, 'only perform one validation epoch and exit')
    cmd.option('-benchmark', False, 'benchmark the loaded model and exit')
    cmd.option('-logSparsity', False, 'print out the sparity on each layer of the network')
    cmd.option('-nLastIterAccuracy', 100, 'number of last iterations for reporting the "recent accuracy"')
    cmd.option('-nDonkeys', 8, 'number of donkeys to use (data loading threads)')
    cmd.option('-imageSize', 256, 'Smallest side of the resized image')
    cmd.option('-cropSize', 224, 'Height and Width of image crop to be used as input layer')
    cmd.option('-nClasses', 1000, 'number of classes in the dataset')
    cmd.option('-nEpochs', 55, 'Number of total epochs to run')
    cmd.option('-epochSize', 10000, 'Number of batches per epoch')
    cmd.option('-epochNumber', 1, 'Manual epoch number (useful on restarts)')
    cmd.option('-batchSize', 128, 'mini-batch size (1 = pure stochastic)')
    cmd.option('-breakBatch', 1, 'break each batch to this many pieces to fit into memory')
    cmd.option('-LR', 1, 'learning rate multiplier; multiplies the default LR regime with this number')
    cmd.option('-momentum', 0.9, 'optimizer momentum')
    cmd.option('-weightDecay', 0, 'weight decay')
    cmd.option('-shareGradInput', True, 'Sharing the gradient memory for resnet')
    cmd.option('-updateLRregime', False, 'Update lr regime of the model loaded with the one in the model definition')
    cmd.option('-constantLR', -1, 'keep learning constantly this value')
    cmd.option('-netType', 'alexnet-lcnn', 'Options: alexnet | alexnet-lcnn | resnet | resnet-lcnn')
    cmd.option('-criterion', 'classnll', 'Options: clasnll | ranking')
    cmd.option('-depth', 18, 'ResNet depth: 18 | 34 | 50 | 101 | ...')
    cmd.option('-shortcutType', '', 'Options: A | B | C')
    cmd.option('-optimType', 'sgd', 'Options: sgd | adam')
    cmd.option('-retrain', 'none', 'provide path to model to retrain with')
    cmd.option('-resume', 'none', 'resume training for a directory')
    cmd.option('-loadParams', 'none', 'provide path to model to load the parameters')
    cmd.option('-optimState', 'none', 'provide path to an optimState to reload from')
    cmd.option('-shortcutType', 'B', 'type of short cut in resnet: A|B|C')
    cmd.option('-dropout', 0.5, 'Dropout ratio')
    cmd.option('-poolSize', 100, 'poolSize of PooledSpatialConvolution')
    cmd.option('-pool1', 100, 'poolSize of 1st block types of resnet')
    cmd.option('-pool2', 100, 'poolSize of 2nd block types of resnet')
    cmd.option('-pool3', 100, 'poolSize of 3rd block types of resnet')
    cmd.option('-pool4', 100, 'poolSize of 4th block types of resnet')
    cmd.option('-lambda', 0, 'The regularization factor for PooledSpatialConvolution')
    cmd.option('-firstPool', 3, 'The size of vector pool for the first layer')
    cmd.option('-fcPool', 1024, 'The size of dictionary for the fully connected layers')
    cmd.option('-classifierPool', 0, 'Pool size for the classification layer')
    cmd.option('-initialSparsity', 0.01, 'initial sparsity of pooled convolutional layers')
    cmd.text()
    # clcNet's options that lcnn lacks. Its 'false'-string switches are booleans here (it tests `~= 'false'`).
    cmd.text('clcNet options:')
    cmd.option('-backend', 'cudnn', 'Options: cudnn | cunn')
    cmd.option('-cudnn', 'fastest', 'Options: fastest | default | deterministic')
    cmd.option('-gen', 'gen', 'Path to save generated files')
    cmd.option('-precision', 'single', 'Options: single | double | half')
    cmd.option('-nThreads', 2, 'number of data loading threads')
    cmd.option('-tenCrop', False, 'Ten-crop testing')
    cmd.option('-save', '', "Directory in which to save checkpoints ('' = cache/<netType,options>/<date>)")
    for name, stage in zip('abcd', '1234'):
        cmd.option('-' + name, 0, f'number of 1-stride layers for net stage {stage} (see paper for more details)')
    cmd.option('-optnet', False, 'Use optnet to reduce memory usage')
    cmd.option('-resetClassifier', False, 'Reset the fully connected layer for fine-tuning')
    cmd.text()
    cmd.text('lcnn-torch options:')
    cmd.option('-lookup', False, 'run -testOnly/-benchmark with the compiled fast lookup engine')
    cmd.option('-noProgress', False, 'disable tqdm progress bars')
    cmd.option('-classes', '', "train and test on these classes only, e.g. 0,1,2,3,4: class names of the data, "
               "relabelled 0.. in this order ('' = all); lcnn loaders (digits, -data folders)")
    cmd.option('-samplesPerClass', 0, 'train on this many images per class, a class-balanced subset drawn with '
               '-manualSeed (0 = all); lcnn loaders (digits, -data folders)')
    cmd.option('-freezeDictionary', False, "keep every lookup layer's dictionary (poolconv) fixed while the rest "
               'trains; fine-tune with -retrain FILE -resetClassifier')
    cmd.text()
    return cmd


def _lua_mod(a, b):
    # Lua's a % b = a - floor(a/b)*b, including its nan results for infinite operands.
    q = a / b
    return a - (math.floor(q) if math.isfinite(q) else q) * b


def _check_ranges(opt):
    for name, lowest, whole, why in _RANGES:
        value = getattr(opt, name)
        if not value >= lowest or (whole and not (math.isfinite(value) and float(value).is_integer())):
            wanted = 'a whole number' if whole else 'a number'
            if lowest > -math.inf:
                wanted += f' >= {lowest}'
            _fail(f'-{name} {lua_tostring(value)}: give {wanted} ({why})')


def _break_batch(opt):
    if opt.breakBatch > 1:
        if _lua_mod(opt.batchSize, opt.breakBatch) != 0:
            _fail(f'-batchSize {lua_tostring(opt.batchSize)} must be divisible by '
                  f'-breakBatch {lua_tostring(opt.breakBatch)}')
        opt.batchSize = lua_number(opt.batchSize / opt.breakBatch)
        opt.epochSize = lua_number(opt.epochSize * opt.breakBatch)
        opt.nLastIterAccuracy = lua_number(opt.nLastIterAccuracy * opt.breakBatch)


def _restore(cmd, params, given):
    """-resume DIR: the options DIR/options.json recorded, with those given on this command line over them.

    Returns (params, given, restored) as Options.restored describes it; a folder without the file (a run from
    before options were recorded, or a Lua run) keeps the command line alone, as Lua did.
    """
    path = os.path.join(params['resume'], RUN_OPTIONS)
    if not os.path.isfile(path):
        return params, given, (None, [])
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
        values, recorded_given = record['values'], record['given']
        if not isinstance(values, dict) or not isinstance(recorded_given, list):
            raise ValueError('values and given are not a table and a list')
    except (OSError, ValueError, KeyError, TypeError) as e:
        _fail(f'-resume {params["resume"]}: cannot read {path} ({e}); delete it and give the options of the run '
              'on the command line')
    merged = cmd.default()
    for name, value in values.items():
        option = cmd.options.get('-' + name)
        if option is None or name in NOT_RESTORED:
            continue  # an option this version does not have, or one -resume sets itself
        if option.type != _value_type(value):
            _fail(f'-resume {params["resume"]}: {path} holds {value!r} for -{name}, which takes a {option.type}; '
                  f'give -{name} on the command line')
        merged[name] = lua_number(value) if option.type == 'number' else value
    changed = []
    for name in sorted(given):
        if name not in NOT_RESTORED and params[name] != merged[name]:
            changed.append((name, merged[name], params[name]))
        merged[name] = params[name]
    for name in NOT_RESTORED:
        merged[name] = params[name]
    return merged, (set(recorded_given) - NOT_RESTORED) | given, (path, changed)


def _value_type(value):
    if isinstance(value, bool):
        return 'boolean'
    if isinstance(value, (int, float)):
        return 'number'
    return 'string' if isinstance(value, str) else type(value).__name__


def _resume(opt):
    """-resume DIR: save there and continue after the highest optimState_N.t7 in it."""
    opt.save = opt.resume
    try:
        names = os.listdir(opt.resume)
    except OSError as e:
        _fail(f'-resume {opt.resume!r}: cannot read that folder ({e.strerror}); give the run folder to resume')
    opt.epochNumber = max(checkpoints.saved_epochs(opt.resume), default=0) + 1
    if opt.epochNumber > 1:
        opt.retrain = '%s/model_%d.t7' % (opt.save, opt.epochNumber - 1)
        opt.optimState = '%s/optimState_%d.t7' % (opt.save, opt.epochNumber - 1)
    saved = opt.epochNumber > 1 or 'latest.t7' in names
    changed = [(name, old, new) for name, old, new in (opt.restored or (None, []))[1] if name in NETWORK_OPTIONS]
    if saved and changed:
        name, old, new = changed[0]
        _fail(f'-resume {opt.resume}: -{name} {lua_tostring(new)} differs from the run\'s {lua_tostring(old)}, but a '
              f'resumed run goes on with the network it saved; leave -{name} out (or start a new run)')


def _net_type(opt):
    # Checked here, before anything is written, so a typo costs one line instead of a run folder (model.py, the
    # ResNet model file and optim.py check these again for callers that build opt themselves).
    if opt.netType not in models.NET_TYPES:
        _fail(f"unknown -netType {opt.netType!r} (use one of {', '.join(models.NET_TYPES)})")
    if opt.optimType not in ('sgd', 'adam'):
        _fail(f'-optimType {opt.optimType}: use sgd or adam')
    if opt.criterion != 'classnll':
        _fail(f'-criterion {opt.criterion}: only classnll is available (nn.ClassRankingLoss was never part of nn)')
    if opt.shortcutType not in ('', 'A', 'B', 'C'):
        _fail(f"-shortcutType {opt.shortcutType}: use A, B or C")
    if opt.netType in ('resnet', 'resnet-lcnn') and opt.depth not in resnet.CONFIGS:
        _fail(f"-depth {lua_tostring(opt.depth)} for {opt.netType}: use one of {', '.join(map(str, resnet.CONFIGS))}")


def _clcnet(opt, given):
    """clcNet's post-processing, for the options it owns and for clcNet networks."""
    if opt.netType in CLCNET_NETTYPES:
        if 0 in (opt.a, opt.b, opt.c, opt.d):
            if opt.netType not in CLCNET_STAGES:
                _fail('-netType clcnet needs nonzero -a -b -c -d (or use -netType clcneta / clcnetb)')
            opt.a, opt.b, opt.c, opt.d = CLCNET_STAGES[opt.netType]
            opt.netType = 'clcnet'
        if opt.nEpochs == 0:
            opt.nEpochs = CLCNET_DEFAULT_EPOCHS
        # lcnn's -LR multiplies a regime (default 1) where clcNet's is the initial rate itself: a clcNet network
        # left at lcnn's defaults would train at 10x its recipe's rate with no weight decay.
        if 'LR' not in given:
            opt.LR = CLCNET_DEFAULT_LR
        if 'weightDecay' not in given:
            opt.weightDecay = CLCNET_DEFAULT_WEIGHT_DECAY
    if opt.precision not in ('single', 'double', 'half'):
        _fail(f'unknown -precision {opt.precision!r} (use single, double or half)')
    if opt.resetClassifier and not ('nClasses' in given and opt.nClasses != 0) and opt.classes == '':
        _fail('-resetClassifier needs -nClasses N (or -classes), the class count of the new classifier')
    if opt.optnet and opt.shareGradInput:
        if 'shareGradInput' in given:
            _fail('cannot use both -shareGradInput and -optnet')
        # shareGradInput is on by lcnn's default; -optnet replaces it.
        opt.shareGradInput = False


def _dataset(opt, given):
    if opt.dataset not in DATASET_CLASSES:
        _fail(f'unknown -dataset {opt.dataset!r} (use {" or ".join(DATASET_CLASSES)})')
    if opt.cropSize > opt.imageSize and not opt.benchmark:
        # Both datasets cut the crop from the image scaled to -imageSize; -benchmark reads no image.
        _fail(f'-cropSize {lua_tostring(opt.cropSize)} is larger than -imageSize {lua_tostring(opt.imageSize)}; '
              f'give an -imageSize at least as large')
    if opt.tenCrop and opt.dataset == 'digits':
        _fail('-tenCrop: ten-crop testing cuts ImageNet-style images (-dataset imagenet); the digits set is tested '
              'on its centre crop: leave -tenCrop out')
    if opt.nClasses == 0 or 'nClasses' not in given:
        opt.nClasses = DATASET_CLASSES[opt.dataset]


def _subset(opt, given):
    """-classes and -samplesPerClass: checked here, applied by the lcnn loaders (data/digits.py, data/donkey.py)."""
    if not isinstance(opt.samplesPerClass, int) or opt.samplesPerClass < 0:
        _fail(f'-samplesPerClass {lua_tostring(opt.samplesPerClass)}: give a whole number of images per class '
              '(0 = all)')
    if opt.classes != '':
        names = opt.classes.split(',')
        if '' in names or len(set(names)) != len(names):
            _fail(f'-classes {opt.classes!r}: give distinct class names separated by commas, e.g. 0,1,2,3,4')
        if 'nClasses' not in given:
            opt.nClasses = len(names)
    if (opt.classes != '' or opt.samplesPerClass > 0) and opt.netType in CLCNET_NETTYPES and opt.dataset != 'digits':
        _fail("-classes and -samplesPerClass work with lcnn's loaders only: with an ImageNet-style -data use an "
              'alexnet/resnet -netType, or -dataset digits')


def _epochs(opt):
    """Some epoch is left to train (after -resume has found the run's last one, and clcNet's 0 became its 100)."""
    if opt.testOnly or opt.benchmark or opt.epochNumber <= opt.nEpochs:
        return
    if opt.resume != 'none' and opt.epochNumber > 1:
        _fail(f'-resume {opt.resume}: finished at epoch {opt.epochNumber - 1}; raise -nEpochs to go on')
    _fail(f'-nEpochs {lua_tostring(opt.nEpochs)} with -epochNumber {lua_tostring(opt.epochNumber)}: no epoch to run, '
          f'so nothing runs; give -nEpochs {lua_tostring(opt.epochNumber)} or more (or -testOnly to test)')


def parse(argv):
    """opts.lua's M.parse: the option table after lcnn's post-processing (run folder name, -breakBatch, -resume)
    and clcNet's (-netType clcneta/clcnetb, -precision, -resetClassifier, -optnet). -resume DIR first restores the
    options DIR/options.json recorded (flags given here win). Writes nothing to disk: main.py creates opt.save, its
    log.txt (appending to it under -resume) and options.json. Bad input: one line on stderr, exit 2."""
    cmd = _declare()
    params, given = cmd.parse(list(argv or []))
    restored = None
    if params['resume'] != 'none':
        params, given, restored = _restore(cmd, params, given)
    opt = Options(**params)
    opt.command = {'values': dict(params), 'given': sorted(given)}
    opt.restored = restored
    _check_ranges(opt)
    if opt.save == '':
        opt.save = paths_concat(opt.cache, cmd.string(opt.netType, params, SAVE_NAME_IGNORE))
        opt.save = paths_concat(opt.save, os_date().replace(' ', ''))
    _break_batch(opt)
    if opt.resume != 'none':
        _resume(opt)
    _net_type(opt)
    if opt.lookup and not (opt.testOnly or opt.benchmark):
        _fail('-lookup: the compiled lookup engine only infers, for -testOnly and -benchmark; training runs the '
              'trainable layers: leave -lookup out, and test the trained model with -resume RUN -testOnly -lookup')
    _clcnet(opt, given)
    _dataset(opt, given)
    _subset(opt, given)
    _epochs(opt)
    return opt


def record_text(opt):
    """What a run folder's options.json holds: the options as given (before post-processing) and which were."""
    return json.dumps(opt.command, indent=1, sort_keys=True) + '\n'


def restored_lines(opt):
    """What -resume says about the options it restored (nothing without -resume)."""
    if opt.restored is None:
        return []
    path, changed = opt.restored
    if path is None:
        return [f'-resume {opt.resume}: no {RUN_OPTIONS} there (a run from before options were recorded): running '
                'with the options of this command line, as Lua did; the log.txt of the run lists those it had']
    if not changed:
        return [f'Restored the options of {path}']
    return [f'Restored the options of {path}; changed on the command line: ' +
            ', '.join(f'-{name} {lua_tostring(old)} -> {lua_tostring(new)}' for name, old, new in changed)]


def help_text():
    """What -h prints."""
    return _declare().help()


def log_text(opt, date=None):
    """What torch.CmdLine:log writes at the top of log.txt: each line is its print arguments joined by spaces plus
    ' \\n' (hence the trailing space); the option lines are sorted since Lua's table order is arbitrary."""
    date = os_date() if date is None else date
    lines = [f'[program started on {date}]', '[command line arguments]']
    lines += [f'{k} {lua_tostring(v)}' for k, v in sorted(vars(opt).items())]
    lines.append('[----------------------]')
    return ''.join(line + ' \n' for line in lines)


def format(opt):
    """Lua's print(opt) under th (trepl, no colours): '{', '  key : value' lines with strings in double quotes,
    '}'; keys sorted."""
    items = sorted(vars(opt).items())
    if not items:
        return '{}'
    lines = ['{']
    for k, v in items:
        lines.append(f'  {k} : ' + (f'"{v}"' if isinstance(v, str) else lua_tostring(v)))
    lines.append('}')
    return '\n'.join(lines)
