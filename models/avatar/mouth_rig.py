"""The mouth of a photo avatar as a triangle mesh over its lower face.

``MouthRig`` is built once per avatar from the face's FaceMesh landmarks (or,
without them, from lip and jaw contours guessed from the meta geometry:
``lower_face_from_meta``). Each lower-face landmark, plus fixed anchors outside
the jaw line and along the warped region's border, carries a displacement per
channel of the mouth shape (models/avatar/mouth.py); barycentric interpolation
over their Delaunay triangulation turns them into one dense field per channel.
A frame's map is the fields' weighted sum, applied with ``cv2.remap`` to that
region only (models/avatar/photo.py), so nothing outside it moves. The fields
are split along the lips (the lower lip and jaw drop, the lips close over the
teeth until they meet) and scaled down at build time if any extreme shape would
fold the picture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.avatar.faces import CHIN, N_FACE_POINTS, NOSE_BASE

# FaceMesh landmarks the mouth mesh is built on (mediapipe's canonical face
# model), each contour in image left-to-right order.
UPPER_LIP_INNER_EDGE = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_LIP_INNER_EDGE = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS = (61, 291)
JAW_LINE = (
    *(234, 93, 132, 58, 172, 136, 150, 149, 176, 148),
    152,  # the chin
    *(377, 400, 378, 379, 365, 397, 288, 361, 323, 454),
)
# The mouth-shape channels, in the order of the basis fields: jaw drop (open),
# corners spread (width, -1 narrow .. +1 "ee"), rounding, lips pressed together.
CHANNELS = ("open", "width", "round", "closure")
MIN_JACOBIAN = 0.15  # the warp's smallest area change at the most extreme shapes (no folds)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class LowerFace:
    """Where the mesh's vertices are, in pixels of the frame: FaceMesh landmarks,
    or contours synthesized from the meta geometry."""

    corners: np.ndarray  # (2, 2) outer mouth corners, image left then right
    upper_inner: np.ndarray  # (n, 2) inner edge of the upper lip, corner to corner
    lower_inner: np.ndarray  # (n, 2) inner edge of the lower lip
    jaw: np.ndarray  # (m, 2) jaw line, ear to ear through the chin
    chin: np.ndarray  # (2,)
    nose: np.ndarray  # (2,) base of the nose
    points: np.ndarray  # (k, 2) further vertices (the other landmarks)
    source: str  # "landmarks" or "meta"


def lower_face_from_landmarks(landmarks: np.ndarray) -> LowerFace:
    lm = np.asarray(landmarks, np.float64)[:, :2]
    return LowerFace(
        corners=lm[list(MOUTH_CORNERS)],
        upper_inner=lm[list(UPPER_LIP_INNER_EDGE)],
        lower_inner=lm[list(LOWER_LIP_INNER_EDGE)],
        jaw=lm[list(JAW_LINE)],
        chin=lm[CHIN],
        nose=lm[NOSE_BASE],
        points=lm[:N_FACE_POINTS],
        source="landmarks",
    )


def lower_face_from_meta(m: dict[str, Any]) -> LowerFace:
    """The contours a face without landmarks is assumed to have: parabolic lips
    through the corners and the parting line, an elliptic jaw through the chin."""
    (lx, ly), (rx, ry) = (np.asarray(p, np.float64) for p in (m["left"], m["right"]))
    cx, hw, mid = (lx + rx) / 2, max(2.0, (rx - lx) / 2), (ly + ry) / 2
    parting = float(m["parting"])
    upper = min(float(m.get("upper_lip", parting)), parting)
    nose = float(m.get("nose", upper - max(1.2 * (parting - upper), 0.45 * hw)))
    chin = float(m["chin"])
    u = np.linspace(-1.0, 1.0, 11)
    xs = cx + u * hw
    line = ly + (ry - ly) * (u + 1) / 2
    lens = np.clip(1.0 - u * u, 0.0, 1.0) ** 0.75
    lower = np.stack([xs, line + (parting - mid) * lens], 1)
    upper_c = np.stack([xs, line + (upper - mid) * lens], 1)
    a = np.linspace(0.0, math.pi, 17)
    jaw = np.stack([cx - 2.3 * hw * np.cos(a), mid + (chin - mid) * np.sin(a)], 1)
    # Inner vertices: the outer lip edges and a coarse grid inside the jaw.
    outer = np.concatenate(
        [
            np.stack([xs, upper_c[:, 1] - 0.3 * hw * np.sqrt(lens) - 1], 1),
            np.stack([xs, lower[:, 1] + 0.35 * hw * np.sqrt(lens) + 1], 1),
        ]
    )
    gx, gy = np.meshgrid(np.arange(-2.0, 2.01, 0.4), np.arange(-1.0, 2.01, 0.4))
    grid = np.stack([cx + gx.ravel() * hw, mid + gy.ravel() * hw], 1)
    e = ((grid[:, 0] - cx) / (2.2 * hw)) ** 2 + ((grid[:, 1] - mid) / (chin - mid - 2)) ** 2
    grid = grid[(e < 1.0) & (grid[:, 1] > nose) & (np.abs(grid[:, 1] - mid) > 0.3 * hw)]
    return LowerFace(
        corners=np.array([[lx, ly], [rx, ry]]),
        upper_inner=upper_c,
        lower_inner=lower,
        jaw=jaw,
        chin=np.array([cx, chin]),
        nose=np.array([cx, nose]),
        points=np.concatenate([outer, grid]),
        source="meta",
    )


class MouthRig:
    """The mouth as a triangle mesh over the lower face, precomputed once.

    Every vertex (the lower-face landmarks, a ring of fixed anchors just outside
    the jaw line and along the region's border) gets, for each channel of the
    mouth shape, a displacement: where the output pixel at that vertex samples
    the photo from (``cv2.remap``'s inverse map), per unit of the channel.
    Barycentric interpolation over the Delaunay triangulation turns them into a
    dense field per channel; a frame's map is their weighted sum.

    The lips part along a seam, so the fields are discontinuous there: a vertex
    has one value for the triangles above the seam and one for those below
    (``up``/``low``). Opening pulls everything below the inner edge of the lower
    lip down (the gap that opens is painted as the mouth interior); closing
    brings the upper lip down and the lower one up over whatever the photo shows
    between them (teeth), until they meet at the ``share`` line; with both at
    once the seam of the opening moves up with the lower lip."""

    def __init__(self, face: LowerFace, m: dict[str, Any], size: int) -> None:
        (clx, cly), (crx, cry) = face.corners
        self.source = face.source
        self.cx = cx = float(clx + crx) / 2
        self.hw = hw = max(4.0, float(crx - clx) / 2)
        mid_y = float(cly + cry) / 2
        a_open = float(m.get("max_open", 0.55 * hw))
        self.lip_skip = float(m.get("lip_skip", 1.0))
        self.upper_teeth = float(m.get("upper_teeth", 0.8))
        self.lower_teeth = float(m.get("lower_teeth", 0.5))
        share = float(m.get("upper_share", 0.6))
        spread = float(m.get("spread", 0.12))
        ux, uy = _contour(face.upper_inner)
        lx_, ly_ = _contour(face.lower_inner)

        def lower(x: np.ndarray) -> np.ndarray:
            return np.interp(x, lx_, ly_)

        def upper(x: np.ndarray) -> np.ndarray:
            return np.minimum(np.interp(x, ux, uy), lower(x))

        def meet(x: np.ndarray) -> np.ndarray:
            up = upper(x)
            return up + share * (lower(x) - up)

        lc, uc = float(lower(np.asarray(cx))), float(upper(np.asarray(cx)))
        chin_y, nose_y = float(face.chin[1]), float(face.nose[1])
        ramp = max(2.2 * a_open, 0.6 * (chin_y - lc))
        # The lips part between the inner corners (where the contours end).
        span0, span1 = max(lx_[0], ux[0]), min(lx_[-1], ux[-1])
        icx, ihw = (span0 + span1) / 2, max(2.0, (span1 - span0) / 2)
        cym = (uc + lc) / 2
        bot = chin_y + 0.3 * (chin_y - lc)

        def corner_line(x: np.ndarray) -> np.ndarray:
            return cly + (cry - cly) * np.clip((x - clx) / (crx - clx), 0.0, 1.0)

        def fields(x: np.ndarray, y: np.ndarray, low: bool) -> tuple[np.ndarray, np.ndarray]:
            """(4, n) x and y pulls per unit of each channel at points (x, y), on
            the side of the seams above (``low`` False) or below them."""
            u = (x - cx) / hw
            ui = (x - icx) / ihw
            lens = np.clip(1.0 - ui * ui, 0.0, 1.0) ** 0.75
            jaw = 1.0 - smoothstep(0.9, 2.1, np.abs(u))
            corner = sum(
                np.exp(-((x - kx) ** 2 + (y - ky) ** 2) / (0.5 * hw) ** 2)
                for kx, ky in face.corners
            )
            drop = 0.15 * a_open * corner  # the corners follow the jaw a little
            if low:  # the lower lip rides on the jaw; the chin drops with it
                t = smoothstep(0.0, ramp, y - lower(x))
                drop = drop + a_open * ((1.0 - t) * lens + t * jaw)
            ex = (x - cx) / (1.9 * hw)
            ey = np.where(
                y < cym,
                (y - cym) / max(cym - nose_y + 2, 4.0),
                (y - cym) / (0.8 * (chin_y - cym) + 1),
            )
            mask = 1.0 - smoothstep(0.45, 1.0, np.sqrt(ex * ex + ey * ey))
            mt = meet(x)
            if low:  # the lower lip up to the meeting line, stretched from the chin
                close = np.where(
                    y <= bot, (bot - y) * (lower(x) - mt) / np.maximum(bot - mt, 1.0), 0
                )
            else:  # the upper lip down to it, stretched from the nose
                top = np.minimum(upper(x) - 2.0, nose_y + 0.3 * (corner_line(x) - mid_y))
                close = np.where(
                    y >= top, (y - top) * (upper(x) - mt) / np.maximum(mt - top, 1.0), 0
                )
            zero = np.zeros_like(x)
            bx = np.stack([zero, -spread * (x - cx) * mask, 1.6 * spread * (x - cx) * mask, zero])
            # Rounded lips push forward: a little taller.
            by = np.stack([-drop, zero, -0.08 * (y - upper(x)) * mask, close])
            return bx, by

        # --- vertices: the face, a fixed ring outside the jaw, the region's border
        jaw_pts = face.jaw[face.jaw[:, 1] > nose_y]
        jaw_pts = jaw_pts[np.abs(jaw_pts[:, 0] - cx) < 3.5 * hw]
        bx_j, by_j = fields(jaw_pts[:, 0], jaw_pts[:, 1], True)
        reach = np.sqrt(bx_j**2 + by_j**2).max(axis=0)
        out = jaw_pts - np.array([cx, mid_y - 0.5 * hw])
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        ring = jaw_pts + out * (4.0 + 1.8 * reach)[:, None]
        lips = np.concatenate([face.upper_inner, face.lower_inner, face.corners])
        box_pts = np.concatenate([ring, jaw_pts, lips])
        x0 = int(max(0, math.floor(min(box_pts[:, 0].min(), cx - 2.3 * hw) - 2)))
        x1 = int(min(size, math.ceil(max(box_pts[:, 0].max(), cx + 2.3 * hw) + 3)))
        y0 = int(max(0, math.floor(min(nose_y, mid_y - 0.8 * hw) - 2)))
        y1 = int(min(size, math.ceil(max(box_pts[:, 1].max(), bot) + 3)))
        self.roi = (x0, y0, x1, y1)
        w, h = x1 - x0, y1 - y0
        border = _rect_points(x0, y0, x1 - 1, y1 - 1, step=12.0)

        def inside(p: np.ndarray) -> np.ndarray:
            px, py = p[:, 0], p[:, 1]
            return (px > x0 + 1.5) & (px < x1 - 2.5) & (py > y0 + 1.5) & (py < y1 - 2.5)

        ring = ring[inside(ring)]
        anchors = np.concatenate([border, ring])
        face_pts = np.concatenate([lips, jaw_pts, face.chin[None], face.points])
        face_pts = face_pts[inside(face_pts)]
        verts, n_fixed = _dedupe(anchors, face_pts, 0.75)
        vx, vy = verts[:, 0], verts[:, 1]
        up_x, up_y = fields(vx, vy, False)
        _, low_y = fields(vx, vy, True)
        for arr in (up_x, up_y, low_y):
            arr[:, :n_fixed] = 0.0  # anchors never move

        # --- barycentric coordinates of every pixel of the region, once
        gx, gy = np.meshgrid(
            np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
        )
        interp = _barycentric(verts, gx.ravel(), gy.ravel())
        f32 = np.float32
        below = gy >= lower(gx)
        self.bx = np.stack([interp(v).reshape(h, w) for v in up_x]).astype(f32)
        by_up = np.stack([interp(v).reshape(h, w) for v in up_y])
        by_low = np.stack([interp(v).reshape(h, w) for v in low_y])
        self.by = np.where(below[None], by_low, by_up).astype(f32)  # lips apart as photographed

        # --- the band where the seam moves with the closure (lower lip edge -> meeting line)
        cols = np.arange(x0, x1, dtype=np.float64)
        span = (cols >= span0) & (cols <= span1)
        if not span.any():
            span[np.argmin(np.abs(cols - cx))] = True
        c0, c1 = int(np.flatnonzero(span)[0]), int(np.flatnonzero(span)[-1]) + 1
        ld, md, ud = lower(cols), meet(cols), upper(cols)
        r0 = int(max(0, math.floor(md[c0:c1].min() - y0 - 1)))
        r1 = int(min(h, math.ceil(ld[c0:c1].max() - y0 + 2)))
        self.band = (c0, r0, c1, r1)
        self.band_up = np.ascontiguousarray(by_up[:, r0:r1, c0:c1], f32)
        self.band_low = np.ascontiguousarray(by_low[:, r0:r1, c0:c1], f32)
        self.lower_col = (ld - y0).astype(f32)  # ROI-local y of the lower lip's inner edge
        self.meet_col = (md - y0).astype(f32)
        self.grid_x = np.ascontiguousarray((gx - x0).astype(f32))
        self.grid_y = np.ascontiguousarray((gy - y0).astype(f32))
        # Where the gap can open: corner to corner, down to the opened lower lip.
        cr0 = int(max(0, math.floor(ud[c0:c1].min() - y0 - 2)))
        cr1 = int(min(h, math.ceil(ld[c0:c1].max() + 1.25 * a_open + self.lip_skip - y0 + 4)))
        self.cav = (c0, cr0, c1, cr1)
        ui = (cols - icx) / ihw
        self.u = ui[c0:c1].astype(f32)
        # The lip-gap profile per ROI column: 1 at the mouth centre, 0 at the inner corners.
        self.lens_col = (np.clip(1.0 - ui * ui, 0.0, 1.0) ** 0.75).astype(f32)
        self.gain = self._fit_gain()
        self.max_open = a_open * self.gain

    def _fit_gain(self) -> float:
        """Scale the jaw, width and rounding fields down until no extreme shape
        folds the picture (the closure is exact and left alone)."""
        gain = 1.0
        for _ in range(12):
            worst = min(
                self.min_jacobian((o * (1.0 - 0.4 * r), w, r, c))  # rounded lips open less
                for o in (0.0, 1.0)
                for w in (-1.0, 1.0)
                for r in (0.0, 1.0)
                for c in (0.0, 1.0)
            )
            if worst >= MIN_JACOBIAN:
                break
            for k in range(3):
                self.bx[k] *= 0.9
                self.by[k] *= 0.9
                self.band_up[k] *= 0.9
                self.band_low[k] *= 0.9
            gain *= 0.9
        return gain

    def pulls(self, weights: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dx, dy) of the inverse map over the region for one mouth shape
        (``weights`` per channel, as in ``CHANNELS``) and the seam per band
        column (ROI-local y) below which the lower lip and jaw are."""
        weights = tuple(float(v) for v in weights)
        bx: np.ndarray | None = None
        by: np.ndarray | None = None
        for k, wk in enumerate(weights):
            if abs(wk) < 1e-4:
                continue
            if k in (1, 2):
                bx = self.bx[k] * wk if bx is None else cv2.scaleAdd(self.bx[k], wk, bx)
            by = self.by[k] * wk if by is None else cv2.scaleAdd(self.by[k], wk, by)
        h, w = self.grid_x.shape
        if bx is None:
            bx = np.zeros((h, w), np.float32)
        if by is None:
            by = np.zeros((h, w), np.float32)
        c0, r0, c1, r1 = self.band
        c = float(weights[3])
        lo, me = self.lower_col[c0:c1], self.meet_col[c0:c1]
        seam = lo - c * (lo - me)
        if c > 1e-4:
            up = sum(self.band_up[k] * wk for k, wk in enumerate(weights) if abs(wk) >= 1e-4)
            low = sum(self.band_low[k] * wk for k, wk in enumerate(weights) if abs(wk) >= 1e-4)
            below = self.grid_y[r0:r1, c0:c1] >= seam[None, :]
            by[r0:r1, c0:c1] = np.where(below, low, up)
        return bx, by, seam

    def min_jacobian(self, weights: tuple[float, ...]) -> float:
        """The smallest local area change of the map for ``weights``, away from
        the seams (where the lips part on purpose)."""
        bx, by, seam = self.pulls(weights)
        mx, my = self.grid_x + bx, self.grid_y + by
        side = np.zeros(mx.shape, np.int8)
        c0, _, c1, _ = self.band
        side[:, c0:c1] = self.grid_y[:, c0:c1] >= seam[None, :]
        side[:, c0:c1] += self.grid_y[:, c0:c1] >= self.lower_col[None, c0:c1]
        ok = (side[1:, 1:] == side[:-1, 1:]) & (side[1:, 1:] == side[1:, :-1])
        dxx, dxy = mx[1:, 1:] - mx[1:, :-1], mx[1:, 1:] - mx[:-1, 1:]
        dyx, dyy = my[1:, 1:] - my[1:, :-1], my[1:, 1:] - my[:-1, 1:]
        det = dxx * dyy - dxy * dyx
        return float(det[ok].min()) if ok.any() else 1.0


def _contour(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A lip contour as increasing x and its y (for ``np.interp``)."""
    p = np.asarray(points, np.float64)
    p = p[np.argsort(p[:, 0], kind="stable")]
    x = np.maximum.accumulate(p[:, 0] + np.arange(len(p)) * 1e-6)
    return x, p[:, 1]


def _rect_points(x0: float, y0: float, x1: float, y1: float, step: float) -> np.ndarray:
    nx, ny = max(2, math.ceil((x1 - x0) / step) + 1), max(2, math.ceil((y1 - y0) / step) + 1)
    xs, ys = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    return np.concatenate(
        [
            np.stack([xs, np.full(nx, y0)], 1),
            np.stack([xs, np.full(nx, y1)], 1),
            np.stack([np.full(ny - 2, x0), ys[1:-1]], 1),
            np.stack([np.full(ny - 2, x1), ys[1:-1]], 1),
        ]
    )


def _dedupe(fixed: np.ndarray, others: np.ndarray, tol: float) -> tuple[np.ndarray, int]:
    """``fixed`` then those of ``others`` not within ``tol`` of a point already
    taken; returns the points and how many of them are ``fixed``."""
    pts = [p for p in np.asarray(fixed, np.float64)]
    for p in np.asarray(others, np.float64):
        d = np.abs(np.asarray(pts) - p).max(axis=1)
        if d.min() > tol:
            pts.append(p)
    return np.asarray(pts), len(fixed)


def _barycentric(
    verts: np.ndarray, x: np.ndarray, y: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """A function interpolating per-vertex values at the points (x, y) over the
    Delaunay triangulation of ``verts`` (0 outside it)."""
    from scipy.spatial import Delaunay

    tri = Delaunay(verts)
    pts = np.stack([x, y], 1)
    simplex = tri.find_simplex(pts)
    inside = simplex >= 0
    s = np.where(inside, simplex, 0)
    t = tri.transform[s]
    b = np.einsum("nij,nj->ni", t[:, :2], pts - t[:, 2])
    bary = np.concatenate([b, 1.0 - b.sum(axis=1, keepdims=True)], axis=1)
    bary[~inside] = 0.0
    idx = tri.simplices[s]

    def interp(values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, np.float64)[idx] * bary).sum(axis=1)

    return interp
