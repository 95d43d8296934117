"""Readers and writers: round trips, bad input (one clear line each), stacks, downsampling."""

import dataclasses
import pathlib

import mrcfile
import numpy as np
import pytest

from jaxcryo.io import InputError, check_stacks, read_particles
from jaxcryo.io.loader import ImageSource
from jaxcryo.io.mrc import Stack, StackWriter, _stack_header, write_mrc
from jaxcryo.io.preprocess import downsample_dataset
from jaxcryo.io.star import write_particles_star

STAR_31 = """
data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
1 g1 300 2.7 0.1 2.5 16
2 g2 200 2.0 0.07 2.5 16

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnOpticsGroup #5
_rlnAngleRot #6
_rlnAngleTilt #7
_rlnAnglePsi #8
_rlnOriginXAngst #9
_rlnOriginYAngst #10
_rlnMicrographName #11
{rows}
"""


def make_dataset(tmp_path: pathlib.Path, n=6, size=16, groups=(1, 2), drop_column=None, nan_rows=()) -> pathlib.Path:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, size, size)).astype(np.float32)
    for r in nan_rows:
        images[r, 3, 3] = np.nan
    write_mrc(tmp_path / "stack.mrcs", images, 2.5, is_stack=True)
    rows = "\n".join(
        f"{i + 1:06d}@stack.mrcs {10000 + 100 * i} {9000 + 100 * i} {5 * i} {groups[i % len(groups)]} {10 * i} {20 + i} {-30 + i} {0.5 * i} {-0.25 * i} mic{i}.mrc"
        for i in range(n)
    )
    text = STAR_31.format(rows=rows)
    if drop_column:
        lines = text.splitlines()
        header = [ln for ln in lines if ln.startswith("_rln") and "#" in ln]
        names = [h.split()[0] for h in header]
        in_particles = names[7:]
        col = in_particles.index(drop_column)
        out, seen_particles = [], False
        for ln in lines:
            if ln.startswith("data_particles"):
                seen_particles = True
            if seen_particles and ln.startswith(drop_column):
                continue
            if seen_particles and "@stack" in ln:
                parts = ln.split()
                del parts[col]
                ln = " ".join(parts)
            out.append(ln)
        text = "\n".join(out)
    (tmp_path / "particles.star").write_text(text)
    return tmp_path / "particles.star"


def test_star_31_read_and_write_round_trip(tmp_path):
    star = make_dataset(tmp_path)
    t = read_particles(star)
    assert len(t) == 6 and t.box_size == 16 and t.pixel_size_angstrom[0] == 2.5
    assert t.voltage_kv.tolist() == [300, 200, 300, 200, 300, 200]
    assert t.amplitude_contrast[1] == pytest.approx(0.07)
    np.testing.assert_allclose(t.euler_deg[2], [20, 22, -28])
    out = tmp_path / "out" / "poses.star"
    out.parent.mkdir()
    new_euler = t.euler_deg + 1.0
    write_particles_star(out, t, euler_deg=new_euler, origin_angstrom=t.origin_angstrom * 2, random_subset=np.array([1, 2] * 3))
    back = read_particles(out, datadir=str(tmp_path))
    np.testing.assert_allclose(back.euler_deg, new_euler)
    np.testing.assert_allclose(back.origin_angstrom, t.origin_angstrom * 2)
    for field in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg", "voltage_kv",
                  "spherical_aberration_mm", "amplitude_contrast", "pixel_size_angstrom", "image_size"):
        np.testing.assert_allclose(getattr(back, field), getattr(t, field), err_msg=field)
    assert back.image_name.tolist() == t.image_name.tolist()
    assert back.extra_columns["rlnMicrographName"].tolist() == [f"mic{i}.mrc" for i in range(6)]
    assert back.random_subset.tolist() == [1, 2] * 3
    assert back.image_path[0] == str((tmp_path / "stack.mrcs").resolve())  # repaired through datadir
    assert list(back.column_order[:3]) == list(t.column_order[:3])  # the input's columns keep their places


def test_table_is_compact_and_reads_the_same(tmp_path):
    """Equal values are one zero-stride value, text is variable-width strings, represented star columns
    are not kept twice; subsets and the star writer see the same values as before."""
    t = read_particles(make_dataset(tmp_path))
    assert t.pixel_size_angstrom.strides == (0,) and t.pixel_size_angstrom.tolist() == [2.5] * 6
    assert t.voltage_kv.strides != (0,)  # two optics groups differ
    assert t.image_name.dtype.kind == ("T" if hasattr(np.dtypes, "StringDType") else "O")
    assert t.image_name.codes.strides == (0,)  # one stack: the names cost nothing per row
    assert "rlnImageName" not in t.extra_columns and "rlnDefocusU" not in t.extra_columns
    assert "rlnMicrographName" in t.extra_columns
    half = t.subset(np.array([1, 3, 5]))
    assert half.voltage_kv.tolist() == [200.0] * 3 and half.voltage_kv.strides == (0,)
    assert half.image_name.tolist() == t.image_name.tolist()[1::2]
    with pytest.raises(ValueError):
        t.defocus_u_angstrom[0] = 1.0  # read-only
    # rotations and displacements in the conventions stated once (geometry; RELION's origin sign)
    rot = t.rotations(np.array([2]))[0]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-6)
    np.testing.assert_allclose(t.displacements_angstrom(), -t.origin_angstrom)
    bare = dataclasses.replace(t, euler_deg=None)
    with pytest.raises(InputError, match="no particle angles"):
        bare.rotations()


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing_file", r"nope\.star: file not found"),
        ("folder", r"job007: a folder, not a particle file; give one of the files it holds: particles\.star, stack\.mrcs$"),
        ("empty_folder", r"job008: a folder, not a particle file; it holds no \.star, \.cs, \.mrcs or \.txt$"),
        ("missing_column", r"particles\.star: missing required column rlnDefocusU"),
        ("unknown_optics", r"unknown optics group\(s\) \[3\]"),
        ("empty", r"no data loop found|no particles"),
        ("unknown_suffix", r"unknown particle file type '\.xyz'"),
    ],
)
def test_bad_metadata_gives_one_clear_line(tmp_path, case, pattern):
    if case == "missing_file":
        path = tmp_path / "nope.star"
    elif case == "folder":  # a RELION job folder given for the star in it
        path = tmp_path / "job007"
        path.mkdir()
        make_dataset(path)
    elif case == "empty_folder":
        path = tmp_path / "job008"
        path.mkdir()
    elif case == "missing_column":
        path = make_dataset(tmp_path, drop_column="_rlnDefocusU")
    elif case == "unknown_optics":
        path = make_dataset(tmp_path, groups=(1, 3))
    elif case == "empty":
        path = tmp_path / "particles.star"
        path.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n")
    else:
        path = tmp_path / "x.xyz"
        path.write_text("hello")
    with pytest.raises(InputError, match=pattern) as info:
        read_particles(path)
    assert "\n" not in str(info.value)


def test_bad_stacks_give_one_clear_line(tmp_path):
    star = make_dataset(tmp_path)
    t = read_particles(star)
    # index beyond the stack
    write_mrc(tmp_path / "stack.mrcs", np.zeros((3, 16, 16), np.float32), 2.5, is_stack=True)
    with pytest.raises(InputError, match=r"image index 6 beyond the 3 images of .*stack\.mrcs"):
        check_stacks(t)
    # truncated stack
    write_mrc(tmp_path / "stack.mrcs", np.zeros((6, 16, 16), np.float32), 2.5, is_stack=True)
    data = (tmp_path / "stack.mrcs").read_bytes()
    (tmp_path / "stack.mrcs").write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"stack\.mrcs: truncated stack"):
        check_stacks(t)
    # non-square images
    with mrcfile.new(tmp_path / "stack.mrcs", overwrite=True) as m:
        m.set_data(np.zeros((6, 16, 18), np.float32))
    with pytest.raises(InputError, match=r"images are not square \(18 x 16\)"):
        check_stacks(t)
    # not an MRC at all
    (tmp_path / "stack.mrcs").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"stack\.mrcs: not a readable MRC file"):
        check_stacks(t)
    # missing
    (tmp_path / "stack.mrcs").unlink()
    with pytest.raises(InputError, match=r"1 missing stack\(s\): .*stack\.mrcs"):
        check_stacks(t)


@pytest.mark.filterwarnings("ignore:Data array contains NaN values")  # the test writes them on purpose
def test_nan_pixels_name_the_particles(tmp_path):
    t = read_particles(make_dataset(tmp_path, nan_rows=(2, 4)))
    source = ImageSource(t, check_stacks(t))
    with pytest.raises(InputError, match=r"NaN/Inf pixels in 2 particle\(s\): 000003@stack\.mrcs, 000005@stack\.mrcs"):
        source.read(np.arange(6))
    np.testing.assert_array_equal(source.read(np.array([0, 1])).shape, (2, 16, 16))


def test_never_unpickles(tmp_path):
    path = tmp_path / "evil.cs"
    with open(path, "wb") as f:  # np.save to a file object keeps the .cs name
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="evil.cs: not a readable cryoSPARC .cs file"):
        read_particles(path)


def test_stack_reads_any_index_form_and_offsets_past_2_gib(tmp_path):
    n, size = 6, 8
    writer = StackWriter(tmp_path / "s.mrcs", n, size, 1.5)
    for i in range(n):
        writer.write(np.full((1, size, size), i, np.float32))
    writer.close()
    stack = Stack(tmp_path / "s.mrcs")
    assert stack.voxel_size_angstrom == 1.5 and len(stack) == n
    assert stack[np.array([3, 1, 2, 5, 0])][:, 0, 0].tolist() == [3, 1, 2, 5, 0]  # runs and jumps
    assert stack[2:5][:, 0, 0].tolist() == [2, 3, 4] and stack[-1][0, 0] == 5 and stack[4].shape == (size, size)
    with pytest.raises(IndexError):
        stack[np.array([6])]
    # image 700,000 of a 128 px stack starts past 2^31 bytes: a sparse file holding only that image
    big, count = tmp_path / "big.mrcs", 700_001
    with open(big, "wb") as f:
        f.write(_stack_header(count, 128, 1.0))
        f.seek(1024 + 700_000 * 128 * 128 * 4)
        f.write(np.full((128, 128), 7.0, "<f4").tobytes())
    assert 700_000 * 128 * 128 * 4 > 2**31 and Stack(big)[np.array([700_000])][0, 5, 5] == 7.0


def test_pixel_sizes_within_a_percent_are_one_and_farther_apart_are_refused(tmp_path):
    t = read_particles(make_dataset(tmp_path, n=10))
    near = dataclasses.replace(t, pixel_size_angstrom=np.r_[np.full(4, 1.24), np.full(6, 1.25)])
    assert near.common_pixel_size == pytest.approx(1.246)  # the particles' mean
    assert ImageSource(near, check_stacks(near)).pixel_size_angstrom == pytest.approx(1.246)
    far = dataclasses.replace(t, pixel_size_angstrom=np.r_[np.full(4, 1.0), np.full(6, 1.06)])
    with pytest.raises(InputError, match=r"pixel sizes 1\.0, 1\.06 A, more than 1% apart.*data\.pixel_size_angstrom"):
        far.common_pixel_size


def test_downsample_writes_new_stack_and_pixel_size(tmp_path):
    t = read_particles(make_dataset(tmp_path, n=6, size=16))
    star = downsample_dataset(t, 8, tmp_path / "small", chunk_size=4)
    small = read_particles(star)
    assert small.box_size == 8 and small.pixel_size_angstrom[0] == 5.0
    np.testing.assert_allclose(small.defocus_u_angstrom, t.defocus_u_angstrom)
    np.testing.assert_allclose(small.euler_deg, t.euler_deg)
    big = ImageSource(t, check_stacks(t)).read_raw(np.arange(6))
    got = ImageSource(small, check_stacks(small)).read_raw(np.arange(6))
    f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(big, axes=(1, 2))), axes=(1, 2))[:, 4:12, 4:12]
    expected = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(f, axes=(1, 2))), axes=(1, 2)).real / 4
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with mrcfile.open(tmp_path / "small" / "particles.mrcs") as m:
        assert m.voxel_size.x == pytest.approx(5.0)


def test_compact_column_keeps_every_value():
    from jaxcryo.io.table import compact_column

    nan = np.full(5, np.nan)
    assert compact_column(nan).strides == (0,) and np.isnan(compact_column(nan)).all()
    mixed = np.array([1.0, np.nan, 1.0])
    np.testing.assert_array_equal(compact_column(mixed), mixed)  # not "all equal": NaN differs from 1
    assert compact_column(mixed).strides != (0,)
    ints = np.array([3, 3, 3], np.int64)
    assert compact_column(ints).dtype == np.int64 and compact_column(ints).tolist() == [3, 3, 3]
    text = np.array(["a@x.mrcs", "b@y.mrcs"], dtype="S")
    assert compact_column(text).tolist() == ["a@x.mrcs", "b@y.mrcs"]
    odd = np.array([1, "x", None], dtype=object)  # not all str: kept as it is
    assert compact_column(odd).tolist() == [1, "x", None]


@pytest.mark.parametrize("names, compact", [
    (["000001@Extract/job012/a.mrcs", "000002@Extract/job012/a.mrcs", "000001@b.mrcs"], True),  # RELION: 6 digits
    (["1@a.mrcs", "12@a.mrcs", "3@b.mrcs"], True),  # unpadded
    (["01@a.mrcs", "12@a.mrcs", "3@a.mrcs"], False),  # padded one way here, another there
    (["1@a.mrcs", "2@a.mrcs", "c.mrcs"], False),  # a file without an index
    (["1@a@b.mrcs", "2@a@b.mrcs", "3@c.mrcs"], True),  # '@' inside the stack's name
])
def test_image_names_are_kept_as_stack_and_number(names, compact):
    """The compact name column gives back every input name exactly, or is not used."""
    from jaxcryo.io.table import ImageNames

    index = np.array([int(n.split("@")[0]) - 1 if "@" in n else 0 for n in names])
    encoded = ImageNames.encode(np.array(names), index)
    assert (encoded is not None) == compact
    if compact:
        assert encoded.tolist() == names and np.asarray(encoded).tolist() == names
        assert encoded[1] == names[1] and encoded[np.array([2, 0])].tolist() == [names[2], names[0]]
        assert encoded.take(np.array([True, False, True])).tolist() == [names[0], names[2]]
        assert len(encoded) == 3 and encoded.codes.dtype == np.int32


def test_long_image_names_round_trip_through_star(tmp_path):
    """Names of several stacks survive read -> subset -> write -> read, and hold a 4-byte code per row."""
    t = read_particles(make_dataset(tmp_path))
    n = len(t)
    long = np.array([f"{i + 1:06d}@Extract/job007/Movies/2017062{i % 2}_00021_frameImage.mrcs" for i in range(n)])
    t2 = dataclasses.replace(t, image_name=long)
    assert t2.image_name.codes.nbytes == 4 * n and t2.image_name.stacks[1].endswith("20170621_00021_frameImage.mrcs")
    write_particles_star(tmp_path / "long.star", t2.subset(np.arange(1, n)))
    back = read_particles(tmp_path / "long.star", datadir=tmp_path)
    assert back.image_name.tolist() == long[1:].tolist()


def test_stacks_found_from_a_relion_project_layout(tmp_path, monkeypatch):
    # RELION writes image paths relative to the project directory into stars kept deeper in it
    project = tmp_path / "project"
    (project / "Extract" / "job007").mkdir(parents=True)
    (project / "Select" / "job010").mkdir(parents=True)
    make_dataset(project / "Extract" / "job007")
    text = (project / "Extract" / "job007" / "particles.star").read_text()
    star = project / "Select" / "job010" / "particles.star"
    star.write_text(text.replace("@stack.mrcs", "@Extract/job007/stack.mrcs"))
    monkeypatch.chdir(tmp_path)  # run from outside the project
    table = read_particles(star)
    assert table.image_path[0] == str((project / "Extract" / "job007" / "stack.mrcs").resolve())
    assert len(check_stacks(table)) == 1


def test_a_star_without_pixel_size_takes_the_stack_headers_and_says_so(tmp_path, caplog):
    # RELION 3.0 style: no optics block, no rlnImagePixelSize / rlnDetectorPixelSize columns
    write_mrc(tmp_path / "stack.mrcs", np.zeros((2, 16, 16), np.float32), 1.75, is_stack=True)
    rows = "\n".join(f"{i + 1:06d}@stack.mrcs 10000 9000 0 300 2.7 0.1" for i in range(2))
    star = tmp_path / "particles.star"
    star.write_text("data_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnDefocusV #3\n_rlnDefocusAngle #4\n"
                    f"_rlnVoltage #5\n_rlnSphericalAberration #6\n_rlnAmplitudeContrast #7\n{rows}\n")
    with caplog.at_level("INFO"):
        table = read_particles(star)
    np.testing.assert_allclose(table.pixel_size_angstrom, 1.75)
    assert table.box_size == 16
    assert "taking 1.75 A/px from the stacks' headers" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        read_particles(star, pixel_size_angstrom=2.0)  # given: nothing to report
    assert "headers" not in caplog.text
    # a missing stack is named as such, not its rows refused for a NaN pixel size
    text = star.read_text()
    star.write_text(text.replace("000002@stack.mrcs", "000001@other.mrcs"))
    with pytest.raises(InputError, match=r"no pixel size in the STAR file, and 1 of the stacks to read it from are "
                                         r"missing: .*other\.mrcs \(set data\.datadir, or data\.pixel_size_angstrom\)$"):
        read_particles(star)
