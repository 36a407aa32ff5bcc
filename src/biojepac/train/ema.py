"""The EMA teacher update, ξ ← m·ξ + (1 − m)·θ, and its optional cosine schedule of m toward 1."""

import equinox as eqx
import jax
import jax.numpy as jnp


def ema_update(teacher, student, momentum: jax.Array | float):
    """Move every float array of `teacher` toward `student`; nothing here carries a gradient."""
    t_arrays, t_static = eqx.partition(teacher, eqx.is_inexact_array)
    s_arrays = eqx.filter(student, eqx.is_inexact_array)
    new = jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * jax.lax.stop_gradient(s), t_arrays, s_arrays)
    return eqx.combine(new, t_static)


def ema_momentum(step: jax.Array, n_steps: int, start: float, end: float) -> jax.Array:
    """Cosine schedule from `start` to `end` over `n_steps` (equal values: constant, as in the report)."""
    frac = jnp.clip(step / max(n_steps, 1), 0.0, 1.0)
    return end - (end - start) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def momentum_cap(n_steps: int, init_left: float) -> float:
    """The largest constant momentum m with m^n_steps <= init_left: after n_steps EMA updates at most
    `init_left` of the teacher's initial weights remain (a capped schedule leaves even less)."""
    return float(init_left ** (1.0 / max(n_steps, 1)))
