"""Train on a backed file larger than the memory the process may use, kill it, resume it, and check the
resumed run ends bit-identical to an uninterrupted one.

- A synthetic CSR screen bigger than the cap is written under /tmp/biojepac_bench.
- Every training process runs under `prlimit --as=CAP` (address space, the strictest `ulimit -v` cap:
  it counts every mapping, not just touched pages). A control process shows that merely loading the
  file into memory under that cap fails.
- Run A trains `N_STEPS` straight. Run B is SIGKILLed after step `KILL_AFTER` (last checkpoint at
  `CKPT_EVERY`), then restarted; it resumes from the checkpoint. The final checkpoints and the logged
  losses of A and B must be identical.

    nice .venv/bin/python benchmarks/bench_backed_train.py      # writes benchmarks/results/backed_train.{json,md}
"""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _backed import REPO_DPATH, SCRATCH_DPATH, run_measured, write_results, write_synthetic  # noqa: E402

N_CELLS, N_GENES, DENSITY = 1_500_000, 2000, 0.125
CAP_BYTES = int(2.5 * 2**30)
N_STEPS, CKPT_EVERY, KILL_AFTER = 30, 10, 15

TRAIN = """
import json, sys
from biojepac.models.jepa.config import get_preset
from biojepac.models.jepa.streamed import StreamedPretrainConfig, pretrain_streamed
st = pretrain_streamed(StreamedPretrainConfig(shards=({fpath!r},), run_dpath={run!r}, preset="tiny", steps_scale={n_steps} / get_preset("tiny").pretrain.n_steps,
                                              batch_size=32, n_tokens=64, ckpt_every={ckpt}, progress=False))
print(json.dumps({{"step": int(st.step)}}))
"""

LOAD_ALL = """
import anndata as ad
a = ad.read_h5ad({fpath!r})
print('{{"loaded": true}}')
"""


def _losses(run: pathlib.Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _params_bytes(run: pathlib.Path) -> bytes:
    raw = (run / "ckpt.eqx").read_bytes()
    return raw[raw.index(b"\n") + 1 :]  # skip the JSON header (it holds run paths)


def _kill_after(code: str, run: pathlib.Path, step: int) -> dict:
    """Start training under the cap and SIGKILL it once metrics.jsonl shows `step`."""
    cmd = ["nice", "-n", "10", "prlimit", f"--as={CAP_BYTES}", sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, cwd=REPO_DPATH, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.exists() and any(json.loads(r)["step"] >= step for r in metrics.read_text().splitlines() if r):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.2)
    killed = proc.returncode == -signal.SIGKILL
    return {"killed": killed, "logged_steps": sorted(_losses(run)), "ckpt_step_at_kill": json.loads((run / "ckpt.eqx").read_bytes().split(b"\n", 1)[0])["step"]}


def main() -> None:
    info = write_synthetic(SCRATCH_DPATH / f"backed_{N_CELLS}.h5ad", N_CELLS, N_GENES, DENSITY, seed=7)
    fpath = info["fpath"]
    assert info["bytes"] > CAP_BYTES, "the file must be larger than the memory cap"
    load = run_measured(LOAD_ALL.format(fpath=fpath), as_limit_bytes=CAP_BYTES)
    runs = {k: SCRATCH_DPATH / f"backed_run_{k}" for k in "AB"}
    for run in runs.values():
        shutil.rmtree(run, ignore_errors=True)
    fmt = dict(fpath=fpath, n_steps=N_STEPS, ckpt=CKPT_EVERY)
    a = run_measured(TRAIN.format(run=str(runs["A"]), **fmt), as_limit_bytes=CAP_BYTES)
    assert a["ok"], a
    kill = _kill_after(TRAIN.format(run=str(runs["B"]), **fmt), runs["B"], KILL_AFTER)
    b = run_measured(TRAIN.format(run=str(runs["B"]), **fmt), as_limit_bytes=CAP_BYTES)
    assert b["ok"], b
    la, lb = _losses(runs["A"]), _losses(runs["B"])
    result = {
        "file_gib": info["bytes"] / 2**30, "n_cells": N_CELLS, "n_genes": N_GENES, "cap_gib": CAP_BYTES / 2**30,
        "load_whole_file_under_cap": "ok" if load["ok"] else f"failed (rc={load['returncode']}, {load['stderr_tail'].strip().splitlines()[-1][:120]})",
        "run_A": {"steps": a["step"], "wall_s": a["wall_s"], "peak_rss_mib": a["peak_rss_mb"]},
        "run_B_kill": kill,
        "run_B_resume": {"steps": b["step"], "wall_s": b["wall_s"], "peak_rss_mib": b["peak_rss_mb"]},
        "same_logged_losses": la == lb, "logged_steps": sorted(la),
        "final_params_bit_identical": _params_bytes(runs["A"]) == _params_bytes(runs["B"]),
    }
    rows = [
        {"run": "load whole file (control)", "outcome": result["load_whole_file_under_cap"]},
        {"run": f"A: {N_STEPS} steps straight", "outcome": f"{a['step']} steps", "wall_s": a["wall_s"], "peak_rss_mib": a["peak_rss_mb"]},
        {"run": f"B: SIGKILL after step {KILL_AFTER}", "outcome": f"killed={kill['killed']}, checkpoint at step {kill['ckpt_step_at_kill']}"},
        {"run": "B: restarted", "outcome": f"resumed to {b['step']} steps", "wall_s": b["wall_s"], "peak_rss_mib": b["peak_rss_mb"]},
    ]
    note = (f"Backed .h5ad of {N_CELLS:,} cells x {N_GENES:,} genes, {info['bytes'] / 2**30:.2f} GiB on disk, larger than the "
            f"{CAP_BYTES / 2**30:.1f} GiB address-space cap (`prlimit --as`) every process below ran under. BioJEPAC pretrain, "
            f"`tiny` preset, top-64 tokens, batch 32, checkpoint every {CKPT_EVERY} steps.\n\n"
            f"Resumed run B vs uninterrupted run A: final parameters/optimiser/teacher bit-identical = "
            f"{result['final_params_bit_identical']}; logged losses identical = {result['same_logged_losses']}.\n\n")
    cols = ["run", "outcome", "wall_s", "peak_rss_mib"]
    write_results("backed_train", "Training on a file larger than memory, with kill and resume", result, note, rows, cols)


if __name__ == "__main__":
    main()
