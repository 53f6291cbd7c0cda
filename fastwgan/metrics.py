"""Image-quality metrics: the multi-scale sliced Wasserstein distance and the Fréchet distance.

Sliced Wasserstein distance (SWD), Karras et al. 2018, "Progressive Growing of GANs", section 5 and
appendix D; reference code tkarras/progressive_growing_of_gans ``metrics/sliced_wasserstein.py``.
For each level of a Laplacian pyramid (the full resolution down to 16x16, finest first):

1. 128 random 7x7x3 neighbourhoods per image, fully inside the level (centres drawn uniformly);
2. each set (real, generated) normalised on its own: every colour channel minus its mean, divided
   by its standard deviation, over all neighbourhoods and their 7x7 pixels (as the reference code);
3. 4 repeats of 128 random unit directions (512 projections in all, as the reference code); for each
   direction the 1-D Wasserstein-1 distance between the two sets of projections, which for two
   equal-sized samples is the mean absolute difference of the sorted projections;
4. the level's distance is the mean over directions; ``mean`` is the mean over levels.

The values are multiplied by 1e3 (``scale``), as the reference code does for display and as the
paper's tables report them ("SWD x 1e3"); pass ``scale=1.0`` for the raw distance.

The Fréchet distance between two Gaussians (FID when they are fitted to Inception features,
Heusel et al. 2017) is computed without scipy, in float64, through the symmetric form
``tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))``. The kernel Inception distance (KID,
Binkowski et al. 2018) is the unbiased squared MMD under a cubic polynomial kernel, averaged over
random subsets. The Inception features themselves come from ``fastwgan.inception``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from fastwgan.pixels import to_uint8

# The reference code's settings (progressive_growing_of_gans metrics/sliced_wasserstein.py, API).
NHOOD_SIZE = 7          # neighbourhood side, pixels
NHOODS_PER_IMAGE = 128  # neighbourhoods drawn per image and level
DIR_REPEATS = 4         # batches of random directions ...
DIRS_PER_REPEAT = 128   # ... of this many each: 512 projections in all
MIN_RES = 16            # coarsest pyramid level
SCALE = 1e3             # reported values are SWD x 1e3


ArrayLike = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------
def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8, or floats in [-1, 1] (quantised to uint8 first, fastwgan.pixels.to_uint8), -> float32
    in [0, 255]."""
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise TypeError(f"images must be uint8 or floating point in [-1, 1], got {images.dtype}")
        images = to_uint8(images)
    return images.float()


# --------------------------------------------------------------------------------------------
# Laplacian pyramid (the reference's pyr_down / pyr_up: scipy.ndimage.convolve, mode="mirror")
# --------------------------------------------------------------------------------------------
def _binomial_blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """The pyramid's 5x5 binomial blur of (N, C, H, W), borders mirrored without repeating the
    edge pixel (Burt & Adelson; cv2.pyrDown; the reference code's ``gaussian_filter``, the outer
    product of [1 4 6 4 1] / 16 with itself).

    Separable, as shifted sums with the integer taps 1 4 6 4 1 and one division at the end (on
    [0, 255] integers the sums are exact in float32). ``gain`` multiplies the unit-sum kernel;
    pyr_up uses 4 to make up for the zeros it inserted.
    """
    h, w = x.shape[-2:]
    y = F.pad(x, (2, 2, 2, 2), mode="reflect")  # scipy.ndimage "mirror": d c b | a b c d | c b a
    y = y[..., 0:w] + y[..., 4:w + 4] + 4.0 * (y[..., 1:w + 1] + y[..., 3:w + 3]) + 6.0 * y[..., 2:w + 2]
    y = (y[..., 0:h, :] + y[..., 4:h + 4, :] + 4.0 * (y[..., 1:h + 1, :] + y[..., 3:h + 3, :])
         + 6.0 * y[..., 2:h + 2, :])
    return y * (gain / 256.0)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur, then keep every second row and column: (N, C, H, W) -> (N, C, H/2, W/2)."""
    return _binomial_blur(x)[:, :, ::2, ::2].contiguous()  # not a view that keeps the blur alive


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels, then blur with gain 4: (N, C, H, W) -> (N, C, 2H, 2W)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _binomial_blur(up, gain=4.0)


def gaussian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """[x, pyr_down(x), ...], ``num_levels`` images, finest first."""
    levels = [x]
    for _ in range(1, num_levels):
        levels.append(pyr_down(levels[-1]))
    return levels


def laplacian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Band-pass levels G_k - pyr_up(G_{k+1}), then the coarsest Gaussian level; finest first."""
    g = gaussian_pyramid(x, num_levels)
    return [g[k] - pyr_up(g[k + 1]) for k in range(num_levels - 1)] + [g[-1]]


def pyramid_resolutions(image_size: int, min_res: int = MIN_RES) -> list[int]:
    """Side of each level, finest first: 64 -> [64, 32, 16]."""
    res, out = image_size, []
    while res >= min_res:
        out.append(res)
        res //= 2
    return out


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------
def get_descriptors(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                    nhood_size: int = NHOOD_SIZE) -> torch.Tensor:
    """The neighbourhoods of ``level`` centred at (ys, xs): (N*K, C, k, k), image-major.

    level: (N, C, H, W); ys, xs: (N, K) integer centres, each at least k//2 from the border.
    One gather from flat indices (image, channel, row, column), as the reference does.
    """
    n, c, h, w = level.shape
    r = nhood_size // 2
    img = torch.arange(n, device=level.device).view(n, 1)
    corner = img * (c * h * w) + (ys - r) * w + (xs - r)  # (N, K) flat index of the top-left pixel
    d = torch.arange(nhood_size, device=level.device)
    offsets = (torch.arange(c, device=level.device).view(c, 1, 1) * (h * w)
               + d.view(1, -1, 1) * w + d.view(1, 1, -1))  # (C, k, k)
    idx = corner.reshape(-1, 1, 1, 1) + offsets  # (N*K, C, k, k)
    return level.reshape(-1)[idx]


def finalize_descriptors(desc: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(M, C, k, k) -> (M, C*k*k), each channel standardised over all M*k*k of its values.

    In place on ``desc``. The standard deviation is the population one (numpy's default, as the
    reference). ``eps`` only keeps a constant channel (a blank image set) from dividing by zero.
    """
    var, mean = torch.var_mean(desc, dim=(0, 2, 3), correction=0, keepdim=True)
    desc.sub_(mean).div_(var.sqrt_().clamp_min_(eps))
    return desc.reshape(desc.shape[0], -1)


def _sort_rows(x: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """Each row of a 2-D tensor sorted; ``overwrite`` lets the CPU path sort ``x`` in place.

    On the CPU numpy's SIMD sort is about 4x faster per core than torch.sort, and it releases the
    GIL, so the rows are split over torch's thread count. Sorted values do not depend on the
    algorithm, so both paths give the same numbers.
    """
    if x.device.type != "cpu":
        return x.sort(dim=-1).values
    arr = x.detach().contiguous().numpy()
    if not overwrite:
        arr = arr.copy()
    workers = max(1, min(torch.get_num_threads(), arr.shape[0]))
    bounds = np.linspace(0, arr.shape[0], workers + 1).astype(int)
    parts = [arr[i:j] for i, j in zip(bounds[:-1], bounds[1:])]
    if workers == 1:
        arr.sort(axis=-1)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda part: part.sort(axis=-1), parts))
    return torch.from_numpy(arr)


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """W1 between the rows of u and v, two equal-sized 1-D samples per row: (P, M) -> (P,).

    The optimal coupling of two sorted samples of the same size pairs them in order, so W1 is the
    mean absolute difference of the sorted values. ``overwrite``: u and v are scratch buffers
    that may be sorted in place (saves two copies).
    """
    if u.shape != v.shape:
        raise ValueError(f"need samples of the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    return (_sort_rows(u, overwrite) - _sort_rows(v, overwrite)).abs_().mean(dim=-1)


def sliced_wasserstein_descriptors(desc_a: torch.Tensor, desc_b: torch.Tensor, dirs: torch.Tensor,
                                   max_elements: int = 1 << 26) -> torch.Tensor:
    """Mean over ``dirs`` of W1 between the projections of two descriptor sets: a 0-d float64.

    desc_a, desc_b: (M, D) finalized descriptors; dirs: (D, P) unit directions. Directions are
    taken in chunks so that one chunk of projections holds at most ``max_elements`` values.
    """
    m, p = desc_a.shape[0], dirs.shape[1]
    step = max(1, min(p, max_elements // max(m, 1)))
    total = torch.zeros((), dtype=torch.float64, device=desc_a.device)
    # full fp32 projections even where the caller allows TF32 (10-bit mantissa): its rounding
    # would be of the order of the small distances being measured
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for i in range(0, p, step):
            d = dirs[:, i:i + step].T  # (P', D)
            # (P', M): one row of projections per direction, contiguous for the sort along M
            total += wasserstein_1d(d @ desc_a.T, d @ desc_b.T, overwrite=True).sum(dtype=torch.float64)
    finally:
        torch.set_float32_matmul_precision(precision)
    return total / p


# --------------------------------------------------------------------------------------------
# Sampling plan: every random draw of one SWD evaluation
# --------------------------------------------------------------------------------------------
@dataclass
class SWDPlan:
    """Neighbourhood centres and projection directions for each pyramid level, finest first.

    centres_a[l] = (ys, xs), each (n_a, nhoods_per_image) int64; likewise centres_b;
    dirs[l]: (D, dir_repeats * dirs_per_repeat) float32 unit columns, D = C * k * k.
    Everything lives on the CPU; ``sliced_wasserstein`` moves it to the images' device.
    """

    resolutions: list[int]
    nhood_size: int
    centres_a: list[tuple[torch.Tensor, torch.Tensor]]
    centres_b: list[tuple[torch.Tensor, torch.Tensor]]
    dirs: list[torch.Tensor]


def sample_plan(n_a: int, n_b: int, image_size: int, channels: int = 3, seed: int = 0,
                nhood_size: int = NHOOD_SIZE, nhoods_per_image: int = NHOODS_PER_IMAGE,
                dir_repeats: int = DIR_REPEATS, dirs_per_repeat: int = DIRS_PER_REPEAT,
                min_res: int = MIN_RES) -> SWDPlan:
    """Draw the plan from a CPU ``torch.Generator`` seeded with ``seed``: the same on every device.

    Order of the draws, per level: centres of a (rows, then columns), centres of b, directions.
    Directions are Gaussian vectors normalised to unit length, ``dir_repeats`` batches of
    ``dirs_per_repeat``; as all batches have the same size, the mean over repeats of the per-repeat
    means (the reference) equals the mean over all directions.
    """
    g = torch.Generator().manual_seed(seed)
    r = nhood_size // 2
    resolutions = pyramid_resolutions(image_size, min_res)
    dim = channels * nhood_size * nhood_size
    centres_a, centres_b, dirs = [], [], []
    for res in resolutions:
        for n, out in ((n_a, centres_a), (n_b, centres_b)):
            ys = torch.randint(r, res - r, (n, nhoods_per_image), generator=g)
            xs = torch.randint(r, res - r, (n, nhoods_per_image), generator=g)
            out.append((ys, xs))
        d = torch.randn(dim, dir_repeats * dirs_per_repeat, generator=g)
        dirs.append(d / d.norm(dim=0, keepdim=True))
    return SWDPlan(resolutions, nhood_size, centres_a, centres_b, dirs)


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"{name} must be square images (N, C, H, H), got shape {tuple(x.shape)}")


def _coarse_levels(images: torch.Tensor, num_levels: int, batch_size: int) -> list[torch.Tensor]:
    """Gaussian pyramid levels 1 .. num_levels-1 of ``images`` (level 0 is the images themselves),
    float32 in [0, 255], computed ``batch_size`` images at a time (a third of the images' pixels)."""
    parts = [gaussian_pyramid(to_pixels(images[i:i + batch_size]), num_levels)[1:]
             for i in range(0, images.shape[0], batch_size)]
    return [torch.cat([p[k] for p in parts]) for k in range(num_levels - 1)]


def _level_descriptors(images: torch.Tensor, coarse: list[torch.Tensor], level: int,
                       centres: tuple[torch.Tensor, torch.Tensor], nhood_size: int,
                       batch_size: int) -> torch.Tensor:
    """Finalized descriptors (N*K, C*k*k) of Laplacian level ``level`` of ``images``.

    The band G_level - pyr_up(G_level+1) is formed ``batch_size`` images at a time from the cached
    Gaussian levels ``coarse`` (see _coarse_levels); the coarsest level is G itself.
    """
    ys, xs = (t.to(images.device) for t in centres)
    chunks = []
    for i in range(0, images.shape[0], batch_size):
        rows = slice(i, i + batch_size)
        band = to_pixels(images[rows]) if level == 0 else coarse[level - 1][rows]
        if level < len(coarse):
            band = band - pyr_up(coarse[level][rows])
        chunks.append(get_descriptors(band, ys[rows], xs[rows], nhood_size))
    return finalize_descriptors(torch.cat(chunks))


def _check_pair(a: torch.Tensor, b: torch.Tensor, min_res: int) -> list[int]:
    """The pyramid's resolutions for two image sets SWD can compare; ValueError otherwise."""
    _check_images(a, "a")
    _check_images(b, "b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"a and b differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"SWD compares sets of the same size, got {a.shape[0]} and {b.shape[0]} images")
    if a.device != b.device:
        raise ValueError(f"a and b are on different devices ({a.device}, {b.device})")
    size = a.shape[-1]
    resolutions = pyramid_resolutions(size, min_res)
    if not resolutions or size % (1 << (len(resolutions) - 1)):
        raise ValueError(f"image size {size} must be at least {min_res} and halve evenly down to it")
    return resolutions


def _level_distances(a: torch.Tensor, b: torch.Tensor, plan: SWDPlan, num_levels: int,
                     batch_size: int) -> list[torch.Tensor]:
    """The sliced Wasserstein distance of each Laplacian level (finest first), unscaled, as 0-d
    tensors on the images' device: the neighbourhoods and directions of ``plan``."""
    coarse_a = _coarse_levels(a, num_levels, batch_size)
    coarse_b = _coarse_levels(b, num_levels, batch_size)
    dists = []
    for level in range(num_levels):
        # one level's descriptors at a time: they are the bulk of the memory
        desc_a = _level_descriptors(a, coarse_a, level, plan.centres_a[level], plan.nhood_size,
                                    batch_size)
        desc_b = _level_descriptors(b, coarse_b, level, plan.centres_b[level], plan.nhood_size,
                                    batch_size)
        dirs = plan.dirs[level].to(a.device)
        dists.append(sliced_wasserstein_descriptors(desc_a, desc_b, dirs))
        del desc_a, desc_b
    return dists


@torch.no_grad()
def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, seed: int = 0,
                       nhood_size: int = NHOOD_SIZE, nhoods_per_image: int = NHOODS_PER_IMAGE,
                       dir_repeats: int = DIR_REPEATS, dirs_per_repeat: int = DIRS_PER_REPEAT,
                       min_res: int = MIN_RES, scale: float = SCALE, batch_size: int = 256,
                       plan: Optional[SWDPlan] = None) -> dict:
    """Multi-scale sliced Wasserstein distance between two image sets (Karras et al. 2018).

    a, b: (N, 3, H, H) uint8, or floats in [-1, 1] (quantised to uint8 first, so a uint8 batch and
    its float conversion give the same numbers); both on the same device, where all the work runs.
    By convention ``a`` is the real set. H must halve evenly down to ``min_res``.

    Returns ``{"levels": [...], "mean": m, "resolutions": [...], "scale": scale}``: one distance
    per Laplacian level (finest first, e.g. 64, 32, 16), times ``scale`` (1e3: the paper's units).

    When two numbers are comparable: same number of images per set, same resolution, same
    ``nhood_size``, ``nhoods_per_image``, number of directions, ``min_res`` and ``scale``, and the
    same real set (data, crop, resize). The estimate has a finite-sample floor: a set against
    itself (with independent neighbourhood draws) or two draws of one distribution do not give 0,
    and the floor falls with N (on the tests' 32x32 blob images, about 17 at 64 images and 6 at
    512, x1e3), so compare only at equal N (the reference's "swd-16k" uses 16384 images;
    ``python -m fastwgan.eval`` defaults to 10000). The seed (centres and directions) matters
    little: between seeds the mean moved by 1-9 % at 64 images and 0.6-4 % at 512 on those
    images, far less than a visible change. Each set is normalised by its own channel statistics
    (as the reference), so a global change of brightness or contrast of one set is not seen.

    Memory: the descriptors of one level for both sets, 2 * N * 128 * 147 float32 (about 150 KB
    per image pair), plus 2^26 projections at a time. Time: dominated by sorting the projections
    (N * 128 values, 512 times per level and set); 512 pairs at 64x64 took about 12 s on a
    2-core CPU.
    ``plan`` fixes every random draw (see ``sample_plan``); by default it is drawn from ``seed``.
    """
    resolutions = _check_pair(a, b, min_res)
    if plan is None:
        plan = sample_plan(a.shape[0], b.shape[0], a.shape[-1], a.shape[1], seed, nhood_size,
                           nhoods_per_image, dir_repeats, dirs_per_repeat, min_res)
    dists = _level_distances(a, b, plan, len(resolutions), batch_size)
    levels = (torch.stack(dists) * scale).tolist()  # host sync: the result
    return {"levels": levels, "mean": float(np.mean(levels)), "resolutions": resolutions,
            "scale": scale}


# --------------------------------------------------------------------------------------------
# Samples of a generator, and SWD during training
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_uint8(generator: torch.nn.Module, n: int, z_seed: int = 0, batch_size: int = 256,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """``n`` samples of ``generator`` in eval mode as uint8 (n, 3, H, W) on its device.

    z ~ N(0, 1) is drawn on the CPU from ``z_seed`` (the same samples on every device) and fed
    ``batch_size`` at a time. The generator's training mode is restored afterwards.
    """
    if device is None:
        device = next(generator.parameters()).device
    nz = generator.nz
    z = torch.randn(n, nz, generator=torch.Generator().manual_seed(z_seed))
    was_training = generator.training
    generator.eval()
    try:
        out = [to_uint8(generator(z[i:i + batch_size].to(device)))
               for i in range(0, n, batch_size)]
    finally:
        generator.train(was_training)
    return torch.cat(out)


def swd_for_training(generator: torch.nn.Module, real_uint8: torch.Tensor, n: Optional[int] = None,
                     z_seed: int = 0, seed: int = 0, batch_size: int = 256, **swd_kwargs) -> dict:
    """SWD between the first ``n`` of ``real_uint8`` and ``n`` samples of ``generator``.

    For a trainer's periodic evaluation: the same z (``z_seed``), the same real images and the same
    SWD draws (``seed``) every time, so that successive numbers differ only by the generator.
    Runs on the generator's device, without gradients, in eval mode (restored afterwards).
    """
    n = real_uint8.shape[0] if n is None else n
    if n > real_uint8.shape[0]:
        raise ValueError(f"asked for {n} images, only {real_uint8.shape[0]} real ones given")
    device = next(generator.parameters()).device
    fake = generate_uint8(generator, n, z_seed, batch_size, device)
    return sliced_wasserstein(real_uint8[:n].to(device), fake, seed=seed, batch_size=batch_size,
                              **swd_kwargs)


# --------------------------------------------------------------------------------------------
# Fréchet distance (FID)
# --------------------------------------------------------------------------------------------
def _f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _array(x: ArrayLike) -> np.ndarray:
    """A NumPy view of features in their own dtype (float32 features of a whole dataset are not
    copied to float64 at once: 1.3 GB for CelebA would become 2.7 GB)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def feature_statistics(features: ArrayLike, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64 (``np.cov``'s
    values), ``chunk`` rows at a time: two passes, the mean, then the centred products."""
    f = _array(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N, D) with N >= 2, got shape {f.shape}")
    n = f.shape[0]
    mu = sum(f[i:i + chunk].sum(axis=0, dtype=np.float64) for i in range(0, n, chunk)) / n
    cov = np.zeros((f.shape[1], f.shape[1]))
    for i in range(0, n, chunk):
        c = f[i:i + chunk].astype(np.float64) - mu
        cov += c.T @ c
    return mu, cov / (n - 1)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues
    from rounding are set to 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

    with tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))): S1 S2 is similar to that symmetric
    PSD matrix, so its eigenvalues are real and non-negative and no complex sqrtm is needed
    (pytorch-fid's scipy.linalg.sqrtm gives the same value up to its rounding).
    """
    mu1, mu2, s1, s2 = _f64(mu1), _f64(mu2), _f64(sigma1), _f64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    r1 = _sqrt_psd((s1 + s1.T) / 2)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """FID between two sets of features (N, D), e.g. Inception pool3 (2048-d) activations."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


# --------------------------------------------------------------------------------------------
# Kernel Inception distance (KID)
# --------------------------------------------------------------------------------------------
KID_SUBSETS = 100        # subsets drawn (the KID paper's code, StyleGAN2-ADA, clean-fid)
KID_SUBSET_SIZE = 1000   # images per subset at most


def kernel_inception_distance(features_a: ArrayLike, features_b: ArrayLike,
                              num_subsets: int = KID_SUBSETS, max_subset_size: int = KID_SUBSET_SIZE,
                              seed: int = 0) -> float:
    """KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD between two feature
    sets (N, D) under the polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over
    ``num_subsets`` subsets of m = min(N_a, N_b, ``max_subset_size``) features drawn from each set
    without replacement (StyleGAN2-ADA's ``kernel_inception_distance.py``, clean-fid's
    ``kernel_distance``; the draws come from numpy's ``default_rng(seed)``, b's then a's indices).

    Per subset, with K_aa, K_bb, K_ab the kernel matrices:
    (sum of K_aa + K_bb off the diagonal) / (m - 1) - 2 sum(K_ab) / m, divided by m at the end.
    Float64 throughout: the value is a small difference of large sums.
    """
    a, b = _array(features_a), _array(features_b)  # subsets are taken to float64, not the sets
    if a.ndim != 2 or a.shape[1:] != b.shape[1:] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"need features (N, D) with N >= 2 on both sides, got {a.shape} and {b.shape}")
    d = a.shape[1]
    m = min(a.shape[0], b.shape[0], max_subset_size)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = b[rng.choice(b.shape[0], m, replace=False)].astype(np.float64)
        y = a[rng.choice(a.shape[0], m, replace=False)].astype(np.float64)
        k_in = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        k_ab = (x @ y.T / d + 1) ** 3
        total += (k_in.sum() - np.diag(k_in).sum()) / (m - 1) - k_ab.sum() * 2 / m
    return float(total / num_subsets / m)


__all__ = [
    "kernel_inception_distance", "sliced_wasserstein", "sample_plan", "SWDPlan", "swd_for_training", "generate_uint8",
    "gaussian_pyramid", "laplacian_pyramid", "pyr_down", "pyr_up", "pyramid_resolutions",
    "get_descriptors", "finalize_descriptors", "wasserstein_1d", "sliced_wasserstein_descriptors",
    "to_pixels", "feature_statistics", "frechet_distance", "fid_from_features",
]
