"""The run's volume made from the images rather than learned: the direct inversion at the current
poses (``train.autodecoding_volume='inversion'``), each half set's own map (``train.research_half_maps``)
and the soft spherical mask on the volume (``model.volume_mask``). A mixin of ``train.Run``: it reads the
run's config, data, mesh and pose tables."""

from __future__ import annotations

import numpy as np

from jaxcryo import distributed, evaluate, inversion, models, runio
from jaxcryo.io.loader import half_set_labels
from jaxcryo.research import HalfMaps

MASK_MARGIN = 1.2  # the volume mask's diameter over the particle's (which the estimate already widens)
MASK_EDGE_ANGSTROM = 12.0  # its cosine edge


def unit_mean(contrast: np.ndarray) -> np.ndarray:
    """(N,) fitted contrasts scaled to mean 1 (float32).

    Only the product of a particle's contrast and the map is determined; the Wiener filter shrinks the
    map where the signal is weak, the contrasts fitted to it grow, and the next map shrinks further.
    Fixing the contrasts' mean at 1 before each inversion stops that drift."""
    contrast = np.asarray(contrast, np.float64)
    return (contrast / contrast.mean()).astype(np.float32)


class RunVolumes:
    """Volumes by direct inversion at the state's poses, and the volume mask."""

    def inverted(self, state) -> dict:
        """``train.autodecoding_volume='inversion'``: the state's volume replaced by the Wiener-filtered
        direct inversion of the images at the state's poses (``jaxcryo.inversion``): the volume that
        best explains the images at those poses, where a few gradient steps per epoch only approach it."""
        rec, contrast = self.inversion(state)
        if contrast is not None:  # the map is on the scale of these contrasts now: the table must say so
            state = dict(state, **self.place_tables({"contrast": contrast}))
        return dict(state, vol_params=self.volume_params(rec["map"], state))

    def half_maps(self, state) -> HalfMaps:
        """Each half set's own map at the state's poses (``research.HalfMaps``, ``train.research_half_maps``)."""
        rec, _ = self.inversion(state, halves_only=True)
        return HalfMaps(self.half_labels, self.volume_params(rec["half1_filtered"], state),
                        self.volume_params(rec["half2_filtered"], state))

    @property
    def half_labels(self) -> np.ndarray:
        """(N,) half-set labels in {1, 2} (``io.loader.half_set_labels``)."""
        return half_set_labels(self.data.table, self.config.seed)

    def inversion(self, state, halves_only: bool = False) -> tuple[dict, np.ndarray | None]:
        """``inversion.reconstruct`` at the state's poses (and fitted contrasts, brought to mean 1, returned);
        with ``halves_only`` each half set's filtered map and no full map."""
        rotations, shifts, contrast = self.inversion_poses(state)
        rec = inversion.reconstruct(self.data.source, rotations, shifts,
                                    self.half_labels, self.inference_batch, contrast,
                                    filtered_halves=halves_only, full_map=not halves_only)
        return rec, contrast

    def inversion_poses(self, state) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """What an inversion at the state's poses takes: rotations (N, 3, 3), shifts (N, 2) in pixels (zero
        when the run uses none) and the fitted contrasts at mean 1 (``unit_mean``), or None."""
        tables = self.host_tables(state, ("rotations", "shifts", "contrast") if self.fits_contrast else ("rotations", "shifts"))
        shifts = tables["shifts"] if self.uses_shifts else np.zeros((self.n, 2), np.float32)
        return tables["rotations"], shifts, unit_mean(tables["contrast"]) if self.fits_contrast else None

    def volume_params(self, volume: np.ndarray, state, source=None) -> dict:
        """A real-space map at ``source``'s box (default: the full box) as the state's volume parameters,
        masked when ``model.volume_mask`` is on, replicated."""
        if self.config.model.get("volume_mask", False):
            volume = volume * self.volume_mask(source or self.data.source)
        vol = models.params_from_hartley(models.hartley_from_map(volume), state["vol_params"]["exponent"])
        return distributed.put_replicated(vol, self.replicated)

    def contrast_table(self, state) -> np.ndarray | None:
        """The fitted per-particle contrasts (N,) at mean 1 (``unit_mean``), or None when none are fitted."""
        return unit_mean(self.host_tables(state, ("contrast",))["contrast"]) if self.fits_contrast else None

    def volume_mask(self, source) -> np.ndarray:
        """(L, L, L) soft spherical mask at ``source``'s box and pixel size: the particle's diameter x
        MASK_MARGIN, a cosine edge of MASK_EDGE_ANGSTROM (``model.volume_mask``)."""
        box, pixel = source.image_size, source.pixel_size_angstrom
        radius = min(0.5 * MASK_MARGIN * self.data.particle_diameter_angstrom / pixel / box, 0.5)
        return evaluate.soft_sphere_mask(box, radius, max(MASK_EDGE_ANGSTROM / pixel / box, 1.0 / box))

    def masked(self, state, source) -> dict:
        """The state with its volume multiplied by ``volume_mask`` in real space (the amortized stage
        and gradient auto-decoding, after each epoch; called only when ``model.volume_mask`` is on)."""
        real = runio.volume_to_real(models.volume_hartley(state["vol_params"]))
        return dict(state, vol_params=self.volume_params(real, state, source))
