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

from camegrad_jax.rrg._synthetic_findings import Finding
from camegrad_jax.rrg._synthetic_v2_findings import Study
from camegrad_jax.rrg.observations import BLANK, NEGATIVE, POSITIVE, UNCERTAIN

__all__ = ["write_report"]

_SIZE = (("small", "trace", "small"), ("moderate", "moderate-sized"), ("large",))
_GRADE = (("mild", "minimal"), ("moderate",), ("severe", "marked"))
_ADVERB = (("mildly", "slightly"), ("moderately",), ("markedly", "severely"))
_ORDINAL = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
_PLACES = {
    ("right", "upper"): (
        "the right upper lobe",
        "the right upper lung",
        "the right apex",
        "the posterior segment of the right upper lobe",
        "the right suprahilar region",
    ),
    ("right", "mid"): (
        "the right middle lobe",
        "the right mid lung",
        "the right perihilar region",
        "the right infrahilar region",
        "the lateral segment of the right middle lobe",
    ),
    ("right", "lower"): (
        "the right lower lobe",
        "the right lung base",
        "the right base",
        "the superior segment of the right lower lobe",
        "the right cardiophrenic angle",
    ),
    ("left", "upper"): (
        "the left upper lobe",
        "the left upper lung",
        "the left apex",
        "the apicoposterior segment of the left upper lobe",
        "the left suprahilar region",
    ),
    ("left", "mid"): (
        "the lingula",
        "the left mid lung",
        "the left perihilar region",
        "the left infrahilar region",
        "the superior lingula",
    ),
    ("left", "lower"): (
        "the left lower lobe",
        "the left lung base",
        "the left base",
        "the retrocardiac region",
        "the superior segment of the left lower lobe",
    ),
    ("bilateral", "upper"): ("both upper lobes", "the upper lungs bilaterally", "both apices"),
    ("bilateral", "mid"): ("both mid lungs", "the perihilar regions bilaterally"),
    ("bilateral", "lower"): ("both lower lobes", "the lung bases", "the lower lungs bilaterally"),
}
_SEEN = ("is seen", "is noted", "is present", "is demonstrated", "is identified", "is evident")
_SEEN_AGAIN = ("is again seen", "is redemonstrated", "is again noted")
_BASE = {"right": "right basilar", "left": "left basilar", "bilateral": "bibasilar"}
_CHANGE_PREFIX = {
    "new": ("new", "interval development of", "newly seen", "newly apparent"),
    "stable": ("stable", "unchanged", "persistent", "grossly unchanged", "similar"),
    "increased": ("slightly increased", "increasing", "worsening", "enlarging", "progressive"),
    "decreased": ("decreasing", "slightly decreased", "improving", "slightly smaller"),
}
_NEGATED_NOUNS = {
    "lung_opacity": ("focal airspace opacity", "focal opacity", "airspace disease"),
    "lung_lesion": ("suspicious pulmonary nodule", "pulmonary nodule or mass", "suspicious mass"),
    "edema": ("pulmonary edema", "interstitial edema"),
    "consolidation": ("focal consolidation", "consolidation", "lobar consolidation"),
    "pneumonia": ("pneumonia", "evidence of pneumonia"),
    "atelectasis": ("atelectasis",),
    "pneumothorax": ("pneumothorax", "visible pneumothorax"),
    "pleural_effusion": ("pleural effusion", "effusion", "large pleural effusion"),
    "pleural_other": ("pleural thickening",),
    "fracture": ("displaced rib fracture", "acute rib fracture", "rib fracture"),
}
_NEGATION_FRAMES = (
    "No {}.",
    "There is no {}.",
    "No {} is seen.",
    "No evidence of {}.",
    "No {} is identified.",
    "Negative for {}.",
    "No definite {}.",
    "No {} is appreciated.",
)
_HEART_NORMAL = (
    "Heart size is normal.",
    "Normal heart size.",
    "The heart is not enlarged.",
    "Heart size is within normal limits.",
    "The cardiac silhouette is normal in size.",
    "No cardiomegaly.",
    "The cardiac silhouette is not enlarged.",
    "Heart size is top normal.",
    "The heart size is normal given the AP technique.",
)
_MEDIASTINUM_NORMAL = (
    "The mediastinal contours are normal.",
    "Mediastinal contours are unremarkable.",
    "The mediastinum is not widened.",
    "Hilar and mediastinal contours are normal.",
    "The mediastinal silhouette is normal.",
    "Normal mediastinal width.",
)
_BOTH_NORMAL = (
    "The cardiomediastinal silhouette is within normal limits.",
    "Cardiomediastinal silhouette is normal.",
    "Heart size and mediastinal contours are normal.",
    "Normal cardiomediastinal contours.",
)
_LUNGS_CLEAR = (
    "The lungs are clear.",
    "Lungs are clear bilaterally.",
    "The lungs are well expanded and clear.",
    "Both lungs are clear.",
    "The lungs are well aerated and clear.",
    "Clear lungs.",
)
_INCIDENTAL_SENTENCES = {
    "granuloma": (
        "Calcified granuloma in {place}.",
        "A small calcified granuloma projects over {place}.",
        "Stable calcified granuloma in {place}.",
    ),
    "degenerative_spine": (
        "Degenerative changes of the thoracic spine.",
        "Anterior osteophytes along the mid thoracic spine.",
        "Degenerative changes of both acromioclavicular joints and the thoracic spine.",
        "Mild multilevel degenerative changes in the thoracic spine.",
        "Degenerative changes are noted in the spine.",
    ),
    "hyperinflation": (
        "The lungs are hyperinflated, suggesting emphysema.",
        "Hyperinflation with flattening of the hemidiaphragms.",
        "Hyperexpanded lungs are compatible with copd.",
    ),
    "tortuous_aorta": (
        "The thoracic aorta is tortuous and calcified.",
        "Atherosclerotic calcification of the aortic knob.",
        "Tortuous aorta with atherosclerotic calcifications.",
    ),
    "clips": (
        "Surgical clips in the right upper quadrant.",
        "Cholecystectomy clips are noted.",
        "Postsurgical clips project over the left axilla.",
    ),
    "hiatal_hernia": (
        "Small hiatal hernia.",
        "A moderate-sized hiatal hernia projects behind the heart.",
        "Retrocardiac air-fluid level reflects a hiatal hernia.",
    ),
    "scoliosis": (
        "Mild scoliosis of the thoracic spine.",
        "Thoracolumbar scoliosis convex to the right.",
        "There is moderate scoliosis.",
    ),
    "elevated_hemidiaphragm": (
        "Chronic elevation of the right hemidiaphragm.",
        "The right hemidiaphragm is elevated.",
        "Elevated right hemidiaphragm, unchanged in appearance.",
    ),
    "osteopenia": (
        "The bones are diffusely osteopenic.",
        "Diffuse osteopenia.",
        "Osteopenia limits assessment of the ribs.",
    ),
    "calcified_nodes": (
        "Calcified mediastinal and hilar lymph nodes suggest prior granulomatous exposure.",
        "Calcified hilar lymph nodes.",
    ),
    "azygos_fissure": (
        "An azygos fissure is noted, a normal variant.",
        "Incidental azygos lobe.",
    ),
    "cervical_rib": (
        "Incidental right cervical rib.",
        "A cervical rib is present on the right, a normal variant.",
    ),
    "pectus_excavatum": (
        "Pectus excavatum deformity of the sternum.",
        "Mild pectus excavatum.",
    ),
    "shoulder_arthroplasty": (
        "Right shoulder arthroplasty is partially visualized.",
        "A right humeral head prosthesis is noted, the hardware is intact.",
    ),
}
# Statements about the technique's limits, drawn from the acquisition (no label is mentioned).
_LOW_VOLUMES = (
    "Low lung volumes.",
    "Lung volumes are low, crowding the bronchovascular markings.",
    "Shallow inspiration limits evaluation of the lung bases.",
    "The patient has taken a shallow inspiration.",
)
_ROTATED = (
    "The patient is rotated to the {side}.",
    "Rotated positioning limits assessment of the hila.",
    "Slight rotation of the patient to the {side}.",
)
_HABITUS = (
    "Large body habitus limits the study.",
    "Overlying soft tissues limit evaluation of the lung bases.",
    "The study is limited by body habitus and underpenetration.",
)
# Statements that carry no label, written now and then as radiologists do.
_NEUTRAL = (
    "The trachea is midline.",
    "The hila are normal in size.",
    "The aortic arch is unremarkable.",
    "Visualized soft tissues are within normal limits.",
)
_NIPPLE_SHADOWS = (
    "Nipple shadows project over both lung bases.",
    "Bilateral nipple shadows are noted.",
)
_VASCULATURE_NORMAL = (
    "Pulmonary vascularity is within normal limits.",
    "The hila are unremarkable.",
    "Normal pulmonary vascularity.",
)
_BONES_NORMAL = (
    "No acute osseous abnormality.",
    "The osseous structures are intact.",
    "Bony structures are unremarkable.",
    "Visualized osseous structures are within normal limits.",
    "The soft tissues are unremarkable.",
    "The osseous structures are grossly intact.",
)
_ABDOMEN_NORMAL = (
    "The visualized upper abdomen is unremarkable.",
    "Upper abdominal structures are unremarkable.",
    "No free air below the diaphragm.",
)
_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary disease.",
    "No active disease.",
    "No acute intrathoracic process.",
    "No radiographic evidence of acute cardiopulmonary disease.",
    "No acute findings in the chest.",
    "Normal chest radiograph.",
    "No evidence of acute disease in the chest.",
)
# {name} is the device variant (access site or make), {cm} a distance.
_DEVICE_TIPS = {
    ("endotracheal_tube", "standard"): (
        "An {name} terminates {cm} cm above the carina.",
        "The {name} tip is {cm} cm above the carina.",
        "The {name} is in standard position.",
    ),
    ("endotracheal_tube", "low"): (
        "The {name} terminates at the carina and should be withdrawn by 2 cm.",
        "The {name} tip is in the right main stem bronchus; recommend retraction.",
    ),
    ("endotracheal_tube", "high"): (
        "The {name} tip is high, at the level of the clavicles.",
        "The {name} terminates {cm}0 mm above the carina, higher than desired.",
    ),
    ("nasogastric_tube", "stomach"): (
        "A {name} courses below the diaphragm into the stomach.",
        "The {name} extends into the stomach.",
        "The tip of the {name} is in the gastric body.",
    ),
    ("nasogastric_tube", "esophagus"): (
        "The {name} tip is in the distal esophagus and should be advanced.",
        "The {name} terminates in the distal esophagus; recommend advancement.",
    ),
    ("nasogastric_tube", "coiled"): (
        "The {name} is coiled in the esophagus.",
        "The {name} is looped in the upper esophagus and should be repositioned.",
    ),
    ("central_line", "svc"): (
        "A {name} central venous catheter terminates in the mid svc.",
        "The {name} line tip is in the svc.",
        "A {name} catheter ends in the superior vena cava.",
    ),
    ("central_line", "cavoatrial"): (
        "A {name} catheter terminates at the cavoatrial junction.",
        "The {name} line tip projects over the cavoatrial junction.",
    ),
    ("central_line", "right_atrium"): (
        "The {name} catheter extends into the right atrium.",
        "The {name} line tip is in the right atrium and could be withdrawn several cm.",
    ),
    ("central_line", "brachiocephalic"): (
        "The {name} line is malpositioned, terminating in the brachiocephalic vein.",
        "The {name} catheter tip is directed into the contralateral brachiocephalic vein.",
    ),
    ("chest_tube", "apex"): (
        "A {name} chest tube is in place with its tip at the apex.",
        "The {name} chest tube terminates near the apex.",
    ),
    ("chest_tube", "fissure"): (
        "A {name} chest tube courses into the major fissure.",
        "The {name} chest tube tip projects over the fissure and could be retracted.",
    ),
    ("pacemaker", "standard"): (
        "A left chest wall {name} is present with leads in the right atrium and ventricle.",
        "A {name} is in place with leads in standard position.",
        "Left-sided {name} with leads terminating in the right ventricle.",
    ),
    ("sternotomy_wires", "standard"): (
        "Median {name} are intact.",
        "Intact median {name}.",
        "Status post median sternotomy with {name}.",
    ),
}
_MALPOSITIONED = {
    "low",
    "high",
    "esophagus",
    "coiled",
    "right_atrium",
    "brachiocephalic",
    "fissure",
}
_RECOMMENDATIONS = {
    "pneumonia": "Recommend follow-up radiographs after treatment to document resolution.",
    "lung_lesion": "Comparison with outside studies or ct is recommended.",
    "pneumothorax": "Findings were communicated to the referring clinician by telephone.",
}


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _place(rng: np.random.Generator, f: Finding) -> str:
    zone = f.zone or "lower"
    side = f.side or "right"
    return _pick(rng, _PLACES[(side, zone)])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _seen(rng: np.random.Generator, change: str) -> str:
    return _pick(rng, _SEEN + (_SEEN_AGAIN if change == "stable" else ()))


def _positive(rng: np.random.Generator, f: Finding, change: str) -> str:
    """An affirmative sentence (without the final period), prefixed by the change at follow-up."""
    sev = f.severity
    size, grade, adverb = _pick(rng, _SIZE[sev]), _pick(rng, _GRADE[sev]), _pick(rng, _ADVERB[sev])
    pre = f"{_pick(rng, _CHANGE_PREFIX[change])} " if change else ""
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
        texture = _pick(
            rng,
            (
                ("hazy", "faint", "ground-glass"),
                ("patchy", "streaky", "reticular", "ill-defined"),
                ("confluent", "dense", "wedge-shaped"),
            )[sev],
        )
        options = [
            f"{pre}{texture} opacity in {_place(rng, f)}",
            f"there is {pre}{texture} airspace opacity in {_place(rng, f)}",
            f"{pre}{texture} opacity {_seen(rng, change)} in {_place(rng, f)}",
        ]
    elif name == "lung_lesion":
        place = _place(rng, f)
        shape = _pick(
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
                f"a {pre}{shape} mass {_seen(rng, change)} in {place}",
            ]
        else:
            width = f"{int(rng.integers(4, 10) if sev == 0 else rng.integers(10, 19))} mm"
            options = [
                f"{pre}{shape} {width} nodule in {place}",
                f"a {pre}{width} {shape} pulmonary nodule projects over {place}",
                f"a {width} nodule {_seen(rng, change)} in {place}",
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
        place = _place(rng, f)
        options = [
            f"{pre}consolidation in {place}",
            f"{pre}dense consolidation in {place}",
            f"{pre}consolidation with air bronchograms {_seen(rng, change)} in {place}",
        ]
        if f.zone == "mid" and side in ("right", "left"):
            border = "right heart border" if side == "right" else "left heart border"
            options.append(f"{pre}consolidation in {place} obscures the {border}")
        if f.zone == "lower" and side in ("right", "left"):
            options.append(
                f"{pre}{side} lower lobe consolidation silhouettes the {side} hemidiaphragm"
            )
    elif name == "pneumonia":
        place = _place(rng, f)
        options = [
            f"findings are consistent with pneumonia in {place}",
            f"{pre}pneumonia in {place}",
        ]
        if side == "bilateral":
            options.append(f"{pre}multifocal pneumonia")
    elif name == "atelectasis":
        bases = "the lung bases" if side == "bilateral" else f"the {side} base"
        kind = _pick(rng, ("linear", "discoid", "bandlike", "subsegmental", "dependent"))
        options = [
            f"{pre}{grade} {_BASE[side]} atelectasis",
            f"{pre}{kind} atelectasis at {bases}",
            f"{pre}{kind} atelectasis {_seen(rng, change)} at {bases}",
        ]
    elif name == "pneumothorax":
        depth = int(rng.integers(5, 40))
        options = [
            f"{pre}{size} {side} apical pneumothorax",
            f"there is a {pre}{size} {side} pneumothorax",
            f"{pre}{size} {side} apical pneumothorax measuring {depth} mm",
            f"{pre}{size} {side} pneumothorax without tension physiology",
            f"a {side} pleural line {_seen(rng, change)} with a {size} pneumothorax",
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
        rib = _ORDINAL.get(f.rib, "sixth")
        aspect = _pick(rng, ("posterior", "lateral", "anterior", "posterolateral"))
        age = _pick(rng, ("acute", "healing", "remote", "minimally displaced", "nondisplaced"))
        options = [
            f"{age} fracture of the {aspect} {side} {rib} rib",
            f"{age} {side} {rib} rib fracture",
            f"old healed {side} rib fractures",
            f"healing fracture of the {side} {rib} rib with callus formation",
        ]
    else:
        raise ValueError(f"No positive wording for {name!r}.")
    return _pick(rng, options)


def _uncertain(rng: np.random.Generator, f: Finding, study: Study) -> str:
    name, side = f.name, f.side
    if name in study.no_new:
        noun = _NEGATED_NOUNS[name][0]
        return _pick(rng, (f"no new {noun}", f"there is no new {noun}"))
    if name == "cardiomegaly":
        if study.prior:
            return _pick(rng, ("heart size is unchanged", "the cardiac silhouette is stable"))
        return _pick(
            rng,
            (
                "heart size is borderline",
                "the cardiac silhouette is borderline in size",
                "possible mild cardiomegaly",
            ),
        )
    place = _place(rng, f) if f.zone else ""
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
            f"possible {_BASE[side or 'bilateral']} atelectasis",
            f"{_BASE[side or 'bilateral']} changes may reflect atelectasis",
            f"probable minor {_BASE[side or 'bilateral']} atelectasis",
            f"{_BASE[side or 'bilateral']} atelectasis is suspected",
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
            f"possible nondisplaced fracture of the {side} {_ORDINAL.get(f.rib, 'sixth')} rib",
            f"questionable {side} rib fracture",
        ),
    }[name]
    return _pick(rng, options)


def _airspace_combination(rng: np.random.Generator, study: Study, used: set[str]) -> list[str]:
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
    base = _positive(rng, anchor, dict(study.changes).get(anchor.name, ""))
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
        text = _pick(
            rng,
            (
                f"{base}, which may represent pneumonia",
                f"{base}, concerning for pneumonia",
                f"{base}, possibly pneumonia",
            ),
        )
    used.update({anchor.name, "pneumonia"})
    out.append(_cap(text) + ".")
    return out


_ORDER = {
    "support_devices": 0.0,
    "enlarged_cardiomediastinum": 1.0,
    "cardiomegaly": 1.0,
    "lung_opacity": 2.0,
    "lung_lesion": 2.2,
    "edema": 2.0,
    "consolidation": 2.0,
    "pneumonia": 2.0,
    "atelectasis": 2.1,
    "pneumothorax": 3.0,
    "pleural_effusion": 3.0,
    "pleural_other": 3.1,
    "fracture": 5.0,
}


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
    return _pick(rng, options)


# Reasons for the examination, by clinical picture; none names one of the 14 observations, so the
# indication carries no label (CheXpert labels the findings and impression).
_INDICATIONS = {
    "normal": (
        "cough",
        "chest pain",
        "preoperative evaluation",
        "syncope",
        "palpitations",
        "routine screening",
        "wheezing",
        "weight loss",
        "evaluate for acute process",
        "dizziness",
        "tuberculosis screening",
        "positive ppd",
        "immigration physical",
        "chest tightness",
        "headache and nausea",
    ),
    "incidental": (
        "chest pain",
        "status post fall",
        "trauma",
        "cough",
        "hemoptysis",
        "history of smoking",
        "abnormal outside radiograph",
        "motor vehicle collision",
        "left shoulder pain",
        "back pain",
        "fatigue and night sweats",
    ),
    "heart_failure": (
        "shortness of breath",
        "dyspnea on exertion",
        "leg swelling",
        "orthopnea",
        "worsening dyspnea",
        "hypoxia",
        "bilateral lower extremity swelling",
        "weight gain",
        "paroxysmal nocturnal dyspnea",
        "chronic kidney disease on dialysis",
    ),
    "infection": (
        "fever and cough",
        "productive cough",
        "leukocytosis",
        "sepsis",
        "fever",
        "hypoxia and fever",
        "rigors",
        "chills",
        "elevated white count",
        "pleuritic chest pain",
        "immunocompromised with fever",
    ),
    "postoperative": (
        "line placement",
        "intubation",
        "status post cardiac surgery",
        "tube placement",
        "post procedure evaluation",
        "altered mental status",
        "respiratory distress",
        "status post valve surgery",
        "hypotension",
        "cardiac arrest",
        "desaturation overnight",
    ),
}


def _indication(rng: np.random.Generator, study: Study) -> str:
    if rng.random() < 0.5:
        return ""
    reason = _pick(rng, _INDICATIONS[study.scenario])
    who = _pick(
        rng,
        ("", "Elderly man with ", "Woman with ", "Man with ", "Patient with ", "Young woman with "),
    )
    return f"Indication: {who}{reason}." if who else f"Indication: {_cap(reason)}."


def _comparison(rng: np.random.Generator, study: Study) -> str:
    if study.prior:
        n = int(rng.integers(2, 10))
        return _pick(
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
    return _pick(rng, ("Comparison: none.", "No prior studies for comparison.", "", "", ""))


def _negations(rng: np.random.Generator, study: Study, attached: str) -> list[tuple[float, str]]:
    f = study.findings
    out: list[tuple[float, str]] = []
    heart = f.label("cardiomegaly") == NEGATIVE
    mediastinum = f.label("enlarged_cardiomediastinum") == NEGATIVE
    if heart and mediastinum and rng.random() < 0.6:
        out.append((1.0, _pick(rng, _BOTH_NORMAL)))
    else:
        if heart:
            out.append((1.0, _pick(rng, _HEART_NORMAL)))
        if mediastinum:
            out.append((1.1, _pick(rng, _MEDIASTINUM_NORMAL)))
    resolved = [n for n in study.resolved if n in f.negated]
    for name in resolved:
        noun = _NEGATED_NOUNS[name][0].replace("focal ", "")
        out.append(
            (
                3.5,
                _pick(
                    rng,
                    (
                        f"The previously seen {noun} has resolved.",
                        f"Previously noted {noun} has resolved.",
                    ),
                ),
            )
        )
    nouns = [
        _pick(rng, options)
        for name, options in _NEGATED_NOUNS.items()
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
        out.append((4.0, _pick(rng, _NEGATION_FRAMES).format(listed)))
    return out


_AREA = {
    ("right", "upper"): "right upper lobe",
    ("right", "mid"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "mid"): "lingular",
    ("left", "lower"): "left lower lobe",
    ("bilateral", "upper"): "bilateral upper lobe",
    ("bilateral", "mid"): "bilateral perihilar",
    ("bilateral", "lower"): "bibasilar",
}


def _short(rng: np.random.Generator, f: Finding, study: Study) -> str:
    """The impression's restatement of a reported finding, with the same label."""
    area = _AREA[(f.side or "right", f.zone or "lower")]
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
            "atelectasis": f"{_BASE[side or 'bilateral']} atelectasis",
            "pneumothorax": f"tiny {side} pneumothorax",
            "pleural_effusion": "small pleural effusion",
            "pleural_other": f"{side} pleural thickening",
            "fracture": f"{side} rib fracture",
        }[f.name]
        return _pick(
            rng,
            (
                f"Possible {noun}.",
                f"{_cap(noun)} cannot be excluded.",
                f"Findings may represent {noun}.",
            ),
        )
    size = _SIZE[f.severity][0]
    text = {
        "enlarged_cardiomediastinum": "Widened mediastinum; consider ct to assess the aorta.",
        "cardiomegaly": _pick(rng, ("Cardiomegaly.", "Enlarged heart.")),
        "lung_opacity": f"{_cap(area)} opacity.",
        "lung_lesion": _pick(
            rng,
            (
                f"{_cap(area)} nodule; recommend chest ct for further evaluation.",
                f"{_cap(area)} pulmonary nodule, follow-up ct is recommended.",
            ),
        ),
        # "Heart failure" is an uncertain cardiomegaly by CheXpert's rule: only with a big heart.
        "edema": _pick(
            rng,
            (
                "Pulmonary edema.",
                "Findings consistent with congestive heart failure and pulmonary edema.",
            )
            if study.findings.label("cardiomegaly") == POSITIVE
            else ("Pulmonary edema.", "Interstitial pulmonary edema."),
        ),
        "consolidation": f"{_cap(area)} consolidation.",
        "pneumonia": _pick(
            rng, (f"{_cap(area)} pneumonia.", f"Findings consistent with {area} pneumonia.")
        ),
        "atelectasis": f"{_cap(_BASE[side or 'bilateral'])} atelectasis.",
        "pneumothorax": _pick(
            rng,
            (
                f"{_cap(size)} {side} pneumothorax.",
                f"{_cap(size)} {side} "
                "pneumothorax; findings were discussed with the referring "
                "physician.",
            ),
        ),
        "pleural_effusion": (
            f"{_cap(size)} bilateral pleural effusions."
            if side == "bilateral"
            else f"{_cap(size)} {side} pleural effusion."
        ),
        "pleural_other": f"{_cap(side)} pleural thickening.",
        "fracture": f"{_cap(side)} rib fracture.",
    }[f.name]
    return text


def _impression(rng: np.random.Generator, study: Study, combined: str) -> str:
    f = study.findings
    malpositioned = [tip for tip in study.device_tips if tip[1] in _MALPOSITIONED]
    parts = []
    for device, tip, name in malpositioned[:1]:
        parts.append(_pick(rng, _DEVICE_TIPS[(device, tip)]).format(cm=4, name=name))
    abnormal = [x for x in f.present if x.name != "support_devices" and x.name not in study.no_new]
    abnormal.sort(key=lambda x: (x.state != POSITIVE, -x.severity))
    for finding in abnormal[: 2 - len(parts)]:
        if combined and finding.name in ("lung_opacity", "consolidation", "pneumonia"):
            if combined not in parts:
                parts.append(combined)
            continue
        parts.append(_short(rng, finding, study))
    for name, text in _RECOMMENDATIONS.items():
        finding = f.finding(name)
        if finding is not None and finding.state == POSITIVE and rng.random() < 0.3:
            parts.append(text)
    if study.acquisition.inspiration < 0.2 and rng.random() < 0.3:
        parts.append("Consider repeat radiograph with improved inspiration.")
    if not parts:
        options = _NORMAL_IMPRESSIONS + (
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
        parts.append(_pick(rng, options))
    return " ".join(_cap(p) for p in parts)


def _limitations(rng: np.random.Generator, study: Study) -> list[tuple[float, str]]:
    a = study.acquisition
    out = []
    if a.inspiration < 0.3:
        out.append((0.5, _pick(rng, _LOW_VOLUMES)))
    if abs(a.rotation) > 0.05:
        side = "right" if a.rotation > 0 else "left"
        out.append((0.5, _pick(rng, _ROTATED).format(side=side)))
    if a.body > 1.15:
        out.append((0.5, _pick(rng, _HABITUS)))
    return out


def write_report(study: Study, rng: np.random.Generator, *, num_views: int = 2) -> str:
    """The report of ``study``: technique, comparison, FINDINGS and IMPRESSION sections."""
    f = study.findings
    changes = dict(study.changes)
    sentences: list[tuple[float, str]] = []
    used: set[str] = set()
    for device, tip, name in study.device_tips:
        text = _pick(rng, _DEVICE_TIPS[(device, tip)])
        text = _cap(text.format(cm=int(rng.integers(3, 7)), name=name))
        sentences.append((0.0, text))
    combined = _airspace_combination(rng, study, used)
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
            text = _positive(rng, finding, changes.get(finding.name, ""))
            if attached and finding.name == first_positive:
                noun = _pick(rng, _NEGATED_NOUNS[attached]).replace("large ", "")
                text = _pick(rng, (f"{text} without {noun}", f"{text}, but no {noun}"))
        else:
            text = _uncertain(rng, finding, study)
        sentences.append((_ORDER[finding.name], _cap(text) + "."))
    sentences.extend(_negations(rng, study, attached))
    if f.lungs_clear:
        clear = _pick(rng, _LUNGS_CLEAR)
        if any(n == "hyperinflation" for n in study.reported_incidentals()):
            clear = "The lungs are hyperinflated but clear."
        sentences.append((2.0, clear))
    for name in study.reported_incidentals():
        if name == "hyperinflation" and f.lungs_clear:
            continue
        place = _pick(rng, _PLACES[(_pick(rng, ("right", "left")), _pick(rng, ("upper", "mid")))])
        sentences.append((4.5, _pick(rng, _INCIDENTAL_SENTENCES[name]).format(place=place)))
    if f.label("fracture") not in (POSITIVE, UNCERTAIN) and rng.random() < 0.3:
        sentences.append((5.0, _pick(rng, _BONES_NORMAL)))
    if rng.random() < 0.1:
        sentences.append((5.5, _pick(rng, _ABDOMEN_NORMAL)))
    sentences.extend(_limitations(rng, study))
    if rng.random() < 0.12:
        sentences.append((1.2, _pick(rng, _NEUTRAL)))
    if "nipple_shadows" in study.lookalikes and rng.random() < 0.3:
        sentences.append((2.3, _pick(rng, _NIPPLE_SHADOWS)))
    if f.label("edema") in (BLANK, NEGATIVE) and rng.random() < 0.15:
        sentences.append((2.5, _pick(rng, _VASCULATURE_NORMAL)))
    if not sentences:  # a findings section is never empty: a statement without a label
        sentences.append((5.0, _pick(rng, _BONES_NORMAL + _VASCULATURE_NORMAL)))
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
