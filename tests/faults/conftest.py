"""The fault suite's world: valid tiny inputs every case starts from, built once per session (per worker).

The process-level cases (kill, rerun, concurrent runs, run folders) name their command with
`@pytest.mark.fault_command("...")` or a `command` parameter; with FAULTS_LOG set, each one's outcome is
logged like a table case, so `benchmarks/bench_faults.py` counts them by command too."""

import json
import os

import pytest

from fault_harness import build_world


def pytest_configure(config):
    config.addinivalue_line("markers", "fault_command(name): the command a process-level fault case exercises")


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    marker = item.get_closest_marker("fault_command")
    command = marker.args[0] if marker else getattr(getattr(item, "callspec", None), "params", {}).get("command")
    fpath = os.environ.get("FAULTS_LOG")
    ended = report.when == "call" or (report.when == "setup" and report.failed)
    if not (fpath and isinstance(command, str) and ended) or report.skipped:
        return
    problem = str(report.longrepr).strip().splitlines()[-1][:300] if report.failed and report.longrepr else "failed"
    row = {"command": command, "case": f"process: {item.name}", "clean": report.passed,
           "problems": [] if report.passed else [problem], "rc": None, "last_line": "", "seconds": round(report.duration, 3)}
    with open(fpath, "a") as f:
        f.write(json.dumps(row) + "\n")
