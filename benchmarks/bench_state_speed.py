"""Training throughput of our ST model at arc-state's sizes, against the matmul roofline measured in the same run.

For each preset: one jitted training step (forward, backward, AdamW/clip update; the shared
`train.loop.make_train_step`) on a batch of B sentences x S cells x G genes, timed after compilation;
the sentence sampler (NumPy gathers from a screen in memory) timed separately, since the loop runs it
between steps. FLOPs per step are XLA's own count of the step's HLO before optimisation (`xla_flops`). The roofline is
the best float32 matmul rate measured here: (B*S x d) @ (d x 4d), the backbone's largest product.

Writes benchmarks/results/state_speed.md (and .json). Usage:
    .venv/bin/python benchmarks/bench_state_speed.py [--presets state_sm cpu-small] [--steps 3]
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from biojepac.models.state import trainer
from biojepac.models.state.network import StateTransition
from biojepac.train.distributed import mixed_precision
from biojepac.train.loop import make_state, make_train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "state_speed.md"
N_GENES = 2000
"""STATE's HVG space."""
PERT_DIM = 5120
"""ESM-2 gene embedding width (STATE's default perturbation features)."""


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_roofline(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best float32 FLOP/s of one jitted (m x k) @ (k x n)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (m, k))
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n))
    f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, b))
    return 2 * m * k * n / best_of(lambda: f(a, b), repeats)


def xla_flops(step_fn, state, batch) -> float:
    """XLA's FLOP count of one training step, read from the lowered HLO before optimisation: the same count on
    every backend. (The compiled step's count is not: on an H200 it missed most matmuls, e.g. 326 GFLOP for a
    BioJEPAC paper pretrain step that counts 3,622 here and on the CPU's compiled step; benchmarks/results/gpu_h200.md.)"""
    import equinox as eqx

    arrays, static = eqx.partition(state, eqx.is_array)
    def arrays_only(a, bt):
        new_state, metrics = step_fn(eqx.combine(a, static), bt)
        return eqx.filter(new_state, eqx.is_array), metrics

    lowered = jax.jit(arrays_only).lower(arrays, batch)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def make_preset_step(name: str, n_batches: int, batch: int = 0, bf16: bool = False) -> dict:
    """A preset's network, training state, jitted step and `n_batches` sampled batches (B sentences of S cells)."""
    cfg, fit_cfg = trainer.PRESETS[name]
    b, s = batch or fit_cfg.batch_size, cfg.set_size
    fit_cfg = dataclasses.replace(fit_cfg, batch_size=b)
    rng = np.random.default_rng(0)
    # A screen in memory for the sampler: 2 contexts x 1 batch, 50 perturbations, 4 sentences' worth of cells each.
    n_cells = 2 * 51 * s
    expr = rng.gamma(1.0, 0.5, size=(n_cells, N_GENES)).astype(np.float32)
    import pandas as pd

    obs = pd.DataFrame({"target_gene": np.tile(["non-targeting", *[f"P{i}" for i in range(50)]], 2 * s),
                        "context": np.repeat(["c1", "c2"], 51 * s), "batch": "0"})
    pert_table = rng.normal(size=(50, PERT_DIM)).astype(np.float32)
    sampler = trainer.SentenceSampler(expr, expr, obs, pert_table, s, b, seed=0)
    t0 = time.perf_counter()
    batches = [sampler(i) for i in range(n_batches)]
    sampler_s = (time.perf_counter() - t0) / n_batches

    net = StateTransition(cfg, N_GENES, N_GENES, PERT_DIM, 2, 1, key=jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree.leaves(net) if isinstance(x, jax.Array))
    optim = trainer.make_optimizer(fit_cfg)
    state = make_state(net, optim, jax.random.PRNGKey(1))
    loss_fn = trainer.make_loss_fn(cfg)
    step_fn = make_train_step(mixed_precision(loss_fn) if bf16 else loss_fn, optim)
    return {"cfg": cfg, "b": b, "s": s, "batches": batches, "sampler_s": sampler_s, "n_params": n_params, "state": state,
            "step_fn": step_fn}


def bench_preset(name: str, n_steps: int, batch: int = 0, bf16: bool = False) -> dict:
    """One preset's step timed; `bf16`: computed in bfloat16 from float32 master weights, as `fit` does with
    `FitConfig.bf16` (`train.distributed.mixed_precision`)."""
    m = make_preset_step(name, n_steps + 1, batch, bf16)
    cfg, b, s, batches, sampler_s, n_params, state, step_fn = (m[k] for k in ("cfg", "b", "s", "batches", "sampler_s", "n_params",
                                                                             "state", "step_fn"))
    t0 = time.perf_counter()
    flops = xla_flops(step_fn, state, batches[0])
    state, _ = step_fn(state, batches[0])
    jax.block_until_ready(state.params)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(n_steps):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batches[i + 1])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    d = cfg.d_model
    roof = matmul_roofline(b * s, d, 4 * d)
    cells = b * s
    return {"preset": name, "bf16": bf16, "d_model": d, "n_layers": cfg.n_layers, "set_size": s, "batch": b, "genes": N_GENES,
            "backbone": cfg.backbone, "head": cfg.head, "n_params": int(n_params), "step_s": step_s,
            "step_s_all": times, "sampler_s": sampler_s, "compile_s": compile_s,
            "cells_per_s": cells / step_s, "cells_per_s_with_sampler": cells / (step_s + sampler_s),
            "flops_per_step": flops, "achieved_flops": flops / step_s, "roofline_flops": roof}


def run_arc_state(batch: int, n_steps: int) -> dict | None:
    """arc-state's training step at state_sm size and the same batch, in its env on the same 2 threads."""
    import subprocess
    import tempfile

    py = REPO / "benchmarks" / "peers" / "envs" / "state" / "bin" / "python"
    if not py.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "arc.json"
        subprocess.run([str(py), str(REPO / "benchmarks" / "peers" / "state_speed_peer.py"), str(out), "--batch", str(batch),
                        "--steps", str(n_steps), "--threads", "2"], check=True, capture_output=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["state_sm", "cpu-small"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset (after one compiling step)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--batch", type=int, default=0, help="sentences per step (0: the preset's)")
    parser.add_argument("--bf16", action="store_true", help="compute in bfloat16 with float32 master weights (GPUs, TPUs)")
    parser.add_argument("--arc-state", action="store_true",
                        help="also time arc-state's step at state_sm size (benchmarks/peers/state_speed_peer.py in its env)")
    parser.add_argument("--render", action="store_true", help="rewrite the table from the saved .json, measuring nothing")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        rows, device, args.steps, arc = saved["rows"], saved["device"], saved["steps"], saved.get("arc_state")
    else:
        rows = [bench_preset(p, args.steps, args.batch, args.bf16) for p in args.presets]
        arc = run_arc_state(args.batch or 16, args.steps) if args.arc_state else None
        device = f"{jax.devices()[0].platform} ({os.cpu_count()} cores visible, {platform.processor() or platform.machine()})"
    lines = [
        "# ST training throughput",
        "",
        f"Written by `benchmarks/bench_state_speed.py` on {device}, jax {jax.__version__}, "
        f"{'bfloat16 compute (float32 master weights)' if any(r.get('bf16') for r in rows) else 'float32'}. "
        f"One training step = B sentences x S cells x {N_GENES} HVGs, perturbation features {PERT_DIM}-d; "
        f"median of {args.steps} steps after compilation. FLOP/step is XLA's count of the step's HLO before optimisation; the "
        "roofline is the best (B*S x d) @ (d x 4d) float32 matmul measured in the same run.",
        "",
        "| model | preset (d, layers, S, B) | params | step (s) | cells/s | cells/s incl. sampler | GFLOP/step | achieved GFLOP/s | matmul roofline GFLOP/s | % of roofline | cells/s at the roofline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| ours ({r['backbone']}, {r['head']} head) | {r['preset']} ({r['d_model']}, {r['n_layers']}, {r['set_size']}, {r['batch']}) "
            f"| {r['n_params'] / 1e6:.1f}M | {r['step_s']:.2f} | {r['cells_per_s']:,.0f} | {r['cells_per_s_with_sampler']:,.0f} "
            f"| {r['flops_per_step'] / 1e9:.2f} | {r['achieved_flops'] / 1e9:.1f} | {r['roofline_flops'] / 1e9:.1f} "
            f"| {100 * r['achieved_flops'] / r['roofline_flops']:.0f}% "
            f"| {r['roofline_flops'] * r['set_size'] * r['batch'] / r['flops_per_step']:,.0f} |")
    if arc:
        ours = next((r for r in rows if r["preset"] == "state_sm"), None)
        ratio = f" (ours / arc-state: {ours['cells_per_s'] / arc['cells_per_s']:.2f}x)" if ours else ""
        lines += [
            f"| arc-state 0.11.1 (torch {arc['torch']}, {arc['threads']} threads) | state_sm (672, 4, {arc['set_size']}, "
            f"{arc['batch']}) | {arc['n_params'] / 1e6:.1f}M (21.5M of it the unused token table) | {arc['step_s']:.2f} "
            f"| {arc['cells_per_s']:,.1f} | | | | | | |",
            "",
            f"arc-state is measured by `benchmarks/peers/state_speed_peer.py` in its env, in the same run, on the same "
            f"shapes{ratio}: forward + energy loss + backward + Adam, no data loader.",
        ]
    else:
        lines += ["", "arc-state was not timed in this run (`--arc-state`; it needs benchmarks/peers/envs/state)."]
    lines += [
        "Our perturbation encoder runs once per sentence; arc-state's runs once per cell (its `pert_emb` is "
        f"repeated over the set), an extra (S-1) MLP passes over a {PERT_DIM}-d input per sentence.",
        "The last column is the ceiling of any implementation doing this step's FLOPs at the measured matmul rate.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    if not args.render:
        args.out.with_suffix(".json").write_text(json.dumps({"device": device, "steps": args.steps, "rows": rows,
                                                             "arc_state": arc}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
