"""How a model is fine-tuned or trained."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from napari_unet_tuner.config.base import DictMixin
from napari_unet_tuner.errors import ConfigError


@dataclass(frozen=True)
class TrainingConfig(DictMixin):
    """How a model is fine-tuned on annotations; ``None`` means "chosen for you".

    Parameters
    ----------
    mode : {"corrections", "scribbles"}
        How annotations are read (see `napari_unet_tuner.training.targets`).
    scribble_objects : {"whole", "strokes"}
        Scribbles only: objects painted whole (their rim is their boundary) or
        marked by strokes inside them.
    max_seconds : float
        Wall-time budget of the whole run: preparation, steps and validations.
    max_epochs : int
        Upper bound on epochs of ``steps_per_epoch`` steps.
    steps_per_epoch : int
        Optimizer steps between two validations.
    patience : int
        Stop after this many validations without a better score, once a
        better one than the starting model's was found.
    patch_shape : tuple of int or None
        Training patch size; ``None``: 128 x 128 (2D) or 16 x 64 x 64 (3D) on
        the CPU, twice that per axis on a GPU.
    batch_size : int or None
        Patches per step; ``None``: 4 on the CPU, 16 on a GPU.
    learning_rate : float
        Adam step size.
    final_learning_rate : float or None
        Anneal the step size from ``learning_rate`` to this by the end of
        ``max_seconds`` (half a cosine over training time: runs here are
        budgeted in seconds, not steps); ``None`` keeps it constant.
    boundary_weight : float
        Loss weight of the boundary class relative to the other two; high,
        because a missed boundary merges two objects.
    contact_weight : float
        Extra loss weight (a factor on ``boundary_weight``) of boundary pixels
        where two objects touch: higher values separate crowded objects.
    correction_weight : float
        Loss weight of the pixels where a correction differs from the
        prediction it was edited from (and of the corrected and deleted
        objects), relative to the unchanged pixels.
    unreviewed_weight : float
        Corrections with a reviewed mask (`AnnotatedImage.reviewed`): loss
        weight of the pixels outside it, where the target is the starting
        model's own prediction, relative to the reviewed ones. Nothing there
        is truth or scored; it keeps the model from drifting where nobody
        looked (0: trained on the reviewed objects alone, which in a
        simulated review of 10 objects on HeLa unlearned every nucleus:
        AP@0.5 on other frames 0.84 -> 0.00; BENCHMARKS.md, issue 35).
    trusted_background : float
        Corrections: background the user left as predicted is trained on
        as background only where the starting model's foreground
        probability was below this (`napari_unet_tuner.training.silence`);
        where the model nearly found an object, the user's silence is then
        not taken as a "no". 1.0 (the default) trusts all of it: every
        pixel of a correction annotation is reviewed. 0.5 helped the
        corrections of a partly reviewed image but cost 0.10 AP@0.5 on
        other DSB2018 images (BENCHMARKS.md, issue 34). Not used for
        scribbles or for a labelling (every object corrected).
    validation_fraction : float
        Share of the unchanged objects held out (whole objects, by image
        region, the same in every plane) to report how the model generalizes;
        corrections are never held out.
    parent_pull : float
        Weight of the mean squared change of the weights from the starting
        model's in the loss (L2-SP): keeps a fine-tuned model near the one
        it started from, so that what it did right on other images is kept.
        0 (default) is off; measured in BENCHMARKS.md (issue 35).
    warmup_steps : int
        Ramp the step size up linearly over this many first steps (0: off,
        the default); measured in BENCHMARKS.md (issue 35).
    balance_validation : bool
        Lengthen an epoch past ``steps_per_epoch`` so that training takes at
        least as long as validating (large scribbles make validations of
        several seconds). Off, every epoch is ``steps_per_epoch`` steps: the
        same steps on a busy machine as on a free one (with a ``max_seconds``
        that is never reached), as tests and reproducible scripts need.
    freeze_encoder_levels : int
        Encoder blocks (from the top) whose weights are not trained.
    freeze_batch_norm : bool or None
        Keep batch-norm statistics fixed; ``None``: when starting from a checkpoint.
    augment : bool
        Random flips, 90-degree rotations, intensity jitter and noise.
    tune_instances : bool
        At each validation, also try other foreground thresholds and seed
        splitting (`InstanceConfig.threshold`, ``split_solidity``) on the
        held-out annotations, preferring the neutral ones (0.5, no
        splitting) unless others score clearly better; the new checkpoint's
        card keeps the settings of its best validation. A model's settings
        suit the images it was made for (the bundled nuclei model's strict
        threshold and seed splitting thin and cut rod-shaped bacteria);
        without held-out annotations the parent's are kept.
    intensity_range : tuple of float
        Augmentation: range of the factor the normalized patch is multiplied
        by (dim or bright nuclei of other microscopes).
    gamma_range : tuple of float
        Augmentation: range of the gamma applied to the normalized patch.
    blur_max : float
        Augmentation: largest Gaussian blur sigma (pixels; 0 = none), for
        out-of-focus or lower-resolution images.
    noise_max : float
        Augmentation: largest standard deviation of added Gaussian noise.
    seed : int
        Seeds patch sampling, augmentation, the split and initialization.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    mixed_precision : bool
        Half-precision autocast on CUDA; bfloat16 autocast on CPUs that
        compute it natively (AVX512-BF16 or AMX), float32 on other CPUs.
    num_threads : int or None
        CPU threads for torch; ``None`` keeps torch's default.
    """

    mode: Literal["corrections", "scribbles"] = "corrections"
    scribble_objects: Literal["whole", "strokes"] = "whole"
    max_seconds: float = 60.0
    max_epochs: int = 200
    steps_per_epoch: int = 20
    patience: int = 6
    patch_shape: tuple[int, ...] | None = None
    batch_size: int | None = None
    learning_rate: float = 1e-3
    final_learning_rate: float | None = None
    boundary_weight: float = 4.0
    contact_weight: float = 1.0
    correction_weight: float = 5.0
    unreviewed_weight: float = 0.5
    trusted_background: float = 1.0
    validation_fraction: float = 0.2
    balance_validation: bool = True
    parent_pull: float = 0.0
    warmup_steps: int = 0
    freeze_encoder_levels: int = 0
    freeze_batch_norm: bool | None = None
    augment: bool = True
    tune_instances: bool = True
    intensity_range: tuple[float, float] = (0.8, 1.25)
    gamma_range: tuple[float, float] = (1.0, 1.0)
    blur_max: float = 0.0
    noise_max: float = 0.05
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("corrections", "scribbles"):
            raise ConfigError(f"mode must be 'corrections' or 'scribbles', got {self.mode!r}")
        if self.scribble_objects not in ("whole", "strokes"):
            raise ConfigError(
                f"scribble_objects must be 'whole' or 'strokes', got {self.scribble_objects!r}"
            )
        # NaN passes every comparison: a budget must be a finite positive number.
        if (
            not (0 < self.max_seconds < math.inf)
            or self.max_epochs < 1
            or self.steps_per_epoch < 1
        ):
            raise ConfigError(
                "max_seconds must be a positive number of seconds, and max_epochs and "
                f"steps_per_epoch positive; got {self.max_seconds}, {self.max_epochs}, "
                f"{self.steps_per_epoch}"
            )
        if not 0.0 <= self.validation_fraction < 0.9:
            raise ConfigError(
                f"validation_fraction must be in [0, 0.9), got {self.validation_fraction}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("intensity_range", "gamma_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"{name} must be (low, high) with 0 < low <= high")
        if self.learning_rate <= 0 or (
            self.final_learning_rate is not None
            and not 0 < self.final_learning_rate <= self.learning_rate
        ):
            raise ConfigError(
                "learning_rate must be > 0 and final_learning_rate in (0, learning_rate], got "
                f"{self.learning_rate} and {self.final_learning_rate}"
            )
        if self.contact_weight < 1.0:
            raise ConfigError(f"contact_weight must be >= 1, got {self.contact_weight}")
        if not 0.0 < self.trusted_background <= 1.0:
            raise ConfigError(
                f"trusted_background must be in (0, 1], got {self.trusted_background}"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.parent_pull < 0:
            raise ConfigError(f"parent_pull must be >= 0, got {self.parent_pull}")
        if not 0.0 <= self.unreviewed_weight <= 1.0:
            raise ConfigError(f"unreviewed_weight must be in [0, 1], got {self.unreviewed_weight}")
        if self.correction_weight < 1.0:
            raise ConfigError(f"correction_weight must be >= 1, got {self.correction_weight}")
        if self.blur_max < 0 or self.noise_max < 0:
            raise ConfigError("blur_max and noise_max must be >= 0")
