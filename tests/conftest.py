"""Test set-up: float64 available (references need it), shared data located, fast compiles."""

import os
import pathlib

import jax
import pytest

# Tests choose dtypes explicitly; x64 only makes float64 available where a reference needs it.
jax.config.update("jax_enable_x64", True)

SHARED = pathlib.Path(os.environ.get("JAXCRYO_SHARED", pathlib.Path(__file__).resolve().parents[1] / ".." / "shared")).resolve()


@pytest.fixture
def shared_formats() -> pathlib.Path:
    """../shared/data/formats, or skip the test when the shared data are absent."""
    path = SHARED / "data" / "formats"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
