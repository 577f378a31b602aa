"""cnnrnn: recurrent networks that read Fashion-MNIST images and labels."""

from cnnrnn.version import __version__

__all__ = ["__version__"]
