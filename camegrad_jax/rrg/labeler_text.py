"""Report text as the labeler reads it: radiologists' abbreviations spelled out, "?" read as
"query", misspelled observation terms corrected, contractions and list words normalised."""

from __future__ import annotations

import functools
import re

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


def normalize(report: str) -> str:
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
