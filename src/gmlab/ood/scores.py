"""OOD scores of a trained model, all through the model protocol.

Density models (`log_likelihood(x_raw) -> [B]` nats, `to_bits`; the VAE's
`iwae_bound(x_raw, k)` with its own k) get
  * `bpd`: the naive likelihood score, bits/dim;
  * `complexity`: bpd(x) - L(x) / D, L the compressed length (`gmlab.ood.complexity`):
    minus the log2 likelihood ratio against a compressor's universal density, per dim
    (Serra et al. 2020);
  * `typicality`: |bpd(x) - mean bpd on validation data| (Nalisnick et al. 2019's test
    for one sample; bpd is an affine map of -log p(x), so it ranks as the nats form);
  * `complexity_typicality`: the same two-sided test on the complexity-corrected score,
    |complexity(x) - its validation mean| (flags inputs too complex for their likelihood
    as well as too simple);
  * `ratio` (with a `reference` density model of the same data): bpd(x) - bpd_ref(x),
    minus the log2 likelihood ratio per dim against a generic "background" model, which
    cancels what both models find easy, such as smooth or blank images (Ren et al. 2019;
    Schirrmeister et al. 2020 use a model of general images or a smaller model).
Classifiers (`joint(x_raw) -> [B, S]` class scores, `features(x_raw) -> [B, d]`) get
  * `max_softmax`: max_y p(y | x) (Hendrycks & Gimpel 2017);
  * `log_pf` (GMM head: logsumexp of log p(f, y) = log p(f)) or `energy` (linear head:
    logsumexp of the logits, Liu et al. 2020);
  * `posthoc_log_pf`: log p(f) under class Gaussians refitted on training features.

Each score has an orientation: `SCORES[name].ood_high` is True where larger values mean
"more out-of-distribution".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gmlab.ood.complexity import complexity_bits_per_dim
from gmlab.ood.posthoc import ClassGaussians
from gmlab.ops.chunks import batched


@dataclass(frozen=True)
class ScoreInfo:
    label: str  # what the values are, for plots
    ood_high: bool  # larger = more out-of-distribution


SCORES = {
    "bpd": ScoreInfo("bits/dim", True),
    "complexity": ScoreInfo("bpd - compressor bits/dim", True),
    "typicality": ScoreInfo("|bpd - mean validation bpd|", True),
    "complexity_typicality": ScoreInfo("|complexity - its validation mean|", True),
    "ratio": ScoreInfo("bpd - reference model's bpd", True),
    "max_softmax": ScoreInfo("max_y p(y|x)", False),
    "log_pf": ScoreInfo("log p(f(x)), nats", False),
    "energy": ScoreInfo("logsumexp of the logits", False),
    "posthoc_log_pf": ScoreInfo("log p(f(x)), refitted class Gaussians, nats", False),
}


def check_reference(model, reference) -> None:
    """ValueError unless `reference` is a density model of the same data as `model`: the
    same sample shape and the same pixel levels and kind, so both bpd share one convention."""
    if hasattr(reference, "joint") or not hasattr(reference, "log_likelihood"):
        raise ValueError(f"the reference must be a density model, not {type(reference).__name__}")
    if hasattr(model, "joint"):
        raise ValueError("the likelihood-ratio score needs a density model; classifiers have none")
    ours, theirs = model.preprocess, reference.preprocess
    mine = (tuple(model.data_shape), ours.num_levels, ours.discrete)
    other = (tuple(reference.data_shape), theirs.num_levels, theirs.discrete)
    if mine != other:
        raise ValueError(
            "the reference model must see the same data: (shape, levels, binarized) are "
            f"{mine} for the model and {other} for the reference"
        )


class Scorer:
    """Per-sample OOD scores of one model. `fit` on in-distribution data first (validation
    split: typicality; training split: post-hoc Gaussians), then call on raw batches.
    `reference`: a density model of the same data for the `ratio` score."""

    def __init__(
        self,
        model,
        compressor: str = "png",
        iwae_k: int = 100,
        batch_size: int = 500,
        device: str | torch.device = "cpu",
        reference=None,
    ) -> None:
        self.model = model.to(device).eval()
        self.compressor = compressor
        self.iwae_k = iwae_k
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.is_classifier = hasattr(model, "joint")
        self.val_mean_bpd: float | None = None
        self.val_mean_complexity: float | None = None
        self.gaussians: ClassGaussians | None = None
        self.reference: Scorer | None = None
        if reference is not None:
            check_reference(model, reference)
            self.reference = Scorer(reference, compressor, iwae_k, batch_size, device)

    @property
    def names(self) -> tuple[str, ...]:
        if not self.is_classifier:
            names = ("bpd", "complexity", "typicality", "complexity_typicality")
            return (*names, "ratio") if self.reference is not None else names
        head = "energy" if isinstance(self.model.head, torch.nn.Linear) else "log_pf"
        return ("max_softmax", head, "posthoc_log_pf")

    # ------------------------------------------------------------- per batch
    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] log p(x) in nats: the IWAE bound with `iwae_k` samples where the model has one."""
        iwae = getattr(self.model, "iwae_bound", None)
        return iwae(x_raw, self.iwae_k) if iwae is not None else self.model.log_likelihood(x_raw)

    def bpd(self, x_raw: torch.Tensor) -> torch.Tensor:
        return batched(
            lambda x: self.model.to_bits(self.log_likelihood(x)),
            x_raw,
            self.batch_size,
            self.device,
        )

    def complexity_input(self, x_raw: torch.Tensor) -> torch.Tensor:
        """The uint8 image the compressor sees: the raw pixels, or for a model of
        binarized data the pixels thresholded at half range (0 / top level)."""
        prep = self.model.preprocess
        if not prep.discrete:
            return x_raw
        top = prep.num_levels - 1
        return ((x_raw.float() >= prep.num_levels / 2) * top).to(torch.uint8)

    def features(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[N, d] the classifier's features f(x), the head's input."""
        return batched(self.model.features, x_raw, self.batch_size, self.device)

    # ------------------------------------------------------------------ fit
    def fit(self, x_val: torch.Tensor, x_train: torch.Tensor, y_train: torch.Tensor) -> Scorer:
        if self.is_classifier:
            self.gaussians = ClassGaussians().fit(self.features(x_train), y_train)
        else:
            bpd = self.bpd(x_val)
            self.val_mean_bpd = float(bpd.double().mean())
            corrected = bpd - complexity_bits_per_dim(self.complexity_input(x_val), self.compressor)
            self.val_mean_complexity = float(corrected.double().mean())
        return self

    # --------------------------------------------------------------- scores
    def __call__(self, x_raw: torch.Tensor, names: tuple[str, ...] | None = None) -> dict:
        """{name: [N] values} for the scores `names` (default: all of `names`)."""
        names = names or self.names
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"unknown scores {unknown} for this model; it has {list(self.names)}")
        return self._classifier(x_raw, names) if self.is_classifier else self._density(x_raw, names)

    def _density(self, x_raw: torch.Tensor, names) -> dict[str, torch.Tensor]:
        if {"typicality", "complexity_typicality"} & set(names) and self.val_mean_bpd is None:
            raise RuntimeError("Scorer.fit must see validation data for the typicality scores")
        bpd = self.bpd(x_raw)
        out = {"bpd": bpd}
        if {"complexity", "complexity_typicality"} & set(names):
            shown = self.complexity_input(x_raw)
            out["complexity"] = bpd - complexity_bits_per_dim(shown, self.compressor)
        if "typicality" in names:
            out["typicality"] = (bpd - self.val_mean_bpd).abs()
        if "complexity_typicality" in names:
            out["complexity_typicality"] = (out["complexity"] - self.val_mean_complexity).abs()
        if "ratio" in names:
            out["ratio"] = bpd - self.reference.bpd(x_raw)
        return {n: out[n] for n in names}

    def _classifier(self, x_raw: torch.Tensor, names) -> dict[str, torch.Tensor]:
        joint = batched(self.model.joint, x_raw, self.batch_size, self.device)
        out = {
            "max_softmax": joint.log_softmax(-1).max(-1).values.exp(),
            "log_pf": joint.logsumexp(-1),
            "energy": joint.logsumexp(-1),
        }
        if "posthoc_log_pf" in names:
            if self.gaussians is None:
                raise RuntimeError("Scorer.fit must see training data for posthoc_log_pf")
            out["posthoc_log_pf"] = self.gaussians.log_prob(self.features(x_raw))
        return {n: out[n] for n in names}
