"""The S_PG rubric: read the spatial terms a free-text answer states and score it against the truth.

Parsing works on whole words of a normalised answer (lower case, hyphens/underscores/apostrophes as
spaces, other punctuation kept as a clause break), so 'leftover' or 'bright' never read as a
direction and a phrase never spans a comma. 'right' used as an intensifier ('right above',
'right behind') is not read as the lateral term. Negation ('not above') is not interpreted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from rls3.captions import AXIS, OPPOSITE, TERMS

# 'right' directly followed by one of these words means 'directly' ('right above'), not lateral...
_INTENSIFIED = re.compile(
    r"\bright (?=(?:above|below|behind|in|under|underneath|beneath|over|on|next|beside|by|at|atop|"
    r"near|against|up|down|there|here|ahead|across|along|alongside)\b)")
# ...unless preceded by one of these ('to the right in front of', 'back right on the table').
_LATERAL_BEFORE = frozenset({"the", "upper", "lower", "far", "front", "back", "top", "bottom",
                             "rear"})

#: Regex (over normalised text) for each canonical term; every alternative is whole-word.
PATTERNS: Mapping[str, re.Pattern[str]] = MappingProxyType({
    "above": re.compile(
        r"\b(?:above|atop|on top|higher than|up above|over(?! (?:to|on|there|here|by)\b))\b"),
    "below": re.compile(r"\b(?:below|under|underneath|beneath|lower than|down below)\b"),
    "behind": re.compile(
        r"\b(?:behind|(?:in|at|to|toward|towards) (?:the )?back|back (?:left|right)|beyond|"
        r"(?:farther|further) (?:away )?from the (?:camera|viewer))\b"),
    "in front": re.compile(
        r"\b(?:front|infront|ahead of|(?:closer|nearer) to the (?:camera|viewer))\b"),
    "left": re.compile(r"\b(?:left|leftward|leftwards|lefthand)\b"),
    "right": re.compile(r"\b(?:right|rightward|rightwards|righthand)\b"),
})


def _normalise(answer: str) -> str:
    """Lower case; hyphens, underscores and apostrophes become spaces, other punctuation a
    ' , ' clause break; runs of whitespace become one space."""
    text = re.sub(r"[-_'\u2019\u2010-\u2014]", " ", answer.lower())
    text = re.sub(r"[^a-z0-9\s]+", " , ", text)
    return " ".join(text.split())


def _drop_intensifier(m: re.Match[str]) -> str:
    """Replace an intensifying 'right ' by a neutral word; keep it when a lateral cue precedes."""
    before = m.string[:m.start()].split()
    if before and before[-1] in _LATERAL_BEFORE:
        return m.group(0)
    return "directly "


def parse_terms(answer: str) -> set[str]:
    """The canonical terms (see `rls3.captions.TERMS`) that a free-text answer states."""
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}")
    text = _normalise(answer)
    text = _INTENSIFIED.sub(_drop_intensifier, text)
    return {t for t, pat in PATTERNS.items() if pat.search(text)}


def _truth(truth_terms: Iterable[str]) -> frozenset[str]:
    """Validated truth terms: 1-3 known terms, at most one per axis."""
    if isinstance(truth_terms, str):
        raise ValueError(f"truth_terms must be a collection of terms, "
                         f"not the string {truth_terms!r}")
    ts = tuple(truth_terms)
    for t in ts:
        if t not in AXIS:
            raise ValueError(f"unknown truth term {t!r}; allowed: {TERMS}")
    s = frozenset(ts)
    if not s or len({AXIS[t] for t in s}) != len(s):
        raise ValueError(f"truth_terms must be 1-3 terms with at most one per axis "
                         f"(vertical, depth, lateral), got {ts!r}")
    return s


def score(answer: str, truth_terms: Iterable[str]) -> int:
    """S_PG score 1-5: 5 all truth terms stated; 4 (n=3, c=2); 3 (n=2, c=1); 2 (n=3, c=1);
    1 none; then -1 if a stated term opposes a truth term, -1 if more terms are stated than the
    truth has; never below 1."""
    truth = _truth(truth_terms)
    stated = parse_terms(answer)
    n, c = len(truth), len(stated & truth)
    if c == n:
        base = 5
    elif c == 0:
        base = 1
    elif n == 3 and c == 2:
        base = 4
    elif n == 2 and c == 1:
        base = 3
    else:  # n == 3 and c == 1, the only remaining case
        base = 2
    if any(OPPOSITE[t] in stated for t in truth):
        base -= 1
    if len(stated) > n:
        base -= 1
    return max(1, base)
