"""Port of lcnn's model.lua and clcNet's models/init.lua setup(): create the network (or load -retrain /
-loadParams / a checkpoint), place it on its device, wrap it for several processes (DDP where Lua used
DataParallelTable), and make the criterion."""
import contextlib
import copy
import io
import os

import torch
from torch import nn

import models
from models import resnet
import t7
import util
from errors import UserError, first_line, lua_print
from layers.containers import ConcatTable
from layers.legacy import lua_type
from layers.tables import CAddTable
from t7.convert import is_module, modules_inside, not_a_module
from layers.shape import View
from layers.PooledSpatialConvolution import PooledSpatialConvolution

_DTYPES = {'single': torch.float32, 'double': torch.float64, 'half': torch.float16}


def select_device(opt, local_rank=0):
    """-GPU (1-based, as cutorch.setDevice) plus the process's local rank on a CUDA machine, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device('cpu')
    index = int(opt.GPU) - 1 + local_rank
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise UserError(f'-GPU {opt.GPU} with {local_rank + 1} process(es) needs GPU {index + 1}, but this machine '
                        f'has {count}; lower -GPU or -nGPU')
    torch.cuda.set_device(index)
    return torch.device('cuda', index)


def load_model(path, flag):
    """torch.load of a saved network (Lua's or ours) as a module; from a file holding a table (a training
    checkpoint such as {model=..., criterion=..., epoch=...}), the one network in it, as `python -m t7 convert`
    takes it."""
    if not os.path.isfile(path):
        raise UserError(f'{flag} {path}: file not found')
    try:
        lua = t7.load(path)
        if not is_module(lua):
            inside = modules_inside(lua)
            if len(inside) != 1:
                how = (lambda place: 'save the one to use as a file of its own: python -c "import t7; t7.save_model('
                       f"'net.t7', t7.load_model(t7.find(t7.load('{path}'), '{place}')))\"")
                raise UserError(f'{flag} {path}: cannot read it as a Torch7 model: it holds {not_a_module(lua, how)}')
            place, lua = inside[0]
            lua_print(f'{flag} {path}: using the network at {place} of the table the file holds')
        return t7.load_model(lua)
    except t7.T7Error as e:
        raise UserError(f'{flag} {path}: cannot read it as a Torch7 model ({e})') from None


def create(opt):
    """The network of -netType, as its model file builds it."""
    try:
        return models.create(opt)
    except ValueError as e:
        raise UserError(str(e)) from None


def output_size(net):
    """How many scores the network gives an image, read off the last layer that makes scores (a fully connected
    layer, or a convolution as lcnn's classifiers are); None when it has neither."""
    for module in reversed(list(net.modules())):
        for attr in ('out_features', 'out_channels'):
            if isinstance(getattr(module, attr, None), int):
                return getattr(module, attr)
    return None


def check_input_size(net, opt):
    """One forward of two blank -cropSize images in evaluate mode (no statistics move, nothing random is drawn), so
    that a network made for other images stops here, in one line, instead of in its first batch with torch's
    traceback: a convolution left with no pixels, or a View sized for another input (which makes other rows)."""
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    size = f'3x{opt.cropSize}x{opt.cropSize}'
    modes = {m: m.training for m in net.modules()}
    logging = [m for m in net.modules() if getattr(m, 'log_sparsity', False)]
    try:
        for m in logging:
            m.log_sparsity = False  # -logSparsity prints once per training forward, as Lua did, and not for this one
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(2, 3, opt.cropSize, opt.cropSize, device=device, dtype=dtype))
    except (RuntimeError, ValueError) as e:
        raise UserError(f'-cropSize {opt.cropSize}: the network cannot take {size} images ({first_line(e)}); '
                        'give the -cropSize (and -imageSize) it was made for') from None
    finally:
        for m, training in modes.items():
            m.training = training
        for m in logging:
            m.log_sparsity = True
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != 2:
        rows = 'no tensor' if not isinstance(out, torch.Tensor) else f'an output of size {"x".join(map(str, out.shape))}'
        raise UserError(f'-cropSize {opt.cropSize}: the network makes {rows} from a batch of 2 {size} images, not '
                        'one row per image (a View sized for other images); give the -cropSize (and -imageSize) '
                        'it was made for')


def file_regime(opt):
    """The LRregime the -netType model file defines, or None. Lua only ran the file's definitions; the network
    built here to read it lives on the meta device (nothing allocated) and what its builder prints is dropped."""
    with torch.device('meta'), contextlib.redirect_stdout(io.StringIO()):
        net = create(opt)
    regime = getattr(net, 'LRregime', None)
    return regime if callable(regime) else None


def _own_regime(net, opt):
    """The regime of a -retrain file that carries one (Lua ran it: model.LRregime wins over everything; t7 keeps
    the bytecode as lua_LRregime) when -netType, not given, names a model file without one: the residual networks'
    (models/resnet.lua and resnet-lcnn.lua define the same), else None with a warning that the default regime runs
    instead."""
    if getattr(net, 'lua_LRregime', None) is None or 'netType' in opt.command['given']:
        return None
    modules = list(net.modules())
    if any(isinstance(m, ConcatTable) for m in modules) and any(isinstance(m, CAddTable) for m in modules):
        lua_print(f'=> {opt.retrain} carries its own LRregime (Lua code, which does not run here) and holds a '
                  'residual network: using the regime of models/resnet-lcnn.lua (give -netType to choose another)')
        return resnet.lr_regime
    lua_print(f'WARNING: {opt.retrain} carries its own LRregime (Lua code, which does not run here) and -netType '
              f'{opt.netType} defines none: the default regime runs; give the -netType the file was made with to '
              'use its regime')
    return None


def _classifier(net):
    """(container, key) of the network's last layer with parameters in Lua order (a lookup layer is one layer)."""
    found = None
    for name, child in net.named_children():
        if models.lua_children(child):
            found = _classifier(child) or found
        elif models.parameters_lua_order(child):
            found = (net, name)
    return found


def _new_classifier(old, n_classes):
    """A fresh layer like `old` with n_classes outputs, initialised as model.lua initialises a new network; a
    lookup layer keeps its dictionary (poolconv), its combinations (alignconv) are drawn again."""
    if isinstance(old, PooledSpatialConvolution):
        layer = PooledSpatialConvolution(old.nInputPlane, n_classes, old.kW, old.kH, old.dW, old.dH, old.padW,
                                         old.padH, old.poolSize, lambda_=old.lambda_)
        layer.sparseTh = old.sparseTh
        layer.log_sparsity = old.log_sparsity
        if old.alignconv.bias is None:
            layer.noBias()
        with torch.no_grad():
            layer.poolconv.weight.copy_(old.poolconv.weight)
        return layer
    if isinstance(old, nn.Conv2d):
        layer = models.convolution(old.in_channels, n_classes, old.kernel_size[1], old.kernel_size[0],
                                   old.stride[1], old.stride[0], old.padding[1], old.padding[0], old.groups,
                                   typename=lua_type(old))
    elif isinstance(old, nn.Linear):
        layer = models.linear(old.in_features, n_classes)
    else:
        raise UserError(f'-resetClassifier: the last layer with parameters is a {lua_type(old)}; only a '
                        'convolution, nn.Linear or lookup layer can be replaced')
    if old.bias is None:
        layer.bias = None
    util.rand_initialize(layer)
    return layer


def reset_classifier(net, n_classes, layer=None):
    """-resetClassifier for lcnn's networks: the last layer with parameters becomes `layer` (default: a fresh
    n_classes-way one), and an nn.View right after it that flattens the old class count takes the new one."""
    found = _classifier(net)
    if found is None:
        raise UserError('-resetClassifier: the network has no layer with parameters to replace')
    container, key = found
    old = container._modules[key]
    container._modules[key] = _new_classifier(old, n_classes) if layer is None else layer
    keys = list(container._modules)
    old_out = models.parameters_lua_order(old)[-1].shape[0]
    for after in keys[keys.index(key) + 1:]:
        view = container._modules[after]
        if isinstance(view, View) and view.sizes[-1:] == (old_out,):
            container._modules[after] = View(*view.sizes[:-1], n_classes, num_input_dims=view.num_input_dims)


def freeze_dictionaries(net):
    """-freezeDictionary: no gradient for any lookup layer's poolconv, so the optimizer (train.py hands it the
    parameters that need one) leaves the dictionaries alone, weight decay and momentum included."""
    layers = [m for m in net.modules() if isinstance(m, PooledSpatialConvolution)]
    if not layers:
        raise UserError('-freezeDictionary: this network has no lookup layer (PooledSpatialConvolution) whose '
                        'dictionary could stay fixed; use an lcnn -netType or leave the flag out')
    for layer in layers:
        layer.poolconv.weight.requires_grad_(False)
    lua_print(f'=> Dictionaries of {len(layers)} lookup layers kept fixed (-freezeDictionary)')


def _wrap(net, dist):
    net = net.to(dist.device)
    if dist.world > 1:
        ids = [dist.device.index] if dist.device.type == 'cuda' else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return net


def setup(opt, dist):
    """model.lua: (model, criterion) for the lcnn recipe."""
    if opt.retrain != 'none':
        lua_print('Loading model from file: ' + opt.retrain)
        net = load_model(opt.retrain, '-retrain')
        saved = getattr(net, 'LRregime', None)
        # A saved LRregime is Lua bytecode that t7 cannot run (it drops it): it was the regime of the -netType
        # model file, which is also what -updateLRregime asks for.
        if opt.updateLRregime or not callable(saved):
            net.LRregime = file_regime(opt) or _own_regime(net, opt) or saved
        # The Lua layer reads -logSparsity from the global opt on every forward, but keeps its own lambda and
        # sparseTh: the saved ones drive the L1 term and the threshold, whatever -lambda says now.
        for m in net.modules():
            if isinstance(m, PooledSpatialConvolution):
                m.log_sparsity = bool(opt.logSparsity)
        # a resumed run's checkpoint already has the classifier that -resetClassifier gave it
        if opt.resetClassifier and not (opt.resume != 'none' and opt.epochNumber > 1):
            lua_print(' => Replacing classifier with ' + str(opt.nClasses) + '-way classifier')
            reset_classifier(net, opt.nClasses)
    else:
        net = create(opt)
        lua_print('=> Creating model from file: models/' + opt.netType + '.lua')
        models.lua_apply(net, util.rand_initialize)
        if opt.loadParams != 'none':
            saved = load_model(opt.loadParams, '-loadParams')
            if opt.resetClassifier:
                # the saved model gets this network's own new last layer, which the copy then leaves as it is
                lua_print(' => Replacing classifier with ' + str(opt.nClasses) + '-way classifier')
                container, key = _classifier(net)
                reset_classifier(saved, opt.nClasses, copy.deepcopy(container._modules[key]))
            try:
                util.load_params(net, saved)
            except ValueError as e:
                raise UserError(str(e)) from None
    if opt.freezeDictionary:
        freeze_dictionaries(net)
    if opt.criterion != 'classnll':
        raise UserError(f'-criterion {opt.criterion}: only classnll is available (nn.ClassRankingLoss was never '
                        'part of nn)')
    criterion = nn.NLLLoss()
    model = _wrap(net, dist)
    lua_print('=> Model')
    lua_print(str(net))
    lua_print('=> Criterion')
    lua_print('nn.ClassNLLCriterion')
    if dist.device.type == 'cuda':
        lua_print('==> Converting model to CUDA')
    return model, criterion


def setup_clcnet(opt, checkpoint, dist):
    """clcNet's models.setup(opt, checkpoint): (model, criterion) for the clcNet recipe."""
    if checkpoint is not None:
        path = os.path.join(opt.resume, checkpoint['modelFile'])
        if not os.path.isfile(path):
            raise UserError(f'-resume {opt.resume}: saved model not found: {path}')
        lua_print('=> Resuming model from ' + path)
        net = load_model(path, '-resume')
    elif opt.retrain != 'none':
        lua_print('Loading model from file: ' + opt.retrain)
        net = load_model(opt.retrain, '-retrain')
    else:
        lua_print('=> Creating model from file: models/' + opt.netType + '.lua')
        net = create(opt)
    if opt.resetClassifier and checkpoint is None:
        lua_print(' => Replacing classifier with ' + str(opt.nClasses) + '-way classifier')
        if not isinstance(net, nn.Sequential) or lua_type(net[-1]) != 'nn.Linear':
            raise UserError('-resetClassifier: expected the last layer of the network to be fully connected '
                            '(nn.Linear)')
        old = net[-1]
        linear = models.linear(old.in_features, opt.nClasses)
        with torch.no_grad():
            linear.bias.zero_()
        net[-1] = linear
    if opt.freezeDictionary:
        freeze_dictionaries(net)
    net = net.to(_DTYPES[opt.precision])
    return _wrap(net, dist), nn.CrossEntropyLoss()
