"""Fault injection for `biojepac data split | state-toml | prepare-ooc | synth | prepare` (cases in `fault_cases`)."""

import pytest

from fault_cases import CASES
from fault_harness import run_case

COMMANDS = ('data split', 'data state-toml', 'data prepare-ooc', 'data synth', 'data prepare', 'data combine', 'data fetch',)


@pytest.mark.parametrize("case", [c for cmd in COMMANDS for c in CASES.get(cmd, [])], ids=lambda c: c.id)
def test_fault(case, world, tmp_path):
    problems = run_case(case, world, tmp_path)
    assert not problems, "; ".join(problems)
