"""Option values and output paths checked once, for every subcommand, before any work: the one
validation path for options.

tyro checks types (an int is an int); this checks meaning, by field name, so every command that has a
`seed`, a count or a fraction gets the same rule and the same message, naming the option as typed
(`--n-boot`, `--ooc.chunk-rows`). Nested config dataclasses are walked with their prefix.
"""

import dataclasses
import math
import pathlib

from biojepac.errors import InputError

AT_LEAST_ONE = ("n_boot", "n_cells", "block_rows", "chunk_rows", "n_workers", "out_chunk_nnz", "grad_accum",
                "window_blocks", "ckpt_every", "n_neighbours", "peer_state_steps", "peer_gears_epochs")
"""Counts that must be >= 1 (a zero would do nothing, or divide by zero)."""
AT_LEAST_ZERO = ("seed", "k", "max_controls", "set_size", "batch_size", "n_tokens", "max_cells_per_pert", "n_combos",
                 "n_genes", "n_top_genes", "shard_cells")
"""Counts and seeds that must be >= 0 (0 means 'all', 'off' or 'the preset's', as each field's help says)."""
AT_LEAST = {"n_hvg": -1}
"""Counts with a special negative value (n_hvg -1: the dataset's default)."""
DISABLED_OR_POSITIVE = ("max_cell_dim", "expected_gene_dim")
"""-1 disables the check; otherwise >= 1."""
POSITIVE = ("steps_scale",)
NON_NEGATIVE = ("pseudobulk_weight",)
NON_EMPTY = ("shards",)
"""Lists the command cannot run without."""
FRACTIONS = ("val_fraction",)
"""A share, in [0, 1]."""


def check_options(cfg, prefix: str = "") -> None:
    """Raise `InputError` naming the first option whose value makes no sense."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        flag = f"--{prefix}{field.name.replace('_', '-')}"
        if dataclasses.is_dataclass(value):
            check_options(value, f"{prefix}{field.name}.")
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, pathlib.PurePath):
            if not (field.name == "out" and getattr(cfg, "shard_cells", 0)):  # `data combine` checks its shard folder itself
                _check_output(field.name, flag, value)
            continue
        _check(field.name, flag, value)


def _check(name: str, flag: str, value) -> None:
    def refuse(rule: str):
        raise InputError(f"{flag} {_show(value)}: must be {rule}")

    if name in AT_LEAST_ONE and value < 1:
        refuse(">= 1")
    if name in AT_LEAST_ZERO and value < 0:
        refuse(">= 0")
    if name in AT_LEAST and value < AT_LEAST[name]:
        refuse(f">= {AT_LEAST[name]}")
    if name in DISABLED_OR_POSITIVE and value != -1 and value < 1:
        refuse(">= 1, or -1 to disable the check")
    if name in POSITIVE and not (math.isfinite(value) and value > 0):
        refuse("a finite number > 0")
    if name in NON_NEGATIVE and not (math.isfinite(value) and value >= 0):
        refuse("a finite number >= 0")
    if name in NON_EMPTY and not value:
        raise InputError(f"{flag}: give at least one")
    if name in FRACTIONS and not 0 <= value <= 1:
        refuse("in [0, 1]")
    if name == "fractions":
        if any(not (math.isfinite(f) and 0 <= f <= 1) for f in value) or abs(sum(value) - 1) > 1e-6:
            refuse("train/val/test shares, each in [0, 1], summing to 1")
        if value[0] <= 0:
            refuse("a train share > 0 (a split needs training perturbations)")
    if name == "target" and value != "median":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            refuse("'median' or a number > 0")


OUTPUT_FOLDERS = ("out_dpath", "run_dpath")
"""Output folders: an existing file of that name is refused before any work."""
OUTPUT_FILES = ("out",)
"""Output files: an existing folder of that name is refused before any work."""


def _check_output(name: str, flag: str, value) -> None:
    path = pathlib.Path(value)
    if name in OUTPUT_FOLDERS and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: exists and is not a folder")
    if name in OUTPUT_FILES and path.is_dir() and not (path / "model.json").is_file():  # a saved model is replaced whole
        raise InputError(f"{flag} {path}: is a folder; give the file to write")


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
