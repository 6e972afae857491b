"""Validation preprocessing speed of one donkey: donkey.lua's Lua-exact test hook against plain PIL bilinear + crop."""
import argparse
import math
import os
import statistics
import sys
import tarfile
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.donkey import Hooks  # noqa: E402
from data.imagenet import EXTENSIONS  # noqa: E402

TINYNET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'fixtures', 'tinynet.tar')
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pil_hook(path, image_size, crop_size, mean, std):
    """The usual PIL pipeline: decode, bilinear resize of the short side, center crop, to float, normalise."""
    with Image.open(path) as im:
        if im.mode != 'RGB':
            im = im.convert('RGB')
        w, h = im.size
        size = (image_size, int(image_size * h / w)) if w < h else (int(image_size * w / h), image_size)
        x0, y0 = math.ceil((size[0] - crop_size) / 2), math.ceil((size[1] - crop_size) / 2)
        im = im.resize(size, Image.BILINEAR).crop((x0, y0, x0 + crop_size, y0 + crop_size))
        arr = torch.from_numpy(np.array(im))
    out = torch.empty((3, crop_size, crop_size))
    out.copy_(arr.permute(2, 0, 1))
    return out.mul_(1 / 255).sub_(mean).div_(std)


def images_under(folder):
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(EXTENSIONS)]
    return sorted(found)


def passes(fn, paths, repeats):
    """images/s of each full pass over `paths`."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for p in paths:
            fn(p)
        rates.append(len(paths) / (time.perf_counter() - t))
    return rates


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', help='folder of images (default: the val images of tests/fixtures/tinynet.tar)')
    ap.add_argument('--repeats', type=int, default=15, help='passes over the images per method')
    ap.add_argument('--imageSize', type=int, default=256)
    ap.add_argument('--cropSize', type=int, default=224)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data
        if folder is None:
            with tarfile.open(TINYNET) as tar:
                tar.extractall(tmp, filter='data')
            folder = os.path.join(tmp, 'tinynet', 'val')
        paths = images_under(folder)
        if not paths:
            sys.exit(f'preprocess_speed: no images under {folder}: pass --data with a folder of jpg/png images')
        hooks = Hooks(folder, args.imageSize, args.cropSize, MEAN, STD)
        mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        exact, pil = hooks.center_crop, lambda p: pil_hook(p, args.imageSize, args.cropSize, mean, std)
        exact_rates, pil_rates = [], []
        # Alternate the methods pass by pass so that machine noise hits both alike.
        for _ in range(args.repeats):
            exact_rates += passes(exact, paths, 1)
            pil_rates += passes(pil, paths, 1)
    e, p = statistics.median(exact_rates), statistics.median(pil_rates)
    print(f'{len(paths)} images from {folder}, {args.repeats} passes each, 1 process, torch threads 1')
    print(f"{'method':<34}{'median images/s':>16}{'ms/image':>10}")
    print(f"{'Lua-exact (image.scale bilinear)':<34}{e:>16.1f}{1000 / e:>10.2f}")
    print(f"{'PIL bilinear resize + crop':<34}{p:>16.1f}{1000 / p:>10.2f}")
    print(f'ratio Lua-exact / PIL: {e / p:.2f}')


if __name__ == '__main__':
    main()
