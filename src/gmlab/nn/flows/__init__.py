"""Normalizing-flow building blocks (nflows / zuko style): every piece maps
`forward(x) -> (y, log_abs_det[B])` (data -> latent) and `inverse(y) -> (x, log_abs_det[B])`
(latent -> data); see `gmlab.nn.flows.base` for the conventions."""

from gmlab.nn.flows.base import Composition, Flow, sum_except_batch, zero_log_det
from gmlab.nn.flows.coupling import (
    AffineCoupling,
    ResNet,
    WeightNormConv2d,
    checkerboard,
)
from gmlab.nn.flows.elementwise import Logit
from gmlab.nn.flows.normalization import (
    ActNorm,
    BatchNormFlow,
    recalibrate_batch_norm,
    running_statistics,
)
from gmlab.nn.flows.realnvp import build_realnvp
from gmlab.nn.flows.reshape import FactorOut, Squeeze, Unsqueeze, squeeze2d, unsqueeze2d

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "BatchNormFlow",
    "Composition",
    "FactorOut",
    "Flow",
    "Logit",
    "ResNet",
    "Squeeze",
    "Unsqueeze",
    "WeightNormConv2d",
    "build_realnvp",
    "checkerboard",
    "recalibrate_batch_norm",
    "running_statistics",
    "squeeze2d",
    "sum_except_batch",
    "unsqueeze2d",
    "zero_log_det",
]
