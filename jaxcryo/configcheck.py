"""Checks on a run's config before anything is written: impossible values, and whether a work directory
that already holds a run may be resumed with this config.

Resuming is allowed when only keys that do not change what the checkpoints mean differ
(``RESUMABLE``): more or fewer epochs, logging, the progress bar, where the stacks are, evaluation
inputs. Anything else (another model, other data, another seed) would silently mix two runs.
"""

from __future__ import annotations

import math
import pathlib

from jaxcryo.io.table import InputError, listed

RESUMABLE = ("progress_bar", "train.epochs_amortized", "train.epochs_autodecoding", "train.amortized_steps",
             "train.amortized_steps_max", "train.autodecoding_steps", "train.epochs_autodecoding_max",
             "train.epochs_autodecoding_max_heads_only",
             "train.log_every",
             "train.checkpoint_every_steps", "train.inference_batch_size", "train.research_batch_size", "train.epoch_outputs_max_particles",
             "train.posterior_mean_poses", "train.posterior_samples", "train.posterior_sigma_deg",  # final outputs only
             "train.posterior_map_draws", "train.heldout_steps", "train.heldout_lr_rad",
             "train.heldout_lr_final_fraction",
             "data.datadir", "data.loader_threads", "eval.")

# Options added after work directories first stored their config.json, each with the value that does what
# a run stored before the option existed did (its default when it was added). A stored config without such
# a key resumes under a config that gives it this value: a run killed before an upgrade can finish after it.
ADDED_OPTIONS = {
    "data.contrast_check": True, "data.normalize": "global", "data.origins_as_shifts": False,
    "data.particle_diameter_angstrom": 0.0, "data.whiten": False, "data.working_resolution_angstrom": 0.0, "data.whiten_if_coloured": False, "loss.wta_relax": 0.0,
    "model.amortized_shifts": True, "model.contrast_prior_std": 0.0, "model.search_local": 0,
    "model.search_local_rounds": 0, "model.search_local_sigma_deg": 10.0, "model.search_top_k": 1,
    "model.search_global_radius": 0.0, "model.volume_mask": False,
    "simulate.b_factor_angstrom2": 0.0, "simulate.contrast_spread": 0.0, "simulate.noise_color": 1.0,
    "simulate.offset_std": 0.0, "start_poses": "",
    "train.amortized_resolution_angstrom": 0.0, "train.amortized_resolution_whitened_angstrom": 0.0,
    "train.amortized_start_epochs": 2, "train.amortized_start_steps": 0,
    "train.amortized_starts": 1, "train.amortized_shift_starts": 0,
    "train.amortized_steps": 0, "train.amortized_steps_max": 0, "train.autodecoding_steps": 0,
    "train.autodecoding_volume": "gradient",
    "train.epochs_autodecoding_max": 0, "train.epochs_autodecoding_max_heads_only": 0, "train.lr_pose_final_fraction": 1.0, "train.research_candidates": 0,
    "train.research_every_epochs": 0, "train.research_global_radius": 0.0, "train.research_local": 8,
    "train.research_half_maps": False, "train.research_judge_only": False, "train.research_mates": False,
    "train.research_min_gain_nats": 0.0, "train.research_move_cap": 1.0, "train.research_count_min_deg": 0.0,
    "train.research_repeat_fraction": 0.0, "train.research_stop_fraction": 0.0,
    "train.switch_min_steps": 0, "train.switch_moved_fraction": 0.5, "train.switch_window_steps": 0,
}


def _differs(key: str, old: dict, new: dict) -> bool:
    if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE):
        return False
    if key not in old and key in ADDED_OPTIONS:  # stored before the option existed
        return new.get(key) != ADDED_OPTIONS[key]
    return old.get(key) != new.get(key)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _even_box(name: str, value: int) -> None:
    if value and (value < 8 or value % 2):
        lower, upper = max(8, value - value % 2), value + (value % 2)
        options = f"{lower} or {upper}" if lower != upper else f"{upper}"
        raise InputError(f"config: {name} = {value} must be an even box of at least 8 px (0 = as stored); "
                         f"try {options}")


def validate(config) -> None:
    """Raise InputError (one line naming the key and value) for a config no run can use."""
    flat = flatten(config.to_dict())

    def need(key, ok, what):
        if key in flat and not ok(flat[key]):
            raise InputError(f"config: {key} = {flat[key]!r}; expected {what}")

    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    _even_box("data.image_size", int(flat.get("data.image_size", 0)))
    _even_box("train.amortized_image_size", int(flat.get("train.amortized_image_size", 0)))
    if flat.get("poses") and flat.get("start_poses"):
        raise InputError("config: poses (held fixed) and start_poses (refined) are both set; give one")
    if not (flat.get("poses") or flat.get("start_poses")):  # the encoder runs: its box has a floor (a stack's own box is checked with its data)
        from jaxcryo.models import MIN_ENCODER_BOX

        simulated = () if flat.get("data.particles") else ("simulate.image_size",)
        for key in ("data.image_size", "train.amortized_image_size", *simulated):
            if 0 < int(flat.get(key, 0)) < MIN_ENCODER_BOX:
                raise InputError(f"config: {key} = {flat[key]} is below the {MIN_ENCODER_BOX} px the pose encoder needs "
                                 f"(0 = as stored, or at least {MIN_ENCODER_BOX})")
    need("data.pixel_size_angstrom", lambda v: finite(v) and v >= 0, "a pixel size > 0 in A (0 = from the metadata)")
    for key in ("train.amortized_starts", "train.amortized_start_epochs", "train.batch_size", "train.inference_batch_size", "train.research_batch_size", "model.n_heads", "train.log_every", "model.search_top_k"):
        need(key, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    for key in ("train.epochs_amortized", "train.epochs_autodecoding", "train.pose_iters", "train.vol_iters",
                "model.search_candidates", "train.checkpoint_every_steps", "train.switch_search_passes",
                "model.search_local", "model.search_local_rounds", "train.research_every_epochs",
                "train.research_candidates", "train.research_local", "train.amortized_steps", "train.autodecoding_steps",
                "train.amortized_start_steps", "train.amortized_steps_max", "train.amortized_shift_starts",
                "train.epochs_autodecoding_max", "train.epochs_autodecoding_max_heads_only", "train.switch_min_steps",
                "train.switch_window_steps", "train.heldout_steps", "data.loader_threads"):
        need(key, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    need("train.posterior_samples", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2 (draws per image)")
    need("train.posterior_map_draws", lambda v: isinstance(v, int) and 0 <= v <= int(flat.get("train.posterior_samples", 32)),
         "an integer from 0 to train.posterior_samples (draws per image in the final map)")
    for key in ("train.lr_encoder", "train.lr_volume", "train.lr_volume_autodecoding", "train.lr_pose", "model.width",
                "model.search_local_sigma_deg", "train.posterior_sigma_deg", "train.heldout_lr_rad"):
        need(key, lambda v: finite(v) and v > 0, "a number > 0")
    for key in ("train.lr_shift", "model.distill_weight", "model.volume_init_scale", "model.contrast_prior_std"):
        need(key, lambda v: finite(v) and v >= 0, "a number >= 0")
    need("train.switch_moved_fraction", lambda v: finite(v) and 0 < v <= 1, "a fraction in (0, 1]")
    need("loss.wta_relax", lambda v: finite(v) and 0 <= v < 1, "a weight in [0, 1) for the losing heads")
    need("train.research_count_min_deg", lambda v: finite(v) and 0 <= v <= 180, "an angle in [0, 180] deg")
    need("train.research_move_cap", lambda v: finite(v) and 0 < v <= 1, "a fraction in (0, 1]")
    need("train.research_stop_fraction", lambda v: finite(v) and 0 <= v <= 1, "a fraction in [0, 1]")
    need("train.research_repeat_fraction", lambda v: finite(v) and 0 <= v <= 1, "a fraction in [0, 1]")
    for key in ("train.research_global_radius", "model.search_global_radius"):
        need(key, lambda v: finite(v) and 0 <= v <= 1, "a fraction of Nyquist in [0, 1] (0 = the loss disc)")
    for key in ("train.lr_pose_final_fraction", "train.heldout_lr_final_fraction"):
        need(key, lambda v: finite(v) and 0 < v <= 1, "a fraction in (0, 1]")
    for key in ("loss.radius_start", "loss.radius_end"):
        need(key, lambda v: finite(v) and 0 < v <= 1.5, "a fraction of Nyquist in (0, 1.5]")
    need("loss.kind", lambda v: v in ("gaussian", "l1_fourier"), "'gaussian' or 'l1_fourier'")
    need("data.normalize", lambda v: v in ("global", "per_particle"), "'global' or 'per_particle'")
    need("data.particle_diameter_angstrom", lambda v: finite(v) and v >= 0, "a diameter >= 0 in A (0 = estimate)")
    need("train.switch", lambda v: v in ("fixed", "auto"), "'fixed' or 'auto'")
    need("train.autodecoding_volume", lambda v: v in ("gradient", "inversion"), "'gradient' or 'inversion'")
    need("seed", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    for key in ("train.amortized_resolution_angstrom", "train.amortized_resolution_whitened_angstrom",
                "data.working_resolution_angstrom"):
        need(key, lambda v: finite(v) and v >= 0, "a resolution >= 0 in A (0 = the full box)")
    need("data.datadir", lambda v: not v or pathlib.Path(v).is_dir(), "an existing folder (where the stacks are) or ''")
    if not flat.get("data.particles") and "simulate.n_images" in flat:  # the stack to simulate, before it is written
        need("simulate.n_images", lambda v: isinstance(v, int) and v >= int(flat.get("train.batch_size", 1)),
             f"at least one batch of train.batch_size = {flat.get('train.batch_size')} images")


def check_resumable(stored: dict, config, stored_path: pathlib.Path) -> None:
    """Refuse (one line naming the differing keys) to resume a run stored with another config."""
    old, new = flatten(stored), flatten(config.to_dict())
    differing = sorted(k for k in set(old) | set(new) if _differs(k, old, new))
    if differing:
        added = [k for k in differing if k not in old and k in ADDED_OPTIONS]  # options newer than the run
        shown = listed([f"{k} (added since this run, which ran as {ADDED_OPTIONS[k]!r} -> {new.get(k)!r})" if k in added
                        else f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in differing], most=6)
        hint = (" (to resume it as it ran: " + " ".join(f"--config.{k}={ADDED_OPTIONS[k]}" for k in added) + ")"
                if added and len(added) == len(differing) else "")
        raise InputError(f"{stored_path}: this work directory holds a run with another config ({shown}); "
                         f"use a new --workdir, or the same config to resume{hint}")
