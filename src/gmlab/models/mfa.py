"""MFA / MPPCA trained by EM (then optionally fine-tuned by Adam), as a LightningModule.

One training epoch is one EM pass:

* every training batch runs the E-step and adds float64 sufficient statistics
  (`gmlab.distributions.mfa.e_step`);
* the last training batch of the epoch all-reduces them across processes (DDP) and
  runs the closed-form M-step (Ghahramani & Hinton for diagonal noise, Tipping & Bishop
  for isotropic noise), *before* Lightning validates and checkpoints the epoch, so
  `val/bpd` and `last.ckpt` always reflect the parameters after the pass.

EM takes no gradient step, yet the trainer's `global_step` must advance for
`ModelCheckpoint` (it skips saving when the step has not moved): each E-step batch calls
`step()` on the (Adam) optimizer while no parameter has a gradient, which changes nothing
and counts one step. A resumed run restores the epoch (= pass) counter, the parameters
and the `initialized` flag, and continues with the next pass.

Epochs from `em_passes` on (when set) fine-tune all parameters with Adam on the negative
log-likelihood (the paper's TensorFlow recipe); the noise variances are projected back
onto the floor after every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmlab.distributions.lowrank import LowRankGaussians
from gmlab.distributions.mfa import (
    NOISE_TYPES,
    MixtureOfFactorAnalyzers,
    SufficientStats,
    e_step,
    init_kmeans,
    init_rnd_samples,
    m_step,
)
from gmlab.errors import ConfigError
from gmlab.models.base import GenerativeModel, image_grid

INITS = ("kmeans", "rnd_samples")


class MFAModel(GenerativeModel):
    """Mixture of factor analyzers (`noise="diagonal"`) or of PPCAs (`noise="isotropic"`).

    Args:
        data_shape: shape of one sample, e.g. [1, 28, 28].
        preprocess: `Preprocessor` options (images: dequantized to [0, 1]).
        n_components: K.
        n_factors: l, latent dimensions per component (0: a diagonal GMM).
        noise: "diagonal" (MFA) or "isotropic" (MPPCA).
        init: "kmeans" (k-means++ then Lloyd, per-cluster PPCA) or "rnd_samples"
            (torch-mfa: PPCA of 2(l+1) random points per component).
        init_samples: at most this many training points are used to initialise.
        kmeans_iters: Lloyd iterations of the k-means init.
        noise_floor: lower bound of every noise variance (model units; dequantized
            8-bit pixels in [0,1] have variance >= 1/(12 * 256^2) = 1.3e-6 anyway).
        noise_reg: added to every noise variance after each M-step (scikit-learn's
            `reg_covar`); regularizes pixels that are nearly constant in a component.
        reseed_below: components whose responsibility mass in a pass is below this many
            points are re-seeded at badly explained points.
        feature_sampling: None, or the fraction of coordinates (drawn per batch) from
            which responsibilities are computed (torch-mfa's CelebA trick).
        em_passes: EM for the first `em_passes` epochs, Adam fine-tuning after; None:
            EM for every epoch.
        finetune_lr: Adam learning rate of the fine-tuning phase.
        reconstruct_mode: "map" (MAP component) or "mixture" (responsibility-weighted)
            conditional means for in-painting.
        seed: seed of the initialisation.
    """

    def __init__(
        self,
        data_shape,
        preprocess: dict | None = None,
        n_components: int = 10,
        n_factors: int = 4,
        noise: str = "diagonal",
        init: str = "kmeans",
        init_samples: int = 20000,
        kmeans_iters: int = 20,
        noise_floor: float = 1e-6,
        noise_reg: float = 0.0,
        reseed_below: float = 1.0,
        feature_sampling: float | None = None,
        em_passes: int | None = None,
        finetune_lr: float = 1e-4,
        reconstruct_mode: str = "map",
        seed: int = 0,
    ) -> None:
        super().__init__(data_shape, preprocess)
        if noise not in NOISE_TYPES:
            raise ConfigError(f"model.noise must be one of {NOISE_TYPES}, got {noise!r}")
        if init not in INITS:
            raise ConfigError(f"model.init must be one of {INITS}, got {init!r}")
        if feature_sampling is not None and not 0 < feature_sampling <= 1:
            raise ConfigError(f"model.feature_sampling must be in (0, 1], got {feature_sampling}")
        if reconstruct_mode not in ("map", "mixture"):
            raise ConfigError(
                f"model.reconstruct_mode must be map|mixture, got {reconstruct_mode!r}"
            )
        if noise_floor <= 0:
            raise ConfigError(f"model.noise_floor must be > 0, got {noise_floor}")
        if noise_reg < 0:
            raise ConfigError(f"model.noise_reg must be >= 0, got {noise_reg}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.mixture = MixtureOfFactorAnalyzers(n_components, self.num_dims, n_factors, noise)
        self.register_buffer("initialized", torch.tensor(False))
        self._stats: SufficientStats | None = None
        self._gauss: LowRankGaussians | None = None
        self._log_det_sum = 0.0
        self._outliers: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---------------------------------------------------------------- protocol
    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        x, log_det = self.prepare(x_raw)
        return self.mixture.log_prob(self.flat(x)) + log_det

    def _to_data(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.data_shape)
        return self.preprocess.to_pixels(x) if self.is_image else x

    @torch.no_grad()
    def sample(self, n: int, with_noise: bool = True) -> torch.Tensor:
        """[n, *data_shape] samples (pixel range for images); `with_noise=False` gives
        mu_k + A_k z, the noise-free samples torch-mfa shows."""
        x, _ = self.mixture.sample(n, with_noise=with_noise)
        return self._to_data(x)

    def default_mask(self, batch: int) -> torch.Tensor:
        """[batch, D] observed = left half of each image (first half of the coordinates)."""
        if self.is_image:
            width = self.data_shape[-1]
            cols = torch.arange(width, device=self.device) < width // 2
            mask = cols.expand(*self.data_shape)
        else:
            mask = torch.arange(self.num_dims, device=self.device) < self.num_dims // 2
        return mask.reshape(1, -1).expand(batch, -1)

    @torch.no_grad()
    def reconstruct(
        self, x_raw: torch.Tensor, mask: torch.Tensor | None = None, mode: str | None = None
    ) -> torch.Tensor:
        """In-painting: pixels where `mask` is True are kept, the others replaced by their
        conditional mean given the kept ones (default mask: the left half is observed).

        Args:
            x_raw: [B, *data_shape] raw batch.
            mask: bool, [B, *data_shape] or broadcastable [*data_shape]; True = observed.
            mode: "map" or "mixture" (default: `reconstruct_mode`).
        """
        b = x_raw.shape[0]
        if mask is None:
            mask = self.default_mask(b)
        mask = torch.as_tensor(mask, device=x_raw.device).bool()
        mask = mask.expand(b, *self.data_shape) if mask.dim() == len(self.data_shape) else mask
        mask = mask.reshape(b, -1)
        if x_raw.is_floating_point() and not self.is_image:
            x = x_raw.to(self.mixture.means.dtype)
        else:
            x = self.preprocess.to_model_space(x_raw)
        rec = self.mixture.reconstruct(self.flat(x), mask, mode or self.hparams.reconstruct_mode)
        return self._to_data(rec)

    # ------------------------------------------------------------------ init
    def _init_points(self) -> torch.Tensor:
        """Up to `init_samples` preprocessed training points [n, D], the same on every rank
        when the DataModule exposes its tensors."""
        limit = self.hparams.init_samples
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None)
        gen = torch.Generator().manual_seed(self.hparams.seed)
        if dm is not None and hasattr(dm, "tensors"):
            x_raw = dm.tensors("train")[0]
            if len(x_raw) > limit:
                x_raw = x_raw[torch.randperm(len(x_raw), generator=gen)[:limit].sort().values]
            batches = [x_raw]
        else:
            loader = dm.train_dataloader() if dm is not None else trainer.train_dataloader
            batches, seen = [], 0
            for batch in loader:
                x_raw = batch[0] if isinstance(batch, (tuple, list)) else batch
                batches.append(x_raw)
                seen += len(x_raw)
                if seen >= limit:
                    break
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.seed)
            for x_raw in batches:
                x, _ = self.prepare(x_raw.to(self.device))
                out.append(self.flat(x))
        return torch.cat(out)[:limit]

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the parameters from points x [n, D] in model space (`init` method)."""
        hp = self.hparams
        fn = init_kmeans if hp.init == "kmeans" else init_rnd_samples
        kwargs = {"n_iter": hp.kmeans_iters} if hp.init == "kmeans" else {}
        if x.shape[0] < hp.n_components and hp.init == "kmeans":
            fn, kwargs = init_rnd_samples, {}  # k-means needs K <= N
        params = fn(x, hp.n_components, hp.n_factors, hp.noise_floor, seed=hp.seed, **kwargs)
        self.mixture.set_params(**params)
        self.initialized.fill_(True)

    def on_fit_start(self) -> None:
        if bool(self.initialized):
            return
        if self.trainer.is_global_zero or self.trainer.world_size == 1:
            self.initialize(self._init_points())
        if self.trainer.world_size > 1:  # everyone starts from rank 0's parameters
            state = {k: v.cpu() for k, v in self.mixture.state_dict().items()}
            state = self.trainer.strategy.broadcast(state, src=0)
            self.mixture.load_state_dict(state)
            self.initialized.fill_(True)

    # -------------------------------------------------------------- training
    @property
    def em_phase(self) -> bool:
        passes = self.hparams.em_passes
        return passes is None or self.current_epoch < passes

    def on_train_epoch_start(self) -> None:
        self._stats = None
        if self.em_phase:
            self._start_pass()

    def _start_pass(self) -> None:
        hp = self.hparams
        with torch.no_grad():
            self._gauss = self.mixture.gaussians()
        self._stats = SufficientStats.zeros(
            hp.n_components,
            self.num_dims,
            hp.n_factors,
            hp.noise == "isotropic",
            device=self.device,
        )
        self._log_det_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    def _count_step(self) -> None:
        """Advance `global_step` without changing anything (no parameter has a gradient)."""
        opt = self.optimizers()
        opt.step()

    def training_step(self, batch, batch_idx: int):
        x_raw = batch[0]
        if not self.em_phase:
            return self._finetune_step(x_raw, batch_idx)
        if self._stats is None:  # e.g. the first batch after a phase change
            self._start_pass()
        x, log_det = self.prepare(x_raw, train=True)
        x = self.flat(x)
        resp = {}
        fs = self.hparams.feature_sampling
        if fs is not None and fs < 1:
            d = self.num_dims
            idx = torch.randperm(d, device=self.device)[: max(1, int(round(fs * d)))]
            m = self.mixture
            log_noise = m.log_noise if m.noise == "isotropic" else m.log_noise[:, idx]
            with torch.no_grad():
                resp["resp_gauss"] = LowRankGaussians.from_params(
                    m.means[:, idx], m.factors[:, idx], log_noise, self._gauss.shift[idx]
                )
            resp["resp_index"] = idx
        with torch.autocast(self.device.type, enabled=False):
            ll = e_step(x, self._gauss, self.mixture.log_weights.detach(), self._stats, **resp)
        self.check_finite(ll, "train/log_likelihood (E-step)", batch_idx)
        self._log_det_sum += log_det.double().sum()
        self._count_step()
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._finish_pass()
        return None

    def on_train_epoch_end(self) -> None:
        if self.em_phase and self._stats is not None:  # loaders of unknown length
            self._finish_pass()

    @torch.no_grad()
    def _finish_pass(self) -> None:
        stats, hp = self._stats, self.hparams
        self._stats = None
        strategy = self.trainer.strategy
        if self.trainer.world_size > 1:
            vec = torch.cat([stats.flat(), self._log_det_sum.reshape(1)])
            vec = strategy.reduce(vec, reduce_op="sum")
            stats.load_flat(vec[:-1])
            self._log_det_sum = vec[-1]
            self._gather_worst(stats)
        new = m_step(
            stats, self._gauss, hp.noise, hp.noise_floor, hp.reseed_below, noise_reg=hp.noise_reg
        )
        reseeded = int(new.pop("reseeded").sum())
        self.mixture.set_params(**new)
        self._gauss = None
        count = float(stats.count)
        ll = (float(stats.log_lik) + float(self._log_det_sum)) / max(count, 1.0)
        log = dict(on_step=False, on_epoch=True, batch_size=1)
        if hp.feature_sampling is None or hp.feature_sampling >= 1:
            self.log("train/ll", ll, prog_bar=True, **log)
            self.log("train/bpd", self.to_bits(torch.tensor(ll)), **log)
        self.log("train/reseeded", float(reseeded), **log)

    def _gather_worst(self, stats: SufficientStats) -> None:
        m, d = stats.num_worst, self.num_dims
        if m == 0:
            return
        pad = m - len(stats.worst_ll)
        x = F.pad(stats.worst_x, (0, 0, 0, pad))
        ll = F.pad(stats.worst_ll, (0, pad), value=math.inf)
        comp = F.pad(stats.worst_comp, (0, pad))
        gx, gll, gc = (self.all_gather(t) for t in (x, ll, comp))
        stats.worst_x = torch.zeros(0, d, device=self.device, dtype=x.dtype)
        stats.worst_ll = torch.zeros(0, device=self.device, dtype=ll.dtype)
        stats.worst_comp = torch.zeros(0, dtype=torch.long, device=self.device)
        keep = torch.isfinite(gll.reshape(-1))
        stats.add_worst(gx.reshape(-1, d)[keep], gll.reshape(-1)[keep], gc.reshape(-1)[keep])

    def _finetune_step(self, x_raw: torch.Tensor, batch_idx: int):
        opt = self.optimizers()
        x, log_det = self.prepare(x_raw, train=True)
        ll = self.mixture.log_prob(self.flat(x)) + log_det
        loss = -ll.mean() / self.num_dims
        self.check_finite(loss, "train/loss", batch_idx)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        with torch.no_grad():
            floor = math.log(self.hparams.noise_floor)
            self.mixture.log_noise.clamp_(min=floor)
        log = dict(on_step=False, on_epoch=True, batch_size=x.shape[0])
        self.log("train/ll", ll.mean().detach(), prog_bar=True, **log)
        self.log("train/bpd", self.to_bits(ll.detach()).mean(), **log)
        return loss.detach()

    def configure_optimizers(self):
        return torch.optim.Adam(self.mixture.parameters(), lr=self.hparams.finetune_lr)

    # ------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._outliers = None

    def validation_step(self, batch, batch_idx: int):
        ll = self.evaluate_batch(batch[0], "val", batch_idx)
        if self.is_image:  # keep the 16 lowest-likelihood images for the figure
            x, lls = batch[0], ll.detach()
            if self._outliers is not None:
                x = torch.cat([self._outliers[0], x])
                lls = torch.cat([self._outliers[1], lls])
            idx = torch.topk(lls, min(16, len(lls)), largest=False).indices
            self._outliers = (x[idx], lls[idx])

    # --------------------------------------------------------------- figures
    @torch.no_grad()
    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """samples (with and without noise), components (mean and +-2 std along each
        factor), in-painting (left half observed -> right half), lowest-likelihood images."""
        if not self.is_image:
            return {}
        levels = self.preprocess.num_levels - 1
        out = {
            "samples": image_grid(self.sample(64) / levels),
            "samples_noise_free": image_grid(self.sample(64, with_noise=False) / levels),
        }
        m = self.mixture
        top = torch.argsort(m.weights, descending=True)[: min(8, m.n_components)]
        mu = m.means[top]  # [c, D]
        a = m.factors[top].transpose(1, 2)  # [c, l, D]
        rows = [mu.unsqueeze(1)]
        if m.n_factors:
            rows.append(
                torch.stack([mu.unsqueeze(1) + 2 * a, mu.unsqueeze(1) - 2 * a], 2).flatten(1, 2)
            )
        panel = torch.cat(rows, 1)  # [c, 1 + 2l, D]
        out["components"] = image_grid(
            self._to_data(panel.reshape(-1, self.num_dims)) / levels, nrow=panel.shape[1]
        )
        x = x_raw[:16]
        mask = self.default_mask(len(x))
        rec = self.reconstruct(x, mask)
        shown = x.float().reshape(len(x), -1).masked_fill(~mask, levels / 2).reshape(x.shape)
        triplets = torch.stack([x.float(), shown, rec], 1).flatten(0, 1) / levels
        out["inpainting"] = image_grid(triplets, nrow=12)
        if self._outliers is not None:
            out["lowest_likelihood"] = image_grid(self._outliers[0].float() / levels)
        return out
