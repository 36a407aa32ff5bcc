"""STATE experiment TOMLs (arc-state's README and examples/*.toml, written the same way) -> our splits,
with cell-load's rules: zeroshot cell types to one fold, fewshot lists held out per cell type, the rest train."""

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biojepac.data.splits import load_split, split_masks
from biojepac.data.state_toml import read_state_toml, state_experiment_split
from biojepac.errors import InputError

# arc-state README, "Example 3: Mixed Evaluation Strategy", with the cell types of our small screen.
MIXED = """
# Combine both zeroshot and fewshot evaluation
[datasets]
replogle = "/data/replogle/"

[training]
replogle = "train"

[zeroshot]
"replogle.jurkat" = "test"        # Zeroshot: unseen cell type

[fewshot]
[fewshot."replogle.k562"]      # Fewshot: limited perturbation examples
val = ["STAT1"]
test = ["MYC", "TP53"]
"""

# arc-state examples/fewshot.toml (val and test may overlap).
FEWSHOT = """
[datasets]
example = "/home/user/state/examples" # CHANGE THIS TO YOUR DIRECTORY

[training]
example = "train"

[zeroshot]

[fewshot]

[fewshot."example.CT4"]
val = ["TARGET3"]
test = ["TARGET3", "TARGET4"]  # can overlap with val
"""


def make_screen(contexts, perts) -> ad.AnnData:
    rows = [(c, p) for c in contexts for p in [*perts, "non-targeting"] for _ in range(3)]
    obs = pd.DataFrame(rows, columns=["context", "target_gene"], index=[f"c{i}" for i in range(len(rows))])
    obs["batch"] = "0"
    return ad.AnnData(X=np.ones((len(rows), 4), np.float32), obs=obs)


def write(tmp_path, text, name="exp.toml"):
    fpath = tmp_path / name
    fpath.write_text(text)
    return fpath


def test_mixed_example_follows_cell_loads_rules(tmp_path):
    adata = make_screen(["jurkat", "k562", "rpe1"], ["MYC", "STAT1", "TP53", "AARS"])
    split = state_experiment_split(read_state_toml(write(tmp_path, MIXED)), adata)
    assert split.kind == "state_toml"
    assert split.test == sorted([("jurkat", p) for p in ["AARS", "MYC", "STAT1", "TP53"]] + [("k562", "MYC"), ("k562", "TP53")])
    assert split.val == [("k562", "STAT1")]
    assert split.train == sorted([("k562", "AARS")] + [("rpe1", p) for p in ["AARS", "MYC", "STAT1", "TP53"]])
    masks = split_masks(adata, split)
    ctrl = adata.obs["target_gene"].to_numpy() == "non-targeting"
    assert masks["train"][ctrl].all()  # controls of every cell type train, jurkat's included
    assert not masks["train"][(adata.obs["context"].to_numpy() == "jurkat") & ~ctrl].any()


def test_fewshot_example_round_trips_through_the_command(tmp_path):
    adata = make_screen(["CT3", "CT4"], ["TARGET3", "TARGET4", "TARGET5"])
    adata.write_h5ad(tmp_path / "screen.h5ad")
    toml = write(tmp_path, FEWSHOT)
    cmd = [sys.executable, "-m", "biojepac.cli", "data", "state-toml", "--toml", str(toml),
           "--screen", str(tmp_path / "screen.h5ad"), "--out", str(tmp_path / "split.json")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    split = load_split(tmp_path / "split.json")
    assert split.val == [("CT4", "TARGET3")] and split.test == [("CT4", "TARGET3"), ("CT4", "TARGET4")]
    assert ("CT4", "TARGET5") in split.train and len(split.train) == 4
    assert json.loads((tmp_path / "split.json").read_text())["params"]["dataset"] == "example"


def test_zeroshot_wins_and_untrained_datasets_only_give_named_cell_types(tmp_path):
    text = """
[datasets]
a = "/x"
[training]
[zeroshot]
"a.CT1" = "val"
[fewshot]
[fewshot."a.CT1"]
test = ["P1"]
"""
    adata = make_screen(["CT1", "CT2"], ["P1", "P2"])
    split = state_experiment_split(read_state_toml(write(tmp_path, text)), adata)
    assert split.val == [("CT1", "P1"), ("CT1", "P2")] and split.test == [] and split.train == []


@pytest.mark.parametrize("text,match", [
    ('[datasets]\na = "/x"\n[training]\na = "yes"\n', "only value"),
    ('[datasets]\na = "/x"\n[zeroshot]\n"a.CT1" = "holdout"\n', "holdout"),
    ('[datasets]\na = "/x"\n[zeroshot]\n"CT1" = "test"\n', "dataset.celltype"),
    ('[datasets]\na = "/x"\n[training]\nb = "train"\n', "'b'"),
    ('[datasets]\na = "/x"\n[fewshot."a.CT1"]\ntest = ["NOPE"]\n', "NOPE"),
    ('[datasets]\na = "/x"\n[zeroshot]\n"a.CT9" = "test"\n', "CT9"),
    ('[datasets]\na = "/x"\n[fewshot."a.CT1"]\ntrain = ["P1"]\n', "'train'"),
])
def test_bad_tomls_name_the_key(tmp_path, text, match):
    adata = make_screen(["CT1", "CT2"], ["P1", "P2"])
    fpath = write(tmp_path, text)
    with pytest.raises(InputError, match=match):
        state_experiment_split(read_state_toml(fpath), adata)
