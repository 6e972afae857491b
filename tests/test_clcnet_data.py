"""Tests of clcNet's (fb.resnet.torch's) data pipeline: transforms, the gen/imagenet.t7 cache and the DataLoader."""
import math
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

import t7
from data import dataloader, image, imagenet_gen
from data import transforms as T
from data.image import DataError


def cubic_1d(src, dst_len):
    """torch/image's scaleCubic_rowcol, element by element with the C code's float32/double arithmetic."""
    src = np.asarray(src, dtype=np.float32)
    n = len(src)
    if dst_len == n:
        return src.copy()
    dst = np.empty(dst_len, dtype=np.float32)
    if n == 1:
        dst[:] = src[0]
        return dst
    scale = np.float32(n - 1) / np.float32(dst_len - 1) if dst_len > 1 else np.float32(n - 1)
    for di in range(dst_len - 1):
        si_f = np.float32(np.float32(di) * scale)
        si_i = int(si_f)
        x = np.float32(si_f - np.float32(si_i))
        p1, p2 = src[si_i], src[si_i + 1]
        p0 = src[si_i - 1] if si_i > 0 else np.float32(2 * p1 - p2)
        p3 = src[si_i + 2] if si_i + 2 < n else np.float32(2 * p2 - p1)
        a1 = p2 - p0
        a2 = np.float32(2) * p0 - np.float32(5) * p1 + np.float32(4) * p2 - p3
        a3 = np.float32(3) * (p1 - p2) + p3 - p0
        dst[di] = np.float32(float(p1) + 0.5 * float(x) * float(a1 + x * (a2 + x * a3)))
    dst[-1] = src[-1]
    return dst


def bicubic_reference(img, width, height):
    img = img.numpy()
    rows = np.stack([[cubic_1d(r, width) for r in plane] for plane in img])
    cols = np.stack([np.stack([cubic_1d(rows[c, :, j], height) for j in range(width)], axis=1)
                     for c in range(img.shape[0])])
    return torch.from_numpy(cols)


@pytest.mark.parametrize('src,dst', [((7, 5), (13, 9)), ((9, 12), (4, 5)), ((6, 6), (6, 6)), ((2, 3), (5, 1)),
                                     ((1, 4), (3, 4)), ((31, 17), (16, 16))])
def test_bicubic_scale_matches_torch_image(src, dst):
    img = torch.rand(3, src[1], src[0], generator=torch.Generator().manual_seed(sum(src + dst)))
    got = T.scale_bicubic(img, dst[0], dst[1])
    assert got.shape == (3, dst[1], dst[0])
    assert torch.allclose(got, bicubic_reference(img, dst[0], dst[1]), atol=2e-6)


def test_lua_round_and_scale_sizes():
    assert [T._lua_round(v) for v in (2.5, 3.5, 2.4999, 0.5, 7.0)] == [3, 4, 2, 1, 7]
    landscape = torch.rand(3, 333, 500)
    # w/h * 256 = 384.38..., truncated as the Lua tensor constructor does
    assert T.Scale(256)(landscape).shape == (3, 256, 384)
    portrait = torch.rand(3, 41, 30)
    assert T.Scale(20)(portrait).shape == (3, int(41 / 30 * 20), 20)
    square = torch.rand(3, 20, 25)
    assert T.Scale(20)(square) is square


def test_center_and_ten_crop_positions():
    img = torch.arange(3 * 7 * 10, dtype=torch.float32).view(3, 7, 10)
    # ceil((10 - 4) / 2) = 3, ceil((7 - 4) / 2) = 2
    assert torch.equal(T.CenterCrop(4)(img), img[:, 2:6, 3:7])
    odd = T.CenterCrop(4)(img[:, :, :9])
    assert torch.equal(odd, img[:, 2:6, 3:7])  # ceil(5 / 2) = 3
    ten = T.TenCrop(4)(img)
    assert ten.shape == (10, 3, 4, 4)
    flipped = img.flip(2)
    expected = []
    for v in (img, flipped):
        expected += [v[:, 2:6, 3:7], v[:, 0:4, 0:4], v[:, 0:4, 6:10], v[:, 3:7, 0:4], v[:, 3:7, 6:10]]
    for got, want in zip(ten, expected):
        assert torch.equal(got, want)


def test_color_normalize_hand_values():
    img = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).repeat(1, 2, 2)
    img[:, 0, 0] = torch.tensor([1.0, 0.0, 0.5])
    out = T.ColorNormalize(imagenet_gen.MEANSTD)(img)
    assert torch.allclose(out[:, 1, 1], torch.zeros(3), atol=1e-6)
    want = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225])
    assert torch.allclose(out[:, 0, 0], want, atol=1e-6)
    assert img[0, 0, 0] == 1.0  # the input is left alone


def test_lighting_with_fixed_eigen_values():
    img = torch.zeros(3, 2, 2)
    lighting = T.Lighting(0.1, [1.0, 2.0, 3.0], torch.eye(3).tolist())
    torch.manual_seed(7)
    out = lighting(img)
    torch.manual_seed(7)
    alpha = torch.empty(3, dtype=torch.float64).normal_(0, 0.1)
    # identity eigenvectors: channel i moves by alpha_i * eigval_i
    for i in range(3):
        assert torch.allclose(out[i], torch.full((2, 2), float(alpha[i] * (i + 1))), atol=1e-7)
    pca = T.Lighting(0.1, imagenet_gen.PCA['eigval'], imagenet_gen.PCA['eigvec'])
    torch.manual_seed(7)
    shift = pca(img)[:, 0, 0].double()
    want = torch.tensor(imagenet_gen.PCA['eigvec'], dtype=torch.float64) @ (alpha * torch.tensor(
        imagenet_gen.PCA['eigval'], dtype=torch.float64))
    assert torch.allclose(shift, want, atol=1e-7)
    assert T.Lighting(0, [1, 1, 1], torch.eye(3).tolist())(img) is img


def test_color_jitter_components():
    img = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(3))
    grey = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]

    def alpha_after(seed, var):
        torch.manual_seed(seed)
        return 1.0 + T._uniform(-var, var)

    torch.manual_seed(1)
    a = alpha_after(1, 0.4)
    torch.manual_seed(1)
    assert torch.allclose(T.Brightness(0.4)(img), img * a, atol=1e-6)
    torch.manual_seed(2)
    a = alpha_after(2, 0.4)
    torch.manual_seed(2)
    assert torch.allclose(T.Saturation(0.4)(img), img * a + (1 - a) * grey, atol=1e-6)
    torch.manual_seed(3)
    a = alpha_after(3, 0.4)
    torch.manual_seed(3)
    assert torch.allclose(T.Contrast(0.4)(img), img * a + (1 - a) * grey.mean(), atol=1e-6)
    assert T.ColorJitter()(img) is img


def test_random_order_uses_randperm():
    calls = []

    def tag(name):
        def t(x):
            calls.append(name)
            return x
        return t

    torch.manual_seed(11)
    order = torch.randperm(3).tolist()
    torch.manual_seed(11)
    T.RandomOrder([tag(0), tag(1), tag(2)])(torch.zeros(1))
    assert calls == order


def test_horizontal_flip_and_random_sized_crop():
    img = torch.rand(3, 30, 40)
    assert torch.equal(T.HorizontalFlip(1.0)(img), img.flip(2))
    assert T.HorizontalFlip(0.0)(img) is img
    torch.manual_seed(0)
    out = T.RandomSizedCrop(16)(img)
    assert out.shape == (3, 16, 16)
    const = torch.full((3, 30, 40), 0.25)
    assert torch.allclose(T.RandomSizedCrop(16)(const), const[:, :16, :16], atol=1e-6)
    # a 400 x 3 strip has no crop of >= 8% of its area that fits: the fallback is Scale + CenterCrop
    strip = torch.rand(3, 3, 400)
    torch.manual_seed(0)
    want = T.CenterCrop(16)(T.Scale(16)(strip))
    assert torch.equal(T.RandomSizedCrop(16)(strip), want)


def test_random_sized_crop_draws():
    img = torch.rand(3, 50, 60)
    torch.manual_seed(4)
    got = T.RandomSizedCrop(12)(img)
    torch.manual_seed(4)
    while True:
        area = T._uniform(0.08, 1.0) * (50 * 60)
        ratio = T._uniform(3 / 4, 4 / 3)
        w, h = T._lua_round(math.sqrt(area * ratio)), T._lua_round(math.sqrt(area / ratio))
        if T._uniform() < 0.5:
            w, h = h, w
        if h <= 50 and w <= 60:
            y1, x1 = T._random(0, 50 - h), T._random(0, 60 - w)
            break
    assert torch.allclose(got, bicubic_reference(img[:, y1:y1 + h, x1:x1 + w], 12, 12), atol=2e-6)


# --- the image list and the loader -------------------------------------------------------------------------------

def write_image(path, w, h, seed):
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path):
    """DATA/{train,val}/<class>/ with PNG and JPEG files, made in an order that differs from sorted order."""
    data = tmp_path / 'data'
    classes = ['zebra', 'ant', 'Moth']
    seed = 0
    for split, per_class in (('train', 3), ('val', 2)):
        for c in classes:
            d = data / split / c
            d.mkdir(parents=True)
            for k in range(per_class):
                seed += 1
                ext = ('png', 'JPEG', 'jpg')[k % 3]
                write_image(d / f'{c}_{k}.{ext}', 20 + 3 * k, 18 + 2 * seed % 7, seed)
            (d / 'notes.txt').write_text('not an image')
    (data / 'train' / '.DS_Store').write_text('')
    return data


def make_opt(data, gen, **kw):
    base = dict(data=str(data), gen=str(gen), dataset='imagenet', imageSize=20, cropSize=16, tenCrop=False,
                batchSize=4, nThreads=0, manualSeed=3, precision='single')
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_gen_cache_write_read_round_trip(tree, tmp_path):
    opt = make_opt(tree, tmp_path / 'gen')
    info = imagenet_gen.load_info(opt)
    cache = tmp_path / 'gen' / 'imagenet.t7'
    assert cache.is_file()
    assert info['classList'] == ['Moth', 'ant', 'zebra']  # byte order: upper case first
    back = t7.load(str(cache))
    assert set(back) == {'basedir', 'classList', 'train', 'val'}
    assert back['basedir'] == str(tree) and back['classList'] == info['classList']
    for split, n in (('train', 9), ('val', 6)):
        path, cls = back[split]['imagePath'], back[split]['imageClass']
        assert path.dtype == torch.int8 and cls.dtype == torch.int64
        names = [imagenet_gen.decode_path(row) for row in path]
        assert len(names) == n and path.shape[1] == max(len(p) for p in names) + 1
        assert (path[:, -1] == 0).all()
        # find's order: each class folder in directory order, its files in directory order
        want = []
        for entry in filter(os.DirEntry.is_dir, os.scandir(tree / split)):
            want += [f'{entry.name}/{f.name}' for f in os.scandir(entry.path) if not f.name.endswith('.txt')]
        assert names == want
        assert cls.tolist() == [info['classList'].index(p.split('/')[0]) + 1 for p in names]
        assert torch.equal(path, info[split]['imagePath'])

    # a second setup reads the cache; another -data makes a new one
    os.utime(cache, (1, 1))
    imagenet_gen.load_info(opt)
    assert os.stat(cache).st_mtime == 1
    other = tmp_path / 'other'
    os.rename(tree, other)
    again = imagenet_gen.load_info(make_opt(other, tmp_path / 'gen'))
    assert again['basedir'] == str(other) and os.stat(cache).st_mtime != 1


def test_gen_errors(tree, tmp_path):
    nested = tree / 'val' / 'ant' / 'deeper'
    nested.mkdir()
    write_image(nested / 'x.png', 20, 20, 99)
    with pytest.raises(DataError, match='class not found: deeper'):
        imagenet_gen.load_info(make_opt(tree, tmp_path / 'gen'))
    with pytest.raises(DataError, match='train directory not found'):
        imagenet_gen.load_info(make_opt(tmp_path / 'missing', tmp_path / 'gen2'))
    bad = tmp_path / 'gen3'
    bad.mkdir()
    (bad / 'imagenet.t7').write_bytes(b'garbage')
    with pytest.raises(DataError, match='delete it to regenerate'):
        imagenet_gen.load_info(make_opt(tree, bad))


def test_loader_api_and_val_recipe(tree, tmp_path):
    opt = make_opt(tree, tmp_path / 'gen')
    train, val = dataloader.setup(opt)
    assert train.classes == ['Moth', 'ant', 'zebra']
    assert (train.size(), val.size(), train.num_batches(), val.num_batches()) == (9, 6, 3, 2)
    assert val.path(0) == os.path.join(str(tree), 'val', imagenet_gen.decode_path(val.dataset.image_path[0]))
    x, y = val.get(1, 4)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    for k in range(3):
        img = image.load(val.path(1 + k))
        h, w = img.shape[1:]
        sw, sh = (20, int(h / w * 20)) if w < h else (int(w / h * 20), 20)
        big = bicubic_reference(img, sw, sh)
        y1, x1 = math.ceil((sh - 16) / 2), math.ceil((sw - 16) / 2)
        ms = imagenet_gen.MEANSTD
        want = (big[:, y1:y1 + 16, x1:x1 + 16] - torch.tensor(ms['mean']).view(3, 1, 1)) / torch.tensor(
            ms['std']).view(3, 1, 1)
        assert torch.allclose(x[k], want, atol=1e-5)
        assert y[k] == train.classes.index(os.path.basename(os.path.dirname(val.path(1 + k))))
    xs, ys = train.sample(5)
    assert xs.shape == (5, 3, 16, 16) and ys.min() >= 0 and ys.max() <= 2


def test_epochs_permute_and_cover_everything(tree, tmp_path):
    opt = make_opt(tree, tmp_path / 'gen')
    train, _ = dataloader.setup(opt)
    labels = train.dataset.image_class
    epochs = []
    for _ in range(2):
        batches = list(train.run())
        assert [len(b[1]) for b in batches] == [4, 4, 1]
        got = torch.cat([b[1] for b in batches])
        assert sorted(got.tolist()) == sorted(labels.tolist())
        epochs.append(got)
    twin, _ = dataloader.setup(opt)
    assert torch.equal(torch.cat([b[1] for b in twin.run()]), epochs[0])
    # train_batches runs on over epoch ends
    assert len(twin.train_batches(opt, 5)) == 5 and len(twin.test_batches(opt)) == 3
    stream = list(twin.train_batches(opt, 5))
    assert [len(b[1]) for b in stream] == [4, 4, 1, 4, 4]
    assert torch.equal(torch.cat([b[1] for b in stream[:3]]), epochs[1])
    # a process loading half of each batch with a seed of its own gets its own stream
    share = list(twin.train_batches(make_opt(tree, tmp_path / 'gen', batchSize=2, manualSeed=99), 5))
    assert [len(b[1]) for b in share] == [2, 2, 2, 2, 1]
    assert not torch.equal(torch.cat([b[1] for b in share]), epochs[0])


def test_worker_processes_match_and_are_seeded(tree, tmp_path):
    opt = make_opt(tree, tmp_path / 'gen', nThreads=2)
    train, val = dataloader.setup(opt)
    _, serial = dataloader.setup(make_opt(tree, tmp_path / 'gen'))
    for (xa, ya), (xb, yb) in zip(val.test_batches(opt), serial.test_batches(opt)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first = [b[0] for b in train.run()]
    twin, _ = dataloader.setup(opt)
    again = [b[0] for b in twin.run()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # the next epoch's workers draw new augmentations
    second = [b[0] for b in twin.run()]
    assert not any(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second))


def test_ten_crop_batches_and_precision(tree, tmp_path):
    opt = make_opt(tree, tmp_path / 'gen', tenCrop=True, batchSize=25, precision='half')
    train, val = dataloader.setup(opt)
    assert val.batch_size == 2 and train.batch_size == 25
    batches = list(val.test_batches(opt))
    assert [b[0].shape[0] for b in batches] == [20, 20, 20]
    assert batches[0][0].dtype == torch.float16 and batches[0][1].tolist() == val.dataset.image_class[:2].tolist()
    x, _ = val.get(0, 1)
    want = T.TenCrop(16)(T.ColorNormalize(imagenet_gen.MEANSTD)(T.Scale(20)(image.load(val.path(0)))))
    assert x.shape == (10, 3, 16, 16) and torch.equal(x, want.half())
    with pytest.raises(DataError, match='-batchSize 8'):
        dataloader.setup(make_opt(tree, tmp_path / 'gen', tenCrop=True, batchSize=8))


def _labels_in_child(loader, queue):
    queue.put(loader.get(0, 2)[1].tolist())


def test_loader_reaches_processes_started_with_spawn(tree, tmp_path):
    """-nGPU's processes start their data workers with 'spawn', which pickles the loader into them: what it sends
    must not hold its epochs (the state of their torch.Generator did not survive the trip: 'unable to resize
    file' in the worker)."""
    opt = make_opt(tree, tmp_path / 'gen', nThreads=1)
    train, val = dataloader.setup(opt)
    next(iter(train.train_batches(opt, 1)))
    ctx = torch.multiprocessing.get_context('spawn')
    queue = ctx.Queue()
    child = ctx.Process(target=_labels_in_child, args=(val, queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == val.dataset.image_class[:2].tolist()
    # the loaders themselves go on with their epochs
    assert len(list(train.train_batches(opt, 2))) == 2 and len(list(val.test_batches(opt))) == 2
