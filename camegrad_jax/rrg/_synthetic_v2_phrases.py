"""The wording of the realistic (``"v2"``) synthetic reports: phrase tables and small helpers.

Sizes, grades and comparison words; where each finding sits; the normal and negated sentences;
the findings outside the 14 labels; support devices and their tip positions; indications; and the
order in which a report's sentences appear. The sentence builders are in
:mod:`~camegrad_jax.rrg._synthetic_v2_sentences`, the report itself in
:mod:`~camegrad_jax.rrg._synthetic_v2_report`.

Example:
  >>> from camegrad_jax.rrg._synthetic_v2_phrases import capitalise
  >>> capitalise("small left pleural effusion.")
  'Small left pleural effusion.'
"""

from __future__ import annotations

import numpy as np

from camegrad_jax.rrg._synthetic_findings import Finding

__all__ = [
    "ABDOMEN_NORMAL",
    "ADVERB",
    "AREA",
    "BASE",
    "BONES_NORMAL",
    "BOTH_NORMAL",
    "CHANGE_PREFIX",
    "DEVICE_TIPS",
    "GRADE",
    "HABITUS",
    "HEART_NORMAL",
    "INCIDENTAL_SENTENCES",
    "INDICATIONS",
    "LOW_VOLUMES",
    "LUNGS_CLEAR",
    "MALPOSITIONED",
    "MEDIASTINUM_NORMAL",
    "NEGATED_NOUNS",
    "NEGATION_FRAMES",
    "NEUTRAL",
    "NIPPLE_SHADOWS",
    "NORMAL_IMPRESSIONS",
    "ORDER",
    "ORDINAL",
    "PLACES",
    "RECOMMENDATIONS",
    "ROTATED",
    "SEEN",
    "SEEN_AGAIN",
    "SIZE",
    "VASCULATURE_NORMAL",
    "capitalise",
    "choose",
    "place_of",
    "seen_phrase",
]

SIZE = (("small", "trace", "small"), ("moderate", "moderate-sized"), ("large",))
GRADE = (("mild", "minimal"), ("moderate",), ("severe", "marked"))
ADVERB = (("mildly", "slightly"), ("moderately",), ("markedly", "severely"))
ORDINAL = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
PLACES = {
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
SEEN = ("is seen", "is noted", "is present", "is demonstrated", "is identified", "is evident")
SEEN_AGAIN = ("is again seen", "is redemonstrated", "is again noted")
BASE = {"right": "right basilar", "left": "left basilar", "bilateral": "bibasilar"}
CHANGE_PREFIX = {
    "new": ("new", "interval development of", "newly seen", "newly apparent"),
    "stable": ("stable", "unchanged", "persistent", "grossly unchanged", "similar"),
    "increased": ("slightly increased", "increasing", "worsening", "enlarging", "progressive"),
    "decreased": ("decreasing", "slightly decreased", "improving", "slightly smaller"),
}
NEGATED_NOUNS = {
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
NEGATION_FRAMES = (
    "No {}.",
    "There is no {}.",
    "No {} is seen.",
    "No evidence of {}.",
    "No {} is identified.",
    "Negative for {}.",
    "No definite {}.",
    "No {} is appreciated.",
)
HEART_NORMAL = (
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
MEDIASTINUM_NORMAL = (
    "The mediastinal contours are normal.",
    "Mediastinal contours are unremarkable.",
    "The mediastinum is not widened.",
    "Hilar and mediastinal contours are normal.",
    "The mediastinal silhouette is normal.",
    "Normal mediastinal width.",
)
BOTH_NORMAL = (
    "The cardiomediastinal silhouette is within normal limits.",
    "Cardiomediastinal silhouette is normal.",
    "Heart size and mediastinal contours are normal.",
    "Normal cardiomediastinal contours.",
)
LUNGS_CLEAR = (
    "The lungs are clear.",
    "Lungs are clear bilaterally.",
    "The lungs are well expanded and clear.",
    "Both lungs are clear.",
    "The lungs are well aerated and clear.",
    "Clear lungs.",
)
INCIDENTAL_SENTENCES = {
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
LOW_VOLUMES = (
    "Low lung volumes.",
    "Lung volumes are low, crowding the bronchovascular markings.",
    "Shallow inspiration limits evaluation of the lung bases.",
    "The patient has taken a shallow inspiration.",
)
ROTATED = (
    "The patient is rotated to the {side}.",
    "Rotated positioning limits assessment of the hila.",
    "Slight rotation of the patient to the {side}.",
)
HABITUS = (
    "Large body habitus limits the study.",
    "Overlying soft tissues limit evaluation of the lung bases.",
    "The study is limited by body habitus and underpenetration.",
)
# Statements that carry no label, written now and then as radiologists do.
NEUTRAL = (
    "The trachea is midline.",
    "The hila are normal in size.",
    "The aortic arch is unremarkable.",
    "Visualized soft tissues are within normal limits.",
)
NIPPLE_SHADOWS = (
    "Nipple shadows project over both lung bases.",
    "Bilateral nipple shadows are noted.",
)
VASCULATURE_NORMAL = (
    "Pulmonary vascularity is within normal limits.",
    "The hila are unremarkable.",
    "Normal pulmonary vascularity.",
)
BONES_NORMAL = (
    "No acute osseous abnormality.",
    "The osseous structures are intact.",
    "Bony structures are unremarkable.",
    "Visualized osseous structures are within normal limits.",
    "The soft tissues are unremarkable.",
    "The osseous structures are grossly intact.",
)
ABDOMEN_NORMAL = (
    "The visualized upper abdomen is unremarkable.",
    "Upper abdominal structures are unremarkable.",
    "No free air below the diaphragm.",
)
NORMAL_IMPRESSIONS = (
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
DEVICE_TIPS = {
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
MALPOSITIONED = {
    "low",
    "high",
    "esophagus",
    "coiled",
    "right_atrium",
    "brachiocephalic",
    "fissure",
}
RECOMMENDATIONS = {
    "pneumonia": "Recommend follow-up radiographs after treatment to document resolution.",
    "lung_lesion": "Comparison with outside studies or ct is recommended.",
    "pneumothorax": "Findings were communicated to the referring clinician by telephone.",
}


ORDER = {
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


INDICATIONS = {
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


AREA = {
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


def choose(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def place_of(rng: np.random.Generator, f: Finding) -> str:
    zone = f.zone or "lower"
    side = f.side or "right"
    return choose(rng, PLACES[(side, zone)])


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def seen_phrase(rng: np.random.Generator, change: str) -> str:
    return choose(rng, SEEN + (SEEN_AGAIN if change == "stable" else ()))
