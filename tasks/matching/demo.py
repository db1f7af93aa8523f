"""The main job's last stage: a demo gallery and probe batch of held-out people, written into the
storage like a user's, matched in bulk by the match flow, and scored against the truth.

Gallery: one photo of each held-out person with two or more (``tasks.held_out``'s identification
sets, as evaluation's, so the numbers can be read beside its rank-1); probes: their other photos,
and every photo of the held-out people with a single one, who are never enrolled. Nobody the model
trained on appears.
"""
from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

import pandas as pd

from storage import Storage, catalog
from tasks.held_out import identification_sets
from tasks.search.ranking import UNKNOWN


@dataclass(frozen=True)
class DemoBatch:
    gallery_url: str
    probes_url: str
    truth: dict[str, str | None]  # probe key -> the enrolled person it shows, None for never-enrolled


def write_demo(store: Storage, dataset: str, index: pd.DataFrame, held_out: dict[str, list[str]],
               image_root) -> DemoBatch | None:
    """``image_root``: the photos' directory (an archive's extraction) or storage (a folder dataset).
    Copy the photos into ``demo/<dataset>/gallery/<person>/<file>`` and
    ``demo/<dataset>/probes/<person>/<hash>-<file>`` of the storage (an existing object is kept: a
    re-run copies nothing), then remove what an earlier run left there, so the demo holds exactly
    this run's held-out people; None when fewer than two held-out people could be enrolled."""
    enrolled, known, never = identification_sets(held_out)
    if len(enrolled) < 2 or not known:
        return None
    path_of = dict(zip(index["image_id"], index["path"]))
    person_of = {image: person for person, images in held_out.items() for image in images}
    gallery, probes = catalog.demo_gallery_prefix(dataset), catalog.demo_probes_prefix(dataset)
    written: set[str] = set()

    def put(key: str, image_id: str) -> None:
        written.add(key)
        if not store.exists(key):
            path = path_of[image_id]
            store.write_bytes(key, image_root.read_bytes(path) if isinstance(image_root, Storage)
                              else (image_root / path).read_bytes())

    for person, image in enrolled.items():
        put(posixpath.join(gallery, person, posixpath.basename(image)), image)  # one photo a person
    truth: dict[str, str | None] = {}
    for image, person in [*known, *((image, None) for image in never)]:
        key = probe_key(person_of[image], image)
        put(posixpath.join(probes, key), image)
        truth[key] = person
    _remove_stale(store, (gallery, probes), written)
    return DemoBatch(store.uri(gallery), store.uri(probes), truth)


def probe_key(person: str, image_id: str) -> str:
    """A probe's key under the demo's probes: a folder dataset's people may each have an
    ``IMG_0001.jpg``, so the basename alone collides; the image id's hash keeps them apart."""
    digest = hashlib.sha256(image_id.encode()).hexdigest()[:8]
    return posixpath.join(person, f"{digest}-{posixpath.basename(image_id)}")


def _remove_stale(store: Storage, prefixes: tuple[str, ...], keep: set[str]) -> None:
    """Delete what earlier demo runs left under ``prefixes``: people no longer held out would stay
    enrolled in the demo gallery, and old probes would be matched and scored with no truth."""
    for prefix in prefixes:
        for info in store.list_all(prefix + "/"):
            if info.key not in keep:
                store.delete(info.key)


def score_demo(results: pd.DataFrame, truth: dict[str, str | None]) -> dict:
    """Rank-1 and rank-5 of the enrolled people's photos, the share of never-enrolled photos called
    unknown, and of enrolled people's photos named right (``results``: the match run's rows; a photo
    with no face counts as a miss)."""
    rows = results[results["error"].isna()].drop_duplicates("probe_key").set_index("probe_key")
    tops = {k: list(v) for k, v in rows["top_identities"].items()}
    known = [k for k, person in truth.items() if person is not None]
    never = [k for k, person in truth.items() if person is None]
    rank1 = sum(tops.get(k, [None])[:1] == [truth[k]] for k in known)
    rank5 = sum(truth[k] in tops.get(k, [])[:5] for k in known)
    named = sum(rows["identity"].get(k) == truth[k] for k in known)
    unknown = sum(rows["identity"].get(k) == UNKNOWN for k in never)
    return {"gallery_people": len({p for p in truth.values() if p}), "known_probes": len(known),
            "never_enrolled_probes": len(never), "rank1": rank1 / max(1, len(known)),
            "rank5": rank5 / max(1, len(known)), "known_named_right": named / max(1, len(known)),
            "never_enrolled_called_unknown": unknown / max(1, len(never)),
            "errors": int(results["error"].notna().sum())}
