"""Port of lcnn's train.lua (per-epoch LR regimes, -breakBatch accumulation, train.log, per-batch lines) with
utils/queue.lua and optim's sgd/adam/Logger, and of clcNet's train.lua trainer (fb.resnet.torch's Trainer)."""
import collections
import contextlib
import copy
import math
import os
import sys
import time

import torch
import torch.distributed as torch_dist
from tqdm import tqdm

import checkpoints
import models
import util
from errors import UserError, console, lua_print, lua_tostring

# optim.Logger writes its columns in the order LuaJIT's pairs() walks the table literal given to :add(). These
# are the orders Torch7's own LuaJIT (torch/luajit-rocks, 2.1.0-beta2, whose string hash is not seeded) gives.
TRAIN_LOG_KEYS = ('% top5 accuracy (train set)', 'avg loss (train set)', '% top1 accuracy (train set)')
TEST_LOG_KEYS = ('% top1 accuracy (test set) ', '% top5 accuracy (test set) ', 'avg loss (test set)')

# train.lua's 55-epoch recipe: (first epoch, last epoch, learning rate before -LR, weight decay)
_REGIMES = (
    (1, 18, 1e-2, 0),
    (19, 29, 5e-3, 0),
    (30, 43, 1e-3, 0),
    (44, 52, 5e-4, 0),
    (53, 1e8, 1e-4, 0),
)


def params_for_epoch(epoch, optimType, opt):
    """train.lua's paramsForEpoch: ({learningRate, weightDecay}, whether `epoch` starts a regime)."""
    for first, last, learning_rate, weight_decay in _REGIMES:
        if first <= epoch <= last:
            return {'learningRate': learning_rate * opt.LR, 'weightDecay': weight_decay}, epoch == first
    raise UserError(f'-epochNumber {epoch}: epochs start at 1')


class Queue:
    """utils/queue.lua as train.lua uses it: push right, pop left, sum from left to right."""

    def __init__(self):
        self._items = collections.deque()

    def pushright(self, item):
        self._items.append(item)

    def popleft(self):
        return self._items.popleft() if self._items else None

    def size(self):
        return len(self._items)

    def sum(self):
        total = 0
        for item in self._items:
            total = total + item
        return total


class Logger:
    """optim.Logger as train.lua / test.lua set it up: created without a file (hence its warning on stdout), then
    pointed at `path` opened for appending, so every process start writes the header row again."""

    def __init__(self, path, keys):
        lua_print('<Logger> warning: no path provided, logging to std out')
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


class Timer:
    """torch.Timer's wall-clock part."""

    def __init__(self):
        self.start = time.perf_counter()

    def reset(self):
        self.start = time.perf_counter()

    def time(self):
        return time.perf_counter() - self.start


class Dist:
    """Where this process stands among the training processes: rank, world size, its device."""

    def __init__(self, rank=0, world=1, device=None):
        self.rank = rank
        self.world = world
        self.device = torch.device('cpu') if device is None else device

    @property
    def main(self):
        return self.rank == 0

    def mean(self, values):
        """The mean over the processes of each number in `values` (a no-op for one process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch_dist.all_reduce(t)
        return (t / self.world).tolist()

    def sum(self, values):
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch_dist.all_reduce(t)
        return t.tolist()

    def broadcast_buffers(self, net):
        """Rank 0's buffers (BatchNorm running statistics) everywhere, so every rank evaluates one model."""
        if self.world == 1:
            return
        for buf in net.buffers():
            torch_dist.broadcast(buf, 0)

    def _comm_device(self):
        # NCCL only moves CUDA tensors; gloo takes CPU ones
        return self.device if self.device.type == 'cuda' else torch.device('cpu')


def unwrap(model):
    """The network inside a DistributedDataParallel wrapper (what Lua's cleanDPT returns)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def progress(opt, dist, **kwargs):
    """A tqdm bar on stderr for rank 0, or a silent one when stderr is no terminal or with -noProgress."""
    disable = (not dist.main or getattr(opt, 'noProgress', False) or not sys.stderr.isatty())
    return tqdm(file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def progress_aware_printing(opt, dist):
    """Make lua_print lift the bars out of the way while it writes, so log lines never mix with a bar."""
    if dist.main and not getattr(opt, 'noProgress', False) and sys.stderr.isatty():
        console.before_write = lambda: tqdm.external_write_mode(file=sys.stderr)


def check_loss(value, epoch, batch):
    if not math.isfinite(value):
        raise UserError(f'the training loss became {value} at epoch {epoch}, batch {batch}; lower -LR '
                        '(or -constantLR) and start again, or -resume from the last checkpoint')


def worker_opt(opt, dist):
    """The options a worker loads its share of each batch with: batchSize / world and, but for rank 0, a seed of
    its own (so the workers draw different samples)."""
    if dist.world == 1:
        return opt
    if opt.batchSize % dist.world:
        raise UserError(f'-batchSize {opt.batchSize} (per -breakBatch piece) does not split evenly over '
                        f'{dist.world} workers; use a multiple of {dist.world}')
    sub = copy.copy(opt)
    sub.batchSize = opt.batchSize // dist.world
    sub.manualSeed = opt.manualSeed + 7919 * dist.rank
    return sub


def _to_device(tensor, dist, dtype=None):
    tensor = tensor.to(dist.device, non_blocking=True)
    return tensor if dtype is None else tensor.to(dtype)


# --- optim.sgd / optim.adam ----------------------------------------------------------------------------------

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
                            'parameters; give the optimState saved with this network')
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
    return state


def _zero_grad(params):
    for p in params:
        p.grad = None


def _divide_grad(params, k):
    for p in params:
        if p.grad is not None:
            p.grad.div_(k)


def model_regime(net, opt):
    """paramsForEpoch as train.lua chooses it: the model's LRregime when it has one, else the 55-epoch recipe."""
    regime = getattr(net, 'LRregime', None)
    return regime if callable(regime) else params_for_epoch


# --- lcnn's train.lua -----------------------------------------------------------------------------------------

class Trainer:
    """train.lua: one train() per epoch over -epochSize class-balanced batches, with the optimizer state kept
    across epochs (and checkpoints written after each) and the per-batch lines of the Lua code."""

    def __init__(self, model, criterion, opt, dist=None):
        self.model = model
        self.net = unwrap(model)
        self.criterion = criterion
        self.opt = opt
        self.dist = dist or Dist()
        self.params = models.parameters_lua_order(self.net)
        self.regime = model_regime(self.net, opt)
        state = {'learningRate': opt.LR, 'learningRateDecay': 0.0, 'momentum': opt.momentum,
                 'dampening': 0.0, 'weightDecay': opt.weightDecay}
        if opt.optimState != 'none':
            lua_print('Loading optimState from file: ' + opt.optimState)
            state = load_optim_state(opt.optimState)
        self.optim = LuaOptim(opt.optimType, self.params, state)
        self.logger = Logger(os.path.join(opt.save, 'train.log'), TRAIN_LOG_KEYS) if self.dist.main else None
        self.top1Queue, self.top5Queue = Queue(), Queue()
        self.timer, self.dataTimer, self.procTimer = Timer(), Timer(), Timer()
        self.sub_opt = worker_opt(opt, self.dist)

    def set_regime(self, epoch):
        """The start of train(): the epoch's learning rate and weight decay into the optimState."""
        opt, st = self.opt, self.optim.state
        params, new_regime = self.regime(epoch, opt.optimType, opt)
        if new_regime or st.get('learningRate') != params['learningRate']:
            st.update(learningRate=params['learningRate'], learningRateDecay=0.0, momentum=opt.momentum,
                      dampening=0.0, weightDecay=params['weightDecay'])
        if opt.constantLR >= 0:
            st['learningRate'] = opt.constantLR

    def train(self, epoch, loader):
        opt = self.opt
        lua_print('==> doing epoch on training data:')
        lua_print('==> online epoch # ' + lua_tostring(epoch))
        self.set_regime(epoch)
        self.batchNumber = 0
        self.model.train()
        tm = Timer()
        self.top1Sum = self.top5Sum = self.loss_epoch = 0
        self.epoch = epoch
        _zero_grad(self.params)
        with progress(opt, self.dist, total=opt.epochSize, desc=f'epoch {epoch} train', unit='batch') as bar:
            for inputs, labels in loader.train_batches(self.sub_opt, opt.epochSize):
                self.train_batch(inputs, labels)
                bar.update(1)
        self.loss_epoch = self.loss_epoch / opt.epochSize
        if self.logger is not None:
            self.logger.add({
                '% top1 accuracy (train set)': self.top1Sum / opt.epochSize,
                '% top5 accuracy (train set)': self.top5Sum / opt.epochSize,
                'avg loss (train set)': self.loss_epoch,
            })
        lua_print(('Epoch: [%d][TRAINING SUMMARY] Total Time(s): %.2f\t'
                   'average loss (per batch): %.2f \t '
                   'accuracy(%%):\t top-1 %.2f\t') % (epoch, tm.time(), self.loss_epoch,
                                                      self.top1Sum / opt.epochSize))
        lua_print('\n')
        if not opt.noCheckpoint and self.dist.main:
            checkpoints.save_epoch(opt, epoch, self.net, self.optim.lua_state())

    def train_batch(self, inputs, labels):
        opt, dist = self.opt, self.dist
        data_loading_time = self.dataTimer.time()
        self.procTimer.reset()
        inputs = _to_device(inputs, dist)
        labels = _to_device(labels, dist)
        update = (self.batchNumber + 1) % opt.breakBatch == 0
        # DDP averages the gradients over the workers only on the sub-batch that completes a batch
        sync = contextlib.nullcontext() if update or dist.world == 1 else self.model.no_sync()
        with sync:
            outputs = self.model(inputs)
            loss = self.criterion(outputs, labels)
            loss.backward()
        if update:
            if opt.breakBatch > 1:
                _divide_grad(self.params, opt.breakBatch)
            self.optim.step()
            _zero_grad(self.params)
        self.batchNumber += 1
        top1, top5 = util.compute_score(outputs.detach().float(), labels, 1)
        err, top1, top5 = dist.mean([loss.item(), top1, top5])
        check_loss(err, self.epoch, math.ceil(self.batchNumber / opt.breakBatch))
        self.loss_epoch += err
        self.top1Sum += top1
        self.top5Sum += top5
        self.top1Queue.pushright(top1)
        self.top5Queue.pushright(top5)
        while self.top1Queue.size() > opt.nLastIterAccuracy:
            self.top1Queue.popleft()
        while self.top5Queue.size() > opt.nLastIterAccuracy:
            self.top5Queue.popleft()
        top1_recent = self.top1Queue.sum() / self.top1Queue.size()
        top5_recent = self.top5Queue.sum() / self.top5Queue.size()
        lua_print(('Epoch: [%d][%d/%d]\tTime %.3f(%.3f) Err %.4f Top1-%%: %.2f {%.2f, %.2f}'
                   ' Top5-%%: %.2f {%.2f, %.2f} LR %.0e DataTime %.3f') % (
            self.epoch, math.ceil(self.batchNumber / opt.breakBatch), opt.epochSize / opt.breakBatch,
            self.timer.time(), self.procTimer.time(), err, top1, self.top1Sum / self.batchNumber, top1_recent,
            top5, self.top5Sum / self.batchNumber, top5_recent, self.optim.state['learningRate'],
            data_loading_time))
        self.dataTimer.reset()
        self.timer.reset()


# --- clcNet's train.lua (fb.resnet.torch's Trainer) ----------------------------------------------------------

def clc_compute_score(output, target, n_crops):
    """Trainer:computeScore: top-1 and top-5 *error* in percent (crops summed), from topk(5) of the scores."""
    scores = output.detach().float()
    if n_crops > 1:
        scores = scores.reshape(scores.shape[0] // n_crops, n_crops, scores.shape[1]).sum(1)
    batch_size = scores.shape[0]
    k = min(5, scores.shape[1])
    predictions = scores.topk(k, 1, True, True)[1].cpu()
    correct = predictions == target.detach().long().cpu().reshape(batch_size, 1)
    top1 = 1.0 - correct[:, :1].sum().item() / batch_size
    top5 = 1.0 - correct[:, :k].sum().item() / batch_size
    return top1 * 100, top5 * 100


class ClcTrainer:
    """clcNet's Trainer: nesterov SGD whose learning rate falls linearly to 0 over all iterations of the run,
    cross-entropy, per-batch lines ' | Epoch: ...', and test() with optional ten-crop averaging."""

    def __init__(self, model, criterion, opt, optim_state=None, dist=None):
        self.model = model
        self.net = unwrap(model)
        self.criterion = criterion
        self.opt = opt
        self.dist = dist or Dist()
        self.params = models.parameters_lua_order(self.net)
        if optim_state is None and opt.optimState != 'none':
            lua_print('Loading optimState from file: ' + opt.optimState)
            optim_state = load_optim_state(opt.optimState)
        if optim_state is None:
            optim_state = {'learningRate': opt.LR, 'learningRateDecay': 0.0, 'momentum': opt.momentum,
                           'nesterov': True, 'dampening': 0.0, 'weightDecay': opt.weightDecay}
        self.optim = LuaOptim('sgd', self.params, optim_state)
        self.sub_opt = worker_opt(opt, self.dist)
        self.dtype = next(self.net.parameters()).dtype

    @property
    def optimState(self):
        return self.optim.lua_state()

    def learning_rate_linear(self, epoch, n, batches_per_epoch):
        total_steps = batches_per_epoch * self.opt.nEpochs
        cur_step = (epoch - 1) * batches_per_epoch + (n - 1)
        return self.opt.LR * (1.0 - cur_step / total_steps)

    def train(self, epoch, loader):
        opt, dist = self.opt, self.dist
        timer, data_timer = Timer(), Timer()
        train_size = math.ceil(loader.size() / opt.batchSize)
        top1_sum = top5_sum = loss_sum = 0.0
        n_seen = 0
        lua_print('=> Training epoch # ' + lua_tostring(epoch))
        self.model.train()
        batches = loader.train_batches(self.sub_opt, train_size)
        with progress(opt, dist, total=train_size, desc=f'epoch {epoch} train', unit='batch') as bar:
            for n, (inputs, labels) in enumerate(batches, 1):
                data_time = data_timer.time()
                self.optim.state['learningRate'] = self.learning_rate_linear(epoch, n, train_size)
                if n == 1:
                    lua_print('lr = ' + lua_tostring(self.optim.state['learningRate']))
                inputs = _to_device(inputs, dist, self.dtype)
                labels = _to_device(labels, dist)
                output = self.model(inputs)
                loss = self.criterion(output, labels)
                _zero_grad(self.params)
                loss.backward()
                self.optim.step()
                top1, top5 = clc_compute_score(output, labels, 1)
                loss_value, top1, top5 = dist.mean([loss.item(), top1, top5])
                check_loss(loss_value, epoch, n)
                batch_size = output.shape[0] * dist.world
                top1_sum += top1 * batch_size
                top5_sum += top5 * batch_size
                loss_sum += loss_value * batch_size
                n_seen += batch_size
                lua_print((' | Epoch: [%d][%d/%d]    Time %.3f  Data %.3f  Err %1.4f  top1 %7.3f  top5 %7.3f') % (
                    epoch, n, train_size, timer.time(), data_time, loss_value, top1, top5))
                bar.update(1)
                timer.reset()
                data_timer.reset()
        return top1_sum / n_seen, top5_sum / n_seen, loss_sum / n_seen

    def test(self, epoch, loader):
        import test as lcnn_test
        opt, dist = self.opt, self.dist
        timer, data_timer = Timer(), Timer()
        top1_sum = top5_sum = 0.0
        n_seen = 0
        dist.broadcast_buffers(self.net)
        self.net.eval()
        # fb.resnet.torch tests every image: the last batch may be short
        batches = lcnn_test.BatchShard(loader, opt, dist, partial=True)
        size = batches.total
        with torch.no_grad(), progress(opt, dist, total=len(batches), desc=f'epoch {epoch} test',
                                       unit='batch') as bar:
            for n, inputs, labels in batches:
                data_time = data_timer.time()
                output = self.net(_to_device(inputs, dist, self.dtype))
                n_crops = output.shape[0] // labels.shape[0]
                top1, top5 = clc_compute_score(output, labels, n_crops)
                batch_size = labels.shape[0]
                top1_sum += top1 * batch_size
                top5_sum += top5 * batch_size
                n_seen += batch_size
                lua_print((' | Test: [%d][%d/%d]    Time %.3f  Data %.3f  top1 %7.3f (%7.3f)  top5 %7.3f (%7.3f)') % (
                    epoch, n, size, timer.time(), data_time, top1, top1_sum / n_seen, top5, top5_sum / n_seen))
                bar.update(1)
                timer.reset()
                data_timer.reset()
        top1_sum, top5_sum, n_seen = dist.sum([top1_sum, top5_sum, n_seen])
        self.model.train()
        lua_print((' * Finished epoch # %d     top1: %7.3f  top5: %7.3f\n') % (
            epoch, top1_sum / n_seen, top5_sum / n_seen))
        return top1_sum / n_seen, top5_sum / n_seen
