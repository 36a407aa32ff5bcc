"""The cell-state encoder (shared by student and teacher).

A cell is a set of gene tokens h_i = x_i·e_i (expression times a learned gene embedding) plus a
library-size bias on every token, so the model sees depth/viability. Tokens carry no position: the
encoder is permutation-equivariant over tokens and the pooled latent is permutation-invariant.
"""

import beartype
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, jaxtyped

from biojepac.models.jepa.attention import Block, Rows, norm
from biojepac.models.jepa.config import EncoderConfig


@jaxtyped(typechecker=beartype.beartype)
def select_tokens(
    x_g: Float[Array, " g"], mode: str, n_tokens: int
) -> tuple[Int[Array, " t"], Float[Array, " t"], Bool[Array, " t"]]:
    """Gene indices, values and validity of a cell's tokens; always `n_tokens` of them (static shape)."""
    if mode == "all" or n_tokens in (0, x_g.shape[0]):
        idx = jnp.arange(x_g.shape[0])
        return idx, x_g, jnp.ones(x_g.shape[0], dtype=bool)
    vals, idx = jax.lax.top_k(x_g, n_tokens)
    if mode == "topk":
        return idx, vals, jnp.ones(n_tokens, dtype=bool)
    assert mode == "expressed", mode
    return idx, vals, vals > 0  # the top of the expressed genes; zeros past the last one are padding


def pool(z_td: Float[Array, "t d"], mask_t: Bool[Array, " t"]) -> Float[Array, " d"]:
    w = mask_t.astype(z_td.dtype)
    return (z_td * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1.0)


class Encoder(eqx.Module):
    gene_emb: Float[Array, "g d"]
    gene_id: Float[Array, "g d"] | None
    lib_proj: eqx.nn.Linear
    blocks: list[Block]
    ln_f: eqx.nn.LayerNorm
    token_mode: str = eqx.field(static=True)
    n_tokens: int = eqx.field(static=True)

    def __init__(self, n_genes: int, cfg: EncoderConfig, key: PRNGKeyArray):
        k_emb, k_id, k_lib, k_blocks = jax.random.split(key, 4)
        self.gene_emb = jax.random.normal(k_emb, (n_genes, cfg.d)) * 0.5
        self.gene_id = jax.random.normal(k_id, (n_genes, cfg.d)) * 0.5 if cfg.gene_id_bias else None
        self.lib_proj = eqx.nn.Linear(1, cfg.d, key=k_lib)
        keys = jax.random.split(k_blocks, cfg.n_layers)
        self.blocks = [Block(cfg.d, cfg.n_heads, cfg.mlp_ratio, k, cfg.attention) for k in keys]
        self.ln_f = eqx.nn.LayerNorm(cfg.d)
        self.token_mode, self.n_tokens = cfg.token_mode, cfg.n_tokens

    def select(self, x_g: Float[Array, " g"]):
        return select_tokens(x_g, self.token_mode, self.n_tokens)

    def embed(self, idx_t: Int[Array, " t"], val_t: Float[Array, " t"], log_lib: Float[Array, ""]) -> Float[Array, "t d"]:
        h_td = val_t[:, None] * self.gene_emb[idx_t] + self.lib_proj(log_lib[None])[None, :]
        if self.gene_id is not None:
            h_td = h_td + self.gene_id[idx_t]
        return h_td

    def forward(self, h_td: Float[Array, "t d"], mask_t: Bool[Array, " t"], rows: Rows = None) -> Float[Array, "r d"]:
        """Token latents; with `rows`, only those rows (every token still attends and is attended to, the
        last block just skips the rows nobody reads)."""
        for i, block in enumerate(self.blocks):
            h_td = block(h_td, mask_t, rows if i == len(self.blocks) - 1 else None)
        return norm(self.ln_f, h_td)

    def tokens(self, idx_t, val_t, mask_t, log_lib, rows: Rows = None) -> Float[Array, "r d"]:
        """Per-token latents of a given token set (the equivariance test permutes this set)."""
        return self.forward(self.embed(idx_t, val_t, log_lib), mask_t, rows)

    def __call__(self, x_g: Float[Array, " g"], log_lib: Float[Array, ""]):
        """Full cell -> (token latents, gene index per token, token mask, pooled cell latent)."""
        idx_t, val_t, mask_t = self.select(x_g)
        z_td = self.tokens(idx_t, val_t, mask_t, log_lib)
        return z_td, idx_t, mask_t, pool(z_td, mask_t)
