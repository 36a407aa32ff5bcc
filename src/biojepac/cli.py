"""`biojepac <subcommand>`: the only entry point.

Each subcommand is a frozen config dataclass (tyro turns its field docstrings into `--help`) and
a function that takes it. Modules are imported only when their subcommand runs, so `--help` is
fast and one broken optional dependency does not take the whole CLI down.

Option values are checked first (`options.check_options`: one rule per option name for every command).
Bad input (`InputError`) is printed as one line naming the file, column or gene at fault.
"""

import gc
import importlib
import os
import sys

from biojepac.errors import InputError
from biojepac.options import check_options

# name -> (one-line help, "module:ConfigClass", "module:function") or a nested group of the same.
COMMANDS: dict = {
    "demo": (
        "Generate a synthetic screen, fit models, predict and write an evaluation report.",
        "biojepac.demo:DemoConfig",
        "biojepac.demo:run_demo",
    ),
    "predict": (
        "Predict cells for a context with a baseline kind or a saved model; writes an .h5ad with the real controls.",
        "biojepac.predict:PredictCommand",
        "biojepac.predict:run_predict",
    ),
    "evaluate": (
        "Score predicted cells against real cells (VCC metrics as cell-eval, report and calibrated metrics).",
        "biojepac.eval.evaluate:EvaluateConfig",
        "biojepac.eval.evaluate:run_evaluate",
    ),
    "submit": (
        "Validate a prediction against the VCC requirements and package it as .vcc (as cell-eval prep does).",
        "biojepac.submit:SubmitConfig",
        "biojepac.submit:run_submit",
    ),
    "data": {
        "fetch": (
            "Download a public dataset's raw files (or check they are in place) into DATA_DPATH/NAME/raw/.",
            "biojepac.data.recipes:FetchConfig",
            "biojepac.data.recipes:fetch",
        ),
        "prepare": (
            "Convert a fetched dataset to a canonical, normalised screen at DATA_DPATH/NAME/NAME.h5ad.",
            "biojepac.data.recipes:PrepareConfig",
            "biojepac.data.recipes:prepare",
        ),
        "synth": (
            "Generate a synthetic CRISPRi screen (raw counts) with its known causal ground truth.",
            "biojepac.data.synthetic:SynthCommand",
            "biojepac.data.synthetic:run_synth",
        ),
        "prepare-ooc": (
            "Out-of-core prepare (normalise, log1p, HVGs, gene harmonisation, pseudobulk) of an .h5ad larger than memory.",
            "biojepac.data.ooc:PrepareOocCommand",
            "biojepac.data.ooc:run_prepare_ooc",
        ),
        "combine": (
            "Combine several screens into one gene space (symbols/Ensembl matched, same normalisation, missing genes masked), out of core.",
            "biojepac.data.combine:CombineConfig",
            "biojepac.data.combine:run_combine",
        ),
        "split": (
            "Make a leak-checked train/val/test split JSON from a canonical .h5ad screen.",
            "biojepac.data.splits:SplitCommand",
            "biojepac.data.splits:run_split",
        ),
        "state-toml": (
            "Read a STATE / cell-load experiment TOML ([datasets], [training], [zeroshot], [fewshot]) into a split JSON.",
            "biojepac.data.state_toml:StateTomlCommand",
            "biojepac.data.state_toml:run_state_toml",
        ),
    },
    "train": {
        "biojepac": (
            "Train BioJEPAC: --stage pretrain|compose|predict|decode|all, --preset tiny|cpu-small|paper.",
            "biojepac.models.jepa.model:TrainBiojepacConfig",
            "biojepac.models.jepa.model:train_biojepac",
        ),
        "state": (
            "Train the state-transition (STATE-like) model on a log1p screen and save it.",
            "biojepac.models.state.model:TrainStateConfig",
            "biojepac.models.state.model:train",
        ),
        "state-stream": (
            "Train the state-transition model from backed shards (e.g. `data combine` output), unmeasured genes masked in the loss.",
            "biojepac.models.state.streamed:StreamedStateConfig",
            "biojepac.models.state.streamed:train_state_streamed",
        ),
        "stream-pretrain": (
            "BioJEPAC stage-1 pretraining streamed from backed shards (larger than memory; multi-host, bf16, grad accumulation).",
            "biojepac.models.jepa.streamed:StreamedPretrainConfig",
            "biojepac.models.jepa.streamed:pretrain_streamed",
        ),
    },
    "features": {
        "check": (
            "Show which source of a feature spec covers each of a screen's perturbations, and a few genes' nearest neighbours.",
            "biojepac.features.check:FeaturesCheckCommand",
            "biojepac.features.check:run_check",
        ),
    },
    "convert": {
        "state-checkpoint": (
            "Convert an arc-state ST run folder (checkpoint, config, maps) into a saved state model, without torch.",
            "biojepac.models.state.convert:ConvertStateCheckpoint",
            "biojepac.models.state.convert:run_convert",
        ),
    },
    "bench": (
        "Run models x tasks, record per-perturbation metrics in SQLite and write the leaderboard.",
        "biojepac.bench.grid:BenchConfig",
        "biojepac.bench.grid:run_bench",
    ),
}


QUICK_EXIT = frozenset({"evaluate"})
"""Commands whose process, run from the shell, ends as soon as their outputs are written and closed
(`os._exit`): Python's teardown of numba's compiled code alone takes about 0.2 s, a tenth of an
evaluation. Their outputs are complete by then (written atomically), and they leave no atexit work.
Their process also starts with `QUICK_ENV`, and without Python's cycle collector: in an evaluation it ran
132 times for 0.04 s, holding the GIL, and found nothing that matters in a process of two seconds."""
QUICK_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4"}
"""Set (unless already set) before numpy loads, in a QUICK_EXIT command's own process. OpenBLAS's worker
threads (numpy's and scipy's: one each on 2 cores) busy-wait about 2^28 cycles for work after they start
and after each call; an evaluation calls BLAS for little, and the two spins cost it 0.2 CPU-s of 3.7
(measured per thread). 2^4 cycles: they go to sleep at once and are woken for the next call."""


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _usage(prog: str, table: dict) -> str:
    width = max(len(name) for name in table)
    lines = [f"usage: {prog} <subcommand> [--help]", "", "subcommands:"]
    for name, entry in table.items():
        desc = "(group) " + ", ".join(entry) if isinstance(entry, dict) else entry[0]
        lines.append(f"  {name:<{width}}  {desc}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    table, prog = COMMANDS, "biojepac"
    while True:
        if not args or args[0] in ("-h", "--help"):
            print(_usage(prog, {k: v for k, v in table.items() if v}))
            return 0 if args else 2
        name = args.pop(0)
        if name not in table or not table[name]:
            print(f"{prog}: error: unknown subcommand {name!r}\n\n{_usage(prog, table)}", file=sys.stderr)
            return 2
        entry, prog = table[name], f"{prog} {name}"
        if isinstance(entry, dict):
            table = entry
            continue
        desc, config_ref, fn_ref = entry
        if argv is None and name in QUICK_EXIT:
            gc.disable()
            if "numpy" not in sys.modules:
                for key, value in QUICK_ENV.items():
                    os.environ.setdefault(key, value)
        import tyro  # here, not at the top: after the set-up above

        cfg = tyro.cli(_load(config_ref), args=args, prog=prog, description=desc)
        try:
            check_options(cfg)
            _load(fn_ref)(cfg)
        except InputError as err:
            one_line = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
            print(f"{prog}: error: {one_line}", file=sys.stderr)
            return 2
        if argv is None and name in QUICK_EXIT:  # the process's own command line, not a call from Python
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return 0


if __name__ == "__main__":
    sys.exit(main())
