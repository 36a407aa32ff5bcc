"""Fault injection for `biojepac features check`, `demo` and `bench` (cases in `fault_cases`)."""

import pytest

from fault_cases import CASES
from fault_harness import run_case

COMMANDS = ('features check', 'demo', 'bench', 'convert state-checkpoint',)


@pytest.mark.parametrize("case", [c for cmd in COMMANDS for c in CASES.get(cmd, [])], ids=lambda c: c.id)
def test_fault(case, world, tmp_path):
    problems = run_case(case, world, tmp_path)
    assert not problems, "; ".join(problems)


def test_every_command_with_cases_is_run():
    """A command added to the table is run by one of the suite's files (each lists its commands)."""
    import importlib

    names = ("data", "evaluate", "other", "predict", "submit", "train")
    run = {c for n in names for c in importlib.import_module(f"test_faults_{n}").COMMANDS}
    assert set(CASES) <= run, sorted(set(CASES) - run)
