"""Chest-radiograph-like images drawn from a synthetic study's findings.

Brightness stands for X-ray attenuation: air is dark, soft tissue grey, bone, fluid and metal
bright. The frontal (PA) view shows dark lung fields with vessel markings, mediastinum and
trachea, a heart whose width over the thoracic width is the cardiothoracic ratio, diaphragm
domes with sharp costophrenic angles, ribs and clavicles. The optional second view is a lateral
projection (heart anterior, spine posterior, posterior costophrenic sulcus lowest).

Every POSITIVE finding is drawn at full strength, an UNCERTAIN one faintly, NEGATIVE and BLANK
ones not at all. The patient's right is on the image's left, as on a real frontal radiograph.
Geometry is in unit coordinates (``u`` left to right, ``v`` top to bottom), so any image size
works; lines and nodules keep at least about one pixel of width.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from camegrad_jax.rrg._synthetic_findings import Finding, StudyFindings
from camegrad_jax.rrg.observations import POSITIVE

_FAINT = 0.4  # strength of an uncertain finding relative to a positive one
_ZONE_V = {"upper": 0.28, "mid": 0.45, "lower": 0.62}
_CTR = (0.56, 0.62, 0.68)  # cardiothoracic ratio by cardiomegaly severity (normal 0.40-0.47)
_CTR_UNCERTAIN = 0.52
_SOFT_TISSUE, _FLUID, _HEART = 0.52, 0.62, 0.72
_METAL = 1.3  # saturates the detector whatever the exposure: pure white after clipping
_AIRSPACE = ("lung_opacity", "consolidation", "pneumonia", "lung_lesion")


@dataclasses.dataclass(frozen=True)
class _Anatomy:
    """Per-study normal variation, drawn once and shared by both views."""

    cx: float  # midline
    half_width: float  # thoracic half-width; the cardiothoracic ratio is relative to it
    base: float  # level of the lateral diaphragm (costophrenic angles)
    dome: float  # height of the diaphragm domes
    ctr: float  # cardiothoracic ratio
    mediastinum: float  # half-width of the upper mediastinum
    phases: tuple[float, float]  # vessel-marking phases, one per lung
    gain: float
    offset: float
    noise: np.ndarray  # (num_views, size, size)


@dataclasses.dataclass(frozen=True)
class _Lung:
    cu: float
    ru: float
    cv: float
    rv: float
    base: float
    q: np.ndarray  # elliptical radius squared: < 1 inside the lung's outline
    alpha: np.ndarray  # lung field opacity, clipped by the diaphragm


def _sample_anatomy(rng: np.random.Generator, size: int, num_views: int) -> _Anatomy:
    return _Anatomy(
        cx=0.5 + 0.01 * rng.standard_normal(),
        half_width=0.39 + 0.012 * rng.standard_normal(),
        base=0.80 + 0.012 * rng.standard_normal(),
        dome=0.075 + 0.008 * rng.standard_normal(),
        ctr=rng.uniform(0.40, 0.47),
        mediastinum=0.062 + 0.004 * rng.standard_normal(),
        phases=(rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)),
        gain=rng.uniform(0.92, 1.08),
        offset=rng.uniform(-0.03, 0.03),
        noise=rng.uniform(0.012, 0.025)
        * rng.standard_normal((num_views, size, size), dtype=np.float32),
    )


def _smooth_step(x: np.ndarray | float, width: float) -> np.ndarray:
    """0 for x <= -width, 1 for x >= width, a linear ramp in between (edges a pixel or two
    wide; cheaper than a sigmoid, which dominated the rendering time)."""
    return np.clip(0.5 + np.asarray(x) / (2.0 * width), 0.0, 1.0)


def _polyline_distance(
    u: np.ndarray, v: np.ndarray, points: list[tuple[float, float]]
) -> np.ndarray:
    dist = np.full(u.shape, np.inf)
    for (u0, v0), (u1, v1) in zip(points[:-1], points[1:], strict=True):
        du, dv = u1 - u0, v1 - v0
        t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(u - u0 - t * du, v - v0 - t * dv))
    return dist


class _View:
    """A canvas in unit coordinates with compositing helpers."""

    def __init__(self, size: int) -> None:
        self.pixel = 1.0 / size
        # float32 halves the rendering time; images are stored as float32 anyway.
        grid = ((np.arange(size) + 0.5) / size).astype(np.float32)
        self.u, self.v = np.meshgrid(grid, grid)
        self.image = np.full((size, size), 0.06, dtype=np.float32)  # air around the patient

    def paint(self, alpha: np.ndarray, value: float | np.ndarray) -> None:
        """Blend towards ``value`` with opacity ``alpha`` (an occluding structure)."""
        self.image = self.image * (1.0 - alpha) + value * alpha

    def add(self, amount: np.ndarray) -> None:
        """Add attenuation (a structure summed with what lies behind it)."""
        self.image = self.image + amount

    def blob(self, cu: float, cv: float, radius: float, power: float = 2.0) -> np.ndarray:
        radius = max(radius, 1.5 * self.pixel)
        return np.exp(-((np.hypot(self.u - cu, self.v - cv) / radius) ** power))

    def line(
        self, points: list[tuple[float, float]], half_width: float, min_pixels: float = 0.6
    ) -> np.ndarray:
        half_width = max(half_width, min_pixels * self.pixel)
        distance = _polyline_distance(self.u, self.v, points)
        return _smooth_step(half_width - distance, 0.5 * self.pixel)


def _strength(f: Finding) -> float:
    return 1.0 if f.state == POSITIVE else _FAINT


def _image_sides(f: Finding) -> tuple[int, ...]:
    """Image-side signs: the patient's right lung is on the image's left (-1)."""
    return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}[f.side]


def _cardiothoracic_ratio(a: _Anatomy, findings: StudyFindings) -> float:
    f = findings.finding("cardiomegaly")
    if f is None:
        return a.ctr
    return _CTR[f.severity] if f.state == POSITIVE else _CTR_UNCERTAIN


def _expose(view: _View, a: _Anatomy, noise: np.ndarray) -> np.ndarray:
    return np.clip(a.gain * view.image + a.offset + noise, 0.0, 1.0)


# --- frontal view ---------------------------------------------------------------------------


def _draw_lungs(view: _View, a: _Anatomy) -> dict[int, _Lung]:
    u, v = view.u, view.v
    scale = a.half_width / 0.39
    lungs = {}
    for side in (-1, 1):
        cu, ru, cv, rv = a.cx + side * 0.225 * scale, 0.165 * scale, 0.56, 0.46
        base = a.base - (0.025 if side < 0 else 0.0)  # the right hemidiaphragm sits higher
        q = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
        # The dome cuts the tall ellipse, leaving an acute costophrenic angle laterally.
        dome = base - a.dome * (1.0 - np.clip(((u - cu) / ru) ** 2, 0.0, 1.0))
        alpha = _smooth_step(1.0 - q, 0.04) * _smooth_step(dome - v, 0.008)
        hilum_u, hilum_v = a.cx + side * 0.12, 0.47
        r = np.hypot(u - hilum_u, v - hilum_v)
        theta = np.arctan2(v - hilum_v, u - hilum_u)
        vessels = 0.5 + 0.5 * np.cos(13 * theta + 8 * r + a.phases[(side + 1) // 2])
        view.paint(alpha, 0.2 + 0.07 * np.exp(-r / 0.2) * vessels)
        lungs[side] = _Lung(cu, ru, cv, rv, base, q, alpha)
    return lungs


_RIB_SPACING = 0.072


def _rib_level(k: int, u: np.ndarray | float, cx: float) -> np.ndarray | float:
    """Centre line of posterior rib arc ``k`` (rib number ``k + 2``), highest over mid-lung."""
    return 0.12 + _RIB_SPACING * k + 1.3 * (np.abs(u - cx) - 0.26) ** 2


def _draw_bones(
    view: _View, a: _Anatomy, lungs: dict[int, _Lung], fracture: Finding | None
) -> None:
    u, v = view.u, view.v
    inside_chest = _smooth_step(a.half_width + 0.03 - np.abs(u - a.cx), 0.01)
    # Distance to the nearest of nine evenly spaced arcs, in one pass over the image.
    offset = v - _rib_level(0, u, a.cx)
    nearest = np.clip(np.round(offset / _RIB_SPACING), 0, 8)
    ribs = _smooth_step(0.011 - np.abs(offset - _RIB_SPACING * nearest), 0.5 * view.pixel)
    if fracture is not None:
        k = fracture.rib - 2
        side, s = _image_sides(fracture)[0], _strength(fracture)
        gap_u = a.cx + side * 0.3
        # The lateral fragment is displaced downwards, a gap separates the fragments and a
        # callus forms beside it (which keeps the break visible at 64 pixels).
        rib = (nearest == k) & (side * (u - gap_u) > -0.025)
        level = _rib_level(k, u, a.cx)
        displaced = _smooth_step(0.011 - np.abs(v - level - 0.02), 0.5 * view.pixel)
        broken = np.where(side * (u - gap_u) > 0, displaced, 0.0)
        broken = broken * (1.0 - s * _smooth_step(0.025 - np.abs(u - gap_u), view.pixel))
        ribs = np.where(rib, broken, ribs)
        callus_u = gap_u + side * 0.035
        view.add(0.2 * s * view.blob(callus_u, _rib_level(k, callus_u, a.cx) + 0.02, 0.025))
    ribs = ribs * inside_chest
    lung_alpha = np.maximum(lungs[-1].alpha, lungs[1].alpha)
    view.add(ribs * (0.03 + 0.05 * lung_alpha))
    for side in (-1, 1):
        view.add(0.16 * view.line([(a.cx + side * 0.04, 0.13), (a.cx + side * 0.3, 0.085)], 0.012))


def _draw_frontal_finding(view: _View, f: Finding, lungs: dict[int, _Lung], a: _Anatomy) -> None:
    rng = np.random.default_rng(f.seed)
    s = _strength(f)
    u, v = view.u, view.v
    if f.name in _AIRSPACE:
        for side in _image_sides(f):
            lung = lungs[side]
            cu = lung.cu + side * 0.02 + 0.02 * rng.standard_normal()
            cv = _ZONE_V[f.zone] + 0.02 * rng.standard_normal()
            if f.name == "lung_opacity":
                shape, amp = view.blob(cu, cv, 0.065 + 0.015 * f.severity), 0.2 + 0.05 * f.severity
            elif f.name == "consolidation":  # denser, sharper edged
                shape, amp = view.blob(cu, cv, 0.08 + 0.015 * f.severity, power=4), 0.38
            elif f.name == "pneumonia":  # patchy
                centres = rng.uniform(-0.07, 0.07, size=(7, 2))
                shape = np.max([view.blob(cu + du, cv + dv, 0.03) for du, dv in centres], axis=0)
                amp = 0.24
            else:  # lung lesion: small, round, well defined
                shape, amp = view.blob(cu, cv, (0.022, 0.03, 0.05)[f.severity], power=6), 0.36
            view.add(s * amp * shape * lung.alpha)
    elif f.name == "atelectasis":  # plate-like basal band
        for side in _image_sides(f):
            lung = lungs[side]
            level = lung.base - a.dome - 0.04 + 0.01 * rng.standard_normal()
            plate = [(lung.cu - 0.08, level), (lung.cu + 0.08, level + 0.015 * side)]
            view.add(s * 0.3 * view.line(plate, 0.01 + 0.004 * f.severity) * lung.alpha)
    elif f.name == "edema":  # bilateral perihilar haze
        for side in (-1, 1):
            haze = view.blob(a.cx + side * 0.13, 0.47, 0.12 + 0.03 * f.severity)
            view.add(s * (0.12 + 0.05 * f.severity) * haze * lungs[side].alpha)
    elif f.name == "pleural_effusion":  # fluid at the base, meniscus climbing laterally
        height = (0.07, 0.13, 0.22)[f.severity] if f.state == POSITIVE else 0.05
        for side in _image_sides(f):
            lung = lungs[side]
            lateral = np.clip(0.5 + side * (u - lung.cu) / (2 * lung.ru), 0.0, 1.0)
            top = lung.base - height - 0.1 * lateral**2
            view.paint(s * _smooth_step(v - top, 0.012) * lung.alpha, _FLUID)
    elif f.name == "pneumothorax":  # apical air without markings, edged by the pleural line
        lung = lungs[_image_sides(f)[0]]
        shrink = (0.86, 0.76, 0.64)[f.severity]
        cu = lung.cu - np.sign(lung.cu - a.cx) * (1 - shrink) * lung.ru * 0.5
        cv = lung.cv + (1 - shrink) * lung.rv * 0.5
        radius = np.hypot((u - cu) / (shrink * lung.ru), (v - cv) / (shrink * lung.rv))
        apical = _smooth_step(0.58 - v, 0.02) * lung.alpha
        view.paint(s * _smooth_step(radius - 1.0, 0.02) * apical, 0.1)
        edge = np.abs(radius - 1.0) * shrink * lung.ru
        view.add(
            s * 0.25 * _smooth_step(max(0.006, 0.6 * view.pixel) - edge, 0.5 * view.pixel) * apical
        )
    elif f.name == "pleural_other":  # thickening along the lateral or apical pleura
        side = _image_sides(f)[0]
        lung = lungs[side]
        depth = (0.025 + 0.008 * f.severity) / lung.ru
        rim = _smooth_step(np.sqrt(lung.q) - (1.0 - depth), 0.02) * lung.alpha
        lateral = _smooth_step(side * (u - lung.cu), 0.02)
        if f.zone == "upper":
            level = _smooth_step(0.38 - v, 0.03)
        else:
            level = _smooth_step(0.12 - np.abs(v - 0.45), 0.03)
        view.paint(s * rim * lateral * level, 0.58)


def _draw_frontal_device(view: _View, device: str, cx: float) -> None:
    lines = {
        "endotracheal_tube": [[(cx, -0.02), (cx, 0.27)]],
        "nasogastric_tube": [
            [(cx + 0.005, -0.02), (cx + 0.01, 0.55), (cx + 0.06, 0.8), (cx + 0.16, 0.9)]
        ],
        "central_line": [
            [(cx - 0.16, -0.02), (cx - 0.09, 0.12), (cx - 0.045, 0.22), (cx - 0.03, 0.36)]
        ],
        "pacemaker": [
            [(cx + 0.24, 0.17), (cx + 0.1, 0.2), (cx + 0.02, 0.32), (cx, 0.5), (cx + 0.06, 0.68)],
            [(cx + 0.24, 0.17), (cx + 0.08, 0.22), (cx - 0.01, 0.4), (cx - 0.03, 0.56)],
        ],
        "sternotomy_wires": [
            [(cx - 0.015, level), (cx + 0.015, level + 0.01)] for level in np.linspace(0.3, 0.56, 5)
        ],
    }[device]
    half_width = 0.016 if device == "sternotomy_wires" else 0.008
    for points in lines:
        # At least two pixels wide: thinner lines would not survive the blur as metal-bright.
        view.paint(view.line(points, half_width, min_pixels=1.0), _METAL)
    if device == "pacemaker":
        generator = (np.abs(view.u - cx - 0.27) < 0.045) & (np.abs(view.v - 0.16) < 0.03)
        view.paint(generator.astype(float), _METAL)


def _render_frontal(
    a: _Anatomy, findings: StudyFindings, size: int, noise: np.ndarray
) -> np.ndarray:
    view = _View(size)
    u, v = view.u, view.v
    body_half_width = a.half_width + 0.08 - 0.22 * _smooth_step(0.06 - v, 0.02)  # narrow neck
    view.paint(_smooth_step(body_half_width - np.abs(u - a.cx), 0.01), _SOFT_TISSUE)
    lungs = _draw_lungs(view, a)
    _draw_bones(view, a, lungs, findings.finding("fracture"))
    # Lung and pleural findings lie behind the mediastinum and heart; devices lie in front.
    for f in findings.present:
        if f.name not in (
            "support_devices",
            "cardiomegaly",
            "enlarged_cardiomediastinum",
            "fracture",
        ):
            _draw_frontal_finding(view, f, lungs, a)
    mediastinum = a.mediastinum
    widened = findings.finding("enlarged_cardiomediastinum")
    if widened is not None:
        mediastinum += (0.045, 0.06, 0.075)[widened.severity] * _strength(widened)
    upper = _smooth_step(0.6 - v, 0.03)
    view.paint(_smooth_step(mediastinum - np.abs(u - a.cx), 0.01) * upper, 0.6)
    view.paint(view.line([(a.cx, -0.05), (a.cx, 0.3)], 0.016), 0.3)  # trachea
    heart_half_width = _cardiothoracic_ratio(a, findings) * a.half_width
    heart_u = a.cx + 0.05  # the heart lies mostly in the patient's left chest
    heart = ((u - heart_u) / heart_half_width) ** 2 + ((v - 0.665) / 0.13) ** 2
    view.paint(_smooth_step(1.0 - heart, 0.06), _HEART)
    devices = findings.finding("support_devices")
    for device in devices.devices if devices is not None else ():
        _draw_frontal_device(view, device, a.cx)
    return _expose(view, a, noise)


# --- lateral view ---------------------------------------------------------------------------


def _draw_lateral_device(view: _View, device: str) -> None:
    lines = {
        "endotracheal_tube": [[(0.42, -0.02), (0.48, 0.27)]],
        "nasogastric_tube": [[(0.45, -0.02), (0.6, 0.4), (0.62, 0.7), (0.5, 0.92)]],
        "central_line": [[(0.52, -0.02), (0.43, 0.2), (0.41, 0.33)]],
        "pacemaker": [[(0.22, 0.18), (0.3, 0.35), (0.33, 0.62)]],
        "sternotomy_wires": [
            [(0.165, level), (0.2, level + 0.01)] for level in np.linspace(0.22, 0.52, 5)
        ],
    }[device]
    for points in lines:
        view.paint(view.line(points, 0.008, min_pixels=1.0), _METAL)
    if device == "pacemaker":
        generator = (np.abs(view.u - 0.22) < 0.025) & (np.abs(view.v - 0.17) < 0.035)
        view.paint(generator.astype(float), _METAL)


def _render_lateral(
    a: _Anatomy, findings: StudyFindings, size: int, noise: np.ndarray
) -> np.ndarray:
    view = _View(size)
    u, v = view.u, view.v
    view.paint(_smooth_step(0.36 - np.abs(u - 0.5), 0.01) * _smooth_step(v - 0.03, 0.02), 0.5)
    diaphragm = a.base - 0.08 + 0.14 * np.clip((u - 0.2) / 0.6, 0.0, 1.0) ** 2
    lung = _smooth_step(1.0 - ((u - 0.5) / 0.32) ** 2 - ((v - 0.5) / 0.42) ** 2, 0.04)
    lung = lung * _smooth_step(diaphragm - v, 0.008)
    view.paint(lung, 0.22 + 0.05 * view.blob(0.5, 0.45, 0.12))
    view.paint(view.line([(0.42, -0.05), (0.5, 0.38)], 0.02), 0.3)  # trachea
    vertebrae = (np.abs(u - 0.81) < 0.05) & (np.mod(v, 0.07) > 0.012) & (v > 0.05)
    view.paint(vertebrae.astype(float), 0.7)
    view.add(0.15 * view.line([(0.17, 0.15), (0.19, 0.6)], 0.01))  # sternum
    heart = ((u - 0.37) / (0.33 * _cardiothoracic_ratio(a, findings))) ** 2
    view.paint(_smooth_step(1.0 - heart - ((v - 0.63) / 0.15) ** 2, 0.06), 0.7)

    for f in findings.present:
        rng = np.random.default_rng([f.seed, 1])  # own stream: the frontal placement is unchanged
        s = _strength(f)
        if f.name == "enlarged_cardiomediastinum":  # fills the retrosternal clear space
            mass = view.blob(0.34, 0.33, 0.06 + 0.02 * f.severity, power=4)
            view.paint(s * mass, 0.62)
        elif f.name in _AIRSPACE:  # both lungs project here: only the level is kept
            cu, cv = rng.uniform(0.38, 0.62), _ZONE_V[f.zone] + 0.02 * rng.standard_normal()
            radius, power, amp = {
                "lung_opacity": (0.065 + 0.015 * f.severity, 2, 0.18),
                "consolidation": (0.08, 4, 0.32),
                "pneumonia": (0.07, 2, 0.18),
                "lung_lesion": ((0.022, 0.03, 0.05)[f.severity], 6, 0.3),
            }[f.name]
            view.add(s * amp * view.blob(cu, cv, radius, power) * lung)
        elif f.name == "edema":
            haze = view.blob(0.5, 0.47, 0.14 + 0.03 * f.severity)
            view.add(s * (0.12 + 0.05 * f.severity) * haze * lung)
        elif f.name == "atelectasis":
            level = a.base - 0.1
            view.add(s * 0.25 * view.line([(0.45, level), (0.7, level + 0.03)], 0.01) * lung)
        elif f.name == "pleural_effusion":  # fluid collects in the posterior sulcus
            height = (0.05, 0.11, 0.2)[f.severity] if f.state == POSITIVE else 0.04
            height *= 1.5 if f.side == "bilateral" else 1.0
            posterior = np.clip((u - 0.45) / 0.35, 0.0, 1.0)
            top = diaphragm - height - 0.08 * posterior**2
            view.paint(s * _smooth_step(v - top, 0.012) * lung * (posterior > 0), _FLUID)
        elif f.name == "support_devices":
            for device in f.devices:
                _draw_lateral_device(view, device)
    return _expose(view, a, noise)


def _blur(image: np.ndarray) -> np.ndarray:
    """3x3 binomial blur: the soft focus of a radiograph, and anti-aliasing of thin lines."""
    padded = np.pad(image, 1, mode="edge")
    rows = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]


def render_views(
    findings: StudyFindings, rng: np.random.Generator, *, image_size: int = 64, num_views: int = 1
) -> np.ndarray:
    """Draw a study: ``float32 (num_views, image_size, image_size)`` in [0, 1].

    View 0 is frontal; view 1 (when ``num_views == 2``) is lateral. ``rng`` draws the normal
    anatomy and noise; each finding's placement comes from its own ``seed``, so the same ``rng``
    state with one finding added or removed changes only that finding's pixels.
    """
    if num_views not in (1, 2):
        raise ValueError(f"`num_views` should be 1 or 2. Found `{num_views}`.")
    if image_size < 16:
        raise ValueError(f"`image_size` should be at least 16. Found `{image_size}`.")
    anatomy = _sample_anatomy(rng, image_size, num_views)
    renderers = (_render_frontal, _render_lateral)[:num_views]
    views = [
        _blur(render(anatomy, findings, image_size, noise))
        for render, noise in zip(renderers, anatomy.noise, strict=True)
    ]
    return np.stack(views).astype(np.float32)
