"""Torch7 nn distance layers with learned templates as PyTorch modules and back."""

from layers import distance
from t7.nn_conv import write_parameters
from t7.registry import builds, writes


def _matrix(f, name, shape=None):
    t = f.tensor(name, shape)
    if t.dim() != 2:
        f.fail(name, 'a 2-D tensor')
    return t


@builds('Euclidean')
def _euclidean(loader, f, path):
    weight = _matrix(f, 'weight')
    module = distance.Euclidean(*weight.shape, device='meta')
    module.weight = loader.parameter(weight)
    return module


@builds('WeightedEuclidean')
def _weighted_euclidean(loader, f, path):
    weight = _matrix(f, 'weight')
    module = distance.WeightedEuclidean(*weight.shape, device='meta')
    module.weight = loader.parameter(weight)
    module.diagCov = loader.parameter(_matrix(f, 'diagCov', tuple(weight.shape)))
    return module


@builds('Cosine')
def _cosine(loader, f, path):
    weight = _matrix(f, 'weight')
    module = distance.Cosine(weight.size(1), weight.size(0), device='meta')
    module.weight = loader.parameter(weight)
    return module


@writes('Euclidean', accepts=distance.Euclidean)
def _write_euclidean(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight')
    fields['fastBackward'] = True


@writes('WeightedEuclidean', accepts=distance.WeightedEuclidean)
def _write_weighted_euclidean(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight', 'diagCov')


@writes('Cosine', accepts=distance.Cosine)
def _write_cosine(saver, module, fields, path):
    write_parameters(saver, module, fields, 'weight')
