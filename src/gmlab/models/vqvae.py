"""VQ-VAE (van den Oord et al. 2017) and its second stage, a Gated PixelCNN prior over
the codes.

Stage 1, `VQVAE`: encoder -> [B, D, h, w] -> nearest of K codes (the `quantizer` part:
`gmlab.nn.vector_quantizer` or `gmlab.nn.ema_quantizer`) -> decoder -> likelihood p(x | z_q).
Loss per image, with D_x the data dimensions:
    -log p(x | z_q) / D_x + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2   (means),
without the middle (codebook) term for the moving-average codebook.
Stage 2, `VQVAEPixelCNN`: the trained VQ-VAE frozen; a `GatedPixelCNN` learns p(codes).

Bits/dim, the shared convention: the codes are a deterministic function of x, so for any
prior p(z) over the h x w grid of codes
    log p(x) = log sum_z p(z) p(x | z) >= log p(x | z_q(x)) + log p(z_q(x)),
with p(z) uniform over K^(h w) grids in stage 1 (log p = -h w log K) and the PixelCNN in
stage 2. Both stages report that bound as `val/bpd`, `test/bpd` (dequantized unit-cube
density, as every density model here).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from gmlab.errors import ConfigError
from gmlab.models.base import GenerativeModel, image_grid
from gmlab.models.parts import build_part, preset_part, scheduler_or_preset
from gmlab.nn.pixelcnn import GatedPixelCNN
from gmlab.nn.vector_quantizer import perplexity
from gmlab.nn.vq_autoencoder import VQDecoder, VQEncoder
from gmlab.utils.checkpoint import load_model, model_class, read_checkpoint

log = logging.getLogger(__name__)


class VQVAE(GenerativeModel):
    """Vector-quantized autoencoder over [C, H, W] images.

    Args:
        data_shape: (C, H, W); H and W divisible by 2^downsample.
        preprocess: `gmlab.data.Preprocessor` options (vae-pytorch: scale=symmetric, [-1, 1]).
        num_codes: K, codebook size (vae-pytorch: 128).
        code_dim: D, size of each code vector (vae-pytorch: 256).
        hidden: channels of the encoder/decoder convolutions.
        downsample: stride-2 layers; the code grid is (H / 2^s, W / 2^s) (32x32 -> 8x8 at 2).
        res_blocks: residual blocks in the encoder and in the decoder.
        likelihood: the decoder likelihood's part dict (`model/likelihood`; default:
            conf/model/vqvae.yaml's, discretized_logistic; gaussian_fixed is N(mu, I),
            vae-pytorch's plain reconstruction loss, a loose density).
        beta: weight of the commitment loss.
        quantizer: the codebook part, a config dict with `_target_` (`model/quantizer=ema`
            or `gradient`); K and D come from num_codes and code_dim. None: conf/model/vqvae.yaml's
            (EMA).
        optimizer, lr_scheduler: the `model/optimizer` and `model/lr_scheduler` part configs
            (None: conf/model/vqvae.yaml's; an empty lr_scheduler: constant lr).
    """

    # 0: a flat `lr` and `lr_schedule`; 1: the likelihood by name; 2: no quantizer meant the
    # gradient-trained codebook (gmlab.models.compat)
    checkpoint_version = 3

    def __init__(
        self,
        data_shape: Sequence[int],
        preprocess: dict | None = None,
        num_codes: int = 128,
        code_dim: int = 256,
        hidden: int = 256,
        downsample: int = 2,
        res_blocks: int = 2,
        likelihood: dict | None = None,
        beta: float = 0.25,
        quantizer: dict | None = None,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
    ) -> None:
        super().__init__(data_shape, preprocess)
        self.save_hyperparameters()
        self.hparams["likelihood"] = dict(likelihood or preset_part("vqvae", "likelihood"))
        self.hparams["quantizer"] = dict(quantizer or preset_part("vqvae", "quantizer"))
        self.hparams["optimizer"] = dict(optimizer or preset_part("vqvae", "optimizer"))
        self.hparams["lr_scheduler"] = scheduler_or_preset(lr_scheduler, "vqvae")
        if not self.is_image:
            raise ConfigError(f"VQVAE models [C, H, W] images, got data_shape {self.data_shape}")
        channels, height, width = self.data_shape
        step = 2**downsample
        if height % step or width % step:
            raise ConfigError(
                f"model.downsample={downsample} needs H and W divisible by {step}, "
                f"got {height}x{width}"
            )
        self.grid_shape = (height // step, width // step)
        self.likelihood = self.build_likelihood(self.hparams.likelihood)
        params = self.likelihood.num_params
        self.encoder = VQEncoder(channels, code_dim, hidden, downsample, res_blocks)
        self.quantizer = build_part(
            self.hparams.quantizer, "quantizer", num_codes=num_codes, dim=code_dim
        )
        self.decoder = VQDecoder(code_dim, params * channels, hidden, downsample, res_blocks)
        self._val_counts: torch.Tensor | None = None

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    @property
    def num_latents(self) -> int:
        """Codes per image, h * w."""
        return math.prod(self.grid_shape)

    # ------------------------------------------------------------------ parts
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] code vectors -> likelihood parameters [B, P, C, H, W]."""
        out = self.decoder(z)
        return out.view(z.shape[0], self.likelihood.num_params, *self.data_shape)

    def codes(self, x_raw: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Raw batch -> [B, h, w] code indices (of the dequantized batch)."""
        x, _ = self.prepare(x_raw, train=train)
        return self.quantizer.nearest(self.encoder(x))

    def reconstruction_log_prob(self, x_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x | z_q(x)) + preprocessing log-det [B] in nats, codes [B, h, w])."""
        x, log_det = self.prepare(x_raw)
        codes = self.quantizer.nearest(self.encoder(x))
        params = self.decode(self.quantizer.lookup(codes))
        return self.likelihood.log_prob(x, params) + log_det, codes

    def code_log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """[B] log p(codes) under the uniform prior: -h w log K."""
        log_p = -self.num_latents * math.log(self.num_codes)
        return torch.full((codes.shape[0],), log_p, device=codes.device)

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] the bound log p(x | z_q(x)) + log p(z_q(x)), uniform p(z)."""
        recon, codes = self.reconstruction_log_prob(x_raw)
        return recon + self.code_log_prob(codes)

    # --------------------------------------------------------------- objective
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = self.prepare(batch[0], train=True)
        q = self.quantizer(self.encoder(x))
        recon = self.likelihood.log_prob(x, self.decode(q.z))
        vq = q.codebook_loss + self.hparams.beta * q.commitment_loss
        loss = -recon.mean() / self.num_dims + vq
        self.check_finite(loss, "train/loss", batch_idx)
        bs = x.shape[0]
        self.log_step({"train/loss": loss}, bs, prog_bar=True)
        step_values = {
            "train/recon": recon.mean(),  # log p(x | z_q), as the VAE
            "train/vq_loss": vq,
            "train/perplexity": perplexity(q.counts),  # all ranks' codes
            "train/codes_used": (q.counts > 0).sum().float(),
        }
        self.log_step(step_values, bs)
        self.log("train/revived", float(q.revived), reduce_fx="sum", on_step=False, on_epoch=True)
        return loss

    # -------------------------------------------------------------- evaluation
    def validation_step(self, batch, batch_idx: int):
        """The bound's `val/nll`, `val/bpd`, and the batch's codes for the epoch's statistics
        (one encoder pass for both)."""
        recon, codes = self.reconstruction_log_prob(batch[0])
        self.log_density_metrics(recon + self.code_log_prob(codes), "val", batch_idx)
        counts = torch.bincount(codes.flatten(), minlength=self.num_codes)
        self._val_counts = counts if self._val_counts is None else self._val_counts + counts

    def on_validation_epoch_end(self) -> None:
        """Codebook use over the whole validation set (all ranks' counts summed):
        perplexity and the number of codes used."""
        if self._val_counts is None:
            return
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        self._val_counts = None
        self.log("val/perplexity", perplexity(counts), sync_dist=True)  # equal on all ranks
        self.log("val/codes_used", (counts > 0).sum().float(), sync_dist=True)

    def histograms(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's codes (the image callback logs their histogram as `val/codes`)."""
        return {"codes": self.codes(x_raw).flatten()}

    # ---------------------------------------------------------------- sampling
    def decode_codes(self, codes: torch.Tensor, noise: bool = False) -> torch.Tensor:
        """[B, h, w] codes -> [B, C, H, W] images in pixel range (decoder means, or samples
        of the likelihood with `noise`)."""
        params = self.decode(self.quantizer.lookup(codes))
        x = self.likelihood.sample(params) if noise else self.likelihood.mean(params)
        return self.preprocess.to_pixels(x)

    def metric_kinds(self) -> dict[str, dict]:
        """Validation and test nll/bpd are the VQ bound log p(x | z_q) + log p(z_q)."""
        from gmlab.utils.metric_kinds import kind, stage_kinds

        vq = kind("vq_bound")
        kinds = stage_kinds({"nll": vq, "bpd": vq}, ("val", "test"))
        return GenerativeModel.metric_kinds(self) | kinds

    def sample(self, n: int) -> torch.Tensor:
        """[n, C, H, W] from uniformly drawn codes (stage 2's prior gives real samples)."""
        codes = torch.randint(self.num_codes, (n, *self.grid_shape), device=self.device)
        return self.decode_codes(codes)

    def reconstruct(self, x_raw: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] decoder means at the batch's own codes (no in-painting: `mask`)."""
        if mask is not None:
            raise NotImplementedError("VQVAE reconstructs whole images only")
        return self.decode_codes(self.codes(x_raw))


class VQVAEPixelCNN(GenerativeModel):
    """Stage 2: a Gated PixelCNN prior over the codes of a trained, frozen VQ-VAE.

    Trains by maximum likelihood of the training images' code grids; samples draw codes
    from the PixelCNN (raster order) and decode them. The checkpoint holds both stages.
    The VQ-VAE's parameters take no gradients and it has no batch norm or dropout, so its
    train/eval mode changes nothing.

    Args:
        data_shape: (C, H, W), the VQ-VAE's.
        vqvae_ckpt: the trained `VQVAE` (`gmlab-train experiment=vqvae_...`): a checkpoint
            file, a run directory (its best checkpoint), or "auto": the newest best
            checkpoint of a VQ-VAE trained on the same data (`data`) among the runs in
            `search_dir`.
        search_dir: where "auto" looks: a folder of run directories (the preset gives the
            parent of this run's own directory: the other jobs of a multirun, or the
            single runs).
        vqvae: the VQ-VAE's hyperparameters; filled from `vqvae_ckpt` on the first build,
            so that this model's own checkpoints rebuild without that file.
        embed_dim, channels, num_blocks, kernel_size, head_channels: `GatedPixelCNN`'s.
        optimizer, lr_scheduler: part configs for the PixelCNN's optimization (None:
            conf/model/vqvae_pixelcnn.yaml's; an empty lr_scheduler: constant lr).
        data: this run's data config (the preset passes `${data}`), which "auto" matches
            against each stage-1 run's (None: the image shape alone).
    """

    # 0, 1: as VQVAE's, also in the embedded `vqvae` (gmlab.models.compat)
    checkpoint_version = 3  # as VQVAE (gmlab.models.compat)

    def __init__(
        self,
        data_shape: Sequence[int],
        vqvae_ckpt: str | None = None,
        search_dir: str | None = None,
        vqvae: dict | None = None,
        embed_dim: int = 64,
        channels: int | None = None,
        num_blocks: int = 12,
        kernel_size: int = 3,
        head_channels: int = 512,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        data: dict | None = None,
    ) -> None:
        if not vqvae and vqvae_ckpt:
            vqvae_ckpt = find_vqvae_checkpoint(vqvae_ckpt, data_shape, search_dir, data)
        autoencoder = frozen_vqvae(vqvae_ckpt, vqvae)
        super().__init__(data_shape, autoencoder.preprocess.config())
        self.save_hyperparameters()
        self.hparams["vqvae_ckpt"] = vqvae_ckpt  # the file found, for the record
        self.hparams["vqvae"] = dict(autoencoder.hparams)
        self.hparams["data"] = None  # only "auto" reads it, on the first build
        self.hparams["optimizer"] = dict(optimizer or preset_part("vqvae_pixelcnn", "optimizer"))
        self.hparams["lr_scheduler"] = scheduler_or_preset(lr_scheduler, "vqvae_pixelcnn")
        if self.data_shape != autoencoder.data_shape:
            raise ConfigError(
                f"the VQ-VAE was trained on {list(autoencoder.data_shape)} images, "
                f"the data are {list(self.data_shape)}"
            )
        self.vqvae = autoencoder
        self.prior = GatedPixelCNN(
            autoencoder.num_codes, embed_dim, channels, num_blocks, kernel_size, head_channels
        )

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] the bound log p(x | z_q(x)) + log p_PixelCNN(z_q(x))."""
        recon, codes = self.vqvae.reconstruction_log_prob(x_raw)
        return recon + self.prior.log_prob(codes)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            codes = self.vqvae.codes(batch[0], train=True)
        loss = -self.prior.log_prob(codes).mean() / self.vqvae.num_latents
        self.check_finite(loss, "train/loss", batch_idx)
        self.log_step({"train/loss": loss}, codes.shape[0], prog_bar=True)
        return loss

    def optimizer_parameters(self):
        """The PixelCNN only: the VQ-VAE stays frozen."""
        return self.prior.parameters()

    metric_kinds = VQVAE.metric_kinds  # the same bound, with the PixelCNN's log p(z_q)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """[n, C, H, W]: codes from the PixelCNN, decoded to decoder means."""
        codes = self.prior.sample(n, *self.vqvae.grid_shape, temperature=temperature)
        return self.vqvae.decode_codes(codes)

    def reconstruct(self, x_raw: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.vqvae.reconstruct(x_raw, mask)

    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples from the PixelCNN prior beside samples of uniformly drawn codes."""
        out = super().figures(x_raw)
        levels = self.preprocess.num_levels - 1
        out["samples_uniform_codes"] = image_grid(self.vqvae.sample(64) / levels)
        return out


def best_checkpoint(run_dir: Path) -> Path | None:
    """The best-*.ckpt of a run directory (the newest if there are several), or None."""
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


# data-config keys that say how or where data are loaded, not which data they are
LOADING_KEYS = frozenset(
    {
        "root",
        "cache",
        "cache_dir",
        "download",
        "batch_size",
        "eval_batch_size",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "limit",
    }
)


def dataset_identity(data: dict | None) -> dict:
    """The keys of a data config that say which data it gives (class, shape, splits...)."""
    return {k: v for k, v in (data or {}).items() if k not in LOADING_KEYS}


def find_vqvae_checkpoint(
    spec: str, data_shape: Sequence[int], search_dir: str | None, data: dict | None = None
) -> str:
    """Resolve `model.vqvae_ckpt`: a file as given; a run directory -> its best checkpoint;
    "auto" -> the newest best checkpoint of a VQVAE among the run directories in
    `search_dir` whose run used the same data (`dataset_identity` of its stored data config
    equal to `data`'s; the image shape alone when `data` is None). More than one match is
    said in one line."""
    path = Path(spec)
    if spec != "auto":
        if not path.is_dir():
            return spec
        best = best_checkpoint(path)
        if best is None:
            raise ConfigError(
                f"model.vqvae_ckpt={spec} is a directory without checkpoints/best-*.ckpt"
            )
        return str(best)
    folder = Path(os.path.normpath(search_dir)) if search_dir else None  # "<run>/.." lexically
    if folder is None or not folder.is_dir():
        raise ConfigError(
            f"model.vqvae_ckpt=auto needs model.search_dir, a folder of runs; got {search_dir}"
        )
    runs = [best_checkpoint(run) for run in folder.iterdir() if run.is_dir()]
    matches = []
    for ckpt in sorted(filter(None, runs), key=lambda p: p.stat().st_mtime, reverse=True):
        checkpoint = read_checkpoint(ckpt)
        if model_class(checkpoint, ckpt) is not VQVAE:
            continue
        shape = checkpoint.get("hyper_parameters", {}).get("data_shape")
        stored = checkpoint["gmlab"].get("config", {}).get("data")
        same = dataset_identity(stored) == dataset_identity(data) if data else True
        if list(shape or []) == list(data_shape) and same:
            matches.append(ckpt)
    what = f"{data.get('_target_')} {list(data_shape)}" if data else f"{list(data_shape)} images"
    if not matches:
        raise ConfigError(
            f"model.vqvae_ckpt=auto found no VQ-VAE checkpoint of {what} in the runs under "
            f"{folder.resolve()}: train stage 1 on the same data first (e.g. gmlab-train -m "
            "experiment=vqvae_mnist,vqvae_pixelcnn_mnist), or give model.vqvae_ckpt=<run or file>"
        )
    if len(matches) > 1:
        log.warning(
            "model.vqvae_ckpt=auto: %d stage-1 runs of %s match; using the newest, %s "
            "(give model.vqvae_ckpt=<run> to choose)",
            len(matches),
            what,
            matches[0],
        )
    return str(matches[0])


def frozen_vqvae(path: str | None, hparams: dict | None) -> VQVAE:
    """The stage-1 model, without gradients: built from `hparams` (its weights then come
    with the stage-2 checkpoint) or loaded from the checkpoint at `path`."""
    if hparams:
        model = VQVAE(**hparams)
    elif path:
        model = load_model(path)
        if not isinstance(model, VQVAE):
            raise ConfigError(
                f"model.vqvae_ckpt={path} holds a {type(model).__name__}, not a VQVAE"
            )
    else:
        raise ConfigError(
            "model.vqvae_ckpt is required: the checkpoint of a trained VQ-VAE "
            "(gmlab-train experiment=vqvae_<data>, then <run>/checkpoints/best-*.ckpt)"
        )
    return model.requires_grad_(False)
