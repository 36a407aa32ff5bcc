"""The one interface every predictor implements: baselines, BioJEPAC and the state-transition model.

A model is fitted on a canonical, log1p-normalised training screen (train-split cells plus controls) and
then maps a set of real control cells of a context to predicted perturbed cells. Mean-shift models add a
predicted delta to the controls, which keeps realistic cell-to-cell variance for DE-based metrics.
"""

import pathlib
from typing import Literal, Protocol, runtime_checkable

import anndata as ad
import numpy as np


Preset = Literal["tiny", "cpu-small", "paper"]
PRESETS: tuple[str, ...] = ("tiny", "cpu-small", "paper")
"""The neural models' preset names. `tiny`: seconds, for tests; `cpu-small`: minutes on 2 CPU cores;
`paper`: the published size, for accelerators."""


def scale_steps(n_steps: int, steps_scale: float) -> int:
    """A preset's step count times the user's `--steps-scale` (at least one step)."""
    return max(1, int(round(n_steps * steps_scale)))


@runtime_checkable
class PerturbationModel(Protocol):
    name: str
    """Short identifier, recorded in prediction provenance (`uns["biojepac"]["model"]`)."""

    def fit(self, train: ad.AnnData) -> "PerturbationModel":
        """Fit on canonical log1p-normalised cells (train perturbations + controls, any context)."""
        ...

    def predict(self, controls: np.ndarray, target_gene: str, context: str, seed: int) -> np.ndarray:
        """Map control cells (cells x genes, log1p) of `context` to predicted perturbed cells (same shape)."""
        ...

    def save(self, dpath: pathlib.Path) -> None:
        """Write everything needed to rebuild the fitted model into `dpath` (atomically)."""
        ...


def shift_controls(controls: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Controls plus a mean shift, clipped at 0 because log1p expression cannot be negative."""
    return np.clip(controls + delta[None, :], 0.0, None).astype(np.float32)
