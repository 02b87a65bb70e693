"""Images of the realistic (``"v2"``) synthetic generator: varied anatomy, acquisition and signs.

Compared with v1 (``_synthetic_image``), whose normal studies were nearly identical and whose
findings were drawn at a contrast fixed by their label, here:

* the acquisition varies per study (:class:`~._synthetic_v2_findings.Acquisition`): body size
  thickens the soft tissue and greys the lungs, inspiration moves the diaphragm and crowds the
  vessels, rotation tilts the chest and shifts the mediastinum off the spine, AP projections
  magnify the heart, exposure changes contrast, tone curve, brightness and noise;
* the heart's width is the study's true cardiothoracic ratio times the acquisition's
  magnification, so its width overlaps between classes;
* each finding is drawn at its own conspicuity (subtle positives, uncertain findings at any
  visibility), findings the report omits are drawn too, as are findings outside the 14 labels
  and look-alikes (ECG leads, nipple shadows, skin folds, calcified granulomas, a tortuous aorta
  that widens the mediastinal shadow);
* airspace disease next to the heart or the diaphragm erases that border (silhouette sign);
* device paths and tips vary (malpositioned tips included);
* no rendering shortcuts: ribs stay visible through a pneumothorax (only the lung markings
  vanish) and lateral-view fluid thins out smoothly towards the front, with no vertical edge.

The patient's right is on the image's left. Geometry is in unit coordinates, so any image size
works.
"""

from __future__ import annotations

import numpy as np

from camegrad_jax.rrg._synthetic_findings import Finding
from camegrad_jax.rrg._synthetic_image import _blur, _smooth_step, _View
from camegrad_jax.rrg._synthetic_v2_findings import Study

__all__ = ["render_views"]

_ZONE_V = {"upper": 0.3, "mid": 0.46, "lower": 0.6}
_HEART, _FLUID, _METAL = 0.72, 0.62, 1.3
_AIRSPACE = ("lung_opacity", "consolidation", "pneumonia", "lung_lesion")
_SIDE = {"right": (-1,), "left": (1,), "bilateral": (-1, 1), "": (-1,)}


class _Frame:
    """Per-study geometry shared by the findings: midline, lung boxes, diaphragm, heart."""

    def __init__(self, study: Study, rng: np.random.Generator) -> None:
        a = study.acquisition
        incidental = {name for name, _ in study.incidentals}
        self.cx = 0.5 + 0.012 * rng.standard_normal()
        self.shift = 0.6 * a.rotation  # mediastinum off the spine in a rotated patient
        self.half_width = (0.36 + 0.04 * a.inspiration) * (0.96 + 0.04 * a.body)
        deep = a.inspiration + (0.35 if "hyperinflation" in incidental else 0.0)
        self.base = 0.72 + 0.1 * deep + 0.015 * rng.standard_normal()
        self.dome = (0.09 - 0.03 * deep) * (0.5 if "hyperinflation" in incidental else 1.0)
        self.right_raise = 0.025 + (0.07 if "elevated_hemidiaphragm" in incidental else 0.0)
        self.crowding = 1.0 + 0.6 * (1.0 - a.inspiration)
        self.ctr = study.ctr * a.magnification
        self.phase = rng.uniform(0.0, 2 * np.pi, size=2)
        self.soft = 0.44 + 0.25 * (a.body - 1.0)


def _rotated(view: _View, angle: float) -> None:
    """Rotate the canvas's coordinates about its centre (an in-plane tilt of the patient)."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = view.u - 0.5, view.v - 0.5
    view.u, view.v = (
        (0.5 + c * u - s * v).astype(np.float32),
        (0.5 + s * u + c * v).astype(np.float32),
    )


def _lung_masks(view: _View, fr: _Frame) -> dict[int, tuple[np.ndarray, float, float]]:
    u, v = view.u, view.v
    masks = {}
    for side in (-1, 1):
        cu, ru = fr.cx + side * 0.56 * fr.half_width, 0.42 * fr.half_width
        base = fr.base - (fr.right_raise if side < 0 else 0.0)
        cv, rv = 0.13 + 0.5 * (base - 0.13), 0.5 * (base - 0.13) + 0.04
        q = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
        dome = base - fr.dome * (1.0 - np.clip(((u - cu) / ru) ** 2, 0.0, 1.0))
        alpha = _smooth_step(1.0 - q, 0.05) * _smooth_step(dome - v, 0.008)
        masks[side] = (alpha, cu, ru)
    return masks


def _draw_lungs(view: _View, fr: _Frame, study: Study, masks) -> None:
    """Lung fields with vessel markings; a pneumothorax removes the markings, not the ribs."""
    u, v = view.u, view.v
    ptx = study.findings.finding("pneumothorax")
    hidden = next((f for f in study.hidden if f.name == "pneumothorax"), None)
    ptx = ptx or hidden
    for k, side in enumerate((-1, 1)):
        alpha, cu, ru = masks[side]
        hilum_u, hilum_v = fr.cx + side * 0.12, 0.47
        r = np.hypot(u - hilum_u, v - hilum_v)
        theta = np.arctan2(v - hilum_v, u - hilum_u)
        vessels = (0.5 + 0.5 * np.cos(13 * theta + 8 * r + fr.phase[k])) * np.exp(-r / 0.2)
        air = np.zeros_like(u)
        if ptx is not None and side in _SIDE[ptx.side] and _visible(study, ptx) > 0:
            depth = (0.07, 0.11, 0.16)[ptx.severity] * _visible(study, ptx)
            lateral = side * (u - cu) / ru
            apex = _smooth_step(0.45 - v, 0.04)
            air = _smooth_step(lateral - (1.0 - depth / ru * 2.5), 0.02) * apex
            # The visceral pleural line: a thin bright edge where the markings stop.
            edge = np.abs(lateral - (1.0 - depth / ru * 2.5)) < 0.03
            view.add(0.12 * _visible(study, ptx) * edge * apex * alpha)
        lung_value = 0.17 + 0.06 * (fr.soft - 0.44) + 0.07 * fr.crowding * vessels * (1.0 - air)
        view.paint(alpha, lung_value - 0.05 * air)


def _visible(study: Study, f: Finding) -> float:
    """A reported finding's conspicuity; an unreported (hidden) one is fully visible."""
    if any(h is f for h in study.hidden):
        return 1.0
    return study.visibility(f.name)


def _draw_ribs(view: _View, fr: _Frame, study: Study, masks, rng: np.random.Generator) -> None:
    u, v = view.u, view.v
    spacing = 0.062 + 0.012 * (fr.base - 0.72) / 0.1
    offset = v - (0.12 + 1.3 * (np.abs(u - fr.cx) - 0.26) ** 2)
    nearest = np.clip(np.round(offset / spacing), 0, 9)
    ribs = _smooth_step(0.010 - np.abs(offset - spacing * nearest), 0.5 * view.pixel)
    fracture = study.findings.finding("fracture")
    fracture = fracture or next((f for f in study.hidden if f.name == "fracture"), None)
    if fracture is not None:
        side, s = _SIDE[fracture.side][0], _visible(study, fracture)
        gap_u = fr.cx + side * 0.28
        rib = nearest == fracture.rib - 2
        gap = _smooth_step(0.02 - np.abs(u - gap_u), view.pixel) * rib
        ribs = ribs * (1.0 - s * gap)
        level = 0.12 + spacing * (fracture.rib - 2) + 1.3 * (0.28 - 0.26) ** 2
        view.add(0.18 * s * view.blob(gap_u + side * 0.03, level, 0.02))
    inside = _smooth_step(fr.half_width + 0.04 - np.abs(u - fr.cx), 0.01)
    osteopenic = any(name == "osteopenia" for name, _ in study.incidentals)
    lung = np.maximum(masks[-1][0], masks[1][0])
    view.add(ribs * inside * (0.03 + 0.05 * lung) * (0.5 if osteopenic else 1.0))
    for side in (-1, 1):  # clavicles
        view.add(0.15 * view.line([(fr.cx + side * 0.04, 0.13), (fr.cx + side * 0.3, 0.08)], 0.012))
    if any(name == "cervical_rib" for name, _ in study.incidentals):
        view.add(0.12 * view.line([(fr.cx - 0.03, 0.1), (fr.cx - 0.12, 0.115)], 0.008))


def _airspace(view: _View, f: Finding, fr: _Frame, masks, s: float, silhouette: bool) -> None:
    rng = np.random.default_rng(f.seed)
    for side in _SIDE[f.side]:
        alpha, cu, _ = masks[side]
        zone = f.zone or "lower"
        u0 = cu + side * 0.02 + 0.025 * rng.standard_normal()
        v0 = _ZONE_V[zone] + 0.025 * rng.standard_normal()
        if silhouette and zone in ("mid", "lower"):
            # Next to the heart border (mid) or on the diaphragm (lower): the sign's position.
            u0 = fr.cx + fr.shift + side * (fr.ctr * fr.half_width + 0.01) if zone == "mid" else u0
            v0 = 0.62 if zone == "mid" else fr.base - fr.dome - 0.02
        if f.name == "lung_opacity":
            shape, amp = view.blob(u0, v0, 0.06 + 0.015 * f.severity), 0.16 + 0.04 * f.severity
        elif f.name == "consolidation":
            shape, amp = view.blob(u0, v0, 0.075 + 0.015 * f.severity, power=4), 0.34
        elif f.name == "pneumonia":
            centres = rng.uniform(-0.07, 0.07, size=(6, 2))
            shape = np.max([view.blob(u0 + du, v0 + dv, 0.03) for du, dv in centres], axis=0)
            amp = 0.22
        else:  # lung lesion
            shape = view.blob(u0, v0, (0.018, 0.026, 0.045)[f.severity], power=6)
            amp = 0.32
        if silhouette:
            # Same density as the heart or diaphragm it touches: the border between them goes.
            value = _HEART if zone == "mid" else 0.6
            view.paint(np.clip(s * 1.2 * shape, 0.0, 0.9), value)
        else:
            view.add(s * amp * shape * alpha)


def _draw_finding(view: _View, f: Finding, fr: _Frame, masks, s: float) -> None:
    u, v = view.u, view.v
    rng = np.random.default_rng([f.seed, 7])
    if f.name == "atelectasis":
        for side in _SIDE[f.side or "bilateral"]:
            alpha, cu, _ = masks[side]
            level = fr.base - fr.dome - 0.05 + 0.015 * rng.standard_normal()
            plate = [(cu - 0.08, level), (cu + 0.08, level + 0.02 * rng.standard_normal())]
            view.add(s * 0.28 * view.line(plate, 0.009 + 0.004 * f.severity) * alpha)
    elif f.name == "edema":
        for side in (-1, 1):
            haze = view.blob(fr.cx + side * 0.13, 0.47, 0.12 + 0.03 * f.severity)
            view.add(s * (0.1 + 0.05 * f.severity) * haze * masks[side][0])
    elif f.name == "pleural_effusion":
        height = (0.06, 0.12, 0.2)[f.severity] * (0.4 + 0.6 * s)
        for side in _SIDE[f.side or "bilateral"]:
            alpha, cu, ru = masks[side]
            lateral = np.clip(0.5 + side * (u - cu) / (2 * ru), 0.0, 1.0)
            top = fr.base - height - 0.08 * lateral**2
            view.paint(min(1.0, 0.3 + s) * _smooth_step(v - top, 0.015) * alpha, _FLUID)
    elif f.name == "pleural_other":
        side = _SIDE[f.side][0]
        alpha, cu, ru = masks[side]
        rim = _smooth_step(side * (u - cu) - 0.8 * ru, 0.02) * alpha
        level = (
            _smooth_step(0.36 - v, 0.03)
            if f.zone == "upper"
            else _smooth_step(0.12 - np.abs(v - 0.45), 0.03)
        )
        view.paint(s * rim * level, 0.56)


def _device_paths(device: str, tip: str, variant: str, fr: _Frame, jitter: np.ndarray):
    cx = fr.cx + fr.shift
    j = jitter
    carina = 0.33
    if device == "endotracheal_tube":
        end = {"standard": carina - 0.05, "low": carina + 0.02, "high": 0.12}[tip] + 0.01 * j[0]
        bend = 0.03 if tip == "low" else 0.0
        return [[(cx + 0.005 * j[1], -0.02), (cx, end - 0.03), (cx - bend, end)]]
    if device == "nasogastric_tube":
        start = [(cx + 0.01, -0.02), (cx + 0.01 + 0.005 * j[0], 0.5)]
        if tip == "stomach":
            return [start + [(cx + 0.06, fr.base + 0.02), (cx + 0.15 + 0.03 * j[1], 0.9)]]
        if tip == "esophagus":
            return [start + [(cx + 0.02, fr.base - 0.08)]]
        return [start[:1] + [(cx + 0.03, 0.3), (cx - 0.03, 0.36), (cx + 0.02, 0.4), (cx, 0.3)]]
    if device == "central_line":
        side = -1 if variant.startswith("right") else 1
        entry = (cx + side * 0.3, 0.05) if "jugular" not in variant else (cx + side * 0.1, -0.02)
        if "picc" in variant:
            entry = (0.02, 0.22)
        end = {
            "svc": (cx - 0.04, 0.38),
            "cavoatrial": (cx - 0.04, 0.48),
            "right_atrium": (cx - 0.05, 0.56),
            "brachiocephalic": (cx + 0.15 * side * -1, 0.2),
        }[tip]
        mid = (cx + side * 0.08 + 0.01 * j[0], 0.2)
        return [[entry, mid, (end[0] + 0.01 * j[1], end[1])]]
    if device == "chest_tube":
        side = 1 if variant == "left-sided" else -1
        end = (fr.cx + side * 0.22, 0.18) if tip == "apex" else (fr.cx + side * 0.12, 0.45)
        return [[(fr.cx + side * 0.45, 0.7), (fr.cx + side * 0.3, 0.5), end]]
    if device == "pacemaker":
        leads = 1 if variant == "single-lead pacemaker" else 2
        paths = [[(cx + 0.26, 0.17), (cx + 0.1, 0.2), (cx, 0.5), (cx + 0.06 + 0.02 * j[0], 0.66)]]
        if leads == 2:
            paths.append([(cx + 0.26, 0.17), (cx + 0.08, 0.22), (cx - 0.03, 0.5)])
        return paths
    # sternotomy wires
    return [[(cx - 0.015, y), (cx + 0.015, y + 0.01)] for y in np.linspace(0.3, 0.55, 5)]


def _draw_devices(view: _View, study: Study, fr: _Frame, rng: np.random.Generator) -> None:
    for device, tip, variant in study.device_tips:
        jitter = rng.standard_normal(2)
        width = (
            0.016 if device == "sternotomy_wires" else 0.009 if device == "chest_tube" else 0.007
        )
        for points in _device_paths(device, tip, variant, fr, jitter):
            view.paint(view.line(points, width, min_pixels=1.0), _METAL)
        if device == "pacemaker":
            box = (np.abs(view.u - fr.cx - 0.29) < 0.045) & (np.abs(view.v - 0.16) < 0.03)
            view.paint(box.astype(np.float32), _METAL)


def _draw_extras(view: _View, study: Study, fr: _Frame, rng: np.random.Generator) -> None:
    """Findings outside the 14 labels and look-alikes (drawn whether or not reported)."""
    u, v = view.u, view.v
    names = {name for name, _ in study.incidentals} | set(study.lookalikes)
    if "granuloma" in names:
        gu, gv = fr.cx + rng.choice((-1, 1)) * rng.uniform(0.1, 0.25), rng.uniform(0.25, 0.55)
        view.add(0.45 * view.blob(gu, gv, 0.012, power=6))
    if "calcified_nodes" in names:
        for side in (-1, 1):
            view.add(0.35 * view.blob(fr.cx + side * 0.1, 0.46, 0.012, power=6))
    if "tortuous_aorta" in names:  # a bulging aortic knob widens the mediastinal shadow
        view.paint(0.9 * view.blob(fr.cx + fr.shift + 0.08, 0.27, 0.05, power=4), 0.62)
        view.add(0.15 * view.line([(fr.cx + 0.09, 0.24), (fr.cx + 0.12, 0.28)], 0.006))
    if "hiatal_hernia" in names:
        view.paint(0.8 * view.blob(fr.cx + fr.shift, 0.64, 0.05, power=4), 0.5)
        view.paint(0.8 * view.blob(fr.cx + fr.shift, 0.62, 0.03, power=4), 0.15)
    if "clips" in names:
        for k in range(3):
            cu, cv = fr.cx - 0.18 + 0.02 * k, fr.base + 0.05 + 0.01 * k
            view.paint(view.line([(cu, cv), (cu + 0.015, cv + 0.005)], 0.005), _METAL)
    if "shoulder_arthroplasty" in names:
        view.paint(view.blob(0.04, 0.12, 0.05, power=4), _METAL)
    if "azygos_fissure" in names:
        arc = [(fr.cx - 0.04, 0.3), (fr.cx - 0.1, 0.2), (fr.cx - 0.13, 0.1)]
        view.add(0.08 * view.line(arc, 0.004))
    if "ecg_leads" in names:  # round electrodes and wires: metal, but not a support device
        for _ in range(int(rng.integers(2, 5))):
            eu, ev = rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.7)
            ring = np.abs(np.hypot(u - eu, v - ev) - 0.02) < 0.006
            view.paint(0.8 * ring.astype(np.float32), 0.95)
            view.paint(
                0.6 * view.line([(eu, ev), (eu + rng.uniform(-0.3, 0.3), -0.05)], 0.003), 0.9
            )
    if "nipple_shadows" in names:
        for side in (-1, 1):
            view.add(0.12 * view.blob(fr.cx + side * 0.22, 0.62 + 0.02 * side, 0.02, power=4))
    if "skin_fold" in names:  # an edge over the lateral lung: a pneumothorax look-alike
        side = rng.choice((-1, 1))
        edge = fr.cx + side * (0.3 + 0.04 * np.sin(6 * v))
        view.add(0.06 * _smooth_step(side * (u - edge), 0.01) * (v > 0.2) * (v < 0.75))


def _render_frontal(study: Study, fr: _Frame, size: int, rng: np.random.Generator) -> np.ndarray:
    view = _View(size)
    _rotated(view, study.acquisition.rotation)
    u, v = view.u, view.v
    body = fr.half_width + 0.05 + 0.06 * study.acquisition.body
    body = body - 0.22 * _smooth_step(0.06 - v, 0.02)
    view.paint(_smooth_step(body - np.abs(u - fr.cx), 0.01), fr.soft)
    masks = _lung_masks(view, fr)
    _draw_lungs(view, fr, study, masks)
    _draw_ribs(view, fr, study, masks, rng)
    f = study.findings
    drawn = [(x, _visible(study, x)) for x in (*f.present, *study.hidden)]
    near_heart = []
    for x, s in drawn:
        if s <= 0 or x.name in (
            "support_devices",
            "cardiomegaly",
            "enlarged_cardiomediastinum",
            "fracture",
            "pneumothorax",
        ):
            continue
        if x.name in _AIRSPACE:
            silhouette = (
                x.name != "lung_lesion"
                and x.zone in ("mid", "lower")
                and (np.random.default_rng([x.seed, 3]).random() < 0.5)
            )
            if silhouette:
                near_heart.append((x, s))
                continue
            _airspace(view, x, fr, masks, s, False)
        else:
            _draw_finding(view, x, fr, masks, s)
    # AP projection magnifies the mediastinum as it does the heart.
    mediastinum = study.mediastinum * (1.12 if study.acquisition.projection == "AP" else 1.0)
    centre = fr.cx + fr.shift
    upper = _smooth_step(0.6 - v, 0.03)
    view.paint(_smooth_step(mediastinum - np.abs(u - centre), 0.01) * upper, 0.6)
    view.add(0.05 * _smooth_step(0.018 - np.abs(u - fr.cx), 0.005))  # spine behind
    view.paint(view.line([(centre, -0.05), (centre, 0.32)], 0.015), 0.3)  # trachea
    heart_half = fr.ctr * fr.half_width
    heart_u = centre + 0.05 + (0.02 if "pectus_excavatum" in dict(study.incidentals) else 0.0)
    heart_v = fr.base - 0.13
    heart = ((u - heart_u) / heart_half) ** 2 + ((v - heart_v) / 0.13) ** 2
    view.paint(_smooth_step(1.0 - heart, 0.06), _HEART)
    for x, s in near_heart:
        _airspace(view, x, fr, masks, s, True)
    _draw_devices(view, study, fr, rng)
    _draw_extras(view, study, fr, rng)
    return view.image


def _render_lateral(study: Study, fr: _Frame, size: int, rng: np.random.Generator) -> np.ndarray:
    view = _View(size)
    _rotated(view, 0.5 * study.acquisition.rotation)
    u, v = view.u, view.v
    view.paint(_smooth_step(0.36 - np.abs(u - 0.5), 0.01) * _smooth_step(v - 0.03, 0.02), fr.soft)
    diaphragm = fr.base - 0.08 + 0.14 * np.clip((u - 0.2) / 0.6, 0.0, 1.0) ** 2
    lung = _smooth_step(1.0 - ((u - 0.5) / 0.32) ** 2 - ((v - 0.5) / 0.42) ** 2, 0.04)
    lung = lung * _smooth_step(diaphragm - v, 0.008)
    view.paint(lung, 0.2 + 0.05 * view.blob(0.5, 0.45, 0.12))
    view.paint(view.line([(0.42, -0.05), (0.5, 0.38)], 0.02), 0.3)
    names = {name for name, _ in study.incidentals}
    spurs = "degenerative_spine" in names
    bend = 0.03 if "scoliosis" in names else 0.0
    spine_u = 0.81 + bend * np.sin(3 * v)
    vertebrae = (np.abs(u - spine_u) < 0.05) & (np.mod(v, 0.07) > 0.012) & (v > 0.05)
    view.paint(vertebrae.astype(np.float32), 0.7)
    if spurs:
        view.add(0.2 * ((np.abs(u - spine_u + 0.055) < 0.01) & (np.mod(v, 0.07) < 0.02)))
    sternum_u = 0.17 + (
        0.05 * np.exp(-(((v - 0.5) / 0.1) ** 2)) if "pectus_excavatum" in names else 0.0
    )
    view.add(0.15 * _smooth_step(0.01 - np.abs(u - sternum_u), 0.005) * (v > 0.15) * (v < 0.6))
    heart = ((u - 0.37) / (0.33 * fr.ctr / 0.46 * 0.46)) ** 2
    view.paint(_smooth_step(1.0 - heart - ((v - (fr.base - 0.17)) / 0.15) ** 2, 0.06), _HEART)
    for f in (*study.findings.present, *study.hidden):
        s = _visible(study, f)
        if s <= 0:
            continue
        frng = np.random.default_rng([f.seed, 1])
        if f.name == "enlarged_cardiomediastinum":
            view.paint(s * view.blob(0.34, 0.33, 0.06 + 0.02 * f.severity, power=4), 0.62)
        elif f.name in _AIRSPACE:
            cu, cv = frng.uniform(0.38, 0.62), _ZONE_V[f.zone or "lower"] + 0.02 * frng.normal()
            radius = (0.018, 0.026, 0.045)[f.severity] if f.name == "lung_lesion" else 0.07
            view.add(
                s * 0.22 * view.blob(cu, cv, radius, 6 if f.name == "lung_lesion" else 2) * lung
            )
        elif f.name == "edema":
            view.add(s * (0.1 + 0.05 * f.severity) * view.blob(0.5, 0.47, 0.15) * lung)
        elif f.name == "atelectasis":
            level = fr.base - 0.1
            view.add(s * 0.22 * view.line([(0.45, level), (0.7, level + 0.03)], 0.01) * lung)
        elif f.name == "pleural_effusion":
            # Fluid collects posteriorly and thins smoothly towards the front: no vertical edge.
            height = (0.05, 0.11, 0.19)[f.severity] * (1.5 if f.side == "bilateral" else 1.0)
            thickness = height * _smooth_step(u - 0.45, 0.2)
            top = diaphragm - thickness - 0.002
            view.paint(min(1.0, 0.3 + s) * _smooth_step(v - top, 0.012) * lung, _FLUID)
    for device, _, _ in study.device_tips:
        if device in ("endotracheal_tube", "nasogastric_tube", "central_line"):
            path = {
                "endotracheal_tube": [(0.42, -0.02), (0.48, 0.27)],
                "nasogastric_tube": [(0.45, -0.02), (0.6, 0.4), (0.62, 0.7)],
                "central_line": [(0.52, -0.02), (0.43, 0.2), (0.41, 0.33)],
            }[device]
            view.paint(view.line(path, 0.007, min_pixels=1.0), _METAL)
        elif device == "sternotomy_wires":
            for y in np.linspace(0.22, 0.52, 5):
                view.paint(view.line([(0.165, y), (0.2, y + 0.01)], 0.008, 1.0), _METAL)
        elif device == "pacemaker":
            view.paint(view.line([(0.22, 0.18), (0.3, 0.35), (0.33, 0.62)], 0.007, 1.0), _METAL)
    return view.image


def _expose(image: np.ndarray, study: Study, rng: np.random.Generator) -> np.ndarray:
    a = study.acquisition
    toned = np.clip(image, 0.0, 1.0) ** a.gamma
    noise = a.noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(a.gain * toned + a.offset + noise, 0.0, 1.0)


def render_views(
    study: Study, rng: np.random.Generator, *, image_size: int = 64, num_views: int = 2
) -> np.ndarray:
    """Draw a v2 study: ``float32 (num_views, image_size, image_size)`` in [0, 1].

    View 0 is frontal, view 1 (``num_views == 2``) lateral. ``rng`` draws the anatomy, device
    jitter and noise; each finding's placement comes from its own seed.
    """
    if num_views not in (1, 2):
        raise ValueError(f"`num_views` should be 1 or 2. Found `{num_views}`.")
    if image_size < 16:
        raise ValueError(f"`image_size` should be at least 16. Found `{image_size}`.")
    frame = _Frame(study, rng)
    # One stream per view, so the frontal view does not depend on the view count.
    streams = [np.random.default_rng(rng.integers(2**63)) for _ in range(2)]
    renderers = (_render_frontal, _render_lateral)[:num_views]
    views = [
        _blur(_expose(render(study, frame, image_size, stream), study, stream))
        for render, stream in zip(renderers, streams, strict=False)
    ]
    return np.stack(views).astype(np.float32)
