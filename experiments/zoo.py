"""Ab initio across a family of particle shapes: python -m experiments.zoo [--members=develop|held_back|all|NAME:SEED,...]

For each member (``jaxcryo.phantoms.FAMILY`` drawn with a seed) this simulates 5,000 x 64 px images
(3 A/px, SNR 0.1) into WORKDIR/NAME-SEED/data, runs ``python -m experiments.run`` with the config
(default: the README's main config), and measures the true-pose reference: a direct Fourier inversion
of the same images at their true poses (``jaxcryo.inversion``) and the pose-error floor (each image's
most likely pose given the true map, ``jaxcryo.posterior.pose_error_floor``). It prints one row per
member: FSC 0.5 against the truth, the reference's, their ratio, median pose error, the floor's median,
the share of an image's pose error that its neighbours in SO(3) share (``warp``:
``jaxcryo.evaluate.neighbour_error_share``; ~0 for independent errors, high for a warped solution) and
wall time; the rows
are also written to WORKDIR/zoo.json. Finished members are not rerun (delete their folder to redo).

Development members use seed 0; the held-back members (seed 1001) are for the final figures only.
``--realistic`` simulates with ``REALISTIC``'s effects (for ``--config=experiments/particles.py``).
"""

import json
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from experiments import cli

from jaxcryo.phantoms import FAMILY

DEVELOP = tuple((name, 0) for name in FAMILY)
HELD_BACK = tuple((name, 1001) for name in FAMILY)

_MEMBERS = flags.DEFINE_string("members", "develop", "develop, held_back, all, or NAME:SEED,NAME:SEED,...")
_WORKDIR = flags.DEFINE_string("workdir", "runs/zoo", "Root folder: one sub-folder per member.")
_CONFIG = flags.DEFINE_string("config", "experiments/quickstart.py", "The reconstruction config.")
_RUN_ARGS = flags.DEFINE_string("run_args", "", "More flags for experiments.run, e.g. '--config.model.n_heads=1'.")
_N_IMAGES = flags.DEFINE_integer("n_images", 5000, "Particles per member.")
_REALISTIC = flags.DEFINE_bool("realistic", False, "Simulate with REALISTIC's effects (coloured noise, contrast, B, ...).")

# issue 11's realistic set: noise power 10x stronger at low frequency than at Nyquist, contrast 1 +- 15 %,
# background offsets, B 80 A^2 (not told to the reconstruction), astigmatism |N(0, 700^2)| A (95 % under
# 1.4 kA), shifts uniform in +-5 % of the box
REALISTIC = {"noise_color": 10.0, "contrast_spread": 0.15, "offset_std": 0.3, "b_factor_angstrom2": 80.0,
             "astigmatism_angstrom": 700.0, "max_shift_fraction": 0.05}


def members(spec: str) -> list[tuple[str, int]]:
    named = {"develop": DEVELOP, "held_back": HELD_BACK, "all": DEVELOP + HELD_BACK}
    if spec in named:
        return list(named[spec])
    out = []
    for item in spec.split(","):
        name, _, seed = item.partition(":")
        if name not in FAMILY or not seed.isdigit():
            raise ValueError(f"--members: {item!r} is not NAME:SEED with NAME in {', '.join(FAMILY)}")
        out.append((name, int(seed)))
    return out


def reference(data_dir: pathlib.Path) -> dict:
    """FSC 0.5 / 0.143 (A) against the truth of a direct inversion at the true poses (cached)."""
    cache = data_dir / "reference.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from jaxcryo import inversion, runio

    rec = inversion.reconstruct_from_star(data_dir / "particles.star", data_dir / "ground_truth_poses.star")
    out = inversion.compare_with_truth(rec["map"], data_dir / "ground_truth.mrc")
    out.update(pose_floor(data_dir))
    runio.write_json(cache, out)  # atomic: a zoo killed here finds no half-written cache
    return out


def pose_floor(data_dir: pathlib.Path) -> dict:
    """``posterior.pose_error_floor`` of a simulated set: the pose error even the true map leaves."""
    from jaxcryo import posterior
    from jaxcryo.io import check_stacks, read_particles, read_volume
    from jaxcryo.io.loader import ImageSource

    table = read_particles(data_dir / "particles.star")
    source = ImageSource(table, check_stacks(table))
    source.estimate_normalization()
    truth = read_particles(data_dir / "ground_truth_poses.star")
    shifts = truth.displacements_angstrom()
    return posterior.pose_error_floor(read_volume(data_dir / "ground_truth.mrc")[0], source, truth.rotations(),
                                      true_shifts_px=None if shifts is None else shifts / source.pixel_size_angstrom)


def neighbour_share(workdir: pathlib.Path) -> float:
    """``evaluate.neighbour_error_share`` of a finished run's poses against the truth (a smooth, warped
    error field shows as a share well above 0)."""
    from jaxcryo import evaluate
    from jaxcryo.io import read_particles

    r_est, r_true = (read_particles(path).rotations().astype(np.float64)
                     for path in (workdir / "poses.star", workdir / "data" / "ground_truth_poses.star"))
    a = evaluate.align_poses(r_est, r_true)
    return evaluate.neighbour_error_share(r_true, evaluate.error_vectors_deg(r_est, r_true, a["q"], a["mirrored"]))


# run before the member's command (which it replaces by exec): SIGTERM when the zoo dies, even by
# SIGKILL (Linux's PR_SET_PDEATHSIG, kept across exec). A launcher rather than Popen's preexec_fn,
# which forks a process whose JAX threads may deadlock the child.
_LAUNCHER = ("import ctypes, os, signal, sys\n"
             "try:\n    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
             "except (OSError, AttributeError):\n    pass\n"
             "if os.getppid() == 1:\n    sys.exit(128 + signal.SIGTERM)\n"
             "os.execv(sys.argv[1], sys.argv[1:])")


def run_child(cmd: list[str], log) -> int:
    """Run one member's reconstruction; a zoo that is stopped (Ctrl-C, SIGTERM, SIGKILL) stops it too,
    instead of leaving it running (it resumes from its work directory on the next zoo run)."""
    launch = [sys.executable, "-c", _LAUNCHER] if sys.platform.startswith("linux") else []
    child = subprocess.Popen(launch + cmd, stdout=log, stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def run_member(name: str, seed: int, root: pathlib.Path) -> dict:
    workdir = root / f"{name}-{seed}"
    summary_path = workdir / "summary.json"
    wall = None
    if not summary_path.exists():
        cmd = [sys.executable, "-m", "experiments.run", f"--config={_CONFIG.value}", f"--workdir={workdir}",
               f"--config.simulate.volume=family:{name}:{seed}", f"--config.simulate.n_images={_N_IMAGES.value}",
               "--config.progress_bar=False"]
        if _REALISTIC.value:
            cmd += [f"--config.simulate.{key}={value}" for key, value in REALISTIC.items()]
        cmd += shlex.split(_RUN_ARGS.value)  # last, so that they override REALISTIC's effects too
        start = time.perf_counter()
        with open(root / f"{name}-{seed}.log", "w") as log:
            rc = run_child(cmd, log)
        wall = time.perf_counter() - start
        if rc != 0:
            return {"member": f"{name}:{seed}", "error": f"exit {rc}, see {root / f'{name}-{seed}.log'}"}
        (workdir / "wall_s.txt").write_text(f"{wall:.1f}\n")
    summary = json.loads(summary_path.read_text())
    if wall is None and (workdir / "wall_s.txt").exists():
        wall = float((workdir / "wall_s.txt").read_text())
    ref = reference(workdir / "data")
    fsc = summary.get("fsc05_angstrom", float("nan"))
    return {"member": f"{name}:{seed}", "fsc05_angstrom": fsc, "reference_fsc05_angstrom": ref["fsc05_angstrom"],
            "ratio": fsc / ref["fsc05_angstrom"], "pose_error_median_deg": summary.get("pose_error_median_deg"),
            "decoder_fsc05_angstrom": summary.get("decoder_fsc05_angstrom"), "wall_s": wall,
            "pose_floor_median_deg": ref["floor_median_deg"], "neighbour_error_share": neighbour_share(workdir)}


def main(argv):
    del argv
    try:
        chosen = members(_MEMBERS.value)
    except ValueError as exc:  # a mistyped member: one line, before anything is made
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    root = pathlib.Path(_WORKDIR.value)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    from jaxcryo import runio

    print(f"machine: {runio.describe_machine()}")
    print(f"{'member':16s} {'FSC0.5 A':>9s} {'ref A':>7s} {'ratio':>6s} {'pose med':>9s} {'floor':>6s} {'warp':>5s} {'wall':>9s}")
    for name, seed in chosen:
        row = run_member(name, seed, root)
        rows.append(row)
        if "error" in row:
            print(f"{row['member']:16s} {row['error']}")
        else:
            wall = f"{row['wall_s'] / 60:.1f} min" if row["wall_s"] else "-"
            print(f"{row['member']:16s} {row['fsc05_angstrom']:9.2f} {row['reference_fsc05_angstrom']:7.2f} "
                  f"{row['ratio']:6.3f} {row['pose_error_median_deg']:8.2f}° {row['pose_floor_median_deg']:5.2f}° "
                  f"{row['neighbour_error_share']:5.2f} {wall:>9s}", flush=True)
    runio.write_json(root / "zoo.json", rows)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
