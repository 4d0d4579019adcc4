"""`gmlab-eval ... ood=<set>`: score the model's test split against each OOD set.

For every set and score: AUROC, AUPR and FPR at 95 % TPR (`gmlab.ood.metrics`, the test
split as positives) as `test/ood/<set>/<score>/{auroc,aupr,fpr95}`, the mean score of the
set (`.../mean`; the test split's under `test/ood/in/<score>/mean`), and one figure per
set with both histograms of every score (TensorBoard `test/ood/<set>`, and
`<run>/images/ood/<set>.png`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
import torchvision
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from gmlab.data.ood import ConstantDataModule, NoiseDataModule
from gmlab.errors import CheckpointMismatchError, ConfigError, NonFiniteError, ShapeError
from gmlab.ood.metrics import detection_metrics
from gmlab.ood.scores import SCORES, Scorer, check_reference
from gmlab.utils.checkpoint import load_model
from gmlab.utils.runs import PROJECT_ROOT
from gmlab.utils.trackers import log_image

log = logging.getLogger(__name__)
ANY_SHAPE = (NoiseDataModule, ConstantDataModule)  # take the model's shape and levels


def available_sets() -> list[str]:
    """The set names `ood=` accepts (conf/ood/*.yaml)."""
    return sorted(p.stem for p in (PROJECT_ROOT / "conf" / "ood").glob("*.yaml"))


def model_levels(model) -> int:
    prep = getattr(model, "preprocess", None)
    return (prep.num_levels if prep is not None else None) or 256


def first_rows(datamodule, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the first `n` samples of a split (None: all), reading only those rows (a
    split carved from train is not gathered whole first)."""
    rows = datamodule.split_data(split)
    return (rows if n is None else rows.head(n)).tensors()


def load_set(
    name: str, set_cfg: DictConfig, model, split: str, paths: dict[str, str | None] | None = None
) -> torch.Tensor:
    """The raw images of one OOD set's `split`, checked against the model's shape.
    `paths`: {"root": ..., "cache_dir": ...} that replace the set's own where given."""
    cfg = OmegaConf.to_container(set_cfg, resolve=True)
    cls = get_class(cfg["_target_"])
    shape = tuple(model.data_shape)
    if issubclass(cls, ANY_SHAPE):
        cfg["shape"], cfg["num_levels"] = list(shape), model_levels(model)
    for key, value in (paths or {}).items():
        if value and key in cfg:
            cfg[key] = value
    x = hydra.utils.instantiate(cfg).tensors(split)[0]
    if tuple(x.shape[1:]) != shape:
        raise ShapeError(
            f"ood set {name!r} holds images of shape {list(x.shape[1:])}, but the model takes "
            f"{list(shape)}. Sets of any shape: noise, constant; all sets: "
            f"{', '.join(available_sets())}."
        )
    return x


def check_finite_scores(scores: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """`scores` as they are, or a NonFiniteError naming the score, the set and the count."""
    for name, values in scores.items():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            raise NonFiniteError(
                f"{bad} of {len(values)} '{name}' scores of {where} are NaN or inf: the model "
                f"gives these inputs no finite {SCORES[name].label}"
            )
    return scores


def histogram_figure(name: str, scores_in: dict, scores_out: dict, metrics: dict) -> torch.Tensor:
    """[3, H, W] image in [0, 1]: one panel per score, test split vs OOD set."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(scores_in), figsize=(4.2 * len(scores_in), 3.4), dpi=80)
    for ax, score in zip(np.atleast_1d(axes), scores_in, strict=True):
        a, b = scores_in[score].double().numpy(), scores_out[score].double().numpy()
        # each set's 2nd..98th percentile: heavy tails (bpd of noise in the 10^4s) would
        # squeeze the rest into one bin; values outside are counted in the edge bins
        lo = min(np.percentile(a, 2), np.percentile(b, 2))
        hi = max(np.percentile(a, 98), np.percentile(b, 98))
        bins = np.linspace(lo, hi + 1e-9 * max(1.0, abs(hi)), 61)
        for values, label in ((a, "test (in)"), (b, name)):
            ax.hist(np.clip(values, lo, hi), bins=bins, alpha=0.6, density=True, label=label)
        ax.set_xlabel(f"{SCORES[score].label} (clipped to 2-98 %)")
        ax.set_title(f"{score}: AUROC {metrics[f'{score}/auroc']:.3f}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32) / 255.0
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()


def reference_model(path: str | None, model):
    """The `ood.reference_ckpt` density model for the `ratio` score (None: no reference),
    checked against `model` with one clear error."""
    if not path:
        return None
    try:
        reference = load_model(path)
        check_reference(model, reference)
    except (CheckpointMismatchError, ValueError) as exc:
        raise ConfigError(f"ood.reference_ckpt={path}: {exc}") from exc
    return reference


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate_ood(
    model,
    datamodule,
    cfg: DictConfig,
    out_dir: Path,
    loggers=(),
    data_paths: dict[str, str | None] | None = None,
) -> dict[str, float]:
    """Score the test split of `datamodule` and every set of `cfg.ood.sets`; log and return
    the metrics. `data_paths`: the in-distribution data's {"root", "cache_dir"} given on the
    command line, used by the sets that read files (`ood.root` overrides the root)."""
    ood = cfg.ood
    if not ood.sets:
        return {}
    device = resolve_device(ood.device)
    reference = reference_model(ood.reference_ckpt, model)
    scorer = Scorer(model, ood.compressor, ood.iwae_k, ood.batch_size, device, reference)
    names = tuple(ood.scores) if ood.scores else scorer.names
    bad = [n for n in names if n not in scorer.names]
    if bad:
        raise ConfigError(
            f"ood.scores {bad} do not apply to {type(model).__name__}; its scores: "
            f"{', '.join(scorer.names)}"
        )
    paths = dict(data_paths or {})
    if ood.root:
        paths["root"] = ood.root
    sets = {  # every set is loaded (and its shape checked) before anything is scored
        name: load_set(name, set_cfg, model, ood.split, paths)[: ood.limit]
        for name, set_cfg in ood.sets.items()
    }
    x_val = first_rows(datamodule, "val", ood.val_limit)[0]
    x_train, y_train = first_rows(datamodule, "train", ood.train_limit)
    torch.manual_seed(cfg.seed)
    scorer.fit(x_val, x_train, y_train)
    x_in = first_rows(datamodule, ood.split, ood.limit)[0]
    scores_in = check_finite_scores(scorer(x_in, names), f"the {ood.split} split")
    metrics = {f"test/ood/in/{s}/mean": float(v.double().mean()) for s, v in scores_in.items()}
    for name, x_out in sets.items():
        scores_out = check_finite_scores(scorer(x_out, names), f"OOD set {name!r}")
        per_set = {}
        for s in names:
            sign = -1.0 if SCORES[s].ood_high else 1.0
            for key, value in detection_metrics(sign * scores_in[s], sign * scores_out[s]).items():
                per_set[f"{s}/{key}"] = value
            per_set[f"{s}/mean"] = float(scores_out[s].double().mean())
        metrics.update({f"test/ood/{name}/{k}": v for k, v in per_set.items()})
        image = histogram_figure(name, scores_in, scores_out, per_set)
        path = out_dir / "images" / "ood" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(image, path)
        for logger in loggers:
            log_image(logger, f"test/ood/{name}", image, 0)
        log.info("ood %s: %s", name, {k: round(v, 4) for k, v in per_set.items() if "auroc" in k})
    for logger in loggers:
        logger.log_metrics(metrics, step=0)
    return metrics
