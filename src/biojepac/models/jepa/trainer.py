"""BioJEPAC's four training stages on top of the shared loop, one function each.

    pretrain  JEPA: student on masked cells, EMA teacher on full cells (all cells, no labels)
    decode    teacher latents -> log-normalised expression (the teacher frozen)
    compose   action composer with InfoNCE over perturbation descriptions
    predict   the closed-form latent prior (`prior.py`), then the action-conditioned predictor as a
              residual on it, trained on cell sets and kept only while held-out perturbations improve

Each stage checkpoints into `run_dpath/<stage>/` and resumes there; a finished stage is only reloaded,
so `--stage all` after a crash continues where it stopped. `fit_biojepac` runs them in order.
"""

import dataclasses
import functools
import json
import pathlib
import tempfile
import warnings

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp

from biojepac.data.pairing import ControlSlices, control_slices
from biojepac.data.combine import gene_masks
from biojepac.data.schema import BATCH_COL, CONTEXT_COL, CONTROL, PERT_COL, PERT_TYPE_COL, split_combo
from biojepac.data.fingerprint import screen_fingerprint
from biojepac.errors import InputError
from biojepac.features import resolve_features
from biojepac.features.base import GeneTable
from biojepac.models.jepa import stages
from biojepac.models.jepa.config import BioJepacConfig
from biojepac.io import write_text_atomic
from biojepac.models.jepa.jepa_predictor import MaskPredictor
from biojepac.models.jepa.prior import Prior, clearly_better, fit_screen_prior
from biojepac.models.jepa.network import Modules, log_library, make_modules, mode_index
from biojepac.train import checkpoint, ema, loop

STAGES = ("pretrain", "decode", "compose", "predict")
STAGE_SECTIONS = {"pretrain": ("encoder", "pretrain"), "decode": ("encoder", "pretrain", "decode"),
                  "compose": ("encoder", "pretrain", "decode", "compose"),
                  "predict": ("encoder", "pretrain", "decode", "compose", "predict", "decode_mode")}
"""Config sections each stage's result depends on (recorded in its checkpoint, compared on resume)."""


@dataclasses.dataclass
class Screen:
    """A training screen as dense arrays; perturbation 0 is the control (zero features)."""

    genes: list[str]
    x_cg: np.ndarray
    lib_c: np.ndarray
    pert_c: np.ndarray
    """Index into `pert_labels` (0: the control)."""
    pert_labels: list[str]
    ctx_c: np.ndarray
    """Context name of each cell."""
    mode_c: np.ndarray
    feat_pf: np.ndarray
    features: GeneTable
    controls: ControlSlices
    """Each cell's control pool (`data.pairing`'s one rule)."""
    gene_masks: tuple[np.ndarray, np.ndarray] | None = None
    """A combined screen's (per-cell dataset code, datasets x genes measured mask); None: every gene measured."""


@dataclasses.dataclass
class Fitted:
    """What training produces: the modules plus what prediction needs to use them."""

    mods: Modules
    genes: list[str]
    features: GeneTable
    mode: int
    prior: Prior
    contexts: list[str]
    use_residual: bool


def prepare_screen(adata: ad.AnnData, features: GeneTable) -> Screen:
    for col in (PERT_COL, CONTEXT_COL, BATCH_COL):
        if col not in adata.obs:
            raise InputError(f"training screen lacks obs column {col!r}")
    labels = [CONTROL] + sorted(set(adata.obs[PERT_COL].astype(str)) - {CONTROL})
    missing = set(features.missing(labels[1:])) if features.fallback == "error" else set()
    if missing:  # as the baselines do: such perturbations cannot be embedded, so they cannot teach the map
        lacking = sorted(lab for lab in labels[1:] if set(split_combo(lab)) & missing)
        if len(lacking) == len(labels) - 1:
            raise InputError(f"biojepac: no training perturbation has features in {features.name!r} "
                             f"(e.g. {lacking[:5]}); choose a feature source that covers them")
        warnings.warn(f"biojepac: {len(lacking)} training perturbations have no {features.name!r} features and are "
                      f"left out of training: {lacking[:10]}")
        adata = adata[~adata.obs[PERT_COL].astype(str).isin(lacking).to_numpy()]
        labels = [lab for lab in labels if lab not in lacking]
    obs = adata.obs
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    feat = features.vectors(labels)  # the control label maps to the zero vector
    pert_c = np.searchsorted(np.asarray(labels[1:]), obs[PERT_COL].astype(str).to_numpy()) + 1
    pert_c[(obs[PERT_COL] == CONTROL).to_numpy()] = 0
    modes = obs[PERT_TYPE_COL].astype(str).map(mode_index).to_numpy() if PERT_TYPE_COL in obs else np.zeros(len(obs), int)
    # Control pairing by the one rule: same context and batch, else same context (warned), never another.
    ctx = obs[CONTEXT_COL].astype(str).to_numpy()
    pools = control_slices(obs[CONTEXT_COL], obs[BATCH_COL], pert_c == 0, "biojepac: training screen")
    x32 = x.astype(np.float32)
    return Screen(list(map(str, adata.var_names)), x32, log_library(x32), pert_c, labels, ctx, modes, feat, features, pools,
                  gene_masks(obs, adata.var))


def make_optim(lr: float, n_steps: int, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, n_steps // 20), max(n_steps, 2), lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=weight_decay))


def run_stage(name, params, extra, loss_fn, update_extra, get_batch, n_steps, lr, seed, run_dpath, progress, wandb_project="",
              header=None):
    optim = make_optim(lr, n_steps)
    state = loop.make_state(params, optim, jax.random.PRNGKey(seed), extra)
    step_fn = loop.make_train_step(loss_fn, optim, update_extra)
    cfg = loop.LoopConfig(n_steps=n_steps, log_every=max(1, min(50, n_steps // 10)), ckpt_every=max(50, n_steps // 5),
                          progress=progress, wandb_project=wandb_project)
    return loop.run_loop(state, step_fn, get_batch, cfg, run_dpath / name, header={"stage": name, **(header or {})}, desc=name)


@dataclasses.dataclass(frozen=True)
class Run:
    """What every stage shares: the screen, the config and where (and how verbosely) to train."""

    scr: Screen
    cfg: BioJepacConfig
    run_dpath: pathlib.Path
    progress: bool = False
    wandb_project: str = ""
    steps_scale: float = 1.0
    header: dict = dataclasses.field(default_factory=dict)
    """The run's settings and data fingerprint, saved with every stage's checkpoint; a rerun into the same
    folder with other settings is refused by the loop instead of resuming someone else's weights."""

    def stage_header(self, name: str) -> dict:
        """The settings stage `name` depends on: its own config section and those of the stages before it
        (so a variant that changes only a later stage can reuse the earlier checkpoints)."""
        sections = STAGE_SECTIONS[name]
        config = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k in sections or k == "seed"}
        return {**self.header, "config": config}

    def steps(self, n: int) -> int:
        return max(1, int(round(n * self.steps_scale)))

    def cell_batches(self, batch_size: int, seed: int):
        n_cells = len(self.scr.x_cg)
        return functools.partial(_cell_batch, self.scr, loop.EpochSampler(n_cells, min(batch_size, n_cells), seed))

    def stage(self, name, params, extra, loss_fn, update_extra, get_batch, n_steps, lr, seed):
        return run_stage(name, params, extra, loss_fn, update_extra, get_batch, n_steps, lr, seed, self.run_dpath,
                         self.progress, self.wandb_project, self.stage_header(name))


def fit_biojepac(
    train_adata: ad.AnnData, features: GeneTable | str | None, cfg: BioJepacConfig, run_dpath: pathlib.Path | None = None,
    only_stage: str | None = None, progress: bool = False, wandb_project: str = "", steps_scale: float = 1.0,
) -> Fitted | None:
    """Train every stage (or only `only_stage`, loading the earlier ones); None when stopped early."""
    if run_dpath is None:
        with tempfile.TemporaryDirectory() as tmp:
            return fit_biojepac(train_adata, features, cfg, pathlib.Path(tmp), only_stage, progress, wandb_project, steps_scale)
    run_dpath = pathlib.Path(run_dpath)
    for name in STAGES[: STAGES.index(only_stage)] if only_stage is not None else ():  # before any work
        if not (run_dpath / name / "ckpt.eqx").exists():
            raise InputError(f"{run_dpath / name} has no checkpoint; run --stage {name} first")
    scr = prepare_screen(train_adata, resolve_features(features, train_adata))  # the default of every model
    header = {"steps_scale": steps_scale, "data": screen_fingerprint(train_adata), "features": scr.features.describe()}
    run = Run(scr, cfg, run_dpath, progress, wandb_project, steps_scale, header)
    assert cfg.encoder.token_mode == "all", "the predict stage reads every gene as a token (token_mode='all')"
    k_mods, k_pred = jax.random.split(jax.random.PRNGKey(cfg.seed))
    contexts = sorted(set(train_adata.obs[CONTEXT_COL].astype(str)))
    mods = make_modules(len(scr.genes), scr.feat_pf.shape[1], cfg, k_mods, len(contexts))

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
    _student, teacher = train_pretrain(run, mods.encoder, k_pred)
    if skip("decode"):
        return None
    decoder = train_decode(run, mods.decoder, teacher)
    if skip("compose"):
        return None
    stats = group_stats(scr, teacher)
    composer, mode = train_compose(run, mods.composer, stats, k_pred)
    if skip("predict"):
        return None
    # The prior is fitted in expression, on the measured pseudobulk deltas, and lifted to the latent shifts
    # that the decoder reads out as exactly those deltas (`lift_to_latent`): the teacher's own mean shifts
    # decode to them only approximately (r ~0.95 on the synthetic tasks), and that readout error would cost
    # the prior its accuracy in expression, where it is scored. Fitting in expression also keeps the saved
    # prior at genes, not genes x d, values per perturbation (18,080 x 64 floats each at the VCC's size).
    w_gd = np.asarray(decoder.w_gd)
    stats = dataclasses.replace(stats, delta_z=lift_to_latent(stats.delta_x, w_gd))
    prior, oos = fit_screen_prior(train_adata, stats.contexts, scr.features, select_transfer=cfg.predict.prior_select_transfer,
                                  lambda_by=cfg.predict.prior_lambda_by)
    prior_oos = np.stack([oos[(str(lab), int(c))] for lab, c in zip(stats.labels, stats.ctx)]).astype(np.float32)
    predictor, composer, use_residual = train_predict(run, mods.predictor, composer, teacher, decoder, stats,
                                                      lift_to_latent(prior_oos, w_gd))
    mods = Modules(teacher, composer, predictor, decoder)
    return Fitted(mods, scr.genes, scr.features, mode, prior, list(stats.contexts), use_residual)


def train_pretrain(run: Run, student, key: jax.Array):
    """Stage 1 -> (student, EMA teacher)."""
    cfg, c = run.cfg, run.cfg.pretrain
    n_steps = run.steps(c.n_steps)
    predictor = MaskPredictor(cfg.encoder.d, c.pred_d, c.pred_layers, cfg.encoder.n_heads, key, cfg.encoder.attention)
    cap = ema.momentum_cap(n_steps, c.ema_init_left)
    momentum = lambda step: jnp.minimum(ema.ema_momentum(step, n_steps, c.ema_start, c.ema_end), cap)
    st = run.stage(
        "pretrain", (student, predictor), student, functools.partial(stages.pretrain_loss, cfg=c),
        lambda p, teacher, step: ema.ema_update(teacher, p[0], momentum(step)),
        run.cell_batches(c.batch_size, cfg.seed + 1), n_steps, c.lr, cfg.seed + 11,
    )
    return st.params[0], st.extra


def train_compose(run: Run, composer, stats: "GroupStats", key: jax.Array):
    """Stage 2 -> (composer, the screen's most common perturbation mode).

    `response` (default): the composer learns to tell, from a perturbation's features alone, the main
    axes of its measured response: a linear head on its action latent regresses the top principal
    components of the training groups' pseudobulk deltas (standardised). `infonce`: InfoNCE between
    two feature-dropout views, which carries no biological information (kept for the ablation)."""
    cfg, c, scr = run.cfg, run.cfg.compose, run.scr
    mode = int(np.bincount(scr.mode_c).argmax())
    if c.objective == "infonce":
        order = np.argsort(np.asarray(scr.features.keys))  # keys in sorted order: batches independent of file order
        f_table = scr.features.matrix[order]
        sampler = loop.EpochSampler(len(f_table), min(c.batch_size, len(f_table)), cfg.seed + 2)
        get = lambda step: {"gene": f_table[sampler(step)], "mode": np.full(sampler.batch_size, mode, np.int32)}
        st = run.stage("compose", composer, None, functools.partial(stages.compose_loss, cfg=c, modalities=("gene",)),
                       None, get, run.steps(c.n_steps), c.lr, cfg.seed + 12)
        return st.params, mode
    y = stats.delta_x - stats.delta_x.mean(0)
    u, s, _ = np.linalg.svd(y, full_matrices=False)
    k = max(1, min(c.n_components, len(y) - 1))
    scores = (u[:, :k] * s[:k]) / np.maximum((u[:, :k] * s[:k]).std(0), 1e-12)
    feat = scr.features.vectors(list(stats.labels))
    head = eqx.nn.Linear(c.d_content, k, key=key)
    sampler = loop.EpochSampler(len(y), min(c.batch_size, len(y)), cfg.seed + 2)

    def get(step):
        idx = sampler(step)
        return {"gene": feat[idx], "mode": np.full(len(idx), mode, np.int32), "y": scores[idx].astype(np.float32)}

    st = run.stage("compose", (composer, head), None, stages.response_loss, None, get, run.steps(c.n_steps), c.lr,
                   cfg.seed + 12)
    return st.params[0], mode


LATENT_CACHE_MIB = 1024
"""`group_stats` keeps every cell's teacher token latents when they fit in this many MiB: the predict stage
then reads them instead of running the (frozen) teacher on a step's cells again."""


@dataclasses.dataclass
class GroupStats:
    """Per (perturbation, context) group of the training screen: mean teacher-latent and expression shifts
    against the context's controls, the cells behind them, and which genes each group perturbs."""

    labels: np.ndarray
    ctx: np.ndarray
    contexts: np.ndarray
    delta_z: np.ndarray  # (groups, genes, d)
    delta_x: np.ndarray  # (groups, genes)
    cells: list[np.ndarray]
    target: np.ndarray  # (groups, genes) 1 where the gene is one of the perturbed genes
    z_cgd: np.ndarray | None = None
    """Every cell's teacher token latents (cells, genes, d), when they fit in `LATENT_CACHE_MIB`."""


def group_stats(scr: Screen, teacher, chunk: int = 256, cache_mib: float = LATENT_CACHE_MIB) -> GroupStats:
    """One pass of the frozen teacher over every cell, summed per group with an indicator matrix."""
    ctx_names, ctx_c = np.unique(scr.ctx_c, return_inverse=True)
    key = scr.pert_c * len(ctx_names) + ctx_c
    uniq, group_c = np.unique(key, return_inverse=True)
    n_groups, n_cells = len(uniq), len(scr.x_cg)
    counts = np.bincount(group_c, minlength=n_groups)
    indicator = sp.csr_matrix((1.0 / counts[group_c], (group_c, np.arange(n_cells))), shape=(n_groups, n_cells))
    n_genes, d = scr.x_cg.shape[1], teacher.gene_emb.shape[1]
    z_cgd = np.empty((n_cells, n_genes, d), np.float32) if n_cells * n_genes * d * 4 <= cache_mib * 2**20 else None
    mean_z = np.zeros((n_groups, n_genes * d))
    for i in range(0, n_cells, chunk):
        z = teacher_latents(teacher, scr.x_cg[i : i + chunk], scr.lib_c[i : i + chunk], chunk)
        mean_z += indicator[:, i : i + len(z)] @ z.reshape(len(z), -1)
        if z_cgd is not None:
            z_cgd[i : i + len(z)] = z
    mean_x = indicator @ scr.x_cg.astype(np.float64)
    pert_g, ctx_g = uniq // len(ctx_names), uniq % len(ctx_names)
    is_ctrl = pert_g == 0
    ctrl_row = {c: r for r, (c, ctrl) in enumerate(zip(ctx_g, is_ctrl)) if ctrl}
    keep = np.flatnonzero(~is_ctrl & np.isin(ctx_g, list(ctrl_row)))
    ref = np.asarray([ctrl_row[c] for c in ctx_g[keep]], int)
    labels = np.asarray(scr.pert_labels)[pert_g[keep]]
    gene_index = {g: j for j, g in enumerate(scr.genes)}
    target = np.zeros((len(keep), n_genes), np.float32)
    for r, label in enumerate(labels):
        for part in split_combo(str(label)):
            if part in gene_index:
                target[r, gene_index[part]] = 1.0
    cells_of = np.split(np.argsort(group_c, kind="stable"), np.cumsum(counts)[:-1])  # each group's rows, in order
    return GroupStats(labels, ctx_g[keep], ctx_names, (mean_z[keep] - mean_z[ref]).reshape(len(keep), n_genes, d).astype(np.float32),
                      (mean_x[keep] - mean_x[ref]).astype(np.float32), [cells_of[g] for g in keep], target, z_cgd)


def teacher_latents(teacher, x_cg: np.ndarray, lib_c: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(cells, genes, d) token latents of the teacher, `chunk` cells per call (padded: one compiled shape)."""
    out = []
    for i in range(0, len(x_cg), chunk):
        x, pad = x_cg[i : i + chunk], (-len(x_cg[i : i + chunk])) % chunk
        z = _teacher_tokens(teacher, np.pad(x, ((0, pad), (0, 0))), np.pad(lib_c[i : i + chunk], (0, pad)))
        out.append(np.asarray(z)[: len(x)])
    return np.concatenate(out)


@dataclasses.dataclass(frozen=True)
class Latents:
    """The frozen teacher's token latents of the screen's cells, at chosen tokens: read from `group_stats`'
    cache, or (a screen too large for it) computed again for the cells asked for."""

    scr: Screen
    teacher: object
    z_cgd: np.ndarray | None

    def gather(self, cells_bs: np.ndarray, tok_bt: np.ndarray) -> np.ndarray:
        """(b, s, t, d): the latents of cells (b, s) at the gene tokens tok (b, t) of their row."""
        if self.z_cgd is not None:
            return self.z_cgd[cells_bs[:, :, None], tok_bt[:, None, :]]
        uniq, inv = np.unique(cells_bs, return_inverse=True)
        z = teacher_latents(self.teacher, self.scr.x_cg[uniq], self.scr.lib_c[uniq])
        return z[inv.reshape(cells_bs.shape)[:, :, None], tok_bt[:, None, :]]


def lift_to_latent(delta_x: np.ndarray, w_gd: np.ndarray) -> np.ndarray:
    """(groups, genes, d): for each group, the smallest latent shift of every gene token that the decoder
    reads out as exactly the group's pseudobulk expression delta (token t is gene t, read by its own
    row w_t: x_t = w_t·z_t + b_t, so the shift is w_t·Δx_t / |w_t|²)."""
    return (w_gd[None] * (delta_x / np.maximum((w_gd**2).sum(1), 1e-12)[None])[..., None]).astype(np.float32)


@eqx.filter_jit
def _teacher_tokens(teacher, x_bg, lib_b):
    return jax.vmap(lambda x, lib: teacher(x, lib)[0])(x_bg, lib_b)


def train_predict(run: Run, predictor, composer, teacher, decoder, stats: GroupStats, prior_gd: np.ndarray):
    """Stage 3 -> (predictor, composer, whether its residual beat the prior alone on held-out perturbations).

    The residual is trained on the groups of most training perturbations, each starting from its
    out-of-sample prior shift; `n_evals` times it is scored on the held-out perturbations' groups (their
    pseudobulk expression delta) and the best state is kept, or none when the prior alone is best. The best
    state is kept only when it beats the prior by more than one standard error of the per-group difference
    (as the prior's ridge must beat the mean shift): on Norman's singles the residual had "won" on the two
    held-out perturbations and lost on the test ones."""
    cfg, c, scr = run.cfg, run.cfg.predict, run.scr
    rng = np.random.default_rng(cfg.seed + 6)
    perts = np.unique(stats.labels)
    n_val = int(round(len(perts) * c.val_fraction)) if len(perts) >= 5 else 0
    val_perts = set(rng.choice(perts, n_val, replace=False).tolist()) if n_val else set()
    is_val = np.isin(stats.labels, list(val_perts))
    train_g, val_g = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if c.prior == "none":
        prior_gd = np.zeros_like(prior_gd)
    ctx_index = stats.ctx + 1  # row 0 of the context table is "unknown"
    feat = scr.features.vectors(list(stats.labels))
    mode = int(np.bincount(scr.mode_c).argmax())

    latents = Latents(scr, teacher, stats.z_cgd)
    n_genes = len(scr.genes)

    def sets(groups: np.ndarray, seed: int, step: int, n_tokens: int) -> dict:
        r = np.random.default_rng([seed, step])
        pert = np.stack([r.choice(stats.cells[g], c.set_size, replace=len(stats.cells[g]) < c.set_size) for g in groups])
        ctrl = scr.controls.draw(pert, r.random(pert.shape))
        if n_tokens < n_genes:  # each group's perturbed genes, then a uniform draw of the others
            tok = np.sort(np.argsort(-(r.random((len(groups), n_genes)) + stats.target[groups]), axis=1)[:, :n_tokens], axis=1)
        else:
            tok = np.broadcast_to(np.arange(n_genes), (len(groups), n_genes))
        at = lambda a: a[groups[:, None], tok]
        return {"z_ctrl": latents.gather(ctrl, tok), "z_pert": latents.gather(pert, tok), "idx": tok.astype(np.int32),
                "prior": at(prior_gd), "feat": feat[groups], "mode": np.full(len(groups), mode, np.int32),
                "ctx": ctx_index[groups].astype(np.int32), "target": at(stats.target), "delta_z": at(stats.delta_z),
                "delta_x": at(stats.delta_x), **group_masks(groups, tok)}

    def group_masks(groups: np.ndarray, tok: np.ndarray) -> dict:
        """A combined screen: each group's measured genes at its tokens (its cells share a context, hence a dataset)."""
        if scr.gene_masks is None:
            return {}
        codes, table = scr.gene_masks
        mask_bg = table[codes[[stats.cells[g][0] for g in groups]]]
        return {"gene_mask": mask_bg[np.arange(len(groups))[:, None], tok]}

    n_batch = min(c.batch_size, len(train_g))
    get_batch = lambda step: sets(np.random.default_rng([cfg.seed + 7, step]).choice(train_g, n_batch, replace=False),
                                  cfg.seed + 8, step, min(c.token_subset or n_genes, n_genes))
    if c.finetune_composer:
        params, extra = (predictor, composer), (teacher, decoder)
    else:
        params, extra = predictor, (teacher, decoder, composer)
    loss_fn = functools.partial(stages.predict_loss, cfg=c)
    if not c.residual:
        return predictor, composer, False
    n_steps = run.steps(c.n_steps)
    optim = make_optim(c.lr, n_steps, c.weight_decay)
    state = loop.make_state(params, optim, jax.random.PRNGKey(cfg.seed + 13), extra)
    step_fn = loop.make_train_step(loss_fn, optim)
    if len(val_g) == 0:  # too few perturbations to hold any out: train and keep the residual
        state = _run(run, "predict", state, step_fn, get_batch, n_steps, n_steps)
        return (*_split(state.params, composer, c.finetune_composer), True)

    val_batch = sets(val_g, cfg.seed + 9, 0, n_genes)
    eval_cfg = dataclasses.replace(c, label_dropout=0.0)
    # The batch is an argument, not a closed-over constant: XLA would constant-fold arithmetic on its latents.
    val_loss = eqx.filter_jit(lambda p, e, b: stages.predict_loss(p, e, b, jax.random.PRNGKey(0), cfg=eval_cfg,
                                                                   per_group=True)[1]["expr_mse"])
    val_error = lambda p, e: np.asarray(val_loss(p, e, val_batch), np.float64)  # per held-out group
    zero_residual = lambda p: eqx.tree_at(lambda q: (q[0] if c.finetune_composer else q).mu_head.weight, p,
                                         replace_fn=jnp.zeros_like)
    best_fpath = run.run_dpath / "predict" / "best.eqx"
    prior_err = val_error(zero_residual(params), extra)
    best = {"step": 0, "val_expr_mse": float(prior_err.mean()), "prior_val_expr_mse": float(prior_err.mean()),
            "group_gain": [0.0] * len(prior_err)}
    best_params = params
    if best_fpath.exists():  # a resumed run: the best state so far
        best_params, best = checkpoint.load(best_fpath, params)
    for k in range(1, c.n_evals + 1):
        end = int(round(n_steps * k / c.n_evals))
        state = _run(run, "predict", state, step_fn, get_batch, end, n_steps)
        if end <= best["step"]:
            continue
        err = val_error(state.params, extra)
        if err.mean() < best["val_expr_mse"]:
            best = {**best, "step": end, "val_expr_mse": float(err.mean()), "group_gain": (prior_err - err).tolist()}
            best_params = state.params
            checkpoint.save(best_fpath, best_params, best)
    keep = best["step"] > 0 and clearly_better(best.get("group_gain", []))
    write_text_atomic(run.run_dpath / "predict" / "selection.json",
                      json.dumps({**best, "residual_kept": bool(keep), "val_perturbations": sorted(val_perts)}))
    return (*_split(best_params, composer, c.finetune_composer), bool(keep))


def _run(run: Run, name: str, state, step_fn, get_batch, end: int, n_steps: int):
    """Train to step `end` of an `n_steps` stage (resuming from its checkpoint)."""
    lcfg = loop.LoopConfig(n_steps=end, log_every=max(1, min(50, n_steps // 10)), ckpt_every=max(50, n_steps // 5),
                           progress=run.progress, wandb_project=run.wandb_project)
    return loop.run_loop(state, step_fn, get_batch, lcfg, run.run_dpath / name, header={"stage": name, **run.stage_header(name)},
                         desc=name)


def _split(params, composer, finetune_composer: bool):
    return params if finetune_composer else (params, composer)


def train_decode(run: Run, decoder, teacher):
    """Decode stage -> decoder (teacher latents to expression, the teacher frozen)."""
    cfg, c = run.cfg, run.cfg.decode
    st = run.stage("decode", decoder, teacher, stages.decode_loss, None, run.cell_batches(c.batch_size, cfg.seed + 5),
                   run.steps(c.n_steps), c.lr, cfg.seed + 14)
    return st.params


def _cell_batch(scr: Screen, sampler: loop.EpochSampler, step: int) -> dict:
    idx = sampler(step)
    if scr.gene_masks is None:
        return {"x": scr.x_cg[idx], "lib": scr.lib_c[idx]}
    codes, table = scr.gene_masks  # a combined screen: pretraining and decoding leave unmeasured genes out (stages)
    return {"x": scr.x_cg[idx], "lib": scr.lib_c[idx], "gene_mask": table[codes[idx]]}


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


