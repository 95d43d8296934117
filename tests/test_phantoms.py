"""The phantom family: every member renders, is seeded, centred and sized as its description says."""

import numpy as np
import pytest

from jaxcryo import phantoms


def _extent_fraction(vol, threshold=0.2):
    """Largest extent of the density above threshold x max, as a fraction of the box."""
    idx = np.argwhere(vol > threshold * vol.max())
    return float(np.max(idx.max(0) - idx.min(0)) / vol.shape[0])


@pytest.mark.parametrize("name", [n for n in phantoms.FAMILY if n != "atomic"])
def test_members_are_seeded_centred_and_inside_the_box(name):
    a, b = phantoms.family_member(name, 0, 48, 4.0), phantoms.family_member(name, 1, 48, 4.0)
    np.testing.assert_array_equal(a, phantoms.family_member(name, 0, 48, 4.0))  # same seed, same particle
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.9  # another seed, another particle
    assert a.max() == pytest.approx(1.0)
    c = np.arange(48) - 24
    com = [float((a.sum(axis=tuple(j for j in range(3) if j != i)) * c).sum() / a.sum()) for i in range(3)]
    assert np.max(np.abs(com)) < 1.0  # centred on its centre of mass (voxels)
    assert 0.15 < _extent_fraction(a) < 0.8


def test_compact_members_are_small_and_elongated_ones_long():
    compact = [_extent_fraction(phantoms.family_member("compact", s)) for s in range(4)]
    elongated = [_extent_fraction(phantoms.family_member("elongated", s)) for s in range(4)]
    assert max(compact) < 0.4 and min(elongated) > 0.45, (compact, elongated)


def test_dimer_members_are_pseudo_two_fold():
    """The dimer's two subunits are related by 180 deg about z: the density correlates strongly with
    its two-fold copy, and not perfectly (the marker domain sits on one subunit only)."""
    vol = phantoms.family_member("dimer", 0, 48, 4.0)
    turned = np.flip(vol, axis=(1, 2))  # 180 deg about z on the centred grid: (y, x) -> (-y, -x)
    turned = np.roll(turned, 1, axis=(1, 2))  # index i -> 48 - i keeps the centre index 24 fixed
    ncc = np.corrcoef(vol.ravel(), turned.ravel())[0, 1]
    assert 0.6 < ncc < 0.99


def test_family_source_names_are_checked():
    assert phantoms.parse_family_source("family:ring:3") == ("ring", 3)
    assert phantoms.parse_family_source("phantom") is None
    with pytest.raises(KeyError, match="expected family:NAME:SEED"):
        phantoms.parse_family_source("family:blob:1")
