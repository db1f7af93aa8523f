"""People folders: ``<identity>/<image>`` under a directory or an S3 prefix, the layout of both a
gallery and a folder dataset. Listing is the storage's own (paginated on S3); a key that does not
fit the layout is rejected with its reason, never silently dropped."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import pandas as pd

from storage import Storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
_IDENTITY = re.compile(r"^[^\x00-\x1f/\\]{1,128}$")


class PeopleFolderError(ValueError):
    pass


def validate_identity(name: str) -> str:
    """An identity is one path segment: not empty, not '.'/'..', no control characters."""
    if not _IDENTITY.match(name or "") or name.strip() in ("", ".", "..") or name != name.strip():
        raise PeopleFolderError(f"invalid identity name {name!r}")
    return name


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
    return FolderListing(pd.DataFrame(rows, columns=["identity", "key", "etag", "size"]), rejected, other)
