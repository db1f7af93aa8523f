"""People folders: ``<identity>/<image>`` under a directory or an S3 prefix, the layout of both a
gallery and a folder dataset. Listing is the storage's own (paginated on S3); a key that does not
fit the layout is rejected with its reason, never silently dropped."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd

from storage import Storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
_IDENTITY = re.compile(r"^[^\x00-\x1f/\\]{1,128}$")
# What matching names a face below its threshold; no person may be called so, so that a result
# naming it always means "no one", never a person.
UNKNOWN_IDENTITY = "unknown"


class PeopleFolderError(ValueError):
    pass


def identity_key(name: str) -> str:
    """The one key of a person's name: Unicode NFC, whitespace runs made one space, casefolded.
    ``José`` typed here and copied from a Mac (NFD) share one key, as do ``Ann Lee`` and ``ann  lee``."""
    collapsed = " ".join(unicodedata.normalize("NFC", name).split())
    return unicodedata.normalize("NFC", collapsed.casefold())  # casefolding can leave NFC


def validate_identity(name: str) -> str:
    """An identity is one path segment: not empty, not '.'/'..', no control characters, and not the
    unknown sentinel in any spelling."""
    if not _IDENTITY.match(name or "") or name.strip() in ("", ".", "..") or name != name.strip():
        raise PeopleFolderError(f"invalid identity name {name!r}")
    if identity_key(name) == UNKNOWN_IDENTITY:
        raise PeopleFolderError(f"identity name {name!r} is reserved: matching names a face below its threshold "
                                f"{UNKNOWN_IDENTITY!r}; rename the folder")
    return name


def _shown(name: str) -> str:
    """A name as an operator can tell spellings apart: NFC and NFD look alike, their escapes do not."""
    return repr(name) if name.isascii() else f"{name!r} {ascii(name)}"


def _spelling_conflicts(identities: set[str]) -> dict[str, str]:
    """identity -> why it is refused, for every folder whose identity key another folder shares."""
    spellings: dict[str, list[str]] = defaultdict(list)
    for name in sorted(identities):
        spellings[identity_key(name)].append(name)
    return {name: (f"identity folders {' and '.join(map(_shown, names))} are one person by name (equal once "
                   "Unicode-normalised, whitespace-collapsed and casefolded): move the photos into one folder")
            for names in spellings.values() if len(names) > 1 for name in names}


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_SUFFIXES)


@dataclass
class FolderListing:
    images: pd.DataFrame  # identity, key, etag, size; in key order
    rejected: list[dict] = field(default_factory=list)  # key, error
    other_files: int = 0  # keys that are not images (a README, a .DS_Store): not the layout's business

    def fingerprint(self) -> str:
        """sha256 of what the listing saw (keys, ETags, rejections): equal listings, equal folders."""
        lines = [f"{k}\t{e}" for k, e in zip(self.images["key"], self.images["etag"])]
        lines += [f"!{r['key']}" for r in self.rejected]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def list_people_folder(source: Storage) -> FolderListing:
    rows, rejected, other = [], [], 0
    for info in source.list_all(""):
        if not is_image_key(info.key):
            other += 1
            continue
        parts = info.key.split("/")
        if len(parts) != 2:
            rejected.append({"key": info.key, "error": "images must be <identity>/<image>"})
            continue
        try:
            rows.append((validate_identity(parts[0]), info.key, info.etag, info.size))
        except PeopleFolderError as err:
            rejected.append({"key": info.key, "error": str(err)})
    # Two spellings of one name are refused, both, not merged: which folder is right is the operator's call.
    # So a listing has one spelling per person, and splits made by folder name are made per person.
    conflicts = _spelling_conflicts({r[0] for r in rows})
    rejected += [{"key": r[1], "error": conflicts[r[0]]} for r in rows if r[0] in conflicts]
    rows = [r for r in rows if r[0] not in conflicts]
    return FolderListing(pd.DataFrame(rows, columns=["identity", "key", "etag", "size"]), rejected, other)
