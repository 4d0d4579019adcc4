"""LightningModules, one file per model family, over `gmlab.distributions` and `gmlab.nn`."""

from gmlab.models import compat
from gmlab.models.base import GenerativeModel, GmlabModule
from gmlab.models.gaussian import DiagonalGaussian
from gmlab.models.gmm_classifier import GMMClassifier
from gmlab.models.mfa import MFAModel
from gmlab.models.realnvp import RealNVP
from gmlab.models.vae import VAE
from gmlab.models.vqvae import VQVAE, VQVAEPixelCNN
from gmlab.utils.checkpoint import register_upgrade

register_upgrade(compat.upgrade_checkpoint)  # load_model reads gmlab 0.1's checkpoints

__all__ = [
    "VAE",
    "VQVAE",
    "DiagonalGaussian",
    "GMMClassifier",
    "GenerativeModel",
    "GmlabModule",
    "MFAModel",
    "RealNVP",
    "VQVAEPixelCNN",
]
