"""The external peers, STATE and GEARS, as seen by the bench: are they installed, and how to call them.

They are not dependencies. `benchmarks/peers/setup_*.sh` build their venvs under benchmarks/peers/envs/;
when a venv is missing, the bench records the run as skipped with the reason. The runners read a task
folder (`tasks.write_task`) and write a prediction file; GEARS' runner runs inside its own venv.
"""

import json
import pathlib
import sys

from biojepac.bench import tasks as tasklib

PEERS_DPATH = pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "peers"


def available(model: str, task: tasklib.Task) -> tuple[bool, str]:
    if model == "STATE":
        if not (PEERS_DPATH / "envs" / "state" / "bin" / "state").exists():
            return False, "STATE venv missing: run benchmarks/peers/setup_state.sh"
        return True, ""
    if model == "GEARS":
        if not (PEERS_DPATH / "envs" / "gears" / ".ok").exists():
            return False, "GEARS venv missing: run benchmarks/peers/setup_gears.sh"
        if not task.has_go:
            return False, "GEARS needs GO annotations of real gene symbols; synthetic genes have none"
        return True, ""
    raise ValueError(f"unknown peer {model!r}")


def command(model: str, task: tasklib.Task, work: pathlib.Path, pred_fpath: pathlib.Path, cfg) -> list[str]:
    """The peer's command line; its summary (timings) is written to work/peer.json by a small wrapper."""
    task_dpath = tasklib.write_task(task, work / "task")
    if model == "STATE":
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import state_peer as p; "
                "info = p.run(p.pathlib.Path(sys.argv[2]), p.pathlib.Path(sys.argv[3]), "
                "p.StatePeerConfig(max_steps=int(sys.argv[4]), seed=int(sys.argv[5]))); "
                "open(sys.argv[6], 'w').write(json.dumps(info))")
        return [sys.executable, "-c", code, str(PEERS_DPATH), str(task_dpath), str(pred_fpath),
                str(cfg.peer_state_steps), str(cfg.seed), str(work / "peer.json")]
    python = PEERS_DPATH / "envs" / "gears" / "bin" / "python"
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import gears_peer as p; "
            "info = p.run(p.pathlib.Path(sys.argv[2]), p.pathlib.Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])); "
            "open(sys.argv[6], 'w').write(json.dumps(info))")
    return [str(python), "-c", code, str(PEERS_DPATH), str(task_dpath), str(pred_fpath),
            str(cfg.peer_gears_epochs), str(cfg.seed), str(work / "peer.json")]


def read_info(model: str, work: pathlib.Path) -> dict:
    info = json.loads((work / "peer.json").read_text())
    notes = {"STATE": "arc-state 0.11.1, reduced ST model on CPU; the task's perturbation features",
             "GEARS": "cell-gears 0.1.2; pseudobulk means expanded to cells as controls + shift"}
    note = notes[model]
    if info.get("no_go"):
        note += f"; no GO for {','.join(info['no_go'][:5])} (predicted as no change)"
    return {"train_s": info.get("train_s"), "predict_s": info.get("infer_s"), "note": note,
            "config": {k: v for k, v in info.items() if k not in ("train_s", "infer_s")}}
