"""Sample quality (`gmlab-eval ... sample_quality=mnist`): the scoring pass over 10,000
MNIST-shaped samples beside the model's own sampling time.

The model is a diagonal Gaussian fitted to the reference images (its sampling is cheap; a
real model's sampling time adds to the scoring time). The feature network is the MNIST CNN
trunk with random weights: the same cost as a trained one. Data: MNIST's test (10k,
reference) and validation (5k, floor) splits when GMLAB_DATA holds MNIST/raw/, else
random uint8 images of the same sizes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.common import matmul_gflops

CONF = Path(__file__).resolve().parents[1] / "conf" / "sample_quality" / "mnist.yaml"
SHAPE = (1, 28, 28)


class Splits:
    """`tensors(split) -> (x, y)` over fixed tensors, as a gmlab DataModule gives them."""

    def __init__(self, **splits: torch.Tensor) -> None:
        self.splits = splits

    def tensors(self, split: str):
        x = self.splits[split]
        return x, torch.zeros(len(x), dtype=torch.long)


def mnist_splits() -> tuple[Splits, str]:
    root = Path(os.environ.get("GMLAB_DATA", "")) / "MNIST" / "raw"
    if os.environ.get("GMLAB_DATA") and root.is_dir():
        from gmlab.data import MNISTDataModule

        data = MNISTDataModule(root=os.environ["GMLAB_DATA"])
        return Splits(test=data.tensors("test")[0], val=data.tensors("val")[0]), "MNIST"
    g = torch.Generator().manual_seed(0)
    test, val = (
        torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8) for n in (10_000, 5_000)
    )
    return Splits(test=test, val=val), "random images"


def main() -> None:
    from gmlab.metrics.features import ClassifierTrunk, FeatureNetwork
    from gmlab.metrics.sample_quality import draw_samples, sample_quality
    from gmlab.models import DiagonalGaussian, GMMClassifier

    torch.manual_seed(0)
    splits, source = mnist_splits()
    reference = splits.tensors("test")[0].float()
    model = DiagonalGaussian(SHAPE).eval()
    with torch.no_grad():  # the Gaussian of the dequantized reference pixels, on [0, 1]
        y = (reference + 0.5) / 256
        model.mean.copy_(y.mean(0))
        model.raw_std.copy_(torch.expm1(y.std(0).clamp_min(2e-3) - 1e-3).log())  # softplus^-1
    classifier = GMMClassifier(
        SHAPE, 10, head={"_target_": "gmlab.nn.gmm_layer.LinearClassifier"}
    ).eval()
    features = FeatureNetwork(ClassifierTrunk(classifier), SHAPE, "classifier:random")
    cfg = OmegaConf.load(CONF)

    sampling = timed(lambda: draw_samples(model, cfg.num_samples, None, cfg.batch_size))
    total = timed(lambda: sample_quality(model, splits, cfg, features=features))
    print(
        f"sample quality, {cfg.num_samples} samples vs {source} (test 10k, floor val 5k), "
        f"{torch.get_num_threads()} threads ({matmul_gflops():.0f} GFLOP/s float32 matmul): "
        f"sampling {sampling[0]:.1f} s wall / {sampling[1]:.1f} s CPU, scores beyond sampling "
        f"{total[0] - sampling[0]:.1f} s wall / {total[1] - sampling[1]:.1f} s CPU"
    )


def timed(fn) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call: the CPU time (all threads) is the
    figure to read on a machine that other processes share."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu
