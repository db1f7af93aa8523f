"""Dataset specifications: which files make a dataset, their checksums, and how to read its layout."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.images import LFW_CROP_BOX

# A layout parser maps an archive member path to (person, image_id), or None for non-image members.
LayoutParser = Callable[[str], "tuple[str, str] | None"]


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the download cache and in a mirror
    url: str | None  # official address; None when only mirrors have it
    sha256: str | None  # pinned checksum; a trusted mirror's SHA256SUMS may supply it instead
    archive: bool = False  # a .tgz holding the images


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: tuple[RemoteFile, ...]
    parse_member: LayoutParser
    image_root: str  # top folder of the images inside the archive
    crop_box: tuple[int, int, int, int] | None  # default preprocessing crop (left, top, right, bottom)
    people_split_files: tuple[str, str] | None = None  # (train people, test people) protocol files
    official_pairs_files: dict[str, str] = field(default_factory=dict)  # split name -> pairs file

    @property
    def archive(self) -> RemoteFile:
        return next(f for f in self.files if f.archive)

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"dataset {self.name!r} has no file {name!r}")


_LFW_MEMBER = re.compile(r"^lfw/([^/]+)/(\1_\d{4}\.jpg)$")


def parse_lfw_member(path: str) -> tuple[str, str] | None:
    """``lfw/Name/Name_0001.jpg`` -> (``Name``, ``Name/Name_0001.jpg``)."""
    m = _LFW_MEMBER.match(path)
    return (m.group(1), f"{m.group(1)}/{m.group(2)}") if m else None


_ATT_MEMBER = re.compile(r"^att_faces/(s\d+)/(\d+\.pgm)$")


def parse_att_member(path: str) -> tuple[str, str] | None:
    """``att_faces/s1/1.pgm`` -> (``s1``, ``s1/1.pgm``)."""
    m = _ATT_MEMBER.match(path)
    return (m.group(1), f"{m.group(1)}/{m.group(2)}") if m else None


_FIGSHARE = "https://ndownloader.figshare.com/files/"
_UMASS = "http://vis-www.cs.umass.edu/lfw/"

# Archive and pairs files: the addresses and sha256 values scikit-learn pins (sklearn.datasets._lfw).
# People files: the official UMass files, whose bytes the shared copies match.
LFW = DatasetSpec(
    name="lfw",
    files=(
        RemoteFile("lfw.tgz", _FIGSHARE + "5976018",
                   "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0", archive=True),
        RemoteFile("pairsDevTrain.txt", _FIGSHARE + "5976012",
                   "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa"),
        RemoteFile("pairsDevTest.txt", _FIGSHARE + "5976009",
                   "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c"),
        RemoteFile("pairs.txt", _FIGSHARE + "5976006",
                   "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592"),
        RemoteFile("peopleDevTrain.txt", _UMASS + "peopleDevTrain.txt",
                   "2e58df13ba4cc143189336e001cc2c195f1dfa5b29a6475c02857be353c2a2fa"),
        RemoteFile("peopleDevTest.txt", _UMASS + "peopleDevTest.txt",
                   "c3ed1f90499473401542101a56c14c1d82396bb8218c67a356d7460601047555"),
    ),
    parse_member=parse_lfw_member,
    image_root="lfw",
    crop_box=LFW_CROP_BOX,  # LFWcrop's fixed box on the 250x250 originals
    people_split_files=("peopleDevTrain.txt", "peopleDevTest.txt"),
    official_pairs_files={"dev_train": "pairsDevTrain.txt", "dev_test": "pairsDevTest.txt", "view2": "pairs.txt"},
)

# AT&T/ORL has no official .tgz (the original is a zip); the pinned checksum is the project's tgz build.
ATT_FACES = DatasetSpec(
    name="att_faces",
    files=(
        RemoteFile("att_faces.tgz", None,
                   "b8c612e4fc5bb5e2e3114b17e94ff785cdcb86c411af02585a46b420d268f469", archive=True),
    ),
    parse_member=parse_att_member,
    image_root="att_faces",
    crop_box=None,  # 92x112 faces, already framed: resize only
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (LFW, ATT_FACES)}


def is_folder_dataset(name: str) -> bool:
    """A directory or an S3 prefix of ``<identity>/<image>`` (any name with a ``/`` or a scheme), not
    one of the archives in DATASETS."""
    return name not in DATASETS and ("/" in name or ":" in name or name.startswith("."))


def normalize_dataset(name: str) -> str:
    """The one spelling of a dataset, as models and reports record it: an archive's name, an S3 or
    file URL without its trailing slash, or a directory's absolute path."""
    name = (name or "").strip()
    if not is_folder_dataset(name):
        get_dataset(name)
        return name
    if name.startswith("file://"):  # one folder, one spelling: file:///x is the directory /x
        name = name[len("file://"):] or "/"
    elif "://" in name:
        return name.rstrip("/")
    return str(Path(name).expanduser().resolve())


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}, or a folder of "
                         "<identity>/<image> photos (a directory, or s3://bucket/prefix)") from None
