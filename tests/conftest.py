"""Test set-up: float64 available (references need it), shared data located, fast compiles."""

import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

# Under pytest-xdist (the default: -n 2 in pyproject.toml) each worker is one process on one core:
# XLA's own thread pools would make the two workers fight for both cores. Set before JAX starts its
# backend; subprocess runs inherit it.
if os.environ.get("PYTEST_XDIST_WORKER") and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

# Tests choose dtypes explicitly; x64 only makes float64 available where a reference needs it.
jax.config.update("jax_enable_x64", True)

# Many tests build a new run of the same tiny config, whose jitted steps are new Python functions with
# the same programs: a persistent compilation cache, fresh for each session (never shared between
# sessions or machines), lets XLA compile each program once. Subprocess runs inherit it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="jaxcryo-test-xla-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

SHARED = pathlib.Path(os.environ.get("JAXCRYO_SHARED", pathlib.Path(__file__).resolve().parents[1] / ".." / "shared")).resolve()


@pytest.fixture
def shared_formats() -> pathlib.Path:
    """../shared/data/formats, or skip the test when the shared data are absent."""
    path = SHARED / "data" / "formats"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


def pytest_configure(config):
    """In the default tier (``-m 'not slow'``), most of a test's time is XLA compiling its small
    programs, not running them: a lighter LLVM pipeline compiles the tiny end-to-end runs ~25 % faster
    (36-45 s -> 29-31 s alone) and the tier in ~4 min instead of ~6. The generated code computes the
    same but runs slower (auto-decoding steps ~40 % slower), so the slow tier, whose reconstructions
    run for minutes, keeps XLA's defaults, as benchmarks and real runs do. Set before any test starts
    JAX's backend; xdist workers and subprocess runs inherit it."""
    if "not slow" in (config.option.markexpr or "") and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true").strip()
