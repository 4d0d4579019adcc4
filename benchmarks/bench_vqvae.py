"""VQ-VAE speed: the nearest-code search, a training step, PixelCNN sampling.

- Nearest codes for a CIFAR-10 batch's encoder output (128 images x 8 x 8 vectors,
  K = 128, D = 256): gmlab's one matrix product argmin_j ||e_j||^2 - 2 z.e_j against the
  broadcast argmin_j ||z - e_j||^2 over an [N, K, D] tensor that straightforward
  implementations write; both must pick the same codes.
- One training step of the quantizer alone (forward, codebook update and revival check,
  backward of its losses) on the same batch: the moving-average codebook with revival
  (the presets') against vae-pytorch's gradient codebook.
- The `vqvae_cifar10` training step (batch 128) in the Lightning fit loop: images/s, and
  achieved GFLOP/s (flops counted by `torch.utils.flop_counter`) against the machine's own
  fp32 matmul rate.
- Drawing 64 code grids (8 x 8) from the `vqvae_pixelcnn_cifar10` Gated PixelCNN: one
  network pass per position.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_vae import lightning_speed
from benchmarks.common import best_time, matmul_gflops, synced
from gmlab.models.vqvae import VQVAE
from gmlab.nn.ema_quantizer import EMAVectorQuantizer
from gmlab.nn.pixelcnn import GatedPixelCNN
from gmlab.nn.vector_quantizer import VectorQuantizer

SHAPE, BATCH = (3, 32, 32), 128


def broadcast_nearest(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The straightforward search: [B, D, H, W] -> [B, H, W] via an [N, K, D] difference."""
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    distances = (flat[:, None, :] - codebook[None]).square().sum(-1)
    return distances.argmin(1).view(z_e.shape[0], *z_e.shape[2:])


def nearest_code_speed(device: str) -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(128, 256).to(device)
    z_e = torch.randn(BATCH, 256, 8, 8, device=device) / 128
    with torch.no_grad():
        same = torch.equal(vq.nearest(z_e), broadcast_nearest(z_e, vq.codebook))
        ours = best_time(synced(lambda: vq.nearest(z_e), device))
        theirs = best_time(synced(lambda: broadcast_nearest(z_e, vq.codebook), device))
    print(
        f"nearest codes, {BATCH} x 8 x 8 vectors, K=128, D=256: gmlab {1000 * ours:.2f} ms, "
        f"broadcast [N, K, D] {1000 * theirs:.2f} ms, {theirs / ours:.1f}x (same codes: {same})"
    )


def quantizer_step_speed(device: str) -> None:
    torch.manual_seed(0)
    z_e = (torch.randn(BATCH, 256, 8, 8, device=device) / 16).requires_grad_()
    times = {}
    for name, vq in [
        ("gradient", VectorQuantizer(128, 256)),
        ("ema", EMAVectorQuantizer(128, 256, init="kmeans", dead_after=20)),
    ]:
        vq = vq.to(device).train()

        def step(vq=vq):
            q = vq(z_e)
            (q.codebook_loss + 0.25 * q.commitment_loss + q.z.square().mean()).backward()

        times[name] = best_time(synced(step, device))  # the first call runs the k-means init
    print(
        f"quantizer training step, {BATCH} x 8 x 8 vectors, K=128, D=256: moving averages + "
        f"revival {1000 * times['ema']:.2f} ms, gradient codebook {1000 * times['gradient']:.2f}"
        f" ms ({times['ema'] / times['gradient']:.2f}x)"
    )


def training_step_speed(device: str, steps: int) -> None:
    torch.manual_seed(0)
    model = VQVAE(SHAPE, {"scale": "symmetric"})  # the preset's K, D, channels
    x = torch.randint(0, 256, (BATCH, *SHAPE), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        model.training_step((x, None), 0).backward()
    gflop_per_image = counter.get_total_flops() / BATCH / 1e9
    peak = matmul_gflops(device=device)
    speed = lightning_speed(model, SHAPE, BATCH, steps, device)
    achieved = speed["img_s"] * gflop_per_image
    print(
        f"vqvae_cifar10 training step (batch {BATCH}): {speed['img_s']:.0f} img/s, "
        f"{gflop_per_image:.2f} GFLOP/image -> {achieved:.1f} GFLOP/s = {achieved / peak:.2f} "
        f"of the fp32 matmul rate ({peak:.1f} GFLOP/s); data loading "
        f"{100 * speed['load_frac']:.1f} % of a step"
    )


def sampling_speed(device: str) -> None:
    torch.manual_seed(0)
    prior = GatedPixelCNN(128, embed_dim=64, num_blocks=12, head_channels=512).to(device)
    seconds = best_time(synced(lambda: prior.sample(64, 8, 8), device), repeats=2, warmup=0)
    print(f"PixelCNN prior (12 gated blocks): 64 code grids of 8 x 8 in {seconds:.2f} s")


def main(device: str | None = None) -> None:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = int(os.environ.get("GMLAB_BENCH_STEPS", "20"))
    print(f"device {device}, {torch.get_num_threads()} threads")
    nearest_code_speed(device)
    quantizer_step_speed(device)
    training_step_speed(device, steps)
    sampling_speed(device)


def gpu() -> None:
    """The same rows on the GPU."""
    main("cuda")


if __name__ == "__main__":
    main()
