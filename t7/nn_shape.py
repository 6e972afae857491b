"""Torch7 nn shape modules (View) as PyTorch modules and back."""

from layers import legacy
from t7.read import Storage
from t7.registry import builds, long_storage, writes


@builds('View')
def _view(loader, f, path):
    size = f.get('size')
    if isinstance(size, Storage):
        sizes = size.data.tolist()
    elif isinstance(size, list) and all(isinstance(s, int) for s in size):
        sizes = size
    else:
        f.fail('size', 'a LongStorage')
    dims = f.get('numInputDims')
    return legacy.View(*sizes, num_input_dims=None if dims is None else f.int('numInputDims'))


@writes('View', accepts=legacy.View)
def _write_view(saver, module, fields, path):
    fields['size'] = long_storage(list(module.sizes))
    fields['numElements'] = module.num_elements
    if module.num_input_dims is not None:
        fields['numInputDims'] = module.num_input_dims
