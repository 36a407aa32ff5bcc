"""The shared training machinery: exact EMA, exact resume after a kill, same loss on 4 devices as 1."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from biojepac.errors import InputError
from biojepac.train import ema, loop

SCRIPT = r'''
import json, sys, numpy as np, jax
sys.path.insert(0, {tests!r})
from train.test_train_loop import make_problem, first_loss
print(json.dumps({{"n_devices": len(jax.devices()), "loss": first_loss()}}))
'''


class Tiny(eqx.Module):
    w: jax.Array
    b: jax.Array


def make_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 2)) + 0.1 * rng.normal(size=(64, 2))).astype(np.float32)
    params = Tiny(jnp.zeros((5, 2)), jnp.zeros(2))
    optim = optax.adam(0.05)

    def loss_fn(params, extra, batch, key):
        noise = 0.01 * jax.random.normal(key, batch["y"].shape)  # uses the key, so PRNG state matters
        loss = jnp.mean((batch["x"] @ params.w + params.b - batch["y"] + noise) ** 2)
        return loss, {"mse": loss}

    def update_extra(params, teacher, step):
        return ema.ema_update(teacher, params, 0.9)

    sampler = loop.EpochSampler(len(x), 8, seed=seed)
    get_batch = lambda step: {"x": x[sampler(step)], "y": y[sampler(step)]}
    state = loop.make_state(params, optim, jax.random.PRNGKey(seed), extra=params)
    return state, loop.make_train_step(loss_fn, optim, update_extra), get_batch


def first_loss() -> float:
    from biojepac.train import mesh as meshlib

    state, step_fn, get_batch = make_problem()
    mesh = meshlib.make_mesh()
    state = meshlib.replicate(state, mesh)
    for step in range(3):
        state, metrics = step_fn(state, meshlib.shard_batch(get_batch(step), mesh))
    return float(metrics["loss"])


def test_ema_exact():
    teacher, student = Tiny(jnp.ones((5, 2)), jnp.full(2, 3.0)), Tiny(jnp.zeros((5, 2)), jnp.full(2, -1.0))
    out = ema.ema_update(teacher, student, 0.996)
    np.testing.assert_allclose(out.w, 0.996, rtol=1e-7)
    np.testing.assert_allclose(out.b, 0.996 * 3.0 + 0.004 * -1.0, rtol=1e-6)
    assert float(ema.ema_momentum(jnp.asarray(0), 10, 0.996, 1.0)) == np.float32(0.996)
    np.testing.assert_allclose(float(ema.ema_momentum(jnp.asarray(10), 10, 0.996, 1.0)), 1.0)


def test_resume_after_kill_matches_uninterrupted(tmp_path: pathlib.Path):
    cfg = loop.LoopConfig(n_steps=20, log_every=1, ckpt_every=5, progress=False)
    state, step_fn, get_batch = make_problem()
    full = loop.run_loop(state, step_fn, get_batch, cfg, tmp_path / "full")
    # "Killed" after 13 steps: the last checkpoint is at step 10, so steps 11-13 are redone on resume.
    loop.run_loop(state, step_fn, get_batch, cfg, tmp_path / "killed", stop_after=13)
    assert json.loads((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 13
    resumed = loop.run_loop(state, step_fn, get_batch, cfg, tmp_path / "killed")
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    assert int(resumed.step) == 20 and float(np.abs(np.asarray(resumed.extra.w)).sum()) > 0


def test_four_devices_same_loss_as_one():
    tests_dpath = str(pathlib.Path(__file__).resolve().parents[1])
    out = {}
    for n in (1, 4):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT.format(tests=tests_dpath)], env=env, capture_output=True, text=True, check=True
        )
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[4]["n_devices"] == 4 and out[1]["n_devices"] == 1
    np.testing.assert_allclose(out[4]["loss"], out[1]["loss"], rtol=1e-5)


def test_rerun_with_other_settings_is_refused_and_same_settings_resume(tmp_path: pathlib.Path):
    cfg = loop.LoopConfig(n_steps=4, log_every=1, ckpt_every=2, progress=False)
    header = {"seed": 0, "config": {"d": 8}, "data": {"genes": "abc", "n_cells": 64}}
    state, step_fn, get_batch = make_problem()
    loop.run_loop(state, step_fn, get_batch, cfg, tmp_path / "run", header=header, stop_after=3)
    for other, setting in [({**header, "seed": 1}, "seed: 0 there, 1 now"),
                           ({**header, "config": {"d": 16}}, "config.d: 8 there, 16 now"),
                           ({**header, "data": {"genes": "xyz", "n_cells": 64}}, 'data.genes: "abc" there, "xyz" now'),
                           ({"seed": 0}, "config: {")]:
        with pytest.raises(InputError) as err:
            loop.run_loop(state, step_fn, get_batch, cfg, tmp_path / "run", header=other)
        msg = str(err.value)
        assert str(tmp_path / "run") in msg and setting in msg and "\n" not in msg, msg
    # The same settings resume (from the step-2 checkpoint) to the end; n_steps may change between calls.
    out = loop.run_loop(state, step_fn, get_batch, cfg, tmp_path / "run", header=header)
    assert int(out.step) == 4
    out = loop.run_loop(state, step_fn, get_batch, dataclasses.replace(cfg, n_steps=6), tmp_path / "run", header=header)
    assert int(out.step) == 6
    # A truncated checkpoint is one line, not a traceback.
    (tmp_path / "run" / "ckpt.eqx").write_bytes(b'{"seed"')
    with pytest.raises(InputError, match="not a readable checkpoint"):
        loop.run_loop(state, step_fn, get_batch, cfg, tmp_path / "run", header=header)
