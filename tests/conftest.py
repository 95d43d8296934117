"""Test set-up: float64 available (references need it), shared data located, fast compiles."""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
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


def _xla_accepts(flags: str) -> bool:
    """Whether this jaxlib's XLA knows every flag in ``flags`` (an unknown one aborts the process)."""
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
    probe = [sys.executable, "-c", "import jax.numpy as jnp; jnp.ones(3).block_until_ready()"]
    return subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode == 0


def pytest_configure(config):
    """In the default tier (``-m 'not slow'``), most of a test's time is XLA compiling its small
    programs, not running them (a tiny end-to-end run: ~40 of its ~55 s are tracing, lowering and ~380
    compiles). A lighter LLVM pipeline compiles the tiny end-to-end runs ~25 % faster, and XLA:CPU's
    older loop emitters instead of its MLIR fusion emitters compile a small program in ~30 ms instead
    of ~50 ms. The generated code computes the same but runs slower (auto-decoding steps ~40 % slower),
    so the slow tier, whose reconstructions run for minutes, keeps XLA's defaults, as benchmarks and
    real runs do. Set before any test starts JAX's backend; xdist workers and subprocess runs inherit it.
    (With these flags, the package's functions jitted where they are defined and five tests of ~20 s
    each moved to the slow tier, the default tier went from 10 min 39 s to 5 min 32 s alone on the
    2-core AMD host, 2026-12-06.)"""
    if "not slow" in (config.option.markexpr or "") and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        flags = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
        if _xla_accepts("--xla_cpu_use_fusion_emitters=false"):  # a flag of recent XLA only
            flags += " --xla_cpu_use_fusion_emitters=false"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(workdir, summary) of the tiny run of ``tinyrun.tiny_config()``, once per test module that asks
    (under ``--dist loadfile`` test_train.py and test_final_map.py run on different workers, where a
    session-wide run would be made twice as well)."""
    from jaxcryo import train
    from tinyrun import tiny_config

    workdir = tmp_path_factory.mktemp("run")
    summary = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, summary
