"""cnnrnn: recurrent and convolutional networks reading Fashion-MNIST images and labels."""

__version__ = "0.1.0"
