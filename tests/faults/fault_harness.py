"""The fault-injection harness: a tiny synthetic world of valid inputs, faults that break one input each,
and `run_case`, which runs one CLI command in-process and checks how it ended.

A case ends cleanly when:
- a refused input: exit status 2, no traceback, exactly one `error:` line, naming every token the case
  lists (the file, column, gene or option at fault), and no output (nor a hidden temporary) left behind;
- an accepted input (`rc=0`): exit status 0, no traceback, and the output in place;
- either (`rc=None`, e.g. float16 values: "read correctly or refused clearly"): one of the two above;
and, in every case, no input file changed (hashes of every file under the world and the case folder
taken before and after).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import pathlib
import os
import shutil
import signal
import time
import traceback
from typing import Callable

import numpy as np

from random_screen import build_random_screen

GENES = [f"G{i:03d}" for i in range(40)]
"""The world's genes; perturbations are G000..G004, two contexts c1, c2."""


@dataclasses.dataclass(frozen=True)
class Case:
    command: str
    """The subcommand, as the suite groups cases (e.g. `predict`, `data split`)."""
    name: str
    """The fault, e.g. `screen:nan`."""
    argv: tuple[str, ...]
    """CLI arguments with `{placeholders}` filled from the world and the case's own files."""
    tokens: tuple[str, ...] = ()
    """Substrings the one-line error must contain (placeholders allowed, e.g. `{screen}`)."""
    rc: int | None = 2
    """2: must be refused; 0: must succeed; None: either (refused clearly or accepted)."""
    setup: Callable[[pathlib.Path, dict], dict] | None = None
    """`setup(case_dpath, paths)` writes the faulty input and returns the placeholders it replaces."""
    out: str = "{out}"
    """The output the command would write: it must not exist after a refusal."""
    parse_error: bool = False
    """Refused by the argument parser (tyro's multi-line box, not our one line): only rc, no traceback, tokens."""

    @property
    def id(self) -> str:
        return f"{self.command}/{self.name}"


# ---- the world: valid inputs every case starts from


def build_world(dpath: pathlib.Path) -> dict:
    """Valid inputs for every command, written once per session; returns the placeholder -> path table."""
    import anndata as ad

    from biojepac.data.splits import make_unseen_perturbation_split, save_split
    from biojepac.models import registry

    dpath.mkdir(parents=True, exist_ok=True)
    screen = build_random_screen(n_cells=240, n_genes=len(GENES), n_perts=5, contexts=("c1", "c2"), seed=0)
    paths = {"world": str(dpath)}
    paths["screen"] = _write(screen, dpath / "screen.h5ad")
    log1p = build_random_screen(n_cells=240, n_genes=len(GENES), n_perts=5, contexts=("c1", "c2"), seed=0, counts=False)
    c1 = log1p[log1p.obs["context"] == "c1"].copy()
    paths["real"] = _write(c1, dpath / "real.h5ad")
    pred = c1.copy()
    rng = np.random.default_rng(1)
    pred.X = pred.X.copy()
    pred.X.data = pred.X.data * rng.uniform(0.8, 1.2, pred.X.data.shape).astype(np.float32)
    paths["pred"] = _write(pred, dpath / "pred.h5ad")
    paths["shard"] = _write(c1, dpath / "shard.h5ad")  # log1p, CSR: what stream-pretrain reads
    split = make_unseen_perturbation_split(screen, None, (0.6, 0.2, 0.2), 0)
    save_split(split, dpath / "split.json")
    paths["split"] = str(dpath / "split.json")
    (dpath / "requests.csv").write_text("target_gene,n_cells\nG001,5\nG002,3\n")
    paths["requests"] = str(dpath / "requests.csv")
    (dpath / "genes.csv").write_text("\n".join(GENES) + "\n")
    paths["genes"] = str(dpath / "genes.csv")
    model, _ = registry.build("cell-mean")
    from biojepac.data.load import read_training_screen

    model.fit(read_training_screen(dpath / "screen.h5ad"))
    model.save(dpath / "model")
    paths["model"] = str(dpath / "model")
    (dpath / "exp.toml").write_text('[datasets]\nscreen = "screen.h5ad"\n[training]\nscreen = "train"\n'
                                    '[zeroshot]\n"screen.c2" = "test"\n')
    paths["toml"] = str(dpath / "exp.toml")
    del ad
    return paths


def _write(adata, fpath: pathlib.Path) -> str:
    adata.write_h5ad(fpath)
    return str(fpath)


# ---- faults: each breaks one input in the case folder and returns the placeholders it replaces


def raw_fault(key: str, kind: str) -> Callable[[pathlib.Path, dict], dict]:
    """A file fault that needs no AnnData: missing, empty, text, truncated, a folder in its place."""

    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        src = pathlib.Path(paths[key])
        dst = case_dpath / f"bad_{src.name}"
        if kind == "empty":
            dst.write_bytes(b"")
        elif kind == "text":
            dst.write_text("this is not the file you are looking for\n1,2,3\n")
        elif kind == "truncated":
            data = src.read_bytes() if src.is_file() else b""
            dst.write_bytes(data[: len(data) * 2 // 5])
        elif kind == "folder":
            dst.mkdir()
        elif kind != "missing":
            raise AssertionError(kind)
        return {key: str(dst)}

    return setup


def adata_fault(key: str, mutate: Callable) -> Callable[[pathlib.Path, dict], dict]:
    """Read the world's `key` file, break it with `mutate(adata) -> adata`, write it into the case folder."""

    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        import anndata as ad

        adata = mutate(ad.read_h5ad(paths[key]))
        dst = case_dpath / f"bad_{pathlib.Path(paths[key]).name}"
        adata.write_h5ad(dst)
        return {key: str(dst)}

    return setup


def text_fault(key: str, text: str | bytes, suffix: str = "") -> Callable[[pathlib.Path, dict], dict]:
    def setup(case_dpath: pathlib.Path, paths: dict) -> dict:
        dst = case_dpath / (f"bad_{pathlib.Path(paths[key]).name}" + suffix)
        dst.write_bytes(text if isinstance(text, bytes) else text.encode())
        return {key: str(dst)}

    return setup


def _dense(adata):
    adata.X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, np.float32)
    return adata


def set_value(value: float, row: int = 7, col: int = 3):
    def mutate(adata):
        adata = _dense(adata)
        adata.X[row, col] = value
        return adata

    return mutate


def as_float16(adata):
    adata = _dense(adata)
    adata.X = adata.X.astype(np.float16)
    return adata


def rename_gene(pos: int, name: str):
    def mutate(adata):
        names = adata.var_names.astype(str).tolist()
        names[pos] = name
        adata.var_names = names
        return adata

    return mutate


def reorder_genes(adata):
    return adata[:, adata.var_names[::-1]].copy()


def rename_cell(pos: int, name: str):
    def mutate(adata):
        names = adata.obs_names.astype(str).tolist()
        names[pos] = name
        adata.obs_names = names
        return adata

    return mutate


def set_label(col: str, row: int, value):
    def mutate(adata):
        labels = adata.obs[col].astype(object).copy()
        labels.iloc[row] = value
        adata.obs[col] = labels.astype("category") if value is not None and value == value else labels
        return adata

    return mutate


def drop_obs(col: str):
    def mutate(adata):
        adata.obs = adata.obs.drop(columns=[col])
        return adata

    return mutate


def only_perturbed(adata):
    return adata[adata.obs["target_gene"] != "non-targeting"].copy()


def no_controls_in(context: str):
    def mutate(adata):
        keep = ~((adata.obs["target_gene"] == "non-targeting") & (adata.obs["context"] == context))
        return adata[keep.to_numpy()].copy()

    return mutate


def scale_values(factor: float):
    """Fractional values above log1p's range: neither counts nor log1p."""

    def mutate(adata):
        adata = _dense(adata)
        adata.X = adata.X * factor + 0.5
        return adata

    return mutate


def no_cells(adata):
    return adata[:0].copy()


def no_genes(adata):
    return adata[:, :0].copy()


def drop_pert(label: str):
    def mutate(adata):
        return adata[(adata.obs["target_gene"] != label).to_numpy()].copy()

    return mutate


# ---- running one case


def file_hashes(*dpaths: pathlib.Path) -> dict[str, str]:
    out = {}
    for dpath in dpaths:
        for f in sorted(pathlib.Path(dpath).rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


CASE_TIMEOUT_S = 90
"""A case still running after this long is a failure (a hang, or a bad input trained on at length)."""


class CaseTimeout(Exception):
    pass


def run_cli(argv: list[str], timeout_s: int = CASE_TIMEOUT_S) -> tuple[int, str, str]:
    """`biojepac ARGV` in this process; (exit status, stdout, stderr). An escaping exception is printed as
    the CLI's own traceback would be, and counts as exit status 1."""
    from biojepac import cli

    def on_alarm(signum, frame):
        raise CaseTimeout(f"still running after {timeout_s} s")

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout_s)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            traceback.print_exc(file=err)
            rc = 1
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    return rc, out.getvalue(), err.getvalue()


def fill(text: str, paths: dict) -> str:
    return text.format(**paths)


def run_case(case: Case, world: dict, case_dpath: pathlib.Path) -> list[str]:
    """Run `case`; return the ways it did not end cleanly (empty: clean)."""
    paths = {**world, "tmp": str(case_dpath), "out": str(case_dpath / "out.h5ad"), "out_dpath": str(case_dpath / "out_dir"),
             "out_json": str(case_dpath / "out.json"), "out_vcc": str(case_dpath / "out.vcc"), "run": str(case_dpath / "run")}
    if case.setup is not None:
        paths.update(case.setup(case_dpath, paths))
    out_fpath = pathlib.Path(fill(case.out, paths)) if case.out else None
    out_existed = out_fpath is not None and out_fpath.exists()
    before = file_hashes(pathlib.Path(world["world"]), case_dpath)
    argv = [fill(a, paths) for a in case.argv]
    t0 = time.perf_counter()
    rc, stdout, stderr = run_cli(argv)
    seconds = time.perf_counter() - t0
    problems = []
    if "Traceback" in stderr:
        last = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1]
        problems.append(f"traceback: {last[:300]}")
    tokens = [fill(t, paths) for t in case.tokens]
    if case.rc == 0 or (case.rc is None and rc == 0):
        if rc != 0:
            problems.append(f"exit {rc}, expected 0: {stderr.strip()[-300:]}")
        elif out_fpath is not None and not out_fpath.exists():
            problems.append(f"exit 0 but no output at {out_fpath}")
    else:
        if rc == 0:
            problems.append("silently accepted (exit 0)")
        elif rc != 2:
            problems.append(f"exit {rc}")
        if case.parse_error:
            missing = [t for t in tokens if t not in stderr]
        else:
            lines = [ln for ln in stderr.splitlines() if ": error: " in ln]
            if rc == 2 and len(lines) != 1:
                problems.append(f"{len(lines)} error lines: {stderr.strip()[-300:]!r}")
            missing = [t for t in tokens if not any(t in ln for ln in lines)]
        if rc != 0 and missing:
            problems.append(f"message does not name {missing}: {stderr.strip()[-300:]!r}")
        if out_fpath is not None and not out_existed and out_fpath.exists():
            problems.append(f"refused, but left an output at {out_fpath.name}")
    leftovers = [p.name for p in case_dpath.rglob(".*tmp*")]
    if leftovers:
        problems.append(f"hidden temporaries left: {leftovers[:3]}")
    after = file_hashes(pathlib.Path(world["world"]), case_dpath)
    inputs = [k for k in before if out_fpath is None or not k.startswith(str(out_fpath))]
    changed = [pathlib.Path(k).name for k in inputs if after.get(k) != before[k]]
    if changed:
        problems.append(f"input changed or removed: {changed[:3]}")
    _log(case, problems, rc, stderr, seconds)
    return problems


def _log(case: Case, problems: list[str], rc: int, stderr: str, seconds: float) -> None:
    """With FAULTS_LOG set, append one JSON line per case (for tallies by command)."""
    fpath = os.environ.get("FAULTS_LOG")
    if fpath:
        err = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        row = {"command": case.command, "case": case.name, "clean": not problems, "problems": problems, "rc": rc,
               "last_line": err[-1][:400] if err else "", "seconds": round(seconds, 3)}
        with open(fpath, "a") as f:
            f.write(json.dumps(row) + "\n")


def copy_world(world: dict, dpath: pathlib.Path) -> dict:
    shutil.copytree(world["world"], dpath)
    return {k: v.replace(world["world"], str(dpath)) for k, v in world.items()}


def dump_json(fpath: pathlib.Path, obj) -> None:
    fpath.write_text(json.dumps(obj))
