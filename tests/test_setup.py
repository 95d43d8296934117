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
