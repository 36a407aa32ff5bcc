"""`biojepac bench`: models x tasks, per-perturbation metrics into SQLite, and a leaderboard queried from it.

For each task (see `tasks.py`) and model:
1. a prediction is made in its own process (ours and baselines: `worker.py`; peers STATE and GEARS:
   their own venvs via `peers.py`) and cached under `cache_dpath` keyed by task, model, config and seed;
2. it is scored per context by `biojepac.eval.evaluate` against the real held-out cells, with the
   cell-mean baseline's prediction as the VCC baseline;
3. one `runs` row plus its per-perturbation and summary rows go into the results database.
A peer whose venv is missing gets a `skipped` run saying why. Then `leaderboard.write` turns the latest
run of each (model, task) into benchmarks/results/leaderboard.md and PNG plots.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import time

from biojepac.bench import tasks as tasklib
from biojepac.bench.provenance import git_commit
from biojepac.errors import InputError
from biojepac.features import DEFAULT_FEATURES
from biojepac.io import write_text_atomic
from biojepac.models.base import Preset

BASELINES = ("cell-mean", "control-mean", "context-transfer", "linear", "additive")
PEERS = ("STATE", "GEARS")
FEATURE_MODELS = ("linear", "ridge", "knn", "state", "state-pb", "biojepac")
"""Our models that read perturbation features: the bench gives them their default, `DEFAULT_FEATURES`."""
REPO_DPATH = pathlib.Path(__file__).resolve().parents[3]
"""The checkout the bench runs from (its children run there; git commit recorded with each run)."""


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...] = (*BASELINES, "state", "biojepac", *PEERS)
    """Models: `models.registry` names (baseline kinds, `state`, `state-pb`, `biojepac`) and the peers STATE, GEARS."""
    tasks: tuple[str, ...] = ("norman-unseen-single", "norman-combos", "mcfaline-heldout-line", "cross-dataset-fewshot",
                              "synthetic-unseen-pert", "synthetic-fewshot-ctx")
    """Tasks (see biojepac.bench.tasks); real data first, so the peers' rows come early."""
    data_dpath: pathlib.Path = pathlib.Path("../shared/data")
    """Folder with norman19_mcfaline23_devel.h5ad and the GO table."""
    db: pathlib.Path = pathlib.Path("benchmarks/results/bench.sqlite")
    """Results database (created / migrated on first use)."""
    out_dpath: pathlib.Path = pathlib.Path("benchmarks/results")
    """Where leaderboard.md and the plots go."""
    cache_dpath: pathlib.Path = pathlib.Path("benchmarks/cache")
    """Cached predictions, task folders and peer working directories (git-ignored)."""
    state_preset: Preset = "cpu-small"
    """Preset of our state-transition model (tiny | cpu-small | paper)."""
    biojepac_preset: Preset = "tiny"
    """Preset of BioJEPAC (tiny | cpu-small | paper)."""
    steps_scale: float = 1.0
    """Multiply the neural models' training steps."""
    peer_state_steps: int = 400
    """`training.max_steps` of the real STATE (its reduced CPU model)."""
    peer_gears_epochs: int = 5
    """Epochs of each GEARS model."""
    n_boot: int = 200
    """Bootstrap resamples for the confidence intervals."""
    seed: int = 0
    """Seed of splits, models and prediction."""
    force: bool = False
    """Recompute predictions even when cached."""
    leaderboard_only: bool = False
    """Only rewrite leaderboard.md and plots from the database."""


def run_bench(cfg: BenchConfig) -> None:
    from biojepac import results_db
    from biojepac.bench import leaderboard

    # Children run in the checkout: relative paths are the caller's, so resolve them once here.
    cfg = dataclasses.replace(cfg, **{f: getattr(cfg, f).resolve() for f in ("data_dpath", "db", "out_dpath", "cache_dpath")})
    check_bench(cfg)
    con = results_db.connect(cfg.db)
    statuses = []
    if not cfg.leaderboard_only:
        for task_name in cfg.tasks:
            task = tasklib.get_task(task_name, cfg.data_dpath, seed=cfg.seed, cache_dpath=cfg.cache_dpath)
            models = ["cell-mean", *[m for m in cfg.models if m != "cell-mean"]]  # the baseline first
            base_fpath = None
            for model in models:
                run = predict(cfg, task, model)
                if model == "cell-mean":
                    base_fpath = run.get("pred_fpath")
                per, summary = ([], [])
                if run["status"] == "ok":
                    try:
                        per, summary = score(task, pathlib.Path(run["pred_fpath"]), base_fpath, cfg)
                    except Exception as err:  # a broken prediction is a failed run, recorded, not a crash
                        run.update(status="failed", note=f"evaluate: {type(err).__name__}: {err}"[:500])
                if model not in cfg.models:
                    continue  # cell-mean was only needed as the VCC baseline
                results_db.add_run(con, run, per, summary)
                statuses.append((task_name, model, run["status"], run["note"]))
                vcc = dict((m, v) for m, v, _, _ in summary).get("vcc_score")
                print(f"[bench] {task_name:<24} {model:<18} {run['status']:<8} vcc={vcc} {run['note'][:120]}", flush=True)
                leaderboard.write(con, cfg.out_dpath, cfg.db)  # after every run: a long bench shows progress
    paths = leaderboard.write(con, cfg.out_dpath, cfg.db)
    print(f"[bench] wrote {', '.join(map(str, paths))}")
    failed = [s for s in statuses if s[2] == "failed"]
    if statuses and len(failed) == len(statuses):
        task, model, _, note = failed[0]
        raise InputError(f"every run failed ({len(failed)}; recorded in {cfg.db}), e.g. {model} on {task}: {note[-200:]}")


def check_bench(cfg: BenchConfig) -> None:
    """Refuse unknown models and tasks, and a leaderboard from a database that does not exist, before any work."""
    from biojepac.models import registry

    known = (*registry.names(), *PEERS)
    unknown = [m for m in cfg.models if m not in known]
    if unknown:
        raise InputError(f"--models {unknown[0]!r}: not a model; known: {list(known)}")
    unknown = [t for t in cfg.tasks if t not in tasklib.TASKS]
    if unknown:
        raise InputError(f"--tasks {unknown[0]!r}: not a task; known: {list(tasklib.TASKS)}")
    if cfg.leaderboard_only and not cfg.db.is_file():
        raise InputError(f"--db {cfg.db}: no such results database; --leaderboard-only only reads one (run the bench first)")


def predict(cfg: BenchConfig, task: tasklib.Task, model: str) -> dict:
    """Cached or fresh prediction for (task, model); returns a `runs` row (without metrics)."""
    from biojepac.bench import peers

    key = {"task": task.name, "model": model, "seed": cfg.seed, "checksum": task.checksum,
           **({"state_preset": cfg.state_preset} if model in ("state", "state-pb") else {}),
           **({"biojepac_preset": cfg.biojepac_preset} if model == "biojepac" else {}),
           **({"features": DEFAULT_FEATURES} if model in FEATURE_MODELS else {}),
           **({"steps_scale": cfg.steps_scale} if model in ("state", "state-pb", "biojepac") and cfg.steps_scale != 1 else {}),
           **({"steps": cfg.peer_state_steps} if model == "STATE" else {}),
           **({"epochs": cfg.peer_gears_epochs} if model == "GEARS" else {})}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    work = cfg.cache_dpath / task.name / f"{model}-{digest}"
    work.mkdir(parents=True, exist_ok=True)
    pred_fpath, info_fpath = work / "pred.h5ad", work / "info.json"
    run = {"model": model, "task": task.name, "split_name": task.split.name,
           "split_json": dataclasses.asdict(task.split), "dataset_checksum": task.checksum, "git_commit": git_commit(),
           "command": " ".join(["biojepac", *sys.argv[1:]]) if sys.argv else "biojepac bench",
           "host": f"{socket.gethostname()} ({platform.machine()}, {os.cpu_count()} cpu)", "model_config": key,
           "status": "ok", "note": ""}
    if model in PEERS:
        ok, why = peers.available(model, task)
        if not ok:
            return {**run, "status": "skipped", "note": why}
    if pred_fpath.exists() and info_fpath.exists() and not cfg.force:
        info = json.loads(info_fpath.read_text())
        return {**run, **info["run"], "note": (info["run"].get("note", "") + " (cached prediction)").strip()}
    if cfg.force:  # recompute from scratch: a run folder left by earlier code must not be resumed
        shutil.rmtree(work / "run", ignore_errors=True)
    t0 = time.perf_counter()
    if model in PEERS:
        cmd = peers.command(model, task, work, pred_fpath, cfg)
    else:
        spec = {"model": model, "task": task.name, "seed": cfg.seed, "data_dpath": str(cfg.data_dpath),
                "work_dpath": str(work), "out_fpath": str(pred_fpath), "cache_dpath": str(cfg.cache_dpath),
                "info_fpath": str(work / "worker.json"),
                "state_preset": cfg.state_preset, "biojepac_preset": cfg.biojepac_preset, "steps_scale": cfg.steps_scale}
        write_text_atomic(work / "spec.json", json.dumps(spec))
        cmd = [sys.executable, "-m", "biojepac.bench.worker", str(work / "spec.json")]
    rc, peak_mb, log_tail = run_child(cmd, work / "log.txt")
    wall_s = time.perf_counter() - t0
    if rc != 0 or not pred_fpath.exists():
        return {**run, "status": "failed", "note": f"exit {rc}: {log_tail}"[-500:], "train_s": wall_s}
    extra = peers.read_info(model, work) if model in PEERS else json.loads((work / "worker.json").read_text())
    run.update(train_s=extra.get("train_s", wall_s), predict_s=extra.get("predict_s", extra.get("infer_s")),
               peak_mem_mb=peak_mb, pred_fpath=str(pred_fpath), note=extra.get("note", ""))
    if "config" in extra:
        run["model_config"] = {**key, "config": extra["config"]}
    write_text_atomic(info_fpath, json.dumps({"run": {k: run[k] for k in ("train_s", "predict_s", "peak_mem_mb", "pred_fpath",
                                                                   "note", "model_config")}}, default=str))
    return run


def run_child(cmd: list[str], log_fpath: pathlib.Path) -> tuple[int, float, str]:
    """Run at low priority; return (exit code, peak resident memory in MiB of the child tree, log tail)."""
    with open(log_fpath, "w") as log:
        proc = subprocess.Popen(["nice", "-n", "5", *cmd], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_DPATH,
                                env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
        # wait4 reports this child's own peak RSS (max over it and the descendants it waited for).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log_fpath.read_text(errors="replace")[-400:].replace("\n", " | ")
    return proc.returncode, usage.ru_maxrss / 1024.0, tail


def score(task: tasklib.Task, pred_fpath: pathlib.Path, base_fpath: str | None, cfg: BenchConfig):
    """Per-context `evaluate`; returns per-perturbation rows and summary rows (pert-weighted over contexts)."""
    import anndata as ad
    import numpy as np

    from biojepac.data import schema
    from biojepac.eval.evaluate import evaluate

    pred_all = ad.read_h5ad(pred_fpath)
    base_all = ad.read_h5ad(base_fpath) if base_fpath else None
    masks = tasklib.fold_masks(task)
    obs = task.adata.obs
    per_rows, sums = [], {}
    contexts = sorted({c for c, _ in task.split.test})
    for ctx in contexts:
        in_ctx = (obs[schema.CONTEXT_COL] == ctx).to_numpy()
        is_ctrl = (obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
        real = task.adata[in_ctx & (masks["test"] | is_ctrl)].copy()

        def pick(a):
            return a[(a.obs[schema.CONTEXT_COL].astype(str) == ctx).to_numpy()].copy()

        out = evaluate(pick(pred_all), real, baseline=pick(base_all) if base_all is not None else None,
                       n_boot=cfg.n_boot, seed=cfg.seed)
        per = out["per_perturbation"]
        for pert, row in per.iterrows():
            per_rows += [(ctx, str(pert), str(m), float(v)) for m, v in row.items() if _is_num(v)]
        agg = out["aggregates"]
        flat = {k: v for k, v in agg.items() if _is_num(v)}
        flat |= cell_eval_check(pick(pred_all), real, pred_fpath.parent)
        flat |= {f"baseline_{k}": v for k, v in agg.get("baseline", {}).items() if _is_num(v)}
        flat |= {f"ceiling_{k}": v for k, v in agg.get("ceiling", {}).items() if _is_num(v)}
        flat |= {f"normalised_{k}": v for k, v in agg.get("normalised", {}).items() if _is_num(v)}
        for name, value in flat.items():
            ci = agg.get("ci95", {}).get(name)
            sums.setdefault(name, []).append((value, len(per), *(ci if ci is not None else (None, None))))
    summary = []
    for name, vals in sums.items():
        w = np.asarray([n for _, n, _, _ in vals], float)
        mean = float(np.average([v for v, *_ in vals], weights=w))
        # Confidence intervals only exist per context; with one test context (every task here) they are exact.
        lo, hi = (vals[0][2], vals[0][3]) if len(vals) == 1 else (None, None)
        summary.append((name, mean, lo, hi))
    return per_rows, summary


def cell_eval_check(pred, real, work: pathlib.Path) -> dict[str, float]:
    """The same prediction scored by Arc's cell-eval (0.8.2, `vcc` profile) as a second opinion; {} if absent."""
    try:
        import logging

        import cell_eval
    except ImportError:
        return {}
    logging.getLogger("cell_eval").setLevel(logging.ERROR)
    try:
        ev = cell_eval.MetricsEvaluator(adata_pred=pred.copy(), adata_real=real.copy(), control_pert="non-targeting",
                                        pert_col="target_gene", num_threads=1, outdir=str(work / "cell_eval"))
        res, _ = ev.compute(profile="vcc", write_csv=False, break_on_error=True)
    except Exception as err:  # recorded as missing, never fatal: it is a cross-check
        print(f"[bench] cell-eval failed: {type(err).__name__}: {err}", flush=True)
        return {}
    df = res.to_pandas()
    return {f"celleval_{k}": float(df[k].mean()) for k in ("overlap_at_N", "discrimination_score_l1", "mae") if k in df}


def _is_num(v) -> bool:
    import numbers

    return isinstance(v, numbers.Number) and not isinstance(v, bool)
