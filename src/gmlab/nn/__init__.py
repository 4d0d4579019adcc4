"""Networks: the GMM classifier layer, the MNIST CNN trunk, MADE, the Gated PixelCNN, and
the normalizing flows (`gmlab.nn.flows`)."""

from gmlab.nn.gmm_layer import GaussianMixtureClassifier
from gmlab.nn.made import MADE
from gmlab.nn.mnist_cnn import MnistCNN
from gmlab.nn.pixelcnn import GatedPixelCNN

__all__ = ["MADE", "GatedPixelCNN", "GaussianMixtureClassifier", "MnistCNN"]
