"""Train/val/test splits over (context, perturbation) items, saved as JSON and checked for leakage.

An item is a `(context, target_gene)` pair. Controls are never items: every context's control cells are
always available for training (they are the model's input state), so `split_masks` puts them in train.
Four kinds:
- `unseen_perturbation`: perturbations split into train/val/test (the GEARS "simulation" split);
  a held-out perturbation is held out in every context considered.
- `fewshot_context`: all perturbations of the other contexts plus k of the target context train;
  the rest of the target context go to val and test (the Virtual Cell Challenge setting).
- `zeroshot_context`: a whole context is held out.
- `combination`: genes are split; test combinations are labelled `combo_seen0/1/2` by how many of their
  single perturbations are in train (GEARS), plus `unseen_single` for held-out singles.
A fifth, `state_toml`, is read from a STATE experiment TOML (`biojepac.data.state_toml`).
"""

import dataclasses
import json
import os
import pathlib
import typing

import anndata as ad
import numpy as np

from biojepac.data import schema
from biojepac.errors import InputError
from biojepac.io import write_text_atomic

Item = tuple[str, str]
Kind = typing.Literal["unseen_perturbation", "fewshot_context", "zeroshot_context", "combination", "state_toml"]


@dataclasses.dataclass(frozen=True)
class Split:
    name: str
    """Human-readable name, e.g. `fewshot_ctx1_k5_seed0`."""
    kind: Kind
    """Which builder made it; decides what `assert_no_leak` checks beyond item overlap."""
    seed: int
    """Seed of the builder's random choices."""
    params: dict
    """Builder arguments (context, k, fractions, ...), JSON-serialisable."""
    train: list[Item]
    """Sorted (context, target_gene) items to train on."""
    val: list[Item]
    """Sorted items for model selection."""
    test: list[Item]
    """Sorted items held out for the final score."""
    subgroups: dict[str, list[Item]] = dataclasses.field(default_factory=dict)
    """Named subsets of test (combination split: `combo_seen0/1/2`, `unseen_single`)."""


class LeakError(ValueError):
    """A held-out item, perturbation or context appears in training."""


def get_items(adata: ad.AnnData) -> list[Item]:
    """Sorted distinct (context, target_gene) pairs of perturbed cells."""
    for col in (schema.CONTEXT_COL, schema.PERT_COL):
        if col not in adata.obs.columns:
            raise InputError(f"{schema.source_name(adata)}: obs has no column {col!r}")
    frame = adata.obs[[schema.CONTEXT_COL, schema.PERT_COL]].astype(str).drop_duplicates()
    frame = frame[frame[schema.PERT_COL] != schema.CONTROL]
    return sorted(map(tuple, frame.to_numpy().tolist()))


def make_unseen_perturbation_split(
    adata: ad.AnnData, context: str | None = None, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> Split:
    """Perturbations split train/val/test; with `context`, only that context's items are used."""
    assert len(fractions) == 3 and abs(sum(fractions) - 1.0) < 1e-6, f"fractions must sum to 1, got {fractions}"
    items = [it for it in get_items(adata) if context is None or it[0] == context]
    if not items:
        raise InputError(f"{schema.source_name(adata)}: no perturbed cells in context {context!r} (column {schema.CONTEXT_COL!r})")
    perts = sorted({p for _, p in items})
    fold = dict(zip(perts, _assign_folds(len(perts), fractions, seed)))
    train, val, test = ([it for it in items if fold[it[1]] == f] for f in range(3))
    name = f"unseen_perturbation_{context or 'all'}_seed{seed}"
    return Split(name, "unseen_perturbation", seed, {"context": context, "fractions": list(fractions)}, train, val, test)


def make_fewshot_context_split(adata: ad.AnnData, target_context: str, k: int, val_fraction: float = 0.33, seed: int = 0) -> Split:
    """Other contexts' items plus k of `target_context` train; the target's rest split val/test."""
    items = get_items(adata)
    target = [it for it in items if it[0] == target_context]
    if not target:
        raise InputError(f"{schema.source_name(adata)}: context {target_context!r} has no perturbed cells (column {schema.CONTEXT_COL!r})")
    if not 0 <= k < len(target):
        raise InputError(f"{schema.source_name(adata)}: k={k} must leave held-out perturbations; context {target_context!r} has {len(target)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(target))
    shots = [target[i] for i in order[:k]]
    rest = [target[i] for i in order[k:]]
    n_val = int(round(val_fraction * len(rest)))
    train = sorted([it for it in items if it[0] != target_context] + shots)
    name = f"fewshot_{target_context}_k{k}_seed{seed}"
    params = {"target_context": target_context, "k": k, "val_fraction": val_fraction}
    return Split(name, "fewshot_context", seed, params, train, sorted(rest[:n_val]), sorted(rest[n_val:]))


def make_zeroshot_context_split(adata: ad.AnnData, target_context: str, val_fraction: float = 0.0, seed: int = 0) -> Split:
    """Every item of `target_context` is test; other contexts train (a `val_fraction` of their items to val)."""
    items = get_items(adata)
    test = [it for it in items if it[0] == target_context]
    if not test:
        raise InputError(f"{schema.source_name(adata)}: context {target_context!r} has no perturbed cells (column {schema.CONTEXT_COL!r})")
    other = [it for it in items if it[0] != target_context]
    is_val = np.zeros(len(other), dtype=bool)
    is_val[np.random.default_rng(seed).permutation(len(other))[: int(round(val_fraction * len(other)))]] = True
    train = [it for it, v in zip(other, is_val) if not v]
    val = [it for it, v in zip(other, is_val) if v]
    name = f"zeroshot_{target_context}_seed{seed}"
    return Split(name, "zeroshot_context", seed, {"target_context": target_context, "val_fraction": val_fraction}, train, val, test)


def make_combination_split(
    adata: ad.AnnData, seed: int = 0, gene_fractions: tuple[float, float, float] = (0.75, 0.0, 0.25), seen2_test_fraction: float = 0.5
) -> Split:
    """GEARS-style: genes split train/val/test; singles follow their gene, combinations their genes.

    A combination of two train genes is itself held out (test, `combo_seen2`) with probability
    `seen2_test_fraction`; one with a test gene is test, labelled by how many of its singles are in
    train in that context; one with a val gene but no test gene is val. Per context.
    """
    assert abs(sum(gene_fractions) - 1.0) < 1e-6, f"gene_fractions must sum to 1, got {gene_fractions}"
    items = get_items(adata)
    genes = sorted({g for _, p in items for g in schema.split_combo(p)})
    if not any(len(schema.split_combo(p)) > 1 for _, p in items):
        raise InputError(f"{schema.source_name(adata)}: no combination perturbations (written 'A{schema.COMBO_SEP}B') in column {schema.PERT_COL!r}")
    rng = np.random.default_rng(seed)
    fold = dict(zip(genes, _assign_folds(len(genes), gene_fractions, seed)))
    train, val, test, groups = [], [], [], {"combo_seen0": [], "combo_seen1": [], "combo_seen2": [], "unseen_single": []}
    combos = []
    for it in items:
        parts = schema.split_combo(it[1])
        if len(parts) == 1:
            [train, val, test][fold[parts[0]]].append(it)
            if fold[parts[0]] == 2:
                groups["unseen_single"].append(it)
        else:
            combos.append(it)
    train_set = set(train)
    for it, u in zip(combos, rng.random(len(combos))):
        folds = [fold[g] for g in schema.split_combo(it[1])]
        if max(folds) == 0 and u >= seen2_test_fraction:
            train.append(it)
        elif max(folds) == 1:
            val.append(it)
        else:
            test.append(it)
            n_seen = sum((it[0], g) in train_set for g in schema.split_combo(it[1]))
            groups[f"combo_seen{min(n_seen, 2)}"].append(it)
    params = {"gene_fractions": list(gene_fractions), "seen2_test_fraction": seen2_test_fraction}
    groups = {k: sorted(v) for k, v in groups.items()}
    return Split(f"combination_seed{seed}", "combination", seed, params, sorted(train), sorted(val), sorted(test), groups)


def assert_no_leak(split: Split) -> None:
    """Raise `LeakError` if anything held out is trained on, in the sense of the split's kind."""
    train = set(split.train)
    for fold in ("val", "test"):
        overlap = sorted(train & set(getattr(split, fold)))
        if overlap:
            raise LeakError(f"split {split.name!r}: {fold} item {overlap[0]} is also in train")
    if split.kind == "unseen_perturbation":
        train_perts = {p for _, p in split.train}
        leaked = sorted({p for _, p in split.val + split.test} & train_perts)
        if leaked:
            raise LeakError(f"split {split.name!r}: held-out perturbation {leaked[0]!r} is trained on in some context")
    elif split.kind == "zeroshot_context":
        ctx = split.params["target_context"]
        leaked = sorted(it for it in split.train + split.val if it[0] == ctx)
        if leaked:
            raise LeakError(f"split {split.name!r}: held-out context {ctx!r} appears in training: {leaked[0]}")
    elif split.kind == "fewshot_context":
        ctx, k = split.params["target_context"], split.params["k"]
        n_shots = sum(it[0] == ctx for it in split.train)
        if n_shots != k:
            raise LeakError(f"split {split.name!r}: {n_shots} items of target context {ctx!r} in train, expected k={k}")
    elif split.kind == "combination":
        for group, group_items in split.subgroups.items():
            if not set(group_items) <= set(split.test):
                raise LeakError(f"split {split.name!r}: subgroup {group!r} has items outside test")
            if group.startswith("combo_seen"):
                for ctx, label in group_items:
                    n_seen = sum((ctx, g) in train for g in schema.split_combo(label))
                    if n_seen != int(group[-1]):
                        raise LeakError(f"split {split.name!r}: {label!r} in {group!r} has {n_seen} singles in train")
    elif split.kind == "state_toml":
        for ctx, fold in split.params["zeroshot"].items():
            leaked = sorted(it for it in split.train if it[0] == ctx and fold != "train")
            if leaked:
                raise LeakError(f"split {split.name!r}: zeroshot context {ctx!r} ({fold}) appears in training: {leaked[0]}")
    else:
        typing.assert_never(split.kind)


def split_masks(adata: ad.AnnData, split: Split) -> dict[str, np.ndarray]:
    """Boolean cell masks `train` (plus every control cell), `val`, `test` and one per subgroup."""
    ctx = adata.obs[schema.CONTEXT_COL].astype(str).to_numpy()
    pert = adata.obs[schema.PERT_COL].astype(str).to_numpy()
    cell_key = np.char.add(np.char.add(ctx, "\x1f"), pert)
    present = set(cell_key.tolist())
    masks = {}
    for fold, items in [("train", split.train), ("val", split.val), ("test", split.test), *split.subgroups.items()]:
        keys = [f"{c}\x1f{p}" for c, p in items]
        missing = [k for k in keys if k not in present]
        if missing:
            c, p = missing[0].split("\x1f")
            raise InputError(f"{schema.source_name(adata)}: split {split.name!r} lists {p!r} in context {c!r}, "
                             f"which has no cells ({schema.PERT_COL!r})")
        masks[fold] = np.isin(cell_key, keys)
    masks["train"] |= pert == schema.CONTROL
    return masks


def save_split(split: Split, fpath: str | os.PathLike) -> None:
    """Write the split as JSON, atomically (a reader never sees half a file)."""
    fpath = pathlib.Path(fpath)
    fpath.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dataclasses.asdict(split), indent=1)
    write_text_atomic(fpath, text)


def load_split(fpath: str | os.PathLike) -> Split:
    """Read a split written by `save_split`; a malformed or leaking file is an `InputError` naming it."""
    try:
        raw = json.loads(pathlib.Path(fpath).read_text())
        items = lambda xs: [_item(x) for x in xs]
        split = Split(
            name=raw["name"], kind=raw["kind"], seed=int(raw["seed"]), params=dict(raw["params"]),
            train=items(raw["train"]), val=items(raw["val"]), test=items(raw["test"]),
            subgroups={k: items(v) for k, v in raw.get("subgroups", {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{fpath}: not a split file ({type(err).__name__}: {err})") from err
    if split.kind not in typing.get_args(Kind):
        raise InputError(f"{fpath}: unknown split kind {split.kind!r}; expected one of {typing.get_args(Kind)}")
    try:
        assert_no_leak(split)
    except LeakError as err:
        raise InputError(f"{fpath}: {err}") from err
    return split


def _item(x) -> Item:
    """One (context, target_gene) pair of a split file."""
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        raise ValueError(f"item {x!r} is not a [context, target_gene] pair")
    return (str(x[0]), str(x[1]))


def _assign_folds(n: int, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Fold index per element: a seeded permutation cut at the cumulative fractions (rounded)."""
    cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    folds = np.searchsorted(cuts, np.arange(n), side="right")
    return folds[np.random.default_rng(seed).permutation(n)]




@dataclasses.dataclass(frozen=True)
class SplitCommand:
    screen: pathlib.Path
    """A canonical screen (.h5ad with `context` and `target_gene` in obs); only obs is read."""
    out: pathlib.Path
    """Where to write the split JSON."""
    kind: Kind = "unseen_perturbation"
    """Which split to make."""
    context: str | None = None
    """unseen_perturbation: restrict to this context (default: all); fewshot/zeroshot: the target context."""
    k: int = 0
    """fewshot_context: perturbations of the target context given to train."""
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """unseen_perturbation: train/val/test fractions of perturbations; combination: of genes."""
    val_fraction: float = 0.33
    """fewshot_context: share of the held-out target perturbations used for val (the rest is test)."""
    seed: int = 0
    """Seed of every random choice."""


def run_split(cmd: SplitCommand) -> Split:
    """`biojepac data split`: make, check and save a split of a canonical screen."""
    from biojepac.data.load import read_screen_obs

    adata = read_screen_obs(cmd.screen)  # obs only, checked; X stays on disk
    needs_ctx = cmd.kind in ("fewshot_context", "zeroshot_context")
    if needs_ctx and cmd.context is None:
        raise InputError(f"{cmd.screen}: --kind {cmd.kind} needs --context (one of {sorted(set(adata.obs[schema.CONTEXT_COL].astype(str)))})")
    if cmd.kind == "unseen_perturbation":
        split = make_unseen_perturbation_split(adata, cmd.context, cmd.fractions, cmd.seed)
    elif cmd.kind == "fewshot_context":
        split = make_fewshot_context_split(adata, cmd.context, cmd.k, cmd.val_fraction, cmd.seed)
    elif cmd.kind == "zeroshot_context":
        split = make_zeroshot_context_split(adata, cmd.context, seed=cmd.seed)
    elif cmd.kind == "combination":
        split = make_combination_split(adata, cmd.seed, cmd.fractions)
    elif cmd.kind == "state_toml":
        raise InputError(f"{cmd.screen}: a state_toml split is read from a STATE TOML: biojepac data state-toml --toml PATH --screen S --out O")
    else:
        typing.assert_never(cmd.kind)
    assert_no_leak(split)
    save_split(split, cmd.out)
    sizes = ", ".join(f"{f}={len(getattr(split, f))}" for f in ("train", "val", "test"))
    print(f"wrote split {split.name} ({sizes}) to {cmd.out}")
    return split


def train_mask(train: ad.AnnData, split_fpath: pathlib.Path, train_fpath) -> np.ndarray:
    """Cells a model may be fitted on: the split's train cells plus every control."""
    is_ctrl = (train.obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
    try:
        masks = split_masks(train, load_split(split_fpath))
    except InputError as err:  # a split that does not fit the screen: name the split file too
        raise InputError(f"{split_fpath}: {err}" if str(split_fpath) not in str(err) else str(err)) from None
    mask = np.asarray(masks["train"] if isinstance(masks, dict) else masks[0], bool)
    if not (mask & ~is_ctrl).any():
        raise InputError(f"{split_fpath}: no perturbed training cells of {train_fpath} are in the split's train part")
    return mask | is_ctrl


def training_part(adata: ad.AnnData, split_fpath: pathlib.Path | None, screen_fpath) -> ad.AnnData:
    """The cells a model trains on (`train` commands, and `predict` fitting a baseline): all of `adata`, or
    with a split, its training part and every control (`train_mask`)."""
    return adata if split_fpath is None else adata[train_mask(adata, pathlib.Path(split_fpath), screen_fpath)].copy()
