"""k-means: gmlab.ops.kmeans against scikit-learn's Lloyd KMeans, same data, same
initial centers, fixed iteration count (tol=0), printed as a time ratio.

Shape: MNIST-like 20k x 784, K=100 (the NDB default on MNIST), float32, 10 Lloyd
iterations; also the greedy k-means++ seeding alone. On a GPU, CelebA64-like
(50k x 12288 synthetic, K=300) too.
"""

from __future__ import annotations

import torch

from benchmarks.common import best_time, cuda_synced


def main() -> None:
    from sklearn.cluster import KMeans

    from gmlab.ops import inertia, kmeans, kmeans_plusplus

    g = torch.Generator().manual_seed(0)
    n, d, k, iters = 20_000, 784, 100, 10
    means = torch.rand(k, d, generator=g) * 255
    x = (means[torch.randint(k, (n,), generator=g)] + 40 * torch.randn(n, d, generator=g)).clamp(
        0, 255
    )
    init = kmeans_plusplus(x, k, seed=0)
    xn, initn = x.numpy(), init.numpy()

    t_ours = best_time(lambda: kmeans(x, k, n_iter=iters, init=init), repeats=3)
    km = KMeans(k, init=initn, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
    t_sk = best_time(lambda: km.fit(xn), repeats=3)
    c, _ = kmeans(x, k, n_iter=iters, init=init)
    rel = inertia(x, c) / km.fit(xn).inertia_
    print(
        f"Lloyd {n}x{d}, K={k}, {iters} iters: gmlab {t_ours:.2f} s, sklearn {t_sk:.2f} s, "
        f"speed ratio sklearn/gmlab {t_sk / t_ours:.2f} (inertia ratio {rel:.6f})"
    )

    t_pp = best_time(lambda: kmeans_plusplus(x, k, seed=0), repeats=3)
    from sklearn.cluster import kmeans_plusplus as sk_pp

    t_skpp = best_time(lambda: sk_pp(xn, k, random_state=0), repeats=1, warmup=0)  # slow
    print(
        f"k-means++ seeding K={k}: gmlab {t_pp:.2f} s, sklearn {t_skpp:.2f} s, "
        f"ratio {t_skpp / t_pp:.2f}"
    )

    if torch.cuda.is_available():
        gpu()


def gpu() -> None:
    """GPU row: k-means++ and 5 Lloyd iterations on CelebA64-like data."""
    from gmlab.ops import kmeans

    n, d, k = 50_000, 12288, 300
    xg = torch.rand(n, d, device="cuda", generator=torch.Generator("cuda").manual_seed(0))

    t = best_time(cuda_synced(lambda: kmeans(xg, k, n_iter=5, seed=0)), repeats=2)
    print(f"GPU k-means++ and 5 Lloyd iterations, {n}x{d}, K={k}: {t:.2f} s")


if __name__ == "__main__":
    main()
