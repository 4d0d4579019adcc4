"""Feature networks for sample-quality scores: uint8 images [B, C, H, W] -> features [B, d].

* `classifier`: the trunk of a gmlab classifier run (`GMMClassifier.features`: the CNN's
  output, the head's input), e.g. `gmlab-train experiment=features_mnist`, loaded with
  `gmlab.utils.checkpoint.load_model` from `features_ckpt` (a checkpoint, or a run folder:
  its newest best-*.ckpt, else last.ckpt).
* `inception`: Inception-v3 pool features (2048) through torchmetrics and torch-fidelity,
  from a weights file the user has (`inception_weights`); nothing is downloaded.

Each network has an `identity`, "<network>:<first 16 hex digits of the sha256 of its
weights file>", recorded in the metric kinds so that scores on different features are never
compared. The entry-point layer's loading lives here, beside the metric it serves (as
`gmlab.ood` does), so it imports `gmlab.utils.checkpoint` lazily.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from gmlab.errors import CheckpointMismatchError, ConfigError, ShapeError

FEATURE_NETWORKS = ("classifier", "inception")
TRAIN_HINT = (
    "train one with `gmlab-train experiment=features_mnist` (a few CPU minutes; or any "
    "model=gmm_classifier run on images of this shape) and pass "
    "sample_quality.features_ckpt=<its run folder or checkpoint>"
)
INCEPTION_HINT = (
    "Inception features need the weights file weights-inception-2015-12-05-6726825d.pth "
    "(torch-fidelity's release files; gmlab never downloads it): fetch it once and pass "
    "sample_quality.inception_weights=<file>, with torch-fidelity installed "
    "(pip install 'gmlab[inception]'); or use features=classifier with a gmlab classifier "
    "trained on these images"
)


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's sha256."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


class FeatureNetwork(nn.Module):
    """A frozen network in eval mode: uint8 images [B, *image_shape] -> features [B, d].

    Args:
        net: the module mapping an image batch to [B, d].
        image_shape: (C, H, W) it accepts.
        identity: "<network>:<weights digest>".
    """

    def __init__(self, net: nn.Module, image_shape: tuple[int, ...], identity: str) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.image_shape = tuple(image_shape)
        self.identity = identity

    def train(self, mode: bool = True) -> FeatureNetwork:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    @torch.no_grad()
    def extract(self, images: Tensor, batch_size: int = 500) -> Tensor:
        """Features [N, d] (float32, CPU) of uint8 images [N, C, H, W], batch by batch on the
        network's device."""
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ShapeError(
                f"the feature network takes uint8 images [N, *{list(self.image_shape)}], got "
                f"{images.dtype} {list(images.shape)}"
            )
        device = next(self.parameters()).device
        parts = [
            self(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(parts)


class ClassifierTrunk(nn.Module):
    """A gmlab classifier's `features(x_raw)`: its trunk's output, the head's input."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint path as given, or a run folder's newest best-*.ckpt (else last.ckpt)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    best = sorted((path / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = path / "checkpoints" / "last.ckpt"
    if best or last.is_file():
        return best[-1] if best else last
    raise CheckpointMismatchError(
        f"sample_quality.features_ckpt={path} is a folder without checkpoints/best-*.ckpt or "
        "checkpoints/last.ckpt"
    )


def classifier_features(path: str | Path, image_shape: tuple[int, ...]) -> FeatureNetwork:
    """The trunk of the gmlab classifier saved at `path` (a checkpoint or run folder), for
    images of `image_shape`."""
    from gmlab.utils.checkpoint import load_model

    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointMismatchError(
            f"sample_quality.features_ckpt: no checkpoint at {file}; {TRAIN_HINT}"
        )
    model = load_model(file)
    shape = tuple(getattr(model, "data_shape", ()))
    if not callable(getattr(model, "features", None)) or len(shape) != 3:
        raise ConfigError(
            f"sample_quality.features_ckpt={file} holds a {type(model).__name__}, not a gmlab "
            f"image classifier (model=gmm_classifier); {TRAIN_HINT}"
        )
    if shape != tuple(image_shape):
        raise ShapeError(
            f"the feature network {file} was trained on images of shape {list(shape)}, but "
            f"the samples have shape {list(image_shape)}; {TRAIN_HINT}"
        )
    return FeatureNetwork(ClassifierTrunk(model), shape, f"classifier:{file_digest(file)}")


def inception_features(weights: str | Path | None, image_shape: tuple[int, ...]) -> FeatureNetwork:
    """Inception-v3's 2048 pool features from the weights file `weights` (grey images are
    repeated to 3 channels; torch-fidelity resizes to 299 x 299)."""
    if not weights:
        raise ConfigError(
            f"sample_quality.features=inception without inception_weights: {INCEPTION_HINT}"
        )
    weights = Path(weights).expanduser()
    if not weights.is_file():
        raise ConfigError(f"sample_quality.inception_weights: no file {weights}. {INCEPTION_HINT}")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ConfigError(f"torch-fidelity is not installed. {INCEPTION_HINT}")
    if image_shape[0] not in (1, 3):
        raise ShapeError(f"Inception features need 1 or 3 channels, got shape {list(image_shape)}")
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048"],
        feature_extractor_weights_path=str(weights),
    )
    if image_shape[0] == 1:
        net = nn.Sequential(_Repeat3(), net)
    return FeatureNetwork(net, image_shape, f"inception:{file_digest(weights)}")


class _Repeat3(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images.expand(-1, 3, -1, -1)


def load_features(cfg, image_shape: tuple[int, ...]) -> FeatureNetwork:
    """The feature network that `cfg` (the `sample_quality` config) names, for images of
    `image_shape`: `features` is classifier (`features_ckpt`) or inception
    (`inception_weights`)."""
    if len(image_shape) != 3:
        raise ShapeError(
            f"sample-quality scores need image data with a feature network; these data have "
            f"shape {list(image_shape)}"
        )
    if cfg.features == "classifier":
        if not cfg.get("features_ckpt"):
            raise ConfigError(
                f"sample_quality needs a feature network for {list(image_shape)} images: "
                f"{TRAIN_HINT}"
            )
        return classifier_features(cfg.features_ckpt, image_shape)
    if cfg.features == "inception":
        return inception_features(cfg.get("inception_weights"), image_shape)
    raise ConfigError(
        f"sample_quality.features must be one of {FEATURE_NETWORKS}, got {cfg.features!r}"
    )
