"""R2Gen-style report cleaning and word-level tokenizer.

The cleaning rules reproduce R2Gen's ``clean_report_iu_xray`` and ``clean_report_mimic_cxr``
(``modules/tokenizers.py`` of github.com/cuhksz-nlp/R2Gen) character for character, quirks
included, because NLG scores on IU X-Ray and MIMIC-CXR are only comparable to published numbers
when references are cleaned the same way:

* literal ``str.replace`` passes, each applied a fixed number of times (so ``'....'`` becomes
  ``'..'`` under the IU rule, not ``'.'``); ``'1. '`` is deleted wherever it occurs;
* sentences are split on ``'. '``; empty sentences are kept (R2Gen's filter compares a string
  with ``[]`` and so never removes anything);
* in each sentence ``"``, ``/``, ``\\`` and ``'`` are deleted, then the regular expression class
  ``[.,?;*!%^&_+():-\\[\\]{}]`` is removed. Inside that class ``:-\\[`` is a *range* from ``:``
  to ``[``, so ``: ; < = > ? @ [`` (and upper-case letters, already lowered) are removed while
  the hyphen itself is kept: ``x-ray`` stays ``x-ray``;
* sentences are re-joined with ``' . '`` and the report ends with ``' .'``.

The vocabulary is built from training reports only, keeping words seen at least ``threshold``
times (R2Gen's ``>=``), sorted, after four special tokens with fixed ids.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")

# R2Gen's frequency thresholds (its `--threshold` defaults in the IU X-Ray / MIMIC-CXR scripts).
DEFAULT_THRESHOLDS: dict[str, int] = {"iu_xray": 3, "mimic_cxr": 10}

_FORMAT = "camegrad_jax.rrg.tokenizer/1"
_SENTENCE_PUNCTUATION = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
# (old, new, times): R2Gen chains `str.replace`; a pair listed n times is applied n times.
_NUMBERING = [("1. ", "", 1)] + [
    (f"{sep}{n}. ", ". ", 1) for sep in (". ", " ") for n in range(2, 6)
]
_IU_REPLACEMENTS = [("..", ".", 3), *_NUMBERING]
_MIMIC_REPLACEMENTS = [
    ("\n", " ", 1),
    ("__", "_", 7),
    ("  ", " ", 6),
    ("..", ".", 8),
    *_NUMBERING,
]


def _clean_sentence(sentence: str) -> str:
    for char in ('"', "/", "\\", "'"):
        sentence = sentence.replace(char, "")
    return _SENTENCE_PUNCTUATION.sub("", sentence.strip().lower())


def _clean(report: str, replacements: Sequence[tuple[str, str, int]]) -> str:
    for old, new, times in replacements:
        for _ in range(times):
            report = report.replace(old, new)
    sentences = report.strip().lower().split(". ")
    return " . ".join(_clean_sentence(s) for s in sentences) + " ."


def clean_report_iu_xray(report: str) -> str:
    """Clean a report with R2Gen's IU X-Ray rule (see the module docstring)."""
    return _clean(report, _IU_REPLACEMENTS)


def clean_report_mimic_cxr(report: str) -> str:
    """Clean a report with R2Gen's MIMIC-CXR rule: the IU rule plus newline, ``_`` and
    double-space collapsing, and more ``'..'`` passes."""
    return _clean(report, _MIMIC_REPLACEMENTS)


CLEANERS: dict[str, Callable[[str], str]] = {
    "iu_xray": clean_report_iu_xray,
    "mimic_cxr": clean_report_mimic_cxr,
}


def clean_report(report: str, dataset_name: str = "iu_xray") -> str:
    """Clean ``report`` with the rule R2Gen uses for ``dataset_name``."""
    return CLEANERS[_check_dataset_name(dataset_name)](report)


def _check_dataset_name(dataset_name: str) -> str:
    if dataset_name not in CLEANERS:
        raise ValueError(
            f"`dataset_name` should be one of {sorted(CLEANERS)}. Found `{dataset_name!r}`."
        )
    return dataset_name


class Tokenizer:
    """Word-level tokenizer over R2Gen-cleaned reports.

    Ids: ``PAD_ID=0``, ``BOS_ID=1``, ``EOS_ID=2``, ``UNK_ID=3``, then the vocabulary words in
    sorted order. Build one with :meth:`from_reports` on *training* reports only.

    Args:
      words: the vocabulary words (no special tokens), in id order.
      dataset_name: ``"iu_xray"`` or ``"mimic_cxr"``; selects the cleaning rule.
      threshold: the frequency threshold the vocabulary was built with (kept for the record).
    """

    def __init__(
        self, words: Sequence[str], *, dataset_name: str = "iu_xray", threshold: int = 1
    ) -> None:
        self.dataset_name = _check_dataset_name(dataset_name)
        self.threshold = threshold
        self.id_to_token: tuple[str, ...] = SPECIAL_TOKENS + tuple(words)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.id_to_token)}
        if len(self.token_to_id) != len(self.id_to_token):
            raise ValueError("Tokenizer words must be unique and must not be special tokens.")

    @classmethod
    def from_reports(
        cls,
        reports: Iterable[str],
        *,
        dataset_name: str = "iu_xray",
        threshold: int | None = None,
    ) -> Tokenizer:
        """Build the vocabulary from (training) reports.

        Args:
          reports: raw report strings; they are cleaned before counting.
          dataset_name: selects the cleaning rule and the default threshold.
          threshold: keep words seen at least this many times; defaults to R2Gen's value
            for ``dataset_name`` (3 for IU X-Ray, 10 for MIMIC-CXR).
        """
        _check_dataset_name(dataset_name)
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[dataset_name]
        if threshold < 1:
            raise ValueError(f"`threshold` should be a positive int. Found `{threshold}`.")
        clean = CLEANERS[dataset_name]
        counts = Counter(word for report in reports for word in clean(report).split())
        words = sorted(w for w, c in counts.items() if c >= threshold and w not in SPECIAL_TOKENS)
        return cls(words, dataset_name=dataset_name, threshold=threshold)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self.id_to_token)

    def clean(self, report: str) -> str:
        """The R2Gen-cleaned form of ``report`` for this tokenizer's data set."""
        return CLEANERS[self.dataset_name](report)

    def encode(self, report: str, max_len: int) -> list[int]:
        """Token ids ``[BOS, w1, ..., wn, EOS]`` cut to the first ``max_len`` ids.

        As in R2Gen, the cut comes after EOS is appended, so a report longer than
        ``max_len - 2`` words loses its EOS. Unknown words map to ``UNK_ID``.
        """
        if max_len < 1:
            raise ValueError(f"`max_len` should be a positive int. Found `{max_len}`.")
        words = self.clean(report).split()
        ids = [BOS_ID, *(self.token_to_id.get(w, UNK_ID) for w in words), EOS_ID]
        return ids[:max_len]

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by single spaces; PAD and BOS are skipped, decoding stops at EOS."""
        words = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == EOS_ID:
                break
            if token_id in (PAD_ID, BOS_ID):
                continue
            words.append(self.id_to_token[token_id])
        return " ".join(words)

    def encode_batch(self, reports: Sequence[str], max_len: int) -> np.ndarray:
        """``int32 (len(reports), max_len)`` ids, right-padded with ``PAD_ID``."""
        out = np.full((len(reports), max_len), PAD_ID, dtype=np.int32)
        for row, report in enumerate(reports):
            ids = self.encode(report, max_len)
            out[row, : len(ids)] = ids
        return out

    def decode_batch(self, ids: Iterable[Iterable[int]]) -> list[str]:
        """:meth:`decode` applied to each row."""
        return [self.decode(row) for row in ids]

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (stored next to a checkpoint)."""
        payload = {
            "format": _FORMAT,
            "dataset_name": self.dataset_name,
            "threshold": self.threshold,
            "id_to_token": list(self.id_to_token),
        }
        Path(path).write_text(json.dumps(payload, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a tokenizer file (format {payload.get('format')!r}).")
        tokens = payload["id_to_token"]
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"{path}: special tokens are not at their fixed ids.")
        return cls(
            tokens[len(SPECIAL_TOKENS) :],
            dataset_name=payload["dataset_name"],
            threshold=payload["threshold"],
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return (self.dataset_name, self.threshold, self.id_to_token) == (
            other.dataset_name,
            other.threshold,
            other.id_to_token,
        )

    def __repr__(self) -> str:
        return (
            f"Tokenizer(dataset_name={self.dataset_name!r}, threshold={self.threshold}, "
            f"vocab_size={self.vocab_size})"
        )
