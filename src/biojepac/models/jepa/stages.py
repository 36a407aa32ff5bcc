"""The four stage losses, each `loss(params, extra, batch, key) -> (loss, metrics)` for `train.loop`.

`params` is what the stage trains; `extra` is what it only reads (the EMA teacher, frozen encoders).
Batches are dicts of arrays with cells on the leading axis; everything per cell is vmapped.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from biojepac.models.jepa import losses
from biojepac.models.energy import batched_energy_distance
from biojepac.models.jepa.masks import n_masked, sample_mask

sg = jax.lax.stop_gradient


def pretrain_loss(params, teacher, batch, key, *, cfg):
    """Stage 1: each cell's step reads a random subset of `cfg.token_subset` of its tokens (0: all); the
    student encodes the visible part of it, the predictor fills in the masked part and the teacher (no
    gradient) encodes the whole subset; L1 + VICReg at the masked tokens."""
    student, predictor = params

    def one(x_g, lib, k, measured_g):
        idx, val, mask = student.select(x_g)
        mask = mask & measured_g[idx]  # a combined screen: a gene the cell's dataset did not measure is no token
        n_keep = min(cfg.token_subset or idx.shape[0], idx.shape[0])
        m_idx, v_idx = sample_mask(k, idx.shape[0], n_masked(n_keep, cfg.mask_ratio), n_keep)
        z_vis = student.forward(student.embed(idx[v_idx], val[v_idx], lib), mask[v_idx])
        pred = predictor(z_vis, mask[v_idx], student.gene_emb[idx[m_idx]])
        sub = jnp.concatenate([m_idx, v_idx])  # the step's token set, masked tokens first
        target = sg(teacher.tokens(idx[sub], val[sub], mask[sub], lib, rows=slice(0, len(m_idx))))
        return pred, target, mask[m_idx].astype(pred.dtype)

    keys = jax.random.split(key, batch["x"].shape[0])
    measured = batch["gene_mask"] if "gene_mask" in batch else jnp.ones(batch["x"].shape, bool)
    pred, target, w = jax.vmap(one)(batch["x"], batch["lib"], keys, measured)
    d = pred.shape[-1]
    pred, target, w = pred.reshape(-1, d), target.reshape(-1, d), w.reshape(-1)
    l1 = losses.weighted_l1(pred, target, w)
    vic = losses.vicreg(pred, target, w)
    loss = cfg.l1_weight * l1 + cfg.vic_inv * vic["inv"] + cfg.vic_var * vic["var"] + cfg.vic_cov * vic["cov"]
    return loss, {"l1": l1, **vic}


def compose_loss(composer, _extra, batch, key, *, cfg, modalities: tuple[str, ...]):
    """Stage 2: InfoNCE between two descriptions of each perturbation in the batch: two modalities when
    there are two, else two feature-dropout views of the one modality."""
    if len(modalities) >= 2:
        (m_a, f_a), (m_b, f_b) = (modalities[0], batch[modalities[0]]), (modalities[1], batch[modalities[1]])
    else:
        k_a, k_b = jax.random.split(key)
        f = batch[modalities[0]]
        keep = 1.0 - cfg.view_dropout
        f_a = f * jax.random.bernoulli(k_a, keep, f.shape) / keep
        f_b = f * jax.random.bernoulli(k_b, keep, f.shape) / keep
        m_a = m_b = modalities[0]
    a = jax.vmap(lambda f, m: composer(m_a, f, m))(f_a, batch["mode"])
    b = jax.vmap(lambda f, m: composer(m_b, f, m))(f_b, batch["mode"])
    loss = losses.info_nce(a, b, cfg.tau)
    return loss, {"info_nce": loss}


def response_loss(params, _extra, batch, key):
    """Stage 2 (`response`): the action latent, through a linear head, regresses the standardised principal
    components of each training perturbation's pseudobulk delta."""
    composer, head = params
    pred = jax.vmap(lambda f, m: head(composer("gene", f, m)))(batch["gene"], batch["mode"])
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"response_mse": loss}


def predict_loss(params, extra, batch, key, *, cfg, modality: str = "gene", per_group: bool = False):
    """Stage 3 on cell sets. For each group: S control cells' teacher token latents (read once by the frozen
    teacher, `trainer.Latents`), moved by the prior shift, plus the predictor's residual, against the group's
    mean latent shift, its pseudobulk expression delta (through the frozen decoder), and S of its real cells'
    latents (energy distance, NLL). Everything is at the step's tokens `idx` (a subset of the genes, or all).
    `per_group`: the metrics' `expr_mse` is each group's own (the held-out check compares them group by group)."""
    if cfg.finetune_composer:
        predictor, composer = params
        teacher, decoder = extra
    else:
        predictor = params
        teacher, decoder, composer = extra
    k_drop, _ = jax.random.split(key)
    ctx = jnp.where(jax.random.bernoulli(k_drop, cfg.label_dropout, batch["ctx"].shape), 0, batch["ctx"])

    def one_set(z_std, idx_t, prior_td, f, mode, c, target_t):
        a = composer(modality, f, mode)
        gene_td, mask_t = sg(teacher.gene_emb[idx_t]), jnp.ones(idx_t.shape, bool)

        def cell(z_c):
            start = z_c + prior_td
            r, logvar = predictor(start, mask_t, gene_td, a, c, target_t)
            mu = start + r
            return mu, logvar, decoder.token_shift(mu, z_c, idx_t)

        mu, logvar, dx = jax.vmap(cell)(z_std)
        return mu, logvar, dx.mean(0), (mu - z_std).mean(0)

    z_p = jnp.asarray(batch["z_pert"])
    mu, logvar, dx, dz = jax.vmap(one_set)(batch["z_ctrl"], batch["idx"], batch["prior"], batch["feat"], batch["mode"], ctx,
                                           batch["target"])
    # A combined screen: a gene the group's dataset did not measure adds nothing (all ones: the plain means).
    w_bg = batch["gene_mask"].astype(dx.dtype) if "gene_mask" in batch else jnp.ones_like(dx)
    expr = jnp.sum(w_bg * (dx - batch["delta_x"]) ** 2) / jnp.maximum(w_bg.sum(), 1.0)
    latent = jnp.sum(w_bg[..., None] * (dz - batch["delta_z"]) ** 2) / jnp.maximum(w_bg.sum() * dz.shape[-1], 1.0)
    b, s = mu.shape[:2]
    energy = batched_energy_distance(mu.reshape(b, s, -1), z_p.reshape(b, s, -1)).mean()
    d = mu.shape[-1]
    nll = losses.gaussian_nll(mu.reshape(-1, d), jnp.clip(logvar, -10.0, 10.0).reshape(-1, d), z_p.reshape(-1, d),
                              jnp.ones(mu.reshape(-1, d).shape[0]))
    loss = cfg.expr_weight * expr + cfg.latent_weight * latent + cfg.energy_weight * energy + cfg.nll_weight * nll
    if per_group:
        expr = jnp.sum(w_bg * (dx - batch["delta_x"]) ** 2, axis=1) / jnp.maximum(w_bg.sum(1), 1.0)
    return loss, {"expr_mse": expr, "latent_mse": latent, "energy": energy, "nll": nll}


def decode_loss(decoder, teacher, batch, key):
    """Decode stage: reconstruct log-normalised expression from the frozen teacher's latents."""

    def one(x_g, lib, w_g):
        z, idx, mask, _ = teacher(x_g, lib)
        x_hat, _ = decoder(sg(z), idx, mask)
        return jnp.sum(w_g * (x_hat - x_g) ** 2), jnp.sum(w_g)

    # A combined screen: genes the cell's dataset did not measure are left out (all ones: the plain mean).
    w = batch["gene_mask"].astype(batch["x"].dtype) if "gene_mask" in batch else jnp.ones_like(batch["x"])
    sq, n = jax.vmap(one)(batch["x"], batch["lib"], w)
    loss = jnp.sum(sq) / jnp.maximum(jnp.sum(n), 1.0)
    return loss, {"mse": loss}


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))))
