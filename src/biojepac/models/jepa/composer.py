"""Stage-2 action composer: each modality's perturbation features -> content c ∈ R^320, then FiLM by a
learned mode embedding m ∈ R^64: a = c ⊙ (1 + s) + t with s = Linear(m), t = Linear(m)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from biojepac.data.schema import PERT_TYPES
from biojepac.models.jepa.config import ComposeConfig


class Composer(eqx.Module):
    projs: dict[str, eqx.nn.MLP]
    mode_emb: eqx.nn.Embedding
    film_s: eqx.nn.Linear
    film_t: eqx.nn.Linear

    def __init__(self, modality_dims: dict[str, int], cfg: ComposeConfig, key: PRNGKeyArray):
        keys = jax.random.split(key, len(modality_dims) + 3)
        self.projs = {
            name: eqx.nn.MLP(dim, cfg.d_content, cfg.hidden, 1, activation=jax.nn.gelu, key=k)
            for (name, dim), k in zip(sorted(modality_dims.items()), keys)
        }
        self.mode_emb = eqx.nn.Embedding(len(PERT_TYPES), cfg.d_mode, key=keys[-3])
        # FiLM starts as the identity (zero weights), so the mode can only add what helps.
        zero = lambda lin: eqx.tree_at(lambda m: (m.weight, m.bias), lin, (jnp.zeros_like(lin.weight), jnp.zeros_like(lin.bias)))
        self.film_s = zero(eqx.nn.Linear(cfg.d_mode, cfg.d_content, key=keys[-2]))
        self.film_t = zero(eqx.nn.Linear(cfg.d_mode, cfg.d_content, key=keys[-1]))

    def content(self, modality: str, f: Float[Array, " f"]) -> Float[Array, " c"]:
        return self.projs[modality](f)

    def film(self, c: Float[Array, " c"], mode: Int[Array, ""]) -> Float[Array, " c"]:
        m = self.mode_emb(mode)
        return c * (1.0 + self.film_s(m)) + self.film_t(m)

    def __call__(self, modality: str, f: Float[Array, " f"], mode: Int[Array, ""]) -> Float[Array, " c"]:
        return self.film(self.content(modality, f), mode)
