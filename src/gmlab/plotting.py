"""Matplotlib figures rendered to image tensors for the `figures()` protocol."""

from __future__ import annotations

import torch


def scatter_image(panels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Side-by-side scatter plots of 2-D point sets {title: [N, 2]}, all with the first
    panel's limits (its 0.5-99.5 percentiles, padded), as a [3, H, W] image in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    ref = panels[next(iter(panels))].detach().cpu().numpy()
    lo, hi = np.percentile(ref, 0.5, axis=0), np.percentile(ref, 99.5, axis=0)
    pad = 0.15 * (hi - lo)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), dpi=80)
    for ax, (title, pts) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        pts = pts.detach().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(title)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32) / 255.0
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()
