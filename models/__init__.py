"""Port of how lcnn's model.lua and clcNet's models/init.lua pick `models/<netType>.lua` and run its createModel,
plus the Torch7 walks over a module tree (apply, findModules, parameters) and the constructors every model file
shares (Torch7 classes with their Lua default initialisation)."""
import importlib
import math

import torch
from torch import nn

from layers.legacy import lua_type, named
from layers.PooledSpatialConvolution import PooledSpatialConvolution

# -netType string -> (module, keyword arguments of its create_model). clcneta/clcnetb are clcNet's two published
# configurations of the stage depths (a, b, c, d).
_REGISTRY = {
    'alexnet': ('models.alexnet', {}),
    'alexnet-lcnn': ('models.alexnet_lcnn', {}),
    'resnet': ('models.resnet', {}),
    'resnet-lcnn': ('models.resnet_lcnn', {}),
    'clcnet': ('models.clcnet', {}),
    'clcneta': ('models.clcnet', {'abcd': (1, 1, 5, 2)}),
    'clcnetb': ('models.clcnet', {'abcd': (1, 1, 7, 3)}),
}
NET_TYPES = tuple(_REGISTRY)
# lcnn's model.lua runs util.rand_initialize over these after creation; clcNet's setup initialises inside
# createModel and never calls it.
LCNN_NET_TYPES = ('alexnet', 'alexnet-lcnn', 'resnet', 'resnet-lcnn')
CLCNET_NET_TYPES = ('clcnet', 'clcneta', 'clcnetb')


def create(opt):
    """The network of `opt.netType`, built as the Lua model file builds it (Lua default initialisation)."""
    net_type = opt.netType
    if net_type not in _REGISTRY:
        raise ValueError(f"unknown -netType '{net_type}': use one of {', '.join(NET_TYPES)}")
    module_name, kwargs = _REGISTRY[net_type]
    return importlib.import_module(module_name).create_model(opt, **kwargs)


# --- Torch7 tree walks ------------------------------------------------------------------------------------------

def lua_children(module):
    """The Lua `modules` of `module`. PooledSpatialConvolution keeps its convs in `m`, not `modules`, so Lua's
    apply/findModules/parameters never see them as children."""
    if isinstance(module, PooledSpatialConvolution):
        return []
    return list(module.children())


def lua_apply(module, fn):
    """nn.Module:apply: fn on the module, then on each Lua child, depth first."""
    fn(module)
    for child in lua_children(module):
        lua_apply(child, fn)


def find_modules(module, typename):
    """nn.Module:findModules: every module whose Lua class is exactly `typename`, in depth-first order."""
    found = []

    def visit(m):
        if lua_type(m) == typename:
            found.append(m)

    lua_apply(module, visit)
    return found


def parameters_lua_order(module):
    """The tensors of Lua's `model:parameters()`, in its order (the layout of getParameters' flat vector).

    A leaf gives weight then bias; PooledSpatialConvolution gives its `weight` (poolconv.weight) and `bias`
    (alignconv.bias) the same way, then alignconv.weight; containers concatenate their children in order.
    """
    if isinstance(module, PooledSpatialConvolution):
        own = [module.poolconv.weight, module.alignconv.bias, module.alignconv.weight]
        return [p for p in own if p is not None]
    children = lua_children(module)
    if children:
        return [p for child in children for p in parameters_lua_order(child)]
    own = [getattr(module, 'weight', None), getattr(module, 'bias', None)]
    return [p for p in own if isinstance(p, torch.Tensor)]


# --- Torch7 classes with their Lua reset() --------------------------------------------------------------------

def _uniform_reset(module, fan_in):
    stdv = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        module.weight.uniform_(-stdv, stdv)
        if module.bias is not None:
            module.bias.uniform_(-stdv, stdv)
    return module


def convolution(nInputPlane, nOutputPlane, kW, kH, dW=1, dH=1, padW=0, padH=0, groups=1,
                typename='cudnn.SpatialConvolution'):
    """cudnn.SpatialConvolution (or nn.SpatialConvolution) with Lua's argument order; weight and bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as SpatialConvolution:reset draws them."""
    conv = nn.Conv2d(nInputPlane, nOutputPlane, (kH, kW), (dH, dW), (padH, padW), groups=groups)
    return named(_uniform_reset(conv, conv.weight[0].numel()), typename)


def batch_norm(nOutput, eps=1e-5, momentum=0.1):
    """nn.SpatialBatchNormalization: Torch7's reset draws the weight from U(0, 1) (PyTorch would use 1)."""
    bn = nn.BatchNorm2d(nOutput, eps=eps, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0, 1)
        bn.bias.zero_()
    return bn


def linear(inputSize, outputSize):
    """nn.Linear with Lua's reset: weight and bias U(-1/sqrt(inputSize), 1/sqrt(inputSize))."""
    return _uniform_reset(nn.Linear(inputSize, outputSize), inputSize)


def relu(inplace=False):
    """cudnn.ReLU, the activation every model file uses."""
    return named(nn.ReLU(inplace=inplace), 'cudnn.ReLU')


def max_pooling(kW, kH, dW, dH, padW=0, padH=0):
    """nn.SpatialMaxPooling (floor mode: no model calls :ceil())."""
    return nn.MaxPool2d((kH, kW), (dH, dW), (padH, padW))


def average_pooling(kW, kH, dW, dH, typename='nn.SpatialAveragePooling'):
    """nn/cudnn.SpatialAveragePooling; no model pads it, so whether padding is counted never matters."""
    return named(nn.AvgPool2d((kH, kW), (dH, dW)), typename)


def pooled_convolution(opt, nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH, poolSize):
    """cudnn.PooledSpatialConvolution as the model files create it: lambda and initialSparsity come from the
    global opt (the files never pass them), and so does the -logSparsity switch."""
    layer = PooledSpatialConvolution(nInputPlane, nOutputPlane, kW, kH, dW, dH, padW, padH, poolSize,
                                     lambda_=getattr(opt, 'lambda', None),
                                     initialSparsity=getattr(opt, 'initialSparsity', None))
    layer.log_sparsity = bool(getattr(opt, 'logSparsity', False))
    return layer
