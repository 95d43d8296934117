"""FSC, resolution crossings and global alignment against analytic expectations."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxcryo import evaluate, fourier, frames, slicing
from references import blob_volume


def test_fsc_with_itself_is_one():
    vol = blob_volume(32)
    np.testing.assert_allclose(evaluate.fsc(vol, 2.5 * vol), 1.0, atol=1e-5)


def test_fsc_of_independently_noised_copies_matches_snr_over_one_plus_snr():
    rng = np.random.default_rng(0)
    size = 48
    signal = rng.normal(size=(size,) * 3)  # white signal: power 1 per voxel in every shell
    noise_std = 0.8
    a = signal + noise_std * rng.normal(size=signal.shape)
    b = signal + noise_std * rng.normal(size=signal.shape)
    curve = evaluate.fsc(a, b)
    snr = 1 / noise_std**2
    np.testing.assert_allclose(curve[4:], snr / (1 + snr), atol=0.05)


def test_resolution_crossing_is_interpolated_and_nyquist_if_never_crossed():
    curve = np.array([1.0, 0.9, 0.7, 0.6, 0.4, 0.2, 0.1, 0.0, 0.0])  # D = 16
    # 0.5 is crossed between shell 3 (0.6) and 4 (0.4): radius 3.5 -> 16 * 2 A / 3.5
    assert evaluate.resolution_at(curve, 0.5, 2.0) == pytest.approx(16 * 2.0 / 3.5)
    assert evaluate.resolution_at(np.ones(9), 0.143, 2.0) == pytest.approx(4.0)


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_poses_recovers_global_rotation_and_hand(mirrored):
    r_true = Rotation.random(300, random_state=1).as_matrix()
    q = Rotation.random(random_state=2).as_matrix()
    r_est = r_true @ q
    if mirrored:
        r_est = frames.MIRROR @ r_est @ frames.MIRROR
    noise = Rotation.from_rotvec(np.random.default_rng(3).normal(scale=np.radians(1.0), size=(300, 3))).as_matrix()
    r_est = r_est @ noise
    r_est[:30] = Rotation.random(30, random_state=4).as_matrix()  # 10 % outliers
    a = evaluate.align_poses(r_est, r_true)
    assert a["mirrored"] == mirrored
    assert np.degrees(np.arccos((np.trace(a["q"].T @ q) - 1) / 2)) < 0.5
    assert np.median(a["rotation_error_deg"][30:]) < 2.5


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_poses_finds_a_mode_when_poses_split_between_two(mirrored):
    """A near two-fold-symmetric map: 45 % of poses in the true frame, 45 % in the two-fold partner's
    (R_true C2 Q), 10 % random. The alignment must land on a mode with the right hand, although the
    median particle is in neither and the mean of all candidates lies between the modes."""
    rng = np.random.default_rng(7)
    r_true = Rotation.random(400, random_state=5).as_matrix()
    q = Rotation.random(random_state=6).as_matrix()
    c2 = np.diag([-1.0, -1.0, 1.0])
    r_est = r_true @ q
    r_est[180:360] = r_true[180:360] @ c2 @ q
    r_est = r_est @ Rotation.from_rotvec(rng.normal(scale=np.radians(2.0), size=(400, 3))).as_matrix()
    r_est[360:] = Rotation.random(40, random_state=8).as_matrix()
    if mirrored:
        r_est = frames.MIRROR @ r_est @ frames.MIRROR
    a = evaluate.align_poses(r_est, r_true)
    err = a["rotation_error_deg"]
    assert a["mirrored"] == mirrored
    in_mode = [np.mean(err[:180] < 10), np.mean(err[180:360] < 10)]
    assert max(in_mode) > 0.95 and min(in_mode) < 0.05  # one mode aligned exactly, the other 180 deg off


@pytest.mark.parametrize("mirrored", [False, True])
def test_error_vectors_are_the_rotation_vectors_of_the_pose_errors_in_the_true_frame(mirrored):
    rng = np.random.default_rng(11)
    r_true = Rotation.random(200, random_state=12).as_matrix()
    q = Rotation.random(random_state=13).as_matrix()
    e_true = rng.normal(scale=2.0, size=(200, 3))  # degrees, in the truth's frame
    e_in_q = e_true @ q  # rows Q^T e: the same rotation seen in the estimate's frame
    r_est = r_true @ q @ Rotation.from_rotvec(np.radians(e_in_q)).as_matrix()
    if mirrored:
        r_est = frames.MIRROR @ r_est @ frames.MIRROR
    got = evaluate.error_vectors_deg(r_est, r_true, q, mirrored)
    norm = np.linalg.norm(e_true, axis=1, keepdims=True)
    expected = e_true / norm * np.degrees(np.sin(np.radians(norm)))  # axis x sin(angle), in degrees
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_neighbour_error_share_is_zero_for_noise_and_near_one_for_a_smooth_error_field():
    rng = np.random.default_rng(14)
    r_true = Rotation.random(3000, random_state=15).as_matrix()
    noise = rng.normal(scale=3.0 / np.sqrt(3), size=(3000, 3))  # 3 deg long on average, independent
    field = 3.0 * r_true[:, 2, :]  # 3 deg about each image's viewing direction: smooth over SO(3)
    assert abs(evaluate.neighbour_error_share(r_true, noise)) < 0.1
    assert evaluate.neighbour_error_share(r_true, field) > 0.8
    half = evaluate.neighbour_error_share(r_true, field + noise)  # equal parts: about half shared
    assert 0.3 < half < 0.7


def test_align_map_undoes_rotation_and_mirror():
    size = 48
    vol = blob_volume(size)
    q = Rotation.from_euler("zyz", [40, 70, -20], degrees=True).as_matrix()
    # V_est(p) = V(Q p): sample the oversampled transform at Q k
    big = slicing.volume_to_hartley(jnp.asarray(vol), oversample=4)  # an accurate forward rotation
    c = np.arange(size) - size // 2
    kz, ky, kx = np.meshgrid(c, c, c, indexing="ij")
    k = np.stack([kx, ky, kz], -1).reshape(-1, 3)
    from scipy import ndimage

    src = k @ q.T  # (Q k)^T
    coords = src[:, ::-1].T * 4 + 2 * size
    h = ndimage.map_coordinates(np.asarray(big), coords, order=1).reshape((size,) * 3)
    est = np.asarray(fourier.iht(jnp.asarray(h), 3))
    back = frames.align_map(est, q, mirrored=False)
    assert np.linalg.norm(back - vol) / np.linalg.norm(vol) < 0.05
    mirrored = np.roll(np.flip(est, axis=0), 1, axis=0)  # V(M p) about index size // 2
    back = frames.align_map(mirrored, q, mirrored=True)
    assert np.linalg.norm(back - vol) / np.linalg.norm(vol) < 0.05


def test_contrast_correlation_needs_fitted_contrasts_and_the_simulated_ones(tmp_path):
    poses = tmp_path / "ground_truth_poses.star"  # only its folder matters
    fitted = np.array([0.9, 1.1, 1.0, 1.2])
    assert evaluate.contrast_correlation(fitted, str(poses)) == {}  # no ground_truth_contrast.npy
    true = np.array([0.8, 1.2, 1.0, 1.1])
    np.save(tmp_path / "ground_truth_contrast.npy", true)
    # Pearson's r by hand: deviations (-0.15, 0.05, -0.05, 0.15) and (-0.225, 0.175, -0.025, 0.075),
    # products summing to 0.055, squares to 0.05 and 0.0875: r = 0.055 / sqrt(0.05 * 0.0875)
    r = 0.055 / np.sqrt(0.05 * 0.0875)
    assert r == pytest.approx(0.8315, abs=1e-4)
    assert evaluate.contrast_correlation(fitted, str(poses))["contrast_correlation"] == pytest.approx(r, abs=1e-9)
    assert evaluate.contrast_correlation(np.ones(4), str(poses)) == {}  # never fitted: r would be NaN
    assert evaluate.contrast_correlation(None, str(poses)) == {}
    assert evaluate.contrast_correlation(fitted, None) == {}
