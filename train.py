"""Port of lcnn's train.lua (per-epoch LR regimes, -breakBatch accumulation, train.log, per-batch lines) with
utils/queue.lua, and of clcNet's train.lua trainer (fb.resnet.torch's Trainer)."""
import collections
import contextlib
import math
import os

import torch

import checkpoints
import models
import util
from errors import UserError, lua_print, lua_tostring
from optim import Logger, LuaOptim, TRAIN_LOG_KEYS, load_optim_state
from runtime import BatchShard, Dist, Timer, progress, to_device, unwrap, worker_opt

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


def check_loss(value, epoch, batch):
    if not math.isfinite(value):
        raise UserError(f'the training loss became {value} at epoch {epoch}, batch {batch}; lower -LR '
                        '(or -constantLR) and start again, or -resume from the last checkpoint')


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
        # the tensors of Lua's flat parameter vector, less those kept fixed (-freezeDictionary): the optimState
        # then holds its buffers for the trained ones only, in the same order
        self.params = [p for p in models.parameters_lua_order(self.net) if p.requires_grad]
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
        inputs = to_device(inputs, dist)
        labels = to_device(labels, dist)
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
                inputs = to_device(inputs, dist, self.dtype)
                labels = to_device(labels, dist)
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
        opt, dist = self.opt, self.dist
        timer, data_timer = Timer(), Timer()
        top1_sum = top5_sum = 0.0
        n_seen = 0
        dist.broadcast_buffers(self.net)
        self.net.eval()
        # fb.resnet.torch tests every image: the last batch may be short
        batches = BatchShard(loader, opt, dist, partial=True)
        size = batches.total
        with torch.no_grad(), progress(opt, dist, total=len(batches), desc=f'epoch {epoch} test',
                                       unit='batch') as bar:
            for n, inputs, labels in batches:
                data_time = data_timer.time()
                output = self.net(to_device(inputs, dist, self.dtype))
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
