"""Port of torch/nn's distance layers with learned templates: Euclidean, WeightedEuclidean, Cosine."""
import math

import torch
from torch import nn

from layers.conv import uniform_


class Euclidean(nn.Module):
    """nn.Euclidean(inputSize, outputSize): y_j = ||x - w_j|| for the columns w_j of the inputSize x outputSize
    weight, on one input vector or a batch of them."""
    lua_type = 'nn.Euclidean'

    def __init__(self, inputSize, outputSize, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(inputSize, outputSize, device=device))
        uniform_(1 / math.sqrt(inputSize), self.weight)

    def forward(self, x):
        if x.dim() == 1:
            return (x.unsqueeze(1) - self.weight).norm(2, 0)
        return (x.unsqueeze(2) - self.weight.unsqueeze(0)).norm(2, 1)


class WeightedEuclidean(nn.Module):
    """nn.WeightedEuclidean(inputSize, outputSize): y_j = ||c_j .* (x - w_j)|| with a learned diagonal
    covariance column c_j (diagCov, initialised to ones) for each template column w_j."""
    lua_type = 'nn.WeightedEuclidean'

    def __init__(self, inputSize, outputSize, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(inputSize, outputSize, device=device))
        self.diagCov = nn.Parameter(torch.empty(inputSize, outputSize, device=device))
        uniform_(1 / math.sqrt(inputSize), self.weight)
        if device != 'meta':
            with torch.no_grad():
                self.diagCov.fill_(1)

    def forward(self, x):
        if x.dim() == 1:
            return ((x.unsqueeze(1) - self.weight) * self.diagCov).norm(2, 0)
        return ((x.unsqueeze(2) - self.weight.unsqueeze(0)) * self.diagCov.unsqueeze(0)).norm(2, 1)


class Cosine(nn.Module):
    """nn.Cosine(inputSize, outputSize): the cosine similarity of x with each row of the outputSize x inputSize
    weight, each norm increased by 1e-12 as Lua does."""
    lua_type = 'nn.Cosine'

    def __init__(self, inputSize, outputSize, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputSize, inputSize, device=device))
        uniform_(1 / math.sqrt(outputSize), self.weight)

    def forward(self, x):
        weight_norm = self.weight.norm(2, 1) + 1e-12
        return x.matmul(self.weight.t()) / weight_norm / (x.norm(2, -1, keepdim=True) + 1e-12)
