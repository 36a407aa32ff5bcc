"""Stage-1 predictor: from the student's visible-token latents, predict the teacher's latents at the
masked tokens. Each masked position gets a learnable mask query plus (a projection of) its gene's
identity embedding, the set analogue of I-JEPA's positional mask tokens."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from biojepac.models.jepa.attention import Block, dense, norm


class MaskPredictor(eqx.Module):
    mask_query: Float[Array, " p"]
    in_proj: eqx.nn.Linear
    query_proj: eqx.nn.Linear
    blocks: list[Block]
    ln_f: eqx.nn.LayerNorm
    out_proj: eqx.nn.Linear

    def __init__(self, d: int, d_pred: int, n_layers: int, n_heads: int, key: PRNGKeyArray, kind: str = "linear"):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        self.mask_query = jax.random.normal(k1, (d_pred,)) * 0.02
        self.in_proj, self.query_proj = eqx.nn.Linear(d, d_pred, key=k2), eqx.nn.Linear(d, d_pred, key=k3)
        self.blocks = [Block(d_pred, n_heads, 4, k, kind) for k in jax.random.split(k4, n_layers)]
        self.ln_f, self.out_proj = eqx.nn.LayerNorm(d_pred), eqx.nn.Linear(d_pred, d, key=k5)

    def __call__(
        self, z_vd: Float[Array, "v d"], vis_mask: Bool[Array, " v"], gene_e_md: Float[Array, "m d"]
    ) -> Float[Array, "m d"]:
        queries = self.mask_query[None, :] + dense(self.query_proj, gene_e_md)
        x = jnp.concatenate([dense(self.in_proj, z_vd), queries], axis=0)
        mask = jnp.concatenate([vis_mask, jnp.ones(queries.shape[0], dtype=bool)])
        for i, block in enumerate(self.blocks):  # the last block computes only the query rows that are read
            x = block(x, mask, slice(z_vd.shape[0], None) if i == len(self.blocks) - 1 else None)
        return dense(self.out_proj, norm(self.ln_f, x))
