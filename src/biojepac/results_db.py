"""The benchmark results database: SQLite through `sqlite3`, a small versioned schema.

Every number on the leaderboard is a row here that names the model and its config, the task and split,
the dataset checksum, the git commit, the command line, the host and the time, so it can be traced and
re-run. Per-perturbation metrics are stored long (one row per run x perturbation x metric); aggregate
metrics (with bootstrap CIs where they have one) go in `summary`. Skipped peers are runs too, with
status "skipped" and the reason in `note`, so the leaderboard can say why a row is missing.

Schema changes bump `SCHEMA_VERSION` and add a step to `MIGRATIONS`; `connect` applies pending steps.
"""

import json
import pathlib
import sqlite3
import time

SCHEMA_VERSION = 2

MIGRATIONS = {
    1: """
    CREATE TABLE runs (
        run_id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,           -- leaderboard name, e.g. 'state' (ours), 'STATE' (arc-state), 'STATE (arc-state 0.11.1)'
        model_config TEXT NOT NULL,    -- JSON
        task TEXT NOT NULL,
        split_name TEXT NOT NULL,
        split_json TEXT NOT NULL,      -- the full split, so a row can be re-run without the builder
        dataset_checksum TEXT NOT NULL,
        git_commit TEXT NOT NULL,
        command TEXT NOT NULL,
        host TEXT NOT NULL,
        started_at TEXT NOT NULL,      -- UTC ISO 8601
        status TEXT NOT NULL CHECK (status IN ('ok', 'skipped', 'failed')),
        note TEXT NOT NULL DEFAULT '',
        train_s REAL,
        predict_s REAL,
        peak_mem_mb REAL,
        pred_fpath TEXT
    );
    CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs(run_id),
        context TEXT NOT NULL,
        perturbation TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL,
        PRIMARY KEY (run_id, context, perturbation, metric)
    );
    CREATE TABLE summary (
        run_id INTEGER NOT NULL REFERENCES runs(run_id),
        metric TEXT NOT NULL,
        value REAL,
        ci_low REAL,
        ci_high REAL,
        PRIMARY KEY (run_id, metric)
    );
    """,
    # Our state-transition model took its registry name ('state-st' was the bench's own name for it).
    2: """
    UPDATE runs SET model = 'state' WHERE model = 'state-st';
    UPDATE runs SET model = 'state-pb' WHERE model = 'state-st-pb';
    """,
}

RUN_FIELDS = ("model", "model_config", "task", "split_name", "split_json", "dataset_checksum", "git_commit",
              "command", "host", "started_at", "status", "note", "train_s", "predict_s", "peak_mem_mb", "pred_fpath")


def connect(db_fpath: pathlib.Path) -> sqlite3.Connection:
    """Open (creating or migrating) the database."""
    db_fpath = pathlib.Path(db_fpath)
    db_fpath.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db_fpath)
    con.execute("PRAGMA foreign_keys = ON")
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{db_fpath}: schema version {version} is newer than this code ({SCHEMA_VERSION})")
    for step in range(version + 1, SCHEMA_VERSION + 1):
        with con:
            con.executescript(MIGRATIONS[step])
            con.execute(f"PRAGMA user_version = {step}")
    return con


def add_run(con: sqlite3.Connection, run: dict, per_pert: list[tuple[str, str, str, float]] = (),
            summary: list[tuple[str, float, float | None, float | None]] = ()) -> int:
    """Insert one run with its per-perturbation (context, pert, metric, value) and summary rows, atomically."""
    unknown = set(run) - set(RUN_FIELDS)
    assert not unknown, f"unknown run fields {unknown}"
    row = {k: run.get(k) for k in RUN_FIELDS}
    row["model_config"] = row["model_config"] if isinstance(row["model_config"], str) else json.dumps(row["model_config"], default=str)
    row["split_json"] = row["split_json"] if isinstance(row["split_json"], str) else json.dumps(row["split_json"], default=str)
    row["started_at"] = row["started_at"] or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    row["note"] = row["note"] or ""
    with con:
        cur = con.execute(f"INSERT INTO runs ({', '.join(RUN_FIELDS)}) VALUES ({', '.join('?' * len(RUN_FIELDS))})",
                          [row[k] for k in RUN_FIELDS])
        run_id = int(cur.lastrowid)
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                        [(run_id, c, p, m, _num(v)) for c, p, m, v in per_pert])
        con.executemany("INSERT INTO summary VALUES (?, ?, ?, ?, ?)",
                        [(run_id, m, _num(v), _num(lo), _num(hi)) for m, v, lo, hi in summary])
    return run_id


def latest_runs(con: sqlite3.Connection) -> list[sqlite3.Row]:
    """The most recent run of each (model, task)."""
    con.row_factory = sqlite3.Row
    return con.execute("""
        SELECT r.* FROM runs r
        JOIN (SELECT model, task, MAX(run_id) AS run_id FROM runs GROUP BY model, task) last USING (run_id)
        ORDER BY r.task, r.model
    """).fetchall()


def summaries(con: sqlite3.Connection, run_ids: list[int]) -> dict[int, dict[str, tuple]]:
    """run_id -> metric -> (value, ci_low, ci_high)."""
    if not run_ids:
        return {}
    q = f"SELECT run_id, metric, value, ci_low, ci_high FROM summary WHERE run_id IN ({', '.join('?' * len(run_ids))})"
    out: dict[int, dict[str, tuple]] = {}
    for run_id, metric, value, lo, hi in con.execute(q, run_ids):
        out.setdefault(run_id, {})[metric] = (value, lo, hi)
    return out


def _num(v):
    if v is None:
        return None
    v = float(v)
    return None if v != v else v  # NaN -> NULL
