"""The sentences of the realistic (``"v2"``) synthetic reports that state one finding.

A positive finding in full (size or grade, place, comparison word: "small left pleural effusion,
slightly increased"), an uncertain one hedged where radiologists hedge ("opacity in the right
lower lobe, which may represent pneumonia"), the airspace findings that share one sentence, and
the short mention an impression uses. Every sentence draws from the generator it is given, in a
fixed order, so a study's report is reproducible from its seed.

Example:
  >>> from camegrad_jax.rrg._synthetic_v2_sentences import positive_sentence
  >>> callable(positive_sentence)
  True
"""

from __future__ import annotations

import numpy as np

from camegrad_jax.rrg._synthetic_findings import Finding
from camegrad_jax.rrg._synthetic_v2_findings import Study
from camegrad_jax.rrg._synthetic_v2_phrases import (
    ADVERB,
    AREA,
    BASE,
    CHANGE_PREFIX,
    GRADE,
    NEGATED_NOUNS,
    ORDINAL,
    SIZE,
    capitalise,
    choose,
    place_of,
    seen_phrase,
)
from camegrad_jax.rrg.observations import POSITIVE, UNCERTAIN

__all__ = ["airspace_combination", "positive_sentence", "short_mention", "uncertain_sentence"]


def positive_sentence(rng: np.random.Generator, f: Finding, change: str) -> str:
    """An affirmative sentence (without the final period), prefixed by the change at follow-up."""
    sev = f.severity
    size, grade, adverb = choose(rng, SIZE[sev]), choose(rng, GRADE[sev]), choose(rng, ADVERB[sev])
    pre = f"{choose(rng, CHANGE_PREFIX[change])} " if change else ""
    side = f.side
    name = f.name
    if name == "enlarged_cardiomediastinum":
        options = [
            f"the mediastinum is {adverb} widened",
            f"{pre}widening of the mediastinum",
            f"{pre}{adverb} widened superior mediastinum",
        ]
    elif name == "cardiomegaly":
        options = [
            f"the heart is {adverb} enlarged",
            f"{pre}{grade} cardiomegaly",
            f"the cardiac silhouette is {adverb} enlarged",
            f"{pre}{grade} enlargement of the cardiac silhouette",
            f"{pre}{grade} cardiomegaly with a left ventricular configuration",
            f"the heart is {adverb} enlarged with a globular contour",
        ]
    elif name == "lung_opacity":
        texture = choose(
            rng,
            (
                ("hazy", "faint", "ground-glass"),
                ("patchy", "streaky", "reticular", "ill-defined"),
                ("confluent", "dense", "wedge-shaped"),
            )[sev],
        )
        options = [
            f"{pre}{texture} opacity in {place_of(rng, f)}",
            f"there is {pre}{texture} airspace opacity in {place_of(rng, f)}",
            f"{pre}{texture} opacity {seen_phrase(rng, change)} in {place_of(rng, f)}",
        ]
    elif name == "lung_lesion":
        place = place_of(rng, f)
        shape = choose(
            rng,
            (
                "spiculated",
                "lobulated",
                "well-circumscribed",
                "noncalcified",
                "smoothly marginated",
                "round",
            ),
        )
        if sev == 2:
            width = f"{int(rng.integers(3, 7))} cm"
            options = [
                f"{pre}{shape} {width} mass in {place}",
                f"a {pre}{shape} mass {seen_phrase(rng, change)} in {place}",
            ]
        else:
            width = f"{int(rng.integers(4, 10) if sev == 0 else rng.integers(10, 19))} mm"
            options = [
                f"{pre}{shape} {width} nodule in {place}",
                f"a {pre}{width} {shape} pulmonary nodule projects over {place}",
                f"a {width} nodule {seen_phrase(rng, change)} in {place}",
            ]
    elif name == "edema":
        options = [
            f"{pre}{grade} pulmonary edema",
            f"there is {pre}{grade} interstitial edema",
            f"findings are consistent with {pre}{grade} pulmonary edema",
            f"{pre}{grade} interstitial pulmonary edema",
            f"{pre}{grade} alveolar edema in a perihilar distribution",
            f"{pre}{grade} interstitial edema with cephalization of the vasculature",
        ]
    elif name == "consolidation":
        place = place_of(rng, f)
        options = [
            f"{pre}consolidation in {place}",
            f"{pre}dense consolidation in {place}",
            f"{pre}consolidation with air bronchograms {seen_phrase(rng, change)} in {place}",
        ]
        if f.zone == "mid" and side in ("right", "left"):
            border = "right heart border" if side == "right" else "left heart border"
            options.append(f"{pre}consolidation in {place} obscures the {border}")
        if f.zone == "lower" and side in ("right", "left"):
            options.append(
                f"{pre}{side} lower lobe consolidation silhouettes the {side} hemidiaphragm"
            )
    elif name == "pneumonia":
        place = place_of(rng, f)
        options = [
            f"findings are consistent with pneumonia in {place}",
            f"{pre}pneumonia in {place}",
        ]
        if side == "bilateral":
            options.append(f"{pre}multifocal pneumonia")
    elif name == "atelectasis":
        bases = "the lung bases" if side == "bilateral" else f"the {side} base"
        kind = choose(rng, ("linear", "discoid", "bandlike", "subsegmental", "dependent"))
        options = [
            f"{pre}{grade} {BASE[side]} atelectasis",
            f"{pre}{kind} atelectasis at {bases}",
            f"{pre}{kind} atelectasis {seen_phrase(rng, change)} at {bases}",
        ]
    elif name == "pneumothorax":
        depth = int(rng.integers(5, 40))
        options = [
            f"{pre}{size} {side} apical pneumothorax",
            f"there is a {pre}{size} {side} pneumothorax",
            f"{pre}{size} {side} apical pneumothorax measuring {depth} mm",
            f"{pre}{size} {side} pneumothorax without tension physiology",
            f"a {side} pleural line {seen_phrase(rng, change)} with a {size} pneumothorax",
        ]
    elif name == "pleural_effusion":
        if side == "bilateral":
            options = [
                f"{pre}{size} bilateral pleural effusions",
                f"{pre}{size} bilateral effusions layering posteriorly",
            ]
        else:
            options = [
                f"{pre}{size} {side} pleural effusion",
                f"there is a {pre}{size} {side} effusion",
                f"{pre}{size} loculated {side} pleural effusion",
                f"{pre}{size} {side} subpulmonic effusion",
                f"{pre}{size} {side} pleural effusion with a meniscus laterally",
            ]
    elif name == "pleural_other":
        where = "apical" if f.zone == "upper" else "lateral"
        options = [
            f"{side} {where} pleural thickening",
            f"pleural thickening along the {side} {where} chest wall",
        ]
        if f.zone == "upper":
            options += [
                f"{side} apical pleural cap",
                f"pleuroparenchymal scarring at the {side} apex",
            ]
    elif name == "fracture":
        rib = ORDINAL.get(f.rib, "sixth")
        aspect = choose(rng, ("posterior", "lateral", "anterior", "posterolateral"))
        age = choose(rng, ("acute", "healing", "remote", "minimally displaced", "nondisplaced"))
        options = [
            f"{age} fracture of the {aspect} {side} {rib} rib",
            f"{age} {side} {rib} rib fracture",
            f"old healed {side} rib fractures",
            f"healing fracture of the {side} {rib} rib with callus formation",
        ]
    else:
        raise ValueError(f"No positive wording for {name!r}.")
    return choose(rng, options)


def uncertain_sentence(rng: np.random.Generator, f: Finding, study: Study) -> str:
    name, side = f.name, f.side
    if name in study.no_new:
        noun = NEGATED_NOUNS[name][0]
        return choose(rng, (f"no new {noun}", f"there is no new {noun}"))
    if name == "cardiomegaly":
        if study.prior:
            return choose(rng, ("heart size is unchanged", "the cardiac silhouette is stable"))
        return choose(
            rng,
            (
                "heart size is borderline",
                "the cardiac silhouette is borderline in size",
                "possible mild cardiomegaly",
            ),
        )
    place = place_of(rng, f) if f.zone else ""
    options = {
        "enlarged_cardiomediastinum": (
            "the mediastinum may be widened",
            "possible mediastinal widening, likely due to technique",
        ),
        "lung_opacity": (f"questionable opacity in {place}", f"possible faint opacity in {place}"),
        "lung_lesion": (
            f"possible small nodule in {place}, which may be a nipple shadow",
            f"questionable nodule in {place}",
        ),
        "edema": (
            "mild pulmonary vascular congestion",
            "possible mild interstitial edema",
            "there may be mild pulmonary edema",
            "mild cephalization of the pulmonary vasculature",
            "borderline interstitial edema is questioned",
        ),
        "consolidation": (
            f"possible early consolidation in {place}",
            f"consolidation in {place} cannot be excluded",
        ),
        "pneumonia": (
            "cannot exclude pneumonia",
            "pneumonia cannot be excluded",
            f"findings could reflect early pneumonia in {place}",
            "superimposed pneumonia is difficult to exclude",
            "in the appropriate clinical setting, pneumonia is possible",
        ),
        "atelectasis": (
            f"possible {BASE[side or 'bilateral']} atelectasis",
            f"{BASE[side or 'bilateral']} changes may reflect atelectasis",
            f"probable minor {BASE[side or 'bilateral']} atelectasis",
            f"{BASE[side or 'bilateral']} atelectasis is suspected",
        ),
        "pneumothorax": (
            f"possible tiny {side} apical pneumothorax",
            f"a tiny {side} pneumothorax cannot be excluded",
        ),
        "pleural_effusion": (
            "possible small bilateral pleural effusions"
            if side == "bilateral"
            else f"possible trace {side} effusion",
            "a small pleural effusion cannot be excluded",
        ),
        "pleural_other": (f"possible {side} pleural thickening",),
        "fracture": (
            f"possible nondisplaced fracture of the {side} {ORDINAL.get(f.rib, 'sixth')} rib",
            f"questionable {side} rib fracture",
        ),
    }[name]
    return choose(rng, options)


def airspace_combination(rng: np.random.Generator, study: Study, used: set[str]) -> list[str]:
    """Hedged interpretations attached to a positive airspace finding (radiologists' style)."""
    out = []
    anchor = next(
        (
            f
            for f in study.findings.present
            if f.name in ("lung_opacity", "consolidation") and f.state == POSITIVE
        ),
        None,
    )
    pneumonia = study.findings.finding("pneumonia")
    atelectasis = study.findings.finding("atelectasis")
    if anchor is None or pneumonia is None or pneumonia.name in study.no_new:
        return out
    if (pneumonia.side, pneumonia.zone) != (anchor.side, anchor.zone):
        return out
    base = positive_sentence(rng, anchor, dict(study.changes).get(anchor.name, ""))
    if pneumonia.state == POSITIVE:
        text = f"{base}, consistent with pneumonia"
    elif (
        atelectasis is not None
        and atelectasis.state == UNCERTAIN
        and atelectasis.side == anchor.side
        and anchor.zone == "lower"
    ):
        text = f"{base}, which may represent atelectasis or pneumonia"
        used.add("atelectasis")
    else:
        text = choose(
            rng,
            (
                f"{base}, which may represent pneumonia",
                f"{base}, concerning for pneumonia",
                f"{base}, possibly pneumonia",
            ),
        )
    used.update({anchor.name, "pneumonia"})
    out.append(capitalise(text) + ".")
    return out


def short_mention(rng: np.random.Generator, f: Finding, study: Study) -> str:
    """The impression's restatement of a reported finding, with the same label."""
    area = AREA[(f.side or "right", f.zone or "lower")]
    side = f.side
    if f.state == UNCERTAIN:
        if f.name == "cardiomegaly":
            return "Borderline heart size."
        noun = {
            "enlarged_cardiomediastinum": "mediastinal widening",
            "lung_opacity": f"{area} opacity",
            "lung_lesion": f"{area} nodule",
            "edema": "mild pulmonary edema",
            "consolidation": f"{area} consolidation",
            "pneumonia": "pneumonia",
            "atelectasis": f"{BASE[side or 'bilateral']} atelectasis",
            "pneumothorax": f"tiny {side} pneumothorax",
            "pleural_effusion": "small pleural effusion",
            "pleural_other": f"{side} pleural thickening",
            "fracture": f"{side} rib fracture",
        }[f.name]
        return choose(
            rng,
            (
                f"Possible {noun}.",
                f"{capitalise(noun)} cannot be excluded.",
                f"Findings may represent {noun}.",
            ),
        )
    size = SIZE[f.severity][0]
    text = {
        "enlarged_cardiomediastinum": "Widened mediastinum; consider ct to assess the aorta.",
        "cardiomegaly": choose(rng, ("Cardiomegaly.", "Enlarged heart.")),
        "lung_opacity": f"{capitalise(area)} opacity.",
        "lung_lesion": choose(
            rng,
            (
                f"{capitalise(area)} nodule; recommend chest ct for further evaluation.",
                f"{capitalise(area)} pulmonary nodule, follow-up ct is recommended.",
            ),
        ),
        # "Heart failure" is an uncertain cardiomegaly by CheXpert's rule: only with a big heart.
        "edema": choose(
            rng,
            (
                "Pulmonary edema.",
                "Findings consistent with congestive heart failure and pulmonary edema.",
            )
            if study.findings.label("cardiomegaly") == POSITIVE
            else ("Pulmonary edema.", "Interstitial pulmonary edema."),
        ),
        "consolidation": f"{capitalise(area)} consolidation.",
        "pneumonia": choose(
            rng, (f"{capitalise(area)} pneumonia.", f"Findings consistent with {area} pneumonia.")
        ),
        "atelectasis": f"{capitalise(BASE[side or 'bilateral'])} atelectasis.",
        "pneumothorax": choose(
            rng,
            (
                f"{capitalise(size)} {side} pneumothorax.",
                f"{capitalise(size)} {side} "
                "pneumothorax; findings were discussed with the referring "
                "physician.",
            ),
        ),
        "pleural_effusion": (
            f"{capitalise(size)} bilateral pleural effusions."
            if side == "bilateral"
            else f"{capitalise(size)} {side} pleural effusion."
        ),
        "pleural_other": f"{capitalise(side)} pleural thickening.",
        "fracture": f"{capitalise(side)} rib fracture.",
    }[f.name]
    return text
