"""Run profiles: how big, how long, on what (``smoke`` for CI and nbval, ``cpu`` for a student
laptop, ``gpu`` for a workshop GPU; ``DESCRIPTIONS`` gives each one's budget).

``get_profile()`` takes ``LABKIT_PROFILE`` when set, else ``gpu`` when an NVIDIA GPU is
visible, else ``cpu``. Detection reads the driver's files and never imports a framework.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

PROFILE_NAMES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class VNetSettings:
    """Lab 1 (V-Net, prostate MRI) settings."""

    image_size: tuple[int, int, int]  # voxels fed to the network (x, y, z)
    spacing: tuple[float, float, float]  # mm per voxel after resampling
    base_filters: int  # channels of the first level; doubles at each level down
    normalization: str  # 'batchnorm' | 'groupnorm' | 'none'
    batch_size: int
    accumulate: int  # batches per optimiser step (effective batch = batch_size * accumulate)
    max_epochs: int
    lr: float
    max_cases: int | None  # at most this many cases of each split (None: all)
    mixed_precision: bool  # float16 compute on a GPU (ignored on a CPU)


@dataclass(frozen=True)
class CFCMSettings:
    """Lab 2 (CFCM, chest X-ray) settings."""

    image_size: tuple[int, int]
    base_filters: int  # kernels of the first stage (the seed's BASE_NUM_KERNELS)
    batch_size: int
    max_epochs: int
    lr: float
    max_cases: int | None  # at most this many cases of each split (None: all)
    mixed_precision: bool  # float16 compute on a GPU (ignored on a CPU)
    xla: bool  # compile the training step with XLA (GPU only)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    vnet: VNetSettings
    cfcm: CFCMSettings
    seed: int = 42
    extra: dict = field(default_factory=dict)

    def limit(self, splits: dict, lab: str) -> dict:
        """``splits`` with at most the lab's ``max_cases`` cases in each (all when None)."""
        cap = getattr(self, lab).max_cases
        return {name: list(cases)[:cap] for name, cases in splits.items()}

    def with_vnet(self, **changes) -> "Profile":
        """A copy with some Lab 1 settings changed (for experiments)."""
        return replace(self, vnet=replace(self.vnet, **changes))

    def with_cfcm(self, **changes) -> "Profile":
        """A copy with some Lab 2 settings changed (for experiments)."""
        return replace(self, cfcm=replace(self.cfcm, **changes))


# --- Lab 1 settings (owned by the V-Net lab) ---
# cpu: enough epochs to pass validation Dice 0.85 on the synthetic set (benchmarks/, learning);
# gpu: the original course's settings.
VNET_SETTINGS = {
    "smoke": VNetSettings(image_size=(32, 32, 16), spacing=(6.0, 6.0, 6.0), base_filters=4,
                          normalization="groupnorm", batch_size=2, accumulate=1, max_epochs=2,
                          lr=1e-3, max_cases=6, mixed_precision=False),
    "cpu": VNetSettings(image_size=(64, 64, 32), spacing=(3.0, 3.0, 3.0), base_filters=8,
                        normalization="groupnorm", batch_size=2, accumulate=1, max_epochs=60,
                        lr=1e-3, max_cases=None, mixed_precision=False),
    "gpu": VNetSettings(image_size=(256, 256, 96), spacing=(1.0, 1.0, 1.0), base_filters=16,
                        normalization="groupnorm", batch_size=2, accumulate=1, max_epochs=50,
                        lr=1e-4, max_cases=None, mixed_precision=True),
}

# --- Lab 2 settings (owned by the CFCM lab) ---
# cpu: enough epochs to pass validation Dice 0.9 on the synthetic set, with a margin
# (benchmarks/, learning); gpu: the original course's settings.
CFCM_SETTINGS = {
    "smoke": CFCMSettings(image_size=(64, 64), base_filters=4, batch_size=4, max_epochs=2,
                          lr=1e-3, max_cases=12, mixed_precision=False, xla=False),
    "cpu": CFCMSettings(image_size=(128, 128), base_filters=16, batch_size=8, max_epochs=15,
                        lr=1e-3, max_cases=None, mixed_precision=False, xla=False),
    "gpu": CFCMSettings(image_size=(256, 256), base_filters=64, batch_size=16, max_epochs=40,
                        lr=3.3e-5, max_cases=None, mixed_precision=True, xla=True),
}

DESCRIPTIONS = {
    "smoke": "tiny sizes, 1-2 epochs: checks in about 2 minutes that everything runs (CI, nbval)",
    "cpu": "reduced sizes: each notebook, experiments included, within 15 minutes on a 2-core laptop",
    "gpu": "the original settings, for a workshop GPU",
}


def gpu_visible() -> bool:
    """True when an NVIDIA GPU and driver are visible (no framework imported)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def choose_profile_name(env: dict | None = None) -> tuple[str, str]:
    """The profile name and why it was chosen."""
    env = os.environ if env is None else env
    wanted = (env.get("LABKIT_PROFILE") or "").strip().lower()
    if wanted:
        if wanted not in PROFILE_NAMES:
            raise ValueError(f"LABKIT_PROFILE={wanted!r} is not a profile; "
                             f"choose one of {', '.join(PROFILE_NAMES)}")
        return wanted, "set by LABKIT_PROFILE"
    if gpu_visible():
        return "gpu", "an NVIDIA GPU is visible"
    return "cpu", "no GPU found"


def get_profile(name: str | None = None) -> Profile:
    """The settings for ``name``, or for the automatically chosen profile when ``name`` is None."""
    if name is None:
        name, _ = choose_profile_name()
    name = name.strip().lower()
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}")
    return Profile(name=name, description=DESCRIPTIONS[name], vnet=VNET_SETTINGS[name],
                   cfcm=CFCM_SETTINGS[name])
