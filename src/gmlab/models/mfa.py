"""MFA / MPPCA as LightningModules: the model and its initialisation (`MFABase`) and its
training by EM (`MFAModel`). Adam fine-tuning is `gmlab.models.mfa_finetune.MFAFinetune`."""

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
from gmlab.errors import ConfigError, NonFiniteError, SingularCovarianceError
from gmlab.models.base import GenerativeModel, image_grid

INITS = ("kmeans", "rnd_samples")


class MFABase(GenerativeModel):
    """A mixture of factor analyzers (`noise="diagonal"`) or of PPCAs (`noise="isotropic"`)
    over flattened samples, its initialisation from training data and its figures; the
    subclasses train it.

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
        reconstruct_mode: "map" (MAP component) or "mixture" (responsibility-weighted)
            conditional means for in-painting.
        seed: seed of the initialisation.
        outlier_weight: epsilon of the robust density (0: off, the plain mixture).
        outlier_floor: noise floor of the broad twin components.

    The robust density is p(x) = (1 - eps) p_MFA(x) + eps p_twin(x), where p_twin is the
    same mixture with every noise variance raised to at least `outlier_floor`: a mixture
    of 2K factor analyzers whose K broad twins explain images with ink on pixels that the
    fitted components hold (nearly) constant, at a cost of -log(1 - eps) nats for the
    others. Training (EM, Adam) fits p_MFA; `log_likelihood`, the metrics and `sample`
    use p.
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
        reconstruct_mode: str = "map",
        seed: int = 0,
        outlier_weight: float = 0.0,
        outlier_floor: float = 1e-3,
    ) -> None:
        super().__init__(data_shape, preprocess)
        if noise not in NOISE_TYPES:
            raise ConfigError(f"model.noise must be one of {NOISE_TYPES}, got {noise!r}")
        if init not in INITS:
            raise ConfigError(f"model.init must be one of {INITS}, got {init!r}")
        if n_components < 1 or n_factors < 0:
            raise ConfigError(
                f"model.n_components must be >= 1 and model.n_factors >= 0, got "
                f"{n_components} and {n_factors}"
            )
        if reconstruct_mode not in ("map", "mixture"):
            raise ConfigError(
                f"model.reconstruct_mode must be map|mixture, got {reconstruct_mode!r}"
            )
        if noise_floor <= 0:
            raise ConfigError(f"model.noise_floor must be > 0, got {noise_floor}")
        if not 0 <= outlier_weight < 1 or outlier_floor <= 0:
            raise ConfigError(
                f"model.outlier_weight must be in [0, 1) and model.outlier_floor > 0, got "
                f"{outlier_weight} and {outlier_floor}"
            )
        self.save_hyperparameters()  # with the calling subclass constructor's arguments
        self.mixture = MixtureOfFactorAnalyzers(n_components, self.num_dims, n_factors, noise)
        self.register_buffer("initialized", torch.tensor(False))

    # ---------------------------------------------------------------- protocol
    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        x, log_det = self.prepare(x_raw)
        x = self.flat(x)
        joint = self.gaussians().log_prob(x) + self.mixture.log_weights
        eps = self.hparams.outlier_weight
        if eps > 0:  # the robust density: the K broad twins with weight eps
            twin = self.mixture.with_noise_floor(self.hparams.outlier_floor)
            broad = twin.joint_log_prob(x) + math.log(eps)
            joint = torch.cat([joint + math.log1p(-eps), broad], 1)
        return torch.logsumexp(joint, 1) + log_det

    @torch.no_grad()
    def sample(self, n: int, with_noise: bool = True) -> torch.Tensor:
        """[n, *data_shape] samples (pixel range for images); `with_noise=False` gives
        mu_k + A_k z, the noise-free samples torch-mfa shows."""
        x, _ = self.mixture.sample(n, with_noise=with_noise)
        eps = self.hparams.outlier_weight
        if with_noise and eps > 0:  # rows drawn from the broad twins
            twin = torch.rand(n, device=x.device) < eps
            if twin.any():
                floor = self.hparams.outlier_floor
                x[twin] = self.mixture.with_noise_floor(floor).sample(int(twin.sum()))[0]
        return self.to_data(x)

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
        return self.to_data(rec)

    # ------------------------------------------------------------------ init
    def init_points(self, datamodule) -> torch.Tensor:
        """Up to `init_samples` preprocessed training points [n, D] from the datamodule,
        the same on every rank: a seeded random subset of `datamodule.split_data("train")`
        (only those rows are read, so neither a memory-mapped file nor a split carved from
        train is copied whole), or the first batches of its training loader when it has
        no splits."""
        limit, seed = self.hparams.init_samples, self.hparams.seed
        if hasattr(datamodule, "split_data"):
            split = datamodule.split_data("train")
            idx = torch.arange(len(split))
            if len(split) > limit:
                gen = torch.Generator().manual_seed(seed)
                idx = torch.randperm(len(split), generator=gen)[:limit].sort().values
            batches = [split.take(idx)[0]]
        else:
            batches, seen = [], 0
            for batch in datamodule.train_dataloader():
                batches.append(self.batch_inputs(batch))
                seen += len(batches[-1])
                if seen >= limit:
                    break
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the dequantization noise of the init points
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
        if x.shape[0] < hp.n_components:
            raise ConfigError(
                f"model.n_components={hp.n_components} is more than the {x.shape[0]} training "
                f"points the mixture is initialised from (at most model.init_samples="
                f"{hp.init_samples}): use at most {x.shape[0]} components, or more data"
            )
        params = fn(x, hp.n_components, hp.n_factors, hp.noise_floor, seed=hp.seed, **kwargs)
        self.mixture.set_params(**params)
        self.initialized.fill_(True)

    def on_fit_start(self) -> None:
        """Initialise from the datamodule's training data (rank 0, then broadcast), unless
        the parameters are already set (a resumed run, a fine-tuning start)."""
        if bool(self.initialized):
            return
        trainer = self.trainer
        if trainer.is_global_zero or trainer.world_size == 1:
            datamodule = trainer.datamodule
            if datamodule is None:
                raise ConfigError(f"{type(self).__name__} is initialised from a datamodule")
            self.initialize(self.init_points(datamodule))
        if trainer.world_size > 1:  # everyone starts from rank 0's parameters
            state = {k: v.cpu() for k, v in self.mixture.state_dict().items()}
            state = trainer.strategy.broadcast(state, src=0)
            self.mixture.load_state_dict(state)
            self.initialized.fill_(True)

    def gaussians(self) -> LowRankGaussians:
        """The mixture's precomputed components; a singular one names the options."""
        try:
            return self.mixture.gaussians()
        except SingularCovarianceError as exc:
            raise SingularCovarianceError(
                f"{exc} Options: model.noise_floor, model.n_factors."
            ) from exc

    # --------------------------------------------------------------- figures
    @torch.no_grad()
    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """samples (with and without noise), components (mean and +-2 std along each
        factor), in-painting (left half observed -> right half), and the 16 images of
        `x_raw` with the lowest likelihood."""
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
            self.to_data(panel.reshape(-1, self.num_dims)) / levels, nrow=panel.shape[1]
        )
        x = x_raw[:16]
        mask = self.default_mask(len(x))
        rec = self.reconstruct(x, mask)
        shown = x.float().reshape(len(x), -1).masked_fill(~mask, levels / 2).reshape(x.shape)
        triplets = torch.stack([x.float(), shown, rec], 1).flatten(0, 1) / levels
        out["inpainting"] = image_grid(triplets, nrow=12)
        worst = torch.argsort(self.log_likelihood(x_raw))[:16]
        out["lowest_likelihood"] = image_grid(x_raw[worst].float() / levels)
        return out


class MFAModel(MFABase):
    """MFA / MPPCA trained by EM under Lightning's manual optimization: one training epoch
    is one EM pass.

    * Every training batch runs the E-step (`gmlab.distributions.mfa.e_step`) and adds
      its float64 sufficient statistics.
    * The last training batch of the epoch sums them across processes (DDP: one
      all-reduce of one flat vector) and runs the closed-form M-step (Ghahramani & Hinton
      for diagonal noise, Tipping & Bishop for isotropic noise), before Lightning validates
      and checkpoints the epoch, so `val/bpd` and `last.ckpt` hold the parameters after
      the pass.
    * Each M-step counts as one optimizer step of Lightning's manual-optimization loop, so
      `global_step` is the number of EM updates (what `ModelCheckpoint` and
      `trainer.max_steps` see); no optimizer exists.

    A resumed run restores the epoch (= pass) counter, the parameters and the
    `initialized` flag, and continues with the next pass.

    Args (`mixture`: `MFABase`'s, by keyword):
        noise_reg: added to every noise variance after each M-step (scikit-learn's
            `reg_covar`); regularizes pixels that are nearly constant in a component.
        reseed_below: components whose responsibility mass in a pass is below this many
            points are re-seeded at badly explained points.
        feature_sampling: None, or the fraction of coordinates (drawn per batch) from
            which responsibilities are computed (torch-mfa's CelebA trick).
    """

    checkpoint_version = 1  # 0: with the Adam phase's options (gmlab.models.compat)

    def __init__(
        self,
        data_shape,
        noise_reg: float = 0.0,
        reseed_below: float = 1.0,
        feature_sampling: float | None = None,
        **mixture,
    ) -> None:
        super().__init__(data_shape, **mixture)
        if feature_sampling is not None and not 0 < feature_sampling <= 1:
            raise ConfigError(f"model.feature_sampling must be in (0, 1], got {feature_sampling}")
        if noise_reg < 0:
            raise ConfigError(f"model.noise_reg must be >= 0, got {noise_reg}")
        self.automatic_optimization = False
        self._stats: SufficientStats | None = None
        self._gauss: LowRankGaussians | None = None
        self._log_det_sum = torch.zeros((), dtype=torch.float64)

    def configure_optimizers(self):
        return []  # EM: closed-form updates, no optimizer (None would warn)

    # -------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        with torch.no_grad():
            self._gauss = self.gaussians()
        self._stats = SufficientStats.zeros(
            hp.n_components,
            self.num_dims,
            hp.n_factors,
            hp.noise == "isotropic",
            device=self.device,
        )
        self._log_det_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    def _resp_subset(self) -> dict:
        """Feature sampling: the Gaussians over a random subset of the coordinates."""
        fs = self.hparams.feature_sampling
        if fs is None or fs >= 1:
            return {}
        d, m = self.num_dims, self.mixture
        idx = torch.randperm(d, device=self.device)[: max(1, int(round(fs * d)))]
        log_noise = m.log_noise if m.noise == "isotropic" else m.log_noise[:, idx]
        with torch.no_grad():
            sub = LowRankGaussians.from_params(
                m.means[:, idx], m.factors[:, idx], log_noise, self._gauss.shift[idx]
            )
        return {"resp_gauss": sub, "resp_index": idx}

    def training_step(self, batch, batch_idx: int):
        x, log_det = self.prepare(self.batch_inputs(batch), train=True)
        with torch.autocast(self.device.type, enabled=False):
            ll = e_step(
                self.flat(x),
                self._gauss,
                self.mixture.log_weights.detach(),
                self._stats,
                **self._resp_subset(),
            )
        self.check_finite(ll, "train/log_likelihood (E-step)", batch_idx)
        self._log_det_sum += log_det.double().sum()
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._finish_pass()
        return None

    def on_train_epoch_end(self) -> None:
        if self._stats is not None:  # loaders of unknown length
            self._finish_pass()

    def _count_update(self) -> None:
        """One EM update = one completed step of the manual-optimization loop, the counter
        that Lightning's `global_step` reads (saved and restored with the loops' state)."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    @torch.no_grad()
    def _finish_pass(self) -> None:
        stats, hp = self._stats, self.hparams
        self._stats = None
        if self.trainer.world_size > 1:
            vec = torch.cat([stats.flat(), self._log_det_sum.reshape(1)])
            vec = self.trainer.strategy.reduce(vec, reduce_op="sum")
            stats.load_flat(vec[:-1])
            self._log_det_sum = vec[-1]
            self._gather_worst(stats)
        try:
            new = m_step(
                stats,
                self._gauss,
                hp.noise,
                hp.noise_floor,
                hp.reseed_below,
                noise_reg=hp.noise_reg,
            )
        except (NonFiniteError, SingularCovarianceError) as exc:
            raise type(exc)(
                f"M-step of EM pass {self.current_epoch + 1} (epoch {self.current_epoch}): {exc} "
                "Options: model.noise_floor, model.noise_reg, model.n_factors."
            ) from exc
        reseeded = int(new.pop("reseeded").sum())
        self.mixture.set_params(**new)
        self._gauss = None
        self._count_update()
        count = float(stats.count)
        ll = (float(stats.log_lik) + float(self._log_det_sum)) / max(count, 1.0)
        log = dict(on_step=False, on_epoch=True, batch_size=1)
        if hp.feature_sampling is None or hp.feature_sampling >= 1:
            self.log("train/ll", ll, prog_bar=True, **log)
            self.log("train/bpd", self.to_bits(torch.tensor(ll)), **log)
        self.log("train/reseeded", float(reseeded), **log)

    def _gather_worst(self, stats: SufficientStats) -> None:
        """Every rank's worst explained points, for re-seeding (the same on all ranks)."""
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
