"""The VAE family: one LightningModule whose encoder, decoder, likelihood and prior are parts.

log p(x) >= ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)),   q(z|x) = N(mu(x), diag var(x))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral

import torch

from gmlab.distributions.normal import diag_normal_rsample, diag_normal_rsample_stop
from gmlab.distributions.priors import EncoderAccess
from gmlab.errors import ConfigError
from gmlab.metrics.iwae import iwae_bound
from gmlab.models.base import GenerativeModel, image_grid
from gmlab.models.parts import build_part, preset_part, scheduler_or_preset
from gmlab.plotting import scatter_image

KL_MODES = ("auto", "analytic", "mc", "approx")
OBJECTIVES = ("elbo", "iwae", "dreg")


class VAE(GenerativeModel):
    """Variational autoencoder with a diagonal Gaussian posterior.

    The parts are config dicts (`_target_` + options, the groups under `conf/model/`),
    built here with what only the model knows:
      - `encoder(input_shape=data_shape, out_features=2 * latent_dim)`: x -> (mu, logvar);
      - `decoder(in_features=latent_dim, output_shape=(P, *data_shape))`: z -> the
        likelihood's P parameters per dimension;
      - `likelihood(space=EventSpace)` (`gmlab.distributions.likelihoods`);
      - `prior(dim=latent_dim)`, then `prior.attach(EncoderAccess)` so that a prior may use
        the encoder (`gmlab.distributions.priors.Prior`).

    Training minimizes the negative ELBO (nats per sample) with an optional KL warm-up (the
    weight rises linearly from 0 to 1 over `kl_warmup_steps`) and free bits (`free_bits`
    nats per latent dimension, batch-averaged; Kingma et al. 2016). The KL term (`kl`) is
      - "analytic": closed form (priors with `has_analytic_kl`),
      - "mc": log q(z|x) - log p(z) at the reconstruction's sample (any prior),
      - "approx": the prior's approximation (`has_approx_kl`, the MoG's
        -log sum_j pi_j exp(-KL(q || p_j))),
      - "auto": analytic where the prior has it, else mc.
    `objective` "iwae" trains on the importance-weighted bound instead (Burda et al. 2016),
    L_k = log 1/k sum_i w_i, log w_i = log p(x|z_i) + beta (log p(z_i) - log q(z_i|x)),
    z_i ~ q(z|x), i = 1..k (`train_k`; beta: the KL warm-up weight, 1 after it); "dreg"
    uses the same bound with the doubly reparameterised gradient (Tucker et al. 2018): the
    decoder and prior get the IWAE gradient sum_i w~_i d log w_i, the encoder
    sum_i w~_i^2 (d log w_i / d z_i)(d z_i / d phi) with log q's parameters held fixed
    (w~ = the normalised weights), an estimator of the same gradient with less variance.
    Reported ELBOs (validation, test) use the analytic or Monte Carlo KL, so they are
    (stochastic) bounds; the test step also logs the importance-weighted bound with
    `eval.iwae_k` samples (`test/nll`, `test/bpd` are the IWAE bound's).

    Args:
        data_shape: shape of one sample: (2,) for toy data, (C, H, W) for images.
        preprocess: `gmlab.data.Preprocessor` options (binarize="dynamic" for MNIST).
        latent_dim: size of z.
        encoder, decoder, likelihood, prior: part dicts (None: conf/model/vae.yaml's, MLPs
            with 400 hidden units, a unit-variance Gaussian likelihood, N(0, I)).
        kl: auto, analytic, mc or approx.
        kl_warmup_steps: optimizer steps over which the KL weight rises 0 -> 1 (0: off).
        free_bits: nats per latent dimension below which the KL is not penalized (0: off).
        objective: "elbo", "iwae" or "dreg" (the training bound and its gradient).
        train_k: importance samples of the iwae / dreg objective (1 with iwae: the ELBO
            with the Monte Carlo KL).
        optimizer, lr_scheduler: part configs (`GmlabModule.configure_optimizers`; None:
            conf/model/vae.yaml's, Adam and no scheduler).
        eval: {"iwae_k": importance samples at test time, "iwae_batch": max decoder rows
            per chunk, "val_iwae_k": IWAE samples at validation (0: ELBO only)}.
    """

    checkpoint_version = 2  # 0: flat options named the parts; 1: gmlab.nn.priors (compat)

    def __init__(
        self,
        data_shape: Sequence[int],
        preprocess: dict | None = None,
        latent_dim: int = 16,
        encoder: Mapping | None = None,
        decoder: Mapping | None = None,
        likelihood: Mapping | None = None,
        prior: Mapping | None = None,
        kl: str = "auto",
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        objective: str = "elbo",
        train_k: int = 1,
        optimizer: Mapping | None = None,
        lr_scheduler: Mapping | None = None,
        eval: dict | None = None,  # noqa: A002 (config key)
    ) -> None:
        super().__init__(data_shape, preprocess)
        encoder = encoder or preset_part("vae", "encoder")
        decoder = decoder or preset_part("vae", "decoder")
        likelihood = likelihood or preset_part("vae", "likelihood")
        prior = prior or preset_part("vae", "prior")
        optimizer = optimizer or preset_part("vae", "optimizer")
        lr_scheduler = scheduler_or_preset(lr_scheduler, "vae")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, Integral) or latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be a positive integer, got {latent_dim!r}")
        self.save_hyperparameters()
        self.latent_dim = int(latent_dim)
        self.eval_cfg = {"iwae_k": 1000, "iwae_batch": 8192, "val_iwae_k": 0, **(eval or {})}
        self.likelihood = self.build_likelihood(likelihood)
        self.encoder = build_part(
            encoder, "encoder", input_shape=self.data_shape, out_features=2 * self.latent_dim
        )
        self.decoder = build_part(
            decoder, "decoder", in_features=self.latent_dim, output_shape=self.decode_shape
        )
        self.prior = build_part(prior, "prior", dim=self.latent_dim)
        self.prior.attach(EncoderAccess(self.encode, self.data_shape, *self.preprocess.bounds))
        self.kl_mode = self._check_kl_mode(kl)
        self._check_objective(objective, int(train_k), kl, free_bits)
        self._val_means: list[torch.Tensor] = []

    def _check_kl_mode(self, kl: str) -> str:
        """The training KL mode: `kl`, checked against what the prior offers."""
        name = type(self.prior).__name__
        if kl not in KL_MODES:
            raise ConfigError(f"model.kl must be one of {KL_MODES}, got {kl!r}")
        if kl == "analytic" and not self.prior.has_analytic_kl:
            raise ConfigError(f"model.kl=analytic: {name} has no analytic KL; use mc")
        if kl == "approx" and not self.prior.has_approx_kl:
            raise ConfigError(f"model.kl=approx: {name} has no KL approximation; use mc")
        return self.eval_kl_mode if kl == "auto" else kl

    @staticmethod
    def _check_objective(objective: str, train_k: int, kl: str, free_bits: float) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"model.objective must be one of {OBJECTIVES}, got {objective!r}")
        if train_k < 1:
            raise ConfigError(f"model.train_k must be >= 1, got {train_k}")
        if objective == "elbo":
            if train_k != 1:
                raise ConfigError("model.train_k > 1 needs model.objective=iwae or dreg")
            return
        if kl not in ("auto", "mc") or free_bits > 0:
            raise ConfigError(
                f"model.objective={objective} weighs Monte Carlo samples of log p(x, z) - "
                f"log q(z|x): it takes neither model.kl={kl} nor model.free_bits > 0"
            )

    # ------------------------------------------------------------------ parts
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space x [B, *data_shape] -> posterior (mu, logvar), each [B, latent_dim]."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, latent_dim] -> likelihood parameters [N, P, *data_shape]."""
        return self.decoder(z).reshape(z.shape[0], *self.decode_shape)

    def kl_term(
        self,
        z: torch.Tensor,
        log_q: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        mode: str,
    ) -> torch.Tensor:
        """KL(q || p) estimate: [B, latent_dim] per dimension (analytic) or [B] (mc: log q(z)
        - log p(z) of the draw z [B, D] with log q [B]; approx)."""
        if mode == "analytic":
            return self.prior.analytic_kl(mu, logvar)
        if mode == "approx":
            return self.prior.approx_kl(mu, logvar)
        return log_q - self.prior.log_prob(z)

    def elbo_terms(self, x: torch.Tensor, kl_mode: str | None = None) -> dict[str, torch.Tensor]:
        """One-sample ELBO pieces of model-space x: recon [B], kl ([B] or [B, D]), mu, logvar."""
        mu, logvar = self.encode(x)
        z, log_q = diag_normal_rsample(mu, logvar)
        recon = self.likelihood.log_prob(x, self.decode(z))
        kl = self.kl_term(z, log_q, mu, logvar, kl_mode or self.kl_mode)
        return {"recon": recon, "kl": kl, "mu": mu, "logvar": logvar}

    @property
    def eval_kl_mode(self) -> str:
        """The KL used for reported ELBOs: analytic where the prior has it, else Monte Carlo."""
        return "analytic" if self.prior.has_analytic_kl else "mc"

    def kl_weight(self, step: int) -> float:
        """The KL weight at optimizer step `step`: linear warm-up from 0 to 1."""
        steps = self.hparams.kl_warmup_steps
        return min(1.0, step / steps) if steps else 1.0

    # --------------------------------------------------------------- objective
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = self.prepare(batch[0], train=True)
        if self.hparams.get("objective", "elbo") != "elbo":
            return self.importance_weighted_step(x, batch_idx)
        t = self.elbo_terms(x)
        kl = t["kl"]
        kl_sample = kl.sum(-1) if kl.dim() == 2 else kl
        free_bits = self.hparams.free_bits
        if free_bits > 0:
            if kl.dim() == 2:  # per-dimension batch averages, each floored at free_bits
                kl_pen = kl.mean(0).clamp_min(free_bits).sum()
            else:
                kl_pen = kl.mean().clamp_min(free_bits * self.latent_dim)
        else:
            kl_pen = kl_sample.mean()
        recon = t["recon"].mean()
        loss = -recon + self.kl_weight(self.global_step) * kl_pen
        self.check_finite(loss, "train/loss", batch_idx)
        bs = x.shape[0]
        self.log_step({"train/loss": loss}, bs, prog_bar=True)
        self.log_step({"train/elbo": recon - kl_sample.mean(), "train/kl": kl_sample.mean()}, bs)
        return loss

    def importance_weighted_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, bound [B]) of the iwae / dreg objective on model-space x: the loss's value
        is -mean L_k, its gradient the objective's estimator (see the class docstring)."""
        k, dreg = int(self.hparams.train_k), self.hparams.objective == "dreg"
        mu, logvar = self.encode(x)
        sample = diag_normal_rsample_stop if dreg else diag_normal_rsample
        z, log_q = sample(mu, logvar, k)  # [k, B, D], [k, B]
        recon, log_pz = self.joint_terms(x, z)
        log_w = recon + self.kl_weight(self.global_step) * (log_pz - log_q)
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        if not dreg:
            return -bound.mean(), bound
        w = torch.softmax(log_w.detach(), 0)  # [k, B]
        if z.requires_grad:  # the encoder's path gets w~^2 d log w / dz: one more w~ here
            z.register_hook(lambda grad: grad * w.unsqueeze(-1))
        surrogate = (w * log_w).sum(0)
        return -(bound.detach() + surrogate - surrogate.detach()).mean(), bound

    def importance_weighted_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, bound = self.importance_weighted_loss(x)
        self.check_finite(loss, "train/loss", batch_idx)
        bs = x.shape[0]
        self.log_step({"train/loss": loss}, bs, prog_bar=True)
        self.log_step({f"train/iwae_k{self.hparams.train_k}": bound.mean()}, bs)
        return loss

    # ------------------------------------------------------------------ bounds
    def elbo(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] one-sample ELBO of the raw batch (nats; unit-cube density or log-pmf)."""
        return self.elbo_report(x_raw)["elbo"]

    def elbo_report(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The one-sample ELBO of the raw batch with the reporting KL and its pieces:
        {"elbo", "recon", "kl"} [B] each, and the posterior means "mu" [B, latent_dim]."""
        x, log_det = self.prepare(x_raw)
        t = self.elbo_terms(x, self.eval_kl_mode)
        kl = _per_sample(t["kl"])
        return {"elbo": t["recon"] - kl + log_det, "recon": t["recon"], "kl": kl, "mu": t["mu"]}

    def log_weights(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """[n, B] log p(x, z_i) - log q(z_i | x) of n posterior samples, model-space x."""
        mu, logvar = self.encode(x)
        return self._log_weights(x, mu, logvar, n)

    def _log_weights(self, x, mu, logvar, n: int) -> torch.Tensor:
        z, log_q = diag_normal_rsample(mu, logvar, n)  # [n, B, D], [n, B]
        recon, log_pz = self.joint_terms(x, z)
        return recon + log_pz - log_q

    def joint_terms(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z)), each [n, B], of latents z [n, B, D] for model-space x."""
        n, b = z.shape[:2]
        flat = z.reshape(n * b, -1)
        log_pz = self.prior.log_prob(flat).view(n, b)
        params = self.decode(flat).view(n, b, *self.decode_shape)
        return self.likelihood.log_prob(x, params), log_pz

    @property
    def decode_shape(self) -> tuple[int, ...]:
        """(P, *data_shape): the decoder's output per sample."""
        return (self.likelihood.num_params, *self.data_shape)

    def iwae_bound(self, x_raw: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """[B] importance-weighted bound L_k of the raw batch (k = eval.iwae_k by default)."""
        k = int(k or self.eval_cfg["iwae_k"])
        x, log_det = self.prepare(x_raw)
        mu, logvar = self.encode(x)
        chunk = max(1, int(self.eval_cfg["iwae_batch"]) // x.shape[0])
        bound = iwae_bound(lambda n: self._log_weights(x, mu, logvar, n), k, chunk)
        return bound + log_det

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] the ELBO, or the IWAE bound with eval.iwae_k samples while testing."""
        if self._trainer is not None and self.trainer.testing:
            return self.iwae_bound(x_raw)
        return self.elbo(x_raw)

    # -------------------------------------------------------------- evaluation
    def _log_elbo(self, x_raw: torch.Tensor, stage: str, batch_idx: int) -> torch.Tensor:
        t = self.elbo_report(x_raw)
        elbo = t["elbo"]
        self.check_finite(elbo, f"{stage}/elbo", batch_idx)
        bs = elbo.shape[0]
        log = {
            f"{stage}/elbo": elbo.mean(),
            f"{stage}/recon": t["recon"].mean(),
            f"{stage}/kl": t["kl"].mean(),
            f"{stage}/bpd_elbo": self.to_bits(elbo).mean(),
        }
        self.log_dict(log, batch_size=bs, sync_dist=True)
        if stage == "val":
            self._val_means.append(t["mu"].detach())
        return elbo

    def validation_step(self, batch, batch_idx: int):
        elbo = self._log_elbo(batch[0], "val", batch_idx)
        bs = elbo.shape[0]
        self.log("val/nll", -elbo.mean(), batch_size=bs, sync_dist=True, prog_bar=True)
        self.log("val/bpd", self.to_bits(elbo).mean(), batch_size=bs, sync_dist=True, prog_bar=True)
        k = int(self.eval_cfg.get("val_iwae_k") or 0)
        if k > 1:
            ll = self.iwae_bound(batch[0], k)
            self.log("val/nll_iwae", -ll.mean(), batch_size=bs, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self._val_means:
            self.log("val/active_units", active_units(torch.cat(self._val_means)), sync_dist=True)
            self._val_means.clear()

    def test_step(self, batch, batch_idx: int):
        self._log_elbo(batch[0], "test", batch_idx)
        ll = self.evaluate_batch(batch[0], "test", batch_idx)  # IWAE: test/nll, test/bpd
        bs = ll.shape[0]
        self.log("test/nll_iwae", -ll.mean(), batch_size=bs, sync_dist=True)
        self.log("test/bpd_iwae", self.to_bits(ll).mean(), batch_size=bs, sync_dist=True)

    # ---------------------------------------------------------------- sampling
    def metric_kinds(self) -> dict[str, dict]:
        """Test nll/bpd are the IWAE bound with `eval.iwae_k` samples, validation's the ELBO."""
        from gmlab.utils.metric_kinds import kind, stage_kinds

        kinds = super().metric_kinds()
        kinds |= stage_kinds({"nll": kind("elbo"), "bpd": kind("elbo")}, ("val",))
        iwae = kind("iwae_bound", k=int(self.eval_cfg["iwae_k"]))
        kinds |= stage_kinds(dict.fromkeys(("nll", "bpd", "nll_iwae", "bpd_iwae"), iwae), ("test",))
        val_k = int(self.eval_cfg.get("val_iwae_k") or 0)
        if val_k > 1:
            kinds["val/nll_iwae"] = kind("iwae_bound", k=val_k)
        return kinds

    def sample(self, n: int, noise: bool = True) -> torch.Tensor:
        """[n, *data_shape] from the prior; `noise=False` returns the decoder means."""
        z = self.prior.sample(n)
        return self.decode_to_data(z, noise)

    def decode_to_data(self, z: torch.Tensor, noise: bool = False) -> torch.Tensor:
        params = self.decode(z)
        x = self.likelihood.sample(params) if noise else self.likelihood.mean(params)
        return self.to_data(x)

    def reconstruct(self, x_raw: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder means at the posterior means, in the data's range."""
        if mask is not None:
            raise NotImplementedError("the VAE does not in-paint (mask) yet")
        x, _ = self.prepare(x_raw)
        return self.decode_to_data(self.encode(x)[0])

    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """[B, steps, *data_shape]: decoder means along the line between posterior means."""
        mu_a = self.encode(self.prepare(x_a)[0])[0]
        mu_b = self.encode(self.prepare(x_b)[0])[0]
        t = torch.linspace(0, 1, steps, device=mu_a.device)[None, :, None]
        z = (1 - t) * mu_a[:, None] + t * mu_b[:, None]
        out = self.decode_to_data(z.flatten(0, 1))
        return out.view(mu_a.shape[0], steps, *self.data_shape)

    # ----------------------------------------------------------------- figures
    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.is_image:
            return self.scatter_figures(x_raw) if self.data_shape == (2,) else {}
        levels = self.preprocess.num_levels - 1
        x = x_raw[:32]
        pairs = torch.stack([x.float(), self.reconstruct(x)], dim=1).flatten(0, 1)
        out = {
            "samples": image_grid(self.sample(64, noise=False) / levels),
            "samples_noise": image_grid(self.sample(64, noise=True) / levels),
            "reconstructions": image_grid(pairs / levels, nrow=16),
        }
        pairs = min(8, x_raw.shape[0] // 2)
        if pairs:
            rows = self.interpolate(x_raw[:pairs], x_raw[pairs : 2 * pairs])
            out["interpolations"] = image_grid(rows.flatten(0, 1) / levels, nrow=rows.shape[1])
        return out

    def scatter_figures(self, x_raw: torch.Tensor, n: int = 2000) -> dict[str, torch.Tensor]:
        """2-D data: scatter plots of the data, samples with decoder noise, decoder means."""
        data = x_raw
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "tensors"):
            data = dm.tensors("val")[0][:n]
        panels = {
            "data": data.float().cpu(),
            "samples with decoder noise": self.sample(n, noise=True).cpu(),
            "samples without decoder noise": self.sample(n, noise=False).cpu(),
        }
        return {"scatter": scatter_image(panels)}


def _per_sample(kl: torch.Tensor) -> torch.Tensor:
    return kl.sum(-1) if kl.dim() == 2 else kl


def active_units(means: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Number of latent dims whose posterior mean varies across data: Var_x E_q[z_d] > 0.01
    (Burda et al. 2016)."""
    return (means.float().var(0) > threshold).sum().float()
