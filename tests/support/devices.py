"""Device parametrization: every test taking `device` runs on the CPU, and on CUDA where a
GPU is visible (skipped, and listed as such, elsewhere)."""

import pytest
import torch

NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_GPU)]
