"""VAE quality runs on dynamically binarized MNIST (the results table in docs/vae.md).

  train: fits `gmlab.models.vae.VAE` for a fixed wall-clock budget (one CPU thread) and
         writes <out>/<name>/{config.json, model.pt, results.json, csv/}.
  eval:  test ELBO on the full test set and the importance-weighted bound with k samples
         on the first n test images (n=10000: all), written to results_k<k>_n<n>.json.

The setting is `experiment=vae_mnist_wide` / `vae_mog_mnist_wide` (784-400-400-32
encoder, mirrored Bernoulli decoder, KL warm-up over 2750 steps, Adam 1e-3, batch 200)
without their lr schedule: a constant lr for a wall-clock budget (the CPU rows of docs/vae.md).

usage: python scripts/vae_mnist_quality.py train NAME {normal,mog,vamp} MINUTES [--root DIR]
       python scripts/vae_mnist_quality.py eval RUN_DIR K N [--root DIR]
--root defaults to $GMLAB_DATA (the folder holding MNIST/raw/).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning as L
import torch
import torchvision

from gmlab.data import MNISTDataModule
from gmlab.models import compat
from gmlab.models.vae import VAE

PRIORS = {
    "normal": {"_target_": "gmlab.distributions.priors.NormalPrior"},
    "mog": {"_target_": "gmlab.distributions.priors.MixturePrior", "n_components": 500},
    "vamp": {"_target_": "gmlab.nn.priors.VampPrior", "n_components": 500},
}


def setting(prior: str) -> dict:
    return {
        "data_shape": [1, 28, 28],
        "preprocess": {"binarize": "dynamic"},
        "latent_dim": 32,
        "encoder": {"_target_": "gmlab.nn.mlp.MLPEncoder", "hidden": [400, 400]},
        "decoder": {"_target_": "gmlab.nn.mlp.MLPDecoder", "hidden": [400, 400]},
        "likelihood": {"_target_": "gmlab.distributions.likelihoods.BernoulliLikelihood"},
        "prior": PRIORS[prior],
        "kl": "auto",
        "kl_warmup_steps": 2750,
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 1e-3},
        "eval": {"iwae_k": 5000, "iwae_batch": 20000},
    }


def train(args: argparse.Namespace) -> None:
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    cfg = setting(args.prior)
    (out / "config.json").write_text(json.dumps({"cfg": cfg, "minutes": args.minutes}, indent=1))
    L.seed_everything(0)
    data = MNISTDataModule(
        root=args.root,
        cache_dir=args.cache_dir,
        batch_size=200,
        eval_batch_size=1000,
        val_size=5000,
    )
    model = VAE(**cfg)
    trainer = L.Trainer(
        max_epochs=-1,
        max_time={"minutes": args.minutes},
        accelerator="cpu",
        devices=1,
        check_val_every_n_epoch=5,
        logger=L.pytorch.loggers.CSVLogger(str(out), name="csv"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    start = time.time()
    trainer.fit(model, datamodule=data)
    torch.save(model.state_dict(), out / "model.pt")
    results = {"epochs": trainer.current_epoch, "train_minutes": (time.time() - start) / 60}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> None:
    run = Path(args.run_dir)
    cfg = json.loads((run / "config.json").read_text())["cfg"]
    model = VAE(**compat.vae(cfg, 0))  # also runs written with gmlab 0.1's flat options
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    model.eval()
    x_test = torchvision.datasets.MNIST(args.root, train=False).data.unsqueeze(1)
    torch.manual_seed(123)
    elbo = torch.cat([model.elbo(x_test[i : i + 1000]) for i in range(0, len(x_test), 1000)])
    n, k = args.n, args.k
    results = {"test_elbo_full": elbo.mean().item(), f"test_elbo_first{n}": elbo[:n].mean().item()}
    start = time.time()
    # kept as Python floats: thousands of small live tensors between the large transient
    # buffers of the bound fragment glibc's heap (RSS grew ~2 MB per batch and a full-test
    # run was OOM-killed at 14 GB)
    bound = torch.tensor(
        [v for i in range(0, n, 10) for v in model.iwae_bound(x_test[i : i + 10], k).tolist()]
    )
    results[f"test_nll_iwae_k{k}_first{n}"] = -bound.mean().item()
    results[f"test_nll_iwae_k{k}_first{n}_sem"] = (bound.std() / len(bound) ** 0.5).item()
    results["iwae_minutes"] = (time.time() - start) / 60
    (run / f"results_k{k}_n{n}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("GMLAB_DATA"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("train")
    fit.add_argument("name")
    fit.add_argument("prior", choices=sorted(PRIORS))
    fit.add_argument("minutes", type=float)
    fit.add_argument("--out", default="outputs/vae_quality")
    ev = sub.add_parser("eval")
    ev.add_argument("run_dir")
    ev.add_argument("k", type=int)
    ev.add_argument("n", type=int)
    args = parser.parse_args()
    if not args.root:
        parser.error("pass --root DIR or set GMLAB_DATA (the folder holding MNIST/raw/)")
    torch.set_num_threads(args.threads)
    if args.command == "train":
        train(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
