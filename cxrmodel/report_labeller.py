"""Radiology report text -> positive / negative / uncertain for each of the 14 ChestX-ray14 findings.

A rule-based labeller in the NegEx / CheXpert-labeller tradition: the rules (synonyms per finding,
negation and uncertainty triggers, scope terminators, sections) live in `data/report_rules.toml` so
that they can be read and amended as data; this module only applies them. No model, no download.

What must stay true:
- Pure text in, labels out: nothing is logged or written, because report text identifies patients.
- A finding the report does not name is absent from the result (not negative): "no acute
  cardiopulmonary abnormality" says nothing about any single finding.
- Trigger scope never crosses a sentence, a ";" or ":", a terminator word ("but", "however"), or a
  comma/"and" that starts a clause with its own verb.
- Only the sections that describe the image (FINDINGS, IMPRESSION, ...) are read; INDICATION,
  COMPARISON, HISTORY and the like are not, since "rule out pneumonia" there is a question.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from cxrmodel.labels import LABELS

Status = Literal["positive", "negative", "uncertain"]
_RANK: dict[str, int] = {"negative": 0, "uncertain": 1, "positive": 2}


@dataclass(frozen=True)
class Finding:
    """One finding's label and the clause that decided it (for a person inspecting their own report)."""
    label: str
    status: Status
    evidence: str
    section: str


@dataclass(frozen=True)
class _FindingRules:
    mentions: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]
    absent: tuple[re.Pattern[str], ...]
    uncertain: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Rules:
    """Compiled rules; build with `load_rules`."""
    count_sections: frozenset[str]
    skip_sections: frozenset[str]
    heading: re.Pattern[str]
    triggers: tuple[tuple[re.Pattern[str], frozenset[str]], ...]  # (pattern, kinds), longest first
    pseudo: tuple[re.Pattern[str], ...]
    terminators: re.Pattern[str]
    clause_verbs: frozenset[str]
    list_continuers: tuple[str, ...]
    findings: dict[str, _FindingRules]


class ReportRulesError(ValueError):
    """The rules file is malformed; the message names the file and the problem."""


def _phrase(p: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in p.lower().split()]
    return re.compile(r"(?<![\w'])" + r"\s+".join(words) + r"(?![\w'])")


def _regex(p: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(r"(?<![\w-])(?:" + p + r")(?![\w-])")
    except re.error as exc:
        raise ReportRulesError(f"report rules: bad pattern in {where}: {p!r} ({exc})") from None


def load_rules(path: Path | None = None) -> Rules:
    """Compile a rules file (the shipped `data/report_rules.toml` by default)."""
    try:
        if path is None:
            text = resources.files("cxrmodel").joinpath("data/report_rules.toml").read_text("utf-8")
            where = "report_rules.toml"
        else:
            text, where = path.read_text("utf-8"), str(path)
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReportRulesError(f"report rules: cannot read: {exc}") from None
    try:
        sec, trig, fnd = raw["sections"], raw["triggers"], raw["findings"]
        unknown = set(fnd) - set(LABELS)
        if unknown:
            raise ReportRulesError(f"report rules {where}: not ChestX-ray14 findings: {sorted(unknown)}")
        kinds = [("negation_pre", "neg_pre"), ("negation_post", "neg_post"),
                 ("uncertain_pre", "unc_pre"), ("uncertain_post", "unc_post")]
        # A phrase listed both before and after ("cannot be excluded", "versus") acts both ways.
        by_phrase: dict[str, set[str]] = {}
        for key, kind in kinds:
            for p in trig[key]:
                by_phrase.setdefault(" ".join(p.lower().split()), set()).add(kind)
        # Longest first, so "cannot exclude" wins over "not" and "no evidence of" over "no".
        phrases = sorted(by_phrase.items(), key=lambda pk: -len(pk[0]))
        names = sorted((*sec["count"], *sec["skip"]), key=len, reverse=True)
        heading = re.compile(
            r"(?:^|(?<=[\n.;]))[ \t]*(?P<name>" + "|".join(re.escape(n) for n in names).replace(r"\ ", r"\s+")
            + r")[ \t]*:", re.IGNORECASE | re.MULTILINE)
        findings = {
            label: _FindingRules(
                mentions=tuple(_regex(p, f"{label}.mentions") for p in body["mentions"]),
                exclude=tuple(_regex(p, f"{label}.exclude") for p in body.get("exclude", ())),
                absent=tuple(_regex(p, f"{label}.absent") for p in body.get("absent", ())),
                uncertain=tuple(_regex(p, f"{label}.uncertain") for p in body.get("uncertain", ())))
            for label, body in fnd.items()}
        return Rules(
            count_sections=frozenset(" ".join(s.lower().split()) for s in sec["count"]),
            skip_sections=frozenset(" ".join(s.lower().split()) for s in sec["skip"]),
            heading=heading,
            triggers=tuple((_phrase(p), frozenset(k)) for p, k in phrases),
            pseudo=tuple(_phrase(p) for p in sorted(trig["pseudo"], key=len, reverse=True)),
            terminators=re.compile("|".join(_phrase(t).pattern for t in
                                            sorted(trig["terminators"], key=len, reverse=True))),
            clause_verbs=frozenset(w.lower() for w in trig["clause_verbs"]),
            list_continuers=tuple(w.lower() for w in trig["list_continuers"]),
            findings=findings)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ReportRulesError(f"report rules {where}: missing or malformed entry {exc}") from None


@lru_cache(maxsize=1)
def default_rules() -> Rules:
    return load_rules()


# ---------------------------------------------------------------------------------------------
# Text -> sections -> sentences -> clauses

def sections(text: str, rules: Rules) -> list[tuple[str, str]]:
    """(section name, text) for the parts of a report that are labelled, in order.

    Text before the first heading is kept (a report without headings is all findings)."""
    out: list[tuple[str, str]] = []
    marks = list(rules.heading.finditer(text))
    lead = text[: marks[0].start()] if marks else text
    if lead.strip():
        out.append(("report", lead))
    for i, m in enumerate(marks):
        name = " ".join(m.group("name").lower().split())
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        if name in rules.count_sections:
            out.append((name, text[m.end(): end]))
    return out


# A full stop ends a sentence unless it sits inside a number ("1.5 cm"); so do "?" "!" ";", blank
# lines and a numbered item ("1. Cardiomegaly 2. No effusion"). A colon does not: in "Pneumothorax:
# none" the statement runs across it.
_SENTENCE_END = re.compile(r"\.(?!\d)|(?<!\d)\.|[!?;]|\n\s*\n|(?:^|(?<=\s))\d{1,2}[.)](?=\s)")


# The clause rules compare every trigger with every mention, so their cost grows with the square
# of a sentence's length; a report comes from the network, so a "sentence" without any full stop
# could be the whole of a 256 KiB message (minutes of CPU). Real sentences are a few hundred
# characters: longer runs are cut at a space into pieces of at most this many characters.
MAX_SENTENCE = 1000


def sentences(text: str) -> list[str]:
    out = []
    for s in _SENTENCE_END.split(text):
        s = s.strip() if s else ""
        while len(s) > MAX_SENTENCE:
            cut = s.rfind(" ", 0, MAX_SENTENCE)
            cut = cut if cut > 0 else MAX_SENTENCE
            out.append(s[:cut].strip())
            s = s[cut:].strip()
        if s:
            out.append(s)
    return [s for s in out if s]


_WORD = re.compile(r"[a-z']+")


def clauses(sentence: str, rules: Rules) -> list[str]:
    """Split a sentence where trigger scope must end.

    Terminator words always split. A comma or "and" splits only when the next segment carries its
    own verb and does not continue a list ("no effusion, the heart is enlarged" splits; "no effusion,
    pneumothorax, or consolidation is seen" does not)."""
    out: list[str] = []
    for part in _split_keep(sentence, rules.terminators):
        pieces = re.split(r",|\band\b(?!/)", part)
        current = pieces[0]
        for piece in pieces[1:]:
            words = _WORD.findall(piece.lower())
            starts_list = bool(words) and words[0] in rules.list_continuers
            if words and not starts_list and any(w in rules.clause_verbs for w in words):
                out.append(current)
                current = piece
            else:
                current = current + "," + piece
        out.append(current)
    return [c.strip(" ,") for c in out if c.strip(" ,")]


def _split_keep(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Split at each match; the terminator word starts the next part (it belongs to the new clause)."""
    parts, last = [], 0
    for m in pattern.finditer(text.lower()):
        parts.append(text[last: m.start()])
        last = m.start()
    parts.append(text[last:])
    return parts


# ---------------------------------------------------------------------------------------------
# One clause -> the findings it names, each with a status

def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def _label_clause(clause: str, rules: Rules) -> dict[str, Status]:
    text = clause.lower()
    decided: dict[str, Status] = {}
    mentions: list[tuple[int, int, str]] = []
    for label, fr in rules.findings.items():
        for pat in fr.exclude:
            for m in pat.finditer(text):
                text = _blank(text, m.start(), m.end())
    for label, fr in rules.findings.items():
        for status, pats in (("uncertain", fr.uncertain), ("negative", fr.absent)):
            for pat in pats:
                for m in pat.finditer(text):
                    decided[label] = _stronger(decided.get(label), status)
                    text = _blank(text, m.start(), m.end())
    for pat in rules.pseudo:
        for m in pat.finditer(text):
            text = _blank(text, m.start(), m.end())
    triggers: list[tuple[int, int, frozenset[str]]] = []
    for pat, kinds in rules.triggers:
        for m in pat.finditer(text):
            if not any(s < m.end() and m.start() < e for s, e, _ in triggers):
                triggers.append((m.start(), m.end(), kinds))
    taken = [(s, e) for s, e, _ in triggers]
    for label, fr in rules.findings.items():
        for pat in fr.mentions:
            for m in pat.finditer(text):
                if any(s < m.end() and m.start() < e for s, e in taken):
                    continue
                taken.append((m.start(), m.end()))
                mentions.append((m.start(), m.end(), label))
    triggers.sort()
    for start, end, label in mentions:
        decided[label] = _stronger(decided.get(label), _mention_status(clause, start, end, triggers))
    return decided


def _mention_status(clause: str, start: int, end: int,
                    triggers: list[tuple[int, int, frozenset[str]]]) -> Status:
    after = [t for t in triggers if t[0] >= end and t[2] & {"neg_post", "unc_post"}]
    if after:
        return "negative" if "neg_post" in after[0][2] else "uncertain"
    before = [t for t in triggers if t[1] <= start and t[2] & {"neg_pre", "unc_pre"}]
    if not before:
        return "positive"
    nearest = before[-1]
    if "neg_pre" in nearest[2]:
        return "negative"
    # A negated hedge is a negation: "no focal consolidation to suggest pneumonia".
    for t in before[:-1]:
        if "neg_pre" in t[2] and "," not in clause[t[1]: nearest[0]]:
            return "negative"
    return "uncertain"


def _stronger(old: Status | None, new: Status) -> Status:
    return new if old is None or _RANK[new] > _RANK[old] else old


# ---------------------------------------------------------------------------------------------

def label_report(text: str, rules: Rules | None = None) -> dict[str, Finding]:
    """Label a report: finding name -> Finding, only for findings the report names.

    Across clauses and sections positive beats uncertain beats negative (a finding mentioned as
    present anywhere is present); the evidence is the first clause that gave the winning status."""
    rules = rules or default_rules()
    out: dict[str, Finding] = {}
    for section, body in sections(text, rules):
        for sentence in sentences(body):
            for clause in clauses(sentence, rules):
                for label, status in _label_clause(clause, rules).items():
                    old = out.get(label)
                    if old is None or _RANK[status] > _RANK[old.status]:
                        out[label] = Finding(label, status, " ".join(clause.split()), section)
    return {label: out[label] for label in LABELS if label in out}
