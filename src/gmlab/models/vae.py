"""The VAE family: one LightningModule with pluggable encoder/decoder, likelihood and prior.

    log p(x) >= ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)),   q(z|x) = N(mu(x), diag var(x))

Parts, chosen by config:
  - `architecture`: "mlp" (flattened input, `hidden` sizes, decoder mirrored) or "conv"
    (`gmlab.nn.conv_autoencoder`, 32x32 images);
  - `likelihood`: bernoulli | gaussian (learned variance) | gaussian_fixed | discretized_logistic
    (`gmlab.distributions.likelihoods`);
  - `prior`: normal | mog (K learned components) | made (VLAE autoregressive-flow prior)
    (`gmlab.distributions.priors`).

Training minimizes the negative ELBO (nats per sample) with optional KL warm-up (the KL
weight rises linearly from 0 to 1 over `kl_warmup_steps`) and free bits (`free_bits` nats
per latent dimension, batch-averaged, as in Kingma et al. 2016). The KL term is
  - "analytic" (normal prior only),
  - "mc": log q(z|x) - log p(z) at the reconstruction's sample (exact mixture/flow density),
  - "approx" (mog only): Rui Shu's -log sum_j pi_j exp(-KL(q || p_j));
  "auto" picks analytic for the normal prior and mc otherwise. Reported ELBOs (validation,
  test) always use the analytic or Monte Carlo KL, so they are true (stochastic) bounds.

Evaluation: validation logs the ELBO (`val/elbo`, `val/recon`, `val/kl`, `val/nll`,
`val/bpd` = the ELBO's, `val/active_units`); test logs the ELBO's and the importance-
weighted bound's figures with `eval.iwae_k` samples (`test/nll_iwae`, `test/bpd_iwae`;
`test/nll` and `test/bpd` are the IWAE bound's too). Binarized data give log-pmfs (NLL in
nats); dequantized images give unit-cube densities through the preprocessor's log-det.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gmlab.distributions.normal import diag_normal_log_prob
from gmlab.distributions.priors import MixturePrior, NormalPrior, build_prior
from gmlab.errors import ConfigError
from gmlab.metrics.iwae import iwae_bound
from gmlab.models.base import GenerativeModel, image_grid
from gmlab.nn.conv_autoencoder import ConvDecoder, ConvEncoder
from gmlab.nn.mlp import MLP

KL_MODES = ("auto", "analytic", "mc", "approx")


class VAE(GenerativeModel):
    """Variational autoencoder with a diagonal Gaussian posterior.

    Args:
        data_shape: shape of one sample: (2,) for toy data, (C, H, W) for images.
        preprocess: `gmlab.data.Preprocessor` options (binarize="dynamic" for MNIST).
        latent_dim: size of z.
        architecture: "mlp" or "conv".
        hidden: hidden sizes of the MLP encoder (the decoder uses them reversed).
        activation: MLP activation (relu, tanh, elu, gelu).
        channels: conv channels, 32x32 -> 4x4.
        likelihood: bernoulli, gaussian, gaussian_fixed or discretized_logistic.
        prior: normal, mog or made.
        n_components: K of the mog prior.
        learn_weights: learn the mog mixture weights (else uniform).
        made_hidden: hidden sizes of the MADE of the made prior.
        kl: auto, analytic, mc or approx (see module docstring).
        kl_warmup_steps: optimizer steps over which the KL weight rises 0 -> 1 (0: off).
        free_bits: nats per latent dimension below which the KL is not penalized (0: off).
        lr: Adam learning rate.
        lr_schedule: `WarmupStableDecay` options (warmup_steps, decay_start, decay_steps,
            min_factor): the lr at optimizer step t is lr * factor(t)
            (`GmlabModule.use_lr_schedule`). Empty/null: constant lr.
        channels_last: conv models run in the channels-last memory format (faster on CPU).
        eval: {"iwae_k": importance samples at test time, "iwae_batch": max decoder rows
            per chunk, "val_iwae_k": IWAE samples at validation (0: ELBO only)}.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        preprocess: dict | None = None,
        latent_dim: int = 16,
        architecture: str = "mlp",
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        channels: Sequence[int] = (32, 64, 128, 256),
        likelihood: str = "gaussian_fixed",
        prior: str = "normal",
        n_components: int = 1000,
        learn_weights: bool = False,
        made_hidden: Sequence[int] = (512, 512),
        kl: str = "auto",
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        lr: float = 1e-3,
        lr_schedule: dict | None = None,
        channels_last: bool = True,
        eval: dict | None = None,  # noqa: A002 (config key)
    ) -> None:
        super().__init__(data_shape, preprocess)
        self.save_hyperparameters()
        if kl not in KL_MODES:
            raise ConfigError(f"model.kl must be one of {KL_MODES}, got {kl!r}")
        if kl == "analytic" and prior != "normal":
            raise ConfigError("model.kl=analytic needs prior=normal; use mc or approx (mog)")
        if kl == "approx" and prior != "mog":
            raise ConfigError("model.kl=approx is the mixture-prior approximation: needs prior=mog")
        self.kl_mode = ("analytic" if prior == "normal" else "mc") if kl == "auto" else kl
        self.latent_dim = int(latent_dim)
        self.eval_cfg = {"iwae_k": 1000, "iwae_batch": 8192, "val_iwae_k": 0, **(eval or {})}
        self.likelihood = self.build_likelihood(likelihood)
        p = self.likelihood.num_params
        if architecture == "mlp":
            self.encoder = MLP(self.num_dims, hidden, 2 * self.latent_dim, activation)
            self.decoder = MLP(
                self.latent_dim,
                list(reversed(hidden)),
                p * self.num_dims,
                activation,
                out_shape=(p, *self.data_shape),
            )
        elif architecture == "conv":
            if not self.is_image or self.data_shape[1:] != (32, 32):
                raise ConfigError(
                    f"architecture=conv is built for [C, 32, 32] images, got {self.data_shape}"
                )
            c = self.data_shape[0]
            self.encoder = ConvEncoder(c, 2 * self.latent_dim, channels)
            self.decoder = ConvDecoder(self.latent_dim, p * c, channels)
        else:
            raise ConfigError(f"model.architecture must be mlp or conv, got {architecture!r}")
        self.conv = architecture == "conv"
        if self.conv and channels_last:
            self.encoder.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)
        self.prior = build_prior(prior, self.latent_dim, n_components, learn_weights, made_hidden)
        self.use_lr_schedule(lr_schedule)
        self._val_means: list[torch.Tensor] = []

    # ------------------------------------------------------------------ parts
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space x [B, *data_shape] -> posterior (mu, logvar), each [B, latent_dim]."""
        if self.conv and self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, latent_dim] -> likelihood parameters [N, P, *data_shape]."""
        out = self.decoder(z)
        return out.reshape(z.shape[0], self.likelihood.num_params, *self.data_shape)

    def kl_term(
        self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, mode: str
    ) -> torch.Tensor:
        """KL(q || p) estimate: [B, latent_dim] per dimension (analytic) or [B] (mc, approx)."""
        if mode == "analytic":
            return NormalPrior.kl(mu, logvar)
        if mode == "approx":
            assert isinstance(self.prior, MixturePrior)
            return self.prior.approx_kl(mu, logvar)
        return diag_normal_log_prob(z, mu, logvar) - self.prior.log_prob(z)

    def elbo_terms(self, x: torch.Tensor, kl_mode: str | None = None) -> dict[str, torch.Tensor]:
        """One-sample ELBO pieces of model-space x: recon [B], kl ([B] or [B, D]), mu, logvar."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = self.likelihood.log_prob(x, self.decode(z))
        kl = self.kl_term(z, mu, logvar, kl_mode or self.kl_mode)
        return {"recon": recon, "kl": kl, "mu": mu, "logvar": logvar}

    @property
    def eval_kl_mode(self) -> str:
        """The KL used for reported ELBOs: analytic for the normal prior, else Monte Carlo."""
        return "analytic" if isinstance(self.prior, NormalPrior) else "mc"

    def kl_weight(self, step: int) -> float:
        """The KL weight at optimizer step `step`: linear warm-up from 0 to 1."""
        steps = self.hparams.kl_warmup_steps
        return min(1.0, step / steps) if steps else 1.0

    # --------------------------------------------------------------- objective
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = self.prepare(batch[0], train=True)
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
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/elbo", recon - kl_sample.mean(), batch_size=bs)
        self.log("train/kl", kl_sample.mean(), batch_size=bs)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    # ------------------------------------------------------------------ bounds
    def elbo(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] one-sample ELBO of the raw batch (nats; unit-cube density or log-pmf)."""
        x, log_det = self.prepare(x_raw)
        t = self.elbo_terms(x, self.eval_kl_mode)
        return t["recon"] - _per_sample(t["kl"]) + log_det

    def log_weights(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """[n, B] log p(x, z_i) - log q(z_i | x) of n posterior samples, model-space x."""
        mu, logvar = self.encode(x)
        return self._log_weights(x, mu, logvar, n)

    def _log_weights(self, x, mu, logvar, n: int) -> torch.Tensor:
        b = x.shape[0]
        z = mu + torch.exp(0.5 * logvar) * torch.randn(n, *mu.shape, device=mu.device)
        log_q = diag_normal_log_prob(z, mu, logvar)  # [n, B]
        flat = z.reshape(n * b, -1)
        log_pz = self.prior.log_prob(flat).view(n, b)
        params = self.decode(flat).view(n, b, *self.decode_shape)
        return self.likelihood.log_prob(x, params) + log_pz - log_q

    @property
    def decode_shape(self) -> tuple[int, ...]:
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
        x, log_det = self.prepare(x_raw)
        t = self.elbo_terms(x, self.eval_kl_mode)
        kl = _per_sample(t["kl"])
        elbo = t["recon"] - kl + log_det
        self.check_finite(elbo, f"{stage}/elbo", batch_idx)
        bs = x.shape[0]
        log = {
            f"{stage}/elbo": elbo.mean(),
            f"{stage}/recon": t["recon"].mean(),
            f"{stage}/kl": kl.mean(),
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
        return self.to_data_range(x)

    def to_data_range(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels for images; 2-D points are returned as they are."""
        return self.preprocess.to_pixels(x) if self.is_image else x

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


def scatter_image(panels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Side-by-side matplotlib scatter plots (shared limits) as a [3, H, W] image in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    ref = panels[next(iter(panels))].detach().numpy()
    lo, hi = np.percentile(ref, 0.5, axis=0), np.percentile(ref, 99.5, axis=0)
    pad = 0.15 * (hi - lo)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), dpi=80)
    for ax, (title, pts) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        pts = pts.detach().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(title)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32) / 255.0
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()
