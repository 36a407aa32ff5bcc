"""BioJEPAC's four training stages on top of the shared loop, one function each.

    pretrain  JEPA: student on masked cells, EMA teacher on full cells (all cells, no labels)
    compose   action composer with InfoNCE over perturbation descriptions
    predict   action-conditioned predictor on (control, perturbation, perturbed) triples
    decode    latents -> log-normalised expression on frozen teacher latents

Each stage checkpoints into `run_dpath/<stage>/` and resumes there; a finished stage is only reloaded,
so `--stage all` after a crash continues where it stopped. `fit_biojepac` runs them in order.
"""

import dataclasses
import functools
import pathlib
import tempfile

import anndata as ad
import jax
import numpy as np
import optax
import scipy.sparse as sp

from biojepac.data.pairing import control_slices
from biojepac.data.schema import BATCH_COL, CONTEXT_COL, CONTROL, PERT_COL, PERT_TYPE_COL
from biojepac.errors import InputError
from biojepac.features import resolve_features
from biojepac.features.base import GeneTable
from biojepac.models.jepa import stages
from biojepac.models.jepa.config import BioJepacConfig
from biojepac.models.jepa.jepa_predictor import MaskPredictor
from biojepac.models.jepa.network import Modules, log_library, make_modules, mode_index
from biojepac.train import ema, loop

STAGES = ("pretrain", "compose", "predict", "decode")


@dataclasses.dataclass
class Screen:
    """A training screen as dense arrays; perturbation 0 is the control (zero features)."""

    genes: list[str]
    x_cg: np.ndarray
    lib_c: np.ndarray
    pert_c: np.ndarray
    mode_c: np.ndarray
    feat_pf: np.ndarray
    features: GeneTable
    ctrl_pick: tuple[np.ndarray, np.ndarray]  # per cell: offset, count into `ctrl_order`
    ctrl_order: np.ndarray


@dataclasses.dataclass
class Fitted:
    """What training produces: the modules plus what prediction needs to use them."""

    mods: Modules
    genes: list[str]
    features: GeneTable
    mode: int


def default_features(adata: ad.AnnData) -> GeneTable:
    """`varm['network_features']` when the screen has them (a synthetic screen), else the default spec of
    every model, `biojepac.features.DEFAULT_FEATURES` (`expr|go`: the screen's gene embedding where the
    target is measured, GO mapped into it where not)."""
    from biojepac.features import DEFAULT_FEATURES, make_provider

    if "network_features" in adata.varm:
        return GeneTable(name="varm:network_features", keys=tuple(map(str, adata.var_names)),
                         matrix=np.asarray(adata.varm["network_features"], np.float32), source="training screen varm")
    return make_provider(DEFAULT_FEATURES, adata)


def prepare_screen(adata: ad.AnnData, features: GeneTable) -> Screen:
    for col in (PERT_COL, CONTEXT_COL, BATCH_COL):
        if col not in adata.obs:
            raise InputError(f"training screen lacks obs column {col!r}")
    obs = adata.obs
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    labels = [CONTROL] + sorted(set(obs[PERT_COL].astype(str)) - {CONTROL})
    missing = features.missing(labels[1:])
    if missing and features.fallback == "error":
        raise InputError(f"biojepac: {len(missing)} training perturbation genes have no features in "
                         f"{features.name!r}: {missing[:20]}; choose a feature source that covers them, or drop those perturbations")
    feat = features.vectors(labels)  # the control label maps to the zero vector
    pert_c = np.searchsorted(np.asarray(labels[1:]), obs[PERT_COL].astype(str).to_numpy()) + 1
    pert_c[(obs[PERT_COL] == CONTROL).to_numpy()] = 0
    modes = obs[PERT_TYPE_COL].astype(str).map(mode_index).to_numpy() if PERT_TYPE_COL in obs else np.zeros(len(obs), int)
    # Control pairing by the one rule (`data.pairing.control_slices`): same context and batch, else same
    # context (warned), never another context; each cell's pool is a contiguous slice of `order`.
    pools = control_slices(obs[CONTEXT_COL], obs[BATCH_COL], pert_c == 0, "biojepac: training screen")
    order, offset, count = pools.order, pools.offset, pools.count
    x32 = x.astype(np.float32)
    return Screen(list(map(str, adata.var_names)), x32, log_library(x32), pert_c, modes, feat, features, (offset, count), order)


def make_optim(lr: float, n_steps: int) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, n_steps // 20), max(n_steps, 2), lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-4))


def run_stage(name, params, extra, loss_fn, update_extra, get_batch, n_steps, lr, seed, run_dpath, progress, wandb_project=""):
    optim = make_optim(lr, n_steps)
    state = loop.make_state(params, optim, jax.random.PRNGKey(seed), extra)
    step_fn = loop.make_train_step(loss_fn, optim, update_extra)
    cfg = loop.LoopConfig(n_steps=n_steps, log_every=max(1, min(50, n_steps // 10)), ckpt_every=max(50, n_steps // 5), progress=progress, wandb_project=wandb_project)
    return loop.run_loop(state, step_fn, get_batch, cfg, run_dpath / name, header={"stage": name}, desc=name)


@dataclasses.dataclass(frozen=True)
class Run:
    """What every stage shares: the screen, the config and where (and how verbosely) to train."""

    scr: Screen
    cfg: BioJepacConfig
    run_dpath: pathlib.Path
    progress: bool = False
    wandb_project: str = ""
    steps_scale: float = 1.0

    def steps(self, n: int) -> int:
        return max(1, int(round(n * self.steps_scale)))

    def cell_batches(self, batch_size: int, seed: int):
        n_cells = len(self.scr.x_cg)
        return functools.partial(_cell_batch, self.scr, loop.EpochSampler(n_cells, min(batch_size, n_cells), seed))

    def stage(self, name, params, extra, loss_fn, update_extra, get_batch, n_steps, lr, seed):
        return run_stage(name, params, extra, loss_fn, update_extra, get_batch, n_steps, lr, seed, self.run_dpath,
                         self.progress, self.wandb_project)


def fit_biojepac(
    train_adata: ad.AnnData, features: GeneTable | str | None, cfg: BioJepacConfig, run_dpath: pathlib.Path | None = None,
    only_stage: str | None = None, progress: bool = False, wandb_project: str = "", steps_scale: float = 1.0,
) -> Fitted | None:
    """Train every stage (or only `only_stage`, loading the earlier ones); None when stopped early."""
    if run_dpath is None:
        with tempfile.TemporaryDirectory() as tmp:
            return fit_biojepac(train_adata, features, cfg, pathlib.Path(tmp), only_stage, progress, wandb_project, steps_scale)
    run_dpath = pathlib.Path(run_dpath)
    features = resolve_features(features, train_adata)
    scr = prepare_screen(train_adata, features if features is not None else default_features(train_adata))
    run = Run(scr, cfg, run_dpath, progress, wandb_project, steps_scale)
    k_mods, k_pred = jax.random.split(jax.random.PRNGKey(cfg.seed))
    mods = make_modules(len(scr.genes), scr.feat_pf.shape[1], cfg, k_mods)

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
    student, teacher = train_pretrain(run, mods.student, k_pred)
    if cfg.predict.control_encoder == "teacher":
        student = teacher  # the encoder that reads controls, in stage 3 and at prediction time
    if skip("compose"):
        return None
    composer, mode = train_compose(run, mods.composer)
    if skip("predict"):
        return None
    predictor, composer = train_predict(run, mods.predictor, composer, student, teacher)
    if skip("decode"):
        return None
    decoder = train_decode(run, mods.decoder, teacher)
    return Fitted(Modules(student, composer, predictor, decoder), scr.genes, scr.features, mode)


def train_pretrain(run: Run, student, key: jax.Array):
    """Stage 1 -> (student, EMA teacher)."""
    cfg, c = run.cfg, run.cfg.pretrain
    n_steps = run.steps(c.n_steps)
    predictor = MaskPredictor(cfg.encoder.d, c.pred_d, c.pred_layers, cfg.encoder.n_heads, key, cfg.encoder.attention)
    momentum = lambda step: ema.ema_momentum(step, n_steps, c.ema_start, c.ema_end)
    st = run.stage(
        "pretrain", (student, predictor), student, functools.partial(stages.pretrain_loss, cfg=c),
        lambda p, teacher, step: ema.ema_update(teacher, p[0], momentum(step)),
        run.cell_batches(c.batch_size, cfg.seed + 1), n_steps, c.lr, cfg.seed + 11,
    )
    return st.params[0], st.extra


def train_compose(run: Run, composer):
    """Stage 2 -> (composer, the screen's most common perturbation mode)."""
    cfg, c, scr = run.cfg, run.cfg.compose, run.scr
    order = np.argsort(np.asarray(scr.features.keys))  # keys in sorted order: batches independent of file order
    f_table = scr.features.matrix[order]
    mode = int(np.bincount(scr.mode_c).argmax())
    sampler = loop.EpochSampler(len(f_table), min(c.batch_size, len(f_table)), cfg.seed + 2)
    get = lambda step: {"gene": f_table[sampler(step)], "mode": np.full(sampler.batch_size, mode, np.int32)}
    st = run.stage(
        "compose", composer, None, functools.partial(stages.compose_loss, cfg=c, modalities=("gene",)), None,
        get, run.steps(c.n_steps), c.lr, cfg.seed + 12,
    )
    return st.params, mode


def train_predict(run: Run, predictor, composer, student, teacher):
    """Stage 3 -> (action predictor, composer, fine-tuned when the config says so)."""
    cfg, c, scr = run.cfg, run.cfg.predict, run.scr
    if c.finetune_composer:
        params, extra = (predictor, composer), (student, teacher)
    else:
        params, extra = predictor, (student, teacher, composer)
    n_cells = len(scr.x_cg)
    batches = functools.partial(_pair_batch, scr, loop.EpochSampler(n_cells, min(c.batch_size, n_cells), cfg.seed + 3), cfg.seed + 4)
    st = run.stage("predict", params, extra, functools.partial(stages.predict_loss, cfg=c), None, batches,
                   run.steps(c.n_steps), c.lr, cfg.seed + 13)
    return st.params if c.finetune_composer else (st.params, composer)


def train_decode(run: Run, decoder, teacher):
    """Stage 4 -> decoder."""
    cfg, c = run.cfg, run.cfg.decode
    st = run.stage("decode", decoder, teacher, stages.decode_loss, None, run.cell_batches(c.batch_size, cfg.seed + 5),
                   run.steps(c.n_steps), c.lr, cfg.seed + 14)
    return st.params


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


