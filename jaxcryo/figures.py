"""Headless matplotlib figures of a run (needs the ``plots`` extra)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: pathlib.Path, dpi: int = 100) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fsc_figure(path: pathlib.Path, curves: dict, pixel: float) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        freq = np.arange(len(curve)) / (2 * (len(curve) - 1) * pixel)
        ax.plot(freq[1:], curve[1:], label=name)  # shell 0 is the single DC voxel: no correlation to speak of
    for level in (0.5, 0.143):
        ax.axhline(level, color="gray", lw=0.8, ls="--")
        ax.text(0.0, level + 0.02, f"{level}", color="gray", fontsize=7)
    ax.set(xlabel="spatial frequency (1/A)", ylabel="FSC vs ground truth", ylim=(-0.1, 1.05))
    ax.legend()
    _save(fig, path)


def map_views(path: pathlib.Path, volume: np.ndarray) -> None:
    """Central sections (top) and projections (bottom) along x, y and z."""
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    c = volume.shape[0] // 2
    sections = (volume[:, :, c], volume[:, c, :], volume[c])
    for i, (axis_name, section) in enumerate(zip("xyz", sections)):
        axes[0, i].imshow(section, cmap="gray")
        axes[0, i].set_title(f"central section, normal {axis_name}", fontsize=8)
        axes[1, i].imshow(volume.sum(axis=2 - i), cmap="gray")
        axes[1, i].set_title(f"projection along {axis_name}", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    _save(fig, path, dpi=80)


def epoch_curves(out_dir: pathlib.Path, records: list[dict]) -> list[str]:
    ends = [r for r in records if r.get("epoch_end")]
    written = []
    if any("pose_error_median_deg" in r for r in ends):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key, label in (("pose_error_median_deg", "median"), ("pose_error_mean_deg", "mean")):
            pts = [(i + 1, r[key]) for i, r in enumerate(ends) if key in r]
            ax.plot(*zip(*pts), marker="o", label=label)
        n_amortized = sum(r["stage"] == "amortized" for r in ends)
        ax.axvline(n_amortized + 0.5, color="gray", ls="--", lw=0.8)
        ax.set(xlabel="epoch (dashed: stage switch)", ylabel="pose error (deg)", yscale="log")
        ax.legend()
        _save(fig, out_dir / "pose_error_per_epoch.png")
        written.append("pose_error_per_epoch.png")
    pts = [(r["elapsed_s"], r["fsc05_angstrom"]) for r in ends if "fsc05_angstrom" in r]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(*zip(*pts), marker="o")
        ax.set(xscale="log", xlabel="wall time (s)", ylabel="resolution at FSC 0.5 (A)")
        ax.invert_yaxis()
        _save(fig, out_dir / "resolution_vs_time.png")
        written.append("resolution_vs_time.png")
    hist = [r["winner_histogram"] for r in ends if r["stage"] == "amortized" and r.get("winner_histogram")]
    if hist:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(range(len(hist[-1])), hist[-1])
        ax.set(xlabel="winning head (an extra last bar: a searched pose won)", ylabel="images (logged steps)")
        _save(fig, out_dir / "winner_histogram.png")
        written.append("winner_histogram.png")
    return written


def write_all(out_dir: pathlib.Path, volume: np.ndarray, pixel: float, curves: dict, records: list[dict]) -> list[str]:
    written = []
    if curves:
        fsc_figure(out_dir / "fsc.png", curves, pixel)
        written.append("fsc.png")
    map_views(out_dir / "map_views.png", volume)
    written.append("map_views.png")
    return written + epoch_curves(out_dir, records)
