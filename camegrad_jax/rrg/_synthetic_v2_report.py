"""Reports of the realistic (``"v2"``) synthetic generator, in the style of IU X-Ray and MIMIC-CXR.

A report is a technique/view line, usually a comparison line, then ``FINDINGS:`` and
``IMPRESSION:`` sections::

    PA and lateral views of the chest. Comparison: none. FINDINGS: ... IMPRESSION: ...

The findings section runs from support devices (with their tip positions, wrong ones flagged)
through heart and mediastinum, lungs, pleura, findings outside the 14 labels, to bones and upper
abdomen; the impression restates the reported findings for abnormal studies and is "no acute
cardiopulmonary process" otherwise. The wording encodes CheXpert's semantics, which is how the
labels of :mod:`~camegrad_jax.rrg._synthetic_v2_findings` are stated:

* hedges where radiologists place them: "opacity in the right lower lobe, which may represent
  pneumonia" (opacity positive, pneumonia uncertain), "pulmonary vascular congestion" (uncertain
  edema), "heart size is borderline" or, at follow-up, "heart size is unchanged" (uncertain
  cardiomegaly), "no new effusion" (uncertain effusion);
* mixed-polarity sentences: "small left pleural effusion without pneumothorax", "the heart is
  enlarged, but there is no pulmonary edema";
* comparison language: "new", "stable", "slightly increased", "has resolved" (negative).

A BLANK label is never mentioned and a NEGATIVE one is negated explicitly (or, for lung opacity,
consolidation, edema and pneumonia, by "the lungs are clear").
"""

from __future__ import annotations

import numpy as np

from camegrad_jax.rrg._synthetic_v2_findings import Study
from camegrad_jax.rrg._synthetic_v2_phrases import (
    ABDOMEN_NORMAL,
    BONES_NORMAL,
    BOTH_NORMAL,
    DEVICE_TIPS,
    HABITUS,
    HEART_NORMAL,
    INCIDENTAL_SENTENCES,
    INDICATIONS,
    LOW_VOLUMES,
    LUNGS_CLEAR,
    MALPOSITIONED,
    MEDIASTINUM_NORMAL,
    NEGATED_NOUNS,
    NEGATION_FRAMES,
    NEUTRAL,
    NIPPLE_SHADOWS,
    NORMAL_IMPRESSIONS,
    ORDER,
    PLACES,
    RECOMMENDATIONS,
    ROTATED,
    VASCULATURE_NORMAL,
    capitalise,
    choose,
)
from camegrad_jax.rrg._synthetic_v2_sentences import (
    airspace_combination,
    positive_sentence,
    short_mention,
    uncertain_sentence,
)
from camegrad_jax.rrg.observations import BLANK, NEGATIVE, POSITIVE, UNCERTAIN

__all__ = ["write_report"]


def _technique(rng: np.random.Generator, study: Study, num_views: int) -> str:
    ap = study.acquisition.projection == "AP"
    if num_views == 2:
        options = (
            (
                "AP and lateral views of the chest.",
                "Portable AP and lateral chest.",
                "Semi-upright AP and lateral views of the chest.",
                "Bedside AP and lateral radiographs of the chest were obtained.",
            )
            if ap
            else (
                "PA and lateral views of the chest.",
                "Two views of the chest.",
                "PA and lateral chest radiographs.",
                "Frontal and lateral views of the chest.",
                "Upright PA and lateral views of the chest.",
                "Erect PA and lateral radiographs of the thorax.",
            )
        )
    else:
        options = (
            (
                "Portable AP upright view of the chest.",
                "Single portable AP chest radiograph.",
                "AP semi-erect view of the chest.",
            )
            if ap
            else (
                "PA view of the chest.",
                "Single frontal view of the chest.",
                "Upright PA chest radiograph.",
            )
        )
    return choose(rng, options)


# Reasons for the examination, by clinical picture; none names one of the 14 observations, so the
# indication carries no label (CheXpert labels the findings and impression).
def _indication(rng: np.random.Generator, study: Study) -> str:
    if rng.random() < 0.5:
        return ""
    reason = choose(rng, INDICATIONS[study.scenario])
    who = choose(
        rng,
        ("", "Elderly man with ", "Woman with ", "Man with ", "Patient with ", "Young woman with "),
    )
    return f"Indication: {who}{reason}." if who else f"Indication: {capitalise(reason)}."


def _comparison(rng: np.random.Generator, study: Study) -> str:
    if study.prior:
        n = int(rng.integers(2, 10))
        return choose(
            rng,
            (
                "Comparison is made to the prior radiograph.",
                "Comparison: chest radiograph from the prior day.",
                "Compared with the previous study.",
                f"Comparison: chest radiograph from {n} days earlier.",
                f"Comparison: ct of the chest from {n} weeks ago.",
                f"Comparison to prior radiographs from {n} months before.",
                f"Comparison: chest radiographs dating back {n} years.",
            ),
        )
    return choose(rng, ("Comparison: none.", "No prior studies for comparison.", "", "", ""))


def _negations(rng: np.random.Generator, study: Study, attached: str) -> list[tuple[float, str]]:
    f = study.findings
    out: list[tuple[float, str]] = []
    heart = f.label("cardiomegaly") == NEGATIVE
    mediastinum = f.label("enlarged_cardiomediastinum") == NEGATIVE
    if heart and mediastinum and rng.random() < 0.6:
        out.append((1.0, choose(rng, BOTH_NORMAL)))
    else:
        if heart:
            out.append((1.0, choose(rng, HEART_NORMAL)))
        if mediastinum:
            out.append((1.1, choose(rng, MEDIASTINUM_NORMAL)))
    resolved = [n for n in study.resolved if n in f.negated]
    for name in resolved:
        noun = NEGATED_NOUNS[name][0].replace("focal ", "")
        out.append(
            (
                3.5,
                choose(
                    rng,
                    (
                        f"The previously seen {noun} has resolved.",
                        f"Previously noted {noun} has resolved.",
                    ),
                ),
            )
        )
    nouns = [
        choose(rng, options)
        for name, options in NEGATED_NOUNS.items()
        if name in f.negated and name not in resolved and name != attached
    ]
    nouns = [nouns[i] for i in rng.permutation(len(nouns))]
    while nouns:
        size = int(rng.integers(1, 4))
        group, nouns = nouns[:size], nouns[size:]
        listed = (
            group[0]
            if len(group) == 1
            else (
                f"{group[0]} or {group[1]}"
                if len(group) == 2
                else f"{group[0]}, {group[1]}, or {group[2]}"
            )
        )
        out.append((4.0, choose(rng, NEGATION_FRAMES).format(listed)))
    return out


def _impression(rng: np.random.Generator, study: Study, combined: str) -> str:
    f = study.findings
    malpositioned = [tip for tip in study.device_tips if tip[1] in MALPOSITIONED]
    parts = []
    for device, tip, name in malpositioned[:1]:
        parts.append(choose(rng, DEVICE_TIPS[(device, tip)]).format(cm=4, name=name))
    abnormal = [x for x in f.present if x.name != "support_devices" and x.name not in study.no_new]
    abnormal.sort(key=lambda x: (x.state != POSITIVE, -x.severity))
    for finding in abnormal[: 2 - len(parts)]:
        if combined and finding.name in ("lung_opacity", "consolidation", "pneumonia"):
            if combined not in parts:
                parts.append(combined)
            continue
        parts.append(short_mention(rng, finding, study))
    for name, text in RECOMMENDATIONS.items():
        finding = f.finding(name)
        if finding is not None and finding.state == POSITIVE and rng.random() < 0.3:
            parts.append(text)
    if study.acquisition.inspiration < 0.2 and rng.random() < 0.3:
        parts.append("Consider repeat radiograph with improved inspiration.")
    if not parts:
        options = NORMAL_IMPRESSIONS + (
            ("No significant interval change.", "Stable appearance of the chest.")
            if study.prior
            else ()
        )
        if f.finding("support_devices") is not None:
            options = (
                "Support devices as above. No acute cardiopulmonary process.",
                "Lines and tubes as described. No acute cardiopulmonary process.",
                "No acute cardiopulmonary process.",
            )
        parts.append(choose(rng, options))
    return " ".join(capitalise(p) for p in parts)


def _limitations(rng: np.random.Generator, study: Study) -> list[tuple[float, str]]:
    a = study.acquisition
    out = []
    if a.inspiration < 0.3:
        out.append((0.5, choose(rng, LOW_VOLUMES)))
    if abs(a.rotation) > 0.05:
        side = "right" if a.rotation > 0 else "left"
        out.append((0.5, choose(rng, ROTATED).format(side=side)))
    if a.body > 1.15:
        out.append((0.5, choose(rng, HABITUS)))
    return out


def write_report(study: Study, rng: np.random.Generator, *, num_views: int = 2) -> str:
    """The report of ``study``: technique, comparison, FINDINGS and IMPRESSION sections."""
    f = study.findings
    changes = dict(study.changes)
    sentences: list[tuple[float, str]] = []
    used: set[str] = set()
    for device, tip, name in study.device_tips:
        text = choose(rng, DEVICE_TIPS[(device, tip)])
        text = capitalise(text.format(cm=int(rng.integers(3, 7)), name=name))
        sentences.append((0.0, text))
    combined = airspace_combination(rng, study, used)
    sentences.extend((2.0, text) for text in combined)
    # A mixed-polarity sentence: one pertinent negative attached to the first positive finding.
    negatable = [
        n
        for n in ("pneumothorax", "pleural_effusion", "edema")
        if n in f.negated and n not in study.resolved
    ]
    attached = negatable[0] if negatable and rng.random() < 0.3 else ""
    first_positive = next(
        (
            x.name
            for x in f.present
            if x.state == POSITIVE and x.name not in used and x.name != "support_devices"
        ),
        "",
    )
    if not first_positive:
        attached = ""
    for finding in f.present:
        if finding.name == "support_devices" or finding.name in used:
            continue
        if finding.state == POSITIVE:
            text = positive_sentence(rng, finding, changes.get(finding.name, ""))
            if attached and finding.name == first_positive:
                noun = choose(rng, NEGATED_NOUNS[attached]).replace("large ", "")
                text = choose(rng, (f"{text} without {noun}", f"{text}, but no {noun}"))
        else:
            text = uncertain_sentence(rng, finding, study)
        sentences.append((ORDER[finding.name], capitalise(text) + "."))
    sentences.extend(_negations(rng, study, attached))
    if f.lungs_clear:
        clear = choose(rng, LUNGS_CLEAR)
        if any(n == "hyperinflation" for n in study.reported_incidentals()):
            clear = "The lungs are hyperinflated but clear."
        sentences.append((2.0, clear))
    for name in study.reported_incidentals():
        if name == "hyperinflation" and f.lungs_clear:
            continue
        place = choose(rng, PLACES[(choose(rng, ("right", "left")), choose(rng, ("upper", "mid")))])
        sentences.append((4.5, choose(rng, INCIDENTAL_SENTENCES[name]).format(place=place)))
    if f.label("fracture") not in (POSITIVE, UNCERTAIN) and rng.random() < 0.3:
        sentences.append((5.0, choose(rng, BONES_NORMAL)))
    if rng.random() < 0.1:
        sentences.append((5.5, choose(rng, ABDOMEN_NORMAL)))
    sentences.extend(_limitations(rng, study))
    if rng.random() < 0.12:
        sentences.append((1.2, choose(rng, NEUTRAL)))
    if "nipple_shadows" in study.lookalikes and rng.random() < 0.3:
        sentences.append((2.3, choose(rng, NIPPLE_SHADOWS)))
    if f.label("edema") in (BLANK, NEGATIVE) and rng.random() < 0.15:
        sentences.append((2.5, choose(rng, VASCULATURE_NORMAL)))
    if not sentences:  # a findings section is never empty: a statement without a label
        sentences.append((5.0, choose(rng, BONES_NORMAL + VASCULATURE_NORMAL)))
    keys = np.array([k for k, _ in sentences]) + rng.normal(0.0, 0.3, size=len(sentences))
    findings_text = " ".join(sentences[i][1] for i in np.argsort(keys, kind="stable"))
    impression = _impression(rng, study, combined[0] if combined else "")
    head = " ".join(
        x
        for x in (
            _indication(rng, study),
            _technique(rng, study, num_views),
            _comparison(rng, study),
        )
        if x
    )
    return f"{head} FINDINGS: {findings_text} IMPRESSION: {impression}"
