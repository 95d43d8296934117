"""The paper's pose encoder (Gaussian pyramid + VGG16-style CNN + M heads) and the Hartley volume.

Encoder (CryoSPIN, Sec. 3 and Supp. C): a fixed Gaussian pyramid (11x11 kernels of variance
0.01 * 10^c px^2, c = 0..4, reflect padding) turns each image into 5 channels; each image is then
standardised; VGG16 blocks 1-3 (64, 128, 256 channels; 2, 2, 3 convs; max-pool) are followed by two
more 256-channel blocks of 3 convs with average pooling and a final max-pool; every conv is
BatchNorm + ReLU. ``width`` scales every channel count (1.0 = the paper; 1/8 fits a 2-core CPU).
M independent heads (MLP 512 -> 256 -> 6) give M candidate poses per image in the 6D
representation of ``jaxcryo.geometry.rotation_from_6d``. With ``estimate_shifts`` (beyond the paper,
whose code never estimates shifts) each head also gives an in-plane shift, bounded as
tanh(raw) * max_shift_fraction * box (``decode_poses``); those outputs start at exactly 0 (centred).

Volume: an explicit (D, D, D) grid in Hartley space, H = mantissa * exp(exponent), on the centred grid
of ``jaxcryo.fourier``. The exponent starts at the log of the data's radial amplitude so the mantissa
is O(1) at every frequency and Adam's fixed step size suits all of them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import fourier, geometry

PYRAMID_VARIANCES = tuple(0.01 * 10.0**c for c in range(5))
PYRAMID_KERNEL = 11


def gaussian_kernels(variances=PYRAMID_VARIANCES, size: int = PYRAMID_KERNEL) -> np.ndarray:
    """(size, size, 1, C) normalised 2D Gaussian kernels (HWIO layout for lax.conv)."""
    r = np.arange(size) - size // 2
    rr = r[:, None] ** 2 + r[None, :] ** 2
    kernels = [np.exp(-rr / (2 * v)) for v in variances]
    kernels = [k / k.sum() for k in kernels]
    return np.stack(kernels, axis=-1)[:, :, None, :].astype(np.float32)


def gaussian_pyramid(images: jax.Array) -> jax.Array:
    """(B, L, L) -> (B, L, L, 5): each image blurred at the 5 pyramid scales, reflect-padded."""
    pad = PYRAMID_KERNEL // 2
    x = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")[..., None]
    kernel = jnp.asarray(gaussian_kernels(), dtype=images.dtype)
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def standardize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Per-image standardisation over all pixels and channels: (B, ...) -> zero mean, unit std."""
    axes = tuple(range(1, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    std = jnp.std(x, axis=axes, keepdims=True)
    return (x - mean) / (std + eps)


class ConvBlock(nn.Module):
    features: int
    n_convs: int
    pool: str  # "max" or "avg"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(self.n_convs):
            x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name)(x)
            x = nn.relu(x)
        pool = nn.max_pool if self.pool == "max" else nn.avg_pool
        return pool(x, (2, 2), strides=(2, 2))


def _zero_last_columns(n_zero: int):
    """lecun-normal (batched over heads) with the last n_zero output columns set to 0."""
    base = nn.initializers.lecun_normal(batch_axis=(0,))

    def init(key, shape, dtype=jnp.float32):
        w = base(key, shape, dtype)
        return w.at[..., shape[-1] - n_zero :].set(0.0) if n_zero else w

    return init


class MultiHead(nn.Module):
    """M independent MLPs (in -> 512 -> 256 -> out) evaluated together with batched weights; the last
    ``zero_outputs`` outputs start at 0 for every input (their weights and biases are 0)."""

    n_heads: int
    hidden: tuple[int, ...] = (512, 256)
    out: int = 6
    zero_outputs: int = 0

    @nn.compact
    def __call__(self, x):  # (B, F) -> (B, M, out)
        h = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.n_heads, x.shape[1]))
        dims = (x.shape[1],) + self.hidden + (self.out,)
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            init = _zero_last_columns(self.zero_outputs if last else 0)
            w = self.param(f"kernel_{i}", init, (self.n_heads, d_in, d_out))
            b = self.param(f"bias_{i}", nn.initializers.zeros, (self.n_heads, d_out))
            h = jnp.einsum("bmi,mio->bmo", h, w) + b
            if i < len(dims) - 2:
                h = nn.relu(h)
        return h


MIN_ENCODER_BOX = 2 ** 5  # five 2 x 2 poolings (VALID) leave a 31 px image no pixel


class PoseEncoder(nn.Module):
    """(B, L, L) images -> (B, M, 6) pose candidates, or (B, M, 8) with ``estimate_shifts``
    (6D rotation, then 2 raw shift outputs; see ``decode_poses``)."""

    n_heads: int = 7
    width: float = 1.0
    axis_name: str | None = None
    estimate_shifts: bool = False

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = standardize(gaussian_pyramid(images))
        c = lambda n: max(4, int(round(n * self.width)))  # noqa: E731
        for feats, n_convs, pool in ((64, 2, "max"), (128, 2, "max"), (256, 3, "max"), (256, 3, "avg"), (256, 3, "avg")):
            x = ConvBlock(c(feats), n_convs, pool, self.axis_name)(x, train)
        if min(x.shape[1:3]) >= 2:
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        n_shift = 2 if self.estimate_shifts else 0
        return MultiHead(self.n_heads, out=6 + n_shift, zero_outputs=n_shift)(x.reshape(x.shape[0], -1))


def decode_poses(head_outputs: jax.Array, max_shift_fraction: float) -> tuple[jax.Array, jax.Array | None]:
    """(B, M, 6 or 8) encoder outputs -> rotations (B, M, 3, 3) and shifts (B, M, 2) as (x, y) in
    fractions of the box, tanh-bounded by ``max_shift_fraction`` (None without shift outputs).

    Shifts in box fractions carry over unchanged between the Fourier-cropped amortized images and the
    full box; pixels = fraction * box size.
    """
    rotations = geometry.rotation_from_6d(head_outputs[..., :6])
    if head_outputs.shape[-1] == 6:
        return rotations, None
    return rotations, max_shift_fraction * jnp.tanh(head_outputs[..., 6:8])


def count_params(tree: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(tree)))


# ---- the Hartley volume -------------------------------------------------------------------------

def init_volume(volume_size: int, radial_log_amplitude: np.ndarray, key: jax.Array, init_scale: float = 0.0) -> dict:
    """Mantissa/exponent parameters. ``radial_log_amplitude`` (R,) gives the exponent per integer radius.

    ``init_scale`` > 0 starts from a random volume with the data's spectrum (mantissa ~ N(0, s^2)).
    """
    c = np.arange(volume_size) - volume_size // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    idx = np.minimum(np.round(r).astype(int), len(radial_log_amplitude) - 1)
    exponent = jnp.asarray(radial_log_amplitude[idx], jnp.float32)
    mantissa = init_scale * jax.random.normal(key, exponent.shape, jnp.float32)
    return {"mantissa": mantissa, "exponent": exponent}


def params_from_hartley(volume_h: jax.Array, exponent: jax.Array) -> dict:
    """The parameters whose ``volume_hartley`` is ``volume_h`` for a given exponent."""
    return {"mantissa": volume_h * jnp.exp(-exponent), "exponent": exponent}


def hartley_from_map(volume: jax.Array) -> jax.Array:
    """(D, D, D) real-space map in image units -> Hartley coefficients in the 1/L-scaled units of the
    learned volume (the inverse of ``jaxcryo.runio.volume_to_real``)."""
    return fourier.ht(jnp.asarray(volume, jnp.float32), ndim=3) / volume.shape[-1]


def volume_hartley(params: dict) -> jax.Array:
    """(D, D, D) Hartley coefficients H = mantissa * exp(exponent)."""
    return params["mantissa"] * jnp.exp(params["exponent"])
