"""Port of the torch/image operations lcnn's donkey uses: image.load(path, 3, 'float'), image.scale, crop, hflip."""
import functools
import math
import re
import threading

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from errors import UserError


class DataError(UserError):
    """A data problem the user can fix (missing folder, bad cache, unreadable image); the message says what to do."""


_MAGIC = ((b'\xff\xd8\xff', 'jpg'), (b'\x89PNG', 'png'))
# Lua's image.load maps these file extensions to its decoders; anything else (bmp included) is refused.
_EXT_FORMAT = {'jpg': 'jpg', 'JPG': 'jpg', 'JPEG': 'jpg', 'jpeg': 'jpg', 'png': 'png', 'PNG': 'png',
               'ppm': 'ppm', 'PPM': 'ppm', 'pgm': 'pgm', 'PGM': 'pgm'}
_PIL_FORMAT = {'jpg': 'JPEG', 'png': 'PNG', 'ppm': 'PPM', 'pgm': 'PPM'}
# image.load(.., 'float') multiplies the decoded bytes by the float32 rounding of 1/255.
_BYTE_SCALE = np.float32(1 / 255)
_scratch = threading.local()


def _image_format(path):
    """The decoder image.load would choose: the file's magic bytes first, then its extension."""
    try:
        with open(path, 'rb') as f:
            hdr = f.read(4)
    except OSError as e:
        raise DataError(f'{path}: {e.strerror}') from None
    for magic, fmt in _MAGIC:
        if hdr.startswith(magic):
            return fmt
    if re.match(rb'P[25]', hdr):
        return 'pgm'
    if re.match(rb'P[36]', hdr):
        return 'ppm'
    m = re.search(r'\.([A-Za-z]+)$', path)
    if not m:
        raise DataError(f'unable to determine image type for file: {path}')
    if m.group(1) not in _EXT_FORMAT:
        raise DataError(f'unknown image type: {m.group(1)}')
    return _EXT_FORMAT[m.group(1)]


def load_bytes(path):
    """Decode like image.load(path, 3) but keep the samples: H x W x C, C = 1 (grey) or 3, uint8 (float32 in
    [0, 1] for 16-bit grey PNGs).

    Grey stays one channel so that callers scale it once and replicate afterwards, as the values are equal.
    """
    fmt = _image_format(path)
    try:
        with Image.open(path, formats=[_PIL_FORMAT[fmt]]) as im:
            mode = im.mode
            if mode == 'CMYK':
                arr = np.asarray(im)
                # libjpeg hands Adobe's inverted CMYK samples through unchanged; Pillow un-inverts them.
                if 'adobe' in im.info:
                    arr = 255 - arr
            elif mode in ('RGB', 'RGBA', 'L', 'LA'):
                arr = np.asarray(im)
            elif mode in ('I;16', 'I;16B', 'I'):
                # 16-bit grey PNG: Lua divides the 16-bit value by 65535, which 8 bits cannot carry.
                return (np.asarray(im, dtype=np.float32) / np.float32(65535))[:, :, None]
            elif mode == 'P':
                arr = np.asarray(im.convert('RGB'))
            elif mode == '1':
                arr = np.asarray(im.convert('L'))
            else:
                raise DataError(f'{path}: unsupported image mode {mode}')
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f'{path}: {e}') from None
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.shape[2] == 2:
        # torch/image has no rule for grey+alpha at depth 3 and fails.
        raise DataError('image loaded has wrong #channels')
    return arr[:, :, :3]


def load(path):
    """image.load(path, 3, 'float'): 3 x H x W float32 in [0, 1]; grey replicated, alpha dropped."""
    arr = load_bytes(path)
    factor = _BYTE_SCALE if arr.dtype == np.uint8 else np.float32(1)
    out = np.empty((3,) + arr.shape[:2], np.float32)
    for c in range(3):
        np.multiply(arr[:, :, c if arr.shape[2] == 3 else 0], factor, out=out[c])
    return torch.from_numpy(out)


def scaled_size(height, width, short_side):
    """(H, W) after donkey.lua's resize of the short side: image.scale truncates the fractional size."""
    if width < height:
        return max(int(short_side * height / width), 1), max(int(short_side), 1)
    return max(int(short_side), 1), max(int(short_side * width / height), 1)


@functools.lru_cache(maxsize=4096)
def _plan(src_len, dst_len):
    """Per-output source indices and weights of torch/image's 1-D linear resampling, term by term.

    Returns (idx, w, n): idx and w are K x dst_len; output d is
    (((w[0,d]*s[idx[0,d]] + w[1,d]*s[idx[1,d]]) + ...) / n[d]) in float32, the terms in the C loop's order.
    Padding terms have weight 0 and add an exact zero, so the rounding matches the C code bit for bit.
    """
    one = np.float32(1)
    if dst_len > src_len:
        idx = np.zeros((2, dst_len), np.int64)
        w = np.zeros((2, dst_len), np.float32)
        w[0, -1] = one
        idx[:, -1] = src_len - 1
        if src_len == 1:
            w[0] = one
        else:
            scale = np.float32(src_len - 1) / np.float32(dst_len - 1)
            pos = np.arange(dst_len - 1, dtype=np.float32) * scale
            base = pos.astype(np.int64)
            frac = pos - base.astype(np.float32)
            idx[0, :-1] = base
            idx[1, :-1] = np.minimum(base + 1, src_len - 1)
            w[0, :-1] = one - frac
            w[1, :-1] = frac
        return idx, w, np.ones(dst_len, np.float32)
    if dst_len == src_len:
        return np.arange(dst_len)[None], np.ones((1, dst_len), np.float32), np.ones(dst_len, np.float32)
    scale = np.float32(src_len) / np.float32(dst_len)
    end = np.arange(1, dst_len + 1, dtype=np.float32) * scale
    end_i = end.astype(np.int64)
    end_f = end - end_i.astype(np.float32)
    start_i = np.concatenate(([0], end_i[:-1]))
    start_f = np.concatenate(([0], end_f[:-1])).astype(np.float32)
    has_last = end_i < src_len
    k = int((end_i - start_i + has_last).max())
    t = np.arange(k)[:, None]
    pos = start_i[None, :] + t
    w = np.where(t == 0, one - start_f, np.where(pos < end_i, one, np.where((pos == end_i) & has_last, end_f, 0)))
    w = w.astype(np.float32)
    n = w[0].copy()
    for row in w[1:]:
        n += row
    return np.minimum(pos, src_len - 1), w, n


def _buffer(slot, shape):
    """A per-thread reusable float32 work array: fresh large arrays would page-fault on every image."""
    size = math.prod(shape)
    buf = getattr(_scratch, slot, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, np.float32)
        setattr(_scratch, slot, buf)
    return buf[:size].reshape(shape)


def _resample(src, idx, w, n, out):
    """Apply a plan along axis 1 of a C x L x M float32 array into `out`, accumulating in the C code's order.

    Rows are gathered from a C*L x M view, so every step is a contiguous vector operation. numpy only: torch's
    intra-op threads on arrays this small cost more than they save when the data loading runs in-process.
    """
    c, length, m = src.shape
    flat = src.reshape(c * length, m)
    rows = (idx[:, None, :] + (np.arange(c) * length)[:, None]).reshape(len(idx), -1)
    weights = w[:, None, :, None]
    np.take(flat, rows[0], axis=0, out=out.reshape(-1, m), mode='clip')
    out *= weights[0]
    if len(idx) > 1:
        term = _buffer('term', out.shape)
        for i in range(1, len(idx)):
            np.take(flat, rows[i], axis=0, out=term.reshape(-1, m), mode='clip')
            term *= weights[i]
            out += term
    if not np.all(n == 1):
        out /= n[None, :, None]
    return out


def scale_crop(img, height, width, y0=0, x0=0, out_h=None, out_w=None, flip=False):
    """image.crop(image.scale(img, width, height), x0, y0, x0+out_w, y0+out_h), computing only the kept pixels,
    then image.hflip when `flip`.

    img: H x W x C uint8 or float32 (load_bytes' layout). Rows are resampled first, then columns, as in
    torch/image's scaleBilinear, so every kept pixel has the bits the full-size scale would give it.
    Returns a new C-contiguous C x out_h x out_w float32 array.
    """
    out_h = height - y0 if out_h is None else out_h
    out_w = width - x0 if out_w is None else out_w
    if x0 < 0 or y0 < 0 or x0 + out_w > width or y0 + out_h > height:
        raise DataError(f'image.crop: crop goes outside bounds of src ({out_w}x{out_h} at {x0},{y0} of '
                        f'{width}x{height}); use a -cropSize no larger than -imageSize')
    vi, vw, vn = _plan(img.shape[0], height)
    vi, vw, vn = vi[:, y0:y0 + out_h], vw[:, y0:y0 + out_h], vn[y0:y0 + out_h]
    hi, hw, hn = _plan(img.shape[1], width)
    hi, hw, hn = hi[:, x0:x0 + out_w], hw[:, x0:x0 + out_w], hn[x0:x0 + out_w]
    if flip:
        # Output columns are computed independently, so mirroring the plan mirrors the result exactly.
        hi, hw, hn = hi[:, ::-1], hw[:, ::-1], hn[::-1]
    r0, r1, c0, c1 = int(vi.min()), int(vi.max()) + 1, int(hi.min()), int(hi.max()) + 1
    channels = img.shape[2]
    # Channel planes stored column-major (C x W x H) make the row pass a gather of contiguous runs.
    planes = img[r0:r1, c0:c1].transpose(2, 1, 0)
    src = _buffer('src', planes.shape)
    if planes.dtype == np.uint8:
        np.multiply(planes, _BYTE_SCALE, out=src)
    else:
        src[...] = planes
    rows = _resample(src, hi - c0, hw, hn, _buffer('rows', (channels, out_w, r1 - r0)))
    cols = _buffer('cols', (channels, r1 - r0, out_w))
    cols[...] = rows.transpose(0, 2, 1)
    return _resample(cols, vi - r0, vw, vn, np.empty((channels, out_h, out_w), np.float32))


def scale(img, width, height):
    """image.scale(img, width, height) in bilinear mode for a C x H x W float tensor; sizes are truncated."""
    height, width = max(int(height), 1), max(int(width), 1)
    arr = img.numpy().transpose(1, 2, 0).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(scale_crop(arr, height, width)))


def crop(img, x1, y1, x2, y2):
    """image.crop(img, x1, y1, x2, y2) of a C x H x W tensor: 0-based start, exclusive end."""
    x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
    h, w = img.shape[-2:]
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        raise DataError(f'image.crop: crop goes outside bounds of src ({x2 - x1}x{y2 - y1} at {x1},{y1} of '
                        f'{w}x{h}); use a -cropSize no larger than -imageSize')
    return img[..., y1:y2, x1:x2].clone()


def hflip(img):
    """image.hflip: mirror the last (width) dimension."""
    return img.flip(-1)
