"""Training speed on the accelerator JAX finds (a GPU, or the CPU when there is none), each figure next to
matmul rooflines measured in the same run.

Parts (`--parts`, run in this order; the results are rewritten after every row, so a run cut short keeps
what it measured, and a row that fails records its error instead of stopping the run):
  roofline  n x n x n matmul on random data: float32 at JAX's default precision (XLA may use TF32 on a GPU),
            float32 at HIGHEST, bfloat16; median of 10 after 3 warm-ups
  pretrain  the stage-1 step of `train stream-pretrain` (`models.jepa.streamed.make_pretrain_step`), float32
            and bf16 (`--bf16`), batches already on the device, state and batch placed by `train.mesh` over
            every device (the data-parallel path); batch = the preset's x each of `Sizes.batch_mults`
  state     the state-transition model's step (`bench_state_speed.bench_preset`), float32 and bf16
  biojepac  BioJEPAC's four training stages through `fit_biojepac` per preset, float32 (the in-memory trainer
            has no bf16 option), batches made on the host each step as in training (`bench_biojepac.bench_throughput`)
  stream    `train stream-pretrain` end to end from a backed .h5ad (loader, loop, logging), float32 and bf16,
            timed from its metrics.jsonl as `bench_devices.py` does

    .venv/bin/python benchmarks/bench_gpu.py                         # benchmarks/results/gpu_<device>.{json,md}
    .venv/bin/python benchmarks/bench_gpu.py --quick --out-dpath /tmp/gpu   # small sizes: a smoke run on a CPU
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_biojepac import bench_throughput  # noqa: E402
from bench_state_speed import bench_preset, make_preset_step, xla_flops  # noqa: E402

from biojepac.bench.provenance import git_commit  # noqa: E402
from biojepac.io import write_text_atomic  # noqa: E402

REPO_DPATH = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Sizes:
    roof_n: int = 8192
    """Matmul size of the rooflines."""
    biojepac_presets: tuple[str, ...] = ("cpu-small", "paper")
    pretrain_presets: tuple[str, ...] = ("cpu-small", "paper")
    pretrain_genes: int = 2000
    """Genes of the pretrain part's random cells (every one a token at `paper`; `cpu-small` reads 64)."""
    batch_mults: tuple[int, ...] = (1, 4)
    """Pretrain part: the preset's batch times each of these."""
    state_presets: tuple[str, ...] = ("cpu-small", "state_sm", "state")
    stream_presets: tuple[str, ...] = ("cpu-small",)
    stream_cells: int = 20_000
    stream_genes: int = 500
    steps: int = 10
    """Timed steps per row (after 2 warm-up steps, the first of which compiles)."""


QUICK = Sizes(roof_n=1024, biojepac_presets=("tiny",), pretrain_presets=("tiny", "cpu-small"), pretrain_genes=200,
              batch_mults=(1,), state_presets=("tiny",), stream_presets=("tiny",), stream_cells=2000, stream_genes=100, steps=2)


# ---- measurements ---------------------------------------------------------------------------------------

def matmul_rate(n: int, dtype, precision=None, n_warmup: int = 3, n_repeat: int = 10) -> dict:
    """Median FLOP/s of a jitted (n x n) @ (n x n) on random normal data."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a, b = jax.random.normal(ka, (n, n), dtype), jax.random.normal(kb, (n, n), dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=precision))
    for _ in range(n_warmup):
        jax.block_until_ready(f(a, b))
    times = []
    for _ in range(n_repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {"n": n, "median_s": sec, "flops": 2 * n**3 / sec}


def random_cells(n_cells: int, n_genes: int, seed: int) -> np.ndarray:
    """Log1p-normalised-looking expression: 80% zeros, the rest log1p of gamma counts."""
    rng = np.random.default_rng(seed)
    x = np.log1p(rng.gamma(1.0, 3.0, size=(n_cells, n_genes))) * (rng.random((n_cells, n_genes)) < 0.2)
    return x.astype(np.float32)


def bench_pretrain_step(preset: str, n_genes: int, batch_mult: int, bf16: bool, n_steps: int) -> dict:
    """Stage-1 step of `train stream-pretrain`, timed over `n_steps` dispatched back to back."""
    from biojepac.models.jepa.config import get_preset
    from biojepac.models.jepa.network import log_library
    from biojepac.models.jepa.streamed import make_pretrain_step
    from biojepac.train import mesh as meshlib

    mcfg = get_preset(preset)
    batch_size = mcfg.pretrain.batch_size * batch_mult
    state, step_fn = make_pretrain_step(n_genes, mcfg, mcfg.pretrain.n_steps, bf16=bf16)
    mesh = meshlib.make_mesh()
    state = meshlib.replicate(state, mesh)
    batches = []
    for i in range(4):  # a few distinct batches, rotated
        x = random_cells(batch_size, n_genes, seed=i)
        batches.append(meshlib.shard_batch({"x": x, "lib": log_library(x)}, mesh))
    t0 = time.perf_counter()
    flops = xla_flops(step_fn, state, batches[0])
    state, _ = step_fn(state, batches[0])
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    state, metrics = step_fn(state, batches[1])
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(n_steps):
        state, metrics = step_fn(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    step_s = (time.perf_counter() - t0) / n_steps
    tokens = min(mcfg.pretrain.token_subset or n_genes, n_genes)
    return {"preset": preset, "bf16": bf16, "d": mcfg.encoder.d, "layers": mcfg.encoder.n_layers, "genes": n_genes,
            "tokens": tokens, "batch": batch_size, "devices": len(jax.devices()), "compile_s": compile_s, "step_s": step_s,
            "cells_per_s": batch_size / step_s, "flops_per_step": flops, "achieved_flops": flops / step_s,
            "loss_finite": bool(np.isfinite(float(metrics["loss"])))}


def bench_stream(preset: str, bf16: bool, n_cells: int, n_genes: int, n_warmup: int = 2, n_steps: int = 10) -> dict:
    """`train stream-pretrain` from a backed file written here; steps after the first `n_warmup` timed."""
    from _backed import write_synthetic

    from biojepac.models.jepa.config import get_preset
    from biojepac.models.jepa.streamed import StreamedPretrainConfig, pretrain_streamed

    assert n_warmup + n_steps < 20, "the loop logs every step only below 20 steps"
    mcfg = get_preset(preset)
    with tempfile.TemporaryDirectory() as tmp, _pandas3_strings():
        fpath = pathlib.Path(tmp) / "cells.h5ad"
        write_synthetic(fpath, n_cells, n_genes, density=0.2, log1p_target=1e4)
        run_dpath = pathlib.Path(tmp) / "run"
        cfg = StreamedPretrainConfig(shards=(str(fpath),), run_dpath=run_dpath, preset=preset, bf16=bf16, progress=False,
                                     steps_scale=(n_warmup + n_steps) / mcfg.pretrain.n_steps, ckpt_every=10**6)
        t0 = time.perf_counter()
        pretrain_streamed(cfg)
        total_s = time.perf_counter() - t0
        rows = [json.loads(r) for r in (run_dpath / "metrics.jsonl").read_text().splitlines()]
    wall = {r["step"]: r["wall_s"] for r in rows}  # logged every step at this length (loss read: synchronised)
    step_s = (wall[n_warmup + n_steps] - wall[n_warmup]) / n_steps
    batch = mcfg.pretrain.batch_size
    return {"preset": preset, "bf16": bf16, "cells": n_cells, "genes": n_genes, "batch": batch,
            "total_s": total_s, "step_s": step_s, "cells_per_s": batch / step_s,
            "loss_finite": bool(np.isfinite(rows[-1].get("loss", np.nan)))}


def _pandas3_strings():
    """Under pandas >= 3 (outside our pins: the GPU machine's image has 3.0.6) string columns are
    `StringArray`s, which anndata 0.12 writes only when `allow_write_nullable_strings` is on."""
    import contextlib

    import anndata as ad
    import pandas as pd

    if int(pd.__version__.split(".")[0]) < 3:
        return contextlib.nullcontext()
    return ad.settings.override(allow_write_nullable_strings=True)


# ---- the run --------------------------------------------------------------------------------------------

def host_info(commit: str) -> dict:
    dev = jax.devices()[0]
    try:
        platform_version = dev.client.platform_version
    except Exception:  # not every backend reports it
        platform_version = ""
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": commit,
            "jax": jax.__version__, "jaxlib": _version("jaxlib"),
            "python": platform.python_version(), "platform": dev.platform, "device_kind": dev.device_kind,
            "platform_version": platform_version, "n_devices": len(jax.devices()), "devices": str(jax.devices()),
            "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1)}


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return ""



def peak_gib() -> float | None:
    """The device's peak memory in use so far (GiB), where the backend reports it."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**30, 2)


class Results:
    """Rows per part, rewritten to json + md after each row."""

    def __init__(self, out_dpath: pathlib.Path, name: str, host: dict, sizes: Sizes, budget_s: float):
        self.json_fpath, self.md_fpath = out_dpath / f"{name}.json", out_dpath / f"{name}.md"
        self.data = {"host": host, "sizes": dataclasses.asdict(sizes), "roofline": {}, "biojepac": [], "pretrain": [],
                     "state": [], "stream": []}
        self.t_start, self.budget_s = time.perf_counter(), budget_s

    def measure(self, part: str, label: dict, fn) -> None:
        """Run `fn()` into a row of `part`; its error (or the time budget) is recorded instead of raised."""
        if self.budget_s and time.perf_counter() - self.t_start > self.budget_s:
            rows = [{**label, "error": f"skipped: the run's --budget-s {self.budget_s:.0f} was spent"}]
        else:
            print(f"[{time.perf_counter() - self.t_start:6.1f}s] {part} {label}", flush=True)
            try:
                out = fn()
                rows = [{**label, **r, "peak_gib_so_far": peak_gib()} for r in (out if isinstance(out, list) else [out])]
            except Exception as e:
                traceback.print_exc()
                rows = [{**label, "error": f"{type(e).__name__}: {str(e)[:400]}"}]
        for r in rows:
            print("   ", {k: v for k, v in r.items() if k not in ("step_s_all",)}, flush=True)
        self.data[part] += rows
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t_start, 1)
        self.json_fpath.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.json_fpath, json.dumps(self.data, indent=1, default=str))
        write_text_atomic(self.md_fpath, render_md(merge([self.data])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="roofline,pretrain,state,biojepac,stream")
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 timed steps (a smoke run; minutes on a CPU)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per row (0: 10, or 2 with --quick)")
    parser.add_argument("--out-dpath", type=pathlib.Path, default=REPO_DPATH / "benchmarks" / "results")
    parser.add_argument("--name", default="", help="results file stem (default: gpu_<device>, e.g. gpu_h200; cpu_<cores>)")
    parser.add_argument("--commit", default="", help="the code's commit, recorded (default: git rev-parse HEAD)")
    parser.add_argument("--budget-s", type=float, default=0, help="rows not started within this many seconds are skipped (0: none)")
    for part in ("pretrain", "state", "biojepac", "stream"):
        parser.add_argument(f"--{part}-presets", nargs="+", default=None, help=f"presets of the {part} part (default: the sizes')")
    parser.add_argument("--merge", nargs="+", type=pathlib.Path, default=None,
                        help="measure nothing: combine these results .json files (runs of this script) into --out-dpath/--name")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (with --merge)")
    parser.add_argument("--recount", action="store_true",
                        help="with --merge: recount each row's FLOPs per step here (`xla_flops`, the HLO before optimisation)")
    args = parser.parse_args()
    if args.merge:
        data = merge([json.loads(f.read_text()) for f in args.merge], args.note)
        if args.recount:
            recount(data)
        stem = args.out_dpath / (args.name or args.merge[0].stem)
        write_text_atomic(stem.with_suffix(".json"), json.dumps(data, indent=1, default=str))
        write_text_atomic(stem.with_suffix(".md"), render_md(data))
        print(render_md(data))
        return
    sizes = QUICK if args.quick else Sizes()
    if args.steps:
        sizes = dataclasses.replace(sizes, steps=args.steps)
    for part in ("pretrain", "state", "biojepac", "stream"):
        if getattr(args, f"{part}_presets") is not None:
            sizes = dataclasses.replace(sizes, **{f"{part}_presets": tuple(getattr(args, f"{part}_presets"))})
    host = host_info(args.commit or git_commit())
    if host["platform"] == "cpu" and not args.quick:
        print("bench_gpu: no accelerator found; the full sizes take long on a CPU (--quick for a smoke run)", flush=True)
    name = args.name or (f"gpu_{host['device_kind'].split()[-1].lower()}" if host["platform"] == "gpu" else f"cpu_{host['cpus']}")
    res = Results(args.out_dpath, name, host, sizes, args.budget_s)
    print(host, flush=True)
    parts = args.parts.split(",")
    n = sizes.steps

    if "roofline" in parts:
        for label, dtype, precision in (("float32", jnp.float32, None), ("float32_highest", jnp.float32, jax.lax.Precision.HIGHEST),
                                        ("bfloat16", jnp.bfloat16, None)):
            try:
                res.data["roofline"][label] = matmul_rate(sizes.roof_n, dtype, precision)
            except Exception as e:
                traceback.print_exc()
                res.data["roofline"][label] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            print("   roofline", label, res.data["roofline"][label], flush=True)
        res.write()
    f32_gflops = res.data["roofline"].get("float32", {}).get("flops", float("nan")) / 1e9

    if "pretrain" in parts:
        for preset in sizes.pretrain_presets:
            for mult in sizes.batch_mults:
                for bf16 in (False, True):
                    res.measure("pretrain", {"preset": preset, "bf16": bf16, "batch_mult": mult}, lambda: bench_pretrain_step(preset, sizes.pretrain_genes, mult, bf16, n))
    if "state" in parts:
        for preset in sizes.state_presets:
            for bf16 in (False, True):
                res.measure("state", {"preset": preset, "bf16": bf16}, lambda: bench_preset(preset, n, 0, bf16))
    if "biojepac" in parts:
        for preset in sizes.biojepac_presets:
            res.measure("biojepac", {"preset": preset, "bf16": False}, lambda: bench_throughput(n, preset, lambda: f32_gflops))
    if "stream" in parts:
        for preset in sizes.stream_presets:
            for bf16 in (False, True):
                res.measure("stream", {"preset": preset, "bf16": bf16}, lambda: bench_stream(preset, bf16, sizes.stream_cells, sizes.stream_genes, n_steps=n))
    res.write()
    print(render_md(merge([res.data])))


def recount(data: dict) -> None:
    """Each measured row's FLOPs per step counted again on this machine by `xla_flops` (the same shapes and
    code; the count before optimisation does not depend on the backend), the count it was saved with kept as
    `*_saved`, and its achieved FLOP/s recomputed from its measured step time."""
    from biojepac.models.jepa.config import get_preset
    from biojepac.models.jepa.network import log_library
    from biojepac.models.jepa.streamed import make_pretrain_step

    data["flops_recounted"] = {"jax": jax.__version__, "platform": jax.devices()[0].platform, "commit": git_commit()}
    for r in data["pretrain"]:
        if "error" not in r:
            mcfg = get_preset(r["preset"])
            state, step_fn = make_pretrain_step(r["genes"], mcfg, mcfg.pretrain.n_steps, bf16=r["bf16"])
            x = random_cells(r["batch"], r["genes"], seed=0)
            r["flops_per_step_saved"], r["flops_per_step"] = r["flops_per_step"], xla_flops(step_fn, state, {"x": x, "lib": log_library(x)})
            r["achieved_flops"] = r["flops_per_step"] / r["step_s"]
            print("recount pretrain", r["preset"], r["bf16"], r["batch"], r["flops_per_step_saved"] / 1e9, "->", r["flops_per_step"] / 1e9, flush=True)
    for r in data["state"]:
        if "error" not in r:
            m = make_preset_step(r["preset"], 1, r["batch"], r["bf16"])
            r["flops_per_step_saved"], r["flops_per_step"] = r["flops_per_step"], xla_flops(m["step_fn"], m["state"], m["batches"][0])
            r["achieved_flops"] = r["flops_per_step"] / r["step_s"]
            print("recount state", r["preset"], r["bf16"], r["flops_per_step_saved"] / 1e9, "->", r["flops_per_step"] / 1e9, flush=True)
    for preset in sorted({r["preset"] for r in data["biojepac"] if "error" not in r}):
        counted = {c["stage"]: c["gflop_per_step"] for c in bench_throughput(1, preset, lambda: float("nan"))}
        for r in data["biojepac"]:
            if "error" not in r and r["preset"] == preset:
                r["gflop_per_step_saved"], r["gflop_per_step"] = r["gflop_per_step"], counted[r["stage"]]
                r["gflops"] = r["gflop_per_step"] * 1e3 / r["step_ms"]
                print("recount biojepac", preset, r["stage"], r["gflop_per_step_saved"], "->", r["gflop_per_step"], flush=True)


# ---- the report -----------------------------------------------------------------------------------------

PARTS = ("biojepac", "pretrain", "state", "stream")


def merge(datas: list[dict], notes: list[str] = ()) -> dict:
    """Runs of this script as one report: each row tagged with its run (rows compare to their own run's
    rooflines); a row skipped for time in one run is dropped where another run measured it."""
    if len(datas) == 1 and "runs" in datas[0]:  # already merged: re-rendered as it is
        return {**datas[0], "notes": datas[0].get("notes", []) + list(notes)}
    out = {"runs": [{k: d[k] for k in ("host", "sizes", "roofline", "elapsed_s") if k in d} for d in datas],
           **{p: [] for p in PARTS}, "notes": list(notes)}
    key = lambda p, r: (p, r.get("preset"), r.get("bf16"), r.get("batch_mult"))
    measured = {key(p, r) for d in datas for p in PARTS for r in d.get(p, []) if "error" not in r}
    for i, d in enumerate(datas, 1):
        for p in PARTS:
            out[p] += [{"run": i, **r} for r in d.get(p, [])
                       if not (r.get("error", "").startswith("skipped") and key(p, r) in measured)]
    return out


def _pct(x, roof) -> str:
    return f"{100 * x / roof:.1f}%" if roof and np.isfinite(roof) and np.isfinite(x) else ""


def _saved(r: dict) -> str:
    return f"{r['flops_per_step_saved'] / 1e9:.1f}" if "flops_per_step_saved" in r else ""


def _t(flops) -> str:
    return f"{flops / 1e12:.2f}" if flops is not None and np.isfinite(flops) else ""


def render_md(d: dict) -> str:
    """The report of `merge`'s output: rooflines per run, then one table per part."""
    runs = d["runs"]
    h = runs[0]["host"]

    def roof(r, name):
        return runs[r.get("run", 1) - 1]["roofline"].get(name, {}).get("flops", float("nan"))

    lines = [
        f"# Training speed on {h['device_kind']} ({h['platform']})",
        "",
        f"Written by `benchmarks/bench_gpu.py`: jax {h['jax']} (jaxlib {h['jaxlib']}), Python {h['python']}, "
        f"{h['n_devices']} device(s) `{h['devices']}`, platform version `{h['platform_version']}`, {h['cpus']} host CPUs. "
        f"Timed steps per row: {runs[0]['sizes']['steps']}, after 2 warm-up steps (the first compiles). FLOPs per step are "
        "XLA's count of the step's HLO before optimisation (`bench_state_speed.xla_flops`); a row's % is its achieved FLOP/s over the matmul roofline "
        "of its precision measured in the same run (float32 rows: the float32 default-precision roofline; bf16 rows: "
        "bfloat16's). Rows that failed say why." + (
            f" FLOPs were recounted after the runs on {d['flops_recounted']['platform']} (jax {d['flops_recounted']['jax']}, "
            f"commit `{d['flops_recounted']['commit']}`) from the same steps' HLO before optimisation; the last column is the "
            "count saved by the run (XLA's count of the step as compiled on the device)." if "flops_recounted" in d else ""),
        "",
        "| run | commit | started (UTC) | host load at start | run time s |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {i} | `{r['host']['commit']}` | {r['host']['date_utc']} | {r['host']['load_1min']} | {r.get('elapsed_s')} |"
              for i, r in enumerate(runs, 1)]
    lines += ["", "## Matmul rooflines (n x n x n, random normal data, median of 10 after 3 warm-ups)", "",
              "| run | precision | n | median ms | TFLOP/s |", "|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        for k, v in r["roofline"].items():
            lines.append(f"| {i} | {k} | {v.get('n', '')} | {v['median_s'] * 1e3:.3f} | {v['flops'] / 1e12:.2f} |" if "flops" in v
                         else f"| {i} | {k} | | | failed: {v.get('error')} |")
    lines += ["", "float32 is JAX's default matmul precision (XLA may run it as TF32 on a GPU); float32_highest forces "
              "full float32.", ""]

    def pct(r, flops):
        return _pct(flops, roof(r, "bfloat16" if r["bf16"] else "float32"))

    def section(title: str, intro: list[str], header: str, rows: list[dict], row) -> list[str]:
        """A part's table: one line per row, `row(r)` for a measured one, the error for a failed one."""
        n_cols = header.count("|") - 1
        out = [f"## {title}", "", *intro, header, "|" + "---|" * n_cols]
        for r in rows:
            out.append(f"| {r['run']} | {r.get('preset', '')} | {r.get('bf16', '')} | failed: {r['error']} |" + " |" * (n_cols - 4)
                       if "error" in r else row(r))
        return out + [""]

    if d["biojepac"]:
        lines += section(
            "BioJEPAC, four stages through `fit_biojepac` (float32; 500-gene synthetic `demo` screen)",
            ["Batches are made on the host each step, as in training (the step time includes that and the copy to the device).", ""],
            "| run | preset | bf16 | stage | batch (cells) | tokens | step ms | cells/s | GFLOP/step | achieved TFLOP/s | % of roofline | recompiles | GFLOP/step, saved count |",
            d["biojepac"],
            lambda r: (f"| {r['run']} | {r['preset']} | {r['bf16']} | {r['stage']} | {r['batch']} | {r['tokens']} | {r['step_ms']} "
                       f"| {r['cells_per_s']:,.0f} | {r['gflop_per_step']} | {_t(r['gflops'] * 1e9)} | {pct(r, r['gflops'] * 1e9)} "
                       f"| {r['recompiles']} | {r.get('gflop_per_step_saved', '')} |"))
    if d["pretrain"]:
        lines += section(
            "BioJEPAC stage-1 step of `train stream-pretrain`, float32 vs bf16 (random cells, batches on the device)", [],
            "| run | preset (d, layers) | bf16 | genes | tokens/cell | batch | first step s (compile) | step ms | cells/s | GFLOP/step | achieved TFLOP/s | % of roofline | loss finite | GFLOP/step, saved count |",
            d["pretrain"],
            lambda r: (f"| {r['run']} | {r['preset']} ({r['d']}, {r['layers']}) | {r['bf16']} | {r['genes']} | {r['tokens']} | {r['batch']} "
                       f"| {r['compile_s']:.1f} | {r['step_s'] * 1e3:.2f} | {r['cells_per_s']:,.0f} | {r['flops_per_step'] / 1e9:.1f} "
                       f"| {_t(r['achieved_flops'])} | {pct(r, r['achieved_flops'])} | {r['loss_finite']} | {_saved(r)} |"))
    if d["state"]:
        lines += section(
            "State-transition model step, float32 vs bf16 (`bench_state_speed.bench_preset`; 2,000 genes, 5,120-d perturbation features)",
            ["Median of the timed steps, each synchronised; the sampler (host NumPy) is timed apart.", ""],
            "| run | preset (d, layers, S, B) | bf16 | params | compile s | step ms | cells/s | cells/s incl. sampler | GFLOP/step | achieved TFLOP/s | % of roofline | GFLOP/step, saved count |",
            d["state"],
            lambda r: (f"| {r['run']} | {r['preset']} ({r['d_model']}, {r['n_layers']}, {r['set_size']}, {r['batch']}) | {r['bf16']} "
                       f"| {r['n_params'] / 1e6:.1f}M | {r['compile_s']:.1f} | {r['step_s'] * 1e3:.2f} | {r['cells_per_s']:,.0f} "
                       f"| {r['cells_per_s_with_sampler']:,.0f} | {r['flops_per_step'] / 1e9:.1f} | {_t(r['achieved_flops'])} "
                       f"| {pct(r, r['achieved_flops'])} | {_saved(r)} |"))
    if d["stream"]:
        n_steps = 2 + runs[0]["sizes"]["steps"]
        lines += section(
            "`train stream-pretrain` end to end from a backed .h5ad (loader, loop, per-step logging)", [],
            f"| run | preset | bf16 | cells x genes | batch | whole command s (compile, {n_steps} steps, checkpoint) | step ms | cells/s | loss finite |",
            d["stream"],
            lambda r: (f"| {r['run']} | {r['preset']} | {r['bf16']} | {r['cells']:,} x {r['genes']} | {r['batch']} | {r['total_s']:.1f} "
                       f"| {r['step_s'] * 1e3:.2f} | {r['cells_per_s']:,.0f} | {r['loss_finite']} |"))
    if d.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in d["notes"]] + [""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
