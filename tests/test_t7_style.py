"""fast-neural-style's model files (issue 11): InstanceNormalization, ShaveImage and TotalVariation as its
transformation networks hold them, compared with what their Lua updateOutput / updateGradInput compute."""
import torch
from torch import nn

import t7


def obj(typename, **fields):
    return t7.TorchObject(typename, dict(output=torch.empty(0), gradInput=torch.empty(0), **fields))


def style_network(strength=0.5):
    torch.manual_seed(0)
    conv = t7.to_lua(nn.Conv2d(3, 4, 3, padding=1))
    norm = obj('nn.InstanceNormalization', nOutput=4, eps=1e-5, prev_N=2, weight=torch.rand(4) + 0.5,
               bias=torch.randn(4), gradWeight=torch.zeros(4), gradBias=torch.zeros(4))
    back = t7.to_lua(nn.Conv2d(4, 3, 3))
    return obj('nn.Sequential', modules=[obj('nn.TotalVariation', strength=strength, x_diff=torch.empty(0),
                                             y_diff=torch.empty(0)),
                                         conv, norm, obj('nn.ReLU'), back, obj('nn.ShaveImage', size=2)]), norm


def test_style_network_matches_lua(tmp_path):
    lua, norm = style_network()
    model = t7.load_model(lua)
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        out = model(x)
        h = model[1](x)
        mean, var = h.mean((2, 3), keepdim=True), h.var((2, 3), unbiased=False, keepdim=True)
        h = (h - mean) / (var + 1e-5).sqrt() * norm.weight.view(1, 4, 1, 1) + norm.bias.view(1, 4, 1, 1)
        expected = model[4](h.relu())[:, :, 2:-2, 2:-2]
    assert out.shape == (2, 3, 6, 4)
    torch.testing.assert_close(out, expected)
    # Evaluation and training compute the same (Lua's inner batch normalisation always runs in training mode).
    torch.testing.assert_close(model.train()(x), out)
    torch.testing.assert_close(torch.jit.script(model.eval())(x), out)
    t7.save_model(tmp_path / 'style.t7', model)
    written = t7.load(tmp_path / 'style.t7')
    assert [m.typename for m in written.modules] == ['nn.TotalVariation', 'nn.SpatialConvolution',
                                                     'nn.InstanceNormalization', 'nn.ReLU', 'nn.SpatialConvolution',
                                                     'nn.ShaveImage']
    assert (written.modules[2].prev_N, written.modules[5].size, written.modules[0].strength) == (-1, 2, 0.5)
    torch.testing.assert_close(t7.load_model(tmp_path / 'style.t7')(x), out)


def test_total_variation_adds_its_gradient_in_training():
    model = t7.load_model(obj('nn.TotalVariation', strength=0.25))
    x = torch.randn(1, 3, 5, 6, requires_grad=True)
    grad = torch.randn(1, 3, 5, 6)
    y = model(x)
    assert torch.equal(y, x)
    y.backward(grad)
    reference = x.detach().clone().requires_grad_()
    corner = reference[:, :, :-1, :-1]
    tv = 0.5 * ((corner - reference[:, :, :-1, 1:]) ** 2 + (corner - reference[:, :, 1:, :-1]) ** 2).sum()
    tv.backward()
    torch.testing.assert_close(x.grad, grad + 0.25 * reference.grad)


def test_texture_nets_instance_normalization_without_affine(tmp_path):
    # texture_nets' class of the same name: running statistics it never uses for the output, and affine=false.
    lua = obj('nn.InstanceNormalization', nOutput=3, eps=1e-5, momentum=0, affine=False, prev_batch_size=-1,
              running_mean=torch.zeros(3), running_var=torch.ones(3))
    model = t7.load_model(lua)
    x = torch.randn(2, 3, 4, 5)
    mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(model(x), (x - mean) / (var + 1e-5).sqrt())
    assert list(model.parameters()) == [] and torch.equal(torch.jit.script(model)(x), model(x))
    written = t7.to_lua(model)
    assert written.affine is False and 'weight' not in written.fields and written.running_var.tolist() == [1, 1, 1]
