"""Build the evaluation kernels ahead of time: `python -m biojepac.eval.kernels_build` (scripts/env.sh runs it).

1. Small evaluations (`_workload`: every profile, counts and log1p, float32 and float64, CSR with 32- and
   64-bit indices, dense) run with every kernel compiled just in time, and each kernel records the numba
   signature of each set of argument types it was called with.
2. numba's ahead-of-time compiler (`numba.pycc`) builds those signatures into extension modules, one per
   set of compile options, for this machine's processor, with the GIL released around each call.
3. The modules and then their table (kernel -> argument types -> exported function) are moved into place;
   the table, written last, is what `kernels` looks for, so a half-finished build is never loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

from biojepac.eval import kernels


def main() -> None:
    """Build the module for the current sources unless it exists (`--force`: build it again)."""
    try:
        fpath = build(force="--force" in sys.argv[1:])
    except Exception as err:  # noqa: BLE001 (no compiler, say: every kernel still runs just in time)
        reason = " ".join(str(err).split())  # one line
        print(f"biojepac: evaluation kernels not built ahead of time ({type(err).__name__}: {reason}); "
              "they will be compiled just in time (about 0.6 s more per evaluation)", file=sys.stderr)
        return
    if fpath is not None:
        print(f"biojepac: evaluation kernels built ahead of time: {fpath}", file=sys.stderr)


def build(force: bool = False) -> pathlib.Path | None:
    """Build the module for the current sources into the first writable `kernels.build_dpaths()`; returns
    its table's path, or None when it already exists (and not `force`)."""
    name = f"_kernels_{kernels.build_hash()}"
    if not force and any((d / f"{name}.json").is_file() for d in kernels.build_dpaths()):
        return None
    signatures = record_signatures()
    for dpath in kernels.build_dpaths():
        try:
            dpath.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dpath) as tmp:
                table = compile_modules(signatures, name, pathlib.Path(tmp))
                for fname in table["files"]:
                    os.replace(pathlib.Path(tmp) / fname, dpath / fname)
                (pathlib.Path(tmp) / "table").write_text(json.dumps(table, indent=1))
                os.replace(pathlib.Path(tmp) / "table", dpath / f"{name}.json")
            if dpath == kernels.PACKAGE_DPATH / "__pycache__":  # this checkout's earlier builds (the user
                for old in dpath.glob("_kernels_*"):  # cache may hold other checkouts': left alone)
                    if not old.name.startswith(name):
                        old.unlink(missing_ok=True)
            return dpath / f"{name}.json"
        except PermissionError:
            continue
    raise PermissionError(f"no writable folder for the kernels among {kernels.build_dpaths()}")


def record_signatures() -> dict[str, dict[str, object]]:
    """{kernel name: {type key: numba signature}} over `_workload`, every kernel compiled just in time."""
    _import_kernel_modules()
    for k in kernels._KERNELS.values():
        k._recorded = {}  # recording: every call compiled just in time, none looked up ahead of time
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _workload(pathlib.Path(tmp))
        return {name: dict(k._recorded) for name, k in kernels._KERNELS.items() if k._recorded}
    finally:
        for k in kernels._KERNELS.values():
            k._recorded = None


def compile_modules(signatures: dict[str, dict[str, object]], name: str, out_dpath: pathlib.Path) -> dict:
    """Compile the recorded signatures with numba.pycc into `out_dpath`, one extension per set of options;
    returns the table {"files": [...], "kernels": {kernel: {type key: [file index, exported name]}}}."""
    import warnings

    with warnings.catch_warnings():  # "pending deprecation" since numba 0.57; numba is pinned, and without
        warnings.simplefilter("ignore")  # pycc the build fails softly: kernels compile just in time
        import numba.pycc
        import numba.pycc.compiler

    groups: dict[tuple, list[str]] = {}
    for kname in signatures:
        opts = {k: v for k, v in kernels._KERNELS[kname].options.items() if k not in ("nogil", "cache")}
        if opts.get("parallel"):
            continue  # numba.pycc builds no parallel code
        groups.setdefault(tuple(sorted(opts.items())), []).append(kname)
    table: dict = {"files": [], "kernels": {}}
    for i, (opts, knames) in enumerate(sorted(groups.items())):
        cc = numba.pycc.CC(f"{name}_{i}")
        cc.output_dir = str(out_dpath)
        cc.target_cpu = "host"  # as numba's just-in-time compiler: the hash names this processor
        cc.verbose = False
        for kname in knames:
            exported: dict[str, str] = {}
            for key, sig in signatures[kname].items():
                export = exported.get(str(sig))
                if export is None:
                    export = exported[str(sig)] = f"{kname.replace('.', '__')}__{len(exported)}"
                    cc.export(export, sig)(kernels._KERNELS[kname].fn)
                table["kernels"].setdefault(kname, {})[key] = [i, export]
        with _pycc_flags(dict(opts)):
            cc.compile()
        table["files"].append(next(p.name for p in out_dpath.iterdir() if p.name.startswith(f"{name}_{i}.")))
    return table


@contextlib.contextmanager
def _pycc_flags(options: dict):
    """numba.pycc compiles every export with default flags; ours need the GIL released around the call (what
    `nogil=True` does just in time) and the kernel's own options (`error_model`). pycc offers no setting
    for either, so its `Flags` class is swapped for one with these defaults while it compiles."""
    import numba.pycc.compiler as pycc_compiler

    base = pycc_compiler.Flags

    class Flags(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.release_gil = True
            for key, value in options.items():
                setattr(self, key, value)

    pycc_compiler.Flags = Flags
    try:
        yield
    finally:
        pycc_compiler.Flags = base


def _import_kernel_modules() -> None:
    import importlib

    for module in kernels.MODULES:
        importlib.import_module(f"biojepac.eval.{module}")


def _workload(tmp: pathlib.Path) -> None:
    """Evaluations small enough to run in seconds that call every kernel with the argument types real files
    give: each profile on counts vs log1p files stored as float32 and float64, as CSR with 32- and 64-bit
    indices and as dense arrays, with a training screen for the cell-mean baseline; and the VCC 2026
    profile on counts."""
    from biojepac.eval.evaluate import evaluate

    for dtype in (np.float32, np.float64):
        for form in ("csr32", "csr64", "dense"):
            real, pred = write_workload_pair(tmp, dtype, form, np.random.default_rng(0))
            evaluate(pred, real, train=real, profile="all", pert_col="target_gene", n_boot=10)
            evaluate(real, real, profile="vcc", pert_col="target_gene", n_boot=10)  # counts on both sides
            if form != "dense":
                evaluate(real, real, profile="vcc2026", pert_col="target_gene")


def write_workload_pair(tmp: pathlib.Path, dtype, form: str, rng: np.random.Generator) -> tuple[pathlib.Path, pathlib.Path]:
    """A real file of counts and a predicted file of log1p values (.h5ad, `dtype`, stored as `form`: csr32,
    csr64 or dense): 200 control cells and 5 perturbations of 100 cells over 60 genes, each knocking its own
    gene down and moving about 40% of the others, so that every metric of every profile has a value."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    n_genes, n_ctrl, n_per = 60, 200, 100
    genes = [f"G{i}" for i in range(n_genes)]
    perts = [f"G{i}" for i in range(5)]
    labels = np.array(["non-targeting"] * n_ctrl + [p for p in perts for _ in range(n_per)])
    base = rng.gamma(0.5, 3.0, n_genes)
    means = [base]
    for i in range(len(perts)):
        mu = base * np.exp(rng.normal(0, 1.2, n_genes) * (rng.random(n_genes) < 0.4))
        mu[i] *= 0.1
        means.append(mu)
    mean = np.repeat(np.array(means), [n_ctrl] + [n_per] * len(perts), axis=0)
    counts = rng.poisson(mean * rng.lognormal(0, 0.3, (len(labels), 1))).astype(np.float64)
    noisy = rng.poisson(mean * rng.lognormal(0, 0.3, (len(labels), 1))).astype(np.float64)
    lognorm = np.log1p(noisy / np.maximum(noisy.sum(1, keepdims=True), 1) * 1e4)

    def write(x: np.ndarray, tag: str) -> pathlib.Path:
        x = x.astype(dtype)
        if form != "dense":
            x = sp.csr_matrix(x)
            if form == "csr64":
                x.indices, x.indptr = x.indices.astype(np.int64), x.indptr.astype(np.int64)
        obs = pd.DataFrame({"target_gene": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
        fpath = tmp / f"{tag}_{np.dtype(dtype).name}_{form}.h5ad"
        ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(fpath)
        return fpath

    return write(counts, "real"), write(lognorm, "pred")


if __name__ == "__main__":
    main()
