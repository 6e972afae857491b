"""Port of lcnn's datasets/imagenet.lua: the dataLoader class (folder scan, class-balanced sampling, get)."""
import math
import os
import zlib

import numpy as np
import torch
from tqdm import tqdm

import data
import t7
from data.image import DataError
from errors import lua_print

# The extensions datasets/imagenet.lua hands to `find -iname`, which matches them in any letter case.
EXTENSIONS = ('.jpg', '.png', '.jpeg', '.ppm', '.bmp')
_FIELDS = ('paths', 'loadSize', 'sampleSize', 'split', 'classes', 'imagePath', 'imageClass', 'classList')


def remap(path, root, split):
    """Move a cached absolute path of another machine under `root` at its first '/<split>/' (as the hooks do)."""
    tp = path.find(f'/{split}/')
    if tp < 0:
        return path
    return os.path.abspath(os.path.join(root, path[tp + 1:]))


def _find(start):
    """`find start -iname '*.jpg' -o ...`: matches in directory-listing order, depth first, no symlink descent."""
    out = []
    try:
        entries = list(os.scandir(start))
    except OSError as e:
        raise DataError(f'cannot list {start}: {e.strerror}') from None
    for entry in entries:
        if entry.name.lower().endswith(EXTENSIONS):
            out.append(os.path.join(start, entry.name))
        if entry.is_dir(follow_symlinks=False):
            out.extend(_find(entry.path))
    return out


def class_selection(classes, wanted, source):
    """Indices into `classes` of the comma-separated names of -classes, in the order given ('' = every class)."""
    if wanted == '':
        return list(range(len(classes)))
    index = {name: i for i, name in enumerate(classes)}
    names = wanted.split(',')
    for name in names:
        if name not in index:
            shown = ', '.join(classes[:12]) + (', ...' if len(classes) > 12 else '')
            raise DataError(f"-classes: {source} has no class '{name}' (its classes: {shown}); give names from it")
    return [index[name] for name in names]


def few_examples(members, k, seed, name):
    """-samplesPerClass k of one class: the first k items of a permutation of `members` (the class's items in a
    fixed order) drawn from the seed and the class name only, so that every network trained at that seed sees the
    same images, and a smaller k keeps a subset of a larger one. Kept in the order of `members`; k = 0 keeps all."""
    if k == 0 or k >= len(members):
        return members
    rng = np.random.default_rng([int(seed) & 0xffffffffffffffff, zlib.crc32(name.encode())])
    return members[np.sort(rng.permutation(len(members))[:k])]


def subset_seed(opt):
    """The seed of -samplesPerClass: the run's -manualSeed, also in DDP workers, which sample with seeds of their
    own (runtime.worker_opt) but must all train on the same images."""
    return getattr(opt, 'subsetSeed', opt.manualSeed)


def report_subset(train_loader, test_loader):
    lua_print(f'-classes / -samplesPerClass: training on {train_loader.size()} images of '
              f'{len(train_loader.classes)} classes, testing on {test_loader.size()}')


def _encode_paths(paths):
    """Lua's imagePath CharTensor: one NUL-padded row per path, one byte wider than the longest."""
    raw = [os.fsencode(p) for p in paths]
    width = max(len(r) for r in raw) + 1
    buf = np.zeros((len(raw), width), np.uint8)
    for i, r in enumerate(raw):
        buf[i, :len(r)] = np.frombuffer(r, np.uint8)
    return torch.from_numpy(buf.view(np.int8))


class DataLoader:
    """lcnn's dataLoader. Python-side indices are 0-based: `imageClass[i]` is item i's label, `classList[c]` holds
    the items of class c, `classIndices[name]` is a label. The t7 cache keeps Lua's 1-based numbers.

    `hooks` (donkey.Hooks) provides the train and test preprocessing; `rng` (donkey.TorchRandom) the sampling.
    """

    def __init__(self, paths, loadSize, sampleSize, split, classes, imagePath, imageClass, classList,
                 samplingMode='balanced', verbose=False, forceClasses=None, hooks=None, rng=None):
        self.paths = list(paths)
        self.loadSize = list(loadSize)
        self.sampleSize = list(sampleSize)
        self.split = split
        self.samplingMode = samplingMode
        self.verbose = verbose
        self.forceClasses = forceClasses
        self.classes = list(classes)
        self.classIndices = {name: i for i, name in enumerate(self.classes)}
        self.imagePath = imagePath
        self.imageClass = imageClass
        self.classList = classList
        # In Lua the sampling list is the very same table as classList.
        self.classListSample = classList
        self.numSamples = int(imagePath.shape[0])
        self.hooks = hooks
        self.rng = rng
        self._iterators = {}

    @classmethod
    def scan(cls, paths, loadSize, sampleSize, split, forceClasses=None, verbose=False):
        """dataLoader{...}: find the class folders of <path>/<split> and their images, as imagenet.lua does."""
        classes = list(forceClasses or [])
        class_dirs = [[] for _ in classes]
        for path in paths:
            root = os.path.abspath(os.path.join(path, split))
            try:
                names = os.listdir(root)
            except OSError as e:
                raise DataError(f'cannot list {root}: {e.strerror}; -data must hold {split}/<class>/ folders') \
                    from None
            for name in names:
                dirpath = os.path.join(root, name)
                if not os.path.isdir(dirpath):
                    continue
                if name not in classes:
                    classes.append(name)
                    class_dirs.append([])
                idx = classes.index(name)
                if dirpath not in class_dirs[idx]:
                    class_dirs[idx].append(dirpath)
        files, labels = [], []
        for label, (name, dirs) in enumerate(tqdm(list(zip(classes, class_dirs)), desc=f'find {split}',
                                                  disable=None if verbose else True)):
            found = [f for d in dirs for f in _find(d)]
            if not found:
                raise DataError(f"class '{name}' has zero samples under {os.path.join(*paths, split)}: add "
                                f"{'/'.join(EXTENSIONS)} images to its folder or remove it")
            files += found
            labels += [label] * len(found)
        if not files:
            raise DataError(f'could not find any image file in {paths[0]}/{split}')
        if verbose:
            lua_print(f'{len(files)} samples found.')
        image_class = torch.tensor(labels, dtype=torch.int64)
        class_list = [torch.nonzero(image_class == c).flatten() for c in range(len(classes))]
        return cls(paths, loadSize, sampleSize, split, classes, _encode_paths(files), image_class, class_list,
                   verbose=verbose, forceClasses=list(forceClasses) if forceClasses else None)

    @classmethod
    def from_t7(cls, obj, source):
        """A dataLoader object read from a Lua cache file (`source` names it in errors)."""
        fields = getattr(obj, 'fields', None)
        if getattr(obj, 'typename', None) != 'dataLoader' or not all(f in fields for f in _FIELDS):
            raise DataError(f'{source} is not an LCNN dataLoader cache; delete it to rebuild it from -data')
        classes = [str(c) for c in fields['classes']]
        image_path = fields['imagePath']
        if not isinstance(image_path, torch.Tensor) or image_path.dim() != 2:
            raise DataError(f'{source}: imagePath is not an N x L CharTensor; delete it to rebuild it from -data')
        image_class = fields['imageClass'].to(torch.int64) - 1
        if image_class.numel() != image_path.shape[0] or image_class.numel() == 0 or \
                image_class.min() < 0 or image_class.max() >= len(classes):
            raise DataError(f'{source}: imageClass does not match imagePath and classes; delete it to rebuild it')
        return cls(fields['paths'], fields['loadSize'], fields['sampleSize'], fields['split'], classes,
                   image_path.to(torch.int8), image_class, [c.to(torch.int64) - 1 for c in fields['classList']],
                   samplingMode=fields.get('samplingMode', 'balanced'), verbose=bool(fields.get('verbose', False)),
                   forceClasses=fields.get('forceClasses'))

    def to_t7(self):
        """The Lua dataLoader object with the fields imagenet.lua gives it (1-based), for torch.save."""
        class_list = [c + 1 for c in self.classList]
        fields = {
            'paths': list(self.paths), 'loadSize': list(self.loadSize), 'sampleSize': list(self.sampleSize),
            'split': self.split, 'samplingMode': self.samplingMode, 'verbose': bool(self.verbose),
            'classes': list(self.classes), 'classIndices': {n: i + 1 for n, i in self.classIndices.items()},
            'imagePath': self.imagePath, 'imageClass': self.imageClass + 1, 'numSamples': self.numSamples,
            'classList': class_list, 'classListSample': class_list,
        }
        if self.forceClasses:
            fields['forceClasses'] = list(self.forceClasses)
        return t7.TorchObject('dataLoader', fields)

    def subset(self, wanted, samples_per_class, seed):
        """A loader of the classes of -classes (relabelled 0.. in that order) and, when samples_per_class > 0, of
        that many items of each (few_examples, over the class's items sorted by path), sharing hooks and rng."""
        chosen = class_selection(self.classes, wanted, f'{self.paths[0]} ({self.split})')
        keep, labels = [], []
        for label, c in enumerate(chosen):
            members = self.classList[c].numpy()
            if samples_per_class > 0:
                members = np.array(sorted(members, key=self.cached_path), dtype=np.int64)
                members = np.sort(few_examples(members, samples_per_class, seed, self.classes[c]))
            keep.append(members)
            labels.append(np.full(len(members), label, np.int64))
        keep = torch.from_numpy(np.concatenate(keep))
        image_class = torch.from_numpy(np.concatenate(labels))
        class_list = [torch.nonzero(image_class == c).flatten() for c in range(len(chosen))]
        return DataLoader(self.paths, self.loadSize, self.sampleSize, self.split, [self.classes[c] for c in chosen],
                          self.imagePath[keep], image_class, class_list, samplingMode=self.samplingMode,
                          verbose=self.verbose, forceClasses=self.forceClasses, hooks=self.hooks, rng=self.rng)

    def __getstate__(self):
        # Worker processes get the loader, never the live iterators that feed from them.
        state = self.__dict__.copy()
        state['_iterators'] = {}
        return state

    def size(self, cls=None):
        """Number of items, or of items of one class (given by name or label)."""
        if cls is None:
            return self.numSamples
        if isinstance(cls, str):
            cls = self.classIndices[cls]
        return int(self.classList[cls].numel())

    def cached_path(self, i):
        """Item i's path as the cache stores it."""
        row = self.imagePath[i].numpy().view(np.uint8)
        end = np.flatnonzero(row == 0)
        return os.fsdecode(row[:end[0] if end.size else row.size].tobytes())

    def path(self, i):
        """Item i's file path on this machine (the cached path moved under -data)."""
        return remap(self.cached_path(i), self.paths[0], self.split)

    def _stack(self, outs, labels):
        # numpy copies: torch's intra-op threads only add overhead at this size in the main process
        batch = np.empty((len(outs),) + tuple(outs[0].shape), np.float32)
        for i, out in enumerate(outs):
            batch[i] = out.numpy()
        return torch.from_numpy(batch), torch.tensor(labels, dtype=torch.int64)

    def get(self, start, stop):
        """Items start..stop-1 through the test hook: (N x 3 x cropSize x cropSize floats, int64 labels)."""
        if not 0 <= start < stop <= self.numSamples:
            raise IndexError(f'get({start}, {stop}) outside 0..{self.numSamples}')
        outs = [self.hooks.test_hook(self.cached_path(i)) for i in range(start, stop)]
        return self._stack(outs, self.imageClass[start:stop].tolist())

    def sample(self, quantity):
        """Class-balanced training sample: a uniform class, then a uniform image of it, through the train hook."""
        outs, labels = [], []
        for _ in range(quantity):
            label = self.rng.random(1, len(self.classes)) - 1
            items = self.classListSample[label]
            index = max(1, math.ceil(self.rng.uniform() * items.numel())) - 1
            outs.append(self.hooks.train_hook(self.cached_path(int(items[index])), self.rng))
            labels.append(label)
        return self._stack(outs, labels)

    def train_batches(self, opt, n):
        """The next n batches of sample(opt.batchSize), made by opt.nDonkeys worker processes (data.train_batches)."""
        return data.train_batches(self, opt, n)

    def test_batches(self, opt):
        """One pass of get() batches in test.lua's order, made by opt.nDonkeys worker processes (data.test_batches)."""
        return data.test_batches(self, opt)
