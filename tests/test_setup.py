"""The README's test command is exactly what CI runs; the configs load."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    test_command = blocks[1].strip()
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci_lines[-1] == test_command


def test_quickstart_config_loads():
    from experiments import quickstart

    cfg = quickstart.get_config()
    assert cfg.simulate.image_size == 64 and cfg.simulate.pixel_size_angstrom == 3.0 and cfg.simulate.snr == 0.1


def test_paper_configs_have_the_paper_settings():
    from experiments import empiar10028, hsp, spike, spliceosome

    for module in (hsp, spike, spliceosome):
        cfg = module.get_config()
        assert (cfg.simulate.n_images, cfg.simulate.image_size, cfg.simulate.snr) == (50_000, 128, 0.1)
        assert (cfg.model.n_heads, cfg.model.width, cfg.train.batch_size) == (7, 1.0, 64)
        assert (cfg.train.epochs_amortized, cfg.train.epochs_autodecoding) == (7, 13)
        assert cfg.model.search_candidates == 0 and cfg.loss.kind == "gaussian"  # the paper's method
    cfg = empiar10028.get_config()
    assert (cfg.model.n_heads, cfg.train.epochs_amortized, cfg.train.epochs_autodecoding) == (15, 15, 15)


def _compile_with_cache(directory: str, env_dir: str | None) -> None:
    """A fresh process that turns the cache on as experiments.run does and compiles one program."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    if env_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = env_dir
    code = ("import jax, jax.numpy as jnp; from experiments import cli; "
            f"print(cli.use_compilation_cache({directory!r})); "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0); "
            "jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.ones(3)).block_until_ready()")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True)


def test_run_keeps_compiled_programs_where_asked_and_the_environment_wins(tmp_path):
    flag_dir, env_dir = tmp_path / "flag", tmp_path / "env"
    _compile_with_cache(str(flag_dir), None)
    assert any(p.name.startswith("jit_") for p in flag_dir.iterdir())  # the program was written there
    _compile_with_cache(str(tmp_path / "unused"), str(env_dir))
    assert not (tmp_path / "unused").exists() and any(p.name.startswith("jit_") for p in env_dir.iterdir())
