"""`StateModel`: the state-transition network behind the shared `PerturbationModel` interface, and
`biojepac train state`.

fit -> `trainer.fit`; predict -> `network.predict_set_cells`; save / load -> one model folder (`model.json`,
weights, features, and the frozen encoder for latent input).
"""

import dataclasses
import json
import pathlib
import time
from typing import Literal

import anndata as ad
import equinox as eqx
import jax
import numpy as np

from biojepac.errors import InputError
from biojepac.features import DEFAULT_FEATURES
from biojepac.models.state import trainer
from biojepac.models.saved import save_model_dir
from biojepac.models.state.network import StateConfig, StateMeta, StateTransition, predict_set_cells

StatePreset = Literal["tiny", "cpu-small", "paper", "state_sm", "state", "state_lg"]
"""The shared presets plus arc-state's size names (`trainer.PRESETS`; paper = state_sm)."""

KIND = "state"
"""The `kind` written to `model.json`, which `biojepac predict` dispatches on."""


class StateModel:
    """`PerturbationModel` adapter: fit on a screen, predict sets, save / load with `model.json`."""

    name = KIND

    def __init__(self, cfg: StateConfig = StateConfig(), features=None, train_cfg=None, encoder=None):
        """`features`: a `biojepac.features` provider, a dict gene -> vector, or None for one-hot over the
        training perturbations. `train_cfg`: a ``trainer.FitConfig`` (None: its defaults).
        `encoder`: for latent input, an object with `encode(x_ng) -> latents` and `save(dpath)`."""
        self.cfg, self.features, self.train_cfg, self.encoder = cfg, features, train_cfg, encoder
        self.net: StateTransition | None = None
        self.meta: StateMeta | None = None
        self.prior = None
        """`models.jepa.prior.Prior` in expression space when cfg.prior is "ridge"."""

    def fit(self, train: ad.AnnData) -> "StateModel":
        self.net, self.meta, self.features, self.prior = trainer.fit(train, self.cfg, self.features, self.train_cfg,
                                                                     self.encoder)
        return self

    def predict(self, controls: np.ndarray, target_gene: str, context: str, seed: int,
                batches: np.ndarray | None = None) -> np.ndarray:
        """Predicted cells, one per control. `batches`: each control's batch label; it picks the batch token
        (a batch not seen in training, or None, uses the "unknown" row)."""
        x_ng, pert_p, ctx = self._inputs(controls, target_gene, context)
        prior_g = self._prior_shift(target_gene, context)
        if prior_g is not None and not self.meta.use_residual:  # the held-out check chose the prior alone
            return np.clip(x_ng + prior_g, 0.0, None).astype(np.float32)
        return predict_set_cells(self.net, x_ng, pert_p, ctx, self.cfg.set_size, seed, self._batch_rows(batches, len(x_ng)),
                                 prior_g=prior_g)

    def predict_windows(self, controls: np.ndarray, target_gene: str, context: str, batches: np.ndarray) -> np.ndarray:
        """Predicted cells with sentences of S consecutive controls (the last shorter), as `state tx infer` forms them."""
        x_ng, pert_p, ctx = self._inputs(controls, target_gene, context)
        return predict_set_cells(self.net, x_ng, pert_p, ctx, self.cfg.set_size, 0, self._batch_rows(batches, len(x_ng)),
                                 windows="as-given", prior_g=self._prior_shift(target_gene, context))

    def _prior_shift(self, target_gene: str, context: str) -> np.ndarray | None:
        """The prior's expression shift for this perturbation in this context (None without a prior)."""
        if self.prior is None:
            return None
        return self.prior.shift([target_gene], context, self.features)[0]

    def _inputs(self, controls: np.ndarray, target_gene: str, context: str) -> tuple[np.ndarray, np.ndarray, int]:
        assert self.net is not None and self.meta is not None, "fit or load the model first"
        controls = np.asarray(controls, np.float32)
        if controls.shape[1] != len(self.meta.genes):
            raise InputError(f"controls have {controls.shape[1]} genes; the state model was fitted on "
                             f"{len(self.meta.genes)}")
        if self.features.missing([target_gene]) and getattr(self.features, "fallback", "error") == "error":
            raise InputError(f"state model: no perturbation feature for {target_gene!r} in "
                             f"{self.meta.features.get('name', 'its feature table')}")
        x_ng = controls if self.encoder is None else np.asarray(self.encoder.encode(controls), np.float32)
        pert_p = self.features.vectors([target_gene])[0]
        ctx = self.meta.contexts.index(context) + 1 if context in self.meta.contexts else 0
        return x_ng, pert_p, ctx

    def _batch_rows(self, batches: np.ndarray | None, n: int) -> np.ndarray:
        """Batch-table row of each cell: 1 + its index among the training batches, 0 ("unknown") otherwise."""
        if batches is None:
            return np.zeros(n, np.int32)
        index = {b: i + 1 for i, b in enumerate(self.meta.batches)}
        return np.asarray([index.get(str(b), 0) for b in batches], np.int32)

    def save(self, dpath: pathlib.Path) -> pathlib.Path:
        assert self.net is not None and self.meta is not None, "fit the model before saving it"
        meta = dataclasses.asdict(self.meta)
        config, genes = meta.pop("config"), meta.pop("genes")

        def write(tmp: pathlib.Path) -> dict:
            eqx.tree_serialise_leaves(tmp / "weights.eqx", self.net)
            self.features.save(tmp / "features.npz")
            if self.prior is not None:
                np.savez(tmp / "prior.npz", **self.prior.arrays())
            if self.encoder is not None:
                self.encoder.save(tmp / "encoder")
            return meta

        return save_model_dir(dpath, KIND, config, genes, write)


def load(dpath: pathlib.Path, meta: dict) -> StateModel:
    """Rebuild a saved `StateModel` from its folder and `model.json` (`meta`, read by `registry.load`)."""
    from biojepac.features.base import GeneTable

    dpath = pathlib.Path(dpath)
    raw = {k: v for k, v in meta.items() if k not in ("kind", "format_version")}
    cfg = StateConfig(**raw.pop("config"))
    meta = StateMeta(config=cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    like = StateTransition(cfg, meta.n_in, len(meta.genes), meta.pert_dim, len(meta.contexts),
                           len(meta.batches), key=jax.random.PRNGKey(0))
    encoder = None
    if cfg.cell_input == "latent":
        from biojepac.models.state.latent import JepaCellEncoder

        encoder = JepaCellEncoder(dpath / "encoder")
    model = StateModel(cfg, GeneTable.load(dpath / "features.npz"), encoder=encoder)
    model.net, model.meta = eqx.tree_deserialise_leaves(dpath / "weights.eqx", like), meta
    if cfg.prior != "none":
        from biojepac.models.jepa.prior import Prior

        with np.load(dpath / "prior.npz", allow_pickle=False) as npz:
            model.prior = Prior.from_arrays({k: npz[k] for k in npz.files})
    return model


@dataclasses.dataclass(frozen=True)
class TrainStateConfig:
    screen: pathlib.Path = pathlib.Path("train.h5ad")
    """Training screen (.h5ad, canonical schema; raw counts are normalised to log1p, recorded)."""
    split: pathlib.Path | None = None
    """Train on this split's training part (a `biojepac data split` JSON: its training perturbations plus
    every control cell); default: every cell of --screen."""
    run_dpath: pathlib.Path = pathlib.Path("runs/state")
    """Run folder: ckpt.eqx + metrics.jsonl while training (resumed when present), model/ when done."""
    preset: StatePreset = "cpu-small"
    """Model size and schedule: tiny | cpu-small | paper, or arc-state's state_sm | state | state_lg
    (paper = state_sm; see `trainer.PRESETS`)."""
    features: str = DEFAULT_FEATURES
    """Perturbation features: a `biojepac.features.make_provider` spec (varm|expr|go, expr|go, go, onehot, file:PATH);
    the default works for perturbations unseen in training, which onehot cannot embed."""
    steps_scale: float = 1.0
    """Multiply the preset's training steps (quick runs: 0.1)."""
    set_size: int = 0
    """Override the preset's cells per sentence (0: keep)."""
    pseudobulk_weight: float = 0.0
    """Weight of the pseudobulk MSE added to the energy loss."""
    seed: int = 0
    """Seed of initialisation and sampling."""
    encoder: pathlib.Path | None = None
    """A saved BioJEPAC model folder: train on its encoder's pooled cell latents (STATE's SE role) instead of HVGs."""
    progress: bool = True
    """Show a progress bar."""
    bf16: bool = False
    """Compute in bfloat16 with float32 master weights (slower than float32 on a CPU and, measured, on an H200)."""
    overwrite: bool = False
    """Empty the run folder and start afresh (default: resume a run made with the same settings and data,
    refuse one made with others)."""


def train(cfg: TrainStateConfig) -> StateModel:
    """`biojepac train state`: fit from a preset and save the model to run_dpath/model."""
    from biojepac.data.fingerprint import file_digest, screen_fingerprint
    from biojepac.data.load import read_training_screen
    from biojepac.data.splits import training_part
    from biojepac.models.base import scale_steps
    from biojepac.train.run_folder import open_run

    model_cfg, fit_cfg = trainer.PRESETS[cfg.preset]
    model_cfg = dataclasses.replace(model_cfg, pseudobulk_weight=cfg.pseudobulk_weight,
                                    set_size=cfg.set_size or model_cfg.set_size,
                                    cell_input="latent" if cfg.encoder else "expression")
    fit_cfg = dataclasses.replace(fit_cfg, n_steps=scale_steps(fit_cfg.n_steps, cfg.steps_scale), seed=cfg.seed,
                                  run_dpath=cfg.run_dpath, progress=cfg.progress, bf16=cfg.bf16)
    adata = training_part(read_training_screen(cfg.screen), cfg.split, cfg.screen)
    settings = {k: getattr(cfg, k) for k in ("preset", "features", "steps_scale", "set_size", "pseudobulk_weight", "bf16", "seed")}
    inputs = {"data": screen_fingerprint(adata), "encoder": None if cfg.encoder is None else file_digest(cfg.encoder / "model.json")}
    open_run(cfg.run_dpath, "train state", {**settings, **inputs}, cfg.overwrite)
    t0 = time.perf_counter()
    encoder = None
    if cfg.encoder is not None:
        from biojepac.models.state.latent import JepaCellEncoder

        encoder = JepaCellEncoder(cfg.encoder)
    model = StateModel(model_cfg, cfg.features, fit_cfg, encoder=encoder).fit(adata)
    model.save(cfg.run_dpath / "model")
    summary = {"train_s": time.perf_counter() - t0, "n_cells": adata.n_obs, "n_genes": adata.n_vars,
               "preset": cfg.preset, "model_dpath": str(cfg.run_dpath / "model")}
    print(json.dumps(summary))
    return model
