"""The ST model trained from backed shards: combined screens (`biojepac data combine`) larger than memory.

The same network, loss (the combined screen's missing-gene mask included), loop, checkpoints and saved
model as `trainer.fit`; what changes is where cell sentences come from: `data.stream.CellStream` with
`kind="sentences"` reads S perturbed cells of one (context, batch, target) and S controls of that context
and batch, block by block, so memory does not grow with the shards.

Perturbation features must not need the expression in memory: `go`, `onehot`, `esm`, `file:PATH` (not
`expr`). A perturbation without a vector gets zeros (and a warning), since its cells cannot be skipped
cheaply in a stream.
"""

import dataclasses
import json
import pathlib
import time
import warnings

import anndata as ad
import jax
import numpy as np
import pandas as pd

from biojepac.data import schema
from biojepac.data.fingerprint import shards_fingerprint
from biojepac.data.stream import CellStream, StreamConfig
from biojepac.errors import InputError
from biojepac.features import make_provider
from biojepac.models.base import scale_steps
from biojepac.models.state import trainer
from biojepac.models.state.model import StatePreset, StateModel
from biojepac.models.state.network import StateMeta, StateTransition
from biojepac.train.loop import LoopConfig, make_state, make_train_step, run_loop
from biojepac.train.run_folder import open_run


@dataclasses.dataclass(frozen=True)
class StreamedStateConfig:
    shards: tuple[str, ...] = ()
    """Backed log1p .h5ad / .zarr shards with identical genes (`biojepac data combine` or `data prepare-ooc` output);
    a folder of .h5ad shards (`data combine --shard-cells`) stands for all of them."""
    run_dpath: pathlib.Path = pathlib.Path("runs/state_stream")
    """Run folder: ckpt.eqx + metrics.jsonl while training (resumed when present), model/ when done."""
    preset: StatePreset = "cpu-small"
    """Model size and schedule (as `train state`)."""
    features: str = "go"
    """Perturbation features: a spec that needs no expression in memory (go, onehot, esm, file:PATH)."""
    steps_scale: float = 1.0
    """Multiply the preset's training steps."""
    set_size: int = 0
    """Override the preset's cells per sentence (0: keep)."""
    block_rows: int = 1024
    """Loader: contiguous rows per read (the shuffle unit)."""
    window_blocks: int = 16
    """Loader: blocks shuffled together (memory ~ 2 windows)."""
    seed: int = 0
    """Seeds initialisation, label dropout and data order."""
    progress: bool = True
    """Show a progress bar."""
    overwrite: bool = False
    """Empty the run folder and start afresh (default: resume a run made with the same settings and shards,
    refuse one made with others)."""


def train_state_streamed(cfg: StreamedStateConfig) -> StateModel:
    if any(part.split(":")[0] in ("expr", "expr-cells", "varm") for alt in cfg.features.split("+") for part in alt.split("|")):
        raise InputError(f"--features {cfg.features!r}: streamed training cannot build features from the expression; "
                         "use go, onehot, esm or file:PATH")
    model_cfg, fit_cfg = trainer.PRESETS[cfg.preset]
    # No closed-form prior: it needs every group's mean, which a stream does not give up front.
    model_cfg = dataclasses.replace(model_cfg, set_size=cfg.set_size or model_cfg.set_size, prior="none")
    fit_cfg = dataclasses.replace(fit_cfg, n_steps=scale_steps(fit_cfg.n_steps, cfg.steps_scale), seed=cfg.seed)
    stream = CellStream(StreamConfig(shard_fpaths=tuple(cfg.shards), kind="sentences", cell_repr="dense",
                                     batch_size=fit_cfg.batch_size, sentence_len=model_cfg.set_size,
                                     block_rows=cfg.block_rows, window_blocks=cfg.window_blocks, seed=cfg.seed + 1))
    settings = {k: getattr(cfg, k) for k in ("preset", "features", "steps_scale", "set_size", "block_rows", "window_blocks",
                                             "seed")}
    open_run(cfg.run_dpath, "train state-stream", {**settings, "data": shards_fingerprint(stream.shards, stream.gene_names)},
             cfg.overwrite)
    targets = stream.labels[schema.PERT_COL][0]
    contexts, batches = stream.labels[schema.CONTEXT_COL][0], stream.labels[schema.BATCH_COL][0]
    perts = [str(t) for t in targets if t != schema.CONTROL]
    features = make_provider(cfg.features, ad.AnnData(obs=pd.DataFrame({schema.PERT_COL: perts}, index=perts)))
    missing = features.missing(perts)
    if missing:
        warnings.warn(f"state (streamed): {len(missing)} perturbations have no {cfg.features!r} features "
                      f"({missing[:10]}); they get zero vectors")
        features = features.with_options(fallback="zeros")
    pert_table = np.zeros((len(targets), features.dim), np.float32)
    is_pert = targets != schema.CONTROL
    pert_table[is_pert] = features.vectors(list(targets[is_pert]))

    def get_batch(step: int) -> dict[str, np.ndarray]:
        b = stream.batch_at(step)
        out = {"ctrl": b["ctrl_x"], "target": b["pert_x"], "target_expr": b["pert_x"], "pert": pert_table[b["target"]],
               "context": b["context"] + 1, "batch": b["batch"] + 1}  # +1: row 0 is "unknown"
        if "gene_mask" in b:
            out["gene_mask"] = b["gene_mask"]
        return out

    n_genes = stream.n_genes
    key_init, key_loop = jax.random.split(jax.random.PRNGKey(cfg.seed))
    net = StateTransition(model_cfg, n_genes, n_genes, features.dim, len(contexts), len(batches), key=key_init)
    optim = trainer.make_optimizer(fit_cfg)
    state = make_state(net, optim, key_loop)
    fit_settings = {k: v for k, v in dataclasses.asdict(fit_cfg).items() if k not in ("run_dpath", "progress")}
    header = {"model": "state", "streamed": True, "config": dataclasses.asdict(model_cfg), "fit": fit_settings,
              "data": shards_fingerprint(stream.shards, stream.gene_names), "features": features.describe()}
    loop_cfg = LoopConfig(n_steps=fit_cfg.n_steps, log_every=max(1, min(50, fit_cfg.n_steps // 10)),
                          ckpt_every=max(1, min(500, fit_cfg.n_steps)), progress=cfg.progress)
    t0 = time.perf_counter()
    state = run_loop(state, make_train_step(trainer.make_loss_fn(model_cfg), optim), get_batch, loop_cfg,
                     pathlib.Path(cfg.run_dpath), header=header, desc="state(stream)")
    model = StateModel(model_cfg, features)
    model.net = state.params
    model.meta = StateMeta(config=model_cfg, genes=tuple(map(str, stream.gene_names)), contexts=tuple(map(str, contexts)),
                           batches=tuple(map(str, batches)), n_in=n_genes, pert_dim=features.dim, features=features.describe())
    model.save(pathlib.Path(cfg.run_dpath) / "model")
    print(json.dumps({"train_s": round(time.perf_counter() - t0, 2), "n_cells": stream.n_rows, "n_genes": n_genes,
                      "n_steps": fit_cfg.n_steps, "masked": stream.gene_mask_table is not None,
                      "model_dpath": str(pathlib.Path(cfg.run_dpath) / "model")}))
    return model
