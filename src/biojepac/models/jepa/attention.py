"""Attention over an unordered set of gene tokens, for one cell (vmap over cells outside).

Linear attention uses the feature map φ(x) = ELU(x) + 1 (Katharopoulos et al. 2020):
out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j), which costs O(L·d²) instead of O(L²·d), so a cell
can have thousands of gene tokens. Padded tokens are removed from the key/value sums by the mask.
There is no positional encoding anywhere: permuting the tokens permutes the outputs.

Layout (for speed on CPU, where XLA spends more time copying transposed arrays than multiplying): every
layer is applied to whole (tokens, d) arrays as `x @ Wᵀ + b` (`dense`), never vmapped over tokens, and
the heads of linear attention are kept side by side in d: Σ_j φ(k_j) v_jᵀ is one (d, d) product with the
cross-head blocks zeroed, so no per-head transpose is ever materialised.
"""

import beartype
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, jaxtyped

EPS = 1e-6


def phi(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x) + 1.0


def dense(lin: eqx.nn.Linear, x: jax.Array) -> jax.Array:
    """`lin` applied along the last axis of `x` (any leading axes): x @ Wᵀ + b."""
    y = x @ lin.weight.T
    return y if lin.bias is None else y + lin.bias


def norm(ln: eqx.nn.LayerNorm, x: jax.Array) -> jax.Array:
    """`ln` (the same formula as eqx.nn.LayerNorm) along the last axis of `x`, any leading axes."""
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    y = xc * jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + ln.eps)
    if ln.use_weight:
        y = y * ln.weight
    return y + ln.bias if ln.use_bias else y


def _same_head(n_heads: int, dk: int, dv: int) -> jax.Array:
    """(h·dk, h·dv) mask: True where a key feature and a value feature belong to the same head."""
    return (jnp.arange(n_heads * dk)[:, None] // dk) == (jnp.arange(n_heads * dv)[None, :] // dv)


def linear_heads(fq_td: jax.Array, fk_sd: jax.Array, v_se: jax.Array, n_heads: int) -> jax.Array:
    """Linear attention with feature-mapped queries/keys (φ applied, padded keys zeroed), heads side by side."""
    (t, dq), e = fq_td.shape, v_se.shape[1]
    kv_de = jnp.where(_same_head(n_heads, dq // n_heads, e // n_heads), fk_sd.T @ v_se, 0.0)
    den_th = (fq_td * fk_sd.sum(0)).reshape(t, n_heads, -1).sum(-1)
    out = (fq_td @ kv_de).reshape(t, n_heads, -1) / (den_th[..., None] + EPS)
    return out.reshape(t, e)


@jaxtyped(typechecker=beartype.beartype)
def linear_attention(
    q: Float[Array, "t h k"], k: Float[Array, "s h k"], v: Float[Array, "s h v"], mask: Bool[Array, " s"]
) -> Float[Array, "t h v"]:
    (t, h, dk), dv = q.shape, v.shape[2]
    fq, fk = phi(q).reshape(t, h * dk), (phi(k) * mask[:, None, None]).reshape(-1, h * dk)
    return linear_heads(fq, fk, v.reshape(-1, h * dv), h).reshape(t, h, dv)


@jaxtyped(typechecker=beartype.beartype)
def softmax_attention(
    q: Float[Array, "t h k"], k: Float[Array, "s h k"], v: Float[Array, "s h v"], mask: Bool[Array, " s"]
) -> Float[Array, "t h v"]:
    logits = jnp.einsum("thk,shk->ths", q, k) / jnp.sqrt(q.shape[-1])
    logits = jnp.where(mask[None, None, :], logits, -jnp.inf)
    return jnp.einsum("ths,shv->thv", jax.nn.softmax(logits, axis=-1), v)


Rows = Int[Array, " r"] | slice | None
"""Which token rows a layer returns (None: all). The keys and values always come from every token, so
asking only for the rows one needs (the masked tokens a loss reads) gives those rows exactly."""


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

    def __call__(self, x_td: Float[Array, "t d"], mask_t: Bool[Array, " t"], rows: Rows = None) -> Float[Array, "r d"]:
        d, h = x_td.shape[1], self.n_heads
        w, b = self.qkv.weight, self.qkv.bias
        if rows is None:
            q, k, v = jnp.split(dense(self.qkv, x_td), 3, axis=-1)
        else:  # queries only where asked
            q = x_td[rows] @ w[:d].T + b[:d]
            k, v = jnp.split(x_td @ w[d:].T + b[d:], 2, axis=-1)
        if self.kind == "linear":
            out = linear_heads(phi(q), phi(k) * mask_t[:, None], v, h)
        else:
            split = lambda y: y.reshape(y.shape[0], h, d // h)
            out = softmax_attention(split(q), split(k), split(v), mask_t).reshape(-1, d)
        return dense(self.out, out)


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
        # The few context tokens are laid out block-diagonally over heads, so both products keep the
        # tokens on the leading axis: logits (t, h·s) = q @ K_bd, out (t, d) = softmax @ V_bd.
        k, v = jnp.split(dense(self.kv, c_sd), 2, axis=-1)
        same = _same_head(h, d // h, 1)  # (d, h): feature j belongs to head j // (d/h)
        k_bd = (same[:, :, None] * k.T[:, None, :]).reshape(d, h * s)
        v_bd = (same.T[:, None, :] * v[None, :, :]).reshape(h * s, d)
        logits = (dense(self.q, x_td) @ k_bd / jnp.sqrt(d // h)).reshape(t, h, s)
        return dense(self.out, jax.nn.softmax(logits, axis=-1).reshape(t, h * s) @ v_bd)


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

    def __call__(self, x_td: Float[Array, "t d"], mask_t: Bool[Array, " t"], rows: Rows = None) -> Float[Array, "r d"]:
        x = (x_td if rows is None else x_td[rows]) + self.attn(norm(self.ln1, x_td), mask_t, rows)
        return x + dense(self.fc2, jax.nn.gelu(dense(self.fc1, norm(self.ln2, x))))
