"""What a synthetic study shows: sampled findings with side, severity and location.

One :class:`StudyFindings` feeds both the report writer and the image renderer, which is what
makes reports, labels and images agree by construction. Frequencies follow the long tail of
chest radiograph labels (MIMIC-CXR/CheXpert): about half the studies are normal, support
devices, effusion, opacity, atelectasis and cardiomegaly are common, pneumothorax, fracture,
lung lesion and pleural thickening are rare. Correlations come from a latent clinical scenario
(heart failure: cardiomegaly + edema + effusion; infection: pneumonia + opacity + consolidation;
post-operative/ICU: devices + atelectasis + effusion).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

SIDES = ("right", "left", "bilateral")
ZONES = ("upper", "mid", "lower")
DEVICES = ("endotracheal_tube", "nasogastric_tube", "central_line", "pacemaker", "sternotomy_wires")
LUNG_PARENCHYMA = (
    "lung_opacity",
    "lung_lesion",
    "edema",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "pneumothorax",
)
# What "the lungs are clear" rules out (the labeler's convention, see `labeler.py`).
CLEARED_BY_CLEAR_LUNGS = ("lung_opacity", "consolidation", "edema", "pneumonia")
_AIRSPACE = ("lung_opacity", "consolidation", "pneumonia")
_INDEX = {name: i for i, name in enumerate(OBSERVATIONS)}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One positive or uncertain observation of a synthetic study.

    Attributes:
      name: an entry of ``OBSERVATIONS`` other than ``no_finding``.
      state: ``POSITIVE`` (drawn at full strength) or ``UNCERTAIN`` (drawn faintly).
      side: patient side, ``"right"``, ``"left"``, ``"bilateral"``, or ``""`` when not lateral.
      severity: 0, 1 or 2 (small/mild, moderate, large/severe).
      zone: lung zone ``"upper"``, ``"mid"`` or ``"lower"`` where it applies, else ``""``.
      rib: rib number (4 to 9) for a fracture, else 0.
      devices: the support devices present (only for ``support_devices``).
      seed: seeds the renderer's placement jitter for this finding alone, so that adding or
        removing one finding leaves the rest of the image unchanged.
    """

    name: str
    state: int = POSITIVE
    side: str = ""
    severity: int = 0
    zone: str = ""
    rib: int = 0
    devices: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in _INDEX or self.name == "no_finding":
            raise ValueError(f"`name` should be a drawable observation. Found `{self.name!r}`.")
        if self.state not in (POSITIVE, UNCERTAIN):
            raise ValueError(f"`state` should be POSITIVE or UNCERTAIN. Found `{self.state}`.")
        if self.side not in ("", *SIDES) or self.zone not in ("", *ZONES):
            raise ValueError(f"Bad side/zone for {self.name}: {self.side!r}, {self.zone!r}.")
        if self.name == "support_devices" and not self.devices:
            raise ValueError("A `support_devices` finding needs at least one device.")


@dataclasses.dataclass(frozen=True)
class StudyFindings:
    """Labels of one study, the findings behind its positive/uncertain labels, and what the
    report states as absent.

    Build it with :func:`make_study_findings`, which enforces the label rules.

    Attributes:
      labels: 14 ints in the order of ``OBSERVATIONS``.
      present: the positive and uncertain findings.
      negated: observations the report negates one by one ("no pleural effusion").
      lungs_clear: the report says "the lungs are clear", which negates lung opacity,
        consolidation, edema and pneumonia.
    """

    labels: tuple[int, ...]
    present: tuple[Finding, ...]
    negated: tuple[str, ...] = ()
    lungs_clear: bool = False

    def label(self, name: str) -> int:
        """The label value of observation ``name``."""
        return self.labels[_INDEX[name]]

    def finding(self, name: str) -> Finding | None:
        """The finding for ``name`` if it is positive or uncertain, else ``None``."""
        return next((f for f in self.present if f.name == name), None)


def make_study_findings(
    present: Sequence[Finding], negated: Sequence[str] = (), *, lungs_clear: bool = False
) -> StudyFindings:
    """Labels from findings, with CheXpert's conventions.

    Present findings are POSITIVE or UNCERTAIN, ``negated`` ones and (when ``lungs_clear``)
    the airspace observations cleared by "the lungs are clear" are NEGATIVE, the rest BLANK.
    ``no_finding`` is POSITIVE iff no observation other than support devices is present; an
    uncertain finding leaves it BLANK, and it is never NEGATIVE (CheXpert's rule).
    """
    labels = [BLANK] * NUM_OBSERVATIONS
    if lungs_clear and any(f.name in LUNG_PARENCHYMA for f in present):
        raise ValueError("`lungs_clear` contradicts a present lung finding.")
    for name in (*negated, *(CLEARED_BY_CLEAR_LUNGS if lungs_clear else ())):
        if name == "no_finding":
            raise ValueError("`no_finding` is derived; do not negate it.")
        labels[_INDEX[name]] = NEGATIVE
    for finding in present:
        if labels[_INDEX[finding.name]] != BLANK:
            raise ValueError(f"{finding.name!r} is given twice (present or negated).")
        labels[_INDEX[finding.name]] = finding.state
    if all(f.name == "support_devices" for f in present):
        labels[_INDEX["no_finding"]] = POSITIVE
    return StudyFindings(tuple(labels), tuple(present), tuple(negated), lungs_clear)


# Latent scenarios: (probability, {finding: probability present}).
_SCENARIOS: dict[str, tuple[float, dict[str, float]]] = {
    "normal": (0.51, {}),
    "heart_failure": (
        0.10,
        {
            "cardiomegaly": 0.75,
            "edema": 0.6,
            "pleural_effusion": 0.55,
            "enlarged_cardiomediastinum": 0.15,
            "atelectasis": 0.2,
            "lung_opacity": 0.15,
            "support_devices": 0.25,
        },
    ),
    "infection": (
        0.12,
        {
            "pneumonia": 0.7,
            "lung_opacity": 0.6,
            "consolidation": 0.4,
            "pleural_effusion": 0.2,
            "atelectasis": 0.15,
            "support_devices": 0.1,
        },
    ),
    "postoperative": (
        0.14,
        {
            "support_devices": 0.95,
            "atelectasis": 0.45,
            "pleural_effusion": 0.35,
            "lung_opacity": 0.25,
            "cardiomegaly": 0.2,
            "edema": 0.15,
            "enlarged_cardiomediastinum": 0.1,
            "pneumothorax": 0.06,
            "consolidation": 0.05,
            "fracture": 0.03,
        },
    ),
    "incidental": (0.13, {}),
}
# Incidental studies carry one or two findings drawn with these weights.
_INCIDENTAL = {
    "lung_lesion": 0.21,
    "cardiomegaly": 0.16,
    "fracture": 0.13,
    "enlarged_cardiomediastinum": 0.12,
    "atelectasis": 0.12,
    "pleural_other": 0.11,
    "lung_opacity": 0.08,
    "pneumothorax": 0.07,
}
# A normal study sometimes has one hedged finding (and then no `no_finding`).
_NORMAL_HEDGE_RATE = 0.07
_NORMAL_HEDGES = {
    "atelectasis": 0.35,
    "pneumonia": 0.2,
    "pleural_effusion": 0.2,
    "lung_opacity": 0.15,
    "cardiomegaly": 0.1,
}
_UNCERTAIN_RATE = {
    "pneumonia": 0.35,
    "atelectasis": 0.2,
    "edema": 0.2,
    "lung_lesion": 0.2,
    "pleural_effusion": 0.15,
    "consolidation": 0.15,
    "enlarged_cardiomediastinum": 0.15,
    "fracture": 0.15,
}
# Probability that a report without lung findings says "the lungs are clear".
_LUNGS_CLEAR_RATE = 0.6
# Probability that a finding which is absent is explicitly negated in the report.
_NEGATION_RATE = {
    "pleural_effusion": 0.7,
    "pneumothorax": 0.65,
    "cardiomegaly": 0.55,
    "consolidation": 0.45,
    "enlarged_cardiomediastinum": 0.3,
    "edema": 0.3,
    "lung_opacity": 0.25,
    "pneumonia": 0.2,
    "fracture": 0.12,
    "lung_lesion": 0.08,
    "atelectasis": 0.05,
    "pleural_other": 0.03,
}
_SIDE_WEIGHTS = {
    "pleural_effusion": (0.4, 0.35, 0.25),
    "atelectasis": (0.3, 0.35, 0.35),
    "lung_opacity": (0.45, 0.4, 0.15),
    "pneumonia": (0.5, 0.4, 0.1),
    "consolidation": (0.5, 0.45, 0.05),
}
_ONE_SIDED = ("lung_lesion", "pneumothorax", "pleural_other", "fracture")
_ZONE_WEIGHTS = {
    "lung_opacity": (0.2, 0.3, 0.5),
    "consolidation": (0.15, 0.3, 0.55),
    "pneumonia": (0.15, 0.3, 0.55),
    "lung_lesion": (0.45, 0.35, 0.2),
    "pleural_other": (0.6, 0.4, 0.0),
}
_DEVICE_RATES = {
    "heart_failure": {"pacemaker": 0.5, "central_line": 0.3, "sternotomy_wires": 0.3},
    "postoperative": {
        "central_line": 0.5,
        "sternotomy_wires": 0.4,
        "endotracheal_tube": 0.35,
        "nasogastric_tube": 0.3,
        "pacemaker": 0.2,
    },
    "infection": {"central_line": 0.5, "endotracheal_tube": 0.4, "nasogastric_tube": 0.4},
}


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[rng.choice(len(names), p=p / p.sum())]


def _devices(rng: np.random.Generator, scenario: str) -> tuple[str, ...]:
    rates = _DEVICE_RATES.get(scenario, _DEVICE_RATES["postoperative"])
    chosen = [d for d in DEVICES if d in rates and rng.random() < rates[d]]
    return tuple(chosen) or (_choice(rng, rates),)


def _finding(rng: np.random.Generator, name: str, scenario: str, state: int | None) -> Finding:
    if state is None:
        state = UNCERTAIN if rng.random() < _UNCERTAIN_RATE.get(name, 0.1) else POSITIVE
    if name == "support_devices":
        state = POSITIVE  # reports state devices plainly; a hedged device has no image meaning
    side = ""
    if name in _SIDE_WEIGHTS:
        weights = _SIDE_WEIGHTS[name]
        if name == "pleural_effusion" and scenario == "heart_failure":
            weights = (0.2, 0.2, 0.6)  # congestive effusions are usually bilateral
        side = SIDES[rng.choice(3, p=weights)]
    elif name in _ONE_SIDED:
        side = SIDES[rng.integers(2)]
    zone = ZONES[rng.choice(3, p=_ZONE_WEIGHTS[name])] if name in _ZONE_WEIGHTS else ""
    return Finding(
        name=name,
        state=state,
        side=side,
        severity=int(rng.choice(3, p=(0.55, 0.33, 0.12))),
        zone=zone,
        rib=int(rng.integers(4, 10)) if name == "fracture" else 0,
        devices=_devices(rng, scenario) if name == "support_devices" else (),
        seed=int(rng.integers(2**31)),
    )


def sample_study_findings(rng: np.random.Generator) -> StudyFindings:
    """Draw one study's findings and labels (see the module docstring for the model)."""
    scenarios = list(_SCENARIOS)
    p = np.array([_SCENARIOS[s][0] for s in scenarios])
    scenario = scenarios[rng.choice(len(scenarios), p=p / p.sum())]
    rates = _SCENARIOS[scenario][1]
    hedged = False
    if scenario == "normal":
        names = []
        if rng.random() < _NORMAL_HEDGE_RATE:
            names, hedged = [_choice(rng, _NORMAL_HEDGES)], True
    elif scenario == "incidental":
        names = [_choice(rng, _INCIDENTAL)]
        if rng.random() < 0.3:
            names.append(_choice(rng, {k: v for k, v in _INCIDENTAL.items() if k != names[0]}))
    else:
        # An abnormal scenario always shows something: fall back on its leading finding.
        names = [n for n in rates if rng.random() < rates[n]] or [next(iter(rates))]
    present = []
    for name in (n for n in OBSERVATIONS if n in names):
        finding = _finding(rng, name, scenario, UNCERTAIN if hedged else None)
        anchor = next((f for f in present if f.name in _AIRSPACE), None)
        if name in _AIRSPACE and anchor is not None and rng.random() < 0.8:
            # Opacity, consolidation and pneumonia of one process usually share a location.
            finding = dataclasses.replace(finding, side=anchor.side, zone=anchor.zone)
        present.append(finding)
    # Sicker patients' reports list fewer pertinent negatives.
    damping = 0.4 if len(present) >= 3 else 1.0
    negated = [
        n
        for n in OBSERVATIONS
        if n in _NEGATION_RATE and n not in names and rng.random() < damping * _NEGATION_RATE[n]
    ]
    lungs_clear = not any(n in LUNG_PARENCHYMA for n in names) and rng.random() < _LUNGS_CLEAR_RATE
    return make_study_findings(present, negated, lungs_clear=lungs_clear)
