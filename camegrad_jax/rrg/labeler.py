"""Report labelers for the 14 CheXpert observations, and their agreement with gold labels.

`label_reports` is the default: an offline, rule-based labeler in the style of the CheXpert
labeler (Irvin et al., 2019). Per observation it finds *mentions* (phrases as radiologists write
them), then classifies each mention with CheXpert's order of rules:

1. pre-negation uncertainty ("cannot exclude", "not excluded", "no new"): uncertain;
2. negation ("no", "without", "negative for", "free of", "has resolved", "is normal"): negative;
3. post-negation uncertainty ("may", "possible", "likely", "concerning for", "X or Y"):
   uncertain;
4. otherwise: positive.

NegBio's dependency-graph patterns are replaced by cue windows: a cue reaches the mentions after
it (forward cues) or the subject before it (backward cues, e.g. "... has resolved", "... is no
longer seen") within one clause, stopping at a comma or a verb; a hedge that closes a statement
("X, if any", "X, if present", "X?") reaches back across commas. Lists joined by commas and
"and"/"or" ("no effusion, pneumothorax, or consolidation") share one scope, on the cue's side of
it. "Or"/"versus" make their members uncertain, but not a head set off before them by a comma:
in "opacity, scarring versus pneumonia" the opacity is positive and the pneumonia uncertain.
Mentions of one observation are aggregated as CheXpert does: positive > uncertain > negative >
blank.

``no_finding`` is positive when the report is not empty, nothing but support devices is positive
or uncertain (including the other abnormalities CheXpert tracks for this purpose: emphysema,
granuloma, scoliosis, ...), and every sentence that mentions nothing is either a normal or
negative statement ("no", "normal", "clear", "intact", ...) or only describes the examination
(views, comparison, technique, rotation, lung volumes). Any other sentence ("tortuous aorta",
"hilar fullness") may state an abnormality the tables do not know, so ``no_finding`` is then
blank rather than positive; CheXpert never labels it negative.

Report language is normalised first: the abbreviations radiologists use (PTX, PNA, CHF, RLL ...
LUL, ETT, NGT, OGT, IJ, SVC, CVC, b/l, c/w, s/p) are spelled out, a "?" becomes "query", and a
misspelled observation term is read as the term (`correct_spelling`: Damerau-Levenshtein
distance at most 1 for words of 5-9 letters and 2 from 10 letters, same first letter, unique
nearest term; the tests check that forms of different terms lie further apart than that).

Deliberate choices, each also stated where it is coded:

* "Heart size", "cardiac silhouette", "mediastinal contours" and the like are *attribute*
  mentions: they take their label from a qualifier ("enlarged" positive; "normal", "within normal
  limits", "not enlarged", "upper limits of normal" negative; "borderline", "stable",
  "unchanged" uncertain, CheXpert's rule). Without a qualifier they are not mentions. A normal
  "cardiomediastinal silhouette" is also a negative cardiomegaly mention (CheXpert labels only
  enlarged cardiomediastinum); an enlarged one stays enlarged cardiomediastinum only.
* "The lungs are clear" labels nothing, as in CheXpert. With ``lungs_clear_negates=True`` it
  negates lung opacity, consolidation, edema and pneumonia, the convention of this project's
  synthetic gold labels (a clear-lung statement excludes those airspace processes).
* Blunting of a costophrenic angle is an uncertain effusion (CheXpert's rule: fluid or
  scarring). A device "withdrawn" is pulled back, not removed; "tip not seen below the
  diaphragm" is about the tip's position, not the device's presence.
* "Vascular congestion", "pulmonary congestion", "vascular prominence", "indistinctness" and
  "cephalization" are uncertain edema, and a positive or uncertain "heart failure"/"CHF" adds an
  uncertain cardiomegaly, both as CheXpert does.
* "No acute cardiopulmonary process" mentions no observation, as in CheXpert: it neither negates
  findings nor sets ``no_finding`` by itself; ``no_finding`` follows from the rest of the report.
* An empty report gets all blanks (CheXpert would call it "no finding").

`CheXbertLabeler` runs the user's CheXbert checkpoint (Smit et al., 2020) when PyTorch and
transformers are installed; neither is a dependency of this package, and nothing is downloaded.

Agreement with 181 hand-labelled sentences and short reports in MIMIC-CXR / IU X-Ray style
(``tests/rrg/fixtures/labeler_gold.jsonl``) is measured by ``tests/rrg/test_labeler_gold.py``.

References:
  Irvin et al., "CheXpert", AAAI 2019, https://arxiv.org/abs/1901.07031 (labeler:
  github.com/stanfordmlgroup/chexpert-labeler).
  Smit et al., "CheXbert", EMNLP 2020, https://arxiv.org/abs/2004.09167.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_LABEL_CLASSES,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

_INDEX = {name: i for i, name in enumerate(OBSERVATIONS)}
_NO_FINDING = _INDEX["no_finding"]
_SUPPORT_DEVICES = _INDEX["support_devices"]
# Abnormalities outside the 14 labels; they only stop `no_finding` from being positive.
_OTHER = -1

# ---------------------------------------------------------------------------------------------
# Mention phrases (regular-expression fragments over normalised text: lower case, hyphens between
# letters turned into spaces, "and/or" turned into "or").
# ---------------------------------------------------------------------------------------------

# Positive unless a cue says otherwise.
_FINDING_PHRASES: dict[int, tuple[str, ...]] = {
    _INDEX["enlarged_cardiomediastinum"]: (
        r"widened (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?|shadow))",
        r"widening of the (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?))",
        r"(?:cardio)?mediastinal (?:widening|enlargement)",
        r"enlarged (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?|shadow))",
        r"enlargement of the (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?))",
    ),
    _INDEX["cardiomegaly"]: (
        r"cardiomegaly",
        r"cardiac enlargement",
        r"enlarged (?:heart|cardiac (?:silhouette|shadow|contours?))",
        r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|contours?))",
    ),
    _INDEX["lung_opacity"]: (
        r"opaci(?:ty|ties|fication|fications|fied)",
        r"infiltrat(?:e|es|ion|ions)",
        r"haziness",
        r"hazy",
        r"densit(?:y|ies)",
        r"air ?space (?:disease|process|opacit(?:y|ies))",
        r"ground glass",
        r"(?:interstitial|reticular|reticulonodular) (?:markings?|pattern|changes?)",
        r"reticulation",
        r"increased (?:interstitial |lung |bronchovascular )?markings",
        r"(?:parenchymal )?scar(?:ring|s)?",
        r"peribronchial (?:thickening|cuffing)",
        r"bronchial wall thickening",
    ),
    _INDEX["lung_lesion"]: (
        r"nodules?",
        r"nodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification)",
        r"mass(?:es)?",
        r"lesions?",
        r"lump",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
    ),
    _INDEX["edema"]: (
        r"o?edema",
        r"heart failure",
        r"chf",
        r"fluid overload",
        r"volume overload",
    ),
    _INDEX["consolidation"]: (r"consolidat(?:ion|ions|ive|ed)",),
    _INDEX["pneumonia"]: (
        r"(?:broncho)?pneumonias?",
        r"infections?",
        r"infectious(?: process)?",
    ),
    _INDEX["atelectasis"]: (
        r"atelecta(?:sis|ses|tic)",
        r"volume loss",
        r"collapsed?",
    ),
    _INDEX["pneumothorax"]: (r"(?:hydro)?pneumothora(?:x|ces)",),
    _INDEX["pleural_effusion"]: (
        r"effusions?",
        r"pleural fluid",
        r"fluid",
        r"hydropneumothora(?:x|ces)",
    ),
    _INDEX["pleural_other"]: (
        r"pleural (?:thickening|scar(?:ring|s)?|plaques?|calcifications?|fibrosis)",
        r"thickening of the pleura",
        r"fibrothorax",
        r"pleuro ?parenchymal (?:scar(?:ring|s)?|thickening|changes?)",
        r"pleural parenchymal (?:scar(?:ring|s)?|thickening)",
        r"apical (?:pleural )?cap(?:ping)?",
    ),
    _INDEX["fracture"]: (r"fractures?", r"fractured", r"fx"),
    _INDEX["support_devices"]: (
        r"tubes?",
        r"lines?",
        r"catheters?",
        r"picc",
        r"pacemakers?",
        r"pacer",
        r"(?:cardiac monitor(?:ing)?|monitoring|ecg|ekg|pacing|pacer|pacemaker|epicardial"
        r"|transvenous) (?:wires?|leads?)",
        r"wires?",
        r"a?icd",
        r"defibrillator",
        r"loop recorder",
        r"clips?",
        r"stents?",
        r"valve (?:replacement|prosthesis|repair)",
        r"prosthetic (?:\w+ )?valve",
        r"tavr|tavi",
        r"ports?",
        r"port a cath|portacath|mediport",
        r"drains?",
        r"hardware",
        r"screws?",
        r"plates?(?! like)",
        r"rods?",
        r"coils?",
        r"cannula",
        r"devices?",
        r"apparatus",
        r"electrodes?",
        r"ett",
        r"tracheostomy",
        r"(?:ivc|vena cava) filter",
        r"balloon pump|iabp",
        r"lvad|ventricular assist device|impella",
        r"swan ganz",
        r"arthroplasty",
    ),
    # CheXpert's `no_finding` phrase list: findings outside the 14 labels. Ambiguous or
    # overlapping entries of that list ("blunt", "density", "thickening", "prominen", "volume
    # loss", "fissure") are left to the observations above or dropped.
    _OTHER: (
        r"emphysema(?:tous)?",
        r"hyperinflat(?:ed|ion)",
        r"hyperexpan(?:ded|sion)",
        r"copd",
        r"bullae|bulla|bullous",
        r"scoliosis",
        r"kyphosis|kyphotic",
        r"degenerat(?:ive|ion)",
        r"osteopenia|osteopenic",
        r"osteophyt(?:es?|osis)",
        r"hernias?",
        r"eventration",
        r"elevat(?:ed|ion)",
        r"granulomas?|granulomata|granulomatous",
        r"calcifi(?:ed|cation|cations)",
        r"atheroscleros(?:is|tic)|atherosclerotic",
        r"aortic (?:disease|ectasia|aneurysm)",
        r"pneumomediastinum",
        r"pneumoperitoneum",
        r"subcutaneous (?:air|gas)",
        r"hematoma",
        r"hemorrhage",
        r"metasta(?:sis|ses|tic)",
        r"bronchitis",
        r"bronchiolitis",
        r"bronchiectasis",
        r"airways? disease",
        r"asthma",
        r"bronchospasm",
        r"aspiration",
        r"contusion",
        r"deformity|deformities",
        r"osteodystrophy",
        r"arthropathy",
        r"thoracentesis",
        r"bullet",
        r"pulmonary (?:arterial )?hypertension",
        r"fibrosis|fibrotic",
    ),
}

# Uncertain unless negated (CheXpert's post-negation rules for these words).
_UNCERTAIN_FINDING_PHRASES: dict[int, tuple[str, ...]] = {
    _INDEX["edema"]: (
        r"(?:pulmonary )?vascular congestion",
        r"pulmonary congestion",
        r"(?:pulmonary )?vascular prominence",
        r"prominence of the pulmonary vasculature",
        r"interstitial prominence",
        r"indistinctness",
        r"cephalization",
    ),
    # CheXpert: blunting of the costophrenic angle is an uncertain effusion (fluid or scarring).
    _INDEX["pleural_effusion"]: (
        r"blunt(?:ing|ed) of the (?:\w+ )?costophrenic (?:angles?|sulc(?:us|i))",
        r"blunted (?:\w+ )?costophrenic (?:angles?|sulc(?:us|i))",
        r"costophrenic (?:angles?|sulc(?:us|i)) (?:(?:is|are) )?(?:\w+ )?blunt(?:ed|ing)",
    ),
}

# Labelled only through a qualifier such as "enlarged" or "normal" (see `_QUALIFIER`).
_ATTRIBUTE_PHRASES: dict[int, tuple[str, ...]] = {
    _INDEX["enlarged_cardiomediastinum"]: (
        r"(?:cardio)?mediastinal(?: and hilar)? (?:silhouettes?|contours?|configuration|shadow"
        r"|width|size)",
        r"(?:cardio)?mediastinum",
        r"pericardial silhouette",
    ),
    _INDEX["cardiomegaly"]: (
        r"heart size",
        r"size of the heart",
        r"cardiac (?:size|silhouette|shadow|contours?|diameter)",
        r"cardiopericardial silhouette",
        r"cardiothoracic ratio",
        r"heart shadow",
        r"heart(?! failure)",
        # "cardiac and mediastinal contours are normal" describes the heart too.
        r"cardiac(?= and mediastinal)",
    ),
}

# Attributes of a whole that take only a negative label for a part: a normal cardiomediastinal
# silhouette has a normal heart, an enlarged one does not say which part is enlarged.
_NORMAL_WHOLE_PHRASES: dict[int, tuple[str, ...]] = {
    _INDEX["cardiomegaly"]: (r"cardiomediastinal (?:silhouettes?|contours?|shadow|size)",),
}

# A mention overlapping one of these is not a mention (CheXpert's "unmention" lists, extended).
_UNMENTION_PHRASES: dict[int, tuple[str, ...]] = {
    _INDEX["lung_opacity"]: (
        r"pleural (?:scar(?:ring|s)?)",
        r"pleuro ?parenchymal scar(?:ring|s)?",
        r"pleural parenchymal scar(?:ring|s)?",
        r"bone densit(?:y|ies)",
    ),
    _INDEX["lung_lesion"]: (
        r"calcified (?:nodules?|granulomas?)",
        r"(?:osseous|bony|bone|lytic|blastic|sclerotic|skin|cutaneous) lesions?",
        r"mass effect",
        r"body mass",
    ),
    _INDEX["edema"]: (r"(?:soft tissue|subcutaneous) o?edema",),
    _INDEX["atelectasis"]: (r"(?:vertebral|vertebral body|compression) collapse",),
    _INDEX["pleural_effusion"]: (
        r"pericardial effusions?",
        r"(?:joint|knee|shoulder|elbow) effusions?",
        r"fluid overload",
        r"air fluid levels?",
        r"fluid filled",
    ),
    _INDEX["support_devices"]: (
        # Anatomical and radiographic "lines" are not lines.
        r"(?:mid|pleural|visceral|septal|kerley b?|skin|skin fold|fissure|azygo ?esophageal"
        r"|paraspinal|paratracheal|paravertebral|junction|diaphragmatic|costal|fracture|hair)"
        r" lines?",
        r"in line",
        r"end ?plates?",
    ),
}


def _compile_alternatives(phrases: Sequence[str]) -> re.Pattern[str]:
    # Longer alternatives first, so "pacer leads" wins over "pacer" at the same position
    # (a regular expression takes the first alternative that matches, not the longest).
    ordered = sorted(phrases, key=lambda p: len(re.sub(r"\(\?[=!][^)]*\)", "", p)), reverse=True)
    return re.compile(r"\b(?:" + "|".join(ordered) + r")\b")


_FINDING, _UNCERTAIN_FINDING = "finding", "uncertain_finding"
_ATTRIBUTE, _NORMAL_WHOLE = "attribute", "normal_whole"
_QUALIFIED = frozenset({_ATTRIBUTE, _NORMAL_WHOLE})  # kinds labelled by a qualifier
_MENTION_PATTERNS: tuple[tuple[int, str, re.Pattern[str]], ...] = tuple(
    (target, kind, _compile_alternatives(phrases))
    for kind, table in (
        (_FINDING, _FINDING_PHRASES),
        (_UNCERTAIN_FINDING, _UNCERTAIN_FINDING_PHRASES),
        (_ATTRIBUTE, _ATTRIBUTE_PHRASES),
        (_NORMAL_WHOLE, _NORMAL_WHOLE_PHRASES),
    )
    for target, phrases in table.items()
)
_UNMENTION_PATTERNS = {t: _compile_alternatives(p) for t, p in _UNMENTION_PHRASES.items()}

# "heart failure" / "chf" that is positive or uncertain adds an uncertain cardiomegaly (CheXpert).
_HEART_FAILURE = re.compile(r"heart failure|chf")

# ---------------------------------------------------------------------------------------------
# Cues. Each is a regular expression with a direction: forward cues reach mentions after them
# ("no effusion"), backward cues the subject before them ("effusion has resolved").
# ---------------------------------------------------------------------------------------------
_FORWARD, _BACKWARD, _BOTH = 1, 2, 3
# A hedge that closes its clause ("X, if any") reaches every mention before it in the clause,
# across commas: it qualifies the whole statement, not one noun phrase.
_TRAILING = 4
_COPULA = r"(?:is|are|was|were|appears?|remains?|looks?|seems?)"
_CONDITION_ADVERBS = r"(?: (?:now|again|still|otherwise|grossly|essentially|overall|entirely))*"
_SEEN = (
    r"(?:seen|visualized|visible|present|identified|evident|apparent|demonstrated|noted|detected)"
)


def _cues(direction: int, *alternatives: str) -> tuple[int, re.Pattern[str]]:
    pattern = "|".join(alternatives)
    if direction & _BACKWARD:
        # The copula belongs to the cue, so it does not stop the cue's reach: "pneumonia is
        # not excluded".
        pattern = rf"(?:(?:is|are|was|were|has been|have been) )?(?:{pattern})"
    if direction & _TRAILING:
        pattern = rf"(?:{pattern})(?=\s*(?:[,.]|$))"
    return direction, re.compile(rf"\b(?:{pattern})\b")


_PRE_NEGATION_UNCERTAINTY = (
    _cues(
        _BOTH,
        r"(?:cannot|could not|may not|can not) (?:be )?(?:entirely |completely |totally "
        r"|definitely )?(?:excluded?|ruled out|rule out)",
        r"difficult to (?:exclude|rule out)",
    ),
    _cues(_BACKWARD, r"not (?:been )?(?:excluded|ruled out)"),
    # CheXpert: "no new X" leaves the old X possibly present.
    _cues(_FORWARD, r"no new"),
    _cues(
        _BOTH,
        r"not (?:well|clearly) (?:seen|visualized|evaluated|assessed)",
        r"(?:poorly|incompletely) (?:seen|visualized|evaluated|assessed)",
    ),
)
_NEGATION = (
    _cues(
        _FORWARD,
        # "No change in the effusion" keeps the effusion; "no longer" has its own entry.
        r"no(?! longer\b)(?! (?:(?:significant|appreciable|interval|substantial|definite) )*"
        r"change)",
        r"no longer",
        r"without(?! (?:(?:significant|appreciable|interval) )*change)",
        r"not",
        r"nor",
        r"negative for",
        r"free of",
        r"clear of",
        r"absence of",
        r"resolution of",
        r"removal of",
        r"disappearance of",
        r"drainage of",
        r"history of",
        r"rather than",
        r"instead of",
        r"rule out",
        r"to exclude",
    ),
    # CheXpert: "no finding to suggest X". A pattern of its own, so the plain "no" above still
    # negates the mentions inside it.
    _cues(_FORWARD, r"(?:no|without|nothing)(?: \w+){0,6}? to (?:suggest|indicate|explain)"),
    _cues(
        _BOTH,
        r"(?:(?:has|have|had) )?(?:been )?(?:(?:since|now|completely|nearly|largely|entirely) )?"
        r"(?:resolved|cleared|removed)",
        r"absent",
        r"ruled out",
    ),
    _cues(
        _BACKWARD,
        rf"no longer (?:\w+ )?{_SEEN}",
        rf"not (?!well\b|clearly\b)(?:\w+ )?{_SEEN}",
        rf"{_COPULA}{_CONDITION_ADVERBS} (?:normal|unremarkable|within normal limits|negative)",
    ),
)
_POST_NEGATION_UNCERTAINTY = (
    _cues(
        _FORWARD,
        r"may",
        r"might",
        r"could",
        r"possible",
        r"possibly",
        r"probable",
        r"probably",
        r"likely",
        r"unlikely",
        r"questionable",
        r"question of",
        r"questioned",
        r"suspicious for",
        r"suspicion (?:of|for)",
        r"suspected",
        r"suspect",
        r"concerning for",
        r"concern for",
        r"worrisome for",
        r"suggestive of",
        r"suggest(?:s|ing|ion of)?",
        r"raises? (?:the )?(?:possibility|question|concern)",
        r"presumably",
        r"presumed",
        r"perhaps",
        r"potential(?:ly)?",
        r"equivocal",
        r"indeterminate",
        r"versus",
        r"vs",
        r"differential(?: diagnosis)?",
        r"favou?r(?:s|ed)?",
        r"consider(?:ed)?",
        r"correlat\w+ (?:clinically )?for",
        r"borderline",
        r"query",  # also what a "?" before a finding becomes (see `_normalize`)
    ),
    _cues(_TRAILING, r"if (?:any|present|real)", r"query"),
    _cues(
        _BACKWARD,
        # "X is likely" but not "X is likely Y": the cue must close the clause.
        r"(?:is|are|was|were|be) (?:\w+ )?(?:likely|unlikely|possible|probable|suspected"
        r"|questioned|questionable|favou?red|considered|equivocal)(?: (?:present|seen|noted))?"
        r"(?=\s*(?:,|$))",
        r"(?:may|might|could|can) (?:also )?(?:be )?(?:present|seen|noted|exist|persist)",
        r"not appreciated",
    ),
)

# A verb between a cue and a mention ends the cue's reach: in "opacity is seen and the heart
# size is normal" the "is normal" does not reach "opacity". Verbs that link a hedge to its
# object ("may represent atelectasis") stop only backward cues.
_VERB = re.compile(r"\b(?:is|are|was|were|has|have|had|seen|noted|present|identified)\b")
_SUBJECT_VERB = re.compile(r"\b(?:demonstrated|shows?|represents?|reflects?|suggests?)\b")
_TIP = re.compile(r"\btips?\b")

# "X is enlarged" / "normal X" for attribute mentions, nearest qualifier wins.
_QUALIFIER = re.compile(
    r"\b(?:"
    r"(?P<negative>not (?:\w+ )?(?:enlarged|widened|dilated|increased|prominent)"
    r"|within normal limits|upper limits? of normal|(?:top|upper) normal|normal|unremarkable)"
    r"|(?P<uncertain>borderline|stable|unchanged|similar|not (?:significantly )?changed"
    r"|no (?:(?:significant|interval|appreciable) )*change)"
    r"|(?P<positive>enlarged|enlargement|large|widened|widening|wide|prominent|prominence"
    r"|increased|dilated|globular)"
    r")\b"
)
_QUALIFIER_LABELS = {"negative": NEGATIVE, "uncertain": UNCERTAIN, "positive": POSITIVE}
# Words allowed between an attribute and its qualifier ("the heart is mildly enlarged").
_LINKING_WORDS = frozenset(
    "is are was were be been appears appear remains remain looks look seems seem has have "
    "again now still otherwise overall mildly moderately markedly severely slightly minimally "
    "significantly substantially grossly essentially likely probably possibly may might could "
    "also somewhat at the of in size stably and only very quite appearance".split()
)
_COPULAS = frozenset("is are appears appear remains remain".split())
_HEDGES = frozenset("likely probably possibly may might could".split())

# Words that may sit between two listed mentions ("effusion, small pneumothorax, or ...").
_CONJUNCTIONS = frozenset({"and", "or", "nor", "versus", "vs"})
_ALTERNATIVES = frozenset({"or", "versus", "vs"})
_CHAIN_BREAKERS = frozenset(
    "is are was were be been being has have had seen noted present identified demonstrated "
    "there which that the with without no not may might could would likely possible possibly "
    "probable probably suggest suggests suggesting suggestive concerning represent represents "
    "reflect reflects".split()
)
_GAP_TOKEN = re.compile(r"[a-z0-9]+|[,/]")

# With ``lungs_clear_negates=True``, "the lungs are clear" negates the airspace processes. Off
# by default: CheXpert has no such rule (see the module docstring).
_LUNGS_CLEAR = re.compile(
    r"\blungs? (?:fields? )?(?:(?:are|is|appear|appears|remain|remains|now|otherwise|again"
    r"|grossly|essentially|both|bilaterally|well expanded and|well aerated and|expanded and"
    r"|hyperinflated but|hyperexpanded but|low in volume but) )*clear\b|\bclear lungs?\b"
)
_CLEAR_LUNGS_NEGATE = tuple(
    _INDEX[name] for name in ("lung_opacity", "consolidation", "edema", "pneumonia")
)

# A sentence that mentions no observation still leaves `no_finding` positive when it states
# something normal or negative ...
_NORMAL_STATEMENT = re.compile(
    r"\b(?:no(?! (?:(?:significant|appreciable|interval|substantial) )*change)|not|without"
    r"|negative|normal(?:ly)?|unremarkable|clear|intact|midline)\b"
)
# ... or only describes the examination; any other words state something the rule tables do not
# recognise ("tortuous aorta", "hilar fullness", "cardiomgaly"), which may be abnormal, so
# `no_finding` is left blank rather than called normal.
_NEUTRAL_WORDS = frozenset(
    "a an the and or of to in on at with from for by as is are was were be been being has have "
    "had this that these those there it its single one two three frontal lateral pa ap view "
    "views portable upright supine semi erect chest radiograph radiographs radiography film "
    "films exam examination study studies image images comparison compared prior previous "
    "earlier recent made available none technique limited due patient rotation rotated "
    "positioning inspiration inspiratory expiration penetration low lung lungs volume volumes "
    "findings impression indication history clinical reason obtained performed provided again "
    "also since now today dated date left right bilateral stable unchanged appearance bedside "
    "habitus underpenetration underpenetrated overpenetrated body erect thorax slight shallow "
    "evaluation assessment months days weeks before ago "
    # Normal variants, not findings.
    "nipple nipples shadow shadows azygos lobe fissure".split()
)
_SENTENCE_END = re.compile(r"\.(?!\d)|(?<!\d)\.|[!?\n]")
_CLAUSE_BOUNDARY = re.compile(
    r"[;:]|\b(?:but|however|although|though|whereas|while|which|except|aside from|apart from"
    r"|other than)\b"
    r"|(?<!consistent )(?<!compatible )(?<!associated )(?<!keeping )\bwith\b"
    r"|(?=\bthere (?:is|are|was|were|has|have)\b)"
)


@dataclass(frozen=True)
class _Mention:
    target: int  # observation index, or _OTHER
    kind: str  # _FINDING, _UNCERTAIN_FINDING, _ATTRIBUTE or _NORMAL_WHOLE
    start: int
    end: int
    text: str


# Abbreviations as radiologists write them, spelled out before mentions are matched.
_ABBREVIATIONS = {
    "ptx": "pneumothorax",
    "pna": "pneumonia",
    "chf": "congestive heart failure",
    "rll": "right lower lobe",
    "rml": "right middle lobe",
    "rul": "right upper lobe",
    "lll": "left lower lobe",
    "lul": "left upper lobe",
    "ett": "endotracheal tube",
    "ngt": "nasogastric tube",
    "ogt": "orogastric tube",
    "ij": "internal jugular",
    "svc": "superior vena cava",
    "cvc": "central venous catheter",
    "cxr": "chest radiograph",
    "b/l": "bilateral",
    "c/w": "consistent with",
    "s/p": "status post",
    "w/o": "without",
    "r/o": "rule out",
}
_ABBREVIATION = re.compile(
    r"(?<![\w/])(?:" + "|".join(re.escape(a) for a in _ABBREVIATIONS) + r")(?![\w/])"
)
# "? pneumonia" and "pneumonia?" both question the finding: the first becomes a forward
# "query", the second a clause-closing one.
_QUESTION_AFTER = re.compile(r"(?<=[a-z0-9])\?")
_QUESTION_BEFORE = re.compile(r"\?\s*(?=[a-z])")

# Misspellings. A word outside this vocabulary is read as the vocabulary word it is closest to
# when the Damerau-Levenshtein distance (insertions, deletions, substitutions, transpositions of
# neighbours) is within `_spelling_bound` of that word, the first letters agree, and no other
# vocabulary word is as close. Words are grouped by term; the tests check that forms of
# different terms lie further apart than the bound, so a correction cannot turn one finding
# into another.
SPELLING_VOCABULARY: dict[str, tuple[str, ...]] = {
    "pneumothorax": ("pneumothorax", "pneumothoraces", "hydropneumothorax"),
    "effusion": ("effusion", "effusions"),
    "pleural": ("pleural", "pleura"),
    "consolidation": ("consolidation", "consolidations", "consolidative", "consolidated"),
    "atelectasis": ("atelectasis", "atelectases", "atelectatic"),
    "cardiomegaly": ("cardiomegaly",),
    "pneumonia": ("pneumonia", "pneumonias"),
    "opacity": ("opacity", "opacities", "opacification", "opacified"),
    "edema": ("edema", "oedema"),
    "infiltrate": ("infiltrate", "infiltrates", "infiltrated", "infiltration"),
    "fracture": ("fracture", "fractures", "fractured"),
    "silhouette": ("silhouette", "silhouettes"),
    "mediastinum": ("mediastinum", "mediastinal"),
    "cardiomediastinal": ("cardiomediastinal",),
    "nodule": ("nodule", "nodules"),
    "costophrenic": ("costophrenic",),
    "interstitial": ("interstitial",),
    "enlarged": ("enlarged", "enlargement"),
    "endotracheal": ("endotracheal",),
    "nasogastric": ("nasogastric",),
    "catheter": ("catheter", "catheters"),
    "pacemaker": ("pacemaker", "pacemakers"),
    "congestion": ("congestion",),
}
_SPELLING_FORMS = frozenset(f for forms in SPELLING_VOCABULARY.values() for f in forms)
# Correctly spelled words one edit from a vocabulary word; they are never corrected.
_NOT_MISSPELLINGS = frozenset({"enema", "plural", "interstitium", "engorged"})


def _spelling_bound(word: str) -> int:
    """Edits tolerated in a misspelling of ``word``: none below five letters (too many real
    words lie one edit apart), one up to nine letters, two from ten letters."""
    return 0 if len(word) < 5 else 1 if len(word) < 10 else 2


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): the fewest insertions,
    deletions, substitutions and transpositions of neighbouring letters that turn ``a`` into
    ``b``, no substring edited twice.

    Examples:
      >>> edit_distance("effusion", "effusoin"), edit_distance("edema", "oedema")
      (1, 1)
    """
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


@functools.lru_cache(maxsize=65536)
def correct_spelling(word: str) -> str:
    """The vocabulary word that ``word`` misspells (see `SPELLING_VOCABULARY`), else ``word``.

    Examples:
      >>> correct_spelling("pnuemothorax"), correct_spelling("enema")
      ('pneumothorax', 'enema')
    """
    if len(word) < 5 or word in _SPELLING_FORMS or word in _NOT_MISSPELLINGS:
        return word
    best, best_distance, tied = word, None, False
    for form in _SPELLING_FORMS:
        if form[0] != word[0] or abs(len(form) - len(word)) > _spelling_bound(form):
            continue
        distance = edit_distance(word, form)
        if distance > _spelling_bound(form):
            continue
        if best_distance is None or distance < best_distance:
            best, best_distance, tied = form, distance, False
        elif distance == best_distance:
            tied = True
    return word if tied else best


def _correct_spelling(text: str) -> str:
    return re.sub(r"[a-z]+", lambda m: correct_spelling(m.group()), text)


def _normalize(report: str) -> str:
    text = report.lower().replace("\u2019", "'")
    text = _ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m.group()], text)
    text = _QUESTION_AFTER.sub(" query.", text)
    text = _QUESTION_BEFORE.sub("query ", text)
    text = _correct_spelling(text)
    text = re.sub(r"\bcan(?:'t|t| not)\b", "cannot", text)
    text = re.sub(
        r"\b(is|are|was|were|does|do|did|could|would|has|have|had)n'?t\b", r"\1 not", text
    )
    text = re.sub(r"\band ?/ ?or\b|\bandor\b", "or", text)
    # Abbreviations whose period is not a sentence end.
    text = re.sub(r"\bvs\.", "vs", text)
    text = re.sub(r"\be\.g\.|\bi\.e\.", ",", text)
    return re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)


def _find_mentions(clause: str) -> list[_Mention]:
    unmentions = {
        target: [m.span() for m in pattern.finditer(clause)]
        for target, pattern in _UNMENTION_PATTERNS.items()
    }
    mentions = []
    for target, kind, pattern in _MENTION_PATTERNS:
        for match in pattern.finditer(clause):
            start, end = match.span()
            if any(s < end and start < e for s, e in unmentions.get(target, ())):
                continue
            mentions.append(_Mention(target, kind, start, end, match.group()))
    # "enlarged heart" is one finding, not also an attribute mention of "heart".
    findings = [m for m in mentions if m.kind not in _QUALIFIED]
    mentions = [
        m
        for m in mentions
        if m.kind not in _QUALIFIED
        or not any(f.target == m.target and f.start < m.end and m.start < f.end for f in findings)
    ]
    return sorted(mentions, key=lambda m: (m.start, m.end))


def _chains(clause: str, mentions: list[_Mention]) -> tuple[list[int], list[bool]]:
    """Groups listed mentions ("A, B, or C"); returns each mention's group and, per mention,
    whether it is one of alternatives ("or", "versus", "/")."""
    # One link per gap between consecutive mentions: (linked, conjunction, alternative, comma).
    links = []
    reach = mentions[0].end
    for mention in mentions[1:]:
        tokens = _GAP_TOKEN.findall(clause[reach : mention.start]) if mention.start > reach else []
        words = [t for t in tokens if t not in ",/"]
        others = [w for w in words if w not in _CONJUNCTIONS]
        linked = len(others) <= 4 and not any(w in _CHAIN_BREAKERS for w in others)
        conjunction = len(others) < len(words) or "/" in tokens
        alternative = "/" in tokens or any(w in _ALTERNATIVES for w in words)
        links.append((linked, conjunction, alternative, "," in tokens))
        reach = max(reach, mention.end)

    # A bare comma lists only when a conjunction closes the run of linked mentions:
    # "no effusion, pneumothorax, or consolidation" is one list, "no pneumothorax, small left
    # effusion" two statements.
    joined = [False] * len(links)
    start = 0
    while start < len(links):
        stop = start
        while stop < len(links) and links[stop][0]:
            stop += 1
        closed = any(links[k][1] for k in range(start, stop))
        for k in range(start, stop):
            joined[k] = closed or not links[k][3]
        start = stop + 1

    group_of = [0]
    for join in joined:
        group_of.append(group_of[-1] + (not join))

    # Alternatives are the members an "or"/"versus" joins. A head set off by a bare comma before
    # them is an appositive, not one of them: in "opacity, scarring versus pneumonia" the
    # opacity is certain and its cause is not. A list with a serial comma before the
    # conjunction ("effusion, pneumothorax, or consolidation") stays one list.
    alternative = [False] * len(mentions)
    for group in set(group_of):
        members = [i for i, g in enumerate(group_of) if g == group]
        serial = any(links[i - 1][1] and links[i - 1][3] for i in members[1:])
        segments = [[members[0]]]
        for i in members[1:]:
            _, conjunction, _, comma = links[i - 1]
            if comma and not conjunction and not serial:
                segments.append([])  # an appositive boundary
            segments[-1].append(i)
        for segment in segments:
            if any(links[i - 1][2] for i in segment[1:]):
                for i in segment:
                    alternative[i] = True
    return group_of, alternative


def _forward_reach(clause: str, cue_end: int, mention: _Mention) -> bool:
    between = clause[cue_end : mention.start]
    return mention.start >= cue_end and "," not in between and not _VERB.search(between)


def _backward_reach(clause: str, cue_start: int, mention: _Mention) -> bool:
    between = clause[mention.end : cue_start]
    return (
        mention.end <= cue_start
        and "," not in between
        and not _VERB.search(between)
        and not _SUBJECT_VERB.search(between)
        # "The tube tip is not seen below the diaphragm" is about where the tip is.
        and not _TIP.search(between)
    )


def _in_scope(
    clause: str,
    mentions: list[_Mention],
    cues: tuple[tuple[int, re.Pattern[str]], ...],
    group_of: list[int],
) -> set[int]:
    """Indices of the mentions that some cue reaches, extended to whole lists on the cue's
    side: in "opacity, query atelectasis or pneumonia" the "query" stops at the comma."""
    reached = set()
    for direction, pattern in cues:
        for cue in pattern.finditer(clause):
            hits = set()
            for i, mention in enumerate(mentions):
                if mention.start < cue.end() and cue.start() < mention.end:
                    continue  # a cue inside the mention ("no" in "nodule") is no cue
                if (
                    (direction & _FORWARD and _forward_reach(clause, cue.end(), mention))
                    or (direction & _BACKWARD and _backward_reach(clause, cue.start(), mention))
                    or (direction & _TRAILING and mention.end <= cue.start())
                ):
                    hits.add(i)
            # (group, side of the cue) pairs reached; a list extends on that side only.
            sides = {(group_of[i], mentions[i].start >= cue.end()) for i in hits}
            reached.update(
                i
                for i, mention in enumerate(mentions)
                if (group_of[i], mention.start >= cue.end()) in sides
            )
    return reached


def _links_to_qualifier(tokens: list[str], *, after: bool) -> bool:
    """Whether the words between an attribute and a qualifier join them: "the heart is mildly
    enlarged", or a coordinated subject, "silhouette and pulmonary vasculature are normal"."""
    unknown = [i for i, t in enumerate(tokens) if t not in _LINKING_WORDS]
    if not unknown:
        return True
    first, last = unknown[0], unknown[-1]
    return (
        after
        and last - first < 3
        and first > 0
        and tokens[first - 1] == "and"
        and any(t in _COPULAS for t in tokens[last + 1 :])
    )


def _attribute_label(
    clause: str, mention: _Mention, attributes: list[_Mention], hedged: bool
) -> int | None:
    """Label of an attribute mention from its nearest qualifier; None when it has none."""
    best: tuple[int, int] | None = None  # (distance in words, label)
    for qualifier in _QUALIFIER.finditer(clause):
        if qualifier.end() <= mention.start:
            lo, hi = qualifier.end(), mention.start
        elif qualifier.start() >= mention.end:
            lo, hi = mention.end, qualifier.start()
        else:
            continue
        # Other attributes may sit in between: "heart size and mediastinal contours are normal".
        between = list(clause[lo:hi])
        for other in attributes:
            if lo <= other.start and other.end <= hi:
                between[other.start - lo : other.end - lo] = " " * (other.end - other.start)
        tokens = _GAP_TOKEN.findall("".join(between))
        if not _links_to_qualifier(tokens, after=lo == mention.end):
            continue
        label = next(_QUALIFIER_LABELS[k] for k, v in qualifier.groupdict().items() if v)
        if label == POSITIVE and (hedged or any(t in _HEDGES for t in tokens)):
            label = UNCERTAIN
        if best is None or len(tokens) < best[0]:
            best = (len(tokens), label)
    return None if best is None else best[1]


def _classify_clause(clause: str) -> list[tuple[_Mention, int]]:
    mentions = _find_mentions(clause)
    if not mentions:
        return []
    group_of, alternatives = _chains(clause, mentions)
    pre_uncertain = _in_scope(clause, mentions, _PRE_NEGATION_UNCERTAINTY, group_of)
    negated = _in_scope(clause, mentions, _NEGATION, group_of)
    post_uncertain = _in_scope(clause, mentions, _POST_NEGATION_UNCERTAINTY, group_of)
    attributes = [m for m in mentions if m.kind in _QUALIFIED]

    labelled = []
    for i, mention in enumerate(mentions):
        if mention.kind in _QUALIFIED:
            # The qualifier carries the negation ("not enlarged"); a forward "no" earlier in
            # the clause belongs to another predicate ("no effusion and the heart is enlarged").
            hedged = i in pre_uncertain or i in post_uncertain
            label = _attribute_label(clause, mention, attributes, hedged)
            if label is None or (mention.kind == _NORMAL_WHOLE and label != NEGATIVE):
                continue
        elif i in pre_uncertain:
            label = UNCERTAIN
        elif i in negated:
            label = NEGATIVE
        elif i in post_uncertain or mention.kind == _UNCERTAIN_FINDING or alternatives[i]:
            label = UNCERTAIN
        else:
            label = POSITIVE
        labelled.append((mention, label))
    return labelled


# Sections that give the clinical question or the technique, not findings (CheXpert labels the
# impression; R2Gen-style reports may still carry these lines).
_CONTEXT_SECTION = re.compile(
    r"^\s*(?:(?:indication|history|clinical (?:history|information|indication)|reason for "
    r"(?:exam|examination|study)|technique|examination|exam)\s*:|(?:comparison|compared)\b)"
)
# A limitation of the study ("large body habitus limits the study") describes the examination.
_LIMITATION = re.compile(r"\blimit(?:s|ed|ing|ation|ations)?\b")
_SECTION_HEADER = re.compile(r"^\s*(?:findings|impression|conclusion)\s*:\s*")


def _unrecognised(sentence: str) -> bool:
    """Whether a sentence without a mention may state an abnormality the tables miss."""
    if _CONTEXT_SECTION.search(sentence):
        return False
    sentence = _SECTION_HEADER.sub("", sentence)
    if _NORMAL_STATEMENT.search(sentence) or _LIMITATION.search(sentence):
        return False
    return any(w not in _NEUTRAL_WORDS for w in re.findall(r"[a-z]+", sentence))


def _label_report(report: str, lungs_clear_negates: bool) -> np.ndarray:
    labels = np.full(NUM_OBSERVATIONS, BLANK, dtype=np.int64)
    text = _normalize(report)
    if not re.search(r"[a-z]", text):
        return labels

    found: dict[int, set[int]] = {}
    unrecognised = False
    for sentence in _SENTENCE_END.split(text):
        sentence = " ".join(sentence.split())
        if lungs_clear_negates and _LUNGS_CLEAR.search(sentence):
            for target in _CLEAR_LUNGS_NEGATE:
                found.setdefault(target, set()).add(NEGATIVE)
        recognised = False
        for clause in _CLAUSE_BOUNDARY.split(sentence):
            clause = clause.strip(" ,")
            for mention, label in _classify_clause(clause):
                recognised = True
                found.setdefault(mention.target, set()).add(label)
                if label != NEGATIVE and _HEART_FAILURE.fullmatch(mention.text):
                    found.setdefault(_INDEX["cardiomegaly"], set()).add(UNCERTAIN)
        unrecognised = unrecognised or (not recognised and _unrecognised(sentence))

    # CheXpert's aggregation: positive > uncertain > negative.
    for target, seen in found.items():
        if target == _OTHER:
            continue
        for label in (POSITIVE, UNCERTAIN, NEGATIVE):
            if label in seen:
                labels[target] = label
                break
    abnormal = {t for t, seen in found.items() if seen & {POSITIVE, UNCERTAIN}}
    if not abnormal - {_SUPPORT_DEVICES} and not unrecognised:
        labels[_NO_FINDING] = POSITIVE
    return labels


def label_reports(reports: Sequence[str], *, lungs_clear_negates: bool = False) -> np.ndarray:
    """Labels reports with the offline rule-based labeler (see the module docstring).

    Args:
      reports: free-text reports, raw or cleaned the way R2Gen cleans them (lower case, no
        commas, sentences joined by ``" . "``).
      lungs_clear_negates: read "the lungs are clear" as negating lung opacity, consolidation,
        edema and pneumonia. Off by default, as in CheXpert, which gives that sentence no
        label; the synthetic data's gold labels follow the convention, so set it to compare
        with them cell by cell.

    Returns:
      ``int64 (len(reports), 14)`` labels in `OBSERVATIONS` order: ``0`` blank, ``1`` positive,
      ``2`` negative, ``3`` uncertain. ``no_finding`` is ``1`` or ``0`` only.

    Examples:
      >>> from camegrad_jax.rrg.labeler import label_reports
      >>> label_reports(["Heart size is normal. No pleural effusion or pneumothorax."])[0]
      array([0, 2, 0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 1])
    """
    if isinstance(reports, str):
        raise TypeError("`reports` should be a sequence of strings, not a single string.")
    if not isinstance(lungs_clear_negates, bool):
        raise TypeError(f"`lungs_clear_negates` should be a bool. Found `{lungs_clear_negates!r}`.")
    if len(reports) == 0:
        return np.zeros((0, NUM_OBSERVATIONS), dtype=np.int64)
    return np.stack([_label_report(report, lungs_clear_negates) for report in reports])


# ---------------------------------------------------------------------------------------------
# CheXbert back end (optional).
# ---------------------------------------------------------------------------------------------


class CheXbertLabeler:
    """Labels reports with a CheXbert checkpoint (optional back end).

    Needs PyTorch and transformers, which this package does not install, and the CheXbert
    weights (``chexbert.pth`` from the CheXbert authors, github.com/stanfordmlgroup/CheXbert),
    which cannot be downloaded by this library. The model is BERT-base with 13 four-way heads
    and one two-way head (``no_finding``); the arg-max of each head is the label, in the same
    encoding as `label_reports` (0 blank, 1 positive, 2 negative, 3 uncertain).

    Nothing is fetched from the network: the BERT configuration and vocabulary are read with
    ``local_files_only=True``. To use it, with the weights on disk::

        pip install torch transformers
        # once, where there is network: BERT's configuration and vocabulary (its weights come
        # from chexbert.pth)
        huggingface-cli download bert-base-uncased config.json vocab.txt \\
            --local-dir weights/bert-base-uncased

    then label reports, or score generated reports with it instead of the rule-based labeler:

    >>> from camegrad_jax.rrg.labeler import CheXbertLabeler
    >>> from camegrad_jax.rrg.metrics import evaluate_reports
    >>> chexbert = CheXbertLabeler(
    ...     "weights/chexbert.pth", bert_name_or_path="weights/bert-base-uncased"
    ... )  # doctest: +SKIP
    >>> chexbert(["No pleural effusion. Mild cardiomegaly."])  # doctest: +SKIP
    >>> evaluate_reports(generated, references, chexbert)  # doctest: +SKIP

    ``tests/rrg/test_labeler.py`` runs this loading path on a one-layer model of the same
    structure when torch and transformers are installed.

    Args:
      checkpoint_path: the CheXbert checkpoint: a dict with ``"model_state_dict"`` (keys with or
        without the ``"module."`` prefix), or the state dict itself.
      bert_name_or_path: where `transformers` finds the ``bert-base-uncased`` configuration and
        vocabulary: a local directory, or the name when it is in the local Hugging Face cache.
      device: a torch device string; defaults to ``"cuda"`` when available, else ``"cpu"``.
      batch_size: reports per forward pass.

    Raises:
      ImportError: when ``torch`` or ``transformers`` is not installed.
      FileNotFoundError: when ``checkpoint_path`` is not a file, or ``bert_name_or_path`` holds
        no BERT configuration and vocabulary on this machine.
      ValueError: when the checkpoint's keys are not those of CheXbert.
    """

    _REQUIRED = ("torch", "transformers")

    def __init__(
        self,
        checkpoint_path: str | os.PathLike[str],
        *,
        bert_name_or_path: str = "bert-base-uncased",
        device: str | None = None,
        batch_size: int = 16,
    ) -> None:
        path = Path(checkpoint_path)
        missing = [name for name in self._REQUIRED if importlib.util.find_spec(name) is None]
        if missing:
            note = "" if path.is_file() else f" The checkpoint {str(path)!r} does not exist either."
            raise ImportError(
                f"CheXbertLabeler needs {' and '.join(missing)}, which camegrad-jax does not "
                f"install; `pip install torch transformers` to use it.{note} The rule-based "
                "`label_reports` needs neither."
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"CheXbert checkpoint not found at {str(path)!r}. The weights cannot be "
                "downloaded by camegrad-jax: get `chexbert.pth` from the CheXbert authors "
                "(github.com/stanfordmlgroup/CheXbert) and pass its path."
            )
        if batch_size < 1:
            raise ValueError(f"`batch_size` should be a positive int. Found `{batch_size}`.")

        import torch
        import transformers

        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        try:
            self._tokenizer = transformers.BertTokenizer.from_pretrained(
                bert_name_or_path, local_files_only=True
            )
            config = transformers.BertConfig.from_pretrained(
                bert_name_or_path, local_files_only=True
            )
        except OSError as error:
            raise FileNotFoundError(
                f"`bert_name_or_path` {bert_name_or_path!r} holds no BERT configuration and "
                "vocabulary on this machine (nothing is downloaded): pass a directory with "
                "bert-base-uncased's config.json and vocab.txt."
            ) from error
        hidden = config.hidden_size
        heads = [torch.nn.Linear(hidden, NUM_LABEL_CLASSES) for _ in range(NUM_OBSERVATIONS - 1)]
        heads.append(torch.nn.Linear(hidden, 2))  # no_finding: blank / positive
        self._model = torch.nn.ModuleDict(
            {"bert": transformers.BertModel(config), "linear_heads": torch.nn.ModuleList(heads)}
        )
        checkpoint = torch.load(path, map_location="cpu")
        if isinstance(checkpoint, dict) and "model_state_dict" in checkpoint:
            checkpoint = checkpoint["model_state_dict"]
        # Checkpoints were saved from `nn.DataParallel`, hence the "module." prefix.
        state = {key.removeprefix("module."): value for key, value in checkpoint.items()}
        result = self._model.load_state_dict(state, strict=False)
        # Newer transformers keep `position_ids` as a buffer the old checkpoint lacks.
        missing_keys = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{str(path)!r} is not a CheXbert checkpoint: missing {missing_keys[:5]}, "
                f"unexpected {list(result.unexpected_keys)[:5]}."
            )
        self._model.to(self.device).eval()

    def __call__(self, reports: Sequence[str]) -> np.ndarray:
        """``int64 (len(reports), 14)`` labels, as `label_reports` returns them."""
        torch = self._torch
        out = np.zeros((len(reports), NUM_OBSERVATIONS), dtype=np.int64)
        for lo in range(0, len(reports), self.batch_size):
            batch = [" ".join(r.split()) for r in reports[lo : lo + self.batch_size]]
            tokens = self._tokenizer(
                batch, padding="longest", truncation=True, max_length=512, return_tensors="pt"
            ).to(self.device)
            with torch.no_grad():
                cls = self._model["bert"](**tokens).last_hidden_state[:, 0]
                preds = [head(cls).argmax(dim=1) for head in self._model["linear_heads"]]
            out[lo : lo + len(batch)] = torch.stack(preds, dim=1).cpu().numpy()
        return out


# ---------------------------------------------------------------------------------------------
# Agreement with gold labels.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelerAgreement:
    """How well predicted labels match gold labels (see `labeler_agreement`).

    Attributes:
      accuracy: ``(14,)`` fraction of reports whose 4-way label matches, per observation.
      positive_f1: ``(14,)`` F1 of the positive class (label 1 vs the rest) per observation;
        NaN where neither side has a positive (F1 is undefined there).
      positive_support: ``(14,)`` number of gold positives per observation.
      overall_accuracy: fraction of all ``N × 14`` labels that match.
      nonblank_agreement: fraction of matching labels among the cells where either side is not
        blank, ``|{pred = gold ≠ blank}| / |{pred ≠ blank or gold ≠ blank}|``: a missed label
        (gold stated, predicted blank or different) and a spurious one (gold blank, predicted
        stated) both count against it, and cells both sides leave blank, which dominate
        ``overall_accuracy``, do not count for it. NaN when every cell is blank on both sides.
      exact_match: fraction of reports whose 14 labels all match.
      positive_f1_macro: mean of the defined entries of ``positive_f1``.
      positive_f1_micro: positive-class F1 with TP/FP/FN pooled over all observations.
    """

    accuracy: np.ndarray
    positive_f1: np.ndarray
    positive_support: np.ndarray
    overall_accuracy: float
    nonblank_agreement: float
    exact_match: float
    positive_f1_macro: float
    positive_f1_micro: float

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: value}``: the overall numbers, then ``accuracy/<obs>`` and
        ``positive_f1/<obs>`` per observation."""
        flat = {
            "overall_accuracy": self.overall_accuracy,
            "nonblank_agreement": self.nonblank_agreement,
            "exact_match": self.exact_match,
            "positive_f1_macro": self.positive_f1_macro,
            "positive_f1_micro": self.positive_f1_micro,
        }
        for name, acc, f1 in zip(OBSERVATIONS, self.accuracy, self.positive_f1, strict=True):
            flat[f"accuracy/{name}"] = float(acc)
            flat[f"positive_f1/{name}"] = float(f1)
        return flat

    def table(self) -> str:
        """A Markdown table: one row per observation, then the overall numbers."""
        rows = ["| observation | accuracy | positive F1 | gold positives |", "|---|---|---|---|"]
        for name, acc, f1, n in zip(
            OBSERVATIONS, self.accuracy, self.positive_f1, self.positive_support, strict=True
        ):
            f1_text = "n/a" if np.isnan(f1) else f"{f1:.3f}"
            rows.append(f"| {name} | {acc:.3f} | {f1_text} | {int(n)} |")
        rows.append(
            f"| **overall** | {self.overall_accuracy:.3f} | macro {self.positive_f1_macro:.3f}"
            f" / micro {self.positive_f1_micro:.3f} | {int(self.positive_support.sum())} |"
        )
        rows.append(f"| **non-blank cells** | {self.nonblank_agreement:.3f} | | |")
        return "\n".join(rows)


def check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Returns ``labels`` as an int array after checking it is ``(N, 14)`` with values 0–3."""
    array = np.asarray(labels)
    if array.ndim != 2 or array.shape[1] != NUM_OBSERVATIONS:
        raise ValueError(
            f"`{name}` should have shape (N, {NUM_OBSERVATIONS}). Found shape {array.shape}."
        )
    if array.size and not np.all(np.isin(array, np.arange(NUM_LABEL_CLASSES))):
        raise ValueError(f"`{name}` should hold labels in {{0, 1, 2, 3}}.")
    return array.astype(np.int64)


def labeler_agreement(predicted: np.ndarray, gold: np.ndarray) -> LabelerAgreement:
    """Agreement of a labeler's ``predicted`` labels with ``gold`` labels.

    Args:
      predicted: ``(N, 14)`` labels in {0, 1, 2, 3}, e.g. ``label_reports(reports)``.
      gold: ``(N, 14)`` reference labels for the same reports.

    Returns:
      A `LabelerAgreement`: per-observation 4-way accuracy and positive-class F1, and overall
      accuracy, agreement on non-blank cells, exact match and macro / micro positive F1.
    """
    predicted = check_labels(predicted, "predicted")
    gold = check_labels(gold, "gold")
    if predicted.shape != gold.shape:
        raise ValueError(
            f"`predicted` and `gold` should have the same shape. Found {predicted.shape} and "
            f"{gold.shape}."
        )
    if not len(gold):
        raise ValueError("`gold` should hold at least one report.")
    pred_pos, gold_pos = predicted == POSITIVE, gold == POSITIVE
    tp = (pred_pos & gold_pos).sum(0)
    fp = (pred_pos & ~gold_pos).sum(0)
    fn = (~pred_pos & gold_pos).sum(0)
    denominator = tp + 0.5 * (fp + fn)
    with np.errstate(invalid="ignore", divide="ignore"):
        positive_f1 = np.where(denominator > 0, tp / denominator, np.nan)
    pooled = tp.sum() + 0.5 * (fp.sum() + fn.sum())
    defined = positive_f1[~np.isnan(positive_f1)]
    equal = predicted == gold
    stated = (predicted != BLANK) | (gold != BLANK)
    return LabelerAgreement(
        accuracy=equal.mean(0),
        positive_f1=positive_f1,
        positive_support=gold_pos.sum(0),
        overall_accuracy=float(equal.mean()),
        nonblank_agreement=float(equal[stated].mean()) if stated.any() else float("nan"),
        exact_match=float(equal.all(1).mean()),
        positive_f1_macro=float(defined.mean()) if defined.size else float("nan"),
        positive_f1_micro=float(tp.sum() / pooled) if pooled > 0 else float("nan"),
    )
