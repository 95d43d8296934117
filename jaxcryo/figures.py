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


def _cell_coords(views: np.ndarray, n_z: int, n_phi: int):
    """Continuous (phi, z) image coordinates of view directions on the equal-area grid."""
    phi = (np.arctan2(views[..., 1], views[..., 0]) + np.pi) / (2 * np.pi) * n_phi - 0.5
    z = (views[..., 2] + 1) / 2 * n_z - 0.5
    return phi, z


def head_error_figure(path: pathlib.Path, maps: np.ndarray) -> None:
    """Mean rotation error of each head over the sphere of true view directions (paper Fig. 8)."""
    n = maps.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
    for m, ax in enumerate(axes[0]):
        im = ax.imshow(maps[m], origin="lower", cmap="viridis", vmin=0, vmax=180, aspect="auto",
                       extent=(-180, 180, -1, 1))
        ax.set_title(f"head {m}", fontsize=8)
        ax.set_xlabel("azimuth (deg)", fontsize=7)
        if m == 0:
            ax.set_ylabel("cos(tilt)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="mean error (deg)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def posterior_figure(path: pathlib.Path, log_post: np.ndarray, head_views: np.ndarray, final_views: np.ndarray) -> None:
    """Approximate log-posterior over view directions for a few particles, with the M heads' views
    (white crosses) and the final pose's view (red circle) marked (paper Figs. 4-5)."""
    b, n_z, n_phi = log_post.shape
    fig, axes = plt.subplots(1, b, figsize=(3.2 * b, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(np.maximum(log_post[i], -200), origin="lower", cmap="magma", aspect="auto")
        hx, hz = _cell_coords(head_views[i], n_z, n_phi)
        ax.scatter(hx, hz, marker="x", color="white", s=25, label="heads")
        fx, fz = _cell_coords(final_views[i], n_z, n_phi)
        ax.scatter([fx], [fz], facecolors="none", edgecolors="red", s=60, label="final pose")
        ax.set_title(f"particle {i}", fontsize=8)
        ax.set_axis_off()
    axes[0][0].legend(fontsize=6, loc="lower left")
    _save(fig, path)
