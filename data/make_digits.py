"""One-time conversion of scikit-learn's copy of the UCI handwritten digits into data/digits.h5 (the embedded dataset).

scikit-learn is needed only here, never at run time, and is not a project dependency. To regenerate the file:

    .venv/bin/pip install --target /tmp/skl scikit-learn
    PYTHONPATH=/tmp/skl .venv/bin/python data/make_digits.py

(installing it into .venv works too). The output is deterministic: the same scikit-learn data gives the same file
contents (tests/test_digits.py checks a checksum of the arrays).

Contents of digits.h5 (gzip-compressed):
    /train/images, /val/images   uint8 N x 8 x 8, the raw values 0..16 (4x4-block counts of a 32x32 bitmap)
    /train/labels, /val/labels   uint8 N, the digit 0..9 (= the label index, classes are '0'..'9')
    /train/index,  /val/index    uint16 N, position of the image in sklearn.datasets.load_digits()
    attributes: classes, levels (16), split_seed, val_fraction, source, description
Split: stratified, per class round(val_fraction * count) images go to val, chosen by
numpy.random.RandomState(split_seed).permutation of that class's images; both splits are stored in original order.
"""
import os
import sys

import h5py
import numpy as np

SPLIT_SEED = 0
VAL_FRACTION = 0.2
LEVELS = 16


def split_indices(labels, seed=SPLIT_SEED, val_fraction=VAL_FRACTION):
    rng = np.random.RandomState(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = int(round(val_fraction * len(members)))
        val.extend(members[rng.permutation(len(members))[:n_val]])
    val = np.sort(np.asarray(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def main(out_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images
    if images.shape[1:] != (8, 8) or images.min() < 0 or images.max() > LEVELS or np.any(images != np.round(images)):
        sys.exit('make_digits: unexpected scikit-learn digits data; expected 8x8 integers in 0..16')
    images = images.astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    train, val = split_indices(labels)
    with h5py.File(out_path, 'w') as f:
        for name, idx in (('train', train), ('val', val)):
            g = f.create_group(name)
            opts = dict(compression='gzip', compression_opts=9, shuffle=True)
            g.create_dataset('images', data=images[idx], **opts)
            g.create_dataset('labels', data=labels[idx], **opts)
            g.create_dataset('index', data=idx.astype(np.uint16), **opts)
        f.attrs['classes'] = np.array([str(c) for c in range(10)], dtype=h5py.string_dtype())
        f.attrs['levels'] = LEVELS
        f.attrs['split_seed'] = SPLIT_SEED
        f.attrs['val_fraction'] = VAL_FRACTION
        f.attrs['source'] = 'sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits, test part)'
        f.attrs['description'] = ('8x8 images, values 0..16; stratified train/val split, see data/make_digits.py')
    print(f'wrote {out_path}: {len(train)} train, {len(val)} val images')


if __name__ == '__main__':
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits.h5'))
