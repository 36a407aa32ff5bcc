"""The state-transition (ST) network in the spirit of STATE (Adduri et al. 2025), in about 150 lines.

A perturbation maps a *set* of control cells to a *set* of perturbed cells:

    tokens  = embed(cell) + embed(perturbation) + embed(context) + embed(batch)   # one token per cell
    hidden  = transformer(tokens)            # attention across the S cells, no positional encoding
    pred    = cell + residual_head(hidden)   # the control plus a learned residual
    loss    = energy_distance(pred, observed perturbed set) [+ w * |mean(pred) - mean(observed)|^2]

Cells enter as HVG expression (`cell_input="expression"`) or as latents of a frozen cell encoder
(`"latent"`, the role of STATE's SE embedding); latents are decoded back to expression by an MLP.
Row 0 of the context and batch tables means "unknown": training drops labels to it now and then, so a
held-out cell line or an unlabelled control set still gets a sensible conditioning token.
"""

import dataclasses
from typing import Literal

import beartype
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, jaxtyped


@dataclasses.dataclass(frozen=True)
class StateConfig:
    cell_input: Literal["expression", "latent"] = "expression"
    """What a cell token is built from: HVG expression, or the BioJEPAC encoder's pooled cell latent."""
    set_size: int = 32
    """S, the number of cells per sentence (STATE uses 64-256)."""
    d_model: int = 128
    """Width of the transformer."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads per block."""
    mlp_ratio: int = 4
    """Hidden width of each block's MLP, as a multiple of d_model."""
    decoder_hidden: int = 256
    """Hidden width of the latent -> expression decoder (latent input only)."""
    pseudobulk_weight: float = 0.0
    """Weight of the MSE between predicted and observed set means, added to the energy distance."""
    label_dropout: float = 0.1
    """Probability of replacing a context or batch label by "unknown" during training."""


class SetBlock(eqx.Module):
    """Pre-norm transformer block over the cells of one sentence."""

    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, d: int, n_heads: int, mlp_ratio: int, *, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.attn = eqx.nn.MultiheadAttention(n_heads, d, key=k1)
        self.mlp = eqx.nn.MLP(d, d, d * mlp_ratio, depth=1, activation=jax.nn.gelu, key=k2)

    def __call__(self, h_sd: Float[Array, "s d"]) -> Float[Array, "s d"]:
        x_sd = jax.vmap(self.ln1)(h_sd)
        h_sd = h_sd + self.attn(x_sd, x_sd, x_sd)
        return h_sd + jax.vmap(self.mlp)(jax.vmap(self.ln2)(h_sd))


class StateTransition(eqx.Module):
    """The network. `n_in` is the cell-token width (genes, or latent dim); `n_genes` the output genes."""

    cell_in: eqx.nn.MLP
    pert_in: eqx.nn.MLP
    context_emb: eqx.nn.Embedding
    batch_emb: eqx.nn.Embedding
    blocks: list[SetBlock]
    ln_f: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    decoder: eqx.nn.MLP | None

    def __init__(self, cfg: StateConfig, n_in: int, n_genes: int, pert_dim: int, n_contexts: int,
                 n_batches: int, *, key: jax.Array):
        keys = jax.random.split(key, 6 + cfg.n_layers)
        d = cfg.d_model
        self.cell_in = eqx.nn.MLP(n_in, d, d, depth=1, activation=jax.nn.gelu, key=keys[0])
        self.pert_in = eqx.nn.MLP(pert_dim, d, d, depth=1, activation=jax.nn.gelu, key=keys[1])
        self.context_emb = eqx.nn.Embedding(n_contexts + 1, d, key=keys[2])  # +1: row 0 is "unknown"
        self.batch_emb = eqx.nn.Embedding(n_batches + 1, d, key=keys[3])
        self.blocks = [SetBlock(d, cfg.n_heads, cfg.mlp_ratio, key=k) for k in keys[6:]]
        self.ln_f = eqx.nn.LayerNorm(d)
        # A zero-initialised head makes the untrained model the identity map (predict the controls),
        # a sane starting point: most perturbations barely move most genes.
        head = eqx.nn.Linear(d, n_in, key=keys[4])
        self.head = eqx.tree_at(lambda m: (m.weight, m.bias), head, (jnp.zeros_like(head.weight), jnp.zeros(n_in)))
        is_latent = cfg.cell_input == "latent"
        self.decoder = eqx.nn.MLP(n_in, n_genes, cfg.decoder_hidden, depth=2, activation=jax.nn.gelu,
                                  key=keys[5]) if is_latent else None

    @jaxtyped(typechecker=beartype.beartype)
    def __call__(self, x_sn: Float[Array, "s n"], pert_p: Float[Array, " p"], context: Int[Array, ""],
                 batch: Int[Array, ""]) -> tuple[Float[Array, "s n"], Float[Array, "s g"]]:
        """One sentence -> (predicted cell tokens, predicted expression)."""
        cond_d = self.pert_in(pert_p) + self.context_emb(context) + self.batch_emb(batch)
        h_sd = jax.vmap(self.cell_in)(x_sn) + cond_d[None, :]
        for block in self.blocks:
            h_sd = block(h_sd)
        pred_sn = x_sn + jax.vmap(self.head)(jax.vmap(self.ln_f)(h_sd))
        expr_sg = pred_sn if self.decoder is None else jax.vmap(self.decoder)(pred_sn)
        return pred_sn, expr_sg


@dataclasses.dataclass(frozen=True)
class StateMeta:
    """Everything besides the weights needed to rebuild and use a fitted model (stored in model.json)."""

    config: StateConfig
    genes: tuple[str, ...]
    contexts: tuple[str, ...]
    batches: tuple[str, ...]
    n_in: int
    pert_dim: int
    features: dict
    encoder_dpath: str = ""
    """Saved BioJEPAC encoder used for latent input (empty for expression input)."""



def predict_set_cells(net: StateTransition, x_ng: np.ndarray, pert_p: np.ndarray, context: int, set_size: int,
                  seed: int) -> np.ndarray:
    """Predict every control cell's perturbed state, S cells at a time, in the caller's order.

    The cells are shuffled (seeded) into sentences; the last sentence is topped up with resampled cells
    whose predictions are dropped, so every sentence has exactly S cells (one compiled shape).
    """
    rng = np.random.default_rng(seed)
    n = x_ng.shape[0]
    order = rng.permutation(n)
    n_pad = -n % set_size
    order = np.concatenate([order, rng.choice(n, size=n_pad, replace=True)])
    x_bsn = x_ng[order].reshape(-1, set_size, x_ng.shape[1])
    expr_bsg = np.asarray(_forward(net, jnp.asarray(x_bsn), jnp.asarray(pert_p), jnp.asarray(context)))
    expr_ng = expr_bsg.reshape(-1, expr_bsg.shape[-1])[:n]
    out = np.empty_like(expr_ng)
    out[order[:n]] = expr_ng
    return np.clip(out, 0.0, None).astype(np.float32)  # log1p expression cannot be negative


@eqx.filter_jit
def _forward(net: StateTransition, x_bsn, pert_p, context):
    unknown_batch = jnp.asarray(0)
    return jax.vmap(lambda x: net(x, pert_p, context, unknown_batch)[1])(x_bsn)
