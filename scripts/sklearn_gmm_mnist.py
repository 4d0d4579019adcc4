"""Baseline for the MFA results table: scikit-learn's diagonal GaussianMixture on MNIST.

The data are gmlab's MNIST splits (55k train / 5k val / 10k test), dequantized once with
uniform noise, y = (x + u) / 256; bits/dim on gmlab's convention (gmlab.metrics).

usage: python scripts/sklearn_gmm_mnist.py [--root DIR] [--cache-dir /tmp/mnist_cache]
       [--components 50] [--reg-covar 1e-6]
--root defaults to $GMLAB_DATA, the folder holding MNIST/raw/.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from sklearn.mixture import GaussianMixture

from gmlab.data import MNISTDataModule
from gmlab.metrics import bits_per_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("GMLAB_DATA", "data"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--reg-covar", type=float, default=1e-6)
    args = parser.parse_args()

    data = MNISTDataModule(root=args.root, cache_dir=args.cache_dir, val_size=5000)
    data.setup()
    gen = torch.Generator().manual_seed(0)

    def dequantized(split: str) -> torch.Tensor:
        x = data.tensors(split)[0].flatten(1).double()
        return (x + torch.rand(x.shape, generator=gen, dtype=torch.float64)) / 256

    x = {split: dequantized(split) for split in ("train", "val", "test")}
    start = time.time()
    gmm = GaussianMixture(
        args.components,
        covariance_type="diag",
        reg_covar=args.reg_covar,
        random_state=0,
        max_iter=100,
    ).fit(x["train"].numpy())
    print(f"fit {time.time() - start:.0f} s, {gmm.n_iter_} iterations, converged {gmm.converged_}")
    for split, values in x.items():
        ll = torch.from_numpy(gmm.score_samples(values.numpy()))
        print(f"{split} bpd {bits_per_dim(ll, num_dims=784).mean():.4f}")


if __name__ == "__main__":
    main()
