"""Torch7 nn containers (Sequential, Concat, ConcatTable) as PyTorch containers and back."""

from torch import nn

from layers import legacy
from t7.registry import builds, long_storage, writes


@builds('Sequential')
def _sequential(loader, f, path):
    return nn.Sequential(*loader.children(f, path))


@builds('Concat')
def _concat(loader, f, path):
    return legacy.Concat(f.int('dimension'), *loader.children(f, path))


@builds('ConcatTable')
def _concat_table(loader, f, path):
    return legacy.ConcatTable(*loader.children(f, path))


@writes('Sequential', accepts=nn.Sequential)
def _write_container(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)


@writes('Concat', accepts=legacy.Concat)
def _write_concat(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)
    fields['dimension'] = module.dimension
    fields['outputSize'] = long_storage([])


@writes('ConcatTable', accepts=legacy.ConcatTable)
def _write_concat_table(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)
    fields['output'] = {}
