"""`BioJepacModel`: the trained modules behind the shared `PerturbationModel` interface.

predict(controls, p, c) = controls + decode(μ) − decode(z), with z = encode(controls) by the EMA teacher and
μ = z + prior(p, c) + residual(z + prior, compose(features(p)), c, p's own genes): the closed-form latent
prior (`prior.py`) plus the action-conditioned predictor's learned residual (when it helped on held-out
perturbations). `decode_mode="direct"` returns decode(μ) instead.
"""

import dataclasses
import pathlib
from typing import Literal

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from biojepac.data.schema import CONTROL, split_combo
from biojepac.errors import InputError
from biojepac.features.base import GeneTable
from biojepac.models.jepa import trainer
from biojepac.models.jepa.config import BioJepacConfig, config_from_dict, get_preset
from biojepac.models.jepa.network import Modules, log_library, make_modules
from biojepac.models.jepa.prior import Prior
from biojepac.models.jepa.trainer import lift_to_latent
from biojepac.models.base import Preset
from biojepac.models.saved import save_model_dir

KIND = "biojepac"

CHUNK = 64  # cells per jitted prediction call; padded so every call has one shape


@eqx.filter_jit
def _predict_chunk(mods: Modules, x_bg, lib_b, prior_gd, f, mode, ctx, target_g, use_residual):
    """Each cell's decoded μ, its variance, and its expression shift (decoded μ minus decoded control)."""
    a = mods.composer("gene", f, mode)

    def one(x_g, lib):
        idx, val, mask = mods.encoder.select(x_g)
        z_c = mods.encoder.tokens(idx, val, mask, lib)
        start = z_c + prior_gd[idx]
        r, logvar = mods.predictor(start, mask, mods.encoder.gene_emb[idx], a, ctx, target_g[idx])
        mu = start + jnp.where(use_residual, r, 0.0)
        x_mu, var = mods.decoder(mu, idx, mask, jnp.exp(logvar))
        return x_mu, var, mods.decoder.shift(mu, z_c, idx, mask)

    return jax.vmap(one)(x_bg, lib_b)


class BioJepacModel:
    name = KIND

    def __init__(self, cfg: BioJepacConfig | None = None, features: GeneTable | str | None = None,
                 run_dpath: pathlib.Path | None = None, steps_scale: float = 1.0):
        """`features`: a feature spec or table (None: `biojepac.features.DEFAULT_FEATURES`, as every model)."""
        self.cfg = cfg or get_preset("cpu-small")
        self.features, self.run_dpath, self.steps_scale = features, run_dpath, steps_scale
        self.mods: Modules | None = None
        self.genes: list[str] = []
        self.mode = 0
        self.prior: Prior | None = None
        self.contexts: list[str] = []
        self.use_residual = False

    def fit(self, train: ad.AnnData, only_stage: str | None = None, progress: bool = False,
            wandb_project: str = "") -> "BioJepacModel | None":
        """Train every stage (or up to `only_stage`; then None is returned, the stages stay in run_dpath)."""
        fitted = trainer.fit_biojepac(train, self.features, self.cfg, self.run_dpath, only_stage, progress,
                                      wandb_project, self.steps_scale)
        if fitted is None:
            return None
        for name in ("mods", "genes", "features", "mode", "prior", "contexts", "use_residual"):
            setattr(self, name, getattr(fitted, name))
        return self

    def predict_distribution(self, controls: np.ndarray, target_gene: str, context: str) -> tuple[np.ndarray, np.ndarray]:
        """(predicted log1p expression, per-gene variance from the predictor's σ²) for each control cell."""
        assert self.mods is not None and self.prior is not None, "fit or load the model before predicting"
        if controls.shape[1] != len(self.genes):
            raise InputError(f"biojepac: controls have {controls.shape[1]} genes, the model {len(self.genes)}")
        x = np.asarray(controls, np.float32)
        if target_gene == CONTROL:  # no perturbation: the cells as they are, by definition
            return x.copy(), np.zeros_like(x)
        n = len(x)
        x_pad = np.concatenate([x, np.zeros(((-n) % CHUNK, x.shape[1]), np.float32)])
        lib = log_library(x_pad)
        measured = self.prior.is_measured(target_gene, context)
        shift = self.prior.shift([target_gene], context, self.features)[0]
        if self.cfg.predict.prior == "none" and not measured:  # the ablation without a prior: the residual alone
            shift = np.zeros_like(shift)
        if shift.shape[0] == len(self.genes):  # an expression-space prior, lifted to the latent (older saves: latent)
            shift = lift_to_latent(shift[None], np.asarray(self.mods.decoder.w_gd))[0]
        prior = jnp.asarray(shift.reshape(len(self.genes), -1))
        embeddable = not self.features.missing([target_gene])
        f = jnp.asarray(self.features.vectors([target_gene])[0] if embeddable else np.zeros(self.features.dim, np.float32))
        ctx = jnp.asarray(self.contexts.index(context) + 1 if context in self.contexts else 0)
        target = jnp.asarray(np.isin(self.genes, split_combo(target_gene)).astype(np.float32))
        # The residual corrects the prior's guesses; a measured perturbation's prior is its measurement.
        residual = self.use_residual and embeddable and not measured
        outs = [_predict_chunk(self.mods, x_pad[i : i + CHUNK], lib[i : i + CHUNK], prior, f, jnp.asarray(self.mode),
                               ctx, target, jnp.asarray(residual)) for i in range(0, len(x_pad), CHUNK)]
        mean, var, shift = (np.concatenate([np.asarray(o[j]) for o in outs])[:n] for j in range(3))
        if self.cfg.decode_mode == "residual":
            mean = x + shift
        return np.clip(mean, 0.0, None).astype(np.float32), var.astype(np.float32)

    def predict(self, controls: np.ndarray, target_gene: str, context: str, seed: int) -> np.ndarray:
        return self.predict_distribution(controls, target_gene, context)[0]

    def save(self, dpath: pathlib.Path) -> pathlib.Path:
        assert self.mods is not None and self.prior is not None, "fit the model before saving it"

        def write(tmp: pathlib.Path) -> dict:
            self.features.save(tmp / "features.npz")
            eqx.tree_serialise_leaves(tmp / "weights.eqx", self.mods)
            np.savez(tmp / "prior.npz", **self.prior.arrays())
            return {"mode": self.mode, "contexts": self.contexts, "use_residual": self.use_residual}

        return save_model_dir(dpath, KIND, dataclasses.asdict(self.cfg), self.genes, write)

    @classmethod
    def load(cls, dpath: pathlib.Path, meta: dict) -> "BioJepacModel":
        """Rebuild from a folder whose `model.json` (`meta`, read by `registry.load`) has kind `biojepac`."""
        dpath = pathlib.Path(dpath)
        cfg = config_from_dict(meta["config"])
        model = cls(cfg, GeneTable.load(dpath / "features.npz"))
        model.genes, model.mode = list(meta["genes"]), int(meta["mode"])
        model.contexts, model.use_residual = list(meta["contexts"]), bool(meta["use_residual"])
        with np.load(dpath / "prior.npz", allow_pickle=False) as npz:
            model.prior = Prior.from_arrays({k: npz[k] for k in npz.files})
        like = make_modules(len(model.genes), model.features.dim, cfg, jax.random.PRNGKey(0), len(model.contexts))
        model.mods = eqx.tree_deserialise_leaves(dpath / "weights.eqx", like)
        return model


@dataclasses.dataclass(frozen=True)
class TrainBiojepacConfig:
    screen: pathlib.Path = pathlib.Path("train.h5ad")
    """Training screen (.h5ad, canonical schema; raw counts are normalised to log1p, recorded)."""
    split: pathlib.Path | None = None
    """Train on this split's training part (a `biojepac data split` JSON: its training perturbations plus
    every control cell); default: every cell of --screen."""
    run_dpath: pathlib.Path = pathlib.Path("runs/biojepac")
    """Run folder: one checkpoint + metrics.jsonl per stage, and the final model in `model/`."""
    stage: Literal["pretrain", "compose", "predict", "decode", "all"] = "all"
    """Which stage to train (earlier stages must be finished in run_dpath)."""
    preset: Preset = "cpu-small"
    """Model sizes and step counts: tiny | cpu-small | paper."""
    features: str = ""
    """Perturbation features (a `biojepac.features.make_provider` spec, e.g. expr|go, go, file:EMB.npz).
    Empty: `biojepac.features.DEFAULT_FEATURES`, varm|expr|go (the default of every model)."""
    steps_scale: float = 1.0
    """Multiply every stage's step count (quick runs: 0.1)."""
    seed: int = 0
    """Seeds initialisation, masks, batch order and pairing."""
    progress: bool = True
    """Show progress bars."""
    wandb_project: str = ""
    """Also log to this wandb project (needs the wandb extra)."""
    params_only: bool = False
    """Only print parameter counts for the preset (paper preset: vs the report's) and exit."""
    overwrite: bool = False
    """Empty the run folder and start afresh (default: resume a run made with the same settings and data,
    refuse one made with others)."""


def train_biojepac(cfg: TrainBiojepacConfig) -> None:
    from biojepac.data.fingerprint import screen_fingerprint
    from biojepac.data.load import read_training_screen
    from biojepac.data.splits import training_part
    from biojepac.train.run_folder import open_run

    model_cfg = dataclasses.replace(get_preset(cfg.preset), seed=cfg.seed)
    if cfg.params_only:
        n_genes, feat_dim = (5000, 5120) if cfg.preset == "paper" else (2000, 64)
        counts = trainer.param_counts(model_cfg, n_genes, feat_dim)
        print(f"preset {cfg.preset}, {n_genes} genes, {feat_dim}-dim gene features:")
        for name, n in counts.items():
            print(f"  {name:<18} {n:>12,}")
        if cfg.preset == "paper":
            print("report: JEPA 6,019,840  AC 7,881,216  Pert 882,880 (see docs/biojepac.md)")
        return
    adata = training_part(read_training_screen(cfg.screen), cfg.split, cfg.screen)
    settings = {k: getattr(cfg, k) for k in ("preset", "features", "steps_scale", "seed")}  # --stage may change
    open_run(cfg.run_dpath, "train biojepac", {**settings, "data": screen_fingerprint(adata)}, cfg.overwrite)
    only = None if cfg.stage == "all" else cfg.stage
    model = BioJepacModel(model_cfg, cfg.features or None, cfg.run_dpath, cfg.steps_scale)
    if model.fit(adata, only, cfg.progress, cfg.wandb_project) is not None:
        model.save(cfg.run_dpath / "model")
        print(f"biojepac: model written to {cfg.run_dpath / 'model'}")
