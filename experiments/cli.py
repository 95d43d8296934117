"""Command-line plumbing shared by the experiments: flags that fail as one line, errors as one line.

``app.run(main, flags_parser=cli.parse_flags)`` turns a mistyped flag or config key into
``error: unknown config key train.epochs_amortised; did you mean train.epochs_amortized?`` (exit 2)
instead of absl's traceback; ``cli.exit_on_input_error`` does the same for errors in the run.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import pathlib
import sys

from absl import flags


def _config_path(argv: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def _load_config_module(path: str):
    """The config file as a module; the file's own error is raised."""
    spec = importlib.util.spec_from_file_location("_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config_keys(argv: list[str]) -> list[str]:
    """Every dotted key of the config file named by --config= (empty if it cannot be loaded)."""
    path = _config_path(argv)
    if not path:
        return []
    try:
        config = _load_config_module(path).get_config()
    except Exception:
        return []

    def walk(node, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return list(walk(config, ""))


def _config_file_problem(argv: list[str]) -> str | None:
    """The --config= file that cannot be found or loaded, said as one line (ml_collections only says
    'Failed loading config file config_config')."""
    path = _config_path(argv)
    if path is None:
        return None
    if not pathlib.Path(path).is_file():
        return f"{path}: config file not found"
    try:
        _load_config_module(path)
    except Exception as exc:  # the file's own error, whatever it is
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{path}: cannot load the config ({type(exc).__name__}: {first})"
    return None


def _one_line(exc: Exception, argv: list[str]) -> str:
    problem = _config_file_problem(argv)
    if problem:
        return problem
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        keys = _config_keys(argv)
        if keys and key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            return f"unknown config key {key}{hint}"
    return text


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with any failure reported as one line on stderr and exit status 2."""
    try:
        rest = flags.FLAGS(argv)
    except Exception as exc:  # absl and ml_collections raise several types for bad flags and overrides
        print(f"error: {_one_line(exc, argv[1:])}", file=sys.stderr)
        sys.exit(2)
    problem = _config_file_problem(argv[1:])  # a --config= without overrides is loaded only when first used
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return rest


@contextlib.contextmanager
def exit_on_input_error():
    """Report bad input (InputError, FloatingPointError, OSError) as 'error: ...' on stderr, exit 2."""
    from jaxcryo.io.table import InputError

    try:
        yield
    except (InputError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)


def use_compilation_cache(directory: str) -> str | None:
    """Keep XLA's compiled programs in ``directory`` (JAX's persistent compilation cache: programs that
    took over a second to compile, keyed by program, JAX version and device), so a resumed or repeated
    run loads them instead of compiling again. Entries are only ever re-made, so the folder can be
    deleted at any time; an entry cut short by a kill is reported by JAX and compiled afresh.
    ``JAX_COMPILATION_CACHE_DIR``, when set, wins; an empty ``directory`` turns the cache off.
    Returns the directory in use, or None."""
    import os

    import jax

    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(directory)
    if not directory:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory
