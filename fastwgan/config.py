"""One config object for a training run; the command line is derived from it.

Every field carries its default, its help text and its flag group. ``build_parser`` turns the
fields into flags (one per field), ``Config.validate`` rejects values that cannot train, and
``PRESETS`` are named dicts of overrides, applied before the explicit flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from fastwgan.losses import LOSSES, NORMS, Loss

IMAGE_SIZES = (32, 64, 128)
# The flags whose defaults each loss sets (its ``defaults``: fastwgan.losses), filled in where the
# flag was not given.
LOSS_DEFAULTED = ("lr", "n_critic_warmup", "critic_norm", "adam_beta1", "adam_beta2")


def _per_loss(key: str, show=lambda loss, v: f"{v:g}") -> str:
    """'5e-05 for wgan, 0.0001 for wgan-gp, ...': a loss-dependent default, for --help."""
    return ", ".join(f"{show(loss, loss.defaults[key])} for {name}" for name, loss in LOSSES.items()
                     if key in loss.defaults and key not in loss.unused_flags)


def _using(key: str) -> str:
    """The losses that use the flag ``key``, for --help."""
    return ", ".join(name for name, loss in LOSSES.items() if key not in loss.unused_flags)


class ConfigError(ValueError):
    """A value in the config that cannot train; the CLI prints it and exits with code 2."""


def _f(default, help, group, **extra):
    return field(default=default, metadata={"help": help, "group": group, **extra})


@dataclass
class Config:
    # --- run ---
    out: str = _f("runs/wgan", "run directory: config, metrics, samples, checkpoint", "run", metavar="DIR")
    preset: Optional[str] = _f(None, "named set of defaults, applied before other flags: paper (the "
                               "paper's recipe, the defaults), cpu (faces in minutes on a CPU), cpu-gp "
                               "(the same with --loss wgan-gp), smoke (a few tiny iterations)", "run")
    resume: Optional[str] = _f(None, "run directory (or checkpoint.pt) to continue exactly", "run",
                               metavar="RUN_DIR")
    iters: int = _f(100_000, "generator iterations to train", "run")
    seed: int = _f(0, "seed for weights, noise and data order (a CPU run is reproducible bit for bit)", "run")
    device: str = _f("auto", "where to train", "run", choices=("auto", "cpu", "cuda"))
    log_every: int = _f(50, "iterations between log lines and metrics.jsonl rows", "run")
    sample_every: int = _f(500, "iterations between sample grids", "run")
    ckpt_every: int = _f(1000, "iterations between checkpoints (one is also written at the end)", "run")
    progress: bool = _f(True, "show a progress bar (in a terminal; a log gets a line per --log-every)", "run")
    overwrite: bool = _f(False, "start again in an --out that already holds a run", "run")
    threads: int = _f(0, "CPU threads for torch's operations (0: torch's default, one per core, or "
                      "OMP_NUM_THREADS); fewer than the cores is faster on a machine busy with "
                      "other work", "run")
    tensorboard: bool = _f(False, "also write TensorBoard event files into <out>/tb (needs the "
                           "tensorboard package: pip install 'fastwgan[tensorboard]')", "run")
    tb_histograms: int = _f(0, "with --tensorboard: histograms of every weight and gradient every N "
                            "iterations (0: none)", "run")

    # --- data ---
    data: Optional[str] = _f(None, "folder of .jpg/.jpeg/.png images, searched recursively, or a .zip "
                             "of them (default: a built-in synthetic face dataset)", "data", metavar="DIR|ZIP")
    image_size: int = _f(64, "training resolution", "data", choices=IMAGE_SIZES)
    crop: Optional[int] = _f(None, "center crop before resizing (108 for CelebA; default: the shorter side)", "data")
    workers: int = _f(-1, "loader worker processes (-1: one per core, at most 8)", "data")
    data_mode: str = _f("auto", "stream: decode batches as they are needed; resident: decode the whole "
                        "dataset once and keep it in memory; auto: resident when it is small", "data",
                        choices=("auto", "stream", "resident"))

    data_backend: str = _f("auto", "who decodes JPEGs: dali (on the GPU where there is one), pillow "
                           "(CPU worker processes); auto: dali when installed", "data",
                           choices=("auto", "dali", "pillow"))
    max_pixels: int = _f(89_478_485, "largest image (width x height) any backend decodes: files whose "
                         "header claims more are skipped, undecoded (Pillow's default limit)", "data")

    # --- model ---
    nz: int = _f(100, "size of the noise vector z", "model")
    ngf: int = _f(64, "generator width", "model")
    ndf: int = _f(64, "critic width", "model")
    extra_layers: int = _f(0, "extra 3x3 conv blocks in both networks", "model")

    # --- training ---
    loss: str = _f("wgan", "; ".join(f"{n}: {loss.summary}" for n, loss in LOSSES.items()),
                   "training", choices=tuple(LOSSES))
    batch_size: int = _f(64, "images per critic or generator step, over all processes (each of N "
                         "processes takes batch/N)", "training")
    lr: Optional[float] = _f(None, "learning rate (default: " + _per_loss(
        "lr", lambda loss, v: f"{v:g} {'RMSprop' if loss.optimizer == 'rmsprop' else 'Adam'}") + ")",
        "training")
    n_critic: int = _f(5, "critic steps per generator step", "training")
    n_critic_warmup: Optional[int] = _f(None, "critic steps for the first 25 generator iterations and "
                                        "every 500th (default: " + _per_loss("n_critic_warmup", lambda _, v: str(v))
                                        + ", --n-critic for the others; equal to --n-critic disables "
                                        "these phases)", "training")
    clip: float = _f(0.01, "critic weights are clipped to [-clip, clip] after each critic step "
                     "and once before the first, as the paper's code (" + _using("clip") + ")", "training")
    gp_weight: float = _f(10.0, f"lambda, the weight of the gradient penalty ({_using('gp_weight')})",
                          "training")
    critic_norm: Optional[str] = _f(None, "the critic's normalisation: batch (BatchNorm), layer (over C, H, "
                                    "W of each sample), none (default: " + _per_loss(
                                        "critic_norm", lambda _, v: v) + ")", "training", choices=NORMS)
    adam_beta1: Optional[float] = _f(None, "Adam's beta1 (" + _per_loss("adam_beta1") + ")", "training")
    adam_beta2: Optional[float] = _f(None, "Adam's beta2 (" + _per_loss("adam_beta2") + ")", "training")
    amp: bool = _f(False, "bf16 autocast where the device supports it (fp32 master weights)", "training")
    backend: str = _f("auto", "fast: fused Triton kernels and CUDA graphs; reference: plain PyTorch; "
                      "auto: fast on CUDA, reference elsewhere", "training",
                      choices=("auto", "fast", "reference"))
    graphs: bool = _f(True, "capture the n_critic loop in CUDA graphs (fast backend on CUDA)", "training")

    # --- several processes (torchrun) ---
    sync_bn: bool = _f(False, "BatchNorm statistics over the global batch (all processes) instead of "
                       "each process's share of it; no effect in one process", "distributed")
    dist_timeout: int = _f(600, "seconds a collective waits for the other processes before the run "
                           "stops with an error (a process that died or hangs)", "distributed")

    # --- evaluation ---
    eval_every: int = _f(0, "iterations between sliced Wasserstein distances to the data "
                         "(0: off; slow on a CPU)", "eval")
    eval_n: int = _f(2048, "generated and real images per evaluation", "eval")
    eval_metric: str = _f("swd", "what --eval-every computes: swd; fid (FID and KID of --eval-n "
                          "generated images against every real image, Inception weights of the fid "
                          "extra; about 6 GFLOP an image: slow on a CPU); all (both)", "eval",
                          choices=("swd", "fid", "all"))
    fid_weights: Optional[str] = _f(None, "NVIDIA's Inception feature extractor inception-2015-12-05.pt "
                                    "for FID and KID (default: the weights of the fid extra)", "eval",
                                    metavar="PATH")

    # ------------------------------------------------------------------------------------------
    @property
    def loss_entry(self) -> Loss:
        """Everything about ``--loss`` (fastwgan.losses)."""
        return LOSSES[self.loss]

    def _loss_default(self, name: str):
        value = getattr(self, name)
        if value is not None:
            return value
        defaults = self.loss_entry.defaults
        if name == "n_critic_warmup" and name not in defaults:
            return self.n_critic  # no warm-up phases
        return defaults.get(name)

    @property
    def learning_rate(self) -> float:
        return self._loss_default("lr")

    @property
    def adam_betas(self) -> tuple[float, float]:
        """Adam's (beta1, beta2) for the losses trained with Adam."""
        return (self._loss_default("adam_beta1"), self._loss_default("adam_beta2"))

    @property
    def critic_warmup(self) -> int:
        """Critic steps of a warm-up phase (``--n-critic-warmup`` or the loss's default)."""
        return self._loss_default("n_critic_warmup")

    @property
    def critic_normalization(self) -> str:
        return self._loss_default("critic_norm")

    def resolved(self) -> "Config":
        """This config with every default that depends on ``--loss`` filled in (config.json shows
        the values a run used; Adam's betas stay empty for a loss that does not use Adam)."""
        filled = {name: self._loss_default(name) for name in LOSS_DEFAULTED}
        return dataclasses.replace(self, **{k: v for k, v in filled.items() if v is not None})

    def describe_loss(self) -> str:
        """The loss and every setting it trains with, for train.log."""
        loss = self.loss_entry
        if loss.optimizer == "rmsprop":
            optimizer = f"RMSprop lr {self.learning_rate:g}"
        else:
            optimizer = "Adam lr {:g} betas ({:g}, {:g})".format(self.learning_rate, *self.adam_betas)
        if loss.critic_steps is not None:
            steps = f"{loss.critic_steps} critic step{'s' if loss.critic_steps > 1 else ''}"
        elif self.warmup_phases:
            steps = f"{self.n_critic} critic steps ({self.critic_warmup} in warm-up phases)"
        else:
            steps = f"{self.n_critic} critic steps, no warm-up phases"
        return (f"loss: {self.loss} ({loss.detail(self)}, critic norm {self.critic_normalization}), "
                f"{optimizer}, {steps}, z ~ N(0, 1) of size {self.nz}")

    @property
    def steady_n_critic(self) -> int:
        """Critic steps of an ordinary iteration, outside the warm-up phases."""
        return self.loss_entry.critic_steps or self.n_critic

    @property
    def warmup_phases(self) -> bool:
        """Whether some iterations take another number of critic steps (``--n-critic-warmup``)."""
        return self.loss_entry.critic_steps is None and self.critic_warmup != self.n_critic

    def n_critic_at(self, gen_iter: int) -> int:
        """Critic steps before generator iteration ``gen_iter`` (0-based), as the paper's code."""
        if self.warmup_phases and (gen_iter < 25 or gen_iter % 500 == 0):
            return self.critic_warmup
        return self.steady_n_critic

    def validate(self) -> "Config":
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)

        self._validate_kinds()

        need(self.iters >= 1, f"--iters must be at least 1 (got {self.iters})")
        need(self.dist_timeout >= 1, f"--dist-timeout must be at least 1 second (got {self.dist_timeout})")
        need(self.batch_size >= 2, f"--batch-size must be at least 2: BatchNorm needs 2 samples (got {self.batch_size})")
        need(self.image_size in IMAGE_SIZES,
             f"--image-size must be one of {', '.join(map(str, IMAGE_SIZES))} (got {self.image_size})")
        need(self.lr is None or (self.lr > 0 and math.isfinite(self.lr)),
             f"--lr must be positive and finite (got {self.lr})")
        need(0 <= self.seed < 2**32, f"--seed must be in [0, 2**32) (got {self.seed})")
        need(self.workers >= -1, f"--workers must be -1 (one per core), 0 (none) or more (got {self.workers})")
        need(self.n_critic >= 1, f"--n-critic must be at least 1 (got {self.n_critic})")
        need(self.n_critic_warmup is None or self.n_critic_warmup >= 1,
             f"--n-critic-warmup must be at least 1 (got {self.n_critic_warmup})")
        need(self.clip > 0 and math.isfinite(self.clip), f"--clip must be positive and finite (got {self.clip})")
        need(self.gp_weight > 0 and math.isfinite(self.gp_weight),
             f"--gp-weight must be positive and finite (got {self.gp_weight})")
        loss = self.loss_entry
        need(self.critic_norm is None or self.critic_norm in loss.critic_norms,
             f"--critic-norm {self.critic_norm} cannot train --loss {self.loss}: {loss.norm_refusal}")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            need(v is None or 0 <= v < 1, f"--{name.replace('_', '-')} must be in [0, 1) (got {v})")
        need(self.nz >= 1 and self.ngf >= 1 and self.ndf >= 1, "--nz, --ngf and --ndf must be positive")
        need(self.extra_layers >= 0, f"--extra-layers must be 0 or more (got {self.extra_layers})")
        need(self.crop is None or self.crop >= 1, f"--crop must be positive (got {self.crop})")
        need(self.threads >= 0, f"--threads must be 0 (torch's default) or more (got {self.threads})")
        need(self.tb_histograms >= 0, f"--tb-histograms must be 0 (none) or more (got {self.tb_histograms})")
        need(self.tensorboard or not self.tb_histograms, "--tb-histograms writes into the TensorBoard "
             "events: add --tensorboard")
        need(self.eval_every >= 0, f"--eval-every must be 0 (off) or more (got {self.eval_every})")
        need(self.max_pixels >= 1, f"--max-pixels must be at least 1 (got {self.max_pixels})")
        need(self.eval_n >= 16, f"--eval-n must be at least 16 (got {self.eval_n})")
        for name in ("log_every", "sample_every", "ckpt_every"):
            v = getattr(self, name)
            need(v >= 1, f"--{name.replace('_', '-')} must be at least 1 (got {v})")
        need(self.preset is None or self.preset in PRESETS,
             f"unknown --preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        return self

    def _validate_kinds(self) -> None:
        """Types and choices, which the command line's parser checks: a Config built in Python
        (``fastwgan.train(Config(...))``) is held to the same."""
        kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), str(f.type)
            optional = kind.startswith("Optional[")
            base = kind.removeprefix("Optional[").rstrip("]")
            if (v is None and optional) or base not in kinds:  # (another kind: its own check)
                continue
            ok = isinstance(v, kinds[base])
            if ok and isinstance(v, bool) and kind != "bool":
                ok = False  # True is an int to Python, not a count
            if not ok:
                what = {"int": "an integer", "float": "a number", "str": "a string",
                        "bool": "True or False"}[base]
                raise ConfigError(f"{_flag(f.name)} must be {what}{' or None' if optional else ''} "
                                  f"(got {v!r})")
            choices = f.metadata.get("choices") or (PRESETS if f.name == "preset" else None)
            if choices and v not in choices:
                raise ConfigError(f"{_flag(f.name)} must be one of {', '.join(map(str, choices))} "
                                  f"(got {v!r})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Named presets: overrides applied before the explicit flags.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's recipe at 64x64: the defaults, spelled out.
    "paper": dict(image_size=64, ngf=64, ndf=64, batch_size=64, iters=100_000, n_critic=5,
                  n_critic_warmup=100, clip=0.01, lr=5e-5),
    # Trains on a 2-core CPU in a few minutes and shows faces on the built-in dataset: 32x32,
    # narrower networks, a faster learning rate and a shorter warm-up.
    "cpu": dict(image_size=32, ngf=32, ndf=32, batch_size=64, iters=1500, n_critic=5,
                n_critic_warmup=5, clip=0.01, lr=1e-4, log_every=25, sample_every=250, ckpt_every=500),
    # The cpu preset with the gradient penalty: Adam at 5e-4 (the GP paper's 1e-4 learns slowly at
    # this size: SWD 68.9 against 34.2 after 1,500 iterations, bench/RESULTS.md).
    "cpu-gp": dict(image_size=32, ngf=32, ndf=32, batch_size=64, iters=1500, n_critic=5, loss="wgan-gp",
                   lr=5e-4, log_every=25, sample_every=250, ckpt_every=500),
    # A few iterations at a tiny size: smoke tests of the whole pipeline.
    "smoke": dict(image_size=32, ngf=8, ndf=8, batch_size=8, iters=4, n_critic=2, n_critic_warmup=2,
                  log_every=1, sample_every=2, ckpt_every=2),
}


GROUP_TITLES = {
    "run": "run and outputs",
    "data": "data",
    "model": "model (DCGAN, the paper's networks)",
    "training": "training",
    "distributed": "several processes (torchrun --nproc_per_node N -m fastwgan.train ...)",
    "eval": "evaluation",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a value not among the choices, not a number, an unknown flag) as a
    ConfigError: one line and exit code 2 like every other bad value, not the whole usage."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(prog: str = "python -m fastwgan.train", description: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {g: parser.add_argument_group(t) for g, t in GROUP_TITLES.items()}
    for f in dataclasses.fields(Config):
        meta = f.metadata
        group = groups[meta["group"]]
        # Defaults are left as None so that only the flags the user gave override a preset.
        kwargs: dict[str, Any] = dict(help=meta["help"], dest=f.name, default=None)
        if f.type in ("bool", bool):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.name == "preset":
            kwargs["choices"] = tuple(PRESETS)
        elif meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        kind = {"int": int, "float": float, "str": str, "Optional[int]": int, "Optional[float]": float,
                "Optional[str]": str}[str(f.type)]
        kwargs["type"] = kind
        if "choices" not in kwargs:
            kwargs["metavar"] = meta.get("metavar") or {int: "N", float: "X", str: "STR"}[kind]
        group.add_argument(_flag(f.name), **kwargs)
    # Show the dataclass defaults in --help even though the parser's own defaults are None.
    for action in parser._actions:
        if action.dest in _FIELD_DEFAULTS and action.help:
            d = _FIELD_DEFAULTS[action.dest]
            if d is not None and "default" not in action.help:
                action.help = f"{action.help} (default: {d})"
    return parser


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def config_from_args(args: argparse.Namespace, base: Optional[Config] = None) -> Config:
    """Dataclass defaults, then the preset, then the flags the user gave."""
    given = {k: v for k, v in vars(args).items() if k in _FIELD_DEFAULTS and v is not None}
    cfg = base or Config()
    values = cfg.to_dict()
    preset = given.get("preset")
    if preset is not None:
        values.update(PRESETS[preset])
    values.update(given)
    return Config.from_dict(values).validate().resolved()
