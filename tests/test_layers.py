"""Tests for layers/: PooledSpatialConvolution's Lua training semantics, ChannelInterlace, the legacy nn modules."""
import math

import pytest
import torch
import torch.nn.functional as F

from layers import ChannelInterlace, PooledSpatialConvolution, lua_type, named
from layers.containers import Concat, ConcatTable
from layers.activation import Dropout, LogSoftMax, MulConstant, SoftMax
from layers.shape import View
from layers.tables import CAddTable


def make_psc(lam=0.5, sparsity=0.3, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    args = dict(nInputPlane=3, nOutputPlane=4, kW=3, kH=2, dW=2, dH=1, padW=1, padH=2, poolSize=5)
    args.update(kw)
    layer = PooledSpatialConvolution(**args, lambda_=lam, initialSparsity=sparsity).to(dtype)
    return layer


def test_psc_structure_and_threshold():
    layer = make_psc()
    assert layer.poolconv.weight.shape == (5, 3, 1, 1) and layer.poolconv.bias is None
    assert layer.poolconv.padding == (2, 1) and layer.poolconv.stride == (1, 1)
    assert layer.alignconv.weight.shape == (4, 5, 2, 3) and layer.alignconv.bias.shape == (4,)
    assert layer.alignconv.padding == (0, 0) and layer.alignconv.stride == (1, 2)
    assert layer.sparseTh == pytest.approx(0.3 / math.sqrt(3 * 2 * 5))
    assert lua_type(layer) == 'cudnn.PooledSpatialConvolution'
    assert lua_type(layer.poolconv) == lua_type(layer.alignconv) == 'cudnn.SpatialConvolution'
    assert str(layer) == 'cudnn.PooledSpatialConvolution(3 -> 4, 2x3, pool5)'


def test_psc_forward_is_two_convs_with_thresholded_align_weights():
    layer = make_psc()
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    w = layer.alignconv.weight.detach().clone()
    expected_w = torch.where(w.abs() <= layer.sparseTh, torch.zeros_like(w), w)
    assert (expected_w == 0).any() and (expected_w != 0).any()
    y = layer(x)
    ref = F.conv2d(F.conv2d(x, layer.poolconv.weight, padding=(2, 1)), expected_w, layer.alignconv.bias, (1, 2))
    torch.testing.assert_close(y, ref)
    # the forward prunes in place, and remembers what it pruned
    assert torch.equal(layer.alignconv.weight.detach(), expected_w)
    assert torch.equal(layer.zeroMask, w.abs() <= layer.sparseTh)


def test_psc_forward_prunes_in_eval_mode_and_without_grad():
    layer = make_psc().eval()
    with torch.no_grad():
        layer.alignconv.weight[0, 0, 0, 0] = layer.sparseTh / 2
        layer(torch.randn(1, 3, 5, 5, dtype=torch.float64))
    assert layer.alignconv.weight[0, 0, 0, 0] == 0


def test_psc_gradients_equal_autograd_plus_l1_with_masked_entries_zero():
    lam = 0.7
    layer = make_psc(lam=lam)
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    target = torch.randn(2, 4, 9, 4, dtype=torch.float64)
    y = layer(x)
    assert y.shape == target.shape
    ((y - target) ** 2).sum().backward()

    mask = layer.zeroMask
    pw = layer.poolconv.weight.detach().clone().requires_grad_()
    aw = layer.alignconv.weight.detach().clone().requires_grad_()
    ab = layer.alignconv.bias.detach().clone().requires_grad_()
    ref = F.conv2d(F.conv2d(x, pw, padding=(2, 1)), aw, ab, (1, 2))
    ((ref - target) ** 2).sum().backward()

    torch.testing.assert_close(layer.poolconv.weight.grad, pw.grad)
    torch.testing.assert_close(layer.alignconv.bias.grad, ab.grad)
    expected = (aw.grad + lam * layer.sparseTh * torch.sign(aw.detach())).masked_fill(mask, 0)
    torch.testing.assert_close(layer.alignconv.weight.grad, expected)
    assert (layer.alignconv.weight.grad[mask] == 0).all()


def test_psc_align_gradient_matches_finite_differences_of_the_regularised_loss():
    lam = 0.4
    layer = make_psc(lam=lam, nInputPlane=2, nOutputPlane=2, poolSize=3)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    grad = layer.alignconv.weight.grad.clone()
    coef = lam * layer.sparseTh

    def objective(w):
        out = F.conv2d(F.conv2d(x, layer.poolconv.weight.detach(), padding=(2, 1)), w,
                       layer.alignconv.bias.detach(), (1, 2))
        return out.pow(2).sum().item() + coef * w.abs().sum().item()

    w0 = layer.alignconv.weight.detach().clone()
    eps = 1e-6
    for idx in torch.nonzero(~layer.zeroMask)[:12]:
        idx = tuple(idx.tolist())
        wp, wm = w0.clone(), w0.clone()
        wp[idx] += eps
        wm[idx] -= eps
        numeric = (objective(wp) - objective(wm)) / (2 * eps)
        assert grad[idx].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_psc_regulariser_is_added_once_per_backward_call():
    layer = make_psc(lam=1.0)
    x = torch.zeros(1, 3, 6, 8, dtype=torch.float64)
    for _ in range(2):
        layer(x).sum().backward()
    w = layer.alignconv.weight.detach()
    data_grad = torch.zeros_like(w)  # a zero input gives the data term nothing but the bias path
    expected = 2 * (data_grad + layer.sparseTh * torch.sign(w)).masked_fill(layer.zeroMask, 0)
    torch.testing.assert_close(layer.alignconv.weight.grad, expected)


def test_psc_without_lambda_only_masks():
    layer = make_psc(lam=0)
    x = torch.randn(1, 3, 6, 8, dtype=torch.float64)
    layer(x).sum().backward()
    aw = layer.alignconv.weight.detach().clone().requires_grad_()
    ref = F.conv2d(F.conv2d(x, layer.poolconv.weight.detach(), padding=(2, 1)), aw, layer.alignconv.bias.detach(),
                   (1, 2))
    ref.sum().backward()
    torch.testing.assert_close(layer.alignconv.weight.grad, aw.grad.masked_fill(layer.zeroMask, 0))


def test_psc_input_gradient_passes_gradcheck():
    layer = make_psc()
    layer(torch.randn(1, 3, 5, 5, dtype=torch.float64))  # prune first: pruning is not part of the function of x
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_psc_defaults_nobias_lambda_keyword_and_reset_align():
    layer = PooledSpatialConvolution(4, 6, 3, 3, 1, 1, 1, 1, 8)
    assert layer.lambda_ == 0.1 and layer.sparseTh == pytest.approx(0.01 / math.sqrt(72))
    assert PooledSpatialConvolution(4, 6, 3, 3, 1, 1, 1, 1, 8, **{'lambda': 0.25}).lambda_ == 0.25
    with pytest.raises(ValueError):
        PooledSpatialConvolution(4, 6, 3, 3)
    layer.noBias()
    assert layer.alignconv.bias is None and layer.bias is None
    big = PooledSpatialConvolution(4, 6, 3, 3, 1, 1, 1, 1, 8, initialSparsity=0.5)
    big(torch.randn(1, 4, 5, 5))
    pruned = big.zeroMask.clone()
    assert 0.2 < pruned.float().mean() < 0.8
    before = big.alignconv.weight.detach().clone()
    big.resetAlignConv()
    after = big.alignconv.weight.detach()
    assert (after[pruned] == 0).all()
    assert not torch.equal(after[~pruned], before[~pruned])


def test_psc_log_sparsity_prints_lua_line(capsys):
    layer = make_psc(dtype=torch.float32)
    layer.log_sparsity = True
    layer(torch.randn(1, 3, 5, 5))
    frac = layer.zeroMask.float().mean().item()
    assert capsys.readouterr().out == f'cudnn.PooledSpatialConvolution(3 -> 4, 2x3, pool5) \t {frac:0.4f} sparse\n'


def lua_interlace(channel, group):
    """The index tables exactly as the Lua constructor fills them (1-based)."""
    f, n = [0] * channel, 1
    for i in range(1, group + 1):
        p = i
        while p <= channel:
            f[p - 1] = n
            p += group
            n += 1
    size = channel // group
    b = [0] * channel
    for i in range(1, group + 1):
        for j in range(1, size + 1):
            b[(i - 1) * size + j - 1] = i + (j - 1) * group
    return f, b


@pytest.mark.parametrize('channel,group', [(6, 2), (12, 3), (8, 8), (5, 1), (20, 4)])
def test_channel_interlace_matches_lua_indices(channel, group):
    f, b = lua_interlace(channel, group)
    layer = ChannelInterlace(channel, group)
    assert (layer.f_idx + 1).tolist() == f and (layer.b_idx + 1).tolist() == b
    x = torch.randn(2, channel, 3, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, x[:, [i - 1 for i in f]])
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g[:, [i - 1 for i in b]])
    single = torch.randn(channel, 2, 2)
    torch.testing.assert_close(layer(single), single[[i - 1 for i in f]])


def test_channel_interlace_rejects_bad_groups():
    with pytest.raises(ValueError):
        ChannelInterlace(6, 4)
    assert str(ChannelInterlace(6, 2)) == 'ChannelInterlace : #channel=6, #group=2, group size=3'


def test_view_batch_rule_like_torch7():
    view = View(10)
    assert view(torch.randn(4, 10, 1, 1)).shape == (4, 10)
    assert view(torch.randn(1, 10, 1, 1)).shape == (10,)  # Lua drops a batch of one
    assert View(-1).setNumInputDims(3)(torch.randn(5, 2, 3, 4)).shape == (5, 24)
    assert View(2, 3)(torch.randn(6)).shape == (2, 3)
    assert View(3, -1)(torch.randn(6)).shape == (3, 2)
    with pytest.raises(RuntimeError, match='do not match'):
        View(7)(torch.randn(2, 10))


def test_containers_and_simple_modules():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    cat = Concat(2, torch.nn.Identity(), MulConstant(0))
    y = cat(x)
    assert y.shape == (2, 6, 4, 4) and torch.equal(y[:, :3], x) and (y[:, 3:] == 0).all()
    table = ConcatTable().add(torch.nn.Identity()).add(MulConstant(2.0))
    out = CAddTable()(table(x))
    torch.testing.assert_close(out, 3 * x)
    assert len(table) == 2 and lua_type(table[1]) == 'nn.MulConstant'
    assert lua_type(named(torch.nn.ReLU(True), 'cudnn.ReLU')) == 'cudnn.ReLU'
    assert lua_type(torch.nn.Conv2d(1, 1, 1)) == 'nn.SpatialConvolution'
    assert lua_type(torch.nn.BatchNorm2d(3)) == 'nn.SpatialBatchNormalization'


def test_dropout_v1_scales_at_test_time_and_softmax_dims():
    x = torch.ones(1000)
    d1 = Dropout(0.25, v1=True)
    kept = d1.train()(x)
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(d1.eval()(x), x * 0.75)
    assert torch.equal(Dropout(0.25).eval()(x), x)
    z = torch.randn(2, 5)
    torch.testing.assert_close(LogSoftMax()(z), F.log_softmax(z, 1))
    torch.testing.assert_close(SoftMax()(z[0]), F.softmax(z[0], 0))
    torch.testing.assert_close(SoftMax()(torch.randn(2, 3, 4, 4)).sum(1), torch.ones(2, 4, 4))
