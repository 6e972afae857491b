"""Tests of the embedded digits dataset (data/digits.h5, data/make_digits.py) and its LCNN-style loader."""
import hashlib
import os
import types

import h5py
import numpy as np
import pytest
import torch

from data import digits, image
from data.image import DataError
from data.make_digits import split_indices

# sklearn.datasets.load_digits().images[0], the well-known first digit
FIRST_DIGIT = [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0],
               [0, 4, 12, 0, 0, 8, 8, 0], [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0],
               [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def make_opt(**kw):
    base = dict(imageSize=12, cropSize=8, batchSize=16, nDonkeys=0, nThreads=0, manualSeed=2, netType='alexnet-lcnn',
                classes='', samplesPerClass=0)
    base.update(kw)
    return types.SimpleNamespace(**base)


def read_split(split):
    with h5py.File(digits.H5_PATH, 'r') as f:
        return {k: f[split][k][()] for k in ('images', 'labels', 'index')}


def reference_crops(loader, i):
    """Every (top, left) crop of item i, upscaled with data.image's Lua-identical bilinear scale."""
    img = loader.images[i][None]
    big = image.scale(img, loader.image_size, loader.image_size)[0]
    c = loader.crop_size
    m = loader.image_size - c
    return {(y, x): big[y:y + c, x:x + c] for y in range(m + 1) for x in range(m + 1)}


def test_h5_content_and_checksum():
    assert os.path.getsize(digits.H5_PATH) < 1 << 20
    h = hashlib.sha256()
    parts = {s: read_split(s) for s in digits.SPLITS}
    for s in digits.SPLITS:
        for k in ('images', 'labels', 'index'):
            h.update(parts[s][k].tobytes())
    assert h.hexdigest() == '00f66fed207b6740d83c2deef0b1dfb30e68f49b07216673649940750c794969'
    train, val = parts['train'], parts['val']
    assert train['images'].shape == (1438, 8, 8) and val['images'].shape == (359, 8, 8)
    assert train['images'].dtype == np.uint8 and train['images'].max() == 16 and val['images'].max() <= 16
    index = np.concatenate([train['index'], val['index']])
    assert sorted(index.tolist()) == list(range(1797))
    labels = np.concatenate([train['labels'], val['labels']])
    assert np.bincount(labels).tolist() == CLASS_COUNTS
    # stratified: each class keeps 20% (rounded) of its images for val
    assert np.bincount(val['labels']).tolist() == [round(0.2 * c) for c in CLASS_COUNTS]
    first = np.flatnonzero(train['index'] == 0)[0]
    assert train['labels'][first] == 0
    assert train['images'][first].tolist() == FIRST_DIGIT
    with h5py.File(digits.H5_PATH, 'r') as f:
        assert [str(c) for c in f.attrs['classes']] == [str(c) for c in range(10)]
        assert f['train']['images'].compression == 'gzip'


def test_split_is_reproducible_from_labels():
    parts = {s: read_split(s) for s in digits.SPLITS}
    labels = np.zeros(1797, dtype=np.uint8)
    for s in digits.SPLITS:
        labels[parts[s]['index']] = parts[s]['labels']
    train, val = split_indices(labels)
    assert train.tolist() == parts['train']['index'].tolist()
    assert val.tolist() == parts['val']['index'].tolist()


@pytest.mark.parametrize('n', [256, 37, 9, 8, 5, 3, 1])
def test_resize_matrix_is_lua_bilinear(n):
    x = torch.randint(0, 17, (1, 8, 8), generator=torch.Generator().manual_seed(n)).float() / 16
    m = torch.from_numpy(digits.linear_resize_matrix(8, n))
    assert torch.allclose(m @ x[0] @ m.T, image.scale(x, n, n)[0], atol=1e-6)


def test_loader_api_and_test_hook():
    train, test = digits.setup(make_opt(imageSize=13, cropSize=8))
    assert train.classes == [str(c) for c in range(10)]
    assert (train.size(), test.size()) == (1438, 359)
    assert test.path(5) == 'digits/val/5' and train.path(0) == 'digits/train/0'
    x, y = test.get(3, 10)
    assert x.shape == (7, 3, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == read_split('val')['labels'][3:10].tolist()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    ms = train.meanstd
    # centre crop at ceil((13 - 8) / 2) = 3, then (v - mean) / std
    for k in range(7):
        expected = (reference_crops(test, 3 + k)[(3, 3)] - ms['mean'][0]) / ms['std'][0]
        assert torch.allclose(x[k, 0], expected, atol=1e-5)
    with pytest.raises(IndexError):
        test.get(350, 360)


def test_full_size_batch_shapes():
    train, test = digits.setup(make_opt(imageSize=256, cropSize=224))
    x, y = train.sample(4)
    assert x.shape == (4, 3, 224, 224) and y.shape == (4,)
    x, y = test.get(0, 2)
    assert x.shape == (2, 3, 224, 224)


def test_meanstd_is_the_donkey_estimate_over_centre_crops():
    loader = digits.DigitsLoader('train', 20, 16)
    x, _ = loader.get(0, loader.size())
    flat = x[:, 0].flatten(1).double()
    got = digits.estimate_meanstd(loader)
    assert got['mean'] == pytest.approx([flat.mean(1).mean().item()] * 3, abs=1e-6)
    assert got['std'] == pytest.approx([flat.std(1).mean().item()] * 3, abs=1e-6)
    train, _ = digits.setup(make_opt(imageSize=20, cropSize=16))
    xn, _ = train.get(0, train.size())
    assert abs(xn[:, 0].flatten(1).mean(1).mean().item()) < 1e-4
    assert xn[:, 0].flatten(1).std(1).mean().item() == pytest.approx(1.0, abs=1e-4)


def match_crop(loader, i, out):
    """The (top, left, flipped) crop of item i that `out` (one grey plane) is, or None."""
    for (y, x), ref in reference_crops(loader, i).items():
        for flipped, r in ((False, ref), (True, ref.flip(1))):
            if torch.allclose(out, r, atol=1e-5):
                return y, x, flipped
    return None


def find_item(loader, label, out):
    for i in torch.nonzero(loader.labels == label).flatten().tolist():
        hit = match_crop(loader, i, out)
        if hit is not None:
            return i, hit
    return None


def test_train_hook_crops_start_at_one_and_do_not_flip():
    loader = digits.DigitsLoader('train', 12, 8)
    torch.manual_seed(0)
    x, y = loader.sample(24)
    corners = set()
    for k in range(24):
        found = find_item(loader, int(y[k]), x[k, 0])
        assert found is not None
        _, (top, left, flipped) = found
        corners.update((top, left))
        # a symmetric crop would match unflipped first, so any flip here is a real one
        assert not flipped
    # ceil(uniform(1e-2, 4)) is in 1..4: never 0
    assert min(corners) >= 1 and max(corners) <= 4 and len(corners) > 2


def test_hflip_option_restores_the_lua_flip():
    loader = digits.DigitsLoader('train', 10, 8, hflip=True)
    torch.manual_seed(1)
    x, y = loader.sample(12)
    flips = [find_item(loader, int(y[k]), x[k, 0])[1][2] for k in range(12)]
    assert any(flips) and not all(flips)


def test_sample_is_class_balanced_and_seeded():
    loader = digits.DigitsLoader('train', 8, 8)
    torch.manual_seed(5)
    x1, y1 = loader.sample(5000)
    counts = torch.bincount(y1, minlength=10)
    assert counts.min() > 400 and counts.max() < 600
    # the label is the class of the image drawn
    assert all(find_item(loader, int(y1[k]), x1[k, 0]) for k in range(5))
    torch.manual_seed(5)
    x2, y2 = loader.sample(5000)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    torch.manual_seed(6)
    assert not torch.equal(loader.sample(50)[1], y1[:50])


def test_errors_name_the_flag():
    with pytest.raises(DataError, match='-cropSize 30 is larger than -imageSize 20'):
        digits.setup(make_opt(imageSize=20, cropSize=30))


def test_batch_iterators_with_worker_processes():
    opt = make_opt(nDonkeys=2, batchSize=50)
    train, test = digits.setup(opt)
    assert len(test.test_batches(opt)) == 359 // 50
    batches = list(test.test_batches(opt))
    assert len(batches) == 359 // 50
    serial = list(test.test_batches(make_opt(nDonkeys=0, batchSize=50)))
    for (xa, ya), (xb, yb) in zip(batches, serial):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(batches[2][0], test.get(100, 150)[0])

    assert len(train.train_batches(opt, 3)) == 3
    first = list(train.train_batches(opt, 3))
    assert [b[0].shape for b in first] == [(50, 3, 8, 8)] * 3
    more = list(train.train_batches(opt, 2))
    # the workers live on, so the next batches are new draws rather than a replay
    assert not torch.equal(more[0][0], first[0][0])
    again, _ = digits.setup(opt)
    replay = list(again.train_batches(opt, 5))
    for (xa, ya), (xb, yb) in zip(first + more, replay):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_clcnet_networks_use_nthreads():
    opt = make_opt(netType='clcnet', nDonkeys=8, nThreads=0, batchSize=100)
    _, test = digits.setup(opt)
    assert len(list(test.test_batches(opt))) == 3
