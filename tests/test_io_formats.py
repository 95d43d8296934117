"""Golden-file tests: every file in ../shared/data/formats read with concrete values asserted."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcryo import geometry
from jaxcryo.io import InputError, check_stacks, read_particles
from jaxcryo.io.loader import ImageSource


def test_relion31_and_block_order(shared_formats):
    for name in ("relion31.star", "relion31.v2.star"):
        t = read_particles(shared_formats / name)
        assert len(t) == 5 and t.box_size == 256
        assert t.pixel_size_angstrom[0] == pytest.approx(2.806)  # the star wins over the stack's 1 A/px
        assert t.defocus_u_angstrom[0] == pytest.approx(13108.082418)
        assert t.defocus_angle_deg[0] == pytest.approx(-160.39)
        assert t.voltage_kv[3] == 300.0 and t.spherical_aberration_mm[3] == pytest.approx(0.01)
        assert t.amplitude_contrast[1] == pytest.approx(0.1)
        np.testing.assert_allclose(t.euler_deg[0], [-102.30296, 82.318041, 124.706463])
        np.testing.assert_allclose(t.origin_angstrom[0], [0.019324, -0.64686])
        assert t.random_subset[0] == 1 and t.image_index[4] == 4
        stacks = check_stacks(t)
        assert len(stacks) == 1 and len(next(iter(stacks.values()))) == 5


def test_relion31_six_optics_groups(shared_formats):
    t = read_particles(shared_formats / "relion31.6opticsgroups.star")
    assert len(t) == 139
    assert set(np.unique(t.optics_group).tolist()) <= set(range(1, 7)) and len(np.unique(t.optics_group)) > 1
    assert t.optics_group[0] == 6
    group6 = t.optics_table["rlnOpticsGroup"].tolist().index(6)
    assert t.pixel_size_angstrom[0] == pytest.approx(float(t.optics_table["rlnImagePixelSize"][group6]))
    assert t.voltage_kv[0] == pytest.approx(float(t.optics_table["rlnVoltage"][group6]))
    assert t.defocus_u_angstrom[0] == pytest.approx(10352.805929)
    np.testing.assert_allclose(t.origin_angstrom[0], [13.284554, -3.21701])
    with pytest.raises(InputError, match=r"139 missing stack\(s\): .*shiny\.mrcs"):
        check_stacks(t)


def test_relion5_inconsistent_box_is_reported(shared_formats):
    t = read_particles(shared_formats / "relion5.star")
    assert len(t) == 17 and t.image_size[0] == 448 and t.voltage_kv[0] == 100.0
    assert t.pixel_size_angstrom[0] == pytest.approx(0.89) and t.spherical_aberration_mm[0] == pytest.approx(1.6)
    assert t.defocus_u_angstrom[0] == pytest.approx(11949.06133)
    with pytest.raises(InputError, match=r"relion5\.star: metadata says \[448\] px images but .*toy_images_a\.mrcs holds 30 px"):
        check_stacks(t)


def test_refinement_output_relion30_layout(shared_formats):
    t = read_particles(shared_formats / "FinalRefinement-OriginalParticles-PfCRT.star")
    assert len(t) == 5
    assert t.pixel_size_angstrom[0] == pytest.approx(1.035 * 1e4 / 10000.0)
    assert t.defocus_v_angstrom[0] == pytest.approx(17521.4)
    assert t.amplitude_contrast[0] == pytest.approx(0.1)  # absent in the file: documented default
    np.testing.assert_allclose(t.origin_angstrom[0], np.array([-0.14063, -0.04688]) * 1.035)
    assert t.random_subset[0] == 2
    with pytest.raises(InputError, match="missing stack"):
        check_stacks(t)


def test_empiar_10076_star_and_cs_agree(shared_formats):
    s = read_particles(shared_formats / "empiar_10076_7.star")
    c = read_particles(shared_formats / "empiar_10076_7.cs")
    assert len(s) == len(c) == 7 and s.box_size == c.box_size == 320
    assert s.pixel_size_angstrom[0] == pytest.approx(5 * 1e4 / 38168)
    np.testing.assert_allclose(c.pixel_size_angstrom, s.pixel_size_angstrom, rtol=1e-6)
    for field in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg", "voltage_kv",
                  "spherical_aberration_mm", "amplitude_contrast"):
        np.testing.assert_allclose(getattr(c, field), getattr(s, field), rtol=1e-5, err_msg=field)
    assert s.defocus_u_angstrom[2] == pytest.approx(15150.7)
    images = [ImageSource(t, check_stacks(t)).read_raw(np.arange(7)) for t in (s, c)]
    np.testing.assert_array_equal(images[0], images[1])
    assert images[0].shape == (7, 320, 320) and np.isfinite(images[0]).all() and images[0].std() > 0


def test_cryosparc_refinement_poses(shared_formats):
    t = read_particles(shared_formats / "cryosparc_P12_J24_001_particles.cs")
    assert len(t) == 2019 and t.box_size == 180 and t.pixel_size_angstrom[0] == pytest.approx(2.95)
    assert t.defocus_u_angstrom[0] == pytest.approx(45591.37, rel=1e-6)
    assert t.defocus_angle_deg[0] == pytest.approx(np.degrees(-1.3636448), rel=1e-6)
    assert t.voltage_kv[0] == 200.0
    # pose: A = exp(r)^T with r = alignments3D/pose (axis-angle)
    r = np.array([2.3386633, -0.25595567, -1.2236784])
    expected = np.asarray(geometry.so3_exp(jnp.asarray(r))).T
    np.testing.assert_allclose(np.asarray(geometry.euler_to_matrix(jnp.asarray(t.euler_deg[0]))), expected, atol=1e-5)
    np.testing.assert_allclose(t.origin_angstrom[0], np.array([11.334375, -1.828125]) * 2.95, rtol=1e-6)
    assert t.random_subset[0] == 2
    assert "J19/extract" in t.image_name[0] and t.image_name[0].startswith("000001@")


def test_cryosparc_exported_strips_leading_gt(shared_formats):
    t = read_particles(shared_formats / "cryosparc_J2_particles_exported.cs")
    assert len(t) == 22 and t.box_size == 300 and t.euler_deg is None
    assert t.image_path[0].endswith("J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs")
    assert ">" not in t.image_path[0]
    assert t.amplitude_contrast[0] == pytest.approx(0.1) and t.defocus_u_angstrom[0] == pytest.approx(16412.178, rel=1e-6)
    with pytest.raises(InputError, match="missing stack"):
        check_stacks(t)


def test_toy_projections_star_stack_and_txt(shared_formats):
    star = read_particles(shared_formats / "toy_projections.star")
    stack = read_particles(shared_formats / "toy_projections.mrcs")
    listing = read_particles(shared_formats / "toy_projections.txt")
    for t in (star, stack, listing):
        assert len(t) == 1000 and t.box_size == 30 and t.pixel_size_angstrom[0] == 1.0
    assert star.phase_shift_deg[0] == 90.0 and star.defocus_u_angstrom[0] == 0.0
    assert stack.amplitude_contrast[0] == 1.0  # a bare stack has no CTF: w = 1, defocus 0 -> CTF = 1
    a = ImageSource(star, check_stacks(star)).read_raw(np.array([0, 999]))
    b = ImageSource(listing, check_stacks(listing)).read_raw(np.array([0, 999]))
    np.testing.assert_array_equal(a, b)


def test_toy_images_bare_stacks(shared_formats):
    assert len(read_particles(shared_formats / "toy_images_a.mrcs")) == 100
    assert len(read_particles(shared_formats / "toy_images_b.mrcs")) == 900


def test_relion31_stack_values(shared_formats):
    t = read_particles(shared_formats / "relion31.star")
    stack = check_stacks(t)[t.image_path[0]]
    import mrcfile

    with mrcfile.open(shared_formats / "relion31.mrcs", permissive=True) as m:
        np.testing.assert_array_equal(stack[3], m.data[3])
