"""Port of fb.resnet.torch's datasets/imagenet-gen.lua, datasets/init.lua and datasets/imagenet.lua (clcNet's copies
are identical): the gen/imagenet.t7 list of images, read and written, and the ImageNet dataset with its recipe.

The cache is the Lua table {basedir=opt.data, classList={names}, train={imagePath=CharTensor N x L of
NUL-padded 'class/file' paths, imageClass=LongTensor of 1-based classes}, val={...}}, written with t7.save so that
the Lua code reads it, and read back with t7.load (a cache made by Lua works here too).

Classes are the entries of DATA/train in byte order (every entry but '.DS_Store', files included, as Lua lists
them); images are what `find -L DIR -iname '*.jpg' -o ...` prints, in its order (directory order, depth first),
each named by the folder that holds it.
"""
import os

import numpy as np
import torch

import t7
from data import image as limage
from data import transforms as T
from data.image import DataError
from errors import lua_print

EXTENSIONS = ('jpg', 'png', 'jpeg', 'ppm', 'bmp')
_IGNORED = {'.', '..', '.DS_Store'}

# fb.resnet.torch's ImageNet statistics (over a random subset of the training images)
MEANSTD = {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}
PCA = {
    'eigval': [0.2175, 0.0188, 0.0045],
    'eigvec': [[-0.5675, 0.7192, 0.4009],
               [-0.5808, -0.0045, -0.8140],
               [-0.5836, -0.6948, 0.4203]],
}


def find_classes(directory):
    """Class names in Lua's table.sort order and their 1-based indices."""
    names = sorted((n for n in os.listdir(directory) if n not in _IGNORED), key=os.fsencode)
    return names, {name: i + 1 for i, name in enumerate(names)}


def _is_image(name):
    lower = name.lower()
    return any(lower.endswith('.' + ext) for ext in EXTENSIONS)


def _find(directory, visited):
    """Paths under `directory` whose name matches, in find's pre-order; symlinks followed, loops skipped."""
    st = os.stat(directory)
    key = (st.st_dev, st.st_ino)
    if key in visited:
        return
    visited = visited | {key}
    with os.scandir(directory) as it:
        entries = list(it)
    for entry in entries:
        if _is_image(entry.name):
            yield entry.path
        if entry.is_dir(follow_symlinks=True):
            yield from _find(entry.path, visited)


def find_images(directory, class_to_idx):
    """(imagePath int8 N x L NUL-padded 'class/file' bytes, imageClass int64 N, 1-based) of the images found."""
    paths, classes = [], []
    for found in _find(directory, frozenset()):
        class_name = os.path.basename(os.path.dirname(found))
        if class_name not in class_to_idx:
            raise DataError(f'class not found: {class_name} (for {found}); every image must sit in a folder '
                            f'named like a class folder of the train set')
        paths.append(os.fsencode(class_name + '/' + os.path.basename(found)))
        classes.append(class_to_idx[class_name])
    if not paths:
        raise DataError(f'no images found under {directory} (extensions {", ".join(EXTENSIONS)}, any case)')
    width = max(len(p) for p in paths) + 1
    packed = np.frombuffer(b''.join(p.ljust(width, b'\0') for p in paths), dtype=np.int8)
    return torch.from_numpy(packed.reshape(len(paths), width).copy()), torch.tensor(classes, dtype=torch.int64)


def decode_path(row):
    """The 'class/file' string held in one NUL-padded row of imagePath."""
    raw = row.numpy().tobytes()
    return os.fsdecode(raw.split(b'\0', 1)[0])


def exec_gen(opt, cache_file):
    """imagenet-gen.lua's exec: scan opt.data/{train,val}, save the list to cache_file and return it."""
    train_dir = os.path.join(opt.data, 'train')
    val_dir = os.path.join(opt.data, 'val')
    for name, d in (('train', train_dir), ('val', val_dir)):
        if not os.path.isdir(d):
            raise DataError(f'{name} directory not found: {d}; -data must hold train/ and val/ class folders')
    lua_print('=> Generating list of images')
    class_list, class_to_idx = find_classes(train_dir)
    lua_print(' | finding all validation images')
    val_path, val_class = find_images(val_dir, class_to_idx)
    lua_print(' | finding all training images')
    train_path, train_class = find_images(train_dir, class_to_idx)
    info = {
        'basedir': opt.data,
        'classList': class_list,
        'train': {'imagePath': train_path, 'imageClass': train_class},
        'val': {'imagePath': val_path, 'imageClass': val_class},
    }
    lua_print(' | saving list of images to ' + cache_file)
    t7.save(cache_file, info)
    return info


def load_info(opt):
    """datasets/init.lua: gen/<dataset>.t7, regenerated when missing or made for another -data."""
    cache_file = os.path.join(opt.gen, opt.dataset + '.t7')
    if os.path.isfile(cache_file):
        try:
            info = t7.load(cache_file)
        except t7.T7Error as e:
            raise DataError(f'{cache_file} is not a readable cache ({e}); delete it to regenerate it') from None
        if not isinstance(info, dict) or any(k not in info for k in ('classList', 'train', 'val')):
            raise DataError(f'{cache_file} is not an image list of imagenet-gen; delete it to regenerate it')
        if info.get('basedir') is None or info['basedir'] == opt.data:
            return info
    # Lua makes ./gen whatever -gen says; the folder the file goes to is the one that must exist
    os.makedirs(opt.gen, exist_ok=True)
    return exec_gen(opt, cache_file)


class ImagenetDataset:
    """One split of the image list: get(i) loads item i (0-based) with its 0-based class; preprocess() its recipe."""

    def __init__(self, info, opt, split):
        self.split = split
        self.dir = os.path.join(opt.data, split)
        if not os.path.isdir(self.dir):
            raise DataError(f'directory does not exist: {self.dir}; -data must hold train/ and val/')
        self.classes = [c if isinstance(c, str) else os.fsdecode(c) for c in info['classList']]
        self.image_path = info[split]['imagePath']
        self.image_class = info[split]['imageClass'].to(torch.int64) - 1
        self.crop_size = opt.cropSize
        self.image_size = opt.imageSize
        self.ten_crop = bool(opt.tenCrop)

    def size(self):
        return len(self.image_class)

    def path(self, i):
        return os.path.join(self.dir, decode_path(self.image_path[i]))

    def get(self, i):
        return limage.load(self.path(i)), int(self.image_class[i])

    def preprocess(self):
        """The ImageNet recipe; fb.resnet's fixed 224 / 256 are -cropSize / -imageSize (whose defaults they are)."""
        if self.split == 'train':
            return T.Compose([
                T.RandomSizedCrop(self.crop_size),
                T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
                T.Lighting(0.1, PCA['eigval'], PCA['eigvec']),
                T.ColorNormalize(MEANSTD),
                T.HorizontalFlip(0.5),
            ])
        crop = T.TenCrop if self.ten_crop else T.CenterCrop
        return T.Compose([T.Scale(self.image_size), T.ColorNormalize(MEANSTD), crop(self.crop_size)])
