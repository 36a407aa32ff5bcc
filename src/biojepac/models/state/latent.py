"""BioJEPAC's cell encoder as the state-transition model's cell embedding (STATE's "SE" role).

`JepaCellEncoder` wraps a saved BioJEPAC model directory and maps log1p cells to the encoder's pooled
cell latent. It is frozen: the ST model trains on these latents and decodes its predictions back to
expression. Saving a latent ST model copies the encoder's directory next to it, so the saved model is
self-contained.
"""

import pathlib
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

CHUNK = 256
"""Cells per jitted encoder call (the last chunk is padded, so one shape compiles)."""


class JepaCellEncoder:
    def __init__(self, model_dpath: pathlib.Path):
        from biojepac.errors import InputError
        from biojepac.models.jepa.model import KIND, BioJepacModel
        from biojepac.models.saved import read_meta

        self.model_dpath = pathlib.Path(model_dpath)
        meta = read_meta(self.model_dpath)
        if meta["kind"] != KIND:
            raise InputError(f"{self.model_dpath}: a {meta['kind']!r} model; the cell encoder must be a {KIND!r} model")
        self.model = BioJepacModel.load(self.model_dpath, meta)

    @property
    def dim(self) -> int:
        return int(self.model.cfg.encoder.d)

    def encode(self, x_ng: np.ndarray) -> np.ndarray:
        """(cells, genes) log1p -> (cells, d) pooled latents of the BioJEPAC (EMA teacher) encoder."""
        from biojepac.models.jepa.network import log_library

        x_ng = np.asarray(x_ng, np.float32)
        if x_ng.shape[1] != len(self.model.genes):
            raise ValueError(f"encoder {self.model_dpath} expects {len(self.model.genes)} genes, got {x_ng.shape[1]}")
        n = len(x_ng)
        x_pad = np.concatenate([x_ng, np.zeros((-n % CHUNK, x_ng.shape[1]), np.float32)])
        lib = log_library(x_pad)
        out = [np.asarray(_encode(self.model.mods.encoder, jnp.asarray(x_pad[i : i + CHUNK]), jnp.asarray(lib[i : i + CHUNK])))
               for i in range(0, len(x_pad), CHUNK)]
        return np.concatenate(out)[:n]

    def save(self, dpath: pathlib.Path) -> None:
        shutil.copytree(self.model_dpath, dpath)


@eqx.filter_jit
def _encode(encoder, x_bg, lib_b):
    return jax.vmap(lambda x, lib: encoder(x, lib)[3])(x_bg, lib_b)

