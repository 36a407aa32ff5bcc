"""The four trained BioJEPAC modules as one tree, how they are built, and the per-cell inputs they share."""

import equinox as eqx
import jax
import numpy as np

from biojepac.data.schema import PERT_TYPES
from biojepac.models.jepa.action_predictor import ActionPredictor
from biojepac.models.jepa.composer import Composer
from biojepac.models.jepa.config import BioJepacConfig
from biojepac.models.jepa.decoder import Decoder
from biojepac.models.jepa.encoder import Encoder


class Modules(eqx.Module):
    """What prediction uses: the EMA teacher encoder (reads controls and targets alike), the composer,
    the residual predictor and the decoder."""

    encoder: Encoder
    composer: Composer
    predictor: ActionPredictor
    decoder: Decoder


def make_modules(n_genes: int, feat_dim: int, cfg: BioJepacConfig, key: jax.Array, n_contexts: int = 1) -> Modules:
    k = jax.random.split(key, 4)
    return Modules(
        Encoder(n_genes, cfg.encoder, k[0]),
        Composer({"gene": feat_dim}, cfg.compose, k[1]),
        ActionPredictor(cfg.encoder.d, cfg.compose.d_content, cfg.predict, k[2], cfg.encoder.attention, n_contexts),
        Decoder(n_genes, cfg.encoder.d, k[3]),
    )


def log_library(x_cg: np.ndarray) -> np.ndarray:
    """Scaled log library size per cell, from log1p expression (the only thing a predict call has)."""
    return (np.log1p(np.expm1(np.asarray(x_cg, dtype=np.float64)).sum(1)) / 10.0).astype(np.float32)


def mode_index(pert_type: str) -> int:
    return PERT_TYPES.index(pert_type) if pert_type in PERT_TYPES else 0
