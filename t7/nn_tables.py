"""Torch7 nn table modules (Identity, CAddTable) as PyTorch modules and back."""

from torch import nn

from layers import legacy
from t7.registry import builds, writes


@builds('Identity')
def _identity(loader, f, path):
    return nn.Identity()


@builds('CAddTable')
def _cadd_table(loader, f, path):
    return legacy.CAddTable(inplace=f.flag('inplace'))


@writes('Identity', accepts=nn.Identity)
def _write_identity(saver, module, fields, path):
    pass


@writes('CAddTable', accepts=legacy.CAddTable)
def _write_cadd_table(saver, module, fields, path):
    fields['gradInput'] = {}
    fields['inplace'] = bool(module.inplace)
