"""Run folders: what a training run is, recorded once and checked before any work.

Every command that trains into a folder (`train biojepac|state|state-stream|stream-pretrain`, `demo`, the
bench's worker) calls `open_run` first with the settings that change its result (preset, seed, features,
steps, ...) and fingerprints of its inputs (`data.fingerprint`: shape, gene list, labels, value sum):

- a new folder, or one without a checkpoint: the settings are written to `run.json` and training starts;
- the same settings: training resumes from the last checkpoints;
- other settings: refused in one line naming the folder and each setting that differs;
- `--overwrite`: the folder is emptied first and training starts afresh.

The training loop keeps its own check per checkpoint (`train.loop.check_resume`, same comparison), which
also covers stages with settings of their own and folders made before `run.json` existed.
"""

import json
import pathlib
import shutil

from biojepac.errors import InputError
from biojepac.io import write_text_atomic

RUN_FNAME = "run.json"
CKPT_FNAME = "ckpt.eqx"
FREE_KEYS = ("step", "n_steps")
"""Top-level keys a checkpoint header may change on resume: the position, and the stopping step."""
RUN_MARKERS = (RUN_FNAME, CKPT_FNAME, "metrics.jsonl", "settings.json")
"""Files that show a folder is a run folder (one level down too: BioJEPAC keeps a folder per stage)."""


def open_run(run_dpath: str | pathlib.Path, command: str, settings: dict, overwrite: bool = False,
             write: bool = True) -> bool:
    """Check `run_dpath` against this run's `settings` (see the module doc); True when resuming a run.
    `write=False` only checks (the other hosts of a multi-host run; host 0 writes)."""
    run_dpath = pathlib.Path(run_dpath)
    now = as_stored({"command": command, **settings})
    fpath = run_dpath / RUN_FNAME
    resuming = False
    if overwrite:
        if write:
            clear_run(run_dpath)
    elif fpath.exists() and has_checkpoint(run_dpath):  # without one (a run refused before training) nothing resumes
        try:
            saved = json.loads(fpath.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{fpath}: not readable ({e}); give --overwrite to start afresh") from None
        refuse_if_different(run_dpath, saved, now, "it was made with other settings")
        resuming = True
    if write:
        run_dpath.mkdir(parents=True, exist_ok=True)
        write_text_atomic(fpath, json.dumps(now, indent=1))
    return resuming


def has_checkpoint(run_dpath: pathlib.Path) -> bool:
    """A checkpoint anywhere in the folder (BioJEPAC keeps a folder per stage, the demo one per model)."""
    return any(run_dpath.rglob(CKPT_FNAME))


def refuse_if_different(run_dpath: pathlib.Path, saved: dict, now: dict, what: str) -> None:
    """The one message for a run folder made with other settings: the folder, then up to three differences."""
    diffs = differences(saved, as_stored(now))
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise InputError(f"{run_dpath}: {what} ({'; '.join(diffs[:3])}{more}); "
                         "give --overwrite to start afresh, or another run folder")


def clear_run(run_dpath: pathlib.Path) -> None:
    """Empty a run folder for `--overwrite`; a non-empty folder that shows no sign of being a run folder is
    refused (a mistyped path must not delete someone's data)."""
    if not run_dpath.exists():
        return
    if not run_dpath.is_dir():
        raise InputError(f"{run_dpath}: exists and is not a folder")
    children = list(run_dpath.iterdir())
    looks_like_run = any(c.name in RUN_MARKERS for c in children) or any(
        c.is_dir() and any((c / m).exists() for m in RUN_MARKERS) for c in children)
    if children and not looks_like_run:
        raise InputError(f"{run_dpath}: not a run folder (no {RUN_FNAME} or checkpoint in it); "
                         "--overwrite refuses to delete it, give another run folder")
    for child in children:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def differences(saved, now, path: str = "") -> list[str]:
    """Each setting that differs between two JSON-like records, as 'path: X there, Y now'."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in [*now, *(k for k in saved if k not in now)]:
            if not path and key in FREE_KEYS:
                continue
            sub = f"{path}.{key}" if path else str(key)
            if key not in saved:
                out.append(f"{sub}: not recorded there, {_short(now[key])} now")
            elif key not in now:
                out.append(f"{sub}: {_short(saved[key])} there, not given now")
            else:
                out += differences(saved[key], now[key], sub)
        return out
    return [] if saved == now else [f"{path or 'settings'}: {_short(saved)} there, {_short(now)} now"]


def as_stored(value):
    """A record as JSON stores it (tuples become lists, paths strings), so a reread compares equal."""
    return json.loads(json.dumps(value, default=str))


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
