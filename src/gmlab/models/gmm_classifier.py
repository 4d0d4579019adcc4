"""Image classifier with a Gaussian-mixture output layer (or the linear baseline)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from gmlab.errors import ConfigError, ShapeError
from gmlab.models.base import GmlabModule, check_batch_shape, image_grid
from gmlab.models.parts import build_part, preset_part, scheduler_or_preset
from gmlab.nn.gmm_layer import GaussianMixtureClassifier
from gmlab.ops.chunks import batched

# model.feature_norm values -> kind (true / false: the options before "batch" existed)
FEATURE_NORMS = {False: None, "none": None, True: "layer", "layer": "layer", "batch": "batch"}
# model.head_refit values -> which head the validation-time refit sets (true: the trained one)
HEAD_REFITS = {False: None, "none": None, True: "head", "head": "head", "eval": "eval"}


class GMMClassifier(GmlabModule):
    """Classifier: trunk -> GMM (or linear) head, trained by negative log-likelihood of labels.

    The trunk maps a batch to features f; the head gives per-class scores `joint` [B, S]:
    log p(f, y) of `GaussianMixtureClassifier` (a GMM head) or a linear layer's logits (an
    unnormalised log p(f, y)). Class log-posteriors log_softmax(joint) train with
    `nll_loss`; logsumexp(joint) is the out-of-distribution score (the GMM's feature
    log-density log p(f), or the linear head's negative energy).

    The parts are config dicts (`_target_` + options, the groups under `conf/model/`),
    built here with what only the model knows:
      - `trunk(input_shape=data_shape, out_features=features)` (`features - 1` with
        `feature_log_scale`): [B, *data_shape] -> [B, n] (`gmlab.nn.MnistCNN`, an MLP, or
        `IdentityTrunk` for flat points used as they are); n is read off the built
        trunk's output;
      - `head(in_features=n (+ 1 with feature_log_scale), n_classes=num_classes)`:
        `gmlab.nn.GaussianMixtureClassifier` or `gmlab.nn.gmm_layer.LinearClassifier`.

    Logged: train/loss, train/acc; {val,test}/acc, /nll (nats per sample), /ece (expected
    calibration error, `ece_bins` equal-width confidence bins, L1), /ood_score (mean).
    `figures()` draws the most and least likely images of each predicted class,
    `histograms()` gives the OOD scores (both through the image callback).

    Args:
        data_shape: shape of one sample: [C, H, W] images (uint8, scaled to [0, 1]) or [d]
            float points (used as they are).
        num_classes: number of classes S.
        trunk, head: part dicts (default: conf/model/gmm_classifier.yaml's, the MNIST CNN and
            the GMM layer).
        features: the trunk's output size.
        normalize: {"mean": [...], "std": [...]} per channel, applied to images after
            scaling to [0, 1]; null keeps [0, 1].
        optimizer, lr_scheduler: part configs (`GmlabModule.configure_optimizers`; None:
            conf/model/gmm_classifier.yaml's, Adadelta and StepLR; an empty lr_scheduler:
            constant lr).
        ece_bins: confidence bins of the calibration error.
        num_extremes: most / least likely digits per class in the image grids.
        density_weight: lambda of the hybrid objective nll_loss + lambda_t (-log p(f)) / d
            (GMM head; 0: the discriminative loss alone), lambda_t rising linearly from 0
            over `density_warmup_steps` optimizer steps.
        feature_norm: "none" (false), "layer" (true): standardise each feature vector over
            its d entries (layer norm without parameters), ||f - mean(f)||^2 = d for every
            input; "batch": standardise each of the d entries over the batch (batch norm
            without parameters; running statistics at evaluation), so one input's feature
            scale stays visible to the head. Either way the trunk cannot raise log p(f) by
            shrinking its features.
        feature_log_scale: with `feature_norm=layer`, the trunk gives `features - 1` entries and
            the head sees them standardised plus, as entry `features`, log s, s the standard
            deviation the standardisation divided by. Scaling the trunk's output by c adds
            log c to that entry only, a shift the head's means absorb at no change of
            log p(f): shrinking still buys nothing, while the head sees the feature scale,
            in which OOD inputs differ (their features are smaller).
        head_refit: GMM head with one Gaussian per class (diag / tril / full) only. "none"
            (false); "head" (true): before every validation pass, set each class's Gaussian
            to its maximum-likelihood fit on the training split's features (the closed-form
            M-step; `GaussianMixtureClassifier.refit`), and training goes on from it;
            "eval": refit a copy of the head instead (`eval_head`, same projection, no
            gradient), which gives every eval-mode output (predictions, log p(f), figures),
            while training keeps the gradient-trained head. Either way the refitted head is
            in the state_dict, so validation, checkpoints, the test and resumes agree.
    """

    monitor = "val/acc"
    monitor_mode = "max"
    # 0: optimizer by name, flat lr, weight_decay, lr_step_size, lr_gamma; 1: the trunk's
    # and the head's options flat, the head by name; 2: a null lr_scheduler meant a constant
    # lr (gmlab.models.compat)
    checkpoint_version = 3

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int,
        trunk: Mapping | None = None,
        head: Mapping | None = None,
        features: int = 128,
        normalize: dict | None = None,
        optimizer: Mapping | None = None,
        lr_scheduler: Mapping | None = None,
        ece_bins: int = 15,
        num_extremes: int = 4,
        density_weight: float = 0.0,
        density_warmup_steps: int = 0,
        feature_norm: bool | str = False,
        feature_log_scale: bool = False,
        head_refit: bool | str = False,
    ) -> None:
        super().__init__()
        trunk = trunk or preset_part("gmm_classifier", "trunk")
        head = head or preset_part("gmm_classifier", "head")
        optimizer = optimizer or preset_part("gmm_classifier", "optimizer")
        lr_scheduler = scheduler_or_preset(lr_scheduler, "gmm_classifier")
        self.save_hyperparameters()
        if feature_norm not in FEATURE_NORMS:
            raise ConfigError(
                f"model.feature_norm must be one of none, layer, batch (or true / false), "
                f"got {feature_norm!r}"
            )
        self.feature_norm = FEATURE_NORMS[feature_norm]
        if feature_log_scale and self.feature_norm != "layer":
            raise ConfigError("model.feature_log_scale=true needs model.feature_norm=layer")
        if head_refit not in HEAD_REFITS:
            raise ConfigError(
                f"model.head_refit must be one of none, head, eval (or true / false), "
                f"got {head_refit!r}"
            )
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_classes = num_classes
        self.trunk = build_part(
            trunk,
            "trunk",
            input_shape=self.data_shape,
            out_features=features - 1 if feature_log_scale else features,
        )
        in_features = output_size(self.trunk, self.data_shape) + (1 if feature_log_scale else 0)
        if self.feature_norm == "batch":  # eps far below any feature variance (see features)
            self.batch_norm = nn.BatchNorm1d(in_features, eps=1e-12, affine=False)
        self.head = build_part(head, "head", in_features=in_features, n_classes=num_classes)
        is_gmm = isinstance(self.head, GaussianMixtureClassifier)
        if density_weight < 0 or (density_weight > 0 and not is_gmm):
            raise ConfigError(
                f"model.density_weight must be >= 0, and > 0 only with model/head=gmm (a "
                f"density over the features); got {density_weight} with {head['_target_']}"
            )
        self.head_refit = HEAD_REFITS[head_refit]
        if self.head_refit:
            if not is_gmm:
                raise ConfigError(f"model.head_refit={self.head_refit} needs model/head=gmm")
            try:
                self.head.check_refit()
            except ConfigError as exc:
                raise ConfigError(f"model.head_refit={self.head_refit}: {exc}") from exc
        if self.head_refit == "eval":
            self.eval_head = copy.deepcopy(self.head).requires_grad_(False)
            self.register_buffer("eval_head_fitted", torch.tensor(False))
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

    # ------------------------------------------------------------- the model
    def inputs(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Raw batch -> trunk input: integer images to [0, 1] (then `normalize`)."""
        check_batch_shape(self, x_raw, self.data_shape)
        if x_raw.is_floating_point():
            return x_raw
        x = x_raw.float() / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def features(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B, d] the head's input f(x): the trunk's output (standardised: `feature_norm`)."""
        f = self.trunk(self.inputs(x_raw))
        if self.feature_norm is None:
            return f
        # eps far below any feature variance: the output is scale-invariant, so the loss
        # has no gradient along the trunk's scale (its norm can only grow under SGD steps)
        if self.feature_norm == "batch":
            return self.batch_norm(f)
        if not self.hparams.get("feature_log_scale"):
            return F.layer_norm(f, f.shape[-1:], eps=1e-12)
        var, mean = torch.var_mean(f, -1, unbiased=False, keepdim=True)  # one pass for both
        log_scale = 0.5 * (var + 1e-12).log()
        return torch.cat([(f - mean) * torch.exp(-log_scale), log_scale], -1)

    @property
    def scoring_head(self) -> nn.Module:
        """The head behind `joint`: the refitted `eval_head` in eval mode (head_refit=eval),
        else the trained head."""
        return self.eval_head if self.head_refit == "eval" and not self.training else self.head

    def joint(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B, S] class scores: log p(f(x), y) for the GMM head, logits for the linear head."""
        f = self.features(x_raw)
        head = self.scoring_head
        if isinstance(head, GaussianMixtureClassifier):
            return head.joint_log_prob(f)
        return head(f)

    def optimizer_parameters(self):
        """Every parameter but the refitted `eval_head`'s (it has no gradient)."""
        return [p for p in self.parameters() if p.requires_grad]

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
        joint = self.joint(x_raw).float()
        log_post = joint.log_softmax(-1)
        loss = F.nll_loss(log_post, y)
        weight = self.density_weight(self.global_step)
        if weight > 0:  # hybrid objective: + lambda_t (-log p(f)) per feature dimension
            nll_features = -joint.logsumexp(-1).mean() / self.head.dim
            self.log_step({"train/nll_features": nll_features}, bs)
            loss = loss + weight * nll_features
        self.check_finite(loss, "train/loss", batch_idx)
        self.log_step({"train/loss": loss}, bs, prog_bar=True)
        self.log_step({"train/acc": (log_post.argmax(-1) == y).float().mean()}, bs)
        return loss

    def density_weight(self, step: int) -> float:
        """lambda_t of the hybrid objective: linear warm-up to `density_weight`."""
        lam, warmup = (
            self.hparams.get("density_weight", 0.0),
            self.hparams.get("density_warmup_steps", 0),
        )
        return lam * min(1.0, step / warmup) if warmup else lam

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

    def on_validation_epoch_start(self) -> None:
        if self.head_refit and not self.trainer.sanity_checking:
            self.refit_from_datamodule()

    def on_test_epoch_start(self) -> None:
        # an eval head never refitted (no validation ran) would be the initial copy
        if self.head_refit == "eval" and not bool(self.eval_head_fitted):
            self.refit_from_datamodule()

    def refit_from_datamodule(self) -> None:
        """`refit_head` on the trainer's datamodule's training split."""
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "tensors"):
            raise ConfigError(
                f"model.head_refit={self.head_refit} needs a gmlab DataModule (its train split)"
            )
        self.refit_head(*datamodule.tensors("train"))

    def refit_head(self, x_raw: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> None:
        """Refit the GMM head (`eval_head` with head_refit=eval) on the features of
        x_raw [N, ...] with labels y [N]."""
        features = batched(self.features, x_raw, batch_size, self.device)
        target = self.eval_head if self.head_refit == "eval" else self.head
        target.refit(features.to(self.device), y.to(self.device))
        if self.head_refit == "eval":
            self.eval_head_fitted.fill_(True)

    def validation_step(self, batch, batch_idx: int):
        self.evaluate_batch(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx: int):
        self.evaluate_batch(batch, "test", batch_idx)

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

    def histograms(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"ood_score": [B] logsumexp of the class scores}."""
        return {"ood_score": self.ood_score(x_raw).cpu()}


# ------------------------------------------------------------------ helpers
class IdentityTrunk(nn.Identity):
    """No feature network: flat points [B, d] are the features as they are (the `trunk`
    part conf/model/trunk/identity.yaml; `out_features` is unused, the head gets d)."""

    def __init__(self, input_shape: Sequence[int], out_features: int | None = None) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"the identity trunk takes flat points [d], got {list(input_shape)}")


def output_size(trunk: nn.Module, data_shape: tuple[int, ...]) -> int:
    """n of the trunk's [B, n] output, read off one zero sample (eval mode, no gradient)."""
    training = trunk.training
    with torch.no_grad():
        out = trunk.eval()(torch.zeros(1, *data_shape))
    trunk.train(training)
    if out.dim() != 2:
        raise ShapeError(
            f"model.trunk must map [B, *{list(data_shape)}] to [B, n] feature vectors, "
            f"got {list(out.shape)}"
        )
    return out.shape[1]


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
