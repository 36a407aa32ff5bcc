"""The evaluation kernels built ahead of time give what numba's just-in-time build gives, and are only used
for the sources they were built from."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from biojepac.eval import inputs, kernels, kernels_build, mwu

SCORE = """
import json, sys
from biojepac.eval.evaluate import evaluate
out = evaluate(sys.argv[1], sys.argv[2], profile="all", pert_col="target_gene", n_boot=20)
print(json.dumps({"numba": "numba" in sys.modules, "per": out["per_perturbation"].to_dict(orient="list")}))
"""


def _built() -> bool:
    name = f"_kernels_{kernels.build_hash()}.json"
    return any((d / name).is_file() for d in kernels.build_dpaths())


def test_type_key_tells_apart_what_numba_compiles_separately():
    a = np.zeros(4, np.float32)
    ro = a.copy()
    ro.flags.writeable = False
    keys = {kernels.type_key((x,)) for x in (a, a.astype(np.float64), a.reshape(2, 2), a.reshape(2, 2).T,
                                              a[::2], ro, 1, 1.0, np.float32(1), np.int64(1), True)}
    assert len(keys) == 11
    assert kernels.type_key((a, 3)) == kernels.type_key((np.ones(9, np.float32), 7))
    assert kernels.type_key((a, "text")) == ""  # not a kernel argument: just in time


def test_the_hash_follows_the_kernel_sources(tmp_path, monkeypatch):
    for fpath in kernels.PACKAGE_DPATH.glob("*.py"):
        shutil.copy(fpath, tmp_path / fpath.name)
    monkeypatch.setattr(kernels, "PACKAGE_DPATH", tmp_path)
    before = kernels.build_hash()
    with open(tmp_path / "mwu.py", "a") as f:
        f.write("\n# an edit\n")
    assert kernels.build_hash() != before


def test_a_compiled_kernel_equals_its_just_in_time_build(tmp_path):
    x = sp.random(40, 30, density=0.3, format="csr", dtype=np.float32, random_state=0)
    k = inputs.row_totals
    types = tuple(k.jit.typeof_pyval(a) for a in (x.indptr, x.data))
    k.jit.compile(types)
    signatures = {"inputs.row_totals": {kernels.type_key((x.indptr, x.data)): k.jit.overloads[types].signature}}
    table = kernels_build.compile_modules(signatures, "_kernels_test", tmp_path)
    (file_index, export), = table["kernels"]["inputs.row_totals"].values()
    module = kernels._load_extension(tmp_path / table["files"][file_index])
    np.testing.assert_array_equal(getattr(module, export)(x.indptr, x.data), k.jit(x.indptr, x.data))


@pytest.mark.skipif(not _built(), reason="kernels not built ahead of time here (scripts/env.sh builds them)")
def test_evaluation_is_the_same_ahead_of_time_and_just_in_time_and_skips_numba(tmp_path):
    real, pred = kernels_build.write_workload_pair(tmp_path, np.float32, "csr32", np.random.default_rng(1))
    runs = {}
    for jit_only in ("0", "1"):
        env = {**os.environ, kernels.ENV_JIT_ONLY: jit_only}
        proc = subprocess.run([sys.executable, "-c", SCORE, str(pred), str(real)], env=env, capture_output=True,
                              text=True, check=True)
        runs[jit_only] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["0"]["numba"] is False and runs["1"]["numba"] is True
    assert runs["0"]["per"] == runs["1"]["per"]


@pytest.mark.skipif(not _built(), reason="kernels not built ahead of time here (scripts/env.sh builds them)")
def test_a_vcc_evaluation_imports_neither_numba_nor_scipy(tmp_path):
    """Importing them costs 0.6 and 0.26 s of CPU: a VCC score needs only the kernels built ahead of time,
    the file's CSR arrays (`h5read.CSRArrays`) and our erfc (`eval.cephes`)."""
    real, pred = kernels_build.write_workload_pair(tmp_path, np.float32, "csr32", np.random.default_rng(1))
    code = ("import sys\nfrom biojepac.eval.evaluate import evaluate\n"
            "evaluate(sys.argv[1], sys.argv[2], profile='vcc', pert_col='target_gene')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numba', 'scipy'}))")
    env = {**os.environ, kernels.ENV_JIT_ONLY: "0"}
    proc = subprocess.run([sys.executable, "-c", code, str(pred), str(real)], env=env, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-500:]


def test_a_half_written_build_is_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "build_dpaths", lambda: [tmp_path])
    (tmp_path / f"_kernels_{kernels.build_hash()}.json").write_text('{"files": ["missing.so"], "kernels": {}}')
    kernels._load_ahead_of_time.cache_clear()
    try:
        assert kernels._ahead_of_time() == {}
        x = np.arange(6, dtype=np.float32)
        assert inputs.row_totals(np.array([0, 2, 6]), x).tolist() == [1.0, 14.0]
    finally:
        kernels._load_ahead_of_time.cache_clear()


def test_mann_whitney_float32_values_come_back_from_their_bit_patterns():
    x = sp.csr_matrix(np.array([[0.5, 0], [1.25, 3], [0, 2.5], [7.75, 0]], np.float32))
    res = mwu.group_stats(x, np.array([0, 0, 1, 1]), np.array([2, 2]))
    np.testing.assert_array_equal(res.sums, [[1.75, 3.0], [7.75, 2.5]])
