"""`gmlab-eval ... sample_quality=<preset>`: sample-quality scores of a density model beside
the same scores of held-out real data (the floor), in `run.json`, TensorBoard and the log.

The model draws `num_samples` images (quantized to the data's uint8 pixels). They and a
held-out real split (`floor_split`, by default val) are each compared with the reference
split (`reference_split`, by default test):

* on the features of a feature network (`gmlab.metrics.features`): Fréchet distance (FD)
  and KID with its std over subsets (`gmlab.metrics.frechet`), precision / recall and
  density / coverage (`gmlab.metrics.manifold`);
* in pixel space: NDB, NDB / K and the JS divergence of the bin histograms
  (`gmlab.metrics.ndb`, K-means bins of the reference split).

Metric names: `sample_quality/<score>` for the model, `sample_quality/<score>_floor` for the
real split. docs/sample_quality.md explains each score.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from gmlab.errors import ConfigError
from gmlab.metrics.features import FeatureNetwork, load_features
from gmlab.metrics.frechet import frechet_distance, kernel_distance
from gmlab.metrics.manifold import ManifoldReference
from gmlab.metrics.ndb import NDB
from gmlab.utils.metric_kinds import sample_kind
from gmlab.utils.trackers import log_image

PREFIX = "sample_quality"
# score -> its metric kind (see gmlab.utils.metric_kinds.BETTER)
FEATURE_SCORES = {
    "fd": "frechet_distance",
    "kid": "kernel_distance",
    "kid_std": "kernel_distance",
    "precision": "precision",
    "recall": "recall",
    "density": "density",
    "coverage": "coverage",
}
PIXEL_SCORES = {"ndb": "ndb", "ndb_over_k": "ndb", "ndb_js": "ndb"}


def draw_samples(model, n: int, temperature: float | None, batch_size: int) -> Tensor:
    """[n, *data_shape] uint8 samples (rounded to the pixel grid), `batch_size` at a time;
    `temperature` goes to `model.sample` where the family has one (RealNVP, the VQ-VAE's
    PixelCNN) and is an error elsewhere."""
    name = type(model).__name__
    if not callable(getattr(model, "sample", None)):
        raise ConfigError(
            f"{name} cannot sample: sample_quality needs a density model that draws samples "
            "(MFA, MPPCA, Gaussian, a VAE, the VQ-VAE's PixelCNN stage, RealNVP)"
        )
    options = {}
    if temperature is not None:
        if "temperature" not in inspect.signature(model.sample).parameters:
            raise ConfigError(
                f"sample_quality.temperature={temperature}: {name} samples without a "
                "temperature (RealNVP and the VQ-VAE's PixelCNN have one); leave it null"
            )
        options["temperature"] = float(temperature)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [
                model.sample(min(batch_size, n - i), **options).cpu()
                for i in range(0, n, batch_size)
            ]
    except NotImplementedError as exc:
        raise ConfigError(
            f"{name} cannot sample ({exc}); sample_quality needs one that does"
        ) from exc
    finally:
        model.train(was_training)
    return torch.cat(parts).round().clamp(0, 255).to(torch.uint8)


def feature_scores(
    reference: ManifoldReference, real: Tensor, fake: Tensor, cfg, seed: int
) -> dict[str, float]:
    """FD, KID (mean, std), precision, recall, density and coverage of fake [M, d] features
    against real [N, d] ones (`reference`: real's k-NN radii)."""
    kid, kid_std = kernel_distance(real, fake, cfg.kid_subsets, cfg.kid_subset_size, seed)
    return {
        "fd": frechet_distance(real, fake),
        "kid": kid,
        "kid_std": kid_std,
        **reference.compare(fake),
    }


def pixel_scores(bins: NDB, images: Tensor) -> dict[str, float]:
    result = bins.evaluate(images)
    return {
        "ndb": float(result["ndb"]),
        "ndb_over_k": float(result["ndb_over_k"]),
        "ndb_js": float(result["js"]),
    }


def score_kinds(features: FeatureNetwork, cfg, num_samples: int) -> dict[str, dict]:
    """{metric name: kind} of every score, model's and floor's."""
    kinds = {}
    for suffix, samples in (("", num_samples), ("_floor", cfg.floor_split)):
        common = {"samples": samples, "reference": cfg.reference_split}
        for score, name in FEATURE_SCORES.items():
            details = (
                {"better": None, "statistic": "std over subsets"} if score == "kid_std" else {}
            )
            if name in ("precision", "recall"):
                details["k"] = cfg.k_pr
            elif name in ("density", "coverage"):
                details["k"] = cfg.k_dc
            kinds[f"{PREFIX}/{score}{suffix}"] = sample_kind(
                name, features.identity, **common, **details
            )
        for score, name in PIXEL_SCORES.items():
            kinds[f"{PREFIX}/{score}{suffix}"] = sample_kind(
                name, "pixels", bins=cfg.ndb_bins, **common
            )
    return kinds


def table(scores: dict[str, float], cfg, identity: str, num_samples: int) -> str:
    """The model's scores beside the real floor, one row per score."""
    names = [*FEATURE_SCORES, *PIXEL_SCORES]
    lines = [
        f"sample quality: {num_samples} samples vs the {cfg.reference_split} split; features "
        f"{identity}, NDB in pixels (K = {cfg.ndb_bins})",
        f"{'score':>12s}  {'model':>12s}  {'floor (' + cfg.floor_split + ')':>14s}",
    ]
    for name in names:
        model, floor = scores[f"{PREFIX}/{name}"], scores[f"{PREFIX}/{name}_floor"]
        lines.append(f"{name:>12s}  {model:12.5g}  {floor:14.5g}")
    return "\n".join(lines)


def log_scores(loggers, scores: dict[str, float], samples: Tensor, out_dir: Path) -> None:
    """Scalars to every logger (TensorBoard's HParams tab lists them beside the run's
    hyperparameters), the grid of the first 64 scored samples to every logger that takes
    images (TensorBoard, MLflow, W&B) and to a PNG."""
    grid = torchvision.utils.make_grid(samples[:64].float() / 255.0, nrow=8, padding=1, pad_value=1)
    path = out_dir / "images" / PREFIX / "samples.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid, path)
    for logger in loggers:
        logger.log_metrics(scores, step=0)
        log_image(logger, f"{PREFIX}/samples", grid, 0)


def sample_quality(
    model, datamodule, cfg, seed: int = 0, features: FeatureNetwork | None = None
) -> tuple[dict, dict, Tensor, str]:
    """(scores, kinds, samples, table) of `model` under the `sample_quality` config `cfg`,
    on the splits of `datamodule` (anything with `tensors(split) -> (x, y)`); `features`:
    a feature network to use instead of the one `cfg` names."""
    images, _ = datamodule.tensors(cfg.reference_split)
    features = features or load_features(cfg, tuple(images.shape[1:]))
    features.to(model.device)
    floor_images, _ = datamodule.tensors(cfg.floor_split)
    samples = draw_samples(model, int(cfg.num_samples), cfg.get("temperature"), cfg.batch_size)
    if samples.shape[1:] != images.shape[1:]:
        raise ConfigError(
            f"the model draws samples of shape {list(samples.shape[1:])}, the data are "
            f"{list(images.shape[1:])}"
        )
    real = features.extract(images, cfg.batch_size)
    reference = ManifoldReference(real, cfg.k_pr, cfg.k_dc)
    bins = NDB(num_bins=cfg.ndb_bins, seed=seed).fit(images)
    scores = {}
    for suffix, query in (("", samples), ("_floor", floor_images)):
        found = feature_scores(reference, real, features.extract(query, cfg.batch_size), cfg, seed)
        found |= pixel_scores(bins, query)
        scores |= {f"{PREFIX}/{name}{suffix}": value for name, value in found.items()}
    num = len(samples)
    return (
        scores,
        score_kinds(features, cfg, num),
        samples,
        table(scores, cfg, features.identity, num),
    )


def evaluate_sample_quality(model, datamodule, cfg, trainer, record=None) -> dict[str, float]:
    """`gmlab-eval`'s sample-quality step: the scores of `sample_quality(...)` logged to the
    trainer's loggers, their kinds added to the run record, the table printed."""
    scores, kinds, samples, text = sample_quality(model, datamodule, cfg.sample_quality, cfg.seed)
    log_scores(trainer.loggers, scores, samples, Path(trainer.default_root_dir))
    if record is not None:
        record.update(metric_kinds={**record.data.get("metric_kinds", {}), **kinds})
    print(text, file=sys.stdout, flush=True)
    return scores
