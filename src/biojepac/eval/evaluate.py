"""`biojepac evaluate`: score a prediction file against the real file, write CSV + JSON + a report.

Profiles: `vcc` (cell-eval 0.8.2's MAE/PDS/DES and score), `report` (the BioJEPAC report's metrics),
`calibrated` (cosine PDS, DE Jaccard/direction, LFC nMAE, each normalised between baseline and a split-half
ceiling), `all` (those three), and `vcc2026` (cell-eval2 0.20.0's `--preset vcc2026` on raw counts: the six
metrics, its baseline, its split-half replicate and the score, per context; `eval.vcc2026_scale`).
With `--screen`, the cell-mean baseline is built from the training screen as cell-eval builds it; with
`--baseline`, a baseline prediction file is scored the same way. Inputs are never modified.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import pathlib
import threading
import time
import warnings
from typing import Literal, Optional, TYPE_CHECKING

import numpy as np
from biojepac.data import schema
from biojepac.errors import InputError
from biojepac.io import write_dir_atomic
from biojepac.eval.h5read import read_parts, small_pages

# The scoring modules are imported in `_score`: the compiled kernels (`eval.kernels`) while the files are
# read, the rest once they are read. The VCC profile never imports scipy (`h5read.CSRArrays`, `eval.cephes`).
if TYPE_CHECKING:
    import anndata as ad

    from biojepac.eval.inputs import ScoredScreen
    from biojepac.eval.mwu import Workers
    from biojepac.eval.stats import Summary

Profile = Literal["vcc", "report", "calibrated", "all", "vcc2026"]
HEADLINE = ("overlap_at_N", "discrimination_score_l1", "mae", "pearson_delta", "pearson_delta_top20", "mse",
            "r2", "r2_top50", "shift_magnitude", "pds_cosine", "de_jaccard", "de_direction", "lfc_nmae")
"""Metrics given a bootstrap CI (the last four: `calibrated.NAMES`)."""


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """`biojepac evaluate`'s options. The optional ones are `Optional[X]`, not `X | None`: tyro checks a
    default against its type without help only for `Optional`, and imports typeguard (0.06 s, before any
    file is read) for `X | None`."""

    pred: pathlib.Path
    """Predicted cells (.h5ad): perturbations in `pert_col`, control cells labelled `control`."""
    real: pathlib.Path
    """Real cells (.h5ad) with the same genes in the same order and the same perturbations."""
    out_dpath: pathlib.Path
    """Folder for per_perturbation.csv, aggregates.json, report.md and the PNG plots."""
    baseline: Optional[pathlib.Path] = None
    """A baseline prediction (.h5ad) to score against (e.g. cell-eval's cell-mean baseline file)."""
    screen: Optional[pathlib.Path] = None
    """Training screen (.h5ad): build cell-eval's cell-mean baseline from its cells (instead of --baseline)."""
    profile: Profile = "all"
    """Which metrics: vcc, report, calibrated, all (the three), or vcc2026 (raw counts; cell-eval2's profile)."""
    pert_col: str = schema.PERT_COL
    """obs column holding the perturbation label."""
    control: str = schema.CONTROL
    """Label of the control cells."""
    n_boot: int = 1000
    """Bootstrap resamples over perturbations for the confidence intervals."""
    seed: int = 0
    """Seed for the bootstrap and the split-half ceiling."""
    plots: bool = False
    """Also write report.md with PNG plots (on request: matplotlib's import and the drawing take longer than the
    scoring itself; the CSV and JSON are always written)."""
    context_col: Optional[str] = None
    """vcc2026: obs column naming each cell's context (cell line); each context is scored on its own scale."""
    target_map: Optional[pathlib.Path] = None
    """vcc2026: CSV `label,gene` giving a label's target gene (empty gene: none), over our gene harmonisation."""


def run_evaluate(cfg: EvaluateConfig) -> None:
    if cfg.profile == "vcc2026":
        out = evaluate_vcc2026(cfg.pred, cfg.real, out_dpath=cfg.out_dpath, pert_col=cfg.pert_col, control=cfg.control,
                               context_col=cfg.context_col, target_gene_map=read_target_map(cfg.target_map))
        for ctx, res in out["contexts"].items():
            print(f"{ctx or 'score'}: " + ", ".join(f"{k} {x:.4f}" for k, x in res["scores"].items()))
        print(f"wrote {', '.join(out['paths'].values())}  ({out['seconds']:.1f} s)")
        return
    out = _score(  # no DataFrame needed: pandas is not even imported without the report
        cfg.pred, cfg.real, baseline=cfg.baseline, train=cfg.screen, profile=cfg.profile, out_dpath=cfg.out_dpath,
        pert_col=cfg.pert_col, control=cfg.control, n_boot=cfg.n_boot, seed=cfg.seed, plots=cfg.plots,
    )
    agg = out["aggregates"]
    for key in ("overlap_at_N", "discrimination_score_l1", "mae", "vcc_score", "pearson_delta_top20"):
        if key in agg:
            print(f"{key:>26}: {agg[key]:.4f}")
    print(f"wrote {', '.join(out['paths'].values())}  ({out['seconds']:.1f} s)")


def evaluate(
    pred: ad.AnnData | str | pathlib.Path,
    real: ad.AnnData | str | pathlib.Path,
    *,
    baseline: ad.AnnData | str | pathlib.Path | None = None,
    train: ad.AnnData | str | pathlib.Path | None = None,
    profile: Profile = "all",
    out_dpath: str | pathlib.Path | None = None,
    pert_col: str = schema.PERT_COL,
    control: str = schema.CONTROL,
    n_boot: int = 1000,
    seed: int = 0,
    plots: bool = False,
    context_col: str | None = None,
    target_gene_map: dict | None = None,
) -> dict:
    """Score `pred` against `real`. Returns {"per_perturbation": DataFrame, "aggregates": dict, "paths": dict}.

    Writes nothing when `out_dpath` is None; the CSV and JSON, plus report.md and its plots with `plots`.
    `profile="vcc2026"` is `evaluate_vcc2026` (raw counts; `context_col`, `target_gene_map` apply to it only).
    """
    import pandas as pd

    if profile == "vcc2026":
        return evaluate_vcc2026(pred, real, out_dpath=out_dpath, pert_col=pert_col, control=control,
                                context_col=context_col, target_gene_map=target_gene_map)
    out = _score(pred, real, baseline=baseline, train=train, profile=profile, out_dpath=out_dpath, pert_col=pert_col,
                 control=control, n_boot=n_boot, seed=seed, plots=plots)
    per = pd.DataFrame(out.pop("columns"), index=pd.Index(out.pop("perts"), name="perturbation"))
    return {"per_perturbation": per, **out}


@small_pages()
def _score(pred, real, *, baseline, train, profile: Profile, out_dpath, pert_col: str, control: str, n_boot: int,
           seed: int, plots: bool) -> dict:
    """`evaluate` with the per-perturbation table as {"perts": labels, "columns": {name: values}}."""
    if profile not in ("vcc", "report", "calibrated", "all"):
        raise InputError(f"profile {profile!r} is not one of vcc, report, calibrated, all (vcc2026: evaluate_vcc2026)")
    if baseline is not None and train is not None:
        raise InputError("give either a baseline file or a training file, not both")
    if out_dpath is not None:
        check_out_dpath(pathlib.Path(out_dpath))  # before the work, not after it
    t0 = time.perf_counter()
    kw = dict(pert_col=pert_col, control=control)
    use_vcc, use_rep, use_cal = (profile in (p, "all") for p in ("vcc", "report", "calibrated"))
    need_de = use_vcc or use_cal
    # The real and the predicted file are read, checked and summarised at the same time, each in its own
    # thread; their Mann-Whitney ranges go to one set of workers, one thread per core. The scoring modules
    # are imported once both reads are done, while the files are checked and normalised: an import while the
    # reads pre-fault their buffers waits on them in the kernel (`h5read.CSRArrays`).
    from biojepac.eval.inputs import warm_up

    reads_done = [concurrent.futures.Future() for _ in range(2)]
    workers_ready: concurrent.futures.Future[Workers] = concurrent.futures.Future()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(_screen_and_summarize, src, pert_col, kw, need_de, done, workers_ready)
                for src, done in zip((real, pred), reads_done)]
        try:
            warm_up()  # loads the kernels during the reads
            concurrent.futures.wait(reads_done)
            from biojepac.eval.inputs import check_pair
            from biojepac.eval.mwu import Workers
            from biojepac.eval.stats import N_THREADS, summarize

            if use_vcc:  # before the workers start: an import holds the GIL, which they take for every sort
                import biojepac.eval.vcc  # noqa: F401
        except BaseException as err:
            workers_ready.set_exception(err)
            raise
        with Workers(N_THREADS) as workers:
            workers_ready.set_result(workers)
            (real_sc, real_s), (pred_sc, pred_s) = (job.result() for job in jobs)
        del jobs  # the screens are referenced here only
    check_pair(real_sc, pred_sc)
    base_sc = _baseline_screen(baseline, train, real_sc, kw)
    base_s = summarize(base_sc, with_de=need_de) if base_sc is not None else None
    if not use_cal:  # only the split-half ceiling needs the real cells again
        box, real_sc = [real_sc.x], dataclasses.replace(real_sc, x=None)  # the list holds the last reference
        _clear_in_thread(box)

    def metrics(sc: ScoredScreen, s: Summary, ref_sc: ScoredScreen = real_sc, ref_s: Summary = real_s) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if use_vcc:
            from biojepac.eval import vcc

            out |= vcc.vcc_metrics(ref_sc, ref_s, sc, s)
        if use_rep:
            from biojepac.eval.report_metrics import report_metrics

            out |= report_metrics(ref_s, s)
        if use_cal:
            from biojepac.eval import calibrated

            out |= calibrated.calibrated_metrics(ref_sc, ref_s, s)
        return out

    user = metrics(pred_sc, pred_s)
    base = metrics(base_sc, base_s) if base_s is not None else None
    ceiling = None
    if use_cal:
        from biojepac.eval import calibrated

        half_a, half_b = calibrated.split_halves(real_sc, seed)
        with concurrent.futures.ThreadPoolExecutor(2) as pool, Workers(N_THREADS) as workers:
            sa, sb = pool.map(lambda half: summarize(half, with_de=True, workers=workers), (half_a, half_b))
        ceiling = calibrated.calibrated_metrics(half_b, sb, sa)

    agg = _aggregate(user, base, ceiling, n_boot, seed)
    columns = user | {f"baseline_{k}": v for k, v in (base or {}).items()}
    agg["seconds"] = time.perf_counter() - t0
    agg["n_perturbations"] = len(real_sc.perts)
    agg["inputs"] = {"pred": pred_sc.name, "real": real_sc.name, "pred_was_counts": pred_sc.was_counts,
                     "real_was_counts": real_sc.was_counts, "baseline": base_sc.name if base_sc else None,
                     "profile": profile}
    paths = {}
    if out_dpath is not None:
        paths = _write(pathlib.Path(out_dpath), real_sc.perts, columns, agg, real_sc, real_s, pred_s, plots)
    return {"perts": real_sc.perts, "columns": columns, "aggregates": agg, "paths": paths, "seconds": agg["seconds"]}


def _clear_in_thread(box: list) -> None:
    """Empty `box`, which holds the last references to big arrays, in a thread of its own: unmapping a file's
    arrays (0.4 GB) takes about 20 ms, which then overlaps the metrics instead of adding to them."""
    threading.Thread(target=box.clear, daemon=True).start()


def _screen_and_summarize(src, pert_col: str, kw: dict, with_de: bool, read_done: concurrent.futures.Future,
                          workers: concurrent.futures.Future[Workers]) -> tuple[ScoredScreen, Summary]:
    """Read, check and summarise one input; `read_done` is set once its read has ended (well or not), and
    the summary waits for the shared `workers`."""
    try:
        parts = read_parts(src, pert_col)
    finally:
        read_done.set_result(None)
    from biojepac.eval.inputs import scored_screen

    screen = scored_screen(parts, **kw)
    from biojepac.eval.stats import summarize

    summary = summarize(screen, with_de=with_de, workers=workers.result())
    if with_de:  # the DEG sets and effects (VCC, calibrated): here, rather than after the last file's pass
        _ = summary.significant, summary.effects
    return screen, summary


def _baseline_screen(baseline, train, real_sc: ScoredScreen, kw: dict) -> ScoredScreen | None:
    from biojepac.eval.inputs import check_pair, make_baseline_screen, read_scored_screen
    from biojepac.eval.stats import summarize

    if baseline is not None:
        sc = read_scored_screen(baseline, **kw)
        check_pair(real_sc, sc)
        return sc
    if train is not None:
        if isinstance(train, (str, pathlib.Path)):  # a screen file: checked as every command checks a screen
            from biojepac.data.load import ScreenColumns, read_screen_obs

            read_screen_obs(train, ScreenColumns(pert=kw["pert_col"], control_labels=(kw["control"],)))
        tr = read_scored_screen(train, **kw)
        if not np.array_equal(tr.genes, real_sc.genes):
            raise InputError(f"{tr.name}: training genes differ from {real_sc.name} (same genes, same order needed)")
        return make_baseline_screen(summarize(tr, with_de=False).mean, real_sc)
    return None


def _aggregate(user: dict, base: dict | None, ceiling: dict | None, n_boot: int, seed: int) -> dict:
    from biojepac.eval import bootstrap

    n_perts = len(next(iter(user.values())))
    idx = bootstrap.resample_idx(n_perts, n_boot, seed)
    agg: dict = {"ci95": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, v in user.items():
            agg[name] = float(np.nanmean(v))
            if name in HEADLINE:
                agg["ci95"][name] = bootstrap.mean_ci(v, idx)
        for name in ("r2", "r2_top50"):
            if name in user:
                agg[f"{name}_median"] = float(np.nanmedian(user[name]))
        if base is not None:
            agg["baseline"] = {k: float(np.nanmean(v)) for k, v in base.items()}
        if base is not None and "mae" in user:
            from biojepac.eval import vcc

            keys = ("overlap_at_N", "discrimination_score_l1", "mae")
            s = vcc.score({k: agg[k] for k in keys}, {k: agg["baseline"][k] for k in keys})
            agg["vcc_score"] = 100.0 * s["avg_score"]
            agg["vcc_score_parts"] = s

            def boot_score(i: np.ndarray) -> np.ndarray:
                u = {k: np.nanmean(user[k][i], axis=1) for k in keys}
                b = {k: np.nanmean(base[k][i], axis=1) for k in keys}
                return np.array([100 * vcc.score({k: u[k][j] for k in keys}, {k: b[k][j] for k in keys})["avg_score"]
                                 for j in range(len(i))])

            agg["ci95"]["vcc_score"] = bootstrap.ci(boot_score, idx)
        if ceiling is not None:
            from biojepac.eval import calibrated

            agg["ceiling_split_half"] = {k: float(np.nanmean(v)) for k, v in ceiling.items()}
            agg["ceiling"] = calibrated.full_depth_ceiling(agg["ceiling_split_half"])
            if base is not None:
                agg["normalised"] = {
                    k: calibrated.normalise(agg[k], agg["baseline"][k], agg["ceiling"][k]) for k in calibrated.NAMES
                }
    return agg


def evaluate_vcc2026(pred, real, *, out_dpath: str | pathlib.Path | None = None, pert_col: str = schema.PERT_COL,
                     control: str = schema.CONTROL, context_col: str | None = None,
                     target_gene_map: dict | None = None) -> dict:
    """The vcc2026 profile: per-perturbation metrics under cell-eval2's names, and per context the aggregates of
    the prediction, the baseline and the replicate with the scores. Writes per_perturbation.csv, scores.csv
    and aggregates.json when `out_dpath` is given."""
    from biojepac.eval import vcc2026_scale

    if out_dpath is not None:
        check_out_dpath(pathlib.Path(out_dpath))
    t0 = time.perf_counter()
    res = vcc2026_scale.score_files(pred, real, pert_col=pert_col, control=control, context_col=context_col,
                                    target_gene_map=target_gene_map)
    contexts = {ctx: {"user": r.user, "baseline": r.baseline, "replicate": r.replicate, "scores": r.scores,
                      "replicate_splits": r.splits} for ctx, r in res.items()}
    agg = {"contexts": contexts, "avg_score": float(np.mean([r.scores["avg_score"] for r in res.values()])),
           "seconds": time.perf_counter() - t0,
           "inputs": {"pred": str(pred), "real": str(real), "profile": "vcc2026", "context_col": context_col}}
    columns = {"context": np.concatenate([[c] * len(r.perts) for c, r in res.items()]),
               **{m: np.concatenate([r.per_perturbation[m] for r in res.values()]) for m in res[next(iter(res))].per_perturbation}}
    perts = np.concatenate([r.perts for r in res.values()])
    if context_col is None:
        del columns["context"]
    nan = float("nan")
    rows = [[ctx, m, r.user[m], r.baseline[m], r.replicate[m], r.scores[m]] if m != "avg_score"
            else [ctx, m, nan, nan, nan, r.scores[m]] for ctx, r in res.items() for m in r.scores]
    paths = {}
    if out_dpath is not None:
        names = {"per_perturbation": "per_perturbation.csv", "scores": "scores.csv", "aggregates": "aggregates.json"}

        def write(tmp: pathlib.Path) -> None:
            (tmp / names["per_perturbation"]).write_text(_csv_text(perts, columns))
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(
                [["context", "metric", "user", "baseline", "replicate", "score"]]
                + [[c, m, *("" if np.isnan(x) else repr(float(x)) for x in vals)] for c, m, *vals in rows])
            (tmp / names["scores"]).write_text(buf.getvalue())
            (tmp / names["aggregates"]).write_text(json.dumps(agg, indent=2, default=float))

        write_dir_atomic(pathlib.Path(out_dpath), write)
        paths = {k: str(pathlib.Path(out_dpath) / n) for k, n in names.items()}
    import pandas as pd

    per = pd.DataFrame(columns, index=pd.Index(perts, name="perturbation"))
    return {"per_perturbation": per, "contexts": contexts, "aggregates": agg, "paths": paths, "seconds": agg["seconds"]}


def read_target_map(fpath: pathlib.Path | None) -> dict | None:
    """`label,gene` rows (a header line `label,gene` is skipped); an empty gene declares no target gene."""
    if fpath is None:
        return None
    if not fpath.is_file():
        raise InputError(f"--target-map {fpath}: file not found")
    out = {}
    for i, row in enumerate(csv.reader(fpath.read_text().splitlines())):
        if not row or (i == 0 and row[:2] == ["label", "gene"]):
            continue
        if len(row) != 2:
            raise InputError(f"--target-map {fpath}: line {i + 1} is not `label,gene`: {row}")
        out[row[0]] = row[1] or None
    return out


OUTPUT_SUFFIXES = (".csv", ".json", ".md", ".png")
"""What an evaluation folder holds; a folder with anything else is not replaced."""


def check_out_dpath(out_dpath: pathlib.Path) -> None:
    """The output folder is replaced whole, so it must be new, empty or an earlier evaluation's."""
    if out_dpath.exists() and not out_dpath.is_dir():
        raise InputError(f"--out-dpath {out_dpath}: exists and is not a folder")
    if out_dpath.is_dir():
        other = sorted(p.name for p in out_dpath.iterdir() if p.is_dir() or p.suffix not in OUTPUT_SUFFIXES)
        if other:
            raise InputError(f"--out-dpath {out_dpath}: holds files that are not an evaluation's (e.g. {other[:3]}); "
                             "evaluate replaces its whole output folder: give a new or empty one")


def _write(out_dpath: pathlib.Path, perts, columns: dict, agg: dict, real_sc, real_s, pred_s, plots: bool) -> dict[str, str]:
    """Every file into a temporary folder beside `out_dpath`, renamed into place at the end: a killed run
    or two runs into one folder never leave files of one run beside files of another."""
    check_out_dpath(out_dpath)
    names = {"per_perturbation": "per_perturbation.csv", "aggregates": "aggregates.json"}

    def write(tmp: pathlib.Path) -> None:
        (tmp / names["per_perturbation"]).write_text(_csv_text(perts, columns))
        (tmp / names["aggregates"]).write_text(json.dumps(agg, indent=2, default=float))
        if plots:
            import pandas as pd

            from biojepac.eval import report  # matplotlib is slow to import; only load it when plotting

            per = pd.DataFrame(columns, index=pd.Index(perts, name="perturbation"))
            names["report"] = report.write_report(tmp, per, agg, real_sc, real_s, pred_s, _write_plain).name

    write_dir_atomic(out_dpath, write)
    return {key: str(out_dpath / name) for key, name in names.items()}


def _write_plain(fpath: pathlib.Path, data: str | bytes) -> None:
    """Inside the temporary folder each file needs no rename of its own."""
    fpath.write_bytes(data) if isinstance(data, bytes) else fpath.write_text(data)


def _csv_text(perts, columns: dict) -> str:
    """The table as pandas' `to_csv` writes it: shortest round-trip floats, NaN as an empty field."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["perturbation", *columns])
    cells = [[v if isinstance(v, str) else ("" if np.isnan(v) else repr(float(v))) for v in values]
             for values in columns.values()]
    out.writerows([str(p), *row] for p, row in zip(perts, zip(*cells)))
    return buf.getvalue()


