"""The one training loop every model shares (BioJEPAC's stages, the state-transition model).

How a new model uses it:

    state = make_state(params, optim, key, extra=teacher_or_frozen_modules)
    step_fn = make_train_step(loss_fn, optim, update_extra=ema_or_None)
    state = run_loop(state, step_fn, get_batch, LoopConfig(n_steps=...), run_dpath, header={...})

- `loss_fn(params, extra, batch, key) -> (loss, metrics_dict)`. Gradients flow to `params` only; `extra`
  holds what the step must see but not train (an EMA teacher, frozen encoders).
- `update_extra(params, extra, step) -> extra` runs after the optimiser update (e.g. the EMA teacher).
- `get_batch(step) -> dict[str, np.ndarray]` must be a pure function of the step (use `EpochSampler`),
  so the step *is* the data position and a resumed run sees exactly the batches it would have seen.
- Each batch field's leading axis is cells; it is sharded over every device (`train.mesh`).
- `run_dpath` gets `ckpt.eqx` (atomic, resumed automatically) and `metrics.jsonl`.
- `header` says what the run is: its settings and a fingerprint of its data (`data.fingerprint`). It is
  saved in the checkpoint, and a rerun whose header differs is refused (`check_resume`), so a folder
  made with another seed, preset, config or data is never silently resumed. Commands check the whole
  run folder before any work as well (`train.run_folder.open_run`, with `--overwrite`).
"""

import dataclasses
import json
import pathlib
import time
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from biojepac.errors import InputError
from biojepac.io import write_text_atomic
from biojepac.train import checkpoint, mesh as meshlib, run_folder


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    n_steps: int = 1000
    """Total optimiser steps in this stage."""
    log_every: int = 10
    """Write a metrics row to metrics.jsonl (and wandb) every this many steps."""
    ckpt_every: int = 200
    """Save a checkpoint every this many steps (and always at the end)."""
    progress: bool = True
    """Show a tqdm progress bar (cells/s and ETA)."""
    wandb_project: str = ""
    """Log to this Weights & Biases project as well (empty: off; needs the `wandb` extra)."""


class TrainState(eqx.Module):
    params: eqx.Module
    opt_state: optax.OptState
    extra: object
    key: jax.Array
    step: jax.Array


def make_state(params, optim: optax.GradientTransformation, key: jax.Array, extra=None) -> TrainState:
    opt_state = optim.init(eqx.filter(params, eqx.is_inexact_array))
    return TrainState(params, opt_state, extra, key, jnp.asarray(0, dtype=jnp.int32))


def apply_grads(state: TrainState, grads, optim: optax.GradientTransformation, update_extra: Callable | None,
                key: jax.Array, loss, metrics: dict) -> tuple[TrainState, dict]:
    """The optimiser update, then `update_extra` (e.g. the EMA teacher), shared by every step function."""
    updates, opt_state = optim.update(grads, state.opt_state, eqx.filter(state.params, eqx.is_inexact_array))
    params = eqx.apply_updates(state.params, updates)
    extra = state.extra if update_extra is None else update_extra(params, state.extra, state.step)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
    return TrainState(params, opt_state, extra, key, state.step + 1), metrics


def make_train_step(loss_fn: Callable, optim: optax.GradientTransformation, update_extra: Callable | None = None):
    """One `eqx.filter_jit` step: split the key, differentiate `loss_fn`, update, then `update_extra`."""

    @eqx.filter_jit
    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key, loss_key = jax.random.split(state.key)
        grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, state.extra, batch, loss_key)
        return apply_grads(state, grads, optim, update_extra, key, loss, metrics)

    return step_fn


class EpochSampler:
    """Batch indices as a pure function of the step: a seeded permutation per epoch, no replacement."""

    def __init__(self, n_items: int, batch_size: int, seed: int):
        assert n_items >= batch_size > 0, f"need at least batch_size={batch_size} items, have {n_items}"
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.steps_per_epoch = n_items // batch_size
        self._cache: tuple[int, np.ndarray] | None = None

    def __call__(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_items))
        return self._cache[1][pos * self.batch_size : (pos + 1) * self.batch_size]


def _trim_metrics(metrics_fpath: pathlib.Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from, so the log has each step once."""
    if not metrics_fpath.exists():
        return
    rows = [line for line in metrics_fpath.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_text_atomic(metrics_fpath, "".join(r + "\n" for r in rows))


def check_resume(run_dpath: pathlib.Path, saved: dict, header: dict) -> None:
    """Refuse to resume a checkpoint whose header (settings, data fingerprint) differs from this run's."""
    run_folder.refuse_if_different(run_dpath, saved, header, "its checkpoint was made with other settings")


def run_loop(
    state: TrainState,
    step_fn: Callable,
    get_batch: Callable[[int], dict],
    cfg: LoopConfig,
    run_dpath: pathlib.Path,
    header: dict | None = None,
    desc: str = "train",
    stop_after: int | None = None,
) -> TrainState:
    """Train to `cfg.n_steps`, resuming from `run_dpath/ckpt.eqx` when present and made with the same
    `header` (otherwise an `InputError` names the folder and the settings that differ).

    `stop_after` ends the call after that many steps *without* a final checkpoint, which is how the
    tests simulate a run that was killed.
    """
    run_dpath = pathlib.Path(run_dpath)
    run_dpath.mkdir(parents=True, exist_ok=True)
    ckpt_fpath, metrics_fpath = run_dpath / checkpoint.CKPT_FNAME, run_dpath / "metrics.jsonl"
    header = dict(header or {})
    if ckpt_fpath.exists():
        try:
            saved = checkpoint.load_header(ckpt_fpath)
        except (OSError, ValueError) as e:  # truncated or not a checkpoint at all
            raise InputError(f"{ckpt_fpath}: not a readable checkpoint ({e}); give --overwrite to start afresh") from None
        check_resume(run_dpath, saved, header)
        try:
            state, _ = checkpoint.load(ckpt_fpath, state)
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(f"{ckpt_fpath}: its weights do not fit this run ({type(e).__name__}: {e}); "
                             "give --overwrite to start afresh") from None
    _trim_metrics(metrics_fpath, int(state.step))  # rows from steps that will be redone
    mesh = meshlib.make_mesh()
    state = meshlib.replicate(state, mesh)
    start = int(state.step)
    wandb_run = None
    if cfg.wandb_project and start < cfg.n_steps:
        import wandb  # optional extra

        wandb_run = wandb.init(project=cfg.wandb_project, dir=str(run_dpath), config=header, resume="allow")

    def save():
        checkpoint.save(ckpt_fpath, state, {**header, "step": int(state.step), "n_steps": cfg.n_steps})

    bar = tqdm(total=cfg.n_steps, initial=start, desc=desc, unit="step", disable=not cfg.progress, dynamic_ncols=True)
    t0, n_cells, n_done = time.perf_counter(), 0, 0
    with open(metrics_fpath, "a") as log_fd:
        for step in range(start, cfg.n_steps):
            if stop_after is not None and n_done >= stop_after:
                bar.close()
                return state
            batch = get_batch(step)
            n_cells += len(next(iter(batch.values())))
            state, metrics = step_fn(state, meshlib.shard_batch(batch, mesh))
            n_done += 1
            bar.update(1)
            if n_done == 1:  # cells/s is steady state: the first step pays for compilation
                jax.block_until_ready(state)
                t0, n_cells = time.perf_counter(), 0
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
                row = {k: float(v) for k, v in metrics.items()}
                cells_per_s = n_cells / max(time.perf_counter() - t0, 1e-9)
                row.update(step=step + 1, cells_per_s=cells_per_s, wall_s=time.perf_counter() - t0)
                log_fd.write(json.dumps(row) + "\n")
                log_fd.flush()
                bar.set_postfix(loss=f"{row['loss']:.4g}", cells_s=f"{cells_per_s:.0f}")
                if wandb_run is not None:
                    wandb_run.log(row, step=step + 1)
            if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.n_steps:
                save()
    bar.close()
    if start < cfg.n_steps or not ckpt_fpath.exists():
        save()
    if wandb_run is not None:
        wandb_run.finish()
    return state


def make_accum_step(loss_fn: Callable, optim: optax.GradientTransformation, n_micro: int, update_extra: Callable | None = None):
    """Like `make_train_step`, but the batch is split into `n_micro` micro-batches whose gradients
    (and losses, metrics) are averaged before one optimiser update: the step of an `n_micro`-times
    larger batch at the activation memory of one micro-batch, for losses that are batch means.
    """
    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)

    @eqx.filter_jit
    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key, loss_key = jax.random.split(state.key)
        keys = jax.random.split(loss_key, n_micro)
        # Micro-batch m takes rows m, m + n_micro, ...: each device's rows split evenly, no resharding.
        micro = {k: jnp.swapaxes(v.reshape(v.shape[0] // n_micro, n_micro, *v.shape[1:]), 0, 1) for k, v in batch.items()}

        def micro_grads(i):
            mb = jax.tree.map(lambda v: v[i], micro)
            (loss, metrics), grads = grad_fn(state.params, state.extra, mb, keys[i])
            return loss, metrics, grads

        def body(acc, i):
            return jax.tree.map(jnp.add, acc, micro_grads(i)), None

        # The first micro-batch seeds the sums, which fixes their structure and dtypes for the scan.
        total, _ = jax.lax.scan(body, micro_grads(0), jnp.arange(1, n_micro))
        loss, metrics, grads = jax.tree.map(lambda t: t / n_micro, total)
        return apply_grads(state, grads, optim, update_extra, key, loss, metrics)

    return step_fn
