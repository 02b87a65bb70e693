"""What a study of the realistic (``"v2"``) synthetic generator shows, and what its report says.

The v1 model of findings (latent clinical scenarios, long-tailed label frequencies, see
``_synthetic_findings``) is kept and extended with what makes real chest radiographs hard:

* **Acquisition varies** (:class:`Acquisition`): AP portable studies (sicker patients, 45-75 %
  of the ICU and heart-failure studies, 15 % otherwise) magnify the heart by about 10 %; body
  size, depth of inspiration, rotation and exposure vary from study to study.
* **The measurements that define cardiomegaly and a widened mediastinum overlap between
  classes**, as radiologists' calls overlap with measured ratios. The true cardiothoracic ratio
  is drawn per class from overlapping normal laws (normal 0.46 ± 0.045, enlarged
  0.53 + 0.03 x severity ± 0.05, borderline 0.50 ± 0.04); AP magnification and a shallow
  inspiration then enlarge the *apparent* heart further. The upper mediastinal half-width (in
  units of the image width) is likewise normal 0.060 ± 0.010, widened 0.080 + 0.01 x severity
  ± 0.012, uncertain 0.072 ± 0.012, magnified in AP projections.
* **Image and report disagree at documented rates** (the constants below):
  ``SUBTLE_RATE`` of the reported positive findings are drawn at 25-50 % conspicuity (the report
  names them, the image barely shows them); ``HIDDEN_RATE`` of the studies carry one visible
  finding that the report omits (its label stays blank, as CheXpert labels come from the report);
  hedged (uncertain) findings are drawn at a conspicuity drawn uniformly in [0, 0.9], so
  "uncertain" is a property of the wording, not of the drawing; the ``NO_NEW_RATE`` "no new X"
  statements of follow-up studies are uncertain by CheXpert's rule with nothing drawn.
* **Findings outside the 14 labels** (granuloma, degenerative spine, hyperinflation, a tortuous
  calcified aorta, surgical clips) are drawn and, at ``INCIDENTAL_REPORT_RATE``, reported; a
  reported one makes ``no_finding`` blank (CheXpert counts them as "other" findings), clips are
  a support device by CheXpert's convention. Look-alikes (ECG leads, nipple shadows, skin folds)
  are drawn and never reported.
* **Devices** sit at varied and sometimes wrong positions (:data:`DEVICE_TIPS`).

Labels follow CheXpert's conventions exactly as the report states them (see
``_synthetic_v2_report``): they are computed here, before any wording is drawn, and the writer
only realises them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from camegrad_jax.rrg._synthetic_findings import (
    _INDEX,
    LUNG_PARENCHYMA,
    Finding,
    StudyFindings,
    _choice,
    make_study_findings,
    sample_study_findings,
)
from camegrad_jax.rrg.observations import BLANK, POSITIVE, UNCERTAIN

__all__ = [
    "DEVICE_LIKE",
    "DEVICE_TIPS",
    "DEVICE_VARIANTS",
    "NORMAL_VARIANTS",
    "HIDDEN_RATE",
    "INCIDENTALS",
    "INCIDENTAL_REPORT_RATE",
    "LOOKALIKES",
    "NO_NEW_RATE",
    "SUBTLE_RATE",
    "Acquisition",
    "Study",
    "sample_study",
]

SUBTLE_RATE = 0.15
HIDDEN_RATE = 0.12
NO_NEW_RATE = 0.25
INCIDENTAL_REPORT_RATE = 0.6
PRIOR_RATE = 0.45
DROPPED_NEGATION_RATE = 0.3
# Non-label findings and how often a study has each.
INCIDENTALS = {
    "granuloma": 0.08,
    "degenerative_spine": 0.12,
    "hyperinflation": 0.06,
    "tortuous_aorta": 0.1,
    "clips": 0.04,
    "hiatal_hernia": 0.04,
    "scoliosis": 0.05,
    "elevated_hemidiaphragm": 0.04,
    "osteopenia": 0.04,
    "calcified_nodes": 0.03,
    "shoulder_arthroplasty": 0.02,
    "azygos_fissure": 0.02,
    "cervical_rib": 0.02,
    "pectus_excavatum": 0.02,
}
# Normal variants: reported, drawn, and not a finding for CheXpert (``no_finding`` unchanged).
NORMAL_VARIANTS = ("azygos_fissure", "cervical_rib", "pectus_excavatum")
# Incidentals that CheXpert counts as a support device when reported.
DEVICE_LIKE = ("clips", "shoulder_arthroplasty")
LOOKALIKES = {"ecg_leads": 0.2, "nipple_shadows": 0.15, "skin_fold": 0.06}
# Device tip positions and their probabilities (the first is the intended position).
# Variants of a device (access site, make): they change its path on the image and its wording.
DEVICE_VARIANTS = {
    "endotracheal_tube": ("endotracheal tube", "et tube"),
    "nasogastric_tube": ("nasogastric tube", "orogastric tube", "enteric tube", "dobhoff tube"),
    "central_line": (
        "right internal jugular",
        "left internal jugular",
        "right subclavian",
        "left subclavian",
        "right picc",
    ),
    "chest_tube": ("right-sided", "left-sided", "pigtail"),
    "pacemaker": ("dual-chamber pacemaker", "single-lead pacemaker", "pacemaker-defibrillator"),
    "sternotomy_wires": ("sternotomy wires", "sternotomy wires and cabg clips"),
}
DEVICE_TIPS = {
    "endotracheal_tube": {"standard": 0.8, "low": 0.12, "high": 0.08},
    "nasogastric_tube": {"stomach": 0.8, "esophagus": 0.12, "coiled": 0.08},
    "central_line": {"svc": 0.6, "cavoatrial": 0.2, "right_atrium": 0.1, "brachiocephalic": 0.1},
    "chest_tube": {"apex": 0.85, "fissure": 0.15},
    "pacemaker": {"standard": 1.0},
    "sternotomy_wires": {"standard": 1.0},
}
# Findings a reader may miss: drawn, unreported (label blank).
_HIDDEN = {
    "lung_lesion": 0.3,
    "fracture": 0.2,
    "atelectasis": 0.2,
    "pleural_effusion": 0.15,
    "lung_opacity": 0.15,
}
_NO_NEW = ("pleural_effusion", "pneumothorax", "consolidation", "lung_opacity")
_CHANGES = {"new": 0.3, "stable": 0.4, "increased": 0.15, "decreased": 0.15}
_RESOLVABLE = ("pneumothorax", "pleural_effusion", "pneumonia", "consolidation", "edema")
_SICK = ("heart_failure", "postoperative", "infection")


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """How the study was taken (per study, shared by both views).

    Attributes:
      projection: ``"PA"`` or ``"AP"`` (portable; magnifies the heart).
      body: body-size factor, 0.85 (thin) to 1.25 (large): thicker soft tissue, dimmer lungs.
      inspiration: 0 (shallow, high diaphragm, crowded vessels) to 1 (deep).
      rotation: in-plane tilt in radians; a rotated patient also shifts the mediastinum.
      gain, gamma, offset, noise: exposure: contrast, tone curve, brightness, quantum noise.
    """

    projection: str
    body: float
    inspiration: float
    rotation: float
    gain: float
    gamma: float
    offset: float
    noise: float

    @property
    def magnification(self) -> float:
        """Apparent over true cardiothoracic ratio (AP beam divergence, shallow inspiration)."""
        return (1.1 if self.projection == "AP" else 1.0) * (1.06 - 0.06 * self.inspiration)


@dataclasses.dataclass(frozen=True)
class Study:
    """A v2 study: labels, what is drawn and what the report says.

    Attributes:
      findings: labels and the reported findings (v1's :class:`StudyFindings`, CheXpert rules).
      scenario: the latent clinical scenario.
      acquisition: see :class:`Acquisition`.
      ctr: the true cardiothoracic ratio (the image shows ``ctr * magnification``).
      mediastinum: the true upper mediastinal half-width (image widths).
      conspicuity: ``(name, factor)`` per reported finding: 1 fully visible, 0 not drawn.
      hidden: visible findings the report omits (their labels are blank).
      incidentals: ``(name, reported)`` non-label findings, drawn in every case.
      lookalikes: drawn, never reported.
      device_tips: ``(device, position, variant)`` for each support device.
      prior: the report compares with a prior study.
      changes: ``(name, change)`` against the prior for reported positive findings.
      no_new: names stated as "no new ..." (uncertain by CheXpert's rule, not drawn).
      resolved: negated names stated as resolved since the prior.
      borderline_heart: the heart is called "borderline" (uncertain cardiomegaly).
    """

    findings: StudyFindings
    scenario: str
    acquisition: Acquisition
    ctr: float
    mediastinum: float
    conspicuity: tuple[tuple[str, float], ...]
    hidden: tuple[Finding, ...]
    incidentals: tuple[tuple[str, bool], ...]
    lookalikes: tuple[str, ...]
    device_tips: tuple[tuple[str, str, str], ...]
    prior: bool
    changes: tuple[tuple[str, str], ...]
    no_new: tuple[str, ...]
    resolved: tuple[str, ...]
    borderline_heart: bool

    @property
    def labels(self) -> tuple[int, ...]:
        return self.findings.labels

    def visibility(self, name: str) -> float:
        return dict(self.conspicuity).get(name, 0.0)

    def reported_incidentals(self) -> tuple[str, ...]:
        return tuple(name for name, reported in self.incidentals if reported)


def _acquisition(rng: np.random.Generator, scenario: str, has_devices: bool) -> Acquisition:
    ap_rate = 0.75 if has_devices else 0.45 if scenario in _SICK else 0.15
    return Acquisition(
        projection="AP" if rng.random() < ap_rate else "PA",
        body=float(np.clip(rng.normal(1.02, 0.1), 0.85, 1.25)),
        inspiration=float(rng.beta(4.0, 2.0)),
        rotation=float(rng.normal(0.0, 0.035)),
        gain=float(rng.uniform(0.75, 1.2)),
        gamma=float(rng.uniform(0.75, 1.35)),
        offset=float(rng.uniform(-0.08, 0.08)),
        noise=float(rng.uniform(0.015, 0.05)),
    )


def _class_conditional(
    rng: np.random.Generator,
    finding: Finding | None,
    laws: tuple[tuple[float, float], tuple[float, float], tuple[float, float]],
    step: float,
    bounds: tuple[float, float],
) -> float:
    """A measurement drawn from its class's law: ``laws`` = (absent, uncertain, positive) as
    (mean, sd), the positive mean rising by ``step`` per severity grade."""
    if finding is None:
        mean, sd = laws[0]
    elif finding.state == UNCERTAIN:
        mean, sd = laws[1]
    else:
        mean, sd = laws[2][0] + step * finding.severity, laws[2][1]
    return float(np.clip(rng.normal(mean, sd), *bounds))


def _with_labels(findings: StudyFindings, **changes: int) -> StudyFindings:
    labels = list(findings.labels)
    for name, value in changes.items():
        labels[_INDEX[name]] = value
    return dataclasses.replace(findings, labels=tuple(labels))


def sample_study(rng: np.random.Generator) -> Study:
    """Draw one v2 study (see the module docstring for the model and its rates)."""
    base = sample_study_findings(rng)
    scenario = _scenario_of(base)
    present = list(base.present)
    # Real reports list fewer pertinent negatives than v1's (shorter, less template-like).
    negated = [name for name in base.negated if rng.random() >= DROPPED_NEGATION_RATE]
    prior = rng.random() < PRIOR_RATE
    # "No new X" (follow-up studies): CheXpert's pre-negation uncertainty, nothing drawn.
    no_new = []
    if prior:
        for name in _NO_NEW:
            clear_conflict = base.lungs_clear and name in LUNG_PARENCHYMA
            if name in negated and not clear_conflict and rng.random() < NO_NEW_RATE:
                negated.remove(name)
                no_new.append(name)
                present.append(Finding(name=name, state=UNCERTAIN, side="", seed=0))
    present.sort(key=lambda f: _order(f.name))
    findings = make_study_findings(present, negated, lungs_clear=base.lungs_clear)

    conspicuity = []
    for f in present:
        if f.name in no_new:
            factor = 0.0
        elif f.state == UNCERTAIN:
            factor = float(rng.uniform(0.0, 0.9))
        elif rng.random() < SUBTLE_RATE and f.name != "support_devices":
            factor = float(rng.uniform(0.25, 0.5))
        else:
            factor = 1.0
        conspicuity.append((f.name, factor))

    hidden = []
    blank = [n for n in _HIDDEN if findings.label(n) == BLANK]
    if blank and rng.random() < HIDDEN_RATE:
        name = _choice(rng, {n: _HIDDEN[n] for n in blank})
        hidden.append(
            Finding(
                name=name,
                side=("right", "left")[int(rng.integers(2))],
                severity=0,
                zone=("upper", "mid", "lower")[int(rng.integers(3))]
                if name in ("lung_lesion", "lung_opacity")
                else "",
                rib=int(rng.integers(4, 10)) if name == "fracture" else 0,
                seed=int(rng.integers(2**31)),
            )
        )

    incidentals = tuple(
        (name, bool(rng.random() < INCIDENTAL_REPORT_RATE))
        for name, rate in INCIDENTALS.items()
        if rng.random() < rate * (1.5 if scenario in _SICK else 1.0)
    )
    lookalikes = tuple(name for name, rate in LOOKALIKES.items() if rng.random() < rate)
    labels: dict[str, int] = {}
    if any(reported and name in DEVICE_LIKE for name, reported in incidentals):
        if findings.label("support_devices") == BLANK:
            labels["support_devices"] = POSITIVE
    other = any(
        reported and name not in DEVICE_LIKE + NORMAL_VARIANTS for name, reported in incidentals
    )
    if other and findings.label("no_finding") == POSITIVE:
        labels["no_finding"] = BLANK  # an "other" finding is a finding (CheXpert)
    if labels:
        findings = _with_labels(findings, **labels)

    devices = findings.finding("support_devices")
    device_names = list(devices.devices) if devices else []
    # A chest tube drains a pneumothorax or an effusion in a patient who already has devices.
    drained = findings.finding("pneumothorax") or findings.finding("pleural_effusion")
    if devices and drained is not None and drained.state == POSITIVE and rng.random() < 0.5:
        device_names.append("chest_tube")
    device_tips = tuple(
        (d, _choice(rng, DEVICE_TIPS[d]), _choice(rng, dict.fromkeys(DEVICE_VARIANTS[d], 1.0)))
        for d in device_names
    )
    cardiomegaly = findings.finding("cardiomegaly")
    borderline = cardiomegaly is not None and cardiomegaly.state == UNCERTAIN
    changes = ()
    resolved: list[str] = []
    if prior:
        changes = tuple(
            (f.name, _choice(rng, _CHANGES))
            for f in present
            if f.state == POSITIVE and f.name not in ("support_devices", "fracture")
        )
        resolved = [n for n in negated if n in _RESOLVABLE and rng.random() < 0.15]
    return Study(
        findings=findings,
        scenario=scenario,
        acquisition=_acquisition(rng, scenario, devices is not None),
        ctr=_class_conditional(
            rng, cardiomegaly, ((0.46, 0.045), (0.50, 0.04), (0.53, 0.05)), 0.03, (0.34, 0.72)
        ),
        mediastinum=_class_conditional(
            rng,
            findings.finding("enlarged_cardiomediastinum"),
            ((0.060, 0.010), (0.072, 0.012), (0.080, 0.012)),
            0.01,
            (0.035, 0.13),
        ),
        conspicuity=tuple(conspicuity),
        hidden=tuple(hidden),
        incidentals=incidentals,
        lookalikes=lookalikes,
        device_tips=device_tips,
        prior=prior,
        changes=changes,
        no_new=tuple(no_new),
        resolved=tuple(resolved),
        borderline_heart=borderline,
    )


def _order(name: str) -> int:
    return _INDEX[name]


def _scenario_of(findings: StudyFindings) -> str:
    """The clinical picture a reader would infer (v1 does not return its latent scenario)."""
    names = {f.name for f in findings.present}
    if "support_devices" in names:
        return "postoperative"
    if names & {"edema", "cardiomegaly"} and len(names) > 1:
        return "heart_failure"
    if names & {"pneumonia", "consolidation"}:
        return "infection"
    return "normal" if not names else "incidental"
