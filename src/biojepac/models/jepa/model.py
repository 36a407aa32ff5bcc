"""`BioJepacModel`: the trained modules behind the shared `PerturbationModel` interface.

predict(controls, target_gene) = decode(predictor(encode(controls), compose(features(target_gene)))),
by default as a residual against the same pipeline with the control action (see `decode_mode`).
"""

import dataclasses
import json
import pathlib

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from biojepac.data.schema import CONTROL, PERT_TYPES, split_combo
from biojepac.errors import InputError
from biojepac.io import atomic_write, write_text_atomic
from biojepac.models.jepa.action_predictor import ActionPredictor
from biojepac.models.jepa.composer import Composer
from biojepac.models.jepa.config import BioJepacConfig, get_preset
from biojepac.models.jepa.decoder import Decoder
from biojepac.models.jepa.encoder import Encoder
from biojepac.train import checkpoint

CHUNK = 64  # cells per jitted prediction call; padded so every call has one shape


class Modules(eqx.Module):
    student: Encoder
    composer: Composer
    predictor: ActionPredictor
    decoder: Decoder


def make_modules(n_genes: int, feat_dim: int, cfg: BioJepacConfig, key: jax.Array) -> Modules:
    k = jax.random.split(key, 4)
    return Modules(
        Encoder(n_genes, cfg.encoder, k[0]),
        Composer({"gene": feat_dim}, cfg.compose, k[1]),
        ActionPredictor(cfg.encoder.d, cfg.compose.d_content, cfg.predict, k[2], cfg.encoder.attention),
        Decoder(n_genes, cfg.encoder.d, k[3]),
    )


def log_library(x_cg: np.ndarray) -> np.ndarray:
    """Scaled log library size per cell, from log1p expression (the only thing a predict call has)."""
    return (np.log1p(np.expm1(np.asarray(x_cg, dtype=np.float64)).sum(1)) / 10.0).astype(np.float32)


@eqx.filter_jit
def _predict_chunk(mods: Modules, x_bg, lib_b, f_pert, f_ctrl, mode):
    def one(x_g, lib):
        idx, val, mask = mods.student.select(x_g)
        z_c = mods.student.tokens(idx, val, mask, lib)
        out = []
        for f in (f_pert, f_ctrl):
            mu, logvar = mods.predictor(z_c, mask, mods.composer("gene", f, mode))
            out.append(mods.decoder(mu, idx, mask, jnp.exp(logvar)))
        return out[0][0], out[0][1], out[1][0]

    return jax.vmap(one)(x_bg, lib_b)


class BioJepacModel:
    name = "biojepac"

    def __init__(self, cfg: BioJepacConfig | None = None, features=None, run_dpath: pathlib.Path | None = None):
        self.cfg = cfg or get_preset("cpu-small")
        self.features, self.run_dpath = features, run_dpath
        self.mods: Modules | None = None
        self.genes: list[str] = []
        self.gene_table: dict[str, np.ndarray] = {}
        self.mode = 0

    def fit(self, train: ad.AnnData) -> "BioJepacModel":
        from biojepac.train.biojepac import fit_biojepac  # the trainer imports this module

        fitted = fit_biojepac(train, self.features, self.cfg, run_dpath=self.run_dpath)
        self.__dict__.update({k: v for k, v in fitted.__dict__.items() if k not in ("features", "run_dpath")})
        return self

    def pert_vector(self, label: str) -> np.ndarray:
        """Sum of the target genes' feature vectors (`A+B` combos add); the control is the zero vector.

        A gene without features raises: a silent zero would quietly predict "no effect"."""
        dim = next(iter(self.gene_table.values())).shape[0]
        genes = [g for g in split_combo(label) if g != CONTROL]
        missing = [g for g in genes if g not in self.gene_table]
        if missing:
            raise InputError(f"BioJEPAC: no perturbation features for {missing} (perturbation {label!r}); "
                             f"the model's feature table has {len(self.gene_table)} genes")
        parts = [self.gene_table[g] for g in genes]
        return np.sum(parts, axis=0).astype(np.float32) if parts else np.zeros(dim, np.float32)

    def predict_distribution(self, controls: np.ndarray, target_gene: str) -> tuple[np.ndarray, np.ndarray]:
        """(predicted log1p expression, per-gene variance from the predictor's σ²) for each control cell."""
        assert self.mods is not None, "fit or load the model before predicting"
        assert controls.shape[1] == len(self.genes), f"controls have {controls.shape[1]} genes, model {len(self.genes)}"
        x = np.asarray(controls, np.float32)
        n = len(x)
        pad = (-n) % CHUNK
        x_pad = np.concatenate([x, np.zeros((pad, x.shape[1]), np.float32)])
        lib = log_library(x_pad)
        f_pert = jnp.asarray(self.pert_vector(target_gene))
        f_ctrl = jnp.zeros_like(f_pert)
        outs = [
            _predict_chunk(self.mods, x_pad[i : i + CHUNK], lib[i : i + CHUNK], f_pert, f_ctrl, jnp.asarray(self.mode))
            for i in range(0, len(x_pad), CHUNK)
        ]
        mean, var, base = (np.concatenate([np.asarray(o[j]) for o in outs])[:n] for j in range(3))
        if self.cfg.decode_mode == "residual":
            mean = x + mean - base
        return np.clip(mean, 0.0, None).astype(np.float32), var.astype(np.float32)

    def predict(self, controls: np.ndarray, target_gene: str, context: str, seed: int) -> np.ndarray:
        return self.predict_distribution(controls, target_gene)[0]

    def save(self, dpath: pathlib.Path) -> None:
        dpath = pathlib.Path(dpath)
        dpath.mkdir(parents=True, exist_ok=True)
        names = sorted(self.gene_table)
        matrix = np.stack([self.gene_table[g] for g in names])
        atomic_write(dpath / "features.npz", lambda tmp: np.savez(tmp, labels=np.asarray(names), matrix=matrix))
        header = {"cfg": dataclasses.asdict(self.cfg), "genes": self.genes, "mode": self.mode}
        checkpoint.save(dpath / "model.eqx", self.mods, header)
        # `biojepac predict --model DIR` dispatches on model.json's kind.
        write_text_atomic(dpath / "model.json",
                          json.dumps({"kind": self.name, "preset_cfg": dataclasses.asdict(self.cfg)}, indent=1))

    @classmethod
    def load(cls, dpath: pathlib.Path) -> "BioJepacModel":
        from biojepac.train.biojepac import config_from_dict

        dpath = pathlib.Path(dpath)
        header = checkpoint.load_header(dpath / "model.eqx")
        cfg = config_from_dict(header["cfg"])
        feats = np.load(dpath / "features.npz")
        model = cls(cfg)
        model.genes, model.mode = header["genes"], header["mode"]
        model.gene_table = dict(zip(feats["labels"].tolist(), feats["matrix"].astype(np.float32)))
        like = make_modules(len(model.genes), feats["matrix"].shape[1], cfg, jax.random.PRNGKey(0))
        model.mods, _ = checkpoint.load(dpath / "model.eqx", like)
        return model


def mode_index(pert_type: str) -> int:
    return PERT_TYPES.index(pert_type) if pert_type in PERT_TYPES else 0


