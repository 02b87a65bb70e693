"""The labeler's spelling correction and its edit distance: common misspellings corrected, real
words left alone, no term turned into another, and the distance against its definition."""

from __future__ import annotations

import random
from functools import cache

import pytest

from camegrad_jax.rrg.labeler_text import SPELLING_VOCABULARY, correct_spelling, edit_distance

# Misspellings of the kinds typists make: a transposition, a missing, doubled or wrong letter.
MISSPELLINGS = {
    "pnuemothorax": "pneumothorax",
    "pneumothroax": "pneumothorax",
    "pneumothorx": "pneumothorax",
    "efusion": "effusion",
    "effusoin": "effusion",
    "effussion": "effusion",
    "cardiomgaly": "cardiomegaly",
    "cardiomegally": "cardiomegaly",
    "atelectesis": "atelectasis",
    "atelactasis": "atelectasis",
    "atelectais": "atelectasis",
    "consolidaton": "consolidation",
    "consolodation": "consolidation",
    "pneumonai": "pneumonia",
    "pnuemonia": "pneumonia",
    "edmea": "edema",
    "opactiy": "opacity",
    "opacites": "opacities",
    "infiltate": "infiltrate",
    "fracure": "fracture",
    "silhoutte": "silhouette",
    "plueral": "pleural",
    "medistinum": "mediastinum",
    "costophernic": "costophrenic",
    "endotrachael": "endotracheal",
}

# Real words close to a vocabulary word; a correction would change what the report says.
NOT_MISSPELLINGS = [
    "enema",  # edema
    "plural",  # pleural
    "infusion",  # effusion: another first letter
    "diffusion",
    "capacity",  # opacity
    "module",  # nodule
    "engorged",  # enlarged
    "interstitium",  # interstitial
    "fraction",
    "mediastinoscopy",
    "nodular",
    "enlarging",
    "catheterization",
]


@pytest.mark.parametrize(("typo", "word"), MISSPELLINGS.items())
def test_common_misspellings_are_corrected(typo, word):
    assert edit_distance(typo, word) <= 2
    assert correct_spelling(typo) == word


@pytest.mark.parametrize("word", NOT_MISSPELLINGS)
def test_real_words_are_not_corrected(word):
    assert correct_spelling(word) == word


def test_the_bound_cannot_turn_one_term_into_another():
    """Forms of different terms that share a first letter lie further apart than both bounds
    together, so no word is within the bound of two terms; and words of under five letters are
    never corrected (too many real words lie one edit apart there)."""
    forms = [(term, form) for term, group in SPELLING_VOCABULARY.items() for form in group]
    for term_a, a in forms:
        for term_b, b in forms:
            if term_a < term_b and a[0] == b[0]:
                assert edit_distance(a, b) > _bound(a) + _bound(b), (a, b)
    assert correct_spelling("edma") == "edma"  # four letters: left alone


def _bound(word: str) -> int:
    # The bound as the docs state it: none under 5 letters, 1 up to 9, 2 from 10.
    return 0 if len(word) < 5 else 1 if len(word) < 10 else 2


def _random_edit(word: str, rng: random.Random) -> str:
    """One typing slip after the first letter: delete, insert, substitute or transpose."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[:i] + rng.choice(letters) + word[i:]
    if kind == 2:
        return word[:i] + rng.choice(letters.replace(word[i], "")) + word[i + 1 :]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def test_random_single_slips_are_read_as_the_same_term():
    rng = random.Random(0)
    term_of = {form: term for term, group in SPELLING_VOCABULARY.items() for form in group}
    checked = 0
    for _ in range(3000):
        word = rng.choice(sorted(term_of))
        typo = _random_edit(word, rng)
        if typo == word or len(word) < 5:
            continue
        corrected = correct_spelling(typo)
        # Read as some form of the same term (a slip can land on a sibling form: "effusion" ->
        # "effusions"), or, where two forms tie, left alone; never another term.
        assert corrected == typo or term_of.get(corrected) == term_of[word], (word, typo)
        checked += corrected != typo
    assert checked > 2500


def _osa_reference(a: str, b: str) -> int:
    """Optimal string alignment distance by its recursive definition (independent of the
    labeler's row-by-row table)."""

    @cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        best = min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
        if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
            best = min(best, d(i - 2, j - 2) + 1)
        return best

    return d(len(a), len(b))


def test_edit_distance_matches_its_definition():
    rng = random.Random(1)
    for _ in range(500):
        a = "".join(rng.choice("abc") for _ in range(rng.randrange(7)))
        b = "".join(rng.choice("abc") for _ in range(rng.randrange(7)))
        assert edit_distance(a, b) == _osa_reference(a, b) == edit_distance(b, a), (a, b)
    assert edit_distance("ca", "abc") == 3  # OSA edits no substring twice
    assert edit_distance("effusion", "effusoin") == 1  # a transposition is one edit
