"""Pseudo-symmetry detection and symmetry mates (jaxcryo.pseudosym), against maps built symmetric."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcryo import geometry, losses, phantoms, pseudosym, slicing, steps

BOX, PIXEL = 48, 3.0


def symmetric_map(order: int, axis: np.ndarray, centre_angstrom: np.ndarray, seed: int = 0, mark: float = 0.0):
    """A cyclic oligomer of ``order`` copies of a random subunit about ``axis`` through ``centre``; with
    ``mark`` > 0, one extra blob of that weight on one copy (the pseudo-symmetry breaker)."""
    rng = np.random.default_rng(seed)
    # two domains of unequal size, off the axis and off its normal plane: no other symmetry
    subunit = np.concatenate([rng.normal(size=(60, 3)) * 4.0 + np.array([14.0, 0.0, -4.0]),
                              rng.normal(size=(30, 3)) * 3.0 + np.array([9.0, 9.0, 9.0])])
    points, weights = [], []
    axis = axis / np.linalg.norm(axis)
    # a frame whose z is the axis, so the subunit sits beside it
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    frame = np.stack([u, np.cross(axis, u), axis], axis=1)
    for j in range(order):
        rot = np.asarray(pseudosym.rotations_about(axis[None], np.array([2 * np.pi * j / order])))[0]
        points.append((frame @ subunit.T).T @ rot.T + centre_angstrom)
        weights.append(np.ones(len(subunit)))
    if mark:
        points.append((frame @ np.array([[14.0, 0.0, 9.0]]).T).T + centre_angstrom)
        weights.append(np.array([mark]))
    return phantoms.render_points(np.concatenate(points), np.concatenate(weights), BOX, PIXEL, 2.5 * PIXEL)


CTF_FIELDS = {"defocus_u_angstrom": 15_000.0, "defocus_v_angstrom": 15_000.0, "defocus_angle_deg": 0.0,
              "voltage_kv": 300.0, "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1, "phase_shift_deg": 0.0,
              "b_factor_angstrom2": 0.0, "phase_flipped": 0.0}


def noisy_batch(vol_h, rots, shifts: np.ndarray, noise_seed: int):
    """Images of ``vol_h`` at the poses, noise of half the clean images' standard deviation, as a batch
    sharded over ``steps.make_mesh()``: (batch, mesh, the rows' sharding)."""
    import jax

    from jaxcryo import ctf as ctf_lib
    from jaxcryo import simulate

    n = rots.shape[0]
    ctf = ctf_lib.ctf_grid(BOX, PIXEL, **{k: jnp.full((n,), v) for k, v in CTF_FIELDS.items()}).astype(jnp.float32)
    clean = simulate.clean_images(vol_h, rots, jnp.asarray(shifts), ctf)
    noise = np.random.default_rng(noise_seed).normal(size=clean.shape).astype(np.float32)
    mesh = steps.make_mesh()
    rows = jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS))
    batch = jax.device_put({"images": jnp.asarray(clean + 0.5 * float(clean.std()) * noise),
                            "index": jnp.arange(n, dtype=jnp.int32),
                            **{k: jnp.full((n,), v, jnp.float32) for k, v in CTF_FIELDS.items()}}, rows)
    return batch, mesh, rows


@pytest.mark.parametrize("order, axis", [(2, [0.3, -0.5, 0.8]), (3, [0.9, 0.2, -0.4])])
def test_finds_the_order_axis_and_centre_of_a_pseudo_symmetric_map(order, axis):
    axis = np.array(axis) / np.linalg.norm(axis)
    centre = np.array([4.0, -3.0, 2.0])  # A off the box centre: the axis need not pass through it
    volume = symmetric_map(order, axis, centre, mark=6.0)
    found = pseudosym.pseudo_symmetry(slicing.volume_to_hartley(jnp.asarray(volume)), PIXEL)
    assert found["order"] == order and found["correlation"] > 0.8
    assert np.degrees(np.arccos(min(1.0, abs(found["axis"] @ axis)))) < 4.0
    assert found["operators"].shape == (order, 3, 3)  # the rotations, then the mirror
    # the centre of mass lies on the axis near the true centre (the mark pulls it a little)
    off = found["centre_px"] * PIXEL - centre
    assert np.linalg.norm(off - (off @ axis) * axis) < 2.0 * PIXEL


def test_a_mate_pose_predicts_the_same_image_about_an_off_centre_axis():
    """For an exactly symmetric map the image at pose (R, t) and at its mate (R S^T, t') are the same;
    without the shift correction (or with it reversed) they are not."""
    axis = np.array([0.2, 0.9, 0.4])
    axis /= np.linalg.norm(axis)
    centre = np.array([5.0, -4.0, 3.0])
    volume = symmetric_map(3, axis, centre)
    vol_h = slicing.volume_to_hartley(jnp.asarray(volume))
    ops = np.asarray(pseudosym.rotations_about(np.tile(axis, (2, 1)), np.array([2, 4]) * np.pi / 3))
    rot = np.asarray(geometry.random_rotations(__import__("jax").random.key(0), (4,)))
    shifts = np.array([[1.0, -2.0], [0.0, 0.0], [2.5, 1.0], [-1.0, 0.5]], np.float32)
    centre_px = jnp.asarray(centre / PIXEL, jnp.float32)
    mates, mate_shifts = pseudosym.mate_poses(jnp.asarray(rot), jnp.asarray(shifts), jnp.asarray(ops), centre_px)
    ctf = jnp.ones((4, BOX, BOX))
    mask = slicing.frequency_mask(BOX, 0.6)

    def corr(a, b):
        return float(jnp.sum(a * b * mask) / jnp.sqrt(jnp.sum(a * a * mask) * jnp.sum(b * b * mask)))

    ref = losses.predict(vol_h, jnp.asarray(rot), ctf, jnp.asarray(shifts))
    for k in range(2):
        good = losses.predict(vol_h, mates[:, k], ctf, mate_shifts[:, k])
        plain = losses.predict(vol_h, mates[:, k], ctf, jnp.asarray(shifts))
        wrong = losses.predict(vol_h, mates[:, k], ctf, 2 * jnp.asarray(shifts) - mate_shifts[:, k])
        assert corr(ref, good) > 0.98
        assert corr(ref, plain) < corr(ref, good) - 0.05 and corr(ref, wrong) < corr(ref, good) - 0.05


def test_the_mate_test_brings_images_back_from_a_mate_and_leaves_true_poses():
    """Noisy images of a pseudo-C3 map (one small mark breaks the symmetry) whose poses sit at a symmetry
    mate move back to within a few degrees of the truth; images already at their true pose stay."""
    import jax

    axis = np.array([0.3, -0.2, 0.93])
    axis /= np.linalg.norm(axis)
    volume = symmetric_map(3, axis, np.array([3.0, 2.0, -2.0]), mark=25.0)
    vol_h = slicing.volume_to_hartley(jnp.asarray(volume))
    sym = pseudosym.pseudo_symmetry(vol_h, PIXEL)
    n = 24
    rots = geometry.random_rotations(jax.random.key(4), (n,), jnp.float32)
    shifts = np.random.default_rng(4).uniform(-2, 2, (n, 2)).astype(np.float32)
    batch, mesh, rows = noisy_batch(vol_h, rots, shifts, 5)
    vol_params = {"mantissa": vol_h / BOX, "exponent": jnp.zeros_like(vol_h)}  # images_to_hartley's 1/L units
    test = steps.make_mate_test(PIXEL, "gaussian", mesh)
    ops, centre = jnp.asarray(sym["operators"]), jnp.asarray(sym["centres_px"], jnp.float32)
    start, start_shifts = pseudosym.mate_poses(rots, jnp.asarray(shifts), ops, centre)
    found, _, found_loss, current = test(vol_params, batch, 1.0, jax.random.key(0), jax.device_put(start[:, 0], rows),
                                         jax.device_put(start_shifts[:, 0], rows), ops, centre)
    assert np.all(np.asarray(found_loss) < np.asarray(current))  # every image prefers a mate of its wrong pose
    back = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(np.asarray(found)), rots))
    assert np.median(back) < 3.0 and np.max(back) < 10.0, back
    _, _, stay_loss, at_truth = test(vol_params, batch, 1.0, jax.random.key(0), jax.device_put(rots, rows),
                                   jax.device_put(jnp.asarray(shifts), rows), ops, centre)
    assert np.all(np.asarray(stay_loss) > np.asarray(at_truth))  # at the truth no mate is more likely


def _pseudo_c2_case(n: int = 16):
    """The floors' tests' particle: a pseudo-C2 map whose axis passes off the centre, and n true poses."""
    import jax

    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    centre = np.array([4.0, -3.0, 2.0])
    volume = symmetric_map(2, axis, centre, mark=6.0)
    rots = geometry.random_rotations(jax.random.key(7), (n,), jnp.float32)
    return axis, centre, volume, slicing.volume_to_hartley(jnp.asarray(volume)), rots


@pytest.mark.slow  # ~20 s; a measuring tool (experiments.floors), not the method's path
def test_the_mate_floor_counts_the_images_whose_mate_the_true_map_prefers():
    """``posterior.mate_floor`` under a pseudo-C2 map: images made at the given poses prefer them (the
    fraction near 0); images made at the given poses' mates (the exact operator about the true centre)
    prefer a mate (near 1): the floor finds the mate through the map's own detected symmetry. One view in
    16 hides the mark behind its own mate (it projects onto the same place), so that image may go either
    way."""
    import types

    from jaxcryo import posterior

    axis, centre, volume, vol_h, rots = _pseudo_c2_case()
    n = rots.shape[0]
    op = pseudosym.rotations_about(axis[None], np.array([np.pi]))
    mates, mate_shifts = pseudosym.mate_poses(rots, jnp.zeros((n, 2)), op, jnp.asarray(centre / PIXEL, jnp.float32))

    class Table(types.SimpleNamespace):  # the CTF columns and the length of a particle table
        def __len__(self):
            return n

    table = Table(**{k: np.full(n, v, np.float32) for k, v in CTF_FIELDS.items()})
    for made_at, shifts, expected in ((rots, np.zeros((n, 2)), 0.0), (mates[:, 0], np.asarray(mate_shifts[:, 0]), 1.0)):
        batch, _, _ = noisy_batch(vol_h, made_at, shifts, 3)
        images = np.asarray(batch["images"])
        source = types.SimpleNamespace(  # what the floor reads of an ImageSource
            image_size=BOX, pixel_size_angstrom=PIXEL, table=table,
            batch=lambda rows, im=images: types.SimpleNamespace(index=np.asarray(rows), images=im[rows],
                                                                noise_radial=None))
        out = posterior.mate_floor(volume, source, np.asarray(rots), n_images=n, steps=60)
        assert out["mate_order"] == 2
        assert abs(out["mate_floor_fraction"] - expected) <= 1 / n, out
        assert (out["mate_evidence_median_nats"] > 0) == (expected == 0.0), out


def test_the_basin_test_tells_a_near_miss_from_a_mate():
    """``posterior.basin_test`` under a pseudo-C2 map with an off-centre axis, images made at the true
    poses: poses 4 deg off reach the truth's own maximum (0 nats between them); the exact two-fold mates
    reach maxima of their own, which the data rank below the truth's (one view in 16 hides the mark
    behind its mate, as in the mate floor's test)."""
    import types

    import jax

    from jaxcryo import posterior

    axis, centre, volume, vol_h, rots = _pseudo_c2_case()
    n = rots.shape[0]
    tilt = np.array(jax.random.normal(jax.random.key(8), (n, 3)))
    tilt *= np.radians(4.0) / np.linalg.norm(tilt, axis=1, keepdims=True)
    near = geometry.so3_exp(jnp.asarray(tilt, jnp.float32)) @ rots
    mates, _ = pseudosym.mate_poses(rots, jnp.zeros((n, 2)), pseudosym.rotations_about(axis[None], np.array([np.pi])),
                                    jnp.asarray(centre / PIXEL, jnp.float32))

    class Table(types.SimpleNamespace):
        def __len__(self):
            return n

    batch, _, _ = noisy_batch(vol_h, rots, np.zeros((n, 2)), 3)
    images = np.asarray(batch["images"])
    source = types.SimpleNamespace(
        image_size=BOX, pixel_size_angstrom=PIXEL, table=Table(**{k: np.full(n, v, np.float32) for k, v in CTF_FIELDS.items()}),
        batch=lambda rows: types.SimpleNamespace(index=np.asarray(rows), images=images[rows], noise_radial=None))
    rows = np.arange(n)
    same = posterior.basin_test(volume, source, np.asarray(rots), np.asarray(near), rows, steps=60)
    assert np.all(same["apart_deg"] < 1.0), same
    assert np.all(np.abs(same["evidence_nats"]) < 0.25), same  # Adam stops a hair short (60 steps)
    turned = posterior.basin_test(volume, source, np.asarray(rots), np.asarray(mates[:, 0]), rows, steps=60)
    assert np.all(turned["apart_deg"] > 150.0), turned
    assert np.sum(turned["evidence_nats"] < 0) >= n - 1, turned


def flat_map(normal: np.ndarray, centre_angstrom: np.ndarray, mirrored: bool = True, mark: float = 0.0, seed: int = 0):
    """A flat particle (a thin sheet of two unequal domains, nothing symmetric in its plane) whose plane has
    ``normal`` and passes through ``centre``; ``mirrored``: made exactly its own mirror image in that plane
    (points and their reflections); ``mark`` > 0: a blob of that weight 6 A above the plane (the hand)."""
    rng = np.random.default_rng(seed)
    sheet = np.concatenate([rng.normal(size=(80, 3)) * np.array([6.0, 4.0, 1.2]) + np.array([-5.0, 2.0, 0.0]),
                            rng.normal(size=(40, 3)) * np.array([3.0, 3.0, 1.2]) + np.array([9.0, -6.0, 0.0])])
    normal = normal / np.linalg.norm(normal)
    u = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    frame = np.stack([u, np.cross(normal, u), normal], axis=1)  # sheet z -> the normal
    points, weights = [sheet], [np.ones(len(sheet))]
    if mirrored:
        points.append(sheet * np.array([1.0, 1.0, -1.0]))
        weights.append(np.ones(len(sheet)))
    if mark:
        points.append(np.array([[-4.0, 0.0, 6.0]]))
        weights.append(np.array([mark]))
    pts = np.concatenate(points) @ frame.T + centre_angstrom
    return phantoms.render_points(pts, np.concatenate(weights), BOX, PIXEL, 2.5 * PIXEL)


def test_finds_the_mirror_plane_of_a_flat_map():
    normal = np.array([0.4, 0.7, -0.6])
    normal /= np.linalg.norm(normal)
    centre = np.array([3.0, -4.0, 5.0])
    found = pseudosym.pseudo_symmetry(slicing.volume_to_hartley(jnp.asarray(flat_map(normal, centre, mark=4.0))), PIXEL)
    assert found["mirror_correlation"] > 0.9
    assert np.degrees(np.arccos(min(1.0, abs(found["mirror_normal"] @ normal)))) < 4.0
    ops = found["operators"]
    assert ops.shape == (found["order"], 3, 3) and found["centres_px"].shape == (found["order"], 3)
    assert np.allclose(np.linalg.det(ops), [1.0] * (found["order"] - 1) + [-1.0], atol=1e-4)
    # the plane passes near the true centre (within a voxel along its normal)
    assert abs((found["centres_px"][-1] * PIXEL - centre) @ normal) < PIXEL


def test_a_mirror_mate_predicts_the_same_image_about_an_off_centre_plane():
    """For a map that is exactly its own mirror image the image at pose (R, t) and at its mate
    (M R G^T, t') are the same, for tilted views too; without the shift correction they are not."""
    import jax

    normal = np.array([0.3, -0.4, 0.87])
    normal /= np.linalg.norm(normal)
    centre = np.array([5.0, 4.0, -4.0])
    vol_h = slicing.volume_to_hartley(jnp.asarray(flat_map(normal, centre)))
    ops = np.asarray(pseudosym.mirrors(normal))[None]
    rot = np.asarray(geometry.random_rotations(jax.random.key(1), (6,)))
    shifts = np.random.default_rng(1).uniform(-2, 2, (6, 2)).astype(np.float32)
    mates, mate_shifts = pseudosym.mate_poses(jnp.asarray(rot), jnp.asarray(shifts), jnp.asarray(ops),
                                              jnp.asarray(centre / PIXEL, jnp.float32))
    assert np.allclose(np.linalg.det(np.asarray(mates)), 1.0, atol=1e-4)  # proper rotations
    ctf = jnp.ones((6, BOX, BOX))
    mask = slicing.frequency_mask(BOX, 0.6)

    def corr(a, b):
        return np.asarray(jnp.sum(a * b * mask, (-2, -1)) / jnp.sqrt(jnp.sum(a * a * mask, (-2, -1)) * jnp.sum(b * b * mask, (-2, -1))))

    ref = losses.predict(vol_h, jnp.asarray(rot), ctf, jnp.asarray(shifts))
    good = corr(ref, losses.predict(vol_h, mates[:, 0], ctf, mate_shifts[:, 0]))
    plain = corr(ref, losses.predict(vol_h, mates[:, 0], ctf, jnp.asarray(shifts)))
    assert np.all(good > 0.98), good
    assert np.mean(plain) < np.mean(good) - 0.05
    # the mates are other poses, 2x the angle between each view and the plane's normal apart
    views = np.abs(rot[:, 2, :] @ normal)
    apart = np.asarray(geometry.geodesic_distance_deg(mates[:, 0], jnp.asarray(rot)))
    assert np.allclose(apart, 2 * np.degrees(np.arccos(views)), atol=0.5)


def test_the_mate_test_gives_each_tilted_view_of_a_flat_particle_its_hand():
    """Noisy images of a flat particle whose hand shows only in a small blob above its plane, their poses
    at the mirror mates (the other hand): the mate test brings the tilted views back to the truth."""
    import jax

    normal = np.array([0.2, 0.3, 0.93])
    normal /= np.linalg.norm(normal)
    volume = flat_map(normal, np.array([2.0, -2.0, 1.0]), mirrored=False, mark=6.0)
    vol_h = slicing.volume_to_hartley(jnp.asarray(volume))
    sym = pseudosym.pseudo_symmetry(vol_h, PIXEL)
    rots = np.asarray(geometry.random_rotations(jax.random.key(6), (200,), jnp.float32))
    rots = jnp.asarray(rots[np.abs(rots[:, 2, :] @ normal) < np.cos(np.radians(40.0))][:24])  # tilted > 40 deg
    n = rots.shape[0]
    shifts = np.random.default_rng(6).uniform(-2, 2, (n, 2)).astype(np.float32)
    batch, mesh, rows = noisy_batch(vol_h, rots, shifts, 7)
    vol_params = {"mantissa": vol_h / BOX, "exponent": jnp.zeros_like(vol_h)}
    test = steps.make_mate_test(PIXEL, "gaussian", mesh)
    ops, centres = jnp.asarray(sym["operators"]), jnp.asarray(sym["centres_px"], jnp.float32)
    other_hand, other_shifts = pseudosym.mate_poses(rots, jnp.asarray(shifts), ops[-1:], centres[-1:])
    assert np.min(np.asarray(geometry.geodesic_distance_deg(other_hand[:, 0], rots))) > 75.0  # far from the truth
    found, _, found_loss, current = test(vol_params, batch, 1.0, jax.random.key(0), jax.device_put(other_hand[:, 0], rows),
                                         jax.device_put(other_shifts[:, 0], rows), ops, centres)
    assert np.all(np.asarray(found_loss) < np.asarray(current))
    back = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(np.asarray(found)), rots))
    assert np.median(back) < 3.0 and np.max(back) < 10.0, back


def test_mates_are_tested_first_while_they_pay_and_when_the_symmetry_changes():
    from ml_collections import ConfigDict

    from jaxcryo.research import mates_due

    tc = ConfigDict({"research_repeat_fraction": 0.02, "research_stop_fraction": 0.01})
    c2_z = {"order": 2, "axis": [0.0, 0.0, 1.0]}
    calls = []

    def found(sym):
        return lambda: calls.append(1) or dict(sym)

    assert mates_due(tc, 0.0, {}, found(c2_z))  # the first pass always
    assert mates_due(tc, 0.0, {"mates_moved": 0.05, "mates_symmetry": c2_z}, found(c2_z))  # the last pass still paid
    # a settled map whose mates did not pay: not again
    assert not mates_due(tc, 0.015, {"mates_moved": 0.005, "mates_symmetry": c2_z}, found(c2_z))
    # a map still changing, its last mate pass not negligible: again, whatever the symmetry
    assert mates_due(tc, 0.3, {"mates_moved": 0.005, "mates_symmetry": c2_z}, found(c2_z))
    assert not calls  # none of these needed the map's symmetry
    # a map still changing whose last mate pass moved (almost) nothing: only under another symmetry
    settled = {"mates_moved": 0.001, "mates_symmetry": c2_z}
    assert not mates_due(tc, 0.3, settled, found({"order": 2, "axis": [0.0, 0.03, -1.0]}))  # the same axis, 1.7 deg
    assert mates_due(tc, 0.3, settled, found({"order": 2, "axis": [0.0, 0.2, 0.98]}))  # 11.5 deg away
    assert mates_due(tc, 0.3, settled, found({"order": 3, "axis": [0.0, 0.0, 1.0]}))  # another order
    assert mates_due(tc, 0.3, {"mates_moved": 0.0}, found(c2_z))  # a run resumed from before the record
    assert len(calls) == 4


def test_same_symmetry_treats_opposite_axes_as_one():
    c3 = {"order": 3, "axis": np.array([1.0, 0.0, 0.0])}
    assert pseudosym.same_symmetry(c3, {"order": 3, "axis": [-1.0, 0.0, 0.0]})
    tilted = [np.cos(np.radians(6.0)), np.sin(np.radians(6.0)), 0.0]
    assert pseudosym.same_symmetry(c3, {"order": 3, "axis": tilted}, axis_tolerance_deg=7.0)
    assert not pseudosym.same_symmetry(c3, {"order": 3, "axis": tilted}, axis_tolerance_deg=5.0)
    assert not pseudosym.same_symmetry(None, c3)


def test_same_symmetry_compares_the_mirror_planes_too():
    c2 = {"order": 2, "axis": [0.0, 0.0, 1.0], "mirror_normal": [1.0, 0.0, 0.0]}
    assert pseudosym.same_symmetry(c2, dict(c2, mirror_normal=[-1.0, 0.02, 0.0]))
    assert not pseudosym.same_symmetry(c2, dict(c2, mirror_normal=[0.0, 1.0, 0.0]))
    # a record from before mirrors were tested: test again
    assert not pseudosym.same_symmetry({"order": 2, "axis": [0.0, 0.0, 1.0]}, c2)
