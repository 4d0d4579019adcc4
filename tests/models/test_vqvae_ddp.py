"""VQ-VAE under two processes (DDP over gloo, as `trainer=ddp_cpu`): each rank takes half of
every batch, and the codebook, its counts, the revivals (from the farthest vectors) and the
codebook-use statistics equal one process over the whole batches; the ranks keep identical
codebooks, also when reviving at random from different data."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from support.trainer import quiet_trainer
from torch.utils.data import DataLoader, Dataset

from gmlab.models.vqvae import VQVAE
from gmlab.nn.ema_quantizer import EMAVectorQuantizer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

STEPS, BATCH = 4, 8  # 4 batches of 8 images: 4 per rank


class Batches(Dataset):
    def __init__(self, batches: torch.Tensor) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return (self.batches[i],)


class SplitBatches(L.LightningDataModule):
    """Fixed batches [S, B, ...]; under W processes rank r takes rows r B/W .. (r+1) B/W - 1
    of every batch, so one step of all ranks sees exactly one whole batch."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images

    def loader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        part = self.images.shape[1] // world
        mine = self.images[:, rank * part : (rank + 1) * part]
        return DataLoader(Batches(mine), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self.loader()

    def val_dataloader(self) -> DataLoader:
        return self.loader()


def random_revivals(rank: int) -> dict:
    """A quantizer reviving codes at random from this rank's own data (different on every
    rank) for 3 steps: its state."""
    vq = EMAVectorQuantizer(6, 2, init="kmeans", dead_after=1, revive_from="random").train()
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        vq(torch.randn(1, 2, 3, 5, generator=g) * (1 + rank))
    return vq.state_dict()


class SaveCodebook(L.Callback):
    """Every rank writes its final quantizer state, and that of `random_revivals`, to
    <dir>/rank<r>.pt."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.clone() for k, v in pl_module.quantizer.state_dict().items()}
        state.update({f"random.{k}": v for k, v in random_revivals(trainer.global_rank).items()})
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def fit(folder, devices: int) -> tuple[dict, dict]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (STEPS, BATCH, 1, 8, 8), dtype=torch.uint8, generator=g)
    images[:, :, :, :4] //= 4  # some structure: dark left halves
    quantizer = {
        "_target_": "gmlab.nn.ema_quantizer.EMAVectorQuantizer",
        "init": "kmeans",
        "dead_after": 1,
        "revive_from": "farthest",
        "decay": 0.8,
    }
    model = VQVAE(
        (1, 8, 8),
        {"dequantize": False, "scale": "symmetric"},
        num_codes=24,  # more codes than used: revivals at every step
        code_dim=3,
        hidden=8,
        downsample=1,
        res_blocks=1,
        quantizer=quantizer,
    )
    folder.mkdir()
    trainer = quiet_trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        log_every_n_steps=1,  # the last step's train/ values are compared: write every step
        use_distributed_sampler=False,
        callbacks=[SaveCodebook(folder)],
    )
    trainer.fit(model, datamodule=SplitBatches(images))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ranks = [torch.load(p, weights_only=True) for p in sorted(folder.glob("rank*.pt"))]
    assert len(ranks) == devices
    for other in ranks[1:]:  # every rank keeps the identical codebook
        for key, value in ranks[0].items():
            assert torch.equal(other[key], value), key
    return ranks[0], metrics


def test_two_processes_over_split_batches_equal_one_over_whole_batches(tmp_path):
    ddp, ddp_metrics = fit(tmp_path / "ddp", 2)  # also: the ranks' codebooks are identical
    single, single_metrics = fit(tmp_path / "one", 1)
    assert ddp["steps"] == STEPS and ddp_metrics["train/revived"] > 0
    assert ddp["random.unused_steps"].sum() == 0 and ddp["random.steps"] == 3
    for key, value in single.items():
        if not key.startswith("random."):
            torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for name in ("train/perplexity", "train/codes_used", "train/revived"):
        assert ddp_metrics[name] == pytest.approx(single_metrics[name], rel=1e-4), name
    for name in ("val/perplexity", "val/codes_used"):  # over both ranks' validation codes
        assert ddp_metrics[name] == pytest.approx(single_metrics[name], rel=1e-4), name
    assert single_metrics["val/codes_used"] > 4
