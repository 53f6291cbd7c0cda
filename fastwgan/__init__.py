"""fastwgan: train the Wasserstein GAN of Arjovsky et al. (2017) fast, and check it against a
plain-PyTorch reference."""

__version__ = "0.1.0"
