"""fastwgan: train the Wasserstein GAN of Arjovsky et al. (2017) fast, and check it against a
plain-PyTorch reference.

    from fastwgan import Config, train, load_generator
    train(Config(preset="cpu", out="runs/nb"))       # what python -m fastwgan.train runs
    G = load_generator("runs/nb")                     # a torch.nn.Module in eval mode

The names are imported on first use: ``import fastwgan`` alone does not import torch.
"""

__version__ = "0.1.0"
__all__ = ["Config", "train", "load_generator", "__version__"]

# name -> (module, attribute); None: the module itself (fastwgan.train is callable)
_LAZY = {"Config": ("fastwgan.config", "Config"), "train": ("fastwgan.train", None),
         "load_generator": ("fastwgan.api", "load_generator")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastwgan' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    m = importlib.import_module(module)
    return m if attr is None else getattr(m, attr)


def __dir__():
    return sorted([*globals(), *_LAZY])
