"""Pair generation for face verification, in three protocols, as tables with one schema.

Schema (one row per pair; the Parquet files hold exactly these columns):
  pair_id       int32   position within the file (stable for a seed)
  split         string  train | validation | test (``face_comparer``, ``identity_disjoint``);
                        dev_train | dev_test | view2 (``lfw_official``)
  fold          int16   1..10 for LFW View 2, null elsewhere
  left_image    string  image_id (index key), e.g. ``Aaron_Peirsol/Aaron_Peirsol_0001.jpg``
  right_image   string
  left_person   string
  right_person  string
  same          bool    both images show the same person

Sampling follows aleju/face-comparer: for a same-person pair pick a person with >= 2
remaining images first, then two distinct images of theirs; for a different-person pair
pick two distinct people, then one image each; exactly half of the pairs are same-person;
no pair appears twice in either order; a fixed seed gives identical rows.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import pandas as pd
from pydantic import Field

from settings import Params
from tasks.data.lfw_protocol import OfficialPair, lfw_image_id

PAIR_COLUMNS = ["pair_id", "split", "fold", "left_image", "right_image", "left_person", "right_person", "same"]
Protocol = Literal["face_comparer", "identity_disjoint", "lfw_official"]
PROTOCOLS: tuple[str, ...] = Protocol.__args__


class PairCapacityError(ValueError):
    """More pairs were asked for than the images allow."""


Pair = tuple[str, str, str, str, bool]  # left_image, right_image, left_person, right_person, same


def pair_capacity(images_by_person: Mapping[str, Sequence[str]]) -> tuple[int, int]:
    """(distinct unordered same-person pairs, distinct unordered different-person pairs)."""
    sizes = [len(v) for v in images_by_person.values()]
    total = sum(sizes)
    same = sum(k * (k - 1) // 2 for k in sizes)
    return same, total * (total - 1) // 2 - same


def draw_pairs(images_by_person: Mapping[str, Sequence[str]], n_pairs: int, rng: random.Random,
               what: str = "pairs") -> list[Pair]:
    """Draw ``n_pairs`` distinct pairs, half same-person, with face-comparer's stratified rules.

    The capacity is checked first, and a person (or image combination) is retired once all
    its pairs are used, so the loop always ends.
    """
    if n_pairs <= 0 or n_pairs % 2:
        raise ValueError(f"{what}: the number of pairs must be a positive even number, got {n_pairs}")
    half = n_pairs // 2
    same_cap, diff_cap = pair_capacity(images_by_person)
    n_people = len(images_by_person)
    if half > same_cap or half > diff_cap:
        raise PairCapacityError(
            f"{what}: asked for {n_pairs} pairs ({half} same + {half} different) but {n_people} people with "
            f"{sum(map(len, images_by_person.values()))} images allow at most {same_cap} same-person and "
            f"{diff_cap} different-person pairs"
        )
    people = sorted(images_by_person)
    images = {p: sorted(images_by_person[p]) for p in people}
    used: set[tuple[str, str]] = set()
    pairs: list[Pair] = []

    # Same person: stratified over people with >= 2 images.
    eligible = [p for p in people if len(images[p]) >= 2]
    left = {p: len(images[p]) * (len(images[p]) - 1) // 2 for p in eligible}
    while len(pairs) < half:
        i = rng.randrange(len(eligible))
        person = eligible[i]
        a, b = rng.sample(images[person], 2)
        key = (a, b) if a < b else (b, a)
        if key in used:
            continue
        used.add(key)
        pairs.append((a, b, person, person, True))
        left[person] -= 1
        if not left[person]:  # all its pairs are used: retire it
            eligible[i] = eligible[-1]
            eligible.pop()

    # Different people: two distinct people first, then one image of each.
    total = sum(len(v) for v in images.values())
    candidates = list(people)
    left = {p: len(images[p]) * (total - len(images[p])) for p in people}
    while len(pairs) < n_pairs:
        i = rng.randrange(len(candidates))
        j = rng.randrange(len(candidates))
        if i == j:
            continue
        p1, p2 = candidates[i], candidates[j]
        a, b = rng.choice(images[p1]), rng.choice(images[p2])
        key = (a, b) if a < b else (b, a)
        if key in used:
            continue
        used.add(key)
        pairs.append((a, b, p1, p2, False))
        for p in (p1, p2):
            left[p] -= 1
        for k in sorted((i, j), reverse=True):
            if not left[candidates[k]]:
                candidates[k] = candidates[-1]
                candidates.pop()
    rng.shuffle(pairs)
    return pairs


def group_by_person(index: pd.DataFrame, exclude_images: Iterable[str] = (), people: Iterable[str] | None = None
                    ) -> dict[str, list[str]]:
    """person -> usable image ids, minus ``exclude_images``, optionally only ``people``."""
    usable = index[index["error"].isna()]
    if people is not None:
        usable = usable[usable["person"].isin(set(people))]
    excluded = set(exclude_images)
    if excluded:
        usable = usable[~usable["image_id"].isin(excluded)]
    return {p: list(g) for p, g in usable.groupby("person", sort=True)["image_id"]}


def pairs_frame(rows_by_split: Sequence[tuple[str, Sequence[Pair], Sequence[int | None] | None]]) -> pd.DataFrame:
    records = []
    for split, pairs, folds in rows_by_split:
        for k, (a, b, pa, pb, same) in enumerate(pairs):
            records.append((split, folds[k] if folds else None, a, b, pa, pb, same))
    df = pd.DataFrame(records, columns=PAIR_COLUMNS[1:])
    df.insert(0, "pair_id", pd.RangeIndex(len(df)).astype("int32"))
    return df.astype({"split": "string", "fold": "Int16", "left_image": "string", "right_image": "string",
                      "left_person": "string", "right_person": "string", "same": "bool"})


def _images_of(pairs: Iterable[Pair]) -> set[str]:
    return {img for p in pairs for img in p[:2]}


class FaceComparerConfig(Params):
    """aleju/face-comparer's image-disjoint splits; pair counts are even (half same-person)."""
    validation_pairs: int = Field(256, ge=2, multiple_of=2)
    train_pairs: int = Field(40_000, ge=2, multiple_of=2)
    test_pairs: int = Field(0, ge=0, multiple_of=2, description="0 reproduces face-comparer's two splits exactly")
    seed: int = 42


def face_comparer_pairs(index: pd.DataFrame, cfg: FaceComparerConfig = FaceComparerConfig()) -> pd.DataFrame:
    """Validation first, then (optionally) test from images not in validation, then training from
    images in neither: no image is in two splits."""
    rng = random.Random(cfg.seed)
    val = draw_pairs(group_by_person(index), cfg.validation_pairs, rng, "face_comparer validation")
    used = _images_of(val)
    splits: list[tuple[str, Sequence[Pair], None]] = [("validation", val, None)]
    if cfg.test_pairs:
        test = draw_pairs(group_by_person(index, used), cfg.test_pairs, rng, "face_comparer test")
        used |= _images_of(test)
        splits.append(("test", test, None))
    train = draw_pairs(group_by_person(index, used), cfg.train_pairs, rng, "face_comparer train")
    splits.insert(0, ("train", train, None))
    return pairs_frame(splits)


class IdentityDisjointConfig(Params):
    """People are split first (LFW View 1's people files when the dataset has them)."""
    train_pairs: int = Field(40_000, ge=2, multiple_of=2)
    validation_pairs: int = Field(1_000, ge=0, multiple_of=2)
    test_pairs: int = Field(2_000, ge=0, multiple_of=2)
    validation_share: float = Field(0.1, gt=0, lt=1, description="of the training people, held out for validation")
    test_share: float = Field(0.3, gt=0, lt=1, description="of all people; only when no people split is given")
    split_by: Literal["auto", "name_hash", "shuffle"] = Field(
        "auto", description="without a given people split: name_hash puts each person in a split by a seeded hash "
                            "of their name alone, so new people never move anyone; shuffle: a seeded shuffle of "
                            "everyone (exact shares, but people move when people are added); auto: name_hash for a "
                            "folder dataset (it grows), shuffle for an archive")
    up_to_capacity: bool = Field(True, description="ask at most for the pairs a split's people allow (a small or "
                                                   "growing dataset); off: more than they allow is an error")
    seed: int = 42


def hash_share(name: str, seed: int, salt: str) -> float:
    """A person's place in [0, 1): a seeded hash of the name alone, so it never depends on who else
    is in the data."""
    import hashlib

    digest = hashlib.sha256(f"{seed}\x00{salt}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_people(people: Sequence[str], cfg: IdentityDisjointConfig,
                 given: tuple[Iterable[str], Iterable[str]] | None = None, auto: str = "shuffle"
                 ) -> dict[str, list[str]]:
    """train / validation / test people: ``given`` (train, test) lists, a name-hash split or a seeded
    shuffle (``cfg.split_by``; ``auto`` means ``auto``), then a share of the training people for
    validation (by the same rule)."""
    split_by = auto if cfg.split_by == "auto" else cfg.split_by
    rng = random.Random(cfg.seed)
    known = set(people)
    if given is None and split_by == "name_hash":
        test = sorted(p for p in known if hash_share(p, cfg.seed, "test") < cfg.test_share)
        train_people = sorted(known - set(test))
        validation = sorted(p for p in train_people if hash_share(p, cfg.seed, "validation") < cfg.validation_share)
        return {"train": sorted(set(train_people) - set(validation)), "validation": validation, "test": test}
    if given is not None:
        train, test = sorted(set(given[0])), sorted(set(given[1]))
        missing = sorted((set(train) | set(test)) - known)
        if missing:
            raise ValueError(f"the people split names {len(missing)} people absent from the index, e.g. {missing[:3]}")
        if set(train) & set(test):
            raise ValueError("the people split puts the same person in train and test")
    else:
        shuffled = sorted(known)
        rng.shuffle(shuffled)
        n_test = round(len(shuffled) * cfg.test_share)
        test, train = sorted(shuffled[:n_test]), sorted(shuffled[n_test:])
    shuffled = list(train)
    rng.shuffle(shuffled)
    n_val = round(len(shuffled) * cfg.validation_share)
    return {"train": sorted(shuffled[n_val:]), "validation": sorted(shuffled[:n_val]), "test": test}


def identity_disjoint_pairs(index: pd.DataFrame, cfg: IdentityDisjointConfig = IdentityDisjointConfig(),
                            people_split: tuple[Iterable[str], Iterable[str]] | None = None,
                            auto_split: str = "shuffle") -> pd.DataFrame:
    """People are split first, so no person appears in two splits; pairs are drawn inside each split.
    ``auto_split``: what ``split_by: auto`` means for this dataset (name_hash for a folder dataset)."""
    groups = split_people(sorted(index.loc[index["error"].isna(), "person"].unique()), cfg, people_split, auto_split)
    rng = random.Random(cfg.seed + 1)
    counts = {"train": cfg.train_pairs, "validation": cfg.validation_pairs, "test": cfg.test_pairs}
    splits = []
    for split in ("train", "validation", "test"):
        if counts[split]:
            images = group_by_person(index, people=groups[split])
            n = counts[split]
            if cfg.up_to_capacity:
                n = min(n, 2 * min(pair_capacity(images)))
                if n < 2:
                    sizes = ", ".join(f"{s} {len(groups[s])}" for s in ("train", "validation", "test"))
                    raise PairCapacityError(
                        f"identity_disjoint {split}: its {len(images)} people with photos allow no pair of each kind "
                        f"(people per split: {sizes}); add people or photos, or change validation_share / "
                        f"test_share (or the seed)")
                n -= n % 2
            splits.append((split, draw_pairs(images, n, rng, f"identity_disjoint {split}"), None))
    return pairs_frame(splits)


def official_pairs(index: pd.DataFrame, files: Mapping[str, Sequence[OfficialPair]]) -> pd.DataFrame:
    """Import LFW's own pair lists unchanged (split name -> parsed pairs)."""
    known = set(index["image_id"])
    splits = []
    for split, parsed in files.items():
        pairs, folds, missing = [], [], []
        for p in parsed:
            a, b = lfw_image_id(p.left_person, p.left_number), lfw_image_id(p.right_person, p.right_number)
            missing += [x for x in (a, b) if x not in known]
            pairs.append((a, b, p.left_person, p.right_person, p.same))
            folds.append(p.fold)
        if missing:
            raise ValueError(f"{split}: {len(missing)} images named by the protocol are not in the index, "
                             f"e.g. {missing[:3]}")
        splits.append((split, pairs, folds))
    return pairs_frame(splits)


def split_fingerprint(pairs: pd.DataFrame, split: str) -> str:
    """sha256 of one split's pairs, independent of row order and of the other splits: what a model
    records of the pairs it trained on (train) and was chosen on (validation)."""
    import hashlib

    rows = pairs.loc[pairs["split"] == split, ["left_image", "right_image", "same"]]
    text = "\n".join(sorted(f"{a}\t{b}\t{int(s)}" for a, b, s in rows.itertuples(index=False)))
    return hashlib.sha256(text.encode()).hexdigest()


def people_in(pairs: pd.DataFrame) -> set[str]:
    """The people these pairs show, on either side."""
    return set(pairs["left_person"]).union(pairs["right_person"])


def images_in(pairs: pd.DataFrame) -> pd.DataFrame:
    """The images these pairs show, on either side, once each with their person (columns image,
    person; left sides first, in the pairs' order)."""
    return pd.concat([pairs[["left_image", "left_person"]].set_axis(["image", "person"], axis=1),
                      pairs[["right_image", "right_person"]].set_axis(["image", "person"], axis=1)]
                     ).drop_duplicates("image")


def pairs_showing(pairs: pd.DataFrame, people: Iterable[str]) -> pd.Series:
    """For each pair: does it show one of ``people`` (on either side)?"""
    people = set(people)
    return pairs["left_person"].isin(people) | pairs["right_person"].isin(people)


def split_people_of(pairs: pd.DataFrame, splits: Sequence[str] = ("train", "validation")) -> dict[str, list[str]]:
    """split -> the people its pairs show, sorted."""
    return {split: sorted(people_in(pairs[pairs["split"] == split])) for split in splits}


def held_out_violations(pairs: pd.DataFrame, protocol: str, split: str = "test") -> list[str]:
    """What ``split`` shares with the train split that the protocol forbids: images under
    face_comparer, people under identity_disjoint (a few examples; empty when it holds out)."""
    def used(name: str, what: str) -> set:
        g = pairs[pairs["split"] == name]
        return set(g[f"left_{what}"]).union(g[f"right_{what}"])

    what = {"face_comparer": "image", "identity_disjoint": "person"}.get(protocol)
    return sorted(used(split, what) & used("train", what))[:5] if what else []
