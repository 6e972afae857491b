"""Torch7 nn table modules (Identity, CAddTable ... CMinTable, JoinTable, SplitTable, NarrowTable, SelectTable,
FlattenTable, DotProduct, MM, MV, CosineDistance, PairwiseDistance) as PyTorch modules and back."""

from torch import nn

from layers import tables
from t7.registry import builds, class_of, long_storage, writes


def optional_int(f, name):
    """An integer field that Lua leaves nil when not given (nInputDims, numInputDims ...), or None."""
    return None if f.get(name) is None else f.int(name)


def _empty_pair(saver, module):
    return [saver.empty(module), saver.empty(module)]


@builds('Identity')
def _identity(loader, f, path):
    return tables.Identity()


@builds('CAddTable')
def _cadd_table(loader, f, path):
    return tables.CAddTable(inplace=f.flag('inplace'))


_ELEMENTWISE = {'CSubTable': tables.CSubTable, 'CMulTable': tables.CMulTable, 'CDivTable': tables.CDivTable,
                'CMaxTable': tables.CMaxTable, 'CMinTable': tables.CMinTable, 'DotProduct': tables.DotProduct,
                'CosineDistance': tables.CosineDistance}


@builds(*_ELEMENTWISE)
def _elementwise(loader, f, path):
    return _ELEMENTWISE[class_of(f.typename)]()


@builds('JoinTable')
def _join_table(loader, f, path):
    return tables.JoinTable(f.int('dimension'), optional_int(f, 'nInputDims'))


@builds('SplitTable')
def _split_table(loader, f, path):
    return tables.SplitTable(f.int('dimension'), optional_int(f, 'nInputDims'))


@builds('NarrowTable')
def _narrow_table(loader, f, path):
    return tables.NarrowTable(f.int('offset'), f.int('length', 1))


@builds('SelectTable')
def _select_table(loader, f, path):
    return tables.SelectTable(f.int('index'))


@builds('FlattenTable')
def _flatten_table(loader, f, path):
    return tables.FlattenTable()


@builds('MM')
def _mm(loader, f, path):
    return tables.MM(f.flag('transA'), f.flag('transB'))


@builds('MV')
def _mv(loader, f, path):
    return tables.MV(f.flag('trans'))


@builds('PairwiseDistance')
def _pairwise_distance(loader, f, path):
    return tables.PairwiseDistance(f.number('norm', 2))


@writes('Identity', accepts=(tables.Identity, nn.Identity))
def _write_identity(saver, module, fields, path):
    pass


@writes('CAddTable', accepts=tables.CAddTable)
def _write_cadd_table(saver, module, fields, path):
    fields['gradInput'] = {}
    if module.inplace:
        # nn.CAddTable(ip) stores ip as given: nil unless in-place was asked for.
        fields['inplace'] = True


@writes('CSubTable', accepts=tables.CSubTable)
@writes('CMulTable', accepts=tables.CMulTable)
@writes('CDivTable', accepts=tables.CDivTable)
def _write_table_gradients(saver, module, fields, path):
    fields['gradInput'] = {}


@writes('CMaxTable', accepts=tables.CMaxTable)
@writes('CMinTable', accepts=tables.CMinTable)
def _write_extremum_table(saver, module, fields, path):
    which = 'max' if isinstance(module, tables.CMaxTable) else 'min'
    fields['gradInput'] = {}
    for name in (f'{which}Idx', 'mask', f'{which}Vals', 'gradMaxVals'):
        fields[name] = saver.empty(module)


@writes('JoinTable', accepts=tables.JoinTable)
@writes('SplitTable', accepts=tables.SplitTable)
def _write_join_split(saver, module, fields, path):
    fields['dimension'] = module.dimension
    if module.n_input_dims > 0:
        fields['nInputDims'] = module.n_input_dims
    if isinstance(module, tables.JoinTable):
        fields.update(size=long_storage([]), gradInput={})


@writes('NarrowTable', accepts=tables.NarrowTable)
def _write_narrow_table(saver, module, fields, path):
    fields.update(offset=module.offset, length=module.length, output={}, gradInput={})


@writes('SelectTable', accepts=tables.SelectTable)
def _write_select_table(saver, module, fields, path):
    fields.update(index=module.index, gradInput={})


@writes('FlattenTable', accepts=tables.FlattenTable)
def _write_flatten_table(saver, module, fields, path):
    fields.update(output={}, input_map={}, gradInput={})


@writes('DotProduct', accepts=tables.DotProduct)
@writes('CosineDistance', accepts=tables.CosineDistance)
def _write_pair_gradients(saver, module, fields, path):
    fields['gradInput'] = _empty_pair(saver, module)


@writes('MM', accepts=tables.MM)
def _write_mm(saver, module, fields, path):
    fields.update(transA=module.trans_a, transB=module.trans_b, gradInput=_empty_pair(saver, module))


@writes('MV', accepts=tables.MV)
def _write_mv(saver, module, fields, path):
    fields.update(trans=module.trans, gradInput=_empty_pair(saver, module))


@writes('PairwiseDistance', accepts=tables.PairwiseDistance)
def _write_pairwise_distance(saver, module, fields, path):
    norm = module.norm
    fields.update(norm=int(norm) if norm.is_integer() else norm, diff=saver.empty(module), gradInput={})
