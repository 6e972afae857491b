"""Port of torch-rnn's recurrent modules (jcjohnson/torch-rnn: LSTM.lua, VanillaRNN.lua, LanguageModel.lua), whose
files are 2016's most common word- and character-level language models besides char-rnn's nngraph ones, and of the
rnn package's (Element-Research/rnn) SeqLSTM.lua, Sequencer.lua, Recursor.lua, MaskZero.lua and its step-by-step
LSTM.lua, FastLSTM.lua and GRU.lua."""
from typing import List

import torch
from torch import Tensor, nn

from layers.conv import uniform_
from layers.containers import specialize
from layers.tables import TABLE, TENSOR


class LSTM(nn.Module):
    """torch-rnn's nn.LSTM(input_dim, hidden_dim) over whole sequences: x is N x T x D, the output every step's
    hidden state, N x T x H. weight is (D + H) x 4H (input rows, then hidden rows), gates in the order input,
    forget, output, candidate. The input may also be {c0, h0, x} or {h0, x}; without them the states start at
    zero, as after the resetStates() that torch-rnn's sampling calls (remember_states is kept for writing back)."""
    lua_type = 'nn.LSTM'

    def __init__(self, input_dim, hidden_dim, device=None):
        super().__init__()
        self.input_dim, self.hidden_dim = int(input_dim), int(hidden_dim)
        self.weight = nn.Parameter(torch.empty(input_dim + hidden_dim, 4 * hidden_dim, device=device))
        self.bias = nn.Parameter(torch.empty(4 * hidden_dim, device=device))
        self.remember_states = False
        if not self.weight.is_meta:
            with torch.no_grad():
                self.weight.normal_(0, 1 / (input_dim + hidden_dim) ** 0.5)
                self.bias.zero_()
                self.bias[hidden_dim:2 * hidden_dim] = 1

    def run(self, x: Tensor, c: Tensor, h: Tensor, mask_zero: bool = False) -> Tensor:
        """The hidden states for x (N x T x D) from the states c and h; with mask_zero (the rnn package's
        maskzero) the states of a sample whose input step is all zeros become zero."""
        H, D = self.hidden_dim, self.input_dim
        if x.dim() != 3 or x.size(2) != D:
            raise ValueError(f'{self.lua_type}: input must be 3-D with {D} features')
        projected = torch.matmul(x, self.weight[:D]) + self.bias
        recurrent = self.weight[D:]
        outs: List[Tensor] = []
        for t in range(x.size(1)):
            a = projected[:, t] + h.mm(recurrent)
            gates = a[:, :3 * H].sigmoid()
            c = gates[:, H:2 * H] * c + gates[:, :H] * a[:, 3 * H:].tanh()
            h = gates[:, 2 * H:] * c.tanh()
            if mask_zero:
                keep = (x[:, t].norm(2, 1) != 0).unsqueeze(1)
                c = torch.where(keep, c, torch.zeros_like(c))
                h = torch.where(keep, h, torch.zeros_like(h))
            outs.append(h)
        return torch.stack(outs, 1)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, list):
            return _TableLSTM.forward(self, x)
        zero = x.new_zeros(x.size(0), self.hidden_dim)
        return self.run(x, zero, zero)

    def lua_input_kind(self):
        return None

    def lua_specialize(self, kind):
        if kind == TABLE:
            self.__class__ = _TableLSTM
        return TENSOR


class _TableLSTM(LSTM):
    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[len(xs) - 1]
        zero = x.new_zeros(x.size(0), self.hidden_dim)
        if len(xs) == 3:
            return self.run(x, xs[0], xs[1])
        if len(xs) == 2:
            return self.run(x, zero, xs[0])
        raise ValueError('nn.LSTM: the input must be x, {h0, x} or {c0, h0, x}')


class SeqLSTM(LSTM):
    """The rnn package's nn.SeqLSTM(inputsize, outputsize): torch-rnn's LSTM (same weight layout and gates) on a
    time-major T x N x D input unless batchfirst; with maskzero, steps whose input is all zeros zero the states.
    The states start at zero (its default _remember 'neither')."""
    lua_type = 'nn.SeqLSTM'

    def __init__(self, inputsize, outputsize, batchfirst=False, maskzero=False, device=None):
        super().__init__(inputsize, outputsize, device=device)
        self.batchfirst, self.maskzero = bool(batchfirst), bool(maskzero)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, list):
            return _TableSeqLSTM.forward(self, x)
        zero = x.new_zeros(x.size(0 if self.batchfirst else 1), self.hidden_dim)
        return self.sequence(x, zero, zero)

    def sequence(self, x: Tensor, c: Tensor, h: Tensor) -> Tensor:
        if self.batchfirst:
            return self.run(x, c, h, self.maskzero)
        return self.run(x.transpose(0, 1), c, h, self.maskzero).transpose(0, 1)

    def lua_specialize(self, kind):
        if kind == TABLE:
            self.__class__ = _TableSeqLSTM
        return TENSOR


class _TableSeqLSTM(SeqLSTM):
    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[len(xs) - 1]
        zero = x.new_zeros(x.size(0 if self.batchfirst else 1), self.hidden_dim)
        if len(xs) == 3:
            return self.sequence(x, xs[0], xs[1])
        if len(xs) == 2:
            return self.sequence(x, zero, xs[0])
        raise ValueError('nn.SeqLSTM: the input must be x, {h0, x} or {c0, h0, x}')


class VanillaRNN(nn.Module):
    """torch-rnn's nn.VanillaRNN(input_dim, hidden_dim): h_t = tanh(x_t Wx + h_{t-1} Wh + b) over N x T x D, with
    weight (D + H) x H; the input may also be {h0, x}, else h0 is zero (as for LSTM)."""
    lua_type = 'nn.VanillaRNN'

    def __init__(self, input_dim, hidden_dim, device=None):
        super().__init__()
        self.input_dim, self.hidden_dim = int(input_dim), int(hidden_dim)
        self.weight = nn.Parameter(torch.empty(input_dim + hidden_dim, hidden_dim, device=device))
        self.bias = nn.Parameter(torch.empty(hidden_dim, device=device))
        self.remember_states = False
        uniform_(1 / (input_dim + hidden_dim) ** 0.5, self.weight, self.bias)

    def run(self, x: Tensor, h: Tensor) -> Tensor:
        D = self.input_dim
        if x.dim() != 3 or x.size(2) != D:
            raise ValueError(f'nn.VanillaRNN: input must be N x T x {D}')
        projected = torch.matmul(x, self.weight[:D]) + self.bias
        recurrent = self.weight[D:]
        outs: List[Tensor] = []
        for t in range(x.size(1)):
            h = (projected[:, t] + h.mm(recurrent)).tanh()
            outs.append(h)
        return torch.stack(outs, 1)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, list):
            return _TableVanillaRNN.forward(self, x)
        return self.run(x, x.new_zeros(x.size(0), self.hidden_dim))

    def lua_input_kind(self):
        return None

    def lua_specialize(self, kind):
        if kind == TABLE:
            self.__class__ = _TableVanillaRNN
        return TENSOR


class _TableVanillaRNN(VanillaRNN):
    def forward(self, xs: List[Tensor]) -> Tensor:
        if len(xs) != 2:
            raise ValueError('nn.VanillaRNN: the input must be x or {h0, x}')
        return self.run(xs[1], xs[0])


FLATTEN, UNFLATTEN = 1, 2


class LanguageModel(nn.Module):
    """torch-rnn's nn.LanguageModel: its `net` (LookupTable, recurrent layers, optional BatchNormalization and
    Dropout, Linear) on N x T token indices, giving N x T x vocabulary scores. Lua resizes the net's Views to the
    batch on every forward; here `reshapes[i]` says what view i does: FLATTEN to (N*T) x ..., UNFLATTEN back to
    N x T x ..., 0 for a module that runs as it is."""
    lua_type = 'nn.LanguageModel'

    def __init__(self, net: List[nn.Module], reshapes: List[int]):
        super().__init__()
        self.net = nn.ModuleList(net)
        self.reshapes = list(reshapes)

    def forward(self, x: Tensor) -> Tensor:
        n, t = x.size(0), x.size(1)
        for i, module in enumerate(self.net):
            how = self.reshapes[i]
            if how == 1:  # FLATTEN (TorchScript reads no module-level constants)
                x = x.reshape(n * t, -1)
            elif how == 2:  # UNFLATTEN
                x = x.reshape(n, t, -1)
            else:
                x = module(x)
        return x


class RecurrentStep(nn.Module):
    """The rnn package's step-by-step recurrent modules (LSTM, FastLSTM: state {h, c}; GRU: state h): each call is
    one step of its saved recurrentModule ({x, h, c} -> {h, c}, or {x, h} -> h), from the state the previous call
    left, zeros at first (as in evaluation, which runs recurrentModule itself); `reset` starts a new sequence,
    as Sequencer does before each forward. Python keeps the state, so TorchScript cannot compile it."""
    not_scriptable = "the rnn package's step-by-step recurrent modules (FastLSTM, LSTM, GRU) keep their state in Python"

    def __init__(self, step, inputSize, outputSize, cell):
        super().__init__()
        self.step = step
        self.inputSize, self.outputSize, self.cell = int(inputSize), int(outputSize), bool(cell)
        self.state = None

    def reset(self):
        self.state = None

    def forward(self, x):
        if self.state is None:
            zero = x.new_zeros(x.shape[:-1] + (self.outputSize,))
            self.state = [zero, zero] if self.cell else [zero]
        out = self.step([x] + self.state)
        self.state = list(out) if self.cell else [out]
        return self.state[0]


class Sequencer(nn.Module):
    """The rnn package's nn.Sequencer(module): the module applied to every step, the steps being the first
    dimension of a tensor (the output stacks them) or the entries of a table; the recurrent modules inside start
    each forward from zero states (its default _remember 'neither')."""
    lua_type = 'nn.Sequencer'

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            self.forget()
        if isinstance(x, list):
            return _TableSequencer.forward(self, x)
        return torch.stack([self.module(x[t]) for t in range(x.size(0))])

    @torch.jit.unused
    def forget(self):
        for m in self.module.modules():
            if isinstance(m, RecurrentStep):
                m.reset()

    def lua_input_kind(self):
        return None

    def lua_specialize(self, kind):
        specialize(self.module, TENSOR)
        if kind == TABLE:
            self.__class__ = _TableSequencer
            return TABLE
        return TENSOR


class _TableSequencer(Sequencer):
    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        if not torch.jit.is_scripting():
            self.forget()
        return [self.module(x) for x in xs]


class Recursor(nn.Module):
    """The rnn package's nn.Recursor(module), which Sequencer puts around a module: in evaluation one step is the
    module's forward."""
    lua_type = 'nn.Recursor'

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)


class MaskZero(nn.Module):
    """The rnn package's nn.MaskZero(module, nInputDim): the module's output, zeroed for every sample whose input
    is all zeros (a batch when the input has one dimension more than nInputDim, else the whole output)."""
    lua_type = 'nn.MaskZero'

    def __init__(self, module, nInputDim):
        super().__init__()
        self.module = module
        self.nInputDim = int(nInputDim)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, list):
            return self.mask_table(x)
        return self.mask(x, self.module(x))

    def mask(self, x: Tensor, out: Tensor) -> Tensor:
        if x.dim() == self.nInputDim:
            keep = (x.reshape(-1).norm(2) != 0).reshape([1] * out.dim())
        elif x.dim() - 1 == self.nInputDim:
            keep = (x.reshape(x.size(0), -1).norm(2, 1) != 0).reshape([x.size(0)] + [1] * (out.dim() - 1))
        else:
            raise ValueError(f'nn.MaskZero: nInputDim error: {x.dim()}, {self.nInputDim}')
        return torch.where(keep, out, torch.zeros_like(out))

    @torch.jit.unused
    def mask_table(self, xs):
        """A table in (the rnn package's LSTM:maskZero() wraps its {x, h, c} -> {h, c} step): the mask comes from
        the first tensor, and applies to every tensor of the output."""
        first = xs
        while isinstance(first, list):
            first = first[0]
        out = self.module(xs)
        return [self.mask(first, o) for o in out] if isinstance(out, list) else self.mask(first, out)
