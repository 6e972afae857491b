"""Port of lcnn's util.lua: rand_initialize, computeScore (top-1/top-5 with Torch7's sort) and loadParams."""
import math

import torch

from layers.legacy import lua_type
from models import parameters_lua_order, find_modules

_CONVOLUTIONS = ('cudnn.SpatialConvolution', 'nn.SpatialConvolution', 'nn.SpatialConvolutionMM',
                 'nn.BinarySpatialConvolution')


def rand_initialize(layer):
    """The per-module callback lcnn's model.lua runs with model:apply (use models.lua_apply, which like Lua does
    not enter PooledSpatialConvolution, whose inner convs keep their uniform reset).

    Convolutions get N(0, 2/(kH*kW*nInputPlane)) weights (nInputPlane counts all input planes, also for grouped
    convs) and zero bias; nn.Linear N(0, 2/inputSize) and zero bias. Lua's BatchNorm branch misspells the class
    name ('SpatialBachNormalization'), so BatchNorm keeps Torch7's reset: weight U(0, 1), bias 0.
    """
    name = lua_type(layer)
    if name in _CONVOLUTIONS:
        kH, kW = layer.kernel_size
        std = math.sqrt(2.0 / (kH * kW * layer.in_channels))
    elif name == 'nn.Linear':
        std = math.sqrt(2.0 / layer.in_features)
    else:
        return
    with torch.no_grad():
        # Drawn on the CPU generator and copied, as Lua draws torch.randn before copying into the weight.
        layer.weight.copy_(torch.randn(layer.weight.shape) * std)
        if layer.bias is not None:
            layer.bias.zero_()


def _torch7_sort_descending(values):
    """Indices that Torch7's CPU sort(dim, true) produces for one row: Sedgewick's quicksort (median of three,
    subfiles of at most 10 left for a final insertion pass). It is not stable, so ties (and NaNs) come out in
    the order this exact procedure leaves them, which decides top-1/top-5 on tied scores."""
    arr = list(values)
    idx = list(range(len(arr)))
    n = len(arr)

    def swap(a, b):
        arr[a], arr[b] = arr[b], arr[a]
        idx[a], idx[b] = idx[b], idx[a]

    small = 10
    pending = []
    left, right = 0, n - 1
    done = n - 1 <= small
    while not done:
        swap((left + right) >> 1, left + 1)
        if arr[left + 1] < arr[right]:
            swap(left + 1, right)
        if arr[left] < arr[right]:
            swap(left, right)
        if arr[left + 1] < arr[left]:
            swap(left + 1, left)
        i, j, pivot = left + 1, right, arr[left]
        while True:
            i += 1
            while arr[i] > pivot:
                i += 1
            j -= 1
            while arr[j] < pivot:
                j -= 1
            if j < i:
                break
            swap(i, j)
        swap(left, j)
        size_left, size_right = j - left, right - i + 1
        if size_left <= small and size_right <= small:
            if pending:
                left, right = pending.pop()
            else:
                done = True
        elif size_left <= small or size_right <= small:
            if size_left > size_right:
                right = j - 1
            else:
                left = i
        elif size_left > size_right:
            pending.append((left, j - 1))
            left = i
        else:
            pending.append((i, right))
            right = j - 1
    for i in range(n - 2, -1, -1):
        if arr[i] < arr[i + 1]:
            pivot, pivot_idx = arr[i], idx[i]
            j = i + 1
            while True:
                arr[j - 1], idx[j - 1] = arr[j], idx[j]
                j += 1
                if not (j < n and arr[j] > pivot):
                    break
            arr[j - 1], idx[j - 1] = pivot, pivot_idx
    return idx


def _top_predictions(scores, k):
    """The first k columns of Torch7's descending sort of each row of a float32 matrix (0-based classes)."""
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    order = order[:, :k].clone()
    # Only rows where a top-k score is tied (or a NaN takes part) depend on the sort procedure.
    tied = (values[:, :-1][:, :k] == values[:, 1:][:, :k]).any(dim=1) | torch.isnan(scores).any(dim=1)
    for row in torch.nonzero(tied).flatten().tolist():
        order[row] = torch.tensor(_torch7_sort_descending(scores[row].tolist())[:k])
    return order


def compute_score(output, target, nCrops, conf_matrix=None):
    """computeScore: (top-1, top-5) accuracy in percent of a batch of scores against 0-based `target`.

    With nCrops > 1 the rows are consecutive groups of nCrops crops of one image: their scores are summed and
    `target` holds one label per image. `conf_matrix[prediction][target]` is incremented for each image if given.
    """
    scores = output.detach()
    if nCrops > 1:
        if scores.shape[0] % nCrops:
            raise ValueError(f'computeScore: {scores.shape[0]} outputs are not groups of nCrops={nCrops}')
        scores = scores.reshape(scores.shape[0] // nCrops, nCrops, scores.shape[1]).sum(1)
    scores = scores.float().cpu()
    batch_size, n_classes = scores.shape
    # Lua's narrow(2, 1, 5) fails below 5 classes; here top-5 is then top-n, which every image passes.
    k = min(5, n_classes)
    labels = target.detach().long().cpu().reshape(-1)
    if labels.numel() != batch_size:
        raise ValueError(f'computeScore: {labels.numel()} targets for {batch_size} predictions')
    predictions = _top_predictions(scores, k)
    if conf_matrix is not None:
        for prediction, label in zip(predictions[:, 0].tolist(), labels.tolist()):
            conf_matrix[prediction][label] += 1
    correct = predictions == labels.view(batch_size, 1)
    top1 = correct[:, :1].sum().item() / batch_size
    top5 = correct[:, :k].sum().item() / batch_size
    return top1 * 100, top5 * 100


def load_params(model, saved_model):
    """loadParams: copy the saved model's parameters into `model` tensor by tensor in Lua parameters() order
    (each pair need only hold as many elements, as Torch7's copy requires), then the running statistics of the
    nn.SpatialBatchNormalization modules in findModules order."""
    params = parameters_lua_order(model)
    saved = parameters_lua_order(saved_model)
    if len(saved) < len(params):
        raise ValueError(f'-loadParams: the saved model has {len(saved)} parameter tensors, '
                         f'this network needs {len(params)}')
    bn = find_modules(model, 'nn.SpatialBatchNormalization')
    saved_bn = find_modules(saved_model, 'nn.SpatialBatchNormalization')
    if len(saved_bn) < len(bn):
        raise ValueError(f'-loadParams: the saved model has {len(saved_bn)} nn.SpatialBatchNormalization '
                         f'modules, this network needs {len(bn)}')
    for i, (p, s) in enumerate(zip(params, saved)):
        if p.numel() != s.numel():
            raise ValueError(f'-loadParams: parameter {i + 1} has {s.numel()} elements in the saved model '
                             f"({'x'.join(map(str, s.shape))}), this network needs {p.numel()} "
                             f"({'x'.join(map(str, p.shape))})")
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s.reshape(p.shape))
        for m, s in zip(bn, saved_bn):
            m.running_mean.copy_(s.running_mean)
            m.running_var.copy_(s.running_var)
