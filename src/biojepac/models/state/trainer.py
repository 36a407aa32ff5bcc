"""Training the state-transition network: cell sentences, the energy loss, presets.

The loop, checkpoints, resume, progress bar, metrics.jsonl and device mesh are the shared ones in
`biojepac.train.loop`; this file only says what a batch is and what the loss is.

A training example is a cell *sentence*: S perturbed cells of one (perturbation, context, batch) group,
paired with S control cells drawn from the same context and batch (the same context when that batch
has no controls). Batches are a pure function of the step, so a resumed run sees the same data.
"""

import dataclasses
import pathlib
import warnings
from typing import Literal

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp

from biojepac.data.combine import gene_masks
from biojepac.data.fingerprint import screen_fingerprint
from biojepac.data.pairing import control_slices
from biojepac.data.schema import BATCH_COL, CONTEXT_COL, CONTROL, PERT_COL, split_combo
from biojepac.errors import InputError
from biojepac.features import DEFAULT_FEATURES, resolve_features
from biojepac.models.energy import batched_energy_distance
from biojepac.models.jepa.prior import clearly_better, fit_screen_prior
from biojepac.models.state.network import StateConfig, StateMeta, StateTransition, predict_set_cells
from biojepac.train.distributed import mixed_precision
from biojepac.train.loop import LoopConfig, make_state, make_train_step, run_loop


@dataclasses.dataclass(frozen=True)
class FitConfig:
    n_steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 8
    """Cell sentences per step."""
    lr: float = 3e-4
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 10.0
    """Clip the global gradient norm (STATE uses 10)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning rate: linear warm-up then cosine decay, or constant (STATE: plain Adam at a fixed rate)."""
    seed: int = 0
    """Seeds the initialisation, the sentence sampler and label dropout."""
    run_dpath: pathlib.Path | None = None
    """Where ckpt.eqx and metrics.jsonl go (resumed when present); None: a fresh temporary folder."""
    progress: bool = True
    """Show a progress bar."""
    bf16: bool = False
    """Compute in bfloat16 with float32 master weights, gradients and optimiser state (`train.distributed.
    mixed_precision`). Slower on a CPU, and on an H200 too (0.4-0.6x float32's step rate at cpu-small, state_sm and
    state: JAX's float32 matmuls already run as TF32 there; benchmarks/results/gpu_h200.md)."""


def _arc_state(set_size: int, d_model: int, n_layers: int, n_heads: int, n_basal_layers: int) -> tuple[StateConfig, FitConfig]:
    """One of arc-state's ST sizes (`src/state/configs/model/*.yaml`) with its training defaults
    (`configs/training/default.yaml`: batch 16, lr 1e-4, 40k steps, clip 10; Adam without weight decay)."""
    model = StateConfig(set_size=set_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, mlp_ratio=4,
                        backbone="llama", head="state", n_basal_layers=n_basal_layers, n_pert_layers=4,
                        n_decoder_layers=4, energy_scale=0.5, decoder_hidden=1024)
    return model, FitConfig(n_steps=40000, batch_size=16, lr=1e-4, weight_decay=0.0, schedule="constant")


def _small(set_size: int, d_model: int, n_layers: int, n_heads: int) -> StateConfig:
    """arc-state's architecture (Llama backbone, basal Linear, pert MLP, batch token) at a CPU size, with the
    gene-space residual head (arc-state's output_space="all" form: control + learned residual, zero at init)
    on top of the closed-form prior (context transfer / ridge): small budgets learn a correction, not the map."""
    return StateConfig(set_size=set_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, mlp_ratio=4,
                       backbone="llama", head="cell-residual", n_basal_layers=1, n_pert_layers=2, prior="ridge",
                       decoder_hidden=2 * d_model)


PRESETS: dict[str, tuple[StateConfig, FitConfig]] = {
    # Seconds on one CPU core: for tests and smoke runs.
    "tiny": (_small(16, 32, 1, 2), FitConfig(n_steps=100, batch_size=4, lr=1e-3)),
    # Minutes on 2 CPU cores: the benchmark setting.
    "cpu-small": (_small(32, 128, 2, 4), FitConfig(n_steps=1500, batch_size=8, lr=3e-4)),
    # arc-state's sizes: hidden, layers, heads, set length; the basal encoder is one Linear unless the
    # config leaves use_basal_projection on (then a 4-layer MLP, as in `state`).
    "state_sm": _arc_state(128, 672, 4, 8, n_basal_layers=1),
    "state": _arc_state(512, 696, 8, 12, n_basal_layers=4),
    "state_lg": _arc_state(512, 1488, 6, 12, n_basal_layers=1),
}
PRESETS["paper"] = PRESETS["state_sm"]


class SentenceSampler:
    """Draws batches of (control set, perturbed set) sentences as a pure function of the step."""

    def __init__(self, cells_ng: np.ndarray, expr_ng: np.ndarray, obs, pert_table: np.ndarray,
                 set_size: int, batch_size: int, seed: int, gene_masks=None):
        """`gene_masks`: a combined screen's (per-cell dataset code, datasets x genes mask), `data.combine.gene_masks`."""
        self.cells_ng, self.expr_ng, self.pert_table = cells_ng, expr_ng, pert_table
        self.gene_masks = gene_masks
        self.prior_gn: np.ndarray | None = None
        """Per group: the prior shift its control cells are moved by (set by `fit` when cfg.prior is on)."""
        self.set_size, self.batch_size, self.seed = set_size, batch_size, seed
        pert = obs[PERT_COL].astype(str).to_numpy()
        ctx = obs[CONTEXT_COL].astype(str).to_numpy()
        bat = obs[BATCH_COL].astype(str).to_numpy()
        self.contexts, ctx_code = np.unique(ctx, return_inverse=True)
        self.batches, bat_code = np.unique(bat, return_inverse=True)
        self.perts = np.unique(pert[pert != CONTROL])
        is_ctrl = pert == CONTROL
        # Controls by the one rule (`data.pairing.control_slices`): a group's cells share one pool.
        pools = control_slices(ctx, bat, is_ctrl, "state model: training screen")
        # One group per (perturbation, context, batch) of perturbed cells.
        self.groups = []  # (pert index, ctx code, batch code, perturbed idx, control idx)
        df = {"p": np.searchsorted(self.perts, pert), "c": ctx_code, "b": bat_code}
        keys = np.stack([df["p"], df["c"], df["b"]], 1)[~is_ctrl]
        rows = np.flatnonzero(~is_ctrl)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        for g, (p, c, b) in enumerate(uniq):
            members = rows[inverse.ravel() == g]
            first = members[0]
            self.groups.append((p, c, b, members, pools.order[pools.offset[first] : pools.offset[first] + pools.count[first]]))
        if not self.groups:
            raise InputError(f"state model: the training screen has no perturbed cells (only {CONTROL!r})")

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.integers(len(self.groups), size=self.batch_size)
        ctrl_idx, pert_idx = [], []
        for g in chosen:
            _, _, _, perturbed, ctrl = self.groups[g]
            pert_idx.append(rng.choice(perturbed, self.set_size, replace=len(perturbed) < self.set_size))
            ctrl_idx.append(rng.choice(ctrl, self.set_size, replace=len(ctrl) < self.set_size))
        groups = [self.groups[g] for g in chosen]
        pert_idx_bs, ctrl_idx_bs = np.stack(pert_idx), np.stack(ctrl_idx)
        mask = {}
        if self.gene_masks is not None:  # a group's cells share one context, hence one dataset
            codes, table = self.gene_masks
            mask["gene_mask"] = table[codes[pert_idx_bs[:, 0]]]
        if self.prior_gn is not None:
            mask["prior"] = self.prior_gn[chosen]
        return {
            **mask,
            "ctrl": self.cells_ng[ctrl_idx_bs],
            "target": self.cells_ng[pert_idx_bs],
            "target_expr": self.expr_ng[pert_idx_bs],
            "pert": self.pert_table[[g[0] for g in groups]],
            "context": np.asarray([g[1] + 1 for g in groups], np.int32),  # +1: row 0 is "unknown"
            "batch": np.asarray([g[2] + 1 for g in groups], np.int32),
        }


def make_loss_fn(cfg: StateConfig):
    def loss_fn(net: StateTransition, extra, batch: dict, key: jax.Array):
        k_ctx, k_bat = jax.random.split(key)
        n = batch["context"].shape[0]
        # Label dropout teaches the "unknown" rows used for held-out contexts and unlabelled batches.
        context = jnp.where(jax.random.bernoulli(k_ctx, cfg.label_dropout, (n,)), 0, batch["context"])
        bat = jnp.where(jax.random.bernoulli(k_bat, cfg.label_dropout, (n,)), 0, batch["batch"])
        bat_bs = jnp.broadcast_to(bat[:, None], batch["ctrl"].shape[:2])  # a sentence is drawn within one batch
        prior = batch.get("prior")
        if prior is None:
            pred_bsn, expr_bsg = jax.vmap(net)(batch["ctrl"], batch["pert"], context, bat_bs)
        else:
            pred_bsn, expr_bsg = jax.vmap(net)(batch["ctrl"], batch["pert"], context, bat_bs, prior)
        target_bsg, n_measured = batch["target_expr"], expr_bsg.shape[0] * expr_bsg.shape[-1]
        if "gene_mask" in batch:  # a combined screen: genes the sentence's dataset did not measure add nothing
            w_b1g = batch["gene_mask"][:, None, :].astype(expr_bsg.dtype)
            expr_bsg, target_bsg, n_measured = expr_bsg * w_b1g, target_bsg * w_b1g, jnp.maximum(w_b1g.sum(), 1.0)
        energy_b = cfg.energy_scale * batched_energy_distance(expr_bsg, target_bsg)
        loss = energy_b.mean()
        metrics = {"energy": loss}
        if net.decoder is not None:  # also match the sets in latent space, as STATE does with SE
            latent = cfg.energy_scale * batched_energy_distance(pred_bsn, batch["target"]).mean()
            loss, metrics = loss + latent, {**metrics, "energy_latent": latent}
        mse = ((expr_bsg.mean(1) - target_bsg.mean(1)) ** 2).sum() / n_measured
        metrics["pseudobulk_mse"] = mse
        return loss + cfg.pseudobulk_weight * mse, metrics

    return loss_fn


def make_optimizer(fit_cfg: FitConfig) -> optax.GradientTransformation:
    if fit_cfg.schedule == "constant":
        schedule = optax.constant_schedule(fit_cfg.lr)
    else:
        warmup = max(1, min(100, fit_cfg.n_steps // 10))
        schedule = optax.warmup_cosine_decay_schedule(0.0, fit_cfg.lr, warmup, max(fit_cfg.n_steps, warmup + 1))
    return optax.chain(optax.clip_by_global_norm(fit_cfg.grad_clip),
                       optax.adamw(schedule, weight_decay=fit_cfg.weight_decay))


def fit(train: ad.AnnData, cfg: StateConfig, features=None, fit_cfg: FitConfig | None = None, encoder=None):
    """Fit a `StateTransition` on a canonical log1p screen. Returns (net, meta, feature provider, prior or None)."""
    fit_cfg = fit_cfg or FitConfig()
    if cfg.cell_input == "latent" and encoder is None:
        raise InputError("state model: cell_input='latent' needs the BioJEPAC encoder (pass encoder=...)")
    features = resolve_features(features, train, default=DEFAULT_FEATURES)
    labels = train.obs[PERT_COL].astype(str)
    perts = np.unique(labels.to_numpy())
    perts = perts[perts != CONTROL]
    whole = train  # the prior is fitted on every measured perturbation, with or without features
    missing = set(features.missing(list(perts)))
    if missing and getattr(features, "fallback", "error") == "error":  # a provider may opt into zeros / mean rows
        # Nothing is invented for a perturbation without a vector: its cells are left out of training.
        drop = [p for p in perts if set(split_combo(p)) & missing]
        spec = getattr(features, "spec", "") or features.name
        warnings.warn(f"state model: {len(drop)} training perturbations have no {spec!r} features "
                      f"({features.explain_missing(drop) if hasattr(features, 'explain_missing') else drop[:20]}); "
                      "their cells are left out of training")
        if len(drop) == len(perts):
            raise InputError(f"state model: no training perturbation has {spec!r} features ({features.source})")
        train = train[~labels.isin(drop).to_numpy()].copy()
        perts = np.asarray([p for p in perts if p not in set(drop)])
    expr_ng = np.asarray(train.X.toarray() if sp.issparse(train.X) else train.X, np.float32)
    cells_ng = expr_ng if encoder is None else np.asarray(encoder.encode(expr_ng), np.float32)
    pert_table = features.vectors(list(perts))
    sampler = SentenceSampler(cells_ng, expr_ng, train.obs, pert_table, cfg.set_size, fit_cfg.batch_size, fit_cfg.seed,
                              gene_masks(train.obs, train.var))
    prior, val_groups = None, []
    if cfg.prior == "ridge":
        if encoder is not None:
            raise InputError("state model: prior='ridge' works on expression input, not on encoder latents")
        prior, sampler.prior_gn = fit_expression_prior(whole, sampler, features)
        val_groups = hold_out_groups(sampler, fit_cfg.seed)
    # Raw uint32 keys: the shared checkpoint converts every leaf to NumPy, which typed keys refuse.
    key_init, key_loop = jax.random.split(jax.random.PRNGKey(fit_cfg.seed))
    net = StateTransition(cfg, cells_ng.shape[1], expr_ng.shape[1], features.dim, len(sampler.contexts),
                          len(sampler.batches), key=key_init)
    optim = make_optimizer(fit_cfg)
    state = make_state(net, optim, key_loop)
    loss_fn = mixed_precision(make_loss_fn(cfg)) if fit_cfg.bf16 else make_loss_fn(cfg)
    step_fn = make_train_step(loss_fn, optim)
    run_dpath = fit_cfg.run_dpath
    if run_dpath is None:
        import tempfile

        run_dpath = pathlib.Path(tempfile.mkdtemp(prefix="biojepac-state-"))
    # What the run is: a rerun into the same folder with other settings or data is refused, not resumed.
    fit_settings = {k: v for k, v in dataclasses.asdict(fit_cfg).items() if k not in ("run_dpath", "progress")}
    header = {"model": "state", "config": dataclasses.asdict(cfg), "fit": fit_settings,
              "data": screen_fingerprint(train), "features": features.describe()}
    loop_cfg = LoopConfig(n_steps=fit_cfg.n_steps, log_every=max(1, min(50, fit_cfg.n_steps // 10)),
                          ckpt_every=max(1, min(500, fit_cfg.n_steps)), progress=fit_cfg.progress)
    state = run_loop(state, step_fn, sampler, loop_cfg, pathlib.Path(run_dpath), header=header, desc="state")
    use_residual = True
    if prior is not None and val_groups:
        use_residual = residual_helps(state.params, cfg, sampler, val_groups, fit_cfg.seed)
    meta = StateMeta(use_residual=use_residual, config=cfg, genes=tuple(map(str, train.var_names)), contexts=tuple(map(str, sampler.contexts)),
                     batches=tuple(map(str, sampler.batches)), n_in=int(cells_ng.shape[1]), pert_dim=features.dim,
                     features=features.describe(), encoder_dpath=str(getattr(encoder, "model_dpath", "")))
    return state.params, meta, features, prior


def hold_out_groups(sampler: SentenceSampler, seed: int, fraction: float = 0.15) -> list:
    """Move the groups of a seeded `fraction` of perturbations out of training (with their prior rows) and
    return them: the check of whether the learned residual beats the prior alone (`residual_helps`)."""
    n_val = int(round(fraction * len(sampler.perts)))
    if n_val < 1 or len(sampler.perts) - n_val < 2:
        return []
    val_perts = set(np.random.default_rng([seed, 15]).choice(len(sampler.perts), n_val, replace=False).tolist())
    keep = [i for i, g in enumerate(sampler.groups) if int(g[0]) not in val_perts]
    val = [(g, sampler.prior_gn[i]) for i, g in enumerate(sampler.groups) if int(g[0]) in val_perts]
    sampler.groups, sampler.prior_gn = [sampler.groups[i] for i in keep], sampler.prior_gn[keep]
    return val


def residual_helps(net: StateTransition, cfg: StateConfig, sampler: SentenceSampler, val_groups: list,
                   seed: int) -> bool:
    """Whether prior + learned residual predicts the held-out groups' mean expression clearly better (squared
    error per group, by more than one standard error of the per-group difference, `clearly_better`) than the
    prior alone (controls moved by the prior shift); printed either way."""
    err_net, err_prior = [], []
    for (p, c, b, perturbed, ctrl), prior_g in val_groups:
        x_ng = sampler.cells_ng[ctrl[: 8 * cfg.set_size]]
        truth = sampler.expr_ng[perturbed].mean(0)
        pred = predict_set_cells(net, x_ng, sampler.pert_table[p], int(c) + 1, cfg.set_size, seed,
                                 np.full(len(x_ng), int(b) + 1, np.int32), prior_g=prior_g)
        err_net.append(float(((pred.mean(0) - truth) ** 2).sum()))
        err_prior.append(float(((np.clip(x_ng + prior_g, 0, None).mean(0) - truth) ** 2).sum()))
    keep = clearly_better(np.subtract(err_prior, err_net))
    print(f"state: held-out check on {len(val_groups)} groups: prior + residual error {sum(err_net):.4g}, prior alone "
          f"{sum(err_prior):.4g}; using {'prior + residual' if keep else 'the prior alone'}")
    return keep


def fit_expression_prior(train: ad.AnnData, sampler: SentenceSampler, features):
    """The closed-form prior in expression space, fitted on the whole training screen (the perturbations
    without features included: their measured shifts still set the mean shifts), and, per sentence group,
    the shift its controls are moved by: the prior's *out-of-sample* estimate for the group (p's shift
    transferred from other contexts, else ridge with p left out), the same kind of guess the prior makes
    for a held-out perturbation, so the network learns to correct the prior's errors rather than to copy
    a measurement it will not have."""
    prior, oos = fit_screen_prior(train, sampler.contexts, features)
    return prior, np.stack([oos[(str(sampler.perts[p]), int(c))] for p, c, *_ in sampler.groups]).astype(np.float32)
