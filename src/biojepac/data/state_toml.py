"""STATE's experiment TOML (arc-state / cell-load) read into our split format, so a STATE user keeps their
experiment definitions.

The file has four tables (arc-state's README, "TOML Configuration Files"):

    [datasets]   name = "/path/to/h5ad/folder"
    [training]   name = "train"                 # every cell type of the dataset trains, unless overridden
    [zeroshot]   "name.celltype" = "val"|"test"  # the whole cell type's perturbed cells go to that fold
    [fewshot."name.celltype"]  val = [...]  test = [...]   # listed perturbations held out; the rest train

Our screen is one `.h5ad` whose `context` column holds the cell types (cell-load's `cell_type_key`), so
one TOML dataset is mapped onto it (`--dataset`; the only one when there is one). The rules are
cell-load's (`PerturbationDataModule._process_celltype`): zeroshot wins over fewshot; a cell type of a
dataset that is not marked "train" is used only where zeroshot or fewshot names it; val and test lists
may overlap. One difference, by construction of our format: control cells always train (cell-load also
adds every zeroshot cell type's controls to training, but splits a fewshot cell type's controls across
folds in proportion). Unknown cell types or perturbations are an error naming the TOML key, not skipped.
"""

import dataclasses
import pathlib
import tomllib

import anndata as ad

from biojepac.data import schema
from biojepac.data.splits import Split, assert_no_leak, get_items, save_split
from biojepac.errors import InputError

FOLDS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class StateExperiment:
    """A parsed, checked STATE experiment TOML."""

    datasets: dict[str, str]
    """Dataset name -> folder of h5ad files."""
    training: dict[str, str]
    """Dataset name -> "train"."""
    zeroshot: dict[tuple[str, str], str]
    """(dataset, cell type) -> the fold all its perturbed cells go to."""
    fewshot: dict[tuple[str, str], dict[str, list[str]]]
    """(dataset, cell type) -> {"val": [...], "test": [...]} held-out perturbations."""


def _dataset_celltype(key: str, table: str, fpath: pathlib.Path) -> tuple[str, str]:
    if "." not in key:
        raise InputError(f"{fpath}: [{table}] key {key!r} is not of the form \"dataset.celltype\"")
    dataset, celltype = key.split(".", 1)  # cell-load splits on the first dot too
    return dataset, celltype


def read_state_toml(fpath: str | pathlib.Path) -> StateExperiment:
    """Parse and check a STATE TOML; every error names the file and the key at fault."""
    fpath = pathlib.Path(fpath)
    if not fpath.is_file():
        raise InputError(f"{fpath}: file not found")
    try:
        raw = tomllib.loads(fpath.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{fpath}: not a TOML file ({err})") from err
    unknown = sorted(set(raw) - {"datasets", "training", "zeroshot", "fewshot"})
    if unknown:
        raise InputError(f"{fpath}: unknown table [{unknown[0]}]; expected [datasets], [training], [zeroshot], [fewshot]")
    datasets = {str(k): str(v) for k, v in raw.get("datasets", {}).items()}
    if not datasets:
        raise InputError(f"{fpath}: [datasets] is missing or empty")
    training = {str(k): v for k, v in raw.get("training", {}).items()}
    for name, value in training.items():
        if value != "train":
            raise InputError(f"{fpath}: [training] {name} = {value!r}; the only value is \"train\"")
    zeroshot = {}
    for key, fold in raw.get("zeroshot", {}).items():
        if fold not in FOLDS:
            raise InputError(f"{fpath}: [zeroshot] {key!r} = {fold!r}; expected one of {FOLDS}")
        zeroshot[_dataset_celltype(key, "zeroshot", fpath)] = fold
    fewshot = {}
    for key, lists in raw.get("fewshot", {}).items():
        if not isinstance(lists, dict):
            raise InputError(f"{fpath}: [fewshot] {key!r} must be a table with val = [...] and test = [...]")
        bad = sorted(set(lists) - {"val", "test"})
        if bad:
            raise InputError(f"{fpath}: [fewshot.\"{key}\"] has {bad[0]!r}; expected val and test lists")
        if not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in lists.values()):
            raise InputError(f"{fpath}: [fewshot.\"{key}\"] val and test must be lists of perturbation names")
        fewshot[_dataset_celltype(key, "fewshot", fpath)] = {f: list(lists.get(f, [])) for f in ("val", "test")}
    named = set(training) | {d for d, _ in zeroshot} | {d for d, _ in fewshot}
    missing = sorted(named - set(datasets))
    if missing:  # cell-load's ExperimentConfig.validate
        raise InputError(f"{fpath}: dataset {missing[0]!r} is used but has no path in [datasets]")
    return StateExperiment(datasets, training, zeroshot, fewshot)


def state_experiment_split(exp: StateExperiment, adata: ad.AnnData, dataset: str | None = None,
                           source: str = "STATE TOML") -> Split:
    """The split of `adata` (contexts = cell types) that `exp` defines for one of its datasets."""
    if dataset is None:
        if len(exp.datasets) != 1:
            raise InputError(f"{source}: it has datasets {sorted(exp.datasets)}; say which one this screen is (--dataset)")
        dataset = next(iter(exp.datasets))
    if dataset not in exp.datasets:
        raise InputError(f"{source}: no dataset {dataset!r} in [datasets] (it has {sorted(exp.datasets)})")
    items = get_items(adata)
    contexts = sorted({c for c, _ in items})
    zeroshot = {ct: f for (d, ct), f in exp.zeroshot.items() if d == dataset}
    fewshot = {ct: v for (d, ct), v in exp.fewshot.items() if d == dataset}
    for table, named in (("zeroshot", zeroshot), ("fewshot", fewshot)):
        for ct in named:
            if ct not in contexts:
                raise InputError(f"{source}: [{table}] \"{dataset}.{ct}\": no cell type {ct!r} in "
                                 f"{schema.source_name(adata)} (obs {schema.CONTEXT_COL!r} has {contexts})")
    perts_of = {}
    for c, p in items:
        perts_of.setdefault(c, set()).add(p)
    for ct, lists in fewshot.items():
        for fold, perts in lists.items():
            absent = [p for p in perts if p not in perts_of[ct]]
            if absent:
                raise InputError(f"{source}: [fewshot.\"{dataset}.{ct}\"] {fold} lists {absent[0]!r}, which has no "
                                 f"cells in cell type {ct!r} of {schema.source_name(adata)}")
    is_training = exp.training.get(dataset) == "train"
    folds = {f: [] for f in FOLDS}
    for ctx, pert in items:
        if ctx in zeroshot:  # zeroshot wins over fewshot, as in cell-load
            folds[zeroshot[ctx]].append((ctx, pert))
        elif ctx in fewshot:
            held = [f for f in ("val", "test") if pert in fewshot[ctx][f]]
            for f in held or ["train"]:  # val and test may overlap
                folds[f].append((ctx, pert))
        elif is_training:
            folds["train"].append((ctx, pert))
    params = {"dataset": dataset, "zeroshot": zeroshot, "fewshot": fewshot, "training": is_training}
    split = Split(f"state_toml_{dataset}", "state_toml", 0, params, *(sorted(folds[f]) for f in FOLDS))
    assert_no_leak(split)
    return split


@dataclasses.dataclass(frozen=True)
class StateTomlCommand:
    toml: pathlib.Path
    """A STATE / cell-load experiment TOML ([datasets], [training], [zeroshot], [fewshot])."""
    screen: pathlib.Path
    """The canonical screen the TOML's dataset refers to (.h5ad; cell types in obs `context`); only obs is read."""
    out: pathlib.Path
    """Where to write the split JSON (`biojepac data split`'s format, kind state_toml)."""
    dataset: str | None = None
    """Which [datasets] entry the screen is (default: the only one)."""


def run_state_toml(cmd: StateTomlCommand) -> Split:
    """`biojepac data state-toml`: a STATE experiment TOML -> a leak-checked split JSON."""
    exp = read_state_toml(cmd.toml)
    from biojepac.data.load import read_screen_obs

    adata = read_screen_obs(cmd.screen)  # obs only, checked; X stays on disk
    split = state_experiment_split(exp, adata, cmd.dataset, source=str(cmd.toml))
    save_split(split, cmd.out)
    sizes = ", ".join(f"{f}={len(getattr(split, f))}" for f in FOLDS)
    print(f"wrote split {split.name} ({sizes}) to {cmd.out}")
    return split
