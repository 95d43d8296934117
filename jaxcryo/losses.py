"""Image-formation model and losses, per image and per pose candidate, with winner-takes-all.

Everything is in Hartley space on the centred grid, scaled by 1/L so white noise of unit pixel variance
has unit variance per coefficient (``jaxcryo.fourier``): for an image y and a pose A,
    prediction(A) = CTF * shift(t) * S(A)      (S: central slice of the volume, ``jaxcryo.slicing``)
Because the CTF is real and even it commutes with Hartley <-> Fourier; an in-plane shift does not, so
shifts are applied in Fourier form and converted back (``shift_hartley``).

Losses over the frequency disc |k| <= r * Nyquist:
* ``gaussian``: the paper's Gaussian negative log-likelihood with unit noise variance, i.e. half the
  mean squared error over the disc (Hartley and Fourier squared errors are equal, Parseval);
* ``l1_fourier``: the official code's mean complex modulus |F_y - F_pred| over the disc.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcryo import fourier, slicing


def images_to_hartley(images: jax.Array) -> jax.Array:
    """(B, L, L) real images -> (B, L, L) Hartley coefficients scaled by 1/L."""
    return fourier.ht(images) / images.shape[-1]


def shift_hartley(h: jax.Array, shifts_px: jax.Array) -> jax.Array:
    """Translate images given in Hartley form: (..., L, L), shifts (..., 2) as (x, y) pixels.

    f(x - t) <-> F(k) exp(-2 pi i k.t / L); in Hartley terms with c = cos, s = sin of 2 pi k.t / L:
    H'(k) = H(k) c + H(-k) s.
    """
    size = h.shape[-1]
    k = (jnp.arange(size) - size // 2).astype(h.dtype)
    ky, kx = jnp.meshgrid(k, k, indexing="ij")
    phase = 2 * jnp.pi * (kx * shifts_px[..., 0, None, None] + ky * shifts_px[..., 1, None, None]) / size
    return h * jnp.cos(phase) + fourier.flip_frequencies(h) * jnp.sin(phase)


def predict(volume_h: jax.Array, rotations: jax.Array, ctf: jax.Array, shifts_px: jax.Array | None = None) -> jax.Array:
    """(D,D,D) volume, (B, ..., 3, 3) rotations, (B, L, L) CTF -> (B, ..., L, L) predicted Hartley images."""
    size = ctf.shape[-1]
    slices = slicing.extract_slices(volume_h, rotations, size)
    extra = slices.ndim - ctf.ndim
    pred = slices * ctf.reshape(ctf.shape[:1] + (1,) * extra + ctf.shape[1:])
    if shifts_px is not None:
        pred = shift_hartley(pred, shifts_px)
    return pred


def per_image_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, kind: str = "gaussian") -> jax.Array:
    """(B, ..., L, L) predictions vs (B, L, L) targets over a (L, L) mask -> (B, ...) losses."""
    extra = pred.ndim - target.ndim
    target = target.reshape(target.shape[:1] + (1,) * extra + target.shape[1:])
    weight = mask.astype(pred.dtype) / jnp.sum(mask)
    if kind == "gaussian":
        return 0.5 * jnp.sum((pred - target) ** 2 * weight, axis=(-2, -1))
    if kind == "l1_fourier":
        diff = fourier.hartley_to_fourier(pred - target)
        return jnp.sum(jnp.abs(diff) * weight, axis=(-2, -1))
    raise ValueError(f"unknown loss {kind!r} (expected 'gaussian' or 'l1_fourier')")


def winner_takes_all(volume_h, rotations, ctf, target, mask, kind="gaussian", shifts_px=None):
    """Per-image loss of the best of M pose candidates, with the gradient of the winner only.

    ``rotations`` (B, M, 3, 3) (and ``shifts_px`` (B, M, 2)). All M candidates are scored forward-only
    (under stop_gradient, one batched slice), then the winner is sliced once more with gradients:
    the same gradient as min over heads, at about the cost of one differentiated slice instead of M.
    Returns (loss (B,), winner index (B,), all candidate losses (B, M)).
    """
    all_losses = jax.lax.stop_gradient(
        per_image_loss(predict(jax.lax.stop_gradient(volume_h), jax.lax.stop_gradient(rotations), ctf,
                               None if shifts_px is None else jax.lax.stop_gradient(shifts_px)), target, mask, kind)
    )
    winner = jnp.argmin(all_losses, axis=1)
    best_rot = jnp.take_along_axis(rotations, winner[:, None, None, None], axis=1)[:, 0]
    best_shift = None if shifts_px is None else jnp.take_along_axis(shifts_px, winner[:, None, None], axis=1)[:, 0]
    loss = per_image_loss(predict(volume_h, best_rot, ctf, best_shift), target, mask, kind)
    return loss, winner, all_losses


def search_losses(volume_h: jax.Array, rotations: jax.Array, ctf: jax.Array, target: jax.Array,
                  mask: jax.Array) -> jax.Array:
    """Gaussian losses of B images at G shared rotations, (G, 3, 3) -> (B, G), forward only.

    The G slices do not depend on the image, so with w the mask weights the loss expands as
    0.5 * [sum w y^2 - 2 (w y c) . s + (w c^2) . s^2]: two (B, P) x (P, G) matrix products instead
    of B x G slices, which makes a global search over thousands of poses cheap.
    """
    size = ctf.shape[-1]
    slices = slicing.extract_slices(jax.lax.stop_gradient(volume_h), rotations, size).reshape(rotations.shape[0], -1)
    # materialise the slices: XLA:CPU otherwise fuses the gather into both products and redoes it (4x slower)
    slices = jax.lax.optimization_barrier(slices)
    w = (mask.astype(target.dtype) / jnp.sum(mask)).reshape(1, -1)
    y, c = target.reshape(target.shape[0], -1), ctf.reshape(ctf.shape[0], -1)
    cross = (w * y * c) @ slices.T
    power = (w * c * c) @ (slices * slices).T
    return 0.5 * (jnp.sum(w * y * y, axis=1, keepdims=True) - 2.0 * cross + power)
