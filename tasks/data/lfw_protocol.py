"""Parsers for the official LFW protocol files (pairs*.txt, people*.txt)."""
from __future__ import annotations

from dataclasses import dataclass


class ProtocolFileError(ValueError):
    pass


@dataclass(frozen=True)
class OfficialPair:
    left_person: str
    left_number: int
    right_person: str
    right_number: int
    fold: int | None  # 1..10 for View 2, None for View 1

    @property
    def same(self) -> bool:
        return self.left_person == self.right_person


def lfw_image_id(person: str, number: int) -> str:
    """``("Aaron_Peirsol", 2)`` -> ``Aaron_Peirsol/Aaron_Peirsol_0002.jpg`` (numbers start at 1)."""
    return f"{person}/{person}_{number:04d}.jpg"


def parse_pairs_file(text: str, name: str = "pairs file") -> list[OfficialPair]:
    """Parse ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (header N) or ``pairs.txt`` (header folds<TAB>N).

    Each fold holds N matched lines ``name i j`` then N mismatched lines ``name1 i name2 j``.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ProtocolFileError(f"{name} is empty")
    header = lines[0].split()
    try:
        folds, per_kind = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    except ValueError:
        raise ProtocolFileError(f"{name}: bad header line {lines[0]!r}") from None
    body = lines[1:]
    if len(body) != folds * 2 * per_kind:
        raise ProtocolFileError(f"{name}: header promises {folds * 2 * per_kind} pairs, found {len(body)} lines")
    pairs = []
    for i, line in enumerate(body):
        fold = i // (2 * per_kind) + 1 if len(header) > 1 else None
        matched = (i % (2 * per_kind)) < per_kind
        f = line.split()
        try:
            if matched and len(f) == 3:
                pairs.append(OfficialPair(f[0], int(f[1]), f[0], int(f[2]), fold))
            elif not matched and len(f) == 4:
                pairs.append(OfficialPair(f[0], int(f[1]), f[2], int(f[3]), fold))
            else:
                raise ValueError
        except ValueError:
            kind = "matched (name i j)" if matched else "mismatched (name1 i name2 j)"
            raise ProtocolFileError(f"{name} line {i + 2}: expected a {kind} pair, got {line!r}") from None
    return pairs


def parse_people_file(text: str, name: str = "people file") -> dict[str, int]:
    """Parse ``peopleDevTrain.txt`` / ``peopleDevTest.txt``: header count, then ``name<TAB>images``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].strip().isdigit():
        raise ProtocolFileError(f"{name}: first line must be the number of people")
    people = {}
    for i, line in enumerate(lines[1:], start=2):
        f = line.split()
        if len(f) != 2 or not f[1].isdigit():
            raise ProtocolFileError(f"{name} line {i}: expected 'name<TAB>count', got {line!r}")
        people[f[0]] = int(f[1])
    if len(people) != int(lines[0]):
        raise ProtocolFileError(f"{name}: header says {lines[0].strip()} people, found {len(people)}")
    return people
