"""Report text for synthetic studies, written from the same findings that draw the image.

Every POSITIVE finding gets an affirmative sentence, every UNCERTAIN one a hedged sentence
("possible ...", "cannot exclude ...", "may represent ..."), every NEGATIVE one an explicit
negation ("no pleural effusion", "heart size is normal", or "the lungs are clear" for lung
opacity, consolidation, edema and pneumonia); BLANK ones are not mentioned, and a positive
``no_finding`` gets an impression such as "no acute cardiopulmonary process".

Wording rules that keep labels recoverable by a rule-based labeler reading radiology language
(CheXpert's conventions, as in ``labeler.py``): each sentence carries a single polarity (never
"small effusion but no pneumothorax"), and a sentence only names the observations whose label
it states (a pneumonia sentence does not say "opacity"; no "haziness" with edema; no "no acute"
except in the impression).
"""

from __future__ import annotations

import numpy as np

from camegrad_jax.rrg._synthetic_findings import LUNG_PARENCHYMA, Finding, StudyFindings
from camegrad_jax.rrg.observations import POSITIVE

_ORDINALS = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
_SIZE = ("small", "moderate", "large")
_GRADE = ("mild", "moderate", "severe")
_GRADE_ADVERB = ("mildly", "moderately", "markedly")
_ZONE_PLACES = {
    ("right", "upper"): ("right upper lobe", "right upper lung"),
    ("right", "mid"): ("right middle lobe", "right mid lung"),
    ("right", "lower"): ("right lower lobe", "right lung base"),
    ("left", "upper"): ("left upper lobe", "left upper lung"),
    ("left", "mid"): ("lingula", "left mid lung"),
    ("left", "lower"): ("left lower lobe", "left lung base"),
    ("bilateral", "upper"): ("upper lobes bilaterally", "both upper lungs"),
    ("bilateral", "mid"): ("mid lungs bilaterally", "both mid lungs"),
    ("bilateral", "lower"): ("lower lobes bilaterally", "both lung bases"),
}
_BASE = {"right": "right basilar", "left": "left basilar", "bilateral": "bibasilar"}
_DEVICE_SENTENCES = {
    "endotracheal_tube": (
        "An endotracheal tube terminates {cm} cm above the carina.",
        "Endotracheal tube tip is {cm} cm above the carina.",
    ),
    "nasogastric_tube": (
        "A nasogastric tube courses below the diaphragm.",
        "An enteric tube extends into the stomach.",
    ),
    "central_line": (
        "A right internal jugular central venous catheter terminates in the svc.",
        "Right internal jugular line tip is in the mid svc.",
    ),
    "pacemaker": (
        "A left chest wall pacemaker is present with leads in the right atrium and ventricle.",
        "Dual lead pacemaker in place.",
    ),
    "sternotomy_wires": ("Median sternotomy wires are intact.", "Sternotomy wires are noted."),
}
# Noun phrases for grouped negations ("no pleural effusion or pneumothorax").
_NEGATED_NOUNS = {
    "lung_opacity": ("focal airspace opacity", "focal opacity"),
    "lung_lesion": ("suspicious pulmonary nodule", "pulmonary nodule or mass"),
    "edema": ("pulmonary edema",),
    "consolidation": ("focal consolidation", "consolidation"),
    "pneumonia": ("pneumonia",),
    "atelectasis": ("atelectasis",),
    "pneumothorax": ("pneumothorax",),
    "pleural_effusion": ("pleural effusion", "effusion"),
    "pleural_other": ("pleural thickening",),
    # Not "acute fracture": "No acute ..." opens the no-finding impression.
    "fracture": ("displaced rib fracture", "rib fracture"),
}
_NEGATION_FRAMES = ("No {}.", "There is no {}.", "No {} is seen.", "No evidence of {}.")
_HEART_NORMAL = (
    "Heart size is normal.",
    "Normal heart size.",
    "The heart is not enlarged.",
    "Heart size is within normal limits.",
    "No cardiomegaly.",
)
_MEDIASTINUM_NORMAL = (
    "The mediastinal contours are normal.",
    "The mediastinum is not widened.",
    "Normal mediastinal contours.",
    "No mediastinal widening.",
)
_HEART_AND_MEDIASTINUM_NORMAL = (
    "Heart size and mediastinal contours are normal.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Normal heart size and mediastinal contours.",
)
_LUNGS_CLEAR = (
    "The lungs are clear.",
    "Lungs are clear bilaterally.",
    "The lungs are well expanded and clear.",
)
_NO_FINDING = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary disease.",
    "No active disease.",
)
# Where each kind of sentence usually sits (devices, heart, lungs, pleura, negations, bones,
# impression); the order is then jittered.
_ORDER = {
    "support_devices": 0.0,
    "enlarged_cardiomediastinum": 1.0,
    "cardiomegaly": 1.0,
    **dict.fromkeys(LUNG_PARENCHYMA, 2.0),
    "pneumothorax": 3.0,
    "pleural_effusion": 3.0,
    "pleural_other": 3.0,
    "fracture": 5.0,
}
_LUNGS_CLEAR_ORDER, _NEGATION_ORDER, _IMPRESSION_ORDER = 2.0, 4.0, 6.0


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[rng.integers(len(options))]


def _place(rng: np.random.Generator, f: Finding) -> str:
    return _pick(rng, _ZONE_PLACES[(f.side, f.zone)])


def _positive(rng: np.random.Generator, f: Finding) -> list[str]:
    size, grade, adverb = _SIZE[f.severity], _GRADE[f.severity], _GRADE_ADVERB[f.severity]
    side = f.side
    name = f.name
    if name == "enlarged_cardiomediastinum":
        return [
            "The mediastinum is widened.",
            f"There is {grade} widening of the mediastinum.",
            f"The superior mediastinum is {adverb} widened.",
            "Mediastinal widening is noted.",
        ]
    if name == "cardiomegaly":
        return [
            f"The heart is {adverb} enlarged.",
            f"There is {grade} cardiomegaly.",
            f"{grade} cardiomegaly.",
            f"The cardiac silhouette is {adverb} enlarged.",
        ]
    if name == "lung_opacity":
        place = _place(rng, f)
        texture = ("hazy", "patchy", "confluent")[f.severity]
        return [
            f"There is a {texture} opacity in the {place}.",
            f"{texture} airspace opacity in the {place}.",
            f"Focal opacity is seen in the {place}.",
        ]
    if name == "lung_lesion":
        place = _place(rng, f)
        if f.severity == 2:
            return [f"There is a 3 cm mass in the {place}.", f"A rounded mass in the {place}."]
        size_words = ("8 mm", "1 cm")[f.severity]
        return [
            f"There is a {size_words} nodule in the {place}.",
            f"A {size_words} pulmonary nodule is seen in the {place}.",
            f"Rounded nodule in the {place}.",
        ]
    if name == "edema":
        return [
            f"There is {grade} pulmonary edema.",
            f"{grade} interstitial edema.",
            f"Findings are consistent with {grade} pulmonary edema.",
            f"{grade} perihilar pulmonary edema.",
        ]
    if name == "consolidation":
        place = _place(rng, f)
        return [
            f"There is consolidation in the {place}.",
            f"Dense consolidation in the {place}.",
            f"Focal consolidation is present in the {place}.",
        ]
    if name == "pneumonia":
        place = _place(rng, f)
        multifocal = ["Multifocal pneumonia."] if side == "bilateral" else []
        return [
            f"Findings are consistent with pneumonia in the {place}.",
            f"There is pneumonia in the {place}.",
            *multifocal,
        ]
    if name == "atelectasis":
        base = _BASE[side]
        bases = "both lung bases" if side == "bilateral" else f"the {side} lung base"
        return [
            f"There is {grade} {base} atelectasis.",
            f"Plate-like atelectasis at {bases}.",
            f"Linear atelectasis at {bases}.",
            f"{grade} {base} atelectasis.",
        ]
    if name == "pneumothorax":
        return [
            f"There is a {size} {side} apical pneumothorax.",
            f"A {size} {side} pneumothorax is present.",
            f"{size} {side} pneumothorax.",
        ]
    if name == "pleural_effusion":
        if side == "bilateral":
            return [
                f"{size} bilateral pleural effusions.",
                f"There are {size} bilateral effusions.",
            ]
        blunting = (
            [f"Blunting of the {side} costophrenic angle consistent with a small effusion."]
            if f.severity == 0
            else []
        )
        return [
            f"There is a {size} {side} pleural effusion.",
            f"{size} {side} pleural effusion.",
            f"A {size} {side} effusion is present.",
            *blunting,
        ]
    if name == "pleural_other":
        where = "apical" if f.zone == "upper" else "lateral"
        return [
            f"There is {side} {where} pleural thickening.",
            f"Pleural thickening along the {side} {where} chest wall.",
        ]
    if name == "fracture":
        rib = _ORDINALS[f.rib]
        return [
            f"There is an acute fracture of the {side} {rib} rib.",
            f"{side} {rib} rib fracture.",
            f"A healing fracture of the {side} {rib} rib is noted.",
        ]
    raise ValueError(f"No positive wording for {name!r}.")


def _uncertain(rng: np.random.Generator, f: Finding) -> list[str]:
    side, name = f.side, f.name
    if name == "enlarged_cardiomediastinum":
        return ["The mediastinum may be widened.", "Possible mediastinal widening."]
    if name == "cardiomegaly":
        return [
            "Possible mild cardiomegaly.",
            "The heart may be mildly enlarged.",
            "Cardiomegaly cannot be excluded.",
        ]
    if name == "lung_opacity":
        place = _place(rng, f)
        return [f"Possible faint opacity in the {place}.", f"Questionable opacity in the {place}."]
    if name == "lung_lesion":
        place = _place(rng, f)
        return [f"Possible small nodule in the {place}.", f"Questionable nodule in the {place}."]
    if name == "edema":
        return ["Possible mild pulmonary edema.", "There may be mild interstitial edema."]
    if name == "consolidation":
        place = _place(rng, f)
        return [
            f"Possible early consolidation in the {place}.",
            f"Consolidation in the {place} cannot be excluded.",
        ]
    if name == "pneumonia":
        return [
            "Cannot exclude pneumonia.",
            "Pneumonia cannot be excluded.",
            f"Possible early pneumonia in the {_place(rng, f)}.",
        ]
    if name == "atelectasis":
        base = _BASE[side]
        return [
            f"Subtle {base} changes may represent atelectasis.",
            f"Possible {base} atelectasis.",
        ]
    if name == "pneumothorax":
        return [
            f"Possible tiny {side} apical pneumothorax.",
            f"A small {side} apical pneumothorax cannot be excluded.",
        ]
    if name == "pleural_effusion":
        if side == "bilateral":
            return ["Possible small bilateral pleural effusions."]
        return [
            f"Possible small {side} effusion.",
            f"A small {side} pleural effusion cannot be excluded.",
            f"Questionable trace {side} pleural effusion.",
        ]
    if name == "pleural_other":
        return [f"Possible {side} pleural thickening."]
    if name == "fracture":
        return [
            f"Possible fracture of the {side} {_ORDINALS[f.rib]} rib.",
            f"Questionable {side} rib fracture.",
        ]
    raise ValueError(f"No hedged wording for {name!r}.")


def _finding_sentences(rng: np.random.Generator, f: Finding) -> list[tuple[float, str]]:
    if f.name == "support_devices":
        cm = int(rng.integers(3, 7))
        return [
            (_ORDER["support_devices"], _pick(rng, _DEVICE_SENTENCES[d]).format(cm=cm))
            for d in f.devices
        ]
    options = _positive(rng, f) if f.state == POSITIVE else _uncertain(rng, f)
    return [(_ORDER[f.name], _pick(rng, options))]


def _negation_sentences(
    rng: np.random.Generator, findings: StudyFindings
) -> list[tuple[float, str]]:
    sentences = []
    heart = "cardiomegaly" in findings.negated
    mediastinum = "enlarged_cardiomediastinum" in findings.negated
    if heart and mediastinum and rng.random() < 0.6:
        sentences.append((_ORDER["cardiomegaly"], _pick(rng, _HEART_AND_MEDIASTINUM_NORMAL)))
    else:
        if heart:
            sentences.append((_ORDER["cardiomegaly"], _pick(rng, _HEART_NORMAL)))
        if mediastinum:
            order = _ORDER["enlarged_cardiomediastinum"] + 0.1  # usually after the heart
            sentences.append((order, _pick(rng, _MEDIASTINUM_NORMAL)))
    nouns = [
        _pick(rng, options) for name, options in _NEGATED_NOUNS.items() if name in findings.negated
    ]
    order = rng.permutation(len(nouns))
    nouns = [nouns[i] for i in order]
    # One to three nouns per sentence, e.g. "No focal consolidation, effusion, or pneumothorax."
    while nouns:
        size = int(rng.integers(1, 4))
        group, nouns = nouns[:size], nouns[size:]
        if len(group) == 1:
            listed = group[0]
        elif len(group) == 2:
            listed = f"{group[0]} or {group[1]}"
        else:
            listed = f"{group[0]}, {group[1]}, or {group[2]}"
        sentences.append((_NEGATION_ORDER, _pick(rng, _NEGATION_FRAMES).format(listed)))
    return sentences


def write_report(findings: StudyFindings, rng: np.random.Generator) -> str:
    """A free-text report stating exactly the labels of ``findings`` (module docstring)."""
    sentences: list[tuple[float, str]] = []
    for f in findings.present:
        sentences.extend(_finding_sentences(rng, f))
    sentences.extend(_negation_sentences(rng, findings))
    if findings.lungs_clear:
        sentences.append((_LUNGS_CLEAR_ORDER, _pick(rng, _LUNGS_CLEAR)))
    if findings.label("no_finding") == POSITIVE:
        sentences.append((_IMPRESSION_ORDER, _pick(rng, _NO_FINDING)))
    keys = np.array([k for k, _ in sentences]) + rng.normal(0.0, 0.6, size=len(sentences))
    ordered = [sentences[i][1] for i in np.argsort(keys, kind="stable")]
    return " ".join(s[0].upper() + s[1:] for s in ordered)
