"""The rule tables of the report labeler (`camegrad_jax.rrg.labeler`): the phrases that make a
mention of each observation, the negation and uncertainty cues with their direction of reach,
and the words that join, break or qualify them. The rules and the choices behind them are
described in the labeler's module docstring.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from camegrad_jax.rrg.observations import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN

INDEX = {name: i for i, name in enumerate(OBSERVATIONS)}
NO_FINDING = INDEX["no_finding"]
SUPPORT_DEVICES = INDEX["support_devices"]
# Abnormalities outside the 14 labels; they only stop `no_finding` from being positive.
OTHER = -1

# ---------------------------------------------------------------------------------------------
# Mention phrases (regular-expression fragments over normalised text: lower case, hyphens between
# letters turned into spaces, "and/or" turned into "or").
# ---------------------------------------------------------------------------------------------

# Positive unless a cue says otherwise.
FINDING_PHRASES: dict[int, tuple[str, ...]] = {
    INDEX["enlarged_cardiomediastinum"]: (
        r"widened (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?|shadow))",
        r"widening of the (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?))",
        r"(?:cardio)?mediastinal (?:widening|enlargement)",
        r"enlarged (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?|shadow))",
        r"enlargement of the (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?))",
    ),
    INDEX["cardiomegaly"]: (
        r"cardiomegaly",
        r"cardiac enlargement",
        r"enlarged (?:heart|cardiac (?:silhouette|shadow|contours?))",
        r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|contours?))",
    ),
    INDEX["lung_opacity"]: (
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
    INDEX["lung_lesion"]: (
        r"nodules?",
        r"nodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification)",
        r"mass(?:es)?",
        r"lesions?",
        r"lump",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
    ),
    INDEX["edema"]: (
        r"o?edema",
        r"heart failure",
        r"chf",
        r"fluid overload",
        r"volume overload",
    ),
    INDEX["consolidation"]: (r"consolidat(?:ion|ions|ive|ed)",),
    INDEX["pneumonia"]: (
        r"(?:broncho)?pneumonias?",
        r"infections?",
        r"infectious(?: process)?",
    ),
    INDEX["atelectasis"]: (
        r"atelecta(?:sis|ses|tic)",
        r"volume loss",
        r"collapsed?",
    ),
    INDEX["pneumothorax"]: (r"(?:hydro)?pneumothora(?:x|ces)",),
    INDEX["pleural_effusion"]: (
        r"effusions?",
        r"pleural fluid",
        r"fluid",
        r"hydropneumothora(?:x|ces)",
    ),
    INDEX["pleural_other"]: (
        r"pleural (?:thickening|scar(?:ring|s)?|plaques?|calcifications?|fibrosis)",
        r"thickening of the pleura",
        r"fibrothorax",
        r"pleuro ?parenchymal (?:scar(?:ring|s)?|thickening|changes?)",
        r"pleural parenchymal (?:scar(?:ring|s)?|thickening)",
        r"apical (?:pleural )?cap(?:ping)?",
    ),
    INDEX["fracture"]: (r"fractures?", r"fractured", r"fx"),
    INDEX["support_devices"]: (
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
    OTHER: (
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
UNCERTAIN_FINDING_PHRASES: dict[int, tuple[str, ...]] = {
    INDEX["edema"]: (
        r"(?:pulmonary )?vascular congestion",
        r"pulmonary congestion",
        r"(?:pulmonary )?vascular prominence",
        r"prominence of the pulmonary vasculature",
        r"interstitial prominence",
        r"indistinctness",
        r"cephalization",
    ),
    # CheXpert: blunting of the costophrenic angle is an uncertain effusion (fluid or scarring).
    INDEX["pleural_effusion"]: (
        r"blunt(?:ing|ed) of the (?:\w+ )?costophrenic (?:angles?|sulc(?:us|i))",
        r"blunted (?:\w+ )?costophrenic (?:angles?|sulc(?:us|i))",
        r"costophrenic (?:angles?|sulc(?:us|i)) (?:(?:is|are) )?(?:\w+ )?blunt(?:ed|ing)",
    ),
}

# Labelled only through a qualifier such as "enlarged" or "normal" (see `QUALIFIER`).
ATTRIBUTE_PHRASES: dict[int, tuple[str, ...]] = {
    INDEX["enlarged_cardiomediastinum"]: (
        r"(?:cardio)?mediastinal(?: and hilar)? (?:silhouettes?|contours?|configuration|shadow"
        r"|width|size)",
        r"(?:cardio)?mediastinum",
        r"pericardial silhouette",
    ),
    INDEX["cardiomegaly"]: (
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
NORMAL_WHOLE_PHRASES: dict[int, tuple[str, ...]] = {
    INDEX["cardiomegaly"]: (r"cardiomediastinal (?:silhouettes?|contours?|shadow|size)",),
}

# A mention overlapping one of these is not a mention (CheXpert's "unmention" lists, extended).
UNMENTION_PHRASES: dict[int, tuple[str, ...]] = {
    INDEX["lung_opacity"]: (
        r"pleural (?:scar(?:ring|s)?)",
        r"pleuro ?parenchymal scar(?:ring|s)?",
        r"pleural parenchymal scar(?:ring|s)?",
        r"bone densit(?:y|ies)",
    ),
    INDEX["lung_lesion"]: (
        r"calcified (?:nodules?|granulomas?)",
        r"(?:osseous|bony|bone|lytic|blastic|sclerotic|skin|cutaneous) lesions?",
        r"mass effect",
        r"body mass",
    ),
    INDEX["edema"]: (r"(?:soft tissue|subcutaneous) o?edema",),
    INDEX["atelectasis"]: (r"(?:vertebral|vertebral body|compression) collapse",),
    INDEX["pleural_effusion"]: (
        r"pericardial effusions?",
        r"(?:joint|knee|shoulder|elbow) effusions?",
        r"fluid overload",
        r"air fluid levels?",
        r"fluid filled",
    ),
    INDEX["support_devices"]: (
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


FINDING, UNCERTAIN_FINDING = "finding", "uncertain_finding"
ATTRIBUTE, NORMAL_WHOLE = "attribute", "normal_whole"
QUALIFIED = frozenset({ATTRIBUTE, NORMAL_WHOLE})  # kinds labelled by a qualifier
MENTION_PATTERNS: tuple[tuple[int, str, re.Pattern[str]], ...] = tuple(
    (target, kind, _compile_alternatives(phrases))
    for kind, table in (
        (FINDING, FINDING_PHRASES),
        (UNCERTAIN_FINDING, UNCERTAIN_FINDING_PHRASES),
        (ATTRIBUTE, ATTRIBUTE_PHRASES),
        (NORMAL_WHOLE, NORMAL_WHOLE_PHRASES),
    )
    for target, phrases in table.items()
)
UNMENTION_PATTERNS = {t: _compile_alternatives(p) for t, p in UNMENTION_PHRASES.items()}

# "heart failure" / "chf" that is positive or uncertain adds an uncertain cardiomegaly (CheXpert).
HEART_FAILURE = re.compile(r"heart failure|chf")

# ---------------------------------------------------------------------------------------------
# Cues. Each is a regular expression with a direction: forward cues reach mentions after them
# ("no effusion"), backward cues the subject before them ("effusion has resolved").
# ---------------------------------------------------------------------------------------------
FORWARD, BACKWARD, BOTH = 1, 2, 3
# A hedge that closes its clause ("X, if any") reaches every mention before it in the clause,
# across commas: it qualifies the whole statement, not one noun phrase.
TRAILING = 4
COPULA = r"(?:is|are|was|were|appears?|remains?|looks?|seems?)"
CONDITION_ADVERBS = r"(?: (?:now|again|still|otherwise|grossly|essentially|overall|entirely))*"
SEEN = (
    r"(?:seen|visualized|visible|present|identified|evident|apparent|demonstrated|noted|detected)"
)


def _cues(direction: int, *alternatives: str) -> tuple[int, re.Pattern[str]]:
    pattern = "|".join(alternatives)
    if direction & BACKWARD:
        # The copula belongs to the cue, so it does not stop the cue's reach: "pneumonia is
        # not excluded".
        pattern = rf"(?:(?:is|are|was|were|has been|have been) )?(?:{pattern})"
    if direction & TRAILING:
        pattern = rf"(?:{pattern})(?=\s*(?:[,.]|$))"
    return direction, re.compile(rf"\b(?:{pattern})\b")


PRE_NEGATION_UNCERTAINTY = (
    _cues(
        BOTH,
        r"(?:cannot|could not|may not|can not) (?:be )?(?:entirely |completely |totally "
        r"|definitely )?(?:excluded?|ruled out|rule out)",
        r"difficult to (?:exclude|rule out)",
    ),
    _cues(BACKWARD, r"not (?:been )?(?:excluded|ruled out)"),
    # CheXpert: "no new X" leaves the old X possibly present.
    _cues(FORWARD, r"no new"),
    _cues(
        BOTH,
        r"not (?:well|clearly) (?:seen|visualized|evaluated|assessed)",
        r"(?:poorly|incompletely) (?:seen|visualized|evaluated|assessed)",
    ),
)
NEGATION = (
    _cues(
        FORWARD,
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
    _cues(FORWARD, r"(?:no|without|nothing)(?: \w+){0,6}? to (?:suggest|indicate|explain)"),
    _cues(
        BOTH,
        r"(?:(?:has|have|had) )?(?:been )?(?:(?:since|now|completely|nearly|largely|entirely) )?"
        r"(?:resolved|cleared|removed)",
        r"absent",
        r"ruled out",
    ),
    _cues(
        BACKWARD,
        rf"no longer (?:\w+ )?{SEEN}",
        rf"not (?!well\b|clearly\b)(?:\w+ )?{SEEN}",
        rf"{COPULA}{CONDITION_ADVERBS} (?:normal|unremarkable|within normal limits|negative)",
    ),
)
POST_NEGATION_UNCERTAINTY = (
    _cues(
        FORWARD,
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
    _cues(TRAILING, r"if (?:any|present|real)", r"query"),
    _cues(
        BACKWARD,
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
VERB = re.compile(r"\b(?:is|are|was|were|has|have|had|seen|noted|present|identified)\b")
SUBJECT_VERB = re.compile(r"\b(?:demonstrated|shows?|represents?|reflects?|suggests?)\b")
TIP = re.compile(r"\btips?\b")

# "X is enlarged" / "normal X" for attribute mentions, nearest qualifier wins.
QUALIFIER = re.compile(
    r"\b(?:"
    r"(?P<negative>not (?:\w+ )?(?:enlarged|widened|dilated|increased|prominent)"
    r"|within normal limits|upper limits? of normal|(?:top|upper) normal|normal|unremarkable)"
    r"|(?P<uncertain>borderline|stable|unchanged|similar|not (?:significantly )?changed"
    r"|no (?:(?:significant|interval|appreciable) )*change)"
    r"|(?P<positive>enlarged|enlargement|large|widened|widening|wide|prominent|prominence"
    r"|increased|dilated|globular)"
    r")\b"
)
QUALIFIER_LABELS = {"negative": NEGATIVE, "uncertain": UNCERTAIN, "positive": POSITIVE}
# Words allowed between an attribute and its qualifier ("the heart is mildly enlarged").
LINKING_WORDS = frozenset(
    "is are was were be been appears appear remains remain looks look seems seem has have "
    "again now still otherwise overall mildly moderately markedly severely slightly minimally "
    "significantly substantially grossly essentially likely probably possibly may might could "
    "also somewhat at the of in size stably and only very quite appearance".split()
)
COPULAS = frozenset("is are appears appear remains remain".split())
HEDGES = frozenset("likely probably possibly may might could".split())

# Words that may sit between two listed mentions ("effusion, small pneumothorax, or ...").
CONJUNCTIONS = frozenset({"and", "or", "nor", "versus", "vs"})
ALTERNATIVES = frozenset({"or", "versus", "vs"})
CHAIN_BREAKERS = frozenset(
    "is are was were be been being has have had seen noted present identified demonstrated "
    "there which that the with without no not may might could would likely possible possibly "
    "probable probably suggest suggests suggesting suggestive concerning represent represents "
    "reflect reflects".split()
)
GAP_TOKEN = re.compile(r"[a-z0-9]+|[,/]")

# With ``lungs_clear_negates=True``, "the lungs are clear" negates the airspace processes. Off
# by default: CheXpert has no such rule (see the module docstring).
LUNGS_CLEAR = re.compile(
    r"\blungs? (?:fields? )?(?:(?:are|is|appear|appears|remain|remains|now|otherwise|again"
    r"|grossly|essentially|both|bilaterally|well expanded and|well aerated and|expanded and"
    r"|hyperinflated but|hyperexpanded but|low in volume but) )*clear\b|\bclear lungs?\b"
)
CLEAR_LUNGS_NEGATE = tuple(
    INDEX[name] for name in ("lung_opacity", "consolidation", "edema", "pneumonia")
)

# A sentence that mentions no observation still leaves `no_finding` positive when it states
# something normal or negative ...
NORMAL_STATEMENT = re.compile(
    r"\b(?:no(?! (?:(?:significant|appreciable|interval|substantial) )*change)|not|without"
    r"|negative|normal(?:ly)?|unremarkable|clear|intact|midline)\b"
)
# ... or only describes the examination; any other words state something the rule tables do not
# recognise ("tortuous aorta", "hilar fullness", "cardiomgaly"), which may be abnormal, so
# `no_finding` is left blank rather than called normal.
NEUTRAL_WORDS = frozenset(
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
SENTENCE_END = re.compile(r"\.(?!\d)|(?<!\d)\.|[!?\n]")
CLAUSE_BOUNDARY = re.compile(
    r"[;:]|\b(?:but|however|although|though|whereas|while|which|except|aside from|apart from"
    r"|other than)\b"
    r"|(?<!consistent )(?<!compatible )(?<!associated )(?<!keeping )\bwith\b"
    r"|(?=\bthere (?:is|are|was|were|has|have)\b)"
)
