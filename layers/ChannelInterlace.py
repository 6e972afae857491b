"""Port of clcNet's models/ChannelInterlace.lua (nn_plus.ChannelInterlace): the interlacing channel permutation
between clcNet's grouped convolutions."""
import torch
from torch import nn


def interlace_indices(channel, group):
    """0-based (forward, backward) index tensors: output channel j reads input channel forward[j]."""
    if channel < group or channel % group:
        raise ValueError(f'ChannelInterlace({channel}, {group}): channel must be a multiple of group and >= group')
    size = channel // group
    # Walking input channels g, g+group, g+2*group, ... for each g in turn numbers the output positions.
    order = torch.arange(channel).view(size, group).t().reshape(-1)
    forward = torch.empty(channel, dtype=torch.long)
    forward[order] = torch.arange(channel)
    backward = torch.empty(channel, dtype=torch.long)
    backward[forward] = torch.arange(channel)
    return forward, backward


class _Interlace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, forward, backward):
        ctx.dim, ctx.backward_idx = dim, backward
        return x.index_select(dim, forward)

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(ctx.dim, ctx.backward_idx), None, None, None


class ChannelInterlace(nn.Module):
    """Permute channels so that each group of the next grouped conv sees one channel from every previous group.

    The gradient goes back through Lua's own backward index table (b_idx), which is the inverse permutation.
    """
    lua_type = 'nn_plus.ChannelInterlace'

    def __init__(self, channel, group):
        super().__init__()
        self.channel, self.group = channel, group
        f_idx, b_idx = interlace_indices(channel, group)
        self.register_buffer('f_idx', f_idx, persistent=False)
        self.register_buffer('b_idx', b_idx, persistent=False)

    def forward(self, x):
        dim = 0 if x.dim() == 3 else 1
        return _Interlace.apply(x, dim, self.f_idx, self.b_idx)

    def __str__(self):
        return (f'ChannelInterlace : #channel={self.channel}, #group={self.group}, '
                f'group size={self.channel // self.group}')
