"""The evaluation's compiled loops: numba functions, built ahead of time when they can be, else just in time.

numba's just-in-time path costs every process about 0.6 s before its first compiled call, even with the
machine code cached on disk: 0.2 s to import numba and 0.35 s to load its typing registries. That is a
fifth of a VCC evaluation from the command line. So the evaluation's loops are declared with `@kernel`,
and `python -m biojepac.eval.kernels_build` (run by scripts/env.sh) compiles every argument signature that a
set of small evaluations calls into one extension module with numba's ahead-of-time compiler. Its name
holds a hash of the kernel modules' sources, of the Python, numpy and numba versions and of the processor,
so a module built from other sources or for another machine is never loaded.

A call looks its argument types up in that module and runs the compiled function found there (which
releases the GIL, as `nogil=True` does). With no module, or no signature for these types, it compiles the
same function with `numba.njit` (same code generator, same machine code) and runs that: the results are
the same either way (`tests/eval/test_kernels.py`), only the start-up differs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import sys
import threading

import numpy as np

PACKAGE_DPATH = pathlib.Path(__file__).resolve().parent
MODULES = ("cephes", "inputs", "mwu", "stats", "vcc", "vcc2026", "vcc2026_de")
"""The modules (in this package) whose kernels are built ahead of time; their sources make the hash."""
ENV_JIT_ONLY = "BIOJEPAC_JIT_ONLY"
"""Set to 1 to ignore the ahead-of-time build (every kernel compiled just in time)."""

_KERNELS: dict[str, "Kernel"] = {}
_LOAD_LOCK = threading.Lock()


def kernel(fn=None, **options):
    """Declare a numba kernel: `@kernel` or `@kernel(error_model="numpy")`. Options go to `numba.njit`
    (`nogil=True, cache=True` are implied). Kernels run on arrays and numbers only and call no other kernel.
    `parallel=True` kernels (their loops use `prange`, below) are always compiled just in time: numba's
    ahead-of-time compiler does not build them."""
    if fn is None:
        return functools.partial(kernel, **options)
    k = Kernel(fn, {"nogil": True, "cache": True, **options})
    _KERNELS[k.name] = k
    return k


class Kernel:
    """A kernel function, callable from Python; see the module docstring."""

    def __init__(self, fn, options: dict):
        self.fn, self.options = fn, options
        self.name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        self._jit = None
        self._recorded: dict[str, object] | None = None  # signatures seen, while building
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        key = type_key(args)
        if self._recorded is None:
            compiled = _ahead_of_time().get(self.name, {}).get(key)
            if compiled is not None:
                return compiled(*args)
        elif key:  # building: compile just in time for exactly these types, and note their signature
            types = tuple(self.jit.typeof_pyval(a) for a in args)
            self.jit.compile(types)
            self._recorded[key] = self.jit.overloads[types].signature
        return self.jit(*args)

    @property
    def jit(self):
        """The `numba.njit` dispatcher of this kernel (numba imported and the function compiled on first use)."""
        with _LOAD_LOCK:  # one dispatcher, whichever thread asks first
            if self._jit is None:
                import numba

                if self.fn.__globals__.get("prange") is prange:  # numba's own, in the module that compiles
                    self.fn.__globals__["prange"] = numba.prange
                self._jit = numba.njit(**self.options)(self.fn)
        return self._jit


def prange(*args):
    """`numba.prange` for a parallel kernel's loop, importable without numba: the kernel's module gets numba's
    in its place when the kernel compiles (run as plain Python, both are `range`)."""
    return range(*args)


def type_key(args) -> str:
    """The argument types as numba tells them apart (dtype, dimensions, layout, writability of each array;
    the type of each number), in a string; '' when an argument is of another kind."""
    parts = []
    for a in args:
        if isinstance(a, np.ndarray):
            layout = "C" if a.flags.c_contiguous else "F" if a.flags.f_contiguous else "A"
            parts.append(f"{a.dtype.str}{a.ndim}{layout}{'' if a.flags.writeable else 'r'}")
        elif isinstance(a, (bool, int, float, np.number, np.bool_)):
            parts.append(type(a).__name__)
        else:
            return ""
    return ",".join(parts)


def build_hash() -> str:
    """What an ahead-of-time module must have been built from: the kernel modules' sources and this build's,
    the versions of Python, numpy and numba, and the processor (the code is built for its instruction set)."""
    h = hashlib.sha256()
    for name in (*MODULES, "kernels", "kernels_build"):  # the kernels, and how they are built
        h.update((PACKAGE_DPATH / f"{name}.py").read_bytes())
    numba_spec = importlib.util.find_spec("numba")
    numba_version = (pathlib.Path(numba_spec.origin).parent / "_version.py").read_bytes() if numba_spec else b""
    h.update(f"{sys.version}|{np.__version__}|{platform.machine()}|{_cpu_flags()}".encode() + numba_version)
    return h.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build_dpaths() -> list[pathlib.Path]:
    """Where ahead-of-time modules are kept: beside the sources (as numba's cache), else the user's cache."""
    user = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "biojepac" / "kernels"
    return [PACKAGE_DPATH / "__pycache__", user]


def _ahead_of_time() -> dict[str, dict[str, object]]:
    """{kernel name: {type key: compiled function}} from the module built for these sources, or {}."""
    with _LOAD_LOCK:  # the first calls come from several threads at once
        return _load_ahead_of_time()


@functools.cache
def _load_ahead_of_time() -> dict[str, dict[str, object]]:
    if os.environ.get(ENV_JIT_ONLY) == "1":
        return {}
    name = f"_kernels_{build_hash()}"
    for dpath in build_dpaths():
        table_fpath = dpath / f"{name}.json"
        if not table_fpath.is_file():
            continue
        try:
            table = json.loads(table_fpath.read_text())
            modules = [_load_extension(dpath / fname) for fname in table["files"]]
            return {k: {key: getattr(modules[i], export) for key, (i, export) in sigs.items()}
                    for k, sigs in table["kernels"].items()}
        except (OSError, ImportError, AttributeError, KeyError, ValueError):
            continue  # unreadable or half-written: compile just in time
    return {}


def _load_extension(fpath: pathlib.Path):
    name = fpath.name.split(".", 1)[0]
    spec = importlib.util.spec_from_file_location(name, fpath)
    if spec is None:
        raise ImportError(f"not an extension module: {fpath}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
