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

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from camegrad_jax.rrg import labeler_rules as rules
from camegrad_jax.rrg.labeler_text import normalize
from camegrad_jax.rrg.observations import BLANK, NEGATIVE, NUM_OBSERVATIONS, POSITIVE, UNCERTAIN


@dataclass(frozen=True)
class _Mention:
    target: int  # observation index, or rules.OTHER
    kind: str  # rules.FINDING, rules.UNCERTAIN_FINDING, rules.ATTRIBUTE or rules.NORMAL_WHOLE
    start: int
    end: int
    text: str


def _find_mentions(clause: str) -> list[_Mention]:
    unmentions = {
        target: [m.span() for m in pattern.finditer(clause)]
        for target, pattern in rules.UNMENTION_PATTERNS.items()
    }
    mentions = []
    for target, kind, pattern in rules.MENTION_PATTERNS:
        for match in pattern.finditer(clause):
            start, end = match.span()
            if any(s < end and start < e for s, e in unmentions.get(target, ())):
                continue
            mentions.append(_Mention(target, kind, start, end, match.group()))
    # "enlarged heart" is one finding, not also an attribute mention of "heart".
    findings = [m for m in mentions if m.kind not in rules.QUALIFIED]
    mentions = [
        m
        for m in mentions
        if m.kind not in rules.QUALIFIED
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
        tokens = (
            rules.GAP_TOKEN.findall(clause[reach : mention.start]) if mention.start > reach else []
        )
        words = [t for t in tokens if t not in ",/"]
        others = [w for w in words if w not in rules.CONJUNCTIONS]
        linked = len(others) <= 4 and not any(w in rules.CHAIN_BREAKERS for w in others)
        conjunction = len(others) < len(words) or "/" in tokens
        alternative = "/" in tokens or any(w in rules.ALTERNATIVES for w in words)
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
    return mention.start >= cue_end and "," not in between and not rules.VERB.search(between)


def _backward_reach(clause: str, cue_start: int, mention: _Mention) -> bool:
    between = clause[mention.end : cue_start]
    return (
        mention.end <= cue_start
        and "," not in between
        and not rules.VERB.search(between)
        and not rules.SUBJECT_VERB.search(between)
        # "The tube tip is not seen below the diaphragm" is about where the tip is.
        and not rules.TIP.search(between)
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
                    (direction & rules.FORWARD and _forward_reach(clause, cue.end(), mention))
                    or (
                        direction & rules.BACKWARD and _backward_reach(clause, cue.start(), mention)
                    )
                    or (direction & rules.TRAILING and mention.end <= cue.start())
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
    unknown = [i for i, t in enumerate(tokens) if t not in rules.LINKING_WORDS]
    if not unknown:
        return True
    first, last = unknown[0], unknown[-1]
    return (
        after
        and last - first < 3
        and first > 0
        and tokens[first - 1] == "and"
        and any(t in rules.COPULAS for t in tokens[last + 1 :])
    )


def _attribute_label(
    clause: str, mention: _Mention, attributes: list[_Mention], hedged: bool
) -> int | None:
    """Label of an attribute mention from its nearest qualifier; None when it has none."""
    best: tuple[int, int] | None = None  # (distance in words, label)
    for qualifier in rules.QUALIFIER.finditer(clause):
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
        tokens = rules.GAP_TOKEN.findall("".join(between))
        if not _links_to_qualifier(tokens, after=lo == mention.end):
            continue
        label = next(rules.QUALIFIER_LABELS[k] for k, v in qualifier.groupdict().items() if v)
        if label == POSITIVE and (hedged or any(t in rules.HEDGES for t in tokens)):
            label = UNCERTAIN
        if best is None or len(tokens) < best[0]:
            best = (len(tokens), label)
    return None if best is None else best[1]


def _classify_clause(clause: str) -> list[tuple[_Mention, int]]:
    mentions = _find_mentions(clause)
    if not mentions:
        return []
    group_of, alternatives = _chains(clause, mentions)
    pre_uncertain = _in_scope(clause, mentions, rules.PRE_NEGATION_UNCERTAINTY, group_of)
    negated = _in_scope(clause, mentions, rules.NEGATION, group_of)
    post_uncertain = _in_scope(clause, mentions, rules.POST_NEGATION_UNCERTAINTY, group_of)
    attributes = [m for m in mentions if m.kind in rules.QUALIFIED]

    labelled = []
    for i, mention in enumerate(mentions):
        if mention.kind in rules.QUALIFIED:
            # The qualifier carries the negation ("not enlarged"); a forward "no" earlier in
            # the clause belongs to another predicate ("no effusion and the heart is enlarged").
            hedged = i in pre_uncertain or i in post_uncertain
            label = _attribute_label(clause, mention, attributes, hedged)
            if label is None or (mention.kind == rules.NORMAL_WHOLE and label != NEGATIVE):
                continue
        elif i in pre_uncertain:
            label = UNCERTAIN
        elif i in negated:
            label = NEGATIVE
        elif i in post_uncertain or mention.kind == rules.UNCERTAIN_FINDING or alternatives[i]:
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
    if rules.NORMAL_STATEMENT.search(sentence) or _LIMITATION.search(sentence):
        return False
    return any(w not in rules.NEUTRAL_WORDS for w in re.findall(r"[a-z]+", sentence))


def _label_report(report: str, lungs_clear_negates: bool) -> np.ndarray:
    labels = np.full(NUM_OBSERVATIONS, BLANK, dtype=np.int64)
    text = normalize(report)
    if not re.search(r"[a-z]", text):
        return labels

    found: dict[int, set[int]] = {}
    unrecognised = False
    for sentence in rules.SENTENCE_END.split(text):
        sentence = " ".join(sentence.split())
        if lungs_clear_negates and rules.LUNGS_CLEAR.search(sentence):
            for target in rules.CLEAR_LUNGS_NEGATE:
                found.setdefault(target, set()).add(NEGATIVE)
        recognised = False
        for clause in rules.CLAUSE_BOUNDARY.split(sentence):
            clause = clause.strip(" ,")
            for mention, label in _classify_clause(clause):
                recognised = True
                found.setdefault(mention.target, set()).add(label)
                if label != NEGATIVE and rules.HEART_FAILURE.fullmatch(mention.text):
                    found.setdefault(rules.INDEX["cardiomegaly"], set()).add(UNCERTAIN)
        unrecognised = unrecognised or (not recognised and _unrecognised(sentence))

    # CheXpert's aggregation: positive > uncertain > negative.
    for target, seen in found.items():
        if target == rules.OTHER:
            continue
        for label in (POSITIVE, UNCERTAIN, NEGATIVE):
            if label in seen:
                labels[target] = label
                break
    abnormal = {t for t, seen in found.items() if seen & {POSITIVE, UNCERTAIN}}
    if not abnormal - {rules.SUPPORT_DEVICES} and not unrecognised:
        labels[rules.NO_FINDING] = POSITIVE
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
