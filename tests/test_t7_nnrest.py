"""The rest of torch/nn's classes (issue 11): each laid out as its Lua constructor and a forward leave its fields,
converted, compared with its Lua updateOutput written out here, written back and converted again."""
import torch
import torch.nn.functional as F

import t7


def obj(typename, version=1, **fields):
    return t7.TorchObject(typename, {'output': torch.empty(0, dtype=torch.float64),
                                     'gradInput': torch.empty(0, dtype=torch.float64), **fields}, version)


def linear(n_in, n_out, seed=0):
    g = torch.Generator().manual_seed(seed)
    return obj('nn.Linear', weight=torch.randn(n_out, n_in, generator=g, dtype=torch.float64),
               bias=torch.randn(n_out, generator=g, dtype=torch.float64),
               gradWeight=torch.zeros(n_out, n_in, dtype=torch.float64),
               gradBias=torch.zeros(n_out, dtype=torch.float64))


def roundtrip(model, tmp_path, *inputs, script=True):
    """The forward of model, after save_model + load_model, and compiled by TorchScript: all equal."""
    with torch.no_grad():
        out = model(*inputs)
        t7.save_model(tmp_path / 'm.t7', model)
        again = t7.load_model(tmp_path / 'm.t7')
        torch.testing.assert_close(again(*inputs), out)
        if script:
            torch.testing.assert_close(torch.jit.script(model)(*inputs), out)
    return t7.load(tmp_path / 'm.t7')


def test_decorators_forward_through_their_module(tmp_path):
    lin = linear(4, 3)
    x = torch.randn(2, 4, dtype=torch.float64)
    expected = x @ lin.weight.t() + lin.bias
    for name, extra in (('nn.Decorator', {}), ('nn.DontCast', dict(castin=True, castout=True,
                                                                     moduleType='torch.DoubleTensor')),
                        ('nn.DontCast', dict(castin=False, castout=False)), ('nn.NaN', dict(id=7))):
        model = t7.load_model(obj(name, modules=[lin], **extra))
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model(x[0]), expected[0])
        written = roundtrip(model, tmp_path, x)
        assert written.typename == name and written.modules[0].typename == 'nn.Linear'
        assert all(written.fields[k] == v for k, v in extra.items()) and 'kept' not in written.fields
    # NaN stops where its module's output holds a NaN, naming where the NaN came from.
    checked = t7.load_model(obj('nn.NaN', id=4, modules=[linear(4, 3)]))
    for scripted in (False, True):
        run = torch.jit.script(checked) if scripted else checked
        try:
            run(torch.tensor([[1., float('nan'), 0., 0.]], dtype=torch.float64))
        except Exception as e:
            assert 'NaN found in input of module nn.NaN(4)' in str(e)
        else:
            raise AssertionError('a NaN passed nn.NaN')
    with torch.no_grad():
        checked.module.bias[0] = float('nan')
    try:
        checked(x)
    except ValueError as e:
        assert str(e) == 'NaN found in parameters of module nn.NaN(4)'
    else:
        raise AssertionError('a NaN bias passed nn.NaN')
    # A double module in a float network: the input cast to double, the output back to the DontCast's float.
    cast = t7.load_model(obj('nn.DontCast', modules=[lin], castin=True, castout=True, moduleType='torch.DoubleTensor',
                             output=torch.empty(0)))
    out = cast(x.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected.float())
    torch.testing.assert_close(torch.jit.script(cast)(x.float()), expected.float())
    # Around a module that takes a table.
    for name, extra in (('nn.Decorator', {}), ('nn.NaN', dict(id=3)), ('nn.DontCast', dict(castin=False))):
        joined = t7.load_model(obj(name, modules=[obj('nn.JoinTable', dimension=2)], **extra))
        torch.testing.assert_close(torch.jit.script(joined)([x, x]), torch.cat([x, x], 1))
        written = roundtrip(joined, tmp_path, [x, x])
        assert written.typename == name and all(written.fields[k] == v for k, v in extra.items())


def test_dpnn_serial_and_inception_forward_through_their_module(tmp_path):
    # dpnn saved models inside an nn.Serial; its Inception is a Decorator around the DepthConcat of its towers.
    from t7.__main__ import lua_string
    x = torch.randn(2, 4, dtype=torch.float64)
    lin = linear(4, 3)
    for name, extra in (('nn.Serial', dict(tensortype='torch.FloatTensor')), ('nn.Inception', {})):
        model = t7.load_model(obj('nn.Sequential', modules=[obj(name, modules=[lin], **extra)]))
        torch.testing.assert_close(model(x), x @ lin.weight.t() + lin.bias)
        written = roundtrip(model, tmp_path, x)
        assert written.modules[0].typename == name and written.modules[0].modules[0].typename == 'nn.Linear'
        assert all(written.modules[0].fields[k] == v for k, v in extra.items())
        assert lua_string(obj(name, modules=[lin], **extra)) == f'{name} @ nn.Linear(4 -> 3)'


def test_decorator_of_nothing_is_one_line():
    try:
        t7.load_model(obj('nn.Sequential', modules=[obj('nn.Decorator', modules=[])]))
    except t7.T7Error as e:
        assert 'nn.Decorator at model.modules[0]' in str(e) and '\n' not in str(e)
    else:
        raise AssertionError('an empty Decorator converted')


def test_bottle_folds_the_leading_dimensions(tmp_path):
    lin = linear(4, 3)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    model = t7.load_model(obj('nn.Bottle', modules=[lin], nInputDim=2, nOutputDim=2, dimDelta=0,
                              inShape=torch.zeros(2, dtype=torch.float64),
                              outShape=torch.zeros(2, dtype=torch.float64)))
    expected = (x.reshape(10, 4) @ lin.weight.t() + lin.bias).reshape(2, 5, 3)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x[0]), expected[0])
    written = roundtrip(model, tmp_path, x)
    assert (written.nInputDim, written.nOutputDim, written.dimDelta, tuple(written.inShape.shape)) == (2, 2, 0, (2,))


def lua_weight_norm(v, g, size, out_dim):
    # updateWeight: each row of v scaled by g over sqrt(|row|^2 + 10e-5), viewed as viewOut and permuted back.
    w = v * (g / (v.pow(2).sum(1) + 10e-5).sqrt())[:, None]
    d = out_dim - 1
    view_out = [size[d]] + [n for i, n in enumerate(size) if i != d]
    w = w.reshape(view_out)
    for i in range(d):
        w = w.transpose(i, i + 1)
    return w


def test_weight_norm_of_a_linear_and_a_convolution(tmp_path):
    torch.manual_seed(2)
    # As WeightNorm:write leaves it: the module without weight, v and g on the decorator.
    lin = linear(4, 3)
    del lin.fields['weight'], lin.fields['gradWeight']
    v, g = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    wn = obj('nn.WeightNorm', modules=[lin], v=v, g=g, outputDim=1, weightSize=torch.Size([3, 4]),
             bias=lin.bias, gradBias=lin.gradBias)
    wn.fields['weightSize'] = t7.read.Storage('torch.LongStorage', torch.tensor([3, 4]))
    model = t7.load_model(wn)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x), x @ lua_weight_norm(v, g, [3, 4], 1).t() + lin.bias)
    torch.testing.assert_close(model(x[0]), x[0] @ lua_weight_norm(v, g, [3, 4], 1).t() + lin.bias)
    names = sorted(n for n, _ in model.named_parameters())
    assert names == ['g', 'module.bias', 'v']
    written = roundtrip(model, tmp_path, x)
    assert 'weight' not in written.modules[0].fields and written.bias is written.modules[0].bias
    assert list(written.weightSize.data) == [3, 4] and list(written.viewIn.data) == [3, 4]
    # A convolution normalised along its second dimension (input planes).
    conv_w = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    conv = obj('nn.SpatialConvolution', nInputPlane=3, nOutputPlane=2, kW=2, kH=2, dW=1, dH=1, padW=1, padH=0,
               bias=torch.randn(2, dtype=torch.float64), gradBias=torch.zeros(2, dtype=torch.float64))
    v, g = torch.randn(3, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    model = t7.load_model(obj('nn.WeightNorm', modules=[conv], v=v, g=g, outputDim=2,
                              weightSize=t7.read.Storage('torch.LongStorage', torch.tensor(list(conv_w.shape)))))
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    weight = lua_weight_norm(v, g, [2, 3, 2, 2], 2)
    torch.testing.assert_close(model(x), F.conv2d(x, weight, conv.bias, padding=(0, 1)))
    torch.testing.assert_close(model(x[0]), F.conv2d(x[:1], weight, conv.bias, padding=(0, 1))[0])
    written = roundtrip(model, tmp_path, x)
    assert written.outputDim == 2 and list(written.viewOut.data) == [3, 2, 2, 2]


def test_weight_norm_trains_v_and_g():
    lin = linear(4, 3)
    v, g = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    model = t7.load_model(obj('nn.WeightNorm', modules=[lin], v=v, g=g, outputDim=1)).train()
    model(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    assert model.v.grad is not None and model.g.grad is not None and model.module.weight.numel() == 0


def test_linear_weight_norm(tmp_path):
    torch.manual_seed(3)
    v, g = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 1, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    fields = dict(v=v, g=g, bias=b, eps=1e-16, inputSize=4, outputSize=3, weight=torch.zeros(3, 4),
                  norm=torch.zeros(3, 1), scale=torch.zeros(3, 1), gradV=torch.zeros(3, 4),
                  gradG=torch.zeros(3, 1), gradBias=torch.zeros(3))
    model = t7.load_model(obj('nn.LinearWeightNorm', **fields))
    # updateWeightMatrix: norm of each row clamped to eps, then weight = v * g / norm.
    weight = v * g / v.norm(2, 1, keepdim=True).clamp(1e-16)
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x), x @ weight.t() + b)
    torch.testing.assert_close(model(x[1]), x[1] @ weight.t() + b)
    written = roundtrip(model, tmp_path, x)
    torch.testing.assert_close(written.weight, weight)
    assert (written.inputSize, written.outputSize, tuple(written.g.shape)) == (4, 3, (3, 1))
    no_bias = t7.load_model(obj('nn.LinearWeightNorm', **dict(fields, bias=None)))
    torch.testing.assert_close(no_bias(x), x @ weight.t())


def test_identity_at_inference_and_their_gradients(tmp_path):
    x = torch.randn(2, 3, dtype=torch.float64)
    cases = {
        'nn.GradientReversal': (dict(**{'lambda': 0.5}), 2, lambda x, g: -0.5 * g),
        'nn.ZeroGrad': ({}, 1, lambda x, g: torch.zeros_like(g)),
        'nn.L1Penalty': (dict(l1weight=0.3, sizeAverage=True, provideOutput=True), 1,
                         lambda x, g: g + 0.3 / x.numel() * x.sign()),
    }
    for name, (fields, version, lua_grad) in cases.items():
        model = t7.load_model(obj(name, version, **fields))
        torch.testing.assert_close(model(x), x)
        xg = x.clone().requires_grad_()
        grad_out = torch.randn_like(x)
        model(xg).backward(grad_out)
        torch.testing.assert_close(xg.grad, lua_grad(x, grad_out))
        written = roundtrip(model, tmp_path, x)
        assert written.typename == name and all(written.fields[k] == v for k, v in fields.items())
    # GradientReversal of version 1 has no lambda: its read takes 1.
    old = t7.load_model(obj('nn.GradientReversal', 1, **{'lambda': 0.5}))
    assert old.lambda_ == 1
    without_output = t7.load_model(obj('nn.L1Penalty', l1weight=2.0, provideOutput=False))
    xg = x.clone().requires_grad_()
    without_output(xg).backward(torch.ones_like(x))
    torch.testing.assert_close(xg.grad, 2 * x.sign())


def test_print_size_prints_as_lua(tmp_path, capsys):
    model = t7.load_model(obj('nn.PrintSize', prefix='here'))
    x = torch.randn(2, 3)
    assert model(x) is x
    assert capsys.readouterr().out == 'here:input\n\t\n 2\n 3\n[torch.LongStorage of size 2]\n\n'
    assert t7.to_lua(model).prefix == 'here'


def test_white_noise_adds_its_mean_in_evaluation(tmp_path):
    x = torch.randn(2, 3, dtype=torch.float64)
    # Saved in training mode (train unset): load_model evaluates, as Lua's evaluate() would.
    model = t7.load_model(obj('nn.WhiteNoise', mean=0.5, std=0.2, noise=torch.empty(0)))
    torch.testing.assert_close(model(x), x + 0.5)
    torch.manual_seed(0)
    noisy = model.train()(torch.zeros(1000, 10, dtype=torch.float64))
    assert abs(noisy.mean().item() - 0.5) < 0.02 and abs(noisy.std().item() - 0.2) < 0.02
    written = roundtrip(model.eval(), tmp_path, x)
    assert (written.mean, written.std, written.train) == (0.5, 0.2, False)


def test_maxout_and_layer_normalization_run_their_modules(tmp_path):
    lin = linear(4, 6)
    view = obj('nn.View', size=t7.read.Storage('torch.LongStorage', torch.tensor([3, 2])), numElements=6,
               numInputDims=1)
    maxout = t7.load_model(obj('nn.Maxout', modules=[lin, view, obj('nn.Max', dimension=1, nInputDims=2)]))
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = (x @ lin.weight.t() + lin.bias).view(5, 3, 2).max(1)[0]
    torch.testing.assert_close(maxout(x), expected)
    torch.testing.assert_close(maxout(x[0]), expected[0])
    written = roundtrip(maxout, tmp_path, x)
    assert written.typename == 'nn.Maxout' and len(written.modules) == 3

    n, eps = 4, 1e-10
    mean = obj('nn.Sequential', modules=[obj('nn.Mean', dimension=1, nInputDims=1),
                                         obj('nn.Replicate', nfeatures=n, dim=1, ndim=1)])
    gain, shift = torch.tensor([1., 2., 3., 4.], dtype=torch.float64), torch.full((n,), 0.25, dtype=torch.float64)
    modules = [obj('nn.ConcatTable', modules=[obj('nn.Identity'), mean]), obj('nn.CSubTable'),
               obj('nn.Normalize', p=2, eps=eps), obj('nn.MulConstant', constant_scalar=n ** 0.5),
               obj('nn.CMul', size=t7.read.Storage('torch.LongStorage', torch.tensor([n])), weight=gain),
               obj('nn.Add', bias=shift, scalar=False)]
    norm = t7.load_model(obj('nn.LayerNormalization', modules=modules))
    x = torch.randn(n, dtype=torch.float64)
    centred = x - x.mean()
    expected = centred / (centred.pow(2).sum() + eps).sqrt() * n ** 0.5 * gain + shift
    torch.testing.assert_close(norm(x), expected)
    # A batch, as Lua computes it: Replicate leaves the N means as an n x N tensor, which CSubTable's add takes
    # element by element in memory order.
    batch = torch.randn(3, n, dtype=torch.float64)
    centred = batch - batch.mean(1).expand(n, 3).reshape(3, n)
    expected = centred / (centred.pow(2).sum(1, keepdim=True) + eps).sqrt() * n ** 0.5 * gain + shift
    torch.testing.assert_close(norm(batch), expected)
    written = roundtrip(norm, tmp_path, x)
    assert written.typename == 'nn.LayerNormalization'


def test_crelu(tmp_path):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    model = t7.load_model(obj('nn.CReLU', nInputDims=3, inplace=False, modules=[]))
    # updateOutput: each sample flattened, joined with its negation, rectified, resized to twice the planes.
    flat = x.view(2, -1)
    expected = torch.cat([flat, -flat], 1).clamp(min=0).view(2, 6, 4, 4)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x[0]), expected[0])
    written = roundtrip(model, tmp_path, x)
    assert [m.typename for m in written.modules] == ['nn.ConcatTable', 'nn.JoinTable', 'nn.ReLU']
    assert written.modules[0].modules[1].constant_scalar == -1 and written.modules[1].dimension == 2


def test_collapse_glu_constant(tmp_path):
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    collapse = t7.load_model(obj('nn.Collapse', nInputDim=2))
    torch.testing.assert_close(collapse(x), x.reshape(2, 12))
    torch.testing.assert_close(collapse(x[0]), x[0].reshape(12))
    roundtrip(collapse, tmp_path, x)

    glu = t7.load_model(obj('nn.GatedLinearUnit', dim=2))
    y = torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(glu(y), y[:, :2] * torch.sigmoid(y[:, 2:]))
    last = t7.load_model(obj('nn.GatedLinearUnit'))
    torch.testing.assert_close(last(x), x[..., :2] * torch.sigmoid(x[..., 2:]))
    assert 'dim' not in roundtrip(last, tmp_path, x).fields

    value = torch.tensor([[1., 2.], [3., 4.]], dtype=torch.float64)
    constant = t7.load_model(obj('nn.Constant', value=value, nInputDim=2))
    torch.testing.assert_close(constant(x), value.expand(2, 2, 2))
    torch.testing.assert_close(constant(x[0]), value)
    written = roundtrip(constant, tmp_path, x)
    assert written.nInputDim == 2 and torch.equal(written.value, value)


def test_index_and_masked_select(tmp_path):
    t = torch.randn(3, 4, dtype=torch.float64)
    index = torch.tensor([3, 1, 3])
    model = t7.load_model(obj('nn.Index', dimension=2))
    # Lua's indices count from 1.
    torch.testing.assert_close(model([t, index]), torch.stack([t[:, 2], t[:, 0], t[:, 2]], 1))
    written = roundtrip(model, tmp_path, [t, index])
    assert written.dimension == 2 and len(written.gradInput) == 2

    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.uint8)
    select = t7.load_model(obj('nn.MaskedSelect'))
    torch.testing.assert_close(select([t, mask]), torch.cat([t[0, [0, 3]], t[2]]))
    assert roundtrip(select, tmp_path, [t, mask])._gradMask.dtype == torch.uint8


def test_lua_print_of_the_decorators():
    from t7.__main__ import lua_string
    lin = linear(4, 3)
    assert lua_string(obj('nn.NaN', id=3, modules=[lin])) == 'nn.NaN(3) @ nn.Linear(4 -> 3)'
    assert lua_string(obj('nn.Bottle', modules=[lin])) == 'nn.Bottle @ nn.Linear(4 -> 3)'
    assert lua_string(obj('nn.DontCast', modules=[obj('nn.ZeroGrad')])) == 'nn.DontCast @ nn.ZeroGrad'


def test_mixture_table_of_a_tensor_and_of_a_table(tmp_path):
    gater = torch.softmax(torch.randn(2, 3, dtype=torch.float64), 1)
    experts = torch.randn(2, 3, 4, dtype=torch.float64)
    model = t7.load_model(obj('nn.MixtureTable'))
    # Each sample's experts weighted by its gater outputs, summed over the experts' dimension (2 for a batch).
    expected = torch.stack([sum(gater[n, e] * experts[n, e] for e in range(3)) for n in range(2)])
    torch.testing.assert_close(model([gater, experts]), expected)
    torch.testing.assert_close(model([gater[0], experts[0]]), expected[0])
    torch.testing.assert_close(model([gater, [experts[:, e] for e in range(3)]]), expected)
    roundtrip(model, tmp_path, [gater, experts])
    along_last = t7.load_model(obj('nn.MixtureTable', dim=3))
    torch.testing.assert_close(along_last([gater, experts.transpose(1, 2)]), expected)
    assert t7.to_lua(along_last).dim == 3


def test_temporal_sub_sampling(tmp_path):
    torch.manual_seed(4)
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    model = t7.load_model(obj('nn.TemporalSubSampling', inputFrameSize=3, kW=3, dW=2, weight=w, bias=b,
                              gradWeight=torch.zeros(3), gradBias=torch.zeros(3)))
    x = torch.randn(8, 3, dtype=torch.float64)
    expected = torch.stack([w * x[t * 2:t * 2 + 3].sum(0) + b for t in range(3)])
    torch.testing.assert_close(model(x), expected)
    written = roundtrip(model, tmp_path, x)
    assert (written.kW, written.dW, written.inputFrameSize) == (3, 2, 3)


def test_feature_lp_pooling(tmp_path):
    x = torch.rand(2, 7, 3, dtype=torch.float64)
    model = t7.load_model(obj('nn.FeatureLPPooling', width=3, stride=2, power=2, batch_mode=True))
    expected = torch.stack([x[:, o * 2:o * 2 + 3].pow(2).sum(1).sqrt() for o in range(3)], 1)
    torch.testing.assert_close(model(x), expected)
    single = t7.load_model(obj('nn.FeatureLPPooling', width=3, stride=2, power=2, batch_mode=False))
    torch.testing.assert_close(single(x[0]), expected[0])
    written = roundtrip(model, tmp_path, x)
    assert (written.width, written.stride, written.power, written.batch_mode) == (3, 2, 2, True)


def test_upsampling_nearest_and_linear(tmp_path):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    nearest = t7.load_model(obj('nn.UpSampling', scale_factor=2, mode='nearest'))
    torch.testing.assert_close(nearest(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    roundtrip(nearest, tmp_path, x)
    linear_ = t7.load_model(obj('nn.UpSampling', mode='linear', oheight=5, owidth=7))
    out = linear_(x)
    # Corners kept: output row i sits at input row i * (3 - 1) / (5 - 1).
    assert out.shape == (1, 2, 5, 7)
    torch.testing.assert_close(out[..., ::2, ::2], x)
    torch.testing.assert_close(out[..., 1, 0], (x[..., 0, 0] + x[..., 1, 0]) / 2)
    written = roundtrip(linear_, tmp_path, x)
    assert (written.oheight, written.owidth, written.mode) == (5, 7, 'linear')
    volume = t7.load_model(obj('nn.UpSampling', scale_factor=2, mode='linear'))
    assert volume(torch.randn(1, 1, 2, 3, 4)).shape == (1, 1, 4, 6, 8)


def test_volumetric_replication_padding_dilated_convolution_and_pooling(tmp_path):
    torch.manual_seed(5)
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64)
    pad = t7.load_model(obj('nn.VolumetricReplicationPadding', pleft=1, pright=0, ptop=2, pbottom=1, pfront=0,
                            pback=1))
    out = pad(x)
    assert out.shape == (1, 2, 6, 9, 8)
    torch.testing.assert_close(out[:, :, :5, 2:8, 1:], x)
    torch.testing.assert_close(out[:, :, 5, 2:8, 1:], x[:, :, 4])
    torch.testing.assert_close(out[:, :, :5, 0, 0], x[:, :, :, 0, 0])
    torch.testing.assert_close(pad(x[0]), out[0])
    roundtrip(pad, tmp_path, x)

    weight, bias = torch.randn(3, 2, 2, 2, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    conv = t7.load_model(obj('nn.VolumetricDilatedConvolution', nInputPlane=2, nOutputPlane=3, kT=2, kW=2, kH=2,
                             dT=1, dW=2, dH=1, padT=0, padW=1, padH=1, dilationT=2, dilationW=1, dilationH=2,
                             weight=weight, bias=bias))
    # One output element from the Lua loop: input taken at dilated offsets, zero padded.
    padded = F.pad(x, [1, 1, 1, 1, 0, 0])
    t, h, w = 1, 2, 1
    patch = padded[0, :, t:t + 3:2, h:h + 3:2, 2 * w:2 * w + 2]
    torch.testing.assert_close(conv(x)[0, :, t, h, w], (weight * patch).sum((1, 2, 3, 4)) + bias)
    torch.testing.assert_close(conv(x[0]), conv(x)[0])
    written = roundtrip(conv, tmp_path, x)
    assert (written.dilationT, written.dilationH, written.padW) == (2, 2, 1)

    pool = t7.load_model(obj('nn.VolumetricDilatedMaxPooling', kT=2, kW=2, kH=2, dT=1, dW=2, dH=2, padT=0, padW=0,
                             padH=0, dilationT=2, dilationW=1, dilationH=1, ceil_mode=True))
    out = pool(x)
    assert out.shape == (1, 2, 3, 3, 4)
    torch.testing.assert_close(out[0, :, 1, 1, 1], x[0, :, 1:4:2, 2:4, 2:4].amax((1, 2, 3)))
    torch.testing.assert_close(pool(x[0]), out[0])
    written = roundtrip(pool, tmp_path, x)
    assert (written.dilationT, written.ceil_mode, written.kT) == (2, True, 2)


def test_partial_linear_takes_its_partition_of_columns(tmp_path):
    torch.manual_seed(6)
    weight, bias = torch.randn(5, 4, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    lookup = obj('nn.LookupTable', weight=weight, gradWeight=torch.zeros(5, 4, dtype=torch.float64),
                 paddingValue=0, shouldScaleGradByFreq=False)
    network = obj('nn.Sequential', modules=[obj('nn.ParallelTable', modules=[obj('nn.Identity'), lookup]),
                                            obj('nn.MM', transA=False, transB=True)])
    partition = torch.tensor([4., 2.], dtype=torch.float64)
    model = t7.load_model(obj('nn.PartialLinear', network=network, bias=bias, gradBias=torch.zeros(1, 5),
                              inputsize=4, outputsize=5, allcolumns=torch.arange(1., 6.), partition=partition))
    x = torch.randn(3, 4, dtype=torch.float64)
    # MM(false, true) of the input and the partition's rows of the lookup weight, plus those columns of the bias.
    torch.testing.assert_close(model(x), x @ weight[[3, 1]].t() + bias[:, [3, 1]])
    written = roundtrip(model, tmp_path, x)
    assert written.partition.tolist() == [4., 2.] and written.network.modules[1].transB is True
    everything = t7.load_model(obj('nn.PartialLinear', network=network, bias=None, inputsize=4, outputsize=5,
                                   allcolumns=torch.arange(1., 6.), partition=torch.arange(1., 6.)))
    torch.testing.assert_close(everything(x), x @ weight.t())
    assert sorted(n for n, _ in model.named_parameters()) == ['bias', 'network.0.1.weight']


def test_spatial_full_convolution_map(tmp_path):
    torch.manual_seed(7)
    table = torch.tensor([[1., 1.], [2., 1.], [2., 3.]])
    weight, bias = torch.randn(3, 2, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    model = t7.load_model(obj('nn.SpatialFullConvolutionMap', connTable=table, kW=3, kH=2, dW=2, dH=1,
                              nInputPlane=2, nOutputPlane=3, weight=weight, bias=bias))
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    # Each input pixel scatters its value times the connection's kernel onto its output plane.
    expected = bias[:, None, None].expand(3, 4, 9).clone()
    for (i, o), w in zip(table.long().tolist(), weight):
        for y in range(3):
            for z in range(4):
                expected[o - 1, y:y + 2, 2 * z:2 * z + 3] += x[i - 1, y, z] * w
    torch.testing.assert_close(model(x), expected)
    written = roundtrip(model, tmp_path, x)
    assert (written.kW, written.dW, written.nOutputPlane) == (3, 2, 3) and written.connTable.tolist() == table.tolist()


def test_volumetric_max_unpooling_undoes_its_pooling(tmp_path):
    pool = obj('nn.VolumetricMaxPooling', 2, kT=2, kW=2, kH=2, dT=2, dW=2, dH=2, padT=0, padW=0, padH=0,
               ceil_mode=False, indices=torch.empty(0, dtype=torch.int64))
    model = t7.load_model(obj('nn.Sequential', modules=[pool, obj('nn.VolumetricMaxUnpooling', pooling=pool)]))
    x = torch.randn(1, 2, 4, 4, 6, dtype=torch.float64)
    out = model(x)
    # Each 2x2x2 block keeps its maximum where it was, zeros elsewhere.
    blocks = x.view(1, 2, 2, 2, 2, 2, 3, 2)
    kept = blocks == blocks.amax((3, 5, 7), keepdim=True)
    torch.testing.assert_close(out, torch.where(kept, blocks, torch.zeros_like(blocks)).view_as(x))
    torch.testing.assert_close(model(x[0]), out[0])
    written = roundtrip(model, tmp_path, x, script=False)
    assert written.modules[1].pooling is written.modules[0]


def test_temporal_row_convolution(tmp_path):
    torch.manual_seed(8)
    weight, bias = torch.randn(3, 1, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64)
    # Feature f at output frame t: sum over k of weight[f][k] * x[t * dW + k][f], plus bias[f].
    expected = torch.stack([torch.stack([(weight[f, 0] * x[2 * t:2 * t + 2, f]).sum() + bias[f] for f in range(3)])
                            for t in range(3)])
    model = t7.load_model(obj('nn.TemporalRowConvolution', inputFrameSize=3, kW=2, dW=2, featFirst=False,
                              weight=weight, bias=bias))
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x[None].expand(2, 6, 3)), expected.expand(2, 3, 3))
    written = roundtrip(model, tmp_path, x)
    assert (written.kW, written.dW, written.featFirst) == (2, 2, False)
    first = t7.load_model(obj('nn.TemporalRowConvolution', inputFrameSize=3, kW=2, dW=2, featFirst=True,
                              weight=weight))
    torch.testing.assert_close(first(x.t()), (expected - bias).t())


def test_temporal_dynamic_k_max_pooling(tmp_path):
    x = torch.tensor([[1., 9.], [5., 2.], [3., 8.], [7., 0.], [2., 4.]], dtype=torch.float64)
    model = t7.load_model(obj('nn.TemporalDynamicKMaxPooling', minK=2, factor=0.5))
    # k = max(2, ceil(0.5 * 5)) = 3 largest per feature, in time order.
    expected = torch.tensor([[5., 9.], [3., 8.], [7., 4.]], dtype=torch.float64)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(torch.stack([x, x])), torch.stack([expected, expected]))
    written = roundtrip(model, tmp_path, x)
    assert (written.minK, written.factor) == (2, 0.5)


def lua_intervals(sample, n_in, n_out, pool):
    """THNN's generateIntervals: where each fractional pooling region starts."""
    alpha = (n_in - pool) / (n_out - 1)
    starts = [int((i + sample) * alpha) - int(sample * alpha) for i in range(n_out - 1)]
    return starts + [n_in - pool]


def test_fractional_max_pooling_with_fixed_regions(tmp_path):
    torch.manual_seed(9)
    samples = torch.rand(1, 2, 2, dtype=torch.float64)
    fields = dict(poolSizeW=2, poolSizeH=2, outW=4, outH=3, newRandomPool=True, randomSamples=samples)
    model = t7.load_model(obj('nn.SpatialFractionalMaxPooling', **fields))
    x = torch.randn(2, 7, 9, dtype=torch.float64)
    expected = torch.empty(2, 3, 4, dtype=torch.float64)
    for c in range(2):
        cols = lua_intervals(samples[0, c, 0].item(), 9, 4, 2)
        rows = lua_intervals(samples[0, c, 1].item(), 7, 3, 2)
        for i, r in enumerate(rows):
            for j, s in enumerate(cols):
                expected[c, i, j] = x[c, r:r + 2, s:s + 2].max()
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x[None]), expected[None])
    written = roundtrip(model, tmp_path, x)
    assert written.newRandomPool is True and torch.equal(written.randomSamples, samples)
    try:
        t7.load_model(obj('nn.SpatialFractionalMaxPooling', **dict(fields, newRandomPool=False)))
    except t7.T7Error as e:
        assert 'nn.SpatialFractionalMaxPooling at model' in str(e) and 'at random' in str(e)
    else:
        raise AssertionError('random pooling regions converted')


def test_kmeans_gives_the_nearest_centroid(tmp_path):
    centroids = torch.tensor([[0., 0.], [5., 5.], [0., 5.]], dtype=torch.float64)
    model = t7.load_model(obj('nn.Kmeans', k=3, dim=2, weight=centroids, gradWeight=torch.zeros(3, 2)))
    x = torch.tensor([[4., 6.], [1., -1.], [-1., 4.]], dtype=torch.float64)
    torch.testing.assert_close(model(x), torch.tensor([2., 1., 3.], dtype=torch.float64))
    written = roundtrip(model, tmp_path, x)
    assert (written.k, written.dim) == (3, 2)


def test_sparse_and_random_modules_are_refused_in_one_line():
    for name in ('nn.SparseLinear', 'nn.IndexLinear', 'nn.VolumetricFractionalMaxPooling'):
        try:
            t7.load_model(obj('nn.Sequential', modules=[obj(name)]))
        except t7.T7Error as e:
            assert str(e).startswith(f'unsupported module {name} at model.modules[0]: ') and '\n' not in str(e)
        else:
            raise AssertionError(f'{name} converted')


def test_convert_transposes_and_runs_its_saved_converter(tmp_path):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    fields = dict(inputShape='bchw', outputShape='bhwc', inputBatchDim=1, outputBatchDim=1, nInputDim=4,
                  nOutputDim=4, transposition=True, modules=[])
    model = t7.load_model(obj('nn.Convert', **fields))
    torch.testing.assert_close(model(x), x.permute(0, 2, 3, 1))
    # One image: a batch of one put in front and taken away again.
    torch.testing.assert_close(model(x[0]), x[0].permute(1, 2, 0))
    written = roundtrip(model, tmp_path, x)
    assert written.converter is written.modules[0] and written.converter.typename == 'nn.Transpose'
    assert written.converter.permutations == [[3, 2], [4, 3]]

    # bchw -> bf after a forward: Lua's converter is the Reshape of one sample's size.
    reshape = obj('nn.Reshape', size=t7.read.Storage('torch.LongStorage', torch.tensor([60])), nelement=60,
                  batchsize=t7.read.Storage('torch.LongStorage', torch.tensor([1, 60])))
    flat = t7.load_model(obj('nn.Convert', **dict(fields, outputShape='bf', nOutputDim=2, transposition=False,
                                                  modules=[reshape], converter=reshape)))
    torch.testing.assert_close(flat(x), x.reshape(2, 60))
    torch.testing.assert_close(flat(x[0]), x[0].reshape(60))
    roundtrip(flat, tmp_path, x)
    try:
        t7.load_model(obj('nn.Convert', **dict(fields, outputShape='bf', nOutputDim=2, transposition=False)))
    except t7.T7Error as e:
        assert 'nn.Convert at model' in str(e) and 'first input' in str(e)
    else:
        raise AssertionError('a Convert without its converter converted')


def test_tables_of_tables(tmp_path):
    a, b, c, d = (torch.full((2,), float(i), dtype=torch.float64) for i in range(4))
    zip_ = t7.load_model(obj('nn.ZipTable', output={}, gradInput={}))
    assert zip_([[a, b], [c, d]]) == [[a, c], [b, d]]
    one_to_many = t7.load_model(obj('nn.ZipTableOneToMany', output={}, gradInput={}))
    assert one_to_many([a, [b, c]]) == [[a, b], [a, c]]
    add = t7.load_model(obj('nn.CAddTensorTable', gradInput={}))
    out = add([a, [b, c]])
    assert len(out) == 2 and torch.equal(out[0], a + b) and torch.equal(out[1], a + c)
    for model in (zip_, one_to_many, add):
        t7.save_model(tmp_path / 'm.t7', model)
        assert type(t7.load_model(tmp_path / 'm.t7')) is type(model)
        assert t7.load(tmp_path / 'm.t7').typename == model.lua_type


def test_lua_print_of_upsampling():
    from t7.__main__ import lua_string
    assert lua_string(obj('nn.UpSampling', scale_factor=2, mode='nearest')) == 'nn.UpSampling(2x, nearest)'
    assert lua_string(obj('nn.UpSampling', oheight=5, owidth=7, mode='linear')) == 'nn.UpSampling(5x7, linear)'


def test_gpu_decorator_read_with_its_header(tmp_path):
    lin = linear(4, 3)
    x = torch.randn(2, 4, dtype=torch.float64)
    # nn.GPU's write: the object {_type, device} first, then its fields.
    t7.save(tmp_path / 'g.t7', obj('nn.GPU', 0, modules=[lin], device=2, outdevice=2, _type='torch.CudaTensor',
                                   gpuHeader=['torch.CudaTensor', 2]))
    with open(tmp_path / 'g.t7', 'rb') as f:
        data = f.read()
    assert data.index(b'torch.CudaTensor') < data.index(b'outdevice')
    model = t7.load_model(tmp_path / 'g.t7')
    torch.testing.assert_close(model(x), x @ lin.weight.t() + lin.bias)
    written = roundtrip(model, tmp_path, x)
    assert written.device == 2 and written.gpuHeader == ['torch.DoubleTensor', 2]
    from t7.__main__ import lua_string
    assert lua_string(written) == 'nn.GPU(2) @ nn.Linear(4 -> 3)'
