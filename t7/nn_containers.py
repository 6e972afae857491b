"""Torch7 nn containers (Sequential, Concat, DepthConcat, ConcatTable, ParallelTable, MapTable, Parallel, cunn's
DataParallelTable, nnx's SpatialClassifier) as PyTorch containers and back."""

from torch import nn

from layers import containers
from t7.read import T7Error
from t7.registry import VERSION_2, builds, long_storage, writes

# DataParallelTable's version 2 writes its gpuAssignments before its fields (see t7.read.WRITTEN_BEFORE_FIELDS).
VERSION_2.add('DataParallelTable')


@builds('Sequential')
def _sequential(loader, f, path):
    return nn.Sequential(*loader.children(f, path))


@builds('Concat')
def _concat(loader, f, path):
    return containers.Concat(f.int('dimension'), *loader.children(f, path))


@builds('DepthConcat')
def _depth_concat(loader, f, path):
    return containers.DepthConcat(f.int('dimension'), *loader.children(f, path))


@builds('ConcatTable')
def _concat_table(loader, f, path):
    return containers.ConcatTable(*loader.children(f, path))


@builds('ParallelTable')
def _parallel_table(loader, f, path):
    return containers.ParallelTable(*loader.children(f, path))


@builds('MapTable')
def _map_table(loader, f, path):
    # modules[1] is the mapped module; Lua's clones of it follow (they share its parameters when `shared`).
    children = loader.children(f, path)
    if not children:
        if f.get('module') is None:
            raise T7Error(f'{f.typename} at {path} has no module to map')
        children = [loader.module(f.get('module'), f'{path}.module')]
    return containers.MapTable(*children, shared=f.flag('shared', True))


@builds('Parallel')
def _parallel(loader, f, path):
    return containers.Parallel(f.int('inputDimension'), f.int('outputDimension'), *loader.children(f, path))


@writes('Sequential', accepts=nn.Sequential)
def _write_container(saver, module, fields, path):
    fields['modules'] = saver.children(module, path)


@writes('Concat', accepts=containers.Concat)
@writes('DepthConcat', accepts=containers.DepthConcat)
def _write_concat(saver, module, fields, path):
    fields.update(modules=saver.children(module, path), dimension=module.dimension, outputSize=long_storage([]))


@writes('ConcatTable', accepts=containers.ConcatTable)
def _write_concat_table(saver, module, fields, path):
    fields.update(modules=saver.children(module, path), output={})


@writes('ParallelTable', accepts=containers.ParallelTable)
def _write_parallel_table(saver, module, fields, path):
    fields.update(modules=saver.children(module, path), output={}, gradInput={})


@writes('MapTable', accepts=containers.MapTable)
def _write_map_table(saver, module, fields, path):
    modules = saver.children(module, path)
    fields.update(modules=modules, module=modules[0], shared=module.shared,
                  sharedparams=['weight', 'bias', 'gradWeight', 'gradBias'], output={}, gradInput={})


@writes('Parallel', accepts=containers.Parallel)
def _write_parallel(saver, module, fields, path):
    fields.update(modules=saver.children(module, path), inputDimension=module.input_dimension,
                  outputDimension=module.output_dimension)


@builds('SpatialClassifier')
def _spatial_classifier(loader, f, path):
    return containers.SpatialClassifier(loader.module(f.get('classifier'), f'{path}.classifier'),
                                        f.flag('spatialOutput', True))


@writes('SpatialClassifier', accepts=containers.SpatialClassifier)
def _write_spatial_classifier(saver, module, fields, path):
    classifier = saver.obj(module.classifier, f'{path}.classifier')
    fields.update(classifier=classifier, modules=[classifier], spatialOutput=module.spatial_output,
                  **{name: saver.empty(module) for name in ('inputF', 'inputT', 'outputF', 'gradOutputF',
                                                            'gradOutputT', 'gradInputF')})


@builds('DataParallelTable')
def _data_parallel_table(loader, f, path):
    replicas = loader.children(f, path)
    if not replicas:
        raise T7Error(f'{f.typename} at {path} has no module')
    return containers.DataParallelTable(replicas[0], f.int('dimension', 1))


@writes('DataParallelTable', accepts=containers.DataParallelTable)
def _write_data_parallel_table(saver, module, fields, path):
    # One GPU: Lua's __read builds the replicas for the GPUs it is told to use.
    fields.update(modules=[saver.obj(module.module, f'{path}.modules[0]')], dimension=module.dimension,
                  gpuAssignments=[1], typeStr='torch.CudaTensor', flattenParams=False, usenccl=False,
                  needsSync=False, inputGpu={}, outputGpu={}, gradInputGpu={}, gradOutputGpu={})
