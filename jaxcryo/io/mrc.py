"""MRC volumes and memory-mapped image stacks.

Stacks are opened lazily and memory-mapped: image ``i`` starts at byte ``header + i * nx * ny *
itemsize``, computed in int64 (numpy's memmap indexing), so stacks far beyond 2^31 bytes are safe.
Old-style headers without the ``MAP`` id (RELION 2 era, EMPIAR-10076) are read permissively.
Written maps and stacks always carry the voxel size.
"""

from __future__ import annotations

import os
import pathlib
import threading
import warnings

import mrcfile
import numpy as np

from jaxcryo.io.table import InputError

_MODE_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


class Stack:
    """A memory-mapped MRC stack: ``len(stack)``, ``stack[idx]`` -> (..., ny, nx) float32."""

    def __init__(self, path: str | pathlib.Path):
        self.path = str(path)
        if not pathlib.Path(self.path).is_file():
            raise InputError(f"{self.path}: image stack not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with mrcfile.open(self.path, header_only=True, permissive=True) as mrc:
                    header = mrc.header
                    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                    mode = int(header.mode)
                    ext = int(header.nsymbt)
                    voxel = float(mrc.voxel_size.x)
                    byte_order = "<" if header.mode.dtype.byteorder in ("<", "=", "|") else ">"
        except Exception as exc:  # mrcfile raises several types for garbage
            raise InputError(f"{self.path}: not a readable MRC file ({exc})") from None
        if mode not in _MODE_DTYPES:
            raise InputError(f"{self.path}: unsupported MRC mode {mode}")
        if nx != ny:
            raise InputError(f"{self.path}: images are not square ({nx} x {ny})")
        self.dtype = np.dtype(_MODE_DTYPES[mode]).newbyteorder(byte_order)
        self.offset = 1024 + ext
        self.shape = (nz, ny, nx)
        self.voxel_size_angstrom = voxel
        expected = self.offset + np.int64(nz) * ny * nx * self.dtype.itemsize
        actual = pathlib.Path(self.path).stat().st_size
        if actual < expected:
            raise InputError(f"{self.path}: truncated stack ({actual} bytes, header promises {expected})")

    _opening = threading.Lock()  # reading threads (jaxcryo.io.loader) may ask for a stack's descriptor at once

    @property
    def _fd(self) -> int:
        if "_fd" not in self.__dict__:  # opened on first read: a run may reference thousands of stacks
            with self._opening:
                if "_fd" not in self.__dict__:
                    self.__dict__["_fd"] = os.open(self.path, os.O_RDONLY)
        return self.__dict__["_fd"]

    def __del__(self, _close=os.close):  # bound now: at interpreter exit the module's globals may be gone
        if "_fd" in self.__dict__:
            _close(self.__dict__["_fd"])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> int:
        return self.shape[-1]

    def __getitem__(self, idx) -> np.ndarray:
        """Images by index, slice or index array. Read with pread, one call per run of consecutive
        images, not through a memory map: a map's page faults pull neighbouring pages into the
        process (fault-around, read-ahead), and a pass over a sample of a large stack left GBs of
        unused neighbours resident."""
        if isinstance(idx, slice):
            rows = np.arange(*idx.indices(len(self)))
        else:
            rows = np.asarray(idx, np.int64)
        single = rows.ndim == 0
        rows = rows.reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: image index out of range for {len(self)} images")
        rows = np.where(rows < 0, rows + len(self), rows)
        per_image = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        out = np.empty((len(rows),) + self.shape[1:], np.float32)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            count = int(stop - start)
            buf = os.pread(self._fd, count * per_image, self.offset + int(rows[start]) * per_image)
            out[start:stop] = np.frombuffer(buf, self.dtype).reshape((count,) + self.shape[1:])
        return out[0] if single else out


def read_volume(path: str | pathlib.Path) -> tuple[np.ndarray, float]:
    """(D, D, D) float32 map indexed (z, y, x) and its voxel size in A."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: volume not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, permissive=True) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                voxel = float(mrc.voxel_size.x)
    except Exception as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if data is None or data.ndim != 3:
        raise InputError(f"{path}: expected a 3D map, got shape {None if data is None else data.shape}")
    return data, voxel


def write_mrc(path: str | pathlib.Path, data: np.ndarray, voxel_size_angstrom: float, is_stack: bool = False) -> None:
    """Write a float32 map or stack atomically (temporary file, then rename) with its voxel size."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
        if is_stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size_angstrom
    tmp.replace(path)


def _stack_header(n_images: int, image_size: int, voxel: float) -> bytes:
    """A 1024-byte MRC2014 header for a little-endian float32 image stack (ispg 0)."""
    header = np.zeros((), dtype=mrcfile.dtypes.HEADER_DTYPE)
    header["nx"], header["ny"], header["nz"] = image_size, image_size, n_images
    header["mode"] = 2
    header["mx"], header["my"], header["mz"] = image_size, image_size, n_images
    header["cella"]["x"] = header["cella"]["y"] = image_size * voxel
    header["cella"]["z"] = n_images * voxel
    header["cellb"]["alpha"] = header["cellb"]["beta"] = header["cellb"]["gamma"] = 90.0
    header["mapc"], header["mapr"], header["maps"] = 1, 2, 3
    header["map"] = mrcfile.constants.MAP_ID
    header["machst"] = mrcfile.utils.machine_stamp_from_byte_order("<")
    header["nversion"] = 20141
    header["rms"] = -1.0  # statistics not computed (streamed)
    return header.tobytes()


class StackWriter:
    """Streams images into a new .mrcs without holding the stack in memory.

    The header is written for ``n_images`` up front; images are appended in order; ``close`` checks
    the count and renames the temporary file into place (a killed writer leaves no half stack).
    """

    def __init__(self, path: str | pathlib.Path, n_images: int, image_size: int, voxel_size_angstrom: float):
        self.path = pathlib.Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.n_images, self.written = n_images, 0
        with open(self.tmp, "wb") as f:
            f.write(_stack_header(n_images, image_size, voxel_size_angstrom))
        self._file = open(self.tmp, "ab")

    def write(self, images: np.ndarray) -> None:
        images = np.ascontiguousarray(images, dtype="<f4")
        self._file.write(images.tobytes())
        self.written += images.shape[0]

    def close(self) -> None:
        self._file.close()
        if self.written != self.n_images:
            raise RuntimeError(f"{self.path}: wrote {self.written} images, header says {self.n_images}")
        self.tmp.replace(self.path)
