"""Port of torch/optim's sgd.lua, adam.lua and Logger.lua as lcnn's train.lua and test.lua use them."""
import math
import os

import torch

from errors import UserError

# optim.Logger writes its columns in the order LuaJIT's pairs() walks the table literal given to :add(). These
# are the orders Torch7's own LuaJIT (torch/luajit-rocks, 2.1.0-beta2, whose string hash is not seeded) gives.
TRAIN_LOG_KEYS = ('% top5 accuracy (train set)', 'avg loss (train set)', '% top1 accuracy (train set)')
TEST_LOG_KEYS = ('% top1 accuracy (test set) ', '% top5 accuracy (test set) ', 'avg loss (test set)')


# The fields optim.sgd / optim.adam keep in their state table: an -optimState file holds some of them.
OPTIM_STATE_FIELDS = frozenset({'learningRate', 'learningRateDecay', 'weightDecay', 'momentum', 'dampening',
                                'nesterov', 'evalCounter', 'dfdx', 't', 'm', 'v', 'denom', 'beta1', 'beta2',
                                'epsilon'})


class Logger:
    """optim.Logger as train.lua / test.lua set it up: pointed at `path` opened for appending, so every process
    start writes the header row again. (Lua created it without a file first, which printed "<Logger> warning: no
    path provided, logging to std out" although it then logged to the file; that misleading line is left out.)"""

    def __init__(self, path, keys):
        self.path = path
        self.keys = keys
        self.empty = True

    def add(self, symbols):
        text = ''
        if self.empty:
            self.empty = False
            text += ''.join(k + '\t' for k in self.keys) + '\n'
        text += ''.join('%11.4e' % symbols[k] + '\t' for k in self.keys) + '\n'
        with open(self.path, 'a') as f:
            f.write(text)


class LuaOptim:
    """optim.sgd or optim.adam over the tensors of Lua's getParameters() vector (`params`, in Lua order), whose
    whole state is the Lua optimState table `state` (hyper-parameters, evalCounter, and the flattened buffers).

    The arithmetic is torch.optim's: SGD matches optim.sgd exactly (weight decay added to the gradient of every
    parameter, momentum buffer started as a copy of the first gradient, dampening, Nesterov); learningRateDecay
    is applied by setting the step's lr to lr / (1 + evalCounter * lrd). Adam's epsilon is added to sqrt(v)
    before the bias correction in optim.adam, so each step hands torch eps / sqrt(1 - beta2^t).
    """

    def __init__(self, kind, params, state):
        if kind not in ('sgd', 'adam'):
            raise UserError(f"-optimType {kind}: use sgd or adam")
        self.kind = kind
        self.params = list(params)
        # the hyper-parameters and counters; the buffers live in torch's per-parameter state
        self.state = dict(state)
        if kind == 'sgd':
            self.torch = torch.optim.SGD(self.params, lr=1e-3)
            if 'dfdx' in self.state:
                for p, buf in zip(self.params, self._split('dfdx')):
                    self.torch.state[p]['momentum_buffer'] = buf
        else:
            self.torch = torch.optim.Adam(self.params, lr=1e-3)
            if 'm' in self.state and 'v' in self.state:
                step = float(self.state.get('t', 0))
                for p, m, v in zip(self.params, self._split('m'), self._split('v')):
                    self.torch.state[p].update(step=torch.tensor(step), exp_avg=m, exp_avg_sq=v)
        for name in ('dfdx', 'm', 'v', 'denom'):
            self.state.pop(name, None)

    def _split(self, name):
        """Lua's flat buffer `name` cut into one tensor per parameter."""
        flat = self.state[name]
        if not isinstance(flat, torch.Tensor):
            raise UserError(f"the optimState's '{name}' is not a tensor; give an optimState_N.t7 written by "
                            'optim.sgd / optim.adam')
        flat = flat.reshape(-1)
        total = sum(p.numel() for p in self.params)
        if flat.numel() != total:
            raise UserError(f"the optimState's '{name}' has {flat.numel()} values but this network has {total} "
                            'parameters that train; give the optimState saved with this network, and the flags '
                            'that choose what trains (-freezeDictionary) as they were then')
        pieces, offset = [], 0
        for p in self.params:
            pieces.append(flat[offset:offset + p.numel()].reshape(p.shape).to(p.device, p.dtype).clone())
            offset += p.numel()
        return pieces

    def _flat(self, slot):
        """torch's per-parameter buffers `slot` as Lua's one flat float32 vector, or None before any step."""
        if not self.params or slot not in self.torch.state.get(self.params[0], {}):
            return None
        return torch.cat([self.torch.state[p][slot].detach().reshape(-1).float().cpu() for p in self.params])

    def step(self):
        """One optim.<kind>(feval, x, state) call with the gradients now in the parameters."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        group = self.torch.param_groups[0]
        st = self.state
        lr = st.get('learningRate', 1e-3)
        lrd = st.get('learningRateDecay', 0)
        group['weight_decay'] = st.get('weightDecay', 0)
        if self.kind == 'sgd':
            momentum = st.get('momentum', 0)
            # optim.sgd's dampening defaults to the momentum, not to 0
            dampening = st.get('dampening', momentum)
            nesterov = bool(st.get('nesterov', False))
            if nesterov and (momentum <= 0 or dampening != 0):
                raise UserError('Nesterov momentum requires a momentum and zero dampening (check -momentum)')
            nevals = st.get('evalCounter', 0)
            group.update(lr=lr / (1 + nevals * lrd), momentum=momentum, dampening=dampening, nesterov=nesterov)
            self.torch.step()
            st['evalCounter'] = nevals + 1
        else:
            t = st.get('t', 0)
            beta1, beta2 = st.get('beta1', 0.9), st.get('beta2', 0.999)
            epsilon = st.get('epsilon', 1e-8)
            group.update(lr=lr / (1 + t * lrd), betas=(beta1, beta2),
                         eps=epsilon / math.sqrt(1 - beta2 ** (t + 1)))
            self.torch.step()
            st['t'] = t + 1

    def lua_state(self):
        """The optimState table as optim.sgd / optim.adam would hold it now (tensors float32 on the CPU)."""
        out = dict(self.state)
        if self.kind == 'sgd':
            dfdx = self._flat('momentum_buffer')
            if dfdx is not None:
                out['dfdx'] = dfdx
        else:
            m = self._flat('exp_avg')
            if m is not None:
                out['m'] = m
                out['v'] = self._flat('exp_avg_sq')
                out['denom'] = out['v'].sqrt().add(self.state.get('epsilon', 1e-8))
        return out


def load_optim_state(path):
    """torch.load of an optimState file (Lua's or ours) as a dict with string keys."""
    import t7
    if not os.path.isfile(path):
        raise UserError(f'-optimState {path}: file not found; give an optimState_N.t7 file')
    try:
        state = t7.load(path)
    except t7.T7Error as e:
        raise UserError(f'-optimState {path}: not a readable Torch7 file ({e})') from None
    if not isinstance(state, dict):
        raise UserError(f'-optimState {path}: holds a {type(state).__name__}, not an optimState table')
    if not OPTIM_STATE_FIELDS & set(state):
        found = ', '.join(sorted(map(str, state))[:5]) or 'nothing'
        raise UserError(f'-optimState {path}: holds no optimState field (it has {found}); give an optimState_N.t7 '
                        'written by a run')
    return state
