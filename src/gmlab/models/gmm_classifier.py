"""Image classifier with a Gaussian-mixture output layer (or the linear baseline).

A trunk (the seed's MNIST CNN for images, the identity for flat points) maps a batch to
features; the head turns them into per-class scores `joint` [B, S]:

  * head="gmm":    joint = log p(f, y) of `gmlab.nn.GaussianMixtureClassifier`;
  * head="linear": joint = logits of a linear layer (an unnormalised log p(f, y)).

Everything downstream is one code path: class log-posteriors log_softmax(joint) train
with `nll_loss`; logsumexp(joint) is the out-of-distribution score (the GMM's feature
log-density log p(f), or the linear head's negative energy, Liu et al. 2020).

Caveat, measured on MNIST: trained by `nll_loss` alone (the seed's objective) only the
posterior p(y|f) is fitted. The trunk pushes the features of digits far out (mean norm
~8) while the head's means and covariances stay near their start (norm ~1.7, ~I under
Adadelta), and features of noise images land near the origin, so log p(f) ranks noise
*above* test digits (AUROC 0.00; max-softmax gets 0.99). Treat `ood_score` as a logged
statistic, not a working detector, for this recipe.

Logged: train/loss, train/acc; {val,test}/acc, /nll (nats per sample), /ece (expected
calibration error, 15 equal-width confidence bins, L1), /ood_score (mean); at the end of
testing the histogram of test OOD scores (TensorBoard `test/ood_score`) and a grid of
the most and least likely test digits of each class (`test/likely_digits`). `figures()`
gives the same grid for the image-grid callback's validation batch (grouped by
predicted class).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from gmlab.errors import ConfigError, ShapeError
from gmlab.models.base import GmlabModule, image_grid
from gmlab.nn.gmm_layer import GaussianMixtureClassifier
from gmlab.nn.mnist_cnn import MnistCNN

HEADS = ("gmm", "linear")
OPTIMIZERS = ("adadelta", "adam", "sgd")


class GMMClassifier(GmlabModule):
    """Classifier: trunk -> GMM (or linear) head, trained by negative log-likelihood of labels.

    Args:
        data_shape: shape of one sample: [C, H, W] images (uint8, scaled to [0, 1]) or [d]
            float points (used as they are, no trunk).
        num_classes: number of classes S.
        head: "gmm" or "linear".
        features: trunk output size (images only).
        channels, kernel_size, dropout: `MnistCNN` options.
        components_per_class, dim, covariance, rank, floor: `GaussianMixtureClassifier`
            options (`dim` null: no random projection).
        normalize: {"mean": [...], "std": [...]} per channel, applied to images after
            scaling to [0, 1]; null keeps [0, 1].
        optimizer: "adadelta", "adam" or "sgd" (momentum 0.9); lr, weight_decay.
        lr_gamma: StepLR factor every `lr_step_size` epochs; null: constant lr.
        ece_bins: confidence bins of the calibration error.
        num_extremes: most / least likely digits per class in the image grids.
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        data_shape: tuple[int, ...] | list[int],
        num_classes: int,
        head: str = "gmm",
        features: int = 128,
        channels: tuple[int, int] | list[int] = (16, 32),
        kernel_size: int = 5,
        dropout: float = 0.0,
        components_per_class: int = 1,
        dim: int | None = None,
        covariance: str = "tril",
        rank: int | None = None,
        floor: float = 1e-3,
        normalize: dict | None = None,
        optimizer: str = "adadelta",
        lr: float = 1.0,
        weight_decay: float = 0.0,
        lr_step_size: int = 1,
        lr_gamma: float | None = 0.7,
        ece_bins: int = 15,
        num_extremes: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if head not in HEADS:
            raise ConfigError(f"model.head must be one of {HEADS}, got {head!r}")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_classes = num_classes
        if len(self.data_shape) == 3:
            self.trunk = MnistCNN(self.data_shape, features, tuple(channels), kernel_size, dropout)
            in_features = features
        elif len(self.data_shape) == 1:
            self.trunk, in_features = nn.Identity(), self.data_shape[0]
        else:
            raise ShapeError(f"data_shape must be [C, H, W] or [d], got {list(data_shape)}")
        if head == "gmm":
            self.head = GaussianMixtureClassifier(
                in_features, num_classes, components_per_class, dim, covariance, rank, floor
            )
        else:
            self.head = nn.Linear(in_features, num_classes)
        mean, std = (normalize or {}).get("mean", [0.0]), (normalize or {}).get("std", [1.0])
        self.register_buffer("pixel_mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(-1, 1, 1), persistent=False)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": metric
                for stage in ("val", "test")
                for name, metric in (
                    ("acc", MulticlassAccuracy(num_classes, average="micro")),
                    ("ece", MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1")),
                )
            }
        )
        self._ood_scores: list[torch.Tensor] = []
        self._extremes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------- the model
    def inputs(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Raw batch -> trunk input: integer images to [0, 1] (then `normalize`)."""
        if tuple(x_raw.shape[1:]) != self.data_shape:
            raise ShapeError(
                f"{type(self).__name__} expects batches of shape "
                f"[B, {', '.join(map(str, self.data_shape))}], got {list(x_raw.shape)}"
            )
        if x_raw.is_floating_point():
            return x_raw
        x = x_raw.float() / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def joint(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B, S] class scores: log p(f(x), y) for the GMM head, logits for the linear head."""
        f = self.trunk(self.inputs(x_raw))
        if isinstance(self.head, GaussianMixtureClassifier):
            return self.head.joint_log_prob(f)
        return self.head(f)

    def forward(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B, S] class log-posteriors log p(y|x)."""
        return self.joint(x_raw).float().log_softmax(-1)

    def ood_score(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] logsumexp of the class scores: log p(f(x)) for the GMM head (higher = more
        in-distribution)."""
        return self.joint(x_raw).float().logsumexp(-1)

    # ------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x_raw, y = batch
        bs = x_raw.shape[0]
        log_post = self(x_raw)
        loss = F.nll_loss(log_post, y)
        self.check_finite(loss, "train/loss", batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        acc = (log_post.argmax(-1) == y).float().mean()
        self.log("train/acc", acc, batch_size=bs)
        return loss

    def evaluate_batch(
        self, batch, stage: str, batch_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log {stage}/nll, /acc, /ece, /ood_score for one batch; returns the class scores
        [B, S] and the OOD scores [B]."""
        x_raw, y = batch
        joint = self.joint(x_raw).float()
        log_post = joint.log_softmax(-1)
        nll = F.nll_loss(log_post, y)
        self.check_finite(nll, f"{stage}/nll", batch_idx)
        bs = x_raw.shape[0]
        acc, ece = self.metrics[f"{stage}_acc"], self.metrics[f"{stage}_ece"]
        acc.update(log_post, y)
        ece.update(log_post.exp(), y)
        self.log(f"{stage}/nll", nll, batch_size=bs, sync_dist=True)
        self.log(f"{stage}/acc", acc, batch_size=bs, prog_bar=True)
        self.log(f"{stage}/ece", ece, batch_size=bs)
        score = joint.logsumexp(-1)
        self.log(f"{stage}/ood_score", score.mean(), batch_size=bs, sync_dist=True)
        return joint, score

    def validation_step(self, batch, batch_idx: int):
        self.evaluate_batch(batch, "val", batch_idx)

    def on_test_epoch_start(self) -> None:
        self._ood_scores, self._extremes = [], None

    def test_step(self, batch, batch_idx: int):
        joint, score = self.evaluate_batch(batch, "test", batch_idx)
        x_raw, y = batch
        self._ood_scores.append(score.cpu())
        self._keep_extremes(x_raw.cpu(), y.cpu(), joint.gather(1, y[:, None])[:, 0].cpu())

    def _keep_extremes(self, x: torch.Tensor, y: torch.Tensor, score: torch.Tensor) -> None:
        """Keep the `num_extremes` highest- and lowest-scoring test images of each class."""
        if self._extremes is not None:
            x, y, score = (
                torch.cat([a, b]) for a, b in zip(self._extremes, (x, y, score), strict=True)
            )
        keep = torch.cat(extreme_indices(y, score, self.num_classes, self.hparams.num_extremes))
        self._extremes = (x[keep], y[keep], score[keep])

    def on_test_epoch_end(self) -> None:
        if not self._ood_scores or not self.trainer.is_global_zero:
            return
        scores = torch.cat(self._ood_scores)
        grid = None
        if self._extremes is not None and len(self.data_shape) == 3:
            x, y, s = self._extremes
            grid = likelihood_grid(to_unit(x), y, s, self.num_classes, self.hparams.num_extremes)
            path = Path(self.trainer.default_root_dir) / "images" / "test" / "likely_digits.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            torchvision.utils.save_image(grid, path)
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram("test/ood_score", scores, self.global_step)
                if grid is not None:
                    logger.experiment.add_image("test/likely_digits", grid, self.global_step)

    # -------------------------------------------------------------- figures
    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"likely_digits": grid}: one row per predicted class, its most likely images of
        the batch on the left (descending), its least likely ones on the right."""
        if len(self.data_shape) != 3:
            return {}
        joint = self.joint(x_raw).float().cpu()
        score, pred = joint.max(-1)
        k = self.hparams.num_extremes
        return {
            "likely_digits": likelihood_grid(to_unit(x_raw.cpu()), pred, score, self.num_classes, k)
        }

    # ------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        hp = self.hparams
        kwargs = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "adadelta":
            opt = torch.optim.Adadelta(self.parameters(), **kwargs)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), **kwargs)
        else:
            opt = torch.optim.SGD(self.parameters(), momentum=0.9, **kwargs)
        if hp.lr_gamma is None:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_step_size, gamma=hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


# ------------------------------------------------------------------ helpers
def to_unit(x_raw: torch.Tensor) -> torch.Tensor:
    """Raw images -> floats in [0, 1] for display (integers / 255, floats as they are)."""
    return x_raw.float() / 255.0 if not x_raw.is_floating_point() else x_raw.float()


def extreme_indices(
    classes: torch.Tensor, scores: torch.Tensor, num_classes: int, k: int
) -> list[torch.Tensor]:
    """Per class c, [most likely k (descending), least likely <= k (descending)] indices;
    the two parts never overlap (a class with fewer than 2k members fills `most` first)."""
    out = []
    for c in range(num_classes):
        idx = (classes == c).nonzero().squeeze(1)
        idx = idx[scores[idx].argsort(descending=True)]
        out += [idx[:k], idx[max(k, len(idx) - k) :]]
    return out


def likelihood_grid(
    images: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor, num_classes: int, k: int
) -> torch.Tensor:
    """One row per class: its k highest-scoring images (left, descending), then its k
    lowest-scoring ones (right, the least likely last); grey tiles where a class has fewer."""
    blank = torch.full_like(images[0], 0.5)
    parts = extreme_indices(classes, scores, num_classes, k)
    tiles = []
    for most, least in zip(parts[::2], parts[1::2], strict=True):
        tiles += [images[i] for i in most] + [blank] * (2 * k - len(most) - len(least))
        tiles += [images[i] for i in least]
    return image_grid(torch.stack(tiles), nrow=2 * k)
