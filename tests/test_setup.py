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
