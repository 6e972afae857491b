"""Tests of the port of lcnn's data.lua, datasets/donkey.lua, datasets/imagenet.lua and the torch/image operations.

Reference data: fixtures written by Lua Torch7 running the unchanged lcnn code. preproc_subsample.npz holds every
7th row and column (plus the last) of preproc_test.t7, preproc_train_loadImage.t7 and image_load_raw.t7.xz, with
each full tensor's shape and sum, written by numpy from those files to keep the fixtures small.
"""
import math
import os
import shutil
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from PIL import Image

import data
import opts
import t7
from data import donkey, image
from data.donkey import Hooks, TorchRandom
from data.imagenet import DataLoader, remap

FIX = Path(__file__).parent / 'fixtures'
CACHES = ('imagenet_trainCache.t7', 'imagenet_testCache.t7', 'imagenet_meanstdCache.t7')
LUA_ROOT = '/data/tinynet/'


def _expected():
    """preproc.expected.txt: mean, std, classes, per-image sizes and sums."""
    out = {'test': [], 'train': []}
    for line in (FIX / 'preproc.expected.txt').read_text().splitlines():
        f = line.split('\t')
        if f[0] in ('mean', 'std'):
            out[f[0]] = [float(v) for v in f[1].split()]
        elif f[0] == 'classes':
            out['classes'] = f[1].split()
        elif f[0] == 'test':
            out['test'].append({'path': f[2], 'label': int(f[4]), 'size': f[6], 'sum': float(f[9].split()[1])})
        elif f[0] == 'train loadImage':
            out['train'].append({'path': f[1], 'size': f[2], 'sum': float(f[3].split()[1])})
    return out


EXPECTED = _expected()
SUB = np.load(FIX / 'preproc_subsample.npz')


def _subsample(arr):
    """The rows and columns kept in preproc_subsample.npz."""
    rows = np.unique(np.r_[0:arr.shape[1]:7, arr.shape[1] - 1])
    cols = np.unique(np.r_[0:arr.shape[2]:7, arr.shape[2] - 1])
    return arr[:, rows][:, :, cols]


def _reference(tag):
    """{cached path: (subsampled Lua tensor, full shape, full sum)}."""
    return {str(p): (SUB[f'{tag}_{i}'], tuple(SUB[f'{tag}_shape_{i}']), float(SUB[f'{tag}_sum_{i}']))
            for i, p in enumerate(SUB[f'{tag}_paths'])}


@pytest.fixture(scope='module')
def tinynet(tinynet):
    """The folder as the Lua code names folders: a string ending in '/'."""
    return f'{tinynet}/'


def _opt(data_dir, cache, *extra):
    return opts.parse(['-data', data_dir, '-cache', str(cache), '-nDonkeys', '0', '-batchSize', '4', *extra])


def _cache(tmp_path, names=CACHES):
    cache = tmp_path / 'cache'
    cache.mkdir()
    for name in names:
        shutil.copy(FIX / name, cache)
    return cache


def _local(path, root):
    return path.replace(LUA_ROOT, root)


# --- torch/image ---------------------------------------------------------------------------------------------

def _c_scale_1d(src, dst_len):
    """Scalar transcription of torch/image's scaleLinear_rowcol in float32."""
    f = np.float32
    src_len = len(src)
    if dst_len == src_len:
        return list(src)
    dst = [f(0)] * dst_len
    if dst_len > src_len:
        if src_len == 1:
            dst = [src[0]] * dst_len
        else:
            scale = f(src_len - 1) / f(dst_len - 1)
            for di in range(dst_len - 1):
                pos = f(di) * scale
                i = int(pos)
                frac = pos - f(i)
                dst[di] = (f(1) - frac) * src[i] + frac * src[min(i + 1, src_len - 1)]
        dst[-1] = src[-1]
        return dst
    scale = f(src_len) / f(dst_len)
    i0, f0 = 0, f(0)
    for di in range(dst_len):
        pos = f(di + 1) * scale
        i1 = int(pos)
        f1 = pos - f(i1)
        acc, n = (f(1) - f0) * src[i0], f(1) - f0
        for si in range(i0 + 1, i1):
            acc, n = acc + src[si], n + f(1)
        if i1 < src_len:
            acc, n = acc + f1 * src[i1], n + f1
        dst[di] = acc / n
        i0, f0 = i1, f1
    return dst


def _c_scale(img, height, width):
    """image.scale(img, width, height) on a C x H x W float32 array, rows first then columns, as the C code."""
    c, h, _ = img.shape
    tmp = np.array([[_c_scale_1d(list(img[k, j]), width) for j in range(h)] for k in range(c)], np.float32)
    cols = np.array([[_c_scale_1d(list(tmp[k, :, i]), height) for i in range(width)] for k in range(c)], np.float32)
    return cols.transpose(0, 2, 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_scale_is_bit_exact_with_the_c_arithmetic(src_h, src_w, dst_h, dst_w, seed):
    img = np.random.default_rng(seed).random((2, src_h, src_w), dtype=np.float32)
    got = image.scale(torch.from_numpy(img), dst_w, dst_h).numpy()
    assert got.shape == (2, dst_h, dst_w)
    assert np.array_equal(got, _c_scale(img, dst_h, dst_w))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(2, 40), st.integers(1, 50), st.integers(1, 50), st.data())
def test_scale_crop_equals_crop_of_full_scale(src_h, src_w, dst_h, dst_w, draw):
    img = np.random.default_rng(src_h * 100 + src_w).integers(0, 256, (src_h, src_w, 3), dtype=np.uint8)
    out_h, out_w = draw.draw(st.integers(1, dst_h)), draw.draw(st.integers(1, dst_w))
    y0, x0 = draw.draw(st.integers(0, dst_h - out_h)), draw.draw(st.integers(0, dst_w - out_w))
    flip = draw.draw(st.booleans())
    full = image.scale_crop(img, dst_h, dst_w)
    want = full[:, y0:y0 + out_h, x0:x0 + out_w]
    got = image.scale_crop(img, dst_h, dst_w, y0, x0, out_h, out_w, flip)
    assert np.array_equal(got, want[:, :, ::-1] if flip else want)


def test_scaled_size_truncates_like_image_scale():
    assert image.scaled_size(333, 500, 256) == (256, 384)
    assert image.scaled_size(455, 256, 256) == (455, 256)
    assert image.scaled_size(500, 333, 256) == (384, 256)
    assert image.scaled_size(300, 300, 256) == (256, 256)


def test_crop_and_hflip():
    img = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 4, 5)
    assert torch.equal(image.crop(img, 1, 2, 4, 4), img[:, 2:4, 1:4])
    assert torch.equal(image.hflip(img)[:, :, 0], img[:, :, 4])
    with pytest.raises(data.DataError, match='outside bounds'):
        image.crop(img, 3, 0, 6, 2)


def test_image_load_matches_lua_raw_decode(tinynet):
    for path, (want, shape, total) in _reference('raw').items():
        got = image.load(_local(path, tinynet)).numpy()
        assert got.shape == shape and got.dtype == np.float32
        assert np.array_equal(_subsample(got), want)
        assert abs(got.astype(np.float64).sum() - total) < 1e-6


def test_image_load_channel_rules(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
    got = image.load(str(tmp_path / 'a.png'))
    assert torch.equal(got, torch.from_numpy(rgba[:, :, :3].transpose(2, 0, 1) * np.float32(1 / 255)))
    grey16 = np.array([[0, 65535, 1000]], np.uint16)
    Image.fromarray(grey16).save(tmp_path / 'g16.png')
    got = image.load(str(tmp_path / 'g16.png'))
    assert got.shape == (3, 1, 3) and torch.equal(got[0], got[2])
    assert torch.allclose(got[1, 0].double(), torch.tensor([0, 1, 1000 / 65535], dtype=torch.float64))
    Image.fromarray(rgba[:, :, :2], 'LA').save(tmp_path / 'la.png')
    with pytest.raises(data.DataError, match='wrong #channels'):
        image.load(str(tmp_path / 'la.png'))
    Image.fromarray(rgba[:, :, :3]).save(tmp_path / 'b.bmp')
    with pytest.raises(data.DataError, match='unknown image type: bmp'):
        image.load(str(tmp_path / 'b.bmp'))
    # the magic bytes decide, not the extension
    Image.fromarray(rgba[:, :, :3]).save(tmp_path / 'png_named.jpg', format='PNG')
    assert image.load(str(tmp_path / 'png_named.jpg')).shape == (3, 6, 7)
    with pytest.raises(data.DataError, match='missing.jpg'):
        image.load(str(tmp_path / 'missing.jpg'))


# --- donkey.lua ----------------------------------------------------------------------------------------------

def test_torch_random_is_torch7s_generator():
    g = TorchRandom(5489)
    assert g.raw() == 3499211612  # MT19937's published first output for init_genrand(5489)
    a, b = TorchRandom(2), TorchRandom(2)
    raw = [a.raw() for _ in range(3)]
    assert b.random(1, 5) == raw[0] % 5 + 1
    assert b.uniform(1e-2, 32) == raw[1] * (1.0 / 4294967296.0) * (32 - 1e-2) + 1e-2
    assert b.uniform() == raw[2] / 4294967296.0


def test_load_image_matches_lua(tinynet):
    opt = _opt(tinynet, '/nonexistent')
    ref = _reference('train')
    for row in EXPECTED['train']:
        want, shape, total = ref[row['path']]
        got = donkey.load_image(_local(row['path'], tinynet), opt).numpy()
        assert 'x'.join(map(str, got.shape)) == row['size'] and got.shape == shape
        assert np.abs(_subsample(got) - want).max() <= 1e-6
        assert abs(got.astype(np.float64).sum() - row['sum']) < 1e-3


def test_test_batch_matches_lua_preprocessing(tinynet, tmp_path):
    train, test = data.setup(_opt(tinynet, _cache(tmp_path)))
    assert test.classes == EXPECTED['classes'] == train.classes
    assert test.size() == 11 and train.size() == 18
    inputs, labels = test.get(0, 11)
    assert inputs.shape == (11, 3, 224, 224) and inputs.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.equal(labels, t7.load(FIX / 'preproc_test_batch_labels.t7') - 1)
    ref = _reference('test')
    for i, row in enumerate(EXPECTED['test']):
        assert test.cached_path(i) == row['path'] and int(labels[i]) == row['label'] - 1
        want, shape, total = ref[row['path']]
        assert np.abs(_subsample(inputs[i].numpy()) - want).max() <= 1e-4
        assert abs(inputs[i].double().sum().item() - row['sum']) < 1e-2


def test_cache_paths_are_remapped_and_meanstd_read(tinynet, tmp_path):
    train, test = data.setup(_opt(tinynet, _cache(tmp_path)))
    for loader, split in ((train, 'train'), (test, 'val')):
        for i in range(loader.size()):
            assert loader.cached_path(i).startswith(LUA_ROOT + split + '/')
            assert loader.path(i) == os.path.abspath(_local(loader.cached_path(i), tinynet))
            assert os.path.isfile(loader.path(i))
    assert train.hooks.mean == EXPECTED['mean'] and train.hooks.std == EXPECTED['std']
    assert test.hooks is train.hooks
    assert remap('/a/val/b/val/c.png', '/x', 'val') == '/x/val/b/val/c.png'
    assert remap('/a/other/c.png', '/x', 'val') == '/a/other/c.png'


def test_mean_std_estimate_reproduces_lua(tinynet, tmp_path, monkeypatch):
    """The 2 x 10000-sample estimate from manualSeed 2 gives the Lua cache's numbers, each of the 18 images
    decoded once."""
    decoded = []
    load_bytes = image.load_bytes
    monkeypatch.setattr(image, 'load_bytes', lambda path: decoded.append(path) or load_bytes(path))
    cache = _cache(tmp_path, CACHES[:2])
    data.setup(_opt(tinynet, cache))
    got = t7.load(cache / 'imagenet_meanstdCache.t7')
    assert got['mean'] == pytest.approx(EXPECTED['mean'], rel=1e-13)
    assert got['std'] == pytest.approx(EXPECTED['std'], rel=1e-13)
    assert len(decoded) == len(set(decoded)) == 18


def test_memo_crops_equal_direct_crops(tinynet):
    hooks = Hooks(tinynet, 256, 224, EXPECTED['mean'], EXPECTED['std'])
    paths = [_local(row['path'], tinynet) for row in EXPECTED['train'][:3]]
    direct = [hooks.random_crop(p, TorchRandom(9)) for p in paths] + [hooks.center_crop(p) for p in paths]
    hooks.memo = donkey.ScaledImages()
    for _ in range(2):
        memo = [hooks.random_crop(p, TorchRandom(9)) for p in paths] + [hooks.center_crop(p) for p in paths]
        assert all(torch.equal(a, b) for a, b in zip(direct, memo))
    # bounded: the least recently used image goes first
    small = donkey.ScaledImages(limit=1)
    small.put('a', np.zeros(4, np.float32))
    small.put('b', np.zeros(4, np.float32))
    assert small.get('a') is None and small.get('b') is not None


def test_fresh_cache_build(tinynet, tmp_path, capsys):
    cache = _cache(tmp_path, CACHES[2:])
    opt = _opt(tinynet, cache)
    train, test = data.setup(opt)
    assert 'Creating train metadata' in capsys.readouterr().out
    listing = [d for d in os.listdir(os.path.join(tinynet, 'train'))]
    assert train.classes == listing and test.classes == train.classes
    for split, loader in (('train', train), ('test', test)):
        mine = t7.load(cache / f'imagenet_{split}Cache.t7')
        lua = t7.load(FIX / f'imagenet_{split}Cache.t7')
        assert mine.typename == 'dataLoader'
        assert sorted(mine.fields) == sorted(lua.fields)
        for key, value in lua.fields.items():
            assert type(mine.fields[key]) is type(value), key
        assert mine.classListSample is mine.classList
        assert mine.imagePath.dtype == torch.int8 and mine.imageClass.min() == 1
        for key in ('loadSize', 'sampleSize', 'split', 'samplingMode', 'verbose', 'numSamples'):
            assert mine.fields[key] == lua.fields[key], key
        assert mine.paths == [tinynet]
        mine_items = {(loader.path(i).replace(tinynet, ''), mine.classes[int(mine.imageClass[i]) - 1])
                      for i in range(loader.size())}
        lua_loader = DataLoader.from_t7(lua, 'lua')
        lua_items = {(lua_loader.cached_path(i).replace(LUA_ROOT, ''), lua.classes[int(lua.imageClass[i]) - 1])
                     for i in range(lua_loader.size())}
        assert mine_items == lua_items
        for c, items in enumerate(mine.classList):
            assert torch.equal(mine.imageClass[items - 1], torch.full_like(items, c + 1))
        folder = os.path.join(tinynet, 'train' if split == 'train' else 'val')
        in_find_order = [os.path.join(folder, c, f.name) for c in mine.classes
                         for f in os.scandir(os.path.join(folder, c))]
        assert [loader.path(i) for i in range(loader.size())] == in_find_order
    assert test.forceClasses == train.classes
    again, _ = data.setup(opt)
    assert 'Loading train metadata from cache' in capsys.readouterr().out
    assert again.classes == train.classes and torch.equal(again.imagePath, train.imagePath)


def test_cache_of_other_images_is_refused(tinynet, tmp_path):
    cache = _cache(tmp_path, CACHES[2:])
    data.setup(_opt(tinynet, cache))
    # the cache made for tinynet, on a copy of it: served (its images are there), as the released caches are
    copy = tmp_path / 'copy'
    shutil.copytree(tinynet, copy)
    train, _ = data.setup(_opt(str(copy), cache))
    assert train.path(0).startswith(str(copy))
    # images gone from the folder the cache was made for
    shutil.rmtree(copy / 'train' / train.classes[-1])
    with pytest.raises(data.DataError) as e:
        data.setup(_opt(str(copy), cache))
    assert str(e.value).startswith(f'{cache}/imagenet_trainCache.t7 lists images that are not under -data {copy}')
    assert f'give the -data it was made for ({tinynet})' in str(e.value)
    assert f'delete {cache}/imagenet_*Cache.t7 (or give another -cache) to scan -data again' in str(e.value)
    (tmp_path / 'other').mkdir()
    fresh = _cache(tmp_path / 'other', CACHES[2:])
    data.setup(_opt(str(copy), fresh))
    shutil.rmtree(copy / 'val' / train.classes[0])
    with pytest.raises(data.DataError, match='imagenet_testCache.t7 lists images that are not under') as e:
        data.setup(_opt(str(copy), fresh))
    assert 'made for' not in str(e.value)


def test_scan_matches_find(tmp_path):
    for cls in ('b', 'a'):
        (tmp_path / 'train' / cls / 'sub').mkdir(parents=True)
    names = ['x.JPG', 'y.jpeg', 'z.Png', 'n.txt', 'w.PPM', '.h.jpg', 'v.BMP', 'u.gif']
    for name in names:
        (tmp_path / 'train' / 'a' / name).write_bytes(b'')
    (tmp_path / 'train' / 'a' / 'sub' / 'deep.jpg').write_bytes(b'')
    (tmp_path / 'train' / 'b' / 'sub' / 'only.png').write_bytes(b'')
    (tmp_path / 'train' / 'file.jpg').write_bytes(b'')
    loader = DataLoader.scan([str(tmp_path)], [3, 8, 8], [3, 4, 4], 'train')
    assert loader.classes == [d for d in os.listdir(tmp_path / 'train') if d != 'file.jpg']

    def find(d):
        out = []
        for e in os.scandir(d):
            if e.name.lower().endswith(('.jpg', '.png', '.jpeg', '.ppm', '.bmp')):
                out.append(e.path)
            if e.is_dir():
                out += find(e.path)
        return out
    want = [p for c in loader.classes for p in find(tmp_path / 'train' / c)]
    assert [loader.path(i) for i in range(loader.size())] == want
    assert loader.size('a') == 7 and loader.size('b') == 1
    (tmp_path / 'train' / 'c').mkdir()
    with pytest.raises(data.DataError, match="class 'c' has zero samples"):
        DataLoader.scan([str(tmp_path)], [3, 8, 8], [3, 4, 4], 'train')


class _RecordingHooks:
    def __init__(self):
        self.paths = []

    def train_hook(self, path, rng):
        self.paths.append(path)
        return torch.zeros(3, 1, 1)


def test_sample_is_class_balanced(tmp_path):
    loader = DataLoader.from_t7(t7.load(FIX / 'imagenet_trainCache.t7'), 'cache')
    loader.hooks, loader.rng = _RecordingHooks(), TorchRandom(7)
    _, labels = loader.sample(5000)
    counts = torch.bincount(labels, minlength=5)
    # 3 to 4 images per class: uniform over classes, not over images
    assert counts.min() > 880 and counts.max() < 1120, counts
    for c in range(5):
        picked = [p for p, lab in zip(loader.hooks.paths, labels.tolist()) if lab == c]
        per_image = [picked.count(loader.cached_path(int(i))) for i in loader.classList[c]]
        assert min(per_image) > 0.75 * len(picked) / len(per_image)
    loader.rng = TorchRandom(7)
    assert torch.equal(loader.sample(50)[1], labels[:50])


def test_train_hook_crop_offsets_never_zero(tmp_path):
    class Fixed:
        def __init__(self, values):
            self.values = list(values)

        def uniform(self, a=0.0, b=1.0):
            return self.values.pop(0) * (b - a) + a

    hooks = Hooks('/x', 256, 224)
    img = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / 'a.png')
    full = image.scale_crop(img, 256, 300)
    out = hooks.random_crop(str(tmp_path / 'a.png'), Fixed([0.0, 0.0, 0.9]))
    assert torch.equal(out, torch.from_numpy(full[:, 1:225, 1:225][:, :, ::-1].copy()))
    out = hooks.random_crop(str(tmp_path / 'a.png'), Fixed([0.999999, 0.5, 0.1]))
    x0 = math.ceil(0.5 * (76 - 1e-2) + 1e-2)
    assert torch.equal(out, torch.from_numpy(full[:, 32:256, x0:x0 + 224]))


def test_unreadable_images_are_replaced_and_counted(tinynet, tmp_path, capsys):
    root = tmp_path / 'net'
    shutil.copytree(tinynet, root)
    val = root / 'val' / 'n01930112'
    (val / 'broken.JPEG').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    Image.new('RGB', (300, 300)).save(val / 'old.bmp')
    Image.new('LA', (300, 300)).save(val / 'grey_alpha.png')
    cache = _cache(tmp_path, CACHES[2:])
    opt = _opt(str(root) + '/', cache)
    train, test = data.setup(opt)
    capsys.readouterr()
    bad = [i for i in range(test.size()) if os.path.basename(test.path(i)) in
           ('broken.JPEG', 'old.bmp', 'grey_alpha.png')]
    assert len(bad) == 3 and test.size() == 14
    mean, std = np.float32(EXPECTED['mean']), np.float32(EXPECTED['std'])
    fill = torch.from_numpy((mean[0] - mean) / std).view(3, 1, 1).expand(3, 224, 224)
    for i in bad:
        x, y = test.get(i, i + 1)
        assert torch.equal(x[0], fill) and int(y[0]) == train.classes.index('n01930112')
    assert test.hooks.load_errors == 3
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line, i in zip(lines, bad):
        # test.lua's line, naming the file
        assert line.startswith('ERROR: image can not be loaded!!! \t' + test.path(i) + ': ')
    opt.nDonkeys, opt.batchSize = 2, 7
    test.hooks.load_errors = 0
    batches = list(test.test_batches(opt))
    assert len(batches) == 2 and test.hooks.load_errors == 3
    assert torch.equal(batches[bad[0] // 7][0][bad[0] % 7], fill)


def test_train_hook_error_line(tinynet, capsys):
    hooks = Hooks(tinynet, 256, 224, EXPECTED['mean'], EXPECTED['std'])
    out = hooks.train_hook('/elsewhere/train/none/missing.JPEG', TorchRandom(1))
    assert out.shape == (3, 224, 224) and hooks.load_errors == 1
    line = capsys.readouterr().out
    assert line.startswith('ERROR: image can not be loaded!!! \t') and 'missing.JPEG' in line


def test_donkeys_give_the_lua_job_order(tinynet, tmp_path):
    opt = _opt(tinynet, _cache(tmp_path))
    train, test = data.setup(opt)
    serial = list(test.test_batches(opt))
    assert len(serial) == len(test.test_batches(opt)) == 11 // 4
    for k, (inputs, labels) in enumerate(serial):
        want_x, want_y = test.get(4 * k, 4 * k + 4)
        assert torch.equal(inputs, want_x) and torch.equal(labels, want_y)
    opt.nDonkeys = 2
    parallel = list(test.test_batches(opt))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(serial, parallel))
    assert len(parallel) == len(serial)
    # donkey k (1-based) draws from torch.manualSeed(manualSeed + k); batches alternate between the donkeys,
    # whose generators carry on from one call to the next
    got = list(train.train_batches(opt, 3)) + list(train.train_batches(opt, 1))
    streams = {k: TorchRandom(opt.manualSeed + k) for k in (1, 2)}
    for batch, donkey_id in zip(got, (1, 2, 1, 2)):
        train.rng = streams[donkey_id]
        x, y = train.sample(4)
        assert torch.equal(batch[0], x) and torch.equal(batch[1], y)
        assert batch[0].shape == (4, 3, 224, 224)


def test_setup_errors(tinynet, tmp_path):
    opt = _opt(tinynet, tmp_path)
    opt.dataset = 'foo'
    with pytest.raises(data.DataError, match="unknown -dataset 'foo'"):
        data.setup(opt)
    with pytest.raises(data.DataError, match='could not chdir'):
        data.setup(_opt(str(tmp_path / 'nothing'), tmp_path))
    bad = tmp_path / 'bad'
    bad.mkdir()
    t7.save(str(bad / 'imagenet_trainCache.t7'), {'not': 'a loader'})
    with pytest.raises(data.DataError, match='imagenet_trainCache.t7 is not an LCNN dataLoader cache'):
        data.setup(_opt(tinynet, bad))
    # opts.parse refuses a crop larger than the image; the loader still says so to callers that build opt
    opt = _opt(tinynet, _cache(tmp_path))
    opt.imageSize = 200
    train, test = data.setup(opt)
    with pytest.raises(data.DataError, match='-cropSize'):
        test.get(0, 1)


def test_check_counts_classes_and_saves_them(tinynet, tmp_path):
    opt = _opt(tinynet, _cache(tmp_path), '-nClasses', '5')
    opt.save = str(tmp_path / 'run')
    train, test = data.setup(opt)
    assert data.check(opt, train, test) == (5, 11)
    assert t7.load(os.path.join(opt.save, 'classes.t7')) == EXPECTED['classes']
    opt.nClasses = 1000
    with pytest.raises(data.DataError, match='pass -nClasses 5'):
        data.check(opt, train, test)
