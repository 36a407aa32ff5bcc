"""The real Norman19 + McFaline23 fixture loads, validates and comes out canonical (skips without ../shared/data)."""

import hashlib

import numpy as np
import pytest

from biojepac.data import schema
from biojepac.data.normalize import normalize_log1p
from biojepac.data.values import detect_kind
from biojepac.data.recipes import load_norman_mcfaline

FNAME = "norman19_mcfaline23_devel.h5ad"


@pytest.fixture(scope="module")
def fixture_fpath(shared_data_dpath):
    return shared_data_dpath / FNAME


@pytest.fixture(scope="module")
def screen(fixture_fpath):
    return load_norman_mcfaline(fixture_fpath)


def test_shape_and_provenance(screen, fixture_fpath):
    assert screen.shape == (5961, 500)
    prov = screen.uns[schema.UNS_KEY]
    assert prov["source"] == str(fixture_fpath) and prov["values"] == "log1p"
    assert detect_kind(screen.X) == "log1p"


def test_controls_and_combos(screen):
    obs = screen.obs
    raw = obs["perturbation"].astype(str)
    canon = obs[schema.PERT_COL].astype(str)
    assert ((raw == "control") == (canon == schema.CONTROL)).all()
    np.testing.assert_array_equal(canon[raw != "control"], raw[raw != "control"])  # combos A+B untouched
    norman = obs["dataset"] == "norman19"
    assert (canon == schema.CONTROL).sum() == 400 and (canon[norman] == schema.CONTROL).sum() == 100  # 100 per context
    singles = {p for p in canon[norman].unique() if p != schema.CONTROL and "+" not in p}
    combos = {p for p in canon[norman].unique() if "+" in p}
    # The data has 18 singles + 15 combos (shared/data/README.md says 20 + 13; the file is the truth).
    assert len(singles) == 18 and len(combos) == 15 and "KLF1+MAP2K6" in combos


def test_contexts_and_modalities(screen):
    obs = screen.obs
    assert set(obs[schema.CONTEXT_COL]) == {"k562", "A172", "T98G", "U87MG"}
    by_ds = obs.groupby("dataset", observed=True)[schema.PERT_TYPE_COL].unique()
    assert list(by_ds["norman19"]) == ["CRISPRa"] and list(by_ds["mcfaline23"]) == ["CRISPRi"]
    ctrl_per_ctx = obs[obs[schema.PERT_COL] == schema.CONTROL].groupby(schema.CONTEXT_COL, observed=True).size()
    assert (ctrl_per_ctx > 0).all() and len(ctrl_per_ctx) == 4
    mc_perts = set(obs.loc[obs["dataset"] == "mcfaline23", schema.PERT_COL]) - {schema.CONTROL}
    assert len(mc_perts) == 9


def test_file_untouched_and_normalise_is_a_no_op(screen, fixture_fpath):
    before = hashlib.md5(fixture_fpath.read_bytes()).hexdigest()
    again = load_norman_mcfaline(fixture_fpath)
    out = normalize_log1p(again)
    assert out.uns[schema.UNS_KEY]["transform"] == {"input": "log1p", "applied": "none"}
    np.testing.assert_array_equal(out.X.toarray(), screen.X.toarray())
    assert hashlib.md5(fixture_fpath.read_bytes()).hexdigest() == before
