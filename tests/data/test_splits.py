"""Splits: leak-freeness over many seeds, determinism, JSON round trip, cell masks, and the real fixture."""

import json

import pytest

from biojepac.data import schema
from biojepac.data.splits import (
    LeakError,
    Split,
    assert_no_leak,
    get_items,
    load_split,
    make_combination_split,
    make_fewshot_context_split,
    make_unseen_perturbation_split,
    make_zeroshot_context_split,
    save_split,
    split_masks,
)
from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen
from biojepac.errors import InputError

SEEDS = range(30)


@pytest.fixture(scope="module")
def screen():
    return make_synthetic_screen(get_screen_preset("tiny", n_perts=20, n_combos=15, n_contexts=3, cells_per_pert=3), seed=0)


def _check_partition(split: Split, universe: list) -> None:
    folds = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, folds)) == len(set().union(*folds)), "folds overlap"
    assert set().union(*folds) == set(universe)
    for fold in (split.train, split.val, split.test):
        assert fold == sorted(fold)


def test_unseen_perturbation_split_is_leak_free(screen):
    items = get_items(screen)
    for seed in SEEDS:
        split = make_unseen_perturbation_split(screen, seed=seed)
        assert_no_leak(split)
        _check_partition(split, items)
        train_perts = {p for _, p in split.train}
        assert not train_perts & {p for _, p in split.test + split.val}
        one = make_unseen_perturbation_split(screen, context="ctx1", seed=seed)
        assert_no_leak(one)
        _check_partition(one, [it for it in items if it[0] == "ctx1"])
        n_perts = len({p for _, p in one.train + one.val + one.test})
        assert len(one.test) == n_perts - round(0.8 * n_perts) and len(one.train) == round(0.7 * n_perts)


def test_fewshot_split_is_leak_free(screen):
    items = get_items(screen)
    for seed in SEEDS:
        split = make_fewshot_context_split(screen, "ctx2", k=5, val_fraction=0.3, seed=seed)
        assert_no_leak(split)
        _check_partition(split, items)
        assert sum(c == "ctx2" for c, _ in split.train) == 5
        assert all(c == "ctx2" for c, _ in split.val + split.test)
        assert {it for it in items if it[0] != "ctx2"} <= set(split.train)


def test_zeroshot_split_is_leak_free(screen):
    for seed in SEEDS:
        split = make_zeroshot_context_split(screen, "ctx0", val_fraction=0.2, seed=seed)
        assert_no_leak(split)
        _check_partition(split, get_items(screen))
        assert {c for c, _ in split.test} == {"ctx0"} and "ctx0" not in {c for c, _ in split.train + split.val}


def test_combination_split_labels_and_leaks(screen):
    seen_counts = set()
    for seed in SEEDS:
        split = make_combination_split(screen, seed=seed, gene_fractions=(0.6, 0.1, 0.3))
        assert_no_leak(split)
        _check_partition(split, get_items(screen))
        train = set(split.train)
        for group in ("combo_seen0", "combo_seen1", "combo_seen2"):
            for ctx, label in split.subgroups[group]:
                # Recount independently: how many of the combination's singles are trained on in its context.
                n = sum((ctx, g) in train for g in label.split("+"))
                assert n == int(group[-1]) and "+" in label
                seen_counts.add(n)
        test_combos = {it for it in split.test if "+" in it[1]}
        assert test_combos == set().union(*(set(split.subgroups[g]) for g in ("combo_seen0", "combo_seen1", "combo_seen2")))
    assert seen_counts == {0, 1, 2}, "over many seeds every label occurs"


def test_splits_are_deterministic(screen):
    builders = [
        lambda s: make_unseen_perturbation_split(screen, seed=s),
        lambda s: make_fewshot_context_split(screen, "ctx1", 3, seed=s),
        lambda s: make_zeroshot_context_split(screen, "ctx1", val_fraction=0.3, seed=s),
        lambda s: make_combination_split(screen, seed=s),
    ]
    for build in builders:
        assert build(4) == build(4)
        assert any(build(4) != build(s) for s in range(5, 9))


def test_assert_no_leak_catches_leaks():
    base = dict(seed=0, train=[("a", "X"), ("a", "Y")], val=[], test=[("a", "Z")], subgroups={})
    with pytest.raises(LeakError, match="also in train"):
        assert_no_leak(Split("s", "fewshot_context", params={"target_context": "a", "k": 3}, **{**base, "test": [("a", "X")]}))
    with pytest.raises(LeakError, match="'X'"):
        assert_no_leak(Split("s", "unseen_perturbation", params={}, **{**base, "test": [("b", "X")]}))
    with pytest.raises(LeakError, match="held-out context 'a'"):
        assert_no_leak(Split("s", "zeroshot_context", params={"target_context": "a"}, **base))
    with pytest.raises(LeakError, match="k=1"):
        assert_no_leak(Split("s", "fewshot_context", params={"target_context": "a", "k": 1}, **base))
    combo = Split("s", "combination", params={}, **{**base, "test": [("a", "X+Z")], "subgroups": {"combo_seen2": [("a", "X+Z")]}})
    with pytest.raises(LeakError, match="1 singles in train"):
        assert_no_leak(combo)


def test_save_load_round_trip(screen, tmp_path):
    for split in (make_combination_split(screen, seed=1), make_fewshot_context_split(screen, "ctx0", 2, seed=1)):
        fpath = tmp_path / "sub" / f"{split.name}.json"
        save_split(split, fpath)
        assert load_split(fpath) == split
        assert not list(fpath.parent.glob(".*"))  # no temporary left behind


def test_load_rejects_leaking_and_malformed_files(screen, tmp_path):
    split = make_unseen_perturbation_split(screen, seed=0)
    raw = json.loads(json.dumps(split.__dict__, default=list))
    raw["train"].append(list(split.test[0]))
    bad = tmp_path / "leak.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="leak.json"):
        load_split(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        load_split(broken)


def test_split_masks(screen):
    split = make_fewshot_context_split(screen, "ctx1", k=4, seed=0)
    masks = split_masks(screen, split)
    obs = screen.obs.astype(str)
    is_ctrl = (obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
    assert masks["train"][is_ctrl].all()
    assert not (masks["train"] & masks["test"]).any() and not (masks["val"] & masks["test"]).any()
    assert (masks["train"] | masks["val"] | masks["test"]).all()
    pairs = set(map(tuple, obs.loc[masks["test"], [schema.CONTEXT_COL, schema.PERT_COL]].to_numpy()))
    assert pairs == set(split.test)
    missing = Split(split.name, split.kind, 0, split.params, split.train, split.val, split.test + [("ctx1", "NOPE")])
    with pytest.raises(InputError, match="'NOPE'"):
        split_masks(screen, missing)


def test_real_fixture_splits(shared_data_dpath):
    from biojepac.data.load import ScreenColumns, load_screen

    cols = ScreenColumns(pert="condition", context="cell_type", pert_type="CRISPRi", control_labels=("control",))
    adata = load_screen(shared_data_dpath / "norman19_mcfaline23_devel.h5ad", cols)
    combo = make_combination_split(adata[adata.obs["dataset"] == "norman19"], seed=0)
    assert_no_leak(combo)
    assert sum(len(v) for k, v in combo.subgroups.items() if k.startswith("combo_seen")) > 0
    for build in (
        lambda: make_fewshot_context_split(adata, "U87MG", k=3, seed=0),
        lambda: make_zeroshot_context_split(adata, "T98G", seed=0),
        lambda: make_unseen_perturbation_split(adata, context="k562", seed=0),
    ):
        split = build()
        assert_no_leak(split)
        masks = split_masks(adata, split)
        assert masks["test"].sum() > 0 and masks["train"].sum() > masks["test"].sum()
