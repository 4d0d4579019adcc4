"""The small CNN of pytorch-gaussian-mixture-layer (conv 16 - conv 32 - fc 128), as a
feature extractor.

Layout (that project's `example.py`, itself the classic PyTorch MNIST tutorial network):

    conv 5x5, 16 channels, padding 2 -> ReLU -> max-pool 2
    conv 5x5, 32 channels, padding 2 -> ReLU -> max-pool 2
    flatten (32 * H/4 * W/4; 1568 for 28x28) -> [dropout] -> linear -> `features` (128)

The features are the linear output, without a final ReLU: a Gaussian-mixture head
models them as Gaussians, which rectified features (a point mass at 0 in each
coordinate) would contradict. `dropout` (default 0, as in pytorch-gaussian-mixture-layer)
drops flattened conv activations during training.
"""

from __future__ import annotations

from torch import nn


class MnistCNN(nn.Module):
    """[B, C, H, W] images (H, W divisible by 4) -> [B, out_features] feature vectors.

    The GMM classifier's `trunk` part (conf/model/trunk/mnist_cnn.yaml): the model supplies
    `input_shape` and `out_features`.

    Args:
        input_shape: (C, H, W) of one image.
        out_features: size of the output vectors.
        channels: output channels of the two convolutions.
        kernel_size: odd square kernel size (padding keeps the spatial size).
        dropout: dropout probability before the final linear layer.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        out_features: int = 128,
        channels: tuple[int, int] = (16, 32),
        kernel_size: int = 5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"MnistCNN takes [C, H, W] images, got input shape {list(input_shape)}"
            )
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise ValueError(f"MnistCNN needs H and W divisible by 4, got {h}x{w}")
        c1, c2 = channels
        pad = kernel_size // 2
        self.out_features = out_features
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, kernel_size, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c2 * (h // 4) * (w // 4), out_features),
        )

    def forward(self, x):
        return self.net(x)
