"""BioJEPAC's four training stages on top of the shared loop, and `biojepac train biojepac`.

    pretrain  JEPA: student on masked cells, EMA teacher on full cells (all cells, no labels)
    compose   action composer with InfoNCE over perturbation descriptions
    predict   action-conditioned predictor on (control, perturbation, perturbed) triples
    decode    latents -> log-normalised expression on frozen teacher latents

Each stage checkpoints into `run_dpath/<stage>/` and resumes there; a finished stage is only reloaded,
so `--stage all` after a crash continues where it stopped. `fit_biojepac` is the in-Python entry point.
"""

import dataclasses
import functools
import pathlib
import tempfile
from typing import Literal

import anndata as ad
import jax
import numpy as np
import optax
import scipy.sparse as sp

from biojepac.data.schema import BATCH_COL, CONTEXT_COL, CONTROL, PERT_COL, PERT_TYPE_COL, split_combo
from biojepac.errors import InputError
from biojepac.models.jepa import stages
from biojepac.models.jepa.config import (
    BioJepacConfig, ComposeConfig, DecodeConfig, EncoderConfig, PredictConfig, PretrainConfig, get_preset,
)
from biojepac.models.jepa.jepa_predictor import MaskPredictor
from biojepac.models.jepa.model import BioJepacModel, Modules, log_library, make_modules, mode_index
from biojepac.train import ema, loop

STAGES = ("pretrain", "compose", "predict", "decode")


@dataclasses.dataclass(frozen=True)
class TrainBiojepacConfig:
    data_fpath: pathlib.Path = pathlib.Path("screen.h5ad")
    """Canonical log1p-normalised training screen (.h5ad)."""
    run_dpath: pathlib.Path = pathlib.Path("runs/biojepac")
    """Run folder: one checkpoint + metrics.jsonl per stage, and the final model in `model/`."""
    stage: Literal["pretrain", "compose", "predict", "decode", "all"] = "all"
    """Which stage to train (earlier stages must be finished in run_dpath)."""
    preset: Literal["tiny", "cpu-small", "report"] = "cpu-small"
    """Model sizes and step counts."""
    features_fpath: pathlib.Path | None = None
    """Gene features (.npz with `labels`, `matrix`). Default: `varm['network_features']`, else expression-derived."""
    steps_scale: float = 1.0
    """Multiply every stage's step count (quick runs: 0.1)."""
    seed: int = 0
    """Seeds initialisation, masks, batch order and pairing."""
    progress: bool = True
    """Show progress bars."""
    wandb_project: str = ""
    """Also log to this wandb project (needs the wandb extra)."""
    params_only: bool = False
    """Only print parameter counts for the preset (report preset: vs the report's) and exit."""


@dataclasses.dataclass
class Screen:
    """A training screen as dense arrays; perturbation 0 is the control (zero features)."""

    genes: list[str]
    x_cg: np.ndarray
    lib_c: np.ndarray
    pert_c: np.ndarray
    mode_c: np.ndarray
    feat_pf: np.ndarray
    gene_table: dict[str, np.ndarray]
    ctrl_pick: tuple[np.ndarray, np.ndarray]  # per cell: offset, count into `ctrl_order`
    ctrl_order: np.ndarray


def config_from_dict(d: dict) -> BioJepacConfig:
    subs = {"encoder": EncoderConfig, "pretrain": PretrainConfig, "compose": ComposeConfig, "predict": PredictConfig, "decode": DecodeConfig}
    return BioJepacConfig(**{k: subs[k](**v) if k in subs else v for k, v in d.items()})


def gene_table_from(features, adata: ad.AnnData, n_dims: int = 32) -> dict[str, np.ndarray]:
    """Accept a gene -> vector dict, a (labels, matrix) pair, or None (varm features, else expression PCA)."""
    if isinstance(features, dict):
        return {str(k): np.asarray(v, np.float32) for k, v in features.items()}
    if isinstance(features, tuple):
        labels, matrix = features
        return {str(g): np.asarray(row, np.float32) for g, row in zip(labels, matrix)}
    if hasattr(features, "keys") and hasattr(features, "matrix"):  # a biojepac.features GeneTable
        return {str(k): np.asarray(row, np.float32) for k, row in zip(features.keys, features.matrix)}
    assert features is None, f"unsupported features type {type(features)}"
    if "network_features" in adata.varm:
        return dict(zip(adata.var_names, np.asarray(adata.varm["network_features"], np.float32)))
    # Expression-derived: each gene's loadings on the top principal components of control cells.
    x = adata.X[(adata.obs[PERT_COL] == CONTROL).to_numpy()]
    x = np.asarray(x.toarray() if sp.issparse(x) else x, np.float64)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    k = min(n_dims, len(s))
    return dict(zip(adata.var_names, (vt[:k].T * s[:k] / np.sqrt(len(x))).astype(np.float32)))


def prepare_screen(adata: ad.AnnData, features) -> Screen:
    for col in (PERT_COL, CONTEXT_COL, BATCH_COL):
        if col not in adata.obs:
            raise InputError(f"training screen lacks obs column {col!r}")
    obs = adata.obs
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    table = gene_table_from(features, adata)
    labels = [CONTROL] + sorted(set(obs[PERT_COL].astype(str)) - {CONTROL})
    tmp = BioJepacModel()
    tmp.gene_table = table
    missing = sorted({p for g in labels[1:] for p in split_combo(g) if p != CONTROL and p not in table})
    if missing:
        raise InputError(f"biojepac: {len(missing)} training perturbation genes have no features: {missing[:20]}; "
                         "choose a feature source that covers them, or drop those perturbations")
    feat = np.stack([np.zeros_like(next(iter(table.values())))] + [tmp.pert_vector(g) for g in labels[1:]])
    pert_c = np.searchsorted(np.asarray(labels[1:]), obs[PERT_COL].astype(str).to_numpy()) + 1
    pert_c[(obs[PERT_COL] == CONTROL).to_numpy()] = 0
    modes = obs[PERT_TYPE_COL].astype(str).map(mode_index).to_numpy() if PERT_TYPE_COL in obs else np.zeros(len(obs), int)
    # Control pairing: a control from the same context+batch, else the same context, else any control.
    # Controls sorted by (context, group) make every such pool one contiguous slice of `order`.
    is_ctrl = pert_c == 0
    if not is_ctrl.any():
        raise InputError(f"training screen has no {CONTROL!r} cells in obs column {PERT_COL!r}")
    ctx = obs[CONTEXT_COL].astype(str).to_numpy()
    group = ctx + "|" + obs[BATCH_COL].astype(str).to_numpy()
    order = np.flatnonzero(is_ctrl)[np.lexsort((group[is_ctrl], ctx[is_ctrl]))]
    offset, count = np.zeros(len(obs), int), np.full(len(obs), len(order))
    for keys in (ctx, group):  # finer levels overwrite coarser ones where they have controls
        sorted_keys = keys[order]
        lo, hi = np.searchsorted(sorted_keys, keys, "left"), np.searchsorted(sorted_keys, keys, "right")
        has = hi > lo
        offset[has], count[has] = lo[has], (hi - lo)[has]
    x32 = x.astype(np.float32)
    return Screen(list(map(str, adata.var_names)), x32, log_library(x32), pert_c, modes, feat, table, (offset, count), order)


def make_optim(lr: float, n_steps: int) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, n_steps // 20), max(n_steps, 2), lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-4))


def run_stage(name, params, extra, loss_fn, update_extra, get_batch, n_steps, lr, seed, run_dpath, progress, wandb_project=""):
    optim = make_optim(lr, n_steps)
    state = loop.make_state(params, optim, jax.random.PRNGKey(seed), extra)
    step_fn = loop.make_train_step(loss_fn, optim, update_extra)
    cfg = loop.LoopConfig(n_steps=n_steps, log_every=max(1, min(50, n_steps // 10)), ckpt_every=max(50, n_steps // 5), progress=progress, wandb_project=wandb_project)
    return loop.run_loop(state, step_fn, get_batch, cfg, run_dpath / name, header={"stage": name}, desc=name)


def fit_biojepac(
    train_adata: ad.AnnData, features, cfg: BioJepacConfig, run_dpath: pathlib.Path | None = None,
    only_stage: str | None = None, progress: bool = False, wandb_project: str = "", steps_scale: float = 1.0,
) -> BioJepacModel:
    """Train every stage (or only `only_stage`, loading the earlier ones) and return the fitted model."""
    if run_dpath is None:
        with tempfile.TemporaryDirectory() as tmp:
            return fit_biojepac(train_adata, features, cfg, pathlib.Path(tmp), only_stage, progress, wandb_project, steps_scale)
    run_dpath = pathlib.Path(run_dpath)
    scr = prepare_screen(train_adata, features)
    n_cells, n_genes, feat_dim = len(scr.x_cg), len(scr.genes), scr.feat_pf.shape[1]
    k_mods, k_pred = jax.random.split(jax.random.PRNGKey(cfg.seed))
    mods = make_modules(n_genes, feat_dim, cfg, k_mods)
    steps = lambda n: max(1, int(round(n * steps_scale)))
    cell_batch = lambda bs, seed: functools.partial(_cell_batch, scr, loop.EpochSampler(n_cells, min(bs, n_cells), seed))

    def skip(name: str) -> bool:
        """Past `only_stage`: stop. Before it: the stage must be finished (it is then only reloaded)."""
        if only_stage is None or name == only_stage:
            return False
        if STAGES.index(name) > STAGES.index(only_stage):
            return True
        if not (run_dpath / name / "ckpt.eqx").exists():
            raise InputError(f"{run_dpath / name} has no checkpoint; run --stage {name} first")
        return False

    skip("pretrain")  # raises if a later stage was asked for before pretraining
    c = cfg.pretrain
    n_pre = steps(c.n_steps)
    predictor = MaskPredictor(cfg.encoder.d, c.pred_d, c.pred_layers, cfg.encoder.n_heads, k_pred, cfg.encoder.attention)
    momentum = lambda step: ema.ema_momentum(step, n_pre, c.ema_start, c.ema_end)
    st = run_stage(
        "pretrain", (mods.student, predictor), mods.student, functools.partial(stages.pretrain_loss, cfg=c),
        lambda p, teacher, step: ema.ema_update(teacher, p[0], momentum(step)),
        cell_batch(c.batch_size, cfg.seed + 1), n_pre, c.lr, cfg.seed + 11, run_dpath, progress, wandb_project,
    )
    student, teacher = st.params[0], st.extra
    if cfg.predict.control_encoder == "teacher":
        student = teacher  # the encoder that reads controls, in stage 3 and at prediction time

    if skip("compose"):
        return None
    c = cfg.compose
    genes = sorted(scr.gene_table)
    f_table = np.stack([scr.gene_table[g] for g in genes])
    mode = int(np.bincount(scr.mode_c).argmax())
    sampler = loop.EpochSampler(len(genes), min(c.batch_size, len(genes)), cfg.seed + 2)
    get = lambda step: {"gene": f_table[sampler(step)], "mode": np.full(sampler.batch_size, mode, np.int32)}
    st = run_stage(
        "compose", mods.composer, None, functools.partial(stages.compose_loss, cfg=c, modalities=("gene",)), None,
        get, steps(c.n_steps), c.lr, cfg.seed + 12, run_dpath, progress, wandb_project,
    )
    composer = st.params

    if skip("predict"):
        return None
    c = cfg.predict
    params, extra = ((mods.predictor, composer), (student, teacher)) if c.finetune_composer else (mods.predictor, (student, teacher, composer))
    st = run_stage(
        "predict", params, extra, functools.partial(stages.predict_loss, cfg=c), None,
        functools.partial(_pair_batch, scr, loop.EpochSampler(n_cells, min(c.batch_size, n_cells), cfg.seed + 3), cfg.seed + 4),
        steps(c.n_steps), c.lr, cfg.seed + 13, run_dpath, progress, wandb_project,
    )
    predictor, composer = st.params if c.finetune_composer else (st.params, composer)

    if skip("decode"):
        return None
    c = cfg.decode
    st = run_stage(
        "decode", mods.decoder, teacher, stages.decode_loss, None, cell_batch(c.batch_size, cfg.seed + 5),
        steps(c.n_steps), c.lr, cfg.seed + 14, run_dpath, progress, wandb_project,
    )
    model = BioJepacModel(cfg)
    model.mods = Modules(student, composer, predictor, st.params)
    model.genes, model.gene_table, model.mode = scr.genes, scr.gene_table, mode
    return model


def _cell_batch(scr: Screen, sampler: loop.EpochSampler, step: int) -> dict:
    idx = sampler(step)
    return {"x": scr.x_cg[idx], "lib": scr.lib_c[idx]}


def _pair_batch(scr: Screen, sampler: loop.EpochSampler, seed: int, step: int) -> dict:
    """Target cells (perturbed and control) with a random matched control each, a pure function of step."""
    idx = sampler(step)
    offset, count = scr.ctrl_pick
    u = np.random.default_rng([seed, step]).random(len(idx))
    ctrl = scr.ctrl_order[offset[idx] + np.floor(u * count[idx]).astype(int)]
    return {
        "x_ctrl": scr.x_cg[ctrl], "lib_ctrl": scr.lib_c[ctrl], "x_pert": scr.x_cg[idx], "lib_pert": scr.lib_c[idx],
        "feat": scr.feat_pf[scr.pert_c[idx]], "mode": scr.mode_c[idx].astype(np.int32),
    }


def param_counts(cfg: BioJepacConfig, n_genes: int, feat_dim: int) -> dict[str, int]:
    mods = make_modules(n_genes, feat_dim, cfg, jax.random.PRNGKey(0))
    pred = MaskPredictor(cfg.encoder.d, cfg.pretrain.pred_d, cfg.pretrain.pred_layers, cfg.encoder.n_heads, jax.random.PRNGKey(1))
    return {
        "encoder": stages.count_params(mods.student),
        "jepa_predictor": stages.count_params(pred),
        "composer": stages.count_params(mods.composer),
        "action_predictor": stages.count_params(mods.predictor),
        "decoder": stages.count_params(mods.decoder),
    }


def train_biojepac(cfg: TrainBiojepacConfig) -> None:
    model_cfg = dataclasses.replace(get_preset(cfg.preset), seed=cfg.seed)
    if cfg.params_only:
        n_genes, feat_dim = (5000, 5120) if cfg.preset == "report" else (2000, 64)
        counts = param_counts(model_cfg, n_genes, feat_dim)
        print(f"preset {cfg.preset}, {n_genes} genes, {feat_dim}-dim gene features:")
        for name, n in counts.items():
            print(f"  {name:<18} {n:>12,}")
        if cfg.preset == "report":
            print("report: JEPA 6,019,840  AC 7,881,216  Pert 882,880 (see docs/biojepac.md)")
        return
    if not cfg.data_fpath.exists():
        raise InputError(f"training screen not found: {cfg.data_fpath}")
    adata = ad.read_h5ad(cfg.data_fpath)
    features = None
    if cfg.features_fpath is not None:
        if not cfg.features_fpath.exists():
            raise InputError(f"features file not found: {cfg.features_fpath}")
        npz = np.load(cfg.features_fpath)
        features = (npz["labels"].tolist(), npz["matrix"])
    only = None if cfg.stage == "all" else cfg.stage
    model = fit_biojepac(adata, features, model_cfg, cfg.run_dpath, only, cfg.progress, cfg.wandb_project, cfg.steps_scale)
    if model is not None:
        model.save(cfg.run_dpath / "model")
        print(f"biojepac: model written to {cfg.run_dpath / 'model'}")
