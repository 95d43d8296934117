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

import functools

import jax
import jax.numpy as jnp

from jaxcryo import fourier, slicing


def images_to_hartley(images: jax.Array) -> jax.Array:
    """(B, L, L) real images -> (B, L, L) Hartley coefficients scaled by 1/L."""
    return fourier.ht(images) / images.shape[-1]


# the image model is jitted where it is defined: the steps inline it, and a call on its own (tests,
# floors, evaluation) compiles one program instead of each of its ops
@jax.jit
def shift_hartley(h: jax.Array, shifts_px: jax.Array) -> jax.Array:
    """Translate images given in Hartley form: (..., L, L), shifts (..., 2) as (x, y) pixels.

    f(x - t) <-> F(k) exp(-2 pi i k.t / L); in Hartley terms with c = cos, s = sin of 2 pi k.t / L:
    H'(k) = H(k) c + H(-k) s.
    """
    phase = fourier.shift_angles(h.shape[-1], shifts_px.astype(h.dtype))
    return h * jnp.cos(phase) + fourier.flip_frequencies(h) * jnp.sin(phase)


@jax.jit
def predict(volume_h: jax.Array, rotations: jax.Array, ctf: jax.Array, shifts_px: jax.Array | None = None) -> jax.Array:
    """(D,D,D) volume, (B, ..., 3, 3) rotations, (B, L, L) CTF -> (B, ..., L, L) predicted Hartley images."""
    size = ctf.shape[-1]
    slices = slicing.extract_slices(volume_h, rotations, size)
    extra = slices.ndim - ctf.ndim
    pred = slices * ctf.reshape(ctf.shape[:1] + (1,) * extra + ctf.shape[1:])
    if shifts_px is not None:
        pred = shift_hartley(pred, shifts_px)
    return pred


@functools.partial(jax.jit, static_argnames=("kind",))
def loss_at(volume_h: jax.Array, rotations: jax.Array, ctf: jax.Array, target: jax.Array, mask: jax.Array,
            kind: str = "gaussian", shifts_px: jax.Array | None = None) -> jax.Array:
    """(B, ..., 3, 3) poses with (B, ..., 2) shifts -> (B, ...) losses against (B, L, L) targets:
    ``per_image_loss(predict(volume_h, rotations, ctf, shifts_px), target, mask, kind)``, computed with
    the target moved back by each shift instead of each slice moved. A shift turns every pair of
    frequencies (k, -k) by an angle, so both give the same loss on the disc except at its two Nyquist
    points, (-L/2, 0) and (0, -L/2), which pair with themselves. Forward, XLA:CPU (jaxlib 0.10) shifts a
    slice by materialising its eight trilinear corners: moving the target is 5x faster there (B = 256,
    15 poses per image, 64 px: 0.78 -> 0.14 s)."""
    pred = predict(volume_h, rotations, ctf)
    if shifts_px is not None:
        extra = pred.ndim - target.ndim
        target = shift_hartley(target.reshape(target.shape[:1] + (1,) * extra + target.shape[1:]), -shifts_px)
    return per_image_loss(pred, target, mask, kind)


def best_shifts(pred: jax.Array, target: jax.Array, mask: jax.Array, max_shift_px: float,
                prior_std_px: float | None = None) -> jax.Array:
    """The in-plane shift (B, 2) as (x, y) pixels, |t_x|, |t_y| <= max_shift_px, maximising the posterior
    of shift(pred, t) given (B, L, L) Hartley targets: Gaussian likelihood (unit noise variance per
    coefficient) times a Gaussian prior N(0, prior_std_px^2) per axis (default max_shift_px / 2).

    Only the cross term of the likelihood depends on t: sum_mask Re[F_y(k) conj(F_p(k)) exp(2 pi i k.t/L)],
    an inverse DFT, so every integer shift is scored by one FFT; the peak is refined by a parabola. The
    prior also settles ties: an empty prediction gives t = 0, not a corner of the box.
    """
    size = target.shape[-1]
    g = fourier.hartley_to_fourier(target) * jnp.conj(fourier.hartley_to_fourier(pred)) * mask
    # on the centred grid: index L//2 + t holds the log-likelihood of shift t (ifft2 divides by L^2)
    cc = size**2 * jnp.fft.fftshift(jnp.fft.ifft2(jnp.fft.ifftshift(g, axes=(-2, -1))), axes=(-2, -1)).real
    t = (jnp.arange(size) - size // 2).astype(cc.dtype)
    sigma = prior_std_px or 0.5 * max_shift_px
    log_prior = -(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2)
    allowed = jnp.abs(t) <= max_shift_px
    cc = jnp.where(allowed[:, None] & allowed[None, :], cc + log_prior, -jnp.inf)
    peak = jnp.argmax(cc.reshape(cc.shape[0], -1), axis=1)
    iy, ix = peak // size, peak % size
    rows = jnp.arange(cc.shape[0])

    def vertex(minus, centre, plus):  # parabola through 3 points; none at the edge of the allowed box
        ok = jnp.isfinite(minus) & jnp.isfinite(plus)
        curvature = jnp.where(ok, minus - 2 * centre + plus, -1.0)
        return jnp.where(ok & (curvature < 0), jnp.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5), 0.0)

    at = lambda y, x: cc[rows, jnp.clip(y, 0, size - 1), jnp.clip(x, 0, size - 1)]  # noqa: E731
    centre = at(iy, ix)
    dx = vertex(at(iy, ix - 1), centre, at(iy, ix + 1))
    dy = vertex(at(iy - 1, ix), centre, at(iy + 1, ix))
    return jnp.stack([ix - size // 2 + dx, iy - size // 2 + dy], axis=-1).astype(target.dtype)


def weighted_sum(x: jax.Array, weight: jax.Array) -> jax.Array:
    """sum over the last two axes of x * weight: (..., L, L), (L, L) -> (...).

    Written as a matrix-vector product on purpose: XLA:CPU (jaxlib 0.10) turns a reduce fed by the
    slicing gather into a fusion that first materialises every trilinear corner of every slice, 6-7x
    slower than the gather alone (``experiments.bench --what=slices``); a dot keeps the gather fused."""
    return x.reshape(x.shape[:-2] + (-1,)) @ weight.reshape(-1).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("kind",))
def per_image_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, kind: str = "gaussian") -> jax.Array:
    """(B, ..., L, L) predictions vs (B, L, L) targets over a (L, L) mask -> (B, ...) losses."""
    extra = pred.ndim - target.ndim
    target = target.reshape(target.shape[:1] + (1,) * extra + target.shape[1:])
    weight = mask.astype(pred.dtype) / jnp.sum(mask)
    if kind == "gaussian":
        return 0.5 * weighted_sum((pred - target) ** 2, weight)
    if kind == "l1_fourier":
        diff = fourier.hartley_to_fourier(pred - target)
        return weighted_sum(jnp.abs(diff), weight)
    raise ValueError(f"unknown loss {kind!r} (expected 'gaussian' or 'l1_fourier')")


def contrast_scale(pred: jax.Array, target: jax.Array, mask: jax.Array, prior_std: float) -> jax.Array:
    """Each image's most likely contrast scale a in target = a * pred + noise: (B, L, L) -> (B,).

    The noise has unit variance per Hartley coefficient (the Gaussian loss's assumption; true for
    normalised or whitened images) and the prior is a ~ N(1, prior_std^2), so
    a = (sum p y + 1 / prior_std^2) / (sum p^2 + 1 / prior_std^2) over the mask: an image with little
    signal keeps a near 1. Clipped to [0.1, 10] so that a stray image cannot flip or blow up its slice.
    """
    m = mask.astype(pred.dtype)
    prior = 1.0 / prior_std**2
    a = (weighted_sum(pred * target, m) + prior) / (weighted_sum(pred * pred, m) + prior)
    return jnp.clip(a, 0.1, 10.0)


def winner_takes_all(volume_h, rotations, ctf, target, mask, kind="gaussian", shifts_px=None, relax: float = 0.0):
    """Per-image loss of the best of M pose candidates, with the gradient of the winner only.

    ``rotations`` (B, M, 3, 3) (and ``shifts_px`` (B, M, 2)). All M candidates are scored forward-only
    (under stop_gradient, one batched slice), then the winner is sliced once more with gradients:
    the same gradient as min over heads, at about the cost of one differentiated slice instead of M.
    ``relax`` > 0 (relaxed winner-takes-all, Rupprecht et al. 2017; beyond the paper) adds each
    losing candidate's loss with weight relax / (M - 1), differentiated for the poses only (the volume
    still learns from the winner alone): a head that never wins still gets a gradient, so none dies.
    Returns (loss (B,), winner index (B,), all candidate losses (B, M)).
    """
    sg = jax.lax.stop_gradient
    n_heads = rotations.shape[1]
    relaxed = relax > 0.0 and n_heads > 1
    # every candidate scored against the frozen volume, once; relaxed, these scores also carry the poses' gradient
    pose = (lambda x: x) if relaxed else sg
    candidates = loss_at(sg(volume_h), pose(rotations), ctf, target, mask, kind, None if shifts_px is None else pose(shifts_px))
    all_losses = sg(candidates)
    winner = jnp.argmin(all_losses, axis=1)
    best_rot = jnp.take_along_axis(rotations, winner[:, None, None, None], axis=1)[:, 0]
    best_shift = None if shifts_px is None else jnp.take_along_axis(shifts_px, winner[:, None, None], axis=1)[:, 0]
    loss = loss_at(volume_h, best_rot, ctf, target, mask, kind, best_shift)
    if relaxed:
        lost = jnp.arange(n_heads)[None, :] != winner[:, None]
        loss = loss + relax / (n_heads - 1) * jnp.sum(jnp.where(lost, candidates, 0.0), axis=1)
    return loss, winner, all_losses


def _in_loop_steps(fn, *rows: jax.Array, steps: int = 2):
    """fn applied to ``rows`` (arrays sharing a leading axis) in ``steps`` loop steps, one buffer out.

    Why a loop: in the matrix products of ``search_losses`` with several versions of each image
    XLA:CPU (jax 0.10) fuses a product's operand into the product and recomputes it for every tile of
    the output, and it drops ``optimization_barrier``; a loop's output is always a buffer of its own.
    The operands are the slices' 8-corner interpolation and the shifted copies of the images: the
    global search of 64 images x 25 copies x 2,048 rotations at 48 px (2-core AMD EPYC) took 0.38 s
    with both fused, 0.16 s with both apart (``experiments.bench --what=slices``).
    """
    n = rows[0].shape[0]
    padded = -(-n // steps) * steps  # the last row repeated up to whole steps; its results are dropped
    split = [jnp.concatenate([x, jnp.repeat(x[-1:], padded - n, axis=0)]).reshape(steps, -1, *x.shape[1:]) for x in rows]
    out = jax.lax.map(lambda xs: fn(*xs), tuple(split))
    return jax.tree.map(lambda o: o.reshape(padded, *o.shape[2:])[:n], out)


@jax.jit
def search_losses(volume_h: jax.Array, rotations: jax.Array, ctf: jax.Array, target: jax.Array,
                  mask: jax.Array) -> jax.Array:
    """Gaussian losses of B images at G shared rotations, (G, 3, 3) -> (B, [S,] G), forward only.

    ``target`` is (B, L, L), or (B, S, L, L) for S versions of each image (e.g. shifted copies, which
    share the image's CTF (B, L, L)). The G slices do not depend on the image, so with w the mask
    weights the loss expands as 0.5 * [sum w y^2 - 2 (w y c) . s + (w c^2) . s^2]: matrix products of
    (B [S], P) x (P, G) instead of B x [S x] G slices, which makes a global search over thousands of
    poses cheap.
    """
    if target.ndim == 3:  # one version of each image: as (B, 1, L, L), a form XLA:CPU does not slow down
        return search_losses(volume_h, rotations, ctf, target[:, None], mask)[:, 0]
    size, b, extra = ctf.shape[-1], target.shape[0], target.shape[1:-2]
    vol = jax.lax.stop_gradient(volume_h)
    w = (mask.astype(target.dtype) / jnp.sum(mask)).reshape(1, -1)
    y, c = target.reshape(b, -1, size * size), ctf.reshape(b, 1, -1)
    if y.shape[1] > 1:  # several versions (shifted copies): slices and weighted images made apart
        slices = _in_loop_steps(lambda r: slicing.extract_slices(vol, r, size).reshape(r.shape[0], -1), rotations)
        weighted = _in_loop_steps(lambda y, c: w * y * c, y, c)
    else:  # one version: the loop would cost 10-25 % at 48-64 px (the barrier is enough here)
        slices = jax.lax.optimization_barrier(slicing.extract_slices(vol, rotations, size).reshape(rotations.shape[0], -1))
        weighted = w * y * c
    cross = (weighted @ slices.T).reshape(b, *extra, -1)
    power = ((w * c[:, 0] ** 2) @ (slices * slices).T).reshape(b, *(1,) * len(extra), -1)
    return 0.5 * (jnp.sum(w * y * y, axis=-1).reshape(b, *extra, 1) - 2.0 * cross + power)
