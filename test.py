"""Port of lcnn's test.lua: a validation epoch of floor(nTest / batchSize) centre-crop batches whose per-batch
top-1 / top-5 (and loss) are averaged over batches, logged to test.log and printed in the Lua format."""
import torch

import util
from errors import UserError, lua_print, lua_tostring
from optim import Logger, TEST_LOG_KEYS
from runtime import BatchShard, Dist, Timer, progress, unwrap


class Tester:
    """test.lua: the test() that main runs after every train(), and alone under -testOnly."""

    def __init__(self, model, criterion, opt, dist=None):
        self.model = model
        self.criterion = criterion
        self.opt = opt
        self.dist = dist or Dist()
        self.logger = (Logger(f'{opt.save}/test.log', TEST_LOG_KEYS) if self.dist.main else None)
        self.timer = Timer()

    def test(self, epoch, loader):
        opt, dist = self.opt, self.dist
        lua_print('==> doing epoch on validation data:')
        lua_print('==> online epoch # ' + lua_tostring(epoch))
        n_test = loader.size()
        batches = BatchShard(loader, opt, dist)
        if batches.total == 0:
            raise UserError(f'-batchSize {lua_tostring(opt.batchSize)} is larger than the {n_test} validation '
                            'images, so there is no batch to test; use a smaller -batchSize')
        self.timer.reset()
        net = unwrap(self.model)
        dist.broadcast_buffers(net)
        net.eval()
        device = dist.device
        top1_sum = top5_sum = loss = 0.0
        n = 0
        with torch.no_grad(), progress(opt, dist, total=len(batches), desc=f'epoch {epoch} test',
                                       unit='batch') as bar:
            for number, inputs, labels in batches:
                outputs = net(inputs.to(device, non_blocking=True))
                if outputs.dim() == 1:
                    # Torch7's nn.View(n) reads a batch of one as a single sample and drops its batch dimension
                    outputs = outputs.unsqueeze(0)
                labels = labels.to(device, non_blocking=True)
                err = self.criterion(outputs, labels).item()
                n += 1
                loss += err
                top1, top5 = util.compute_score(outputs.float(), labels, 1)
                top1_sum += top1
                top5_sum += top5
                batch_number = number * opt.batchSize
                if batch_number % 1024 == 0:
                    lua_print(('Epoch: Testing [%d][%d/%d] | top1 : [%.2f (%.2f)] | top5 : [%.2f (%.2f)]') % (
                        epoch, batch_number, n_test, top1, top1_sum / n, top5, top5_sum / n))
                bar.update(1)
        top1_sum, top5_sum, loss, n = dist.sum([top1_sum, top5_sum, loss, n])
        loss = loss / n
        if self.logger is not None:
            self.logger.add({
                '% top1 accuracy (test set) ': top1_sum / n,
                '% top5 accuracy (test set) ': top5_sum / n,
                'avg loss (test set)': loss,
            })
        lua_print(('Epoch: [%d][TESTING SUMMARY] Total Time(s): %.2f \t'
                   'average loss (per batch): %.2f \t '
                   'accuracy [Center](%%):\t top-1 %.2f\t top-5 %.2f') % (
            epoch, self.timer.time(), loss, top1_sum / n, top5_sum / n))
        lua_print('\n')
        return top1_sum / n, top5_sum / n, loss
