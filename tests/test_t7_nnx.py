"""The 2011-2013 modules of torch's demos (face detector, tracker; issue 11): nnx's SpatialNormalization,
SpatialPadding and SpatialClassifier, and SpatialSubSampling weights saved with a kernel shape, laid out as those
files hold them and compared with their Lua updateOutput written out here; and DeepMask's SpatialSymmetricPadding."""
import torch
import torch.nn.functional as F

import t7


def obj(typename, **fields):
    return t7.TorchObject(typename, dict(output=torch.empty(0, dtype=torch.float64),
                                         gradInput=torch.empty(0, dtype=torch.float64), **fields))


def local_sum(planes, kernel):
    """What nnx's constructor builds: SpatialPadding, a one-to-one SpatialConvolutionMap of the kernel, Sum(1),
    Replicate(planes)."""
    k = kernel.size(0)
    one_to_one = torch.arange(1., planes + 1).repeat_interleave(2).view(-1, 2).double()
    return obj('nn.Sequential', modules=[
        obj('nn.SpatialPadding', pad_l=k // 2, pad_r=k // 2, pad_t=k // 2, pad_b=k // 2),
        obj('nn.SpatialConvolutionMap', connTable=one_to_one,
            kW=k, kH=k, dW=1, dH=1, nInputPlane=planes, nOutputPlane=planes,
            weight=kernel.expand(planes, k, k).clone(), bias=torch.zeros(planes, dtype=torch.float64)),
        obj('nn.Sum', dimension=1), obj('nn.Replicate', nfeatures=planes)])


def normalization(planes, kernel, threshold=None):
    fields = dict(nfeatures=planes, kernel=kernel, convo=local_sum(planes, kernel),
                  convostd=local_sum(planes, kernel), coef=torch.zeros(1, 1, dtype=torch.float64),
                  thresMod=obj('nn.Threshold', threshold=1e-6, val=0))
    if threshold is not None:
        fields['fixedThres'] = threshold
    return obj('nn.SpatialNormalization', **fields)


def lua_normalization(x, kernel, threshold=None):
    def convo(t):
        s = sum(F.conv2d(F.pad(p[None, None], [kernel.size(0) // 2] * 4), kernel[None, None])[0, 0] for p in t)
        return s.expand_as(t)
    coef = convo(torch.ones_like(x))
    zero_mean = x - convo(x) / coef
    std = convo(zero_mean ** 2).sqrt() / coef
    floor = threshold if threshold is not None else max(std.mean().item(), 1e-3)
    return zero_mean / torch.where(std > floor, std, torch.full_like(std, floor))


def test_spatial_normalization_of_the_2012_face_detector(tmp_path):
    torch.manual_seed(0)
    kernel = torch.rand(5, 5, dtype=torch.float64)
    kernel /= kernel.sum()
    x = torch.randn(3, 11, 9, dtype=torch.float64)
    for threshold in (None, 0.5):
        model = t7.load_model(normalization(3, kernel, threshold))
        with torch.no_grad():
            out = model(x)
        torch.testing.assert_close(out, lua_normalization(x, kernel, threshold))
        torch.testing.assert_close(torch.jit.script(model)(x), out)
        t7.save_model(tmp_path / 'n.t7', model)
        written = t7.load(tmp_path / 'n.t7')
        assert written.fields.get('fixedThres') == threshold and written.diviseMod.typename == 'nn.CDivTable'
        assert written.convo.modules[0].typename == 'nn.SpatialPadding' and tuple(written.coef.shape) == (1, 1)
        torch.testing.assert_close(t7.load_model(tmp_path / 'n.t7')(x), out)
    # A grey image as H x W is one plane.
    one = t7.load_model(normalization(1, kernel))
    torch.testing.assert_close(one(x[0]), lua_normalization(x[:1], kernel))


def test_nnx_padding_crops_where_negative_and_pads_its_own_dimensions():
    x = torch.randn(2, 5, 6)
    crop = t7.load_model(obj('nn.SpatialPadding', pad_l=-1, pad_r=2, pad_t=1, pad_b=-2))
    torch.testing.assert_close(crop(x), F.pad(x, [-1, 2, 1, -2]))
    # y_dim/x_dim 1-based: here the planes and the rows of a C x H x W image, filled with val.
    odd = t7.load_model(obj('nn.SpatialPadding', pad_l=1, pad_r=0, pad_t=0, pad_b=1, y_dim=1, x_dim=2, val=7))
    out = odd(x)
    assert out.shape == (3, 6, 6) and torch.equal(out[:2, 1:], x) and (out[2] == 7).all() and (out[:, 0] == 7).all()
    written = t7.to_lua(odd)
    assert (written.pad_l, written.pad_b, written.y_dim, written.x_dim, written.val) == (1, 1, 1, 2, 7)


def test_spatial_classifier_classifies_every_position():
    torch.manual_seed(1)
    linear = t7.to_lua(torch.nn.Linear(4, 3))
    x = torch.randn(4, 2, 5)
    model = t7.load_model(obj('nn.SpatialClassifier', classifier=linear, modules=[linear], spatialOutput=True))
    expected = torch.einsum('khw,nk->nhw', x, linear.weight) + linear.bias[:, None, None]
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(torch.jit.script(model)(x), expected)
    flat = t7.load_model(obj('nn.SpatialClassifier', classifier=linear, modules=[linear], spatialOutput=False))
    torch.testing.assert_close(flat(x), expected.reshape(3, 10).t())
    written = t7.to_lua(model)
    assert written.classifier is written.modules[0] and written.spatialOutput is True


def test_subsampling_weight_saved_with_its_kernel_shape():
    # The tracker demo's L2 pooling: 32 x 2 x 2 weights of which Lua's C code reads the first 32 numbers.
    weight = torch.arange(1., 17.).view(4, 2, 2)
    model = t7.load_model(obj('nn.SpatialSubSampling', nInputPlane=4, kW=2, kH=2, dW=2, dH=2, weight=weight,
                              bias=torch.zeros(4)))
    x = torch.ones(4, 4, 4)
    assert model(x)[:, 0, 0].tolist() == [4 * w for w in (1., 2., 3., 4.)]
    assert t7.to_lua(model).weight.tolist() == [1., 2., 3., 4.]


def test_deepmasks_symmetric_padding():
    x = torch.arange(1., 13.).view(1, 1, 3, 4)
    model = t7.load_model(obj('nn.SpatialSymmetricPadding', pad_l=2, pad_r=1, pad_t=1, pad_b=2))
    out = model(x)
    # Rows mirrored edge included (row 1 above, rows 3 and 2 below), then columns the same way.
    rows = torch.cat([x[:, :, :1], x, x[:, :, [2, 1]]], 2)
    torch.testing.assert_close(out, torch.cat([rows[..., [1, 0]], rows, rows[..., [3]]], 3))
    assert out[0, 0, 0].tolist() == [2., 1., 1., 2., 3., 4., 4.]
    torch.testing.assert_close(torch.jit.script(model)(x), out)
    cropped = t7.load_model(obj('nn.SpatialSymmetricPadding', pad_l=-1, pad_r=1, pad_t=0, pad_b=0))
    torch.testing.assert_close(cropped(x), torch.cat([x[..., 1:], x[..., 3:]], 3))
    written = t7.to_lua(model)
    assert (written.typename, written.pad_l, written.pad_b) == ('nn.SpatialSymmetricPadding', 2, 2)
