"""Where a result came from: the checkout's commit, recorded beside every benchmark result."""

import pathlib
import subprocess

REPO_DPATH = pathlib.Path(__file__).resolve().parents[3]


def git_commit() -> str:
    """The short hash of HEAD, with `-dirty` when tracked files differ from it; "unknown" outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DPATH, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DPATH,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"
