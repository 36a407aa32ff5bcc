"""Attention over an unordered set of gene tokens, for one cell (vmap over cells outside).

Linear attention uses the feature map φ(x) = ELU(x) + 1 (Katharopoulos et al. 2020):
out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j), which costs O(L·d²) instead of O(L²·d), so a cell
can have thousands of gene tokens. Padded tokens are removed from the key/value sums by the mask.
There is no positional encoding anywhere: permuting the tokens permutes the outputs.
"""

import beartype
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, jaxtyped

EPS = 1e-6


def phi(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x) + 1.0


@jaxtyped(typechecker=beartype.beartype)
def linear_attention(
    q: Float[Array, "t h k"], k: Float[Array, "s h k"], v: Float[Array, "s h v"], mask: Bool[Array, " s"]
) -> Float[Array, "t h v"]:
    fq, fk = phi(q), phi(k) * mask[:, None, None]
    kv_hkv = jnp.einsum("shk,shv->hkv", fk, v)
    norm_hk = fk.sum(axis=0)
    num = jnp.einsum("thk,hkv->thv", fq, kv_hkv)
    den = jnp.einsum("thk,hk->th", fq, norm_hk)
    return num / (den[..., None] + EPS)


@jaxtyped(typechecker=beartype.beartype)
def softmax_attention(
    q: Float[Array, "t h k"], k: Float[Array, "s h k"], v: Float[Array, "s h v"], mask: Bool[Array, " s"]
) -> Float[Array, "t h v"]:
    logits = jnp.einsum("thk,shk->hts", q, k) / jnp.sqrt(q.shape[-1])
    logits = jnp.where(mask[None, None, :], logits, -jnp.inf)
    return jnp.einsum("hts,shv->thv", jax.nn.softmax(logits, axis=-1), v)


class Attention(eqx.Module):
    """Multi-head attention; `kind` picks linear (default, the report's) or softmax (benchmarks)."""

    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    n_heads: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)

    def __init__(self, d: int, n_heads: int, key: PRNGKeyArray, kind: str = "linear"):
        assert d % n_heads == 0, f"d={d} must be divisible by n_heads={n_heads}"
        assert kind in ("linear", "softmax"), kind
        k1, k2 = jax.random.split(key)
        self.qkv, self.out = eqx.nn.Linear(d, 3 * d, key=k1), eqx.nn.Linear(d, d, key=k2)
        self.n_heads, self.kind = n_heads, kind

    def __call__(self, x_td: Float[Array, "t d"], mask_t: Bool[Array, " t"]) -> Float[Array, "t d"]:
        t, d = x_td.shape
        q, k, v = jnp.split(jax.vmap(self.qkv)(x_td).reshape(t, 3, self.n_heads, d // self.n_heads), 3, axis=1)
        fn = linear_attention if self.kind == "linear" else softmax_attention
        return jax.vmap(self.out)(fn(q[:, 0], k[:, 0], v[:, 0], mask_t).reshape(t, d))


class CrossAttention(eqx.Module):
    """Softmax cross-attention: tokens are queries, a few context tokens (the action) are keys/values."""

    q: eqx.nn.Linear
    kv: eqx.nn.Linear
    out: eqx.nn.Linear
    n_heads: int = eqx.field(static=True)

    def __init__(self, d: int, n_heads: int, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.q, self.kv, self.out = eqx.nn.Linear(d, d, key=k1), eqx.nn.Linear(d, 2 * d, key=k2), eqx.nn.Linear(d, d, key=k3)
        self.n_heads = n_heads

    def __call__(self, x_td: Float[Array, "t d"], c_sd: Float[Array, "s d"]) -> Float[Array, "t d"]:
        (t, d), s, h = x_td.shape, c_sd.shape[0], self.n_heads
        q = jax.vmap(self.q)(x_td).reshape(t, h, d // h)
        k, v = jnp.split(jax.vmap(self.kv)(c_sd).reshape(s, 2, h, d // h), 2, axis=1)
        out = softmax_attention(q, k[:, 0], v[:, 0], jnp.ones(s, dtype=bool))
        return jax.vmap(self.out)(out.reshape(t, d))


class Block(eqx.Module):
    """Pre-norm transformer block: attention then a GELU MLP, both residual."""

    ln1: eqx.nn.LayerNorm
    attn: Attention
    ln2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, d: int, n_heads: int, mlp_ratio: int, key: PRNGKeyArray, kind: str = "linear"):
        k1, k2, k3 = jax.random.split(key, 3)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.attn = Attention(d, n_heads, k1, kind)
        self.fc1, self.fc2 = eqx.nn.Linear(d, mlp_ratio * d, key=k2), eqx.nn.Linear(mlp_ratio * d, d, key=k3)

    def __call__(self, x_td: Float[Array, "t d"], mask_t: Bool[Array, " t"]) -> Float[Array, "t d"]:
        x_td = x_td + self.attn(jax.vmap(self.ln1)(x_td), mask_t)
        mlp = lambda x: self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))
        return x_td + jax.vmap(mlp)(x_td)
