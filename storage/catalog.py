"""The one catalog of storage keys: every key the pipeline reads or writes is built here.

    datasets/<dataset>/index.parquet, index.json, tensors/<preprocess id>.npy, skew.md, skew.csv
    datasets/<dataset>/chips/<chip store id>/manifest.json, table-<sha>.parquet, part-<sha>.npy
                       (a folder dataset: datasets/<location id>/..., and index-parts/ while indexing)
    datasets/<dataset>/pairs/<protocol>/pairs.parquet, manifest.json, skew.md, skew.csv,
                                        images_per_person_<split>.png
    demo/<dataset>/gallery/<person>/<file>, demo/<dataset>/probes/<file>
    pretrained/<name>/<source sha256>-port<N>/network.keras, manifest.json
    models/<version>/<file>, manifest.json, evaluation[-tta<N>]/<file>
    models/champion.json
    galleries/<gallery id>/<version>/current.json -> manifest-<sha>.json -> embeddings-<sha>.parquet, index-<sha>.faiss
    matches/<run id>/run.json, shards/<NNNNN>.parquet, results/<NNNNN>.parquet
"""
from __future__ import annotations

import hashlib
import posixpath
import re


def _join(*parts: str) -> str:
    return posixpath.join(*parts)


def location_id(url: str) -> str:
    """A readable, stable folder name for an address (a gallery, a folder dataset); no credentials
    are ever in one."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", url).strip("-")[-40:]
    return f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


# --- datasets --------------------------------------------------------------------------------


def dataset_prefix(dataset: str) -> str:
    """``datasets/lfw``; a folder dataset (a directory or an S3 prefix) by its location id."""
    return _join("datasets", location_id(dataset) if "/" in dataset or ":" in dataset else dataset)


def index_parts_prefix(dataset: str) -> str:
    """A folder dataset's finished chunks of an unfinished indexing run (resumed, then removed)."""
    return _join(dataset_prefix(dataset), "index-parts") + "/"


def index_key(dataset: str, content_sha256: str | None = None) -> str:
    """``index.parquet``; named by its content (a folder dataset's, rewritten every night) so the file
    the manifest names stays intact until a new manifest names another."""
    return _join(dataset_prefix(dataset), f"index-{content_sha256[:16]}.parquet" if content_sha256 else "index.parquet")


def index_manifest_key(dataset: str) -> str:
    return _join(dataset_prefix(dataset), "index.json")


def tensors_key(dataset: str, preprocess_id: str, content_sha256: str | None = None) -> str:
    name = f"{preprocess_id}-{content_sha256[:16]}.npy" if content_sha256 else f"{preprocess_id}.npy"
    return _join(dataset_prefix(dataset), "tensors", name)


def chips_prefix(dataset: str, store_id: str) -> str:
    """dlib's aligned chips of a dataset's photos under one set of chip settings (``store_id``)."""
    return _join(dataset_prefix(dataset), "chips", store_id)


def chips_pointer_key(dataset: str) -> str:
    """Names the chip store the data flow last filled for ``dataset`` (its current chips)."""
    return _join(dataset_prefix(dataset), "chips.json")


def chips_manifest_key(dataset: str, store_id: str) -> str:
    return _join(chips_prefix(dataset, store_id), "manifest.json")


def chips_table_key(dataset: str, store_id: str, content_sha256: str) -> str:
    return _join(chips_prefix(dataset, store_id), f"table-{content_sha256[:16]}.parquet")


def chips_part_key(dataset: str, store_id: str, content_sha256: str) -> str:
    return _join(chips_prefix(dataset, store_id), f"part-{content_sha256[:16]}.npy")


def dataset_skew_keys(dataset: str) -> tuple[str, str]:
    """(markdown, csv) of the whole-set skew."""
    return _join(dataset_prefix(dataset), "skew.md"), _join(dataset_prefix(dataset), "skew.csv")


def pairs_prefix(dataset: str, protocol: str) -> str:
    return _join(dataset_prefix(dataset), "pairs", protocol)


def pairs_key(dataset: str, protocol: str) -> str:
    return _join(pairs_prefix(dataset, protocol), "pairs.parquet")


def pairs_manifest_key(dataset: str, protocol: str) -> str:
    return _join(pairs_prefix(dataset, protocol), "manifest.json")


def pairs_skew_keys(dataset: str, protocol: str) -> tuple[str, str]:
    """(markdown, csv) of the per-split skew."""
    return _join(pairs_prefix(dataset, protocol), "skew.md"), _join(pairs_prefix(dataset, protocol), "skew.csv")


def pairs_plot_key(dataset: str, protocol: str, split: str) -> str:
    return _join(pairs_prefix(dataset, protocol), f"images_per_person_{split}.png")


def demo_gallery_prefix(dataset: str) -> str:
    """The main job's demo gallery (held-out people, one photo each) and probe batch."""
    return _join("demo", dataset_prefix(dataset).split("/", 1)[1], "gallery")


def demo_probes_prefix(dataset: str) -> str:
    return _join("demo", dataset_prefix(dataset).split("/", 1)[1], "probes")


# --- pretrained networks ---------------------------------------------------------------------


def pretrained_keys(name: str, source_sha256: str, port_version: int) -> tuple[str, str]:
    """(the built Keras network, its manifest) of pretrained weights, keyed by their source file and
    the version of the code that rebuilt them."""
    prefix = _join("pretrained", name, f"{source_sha256[:16]}-port{port_version}")
    return _join(prefix, "network.keras"), _join(prefix, "manifest.json")


# --- models ----------------------------------------------------------------------------------

MODELS_PREFIX = "models/"
CHAMPION_KEY = "models/champion.json"  # which version matching uses when none is given


def model_prefix(version: str) -> str:
    if not version or "/" in version or version.startswith(".") or version == "champion.json":
        raise ValueError(f"invalid model version {version!r}")
    return _join("models", version)


def model_file_key(version: str, name: str) -> str:
    return _join(model_prefix(version), name)


def model_manifest_key(version: str) -> str:
    return model_file_key(version, "manifest.json")


def version_of_manifest_key(key: str) -> str | None:
    """``models/<version>/manifest.json`` -> version; None for any other key."""
    parts = key.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "models" and parts[2] == "manifest.json" else None


def evaluation_prefix(version: str, tta_passes: int = 0) -> str:
    """``evaluation/`` holds the plain evaluation, whose thresholds matching uses (matching does
    not augment); a test-time-augmented evaluation goes beside it, ``evaluation-tta<N>/``."""
    return _join(model_prefix(version), "evaluation" + (f"-tta{tta_passes}" if tta_passes else ""))


def evaluation_file_key(version: str, name: str, tta_passes: int = 0) -> str:
    return _join(evaluation_prefix(version, tta_passes), name)


def report_key(version: str, tta_passes: int = 0) -> str:
    return evaluation_file_key(version, "report.json", tta_passes)


# --- galleries -------------------------------------------------------------------------------


def gallery_prefix(gallery_id: str, version: str) -> str:
    model_prefix(version)  # validates the version
    return _join("galleries", gallery_id, version)


def gallery_pointer_key(gallery_id: str, version: str) -> str:
    """The one object an enrolment moves: which manifest is the gallery's current state."""
    return _join(gallery_prefix(gallery_id, version), "current.json")


# Everything a pointer leads to is named by its own checksum and never rewritten: a match that read
# one state reads all of it, whatever enrolments publish meanwhile.
def gallery_manifest_key(gallery_id: str, version: str, manifest_sha256: str) -> str:
    return _join(gallery_prefix(gallery_id, version), f"manifest-{manifest_sha256[:16]}.json")


def gallery_embeddings_key(gallery_id: str, version: str, embeddings_sha256: str) -> str:
    return _join(gallery_prefix(gallery_id, version), f"embeddings-{embeddings_sha256[:16]}.parquet")


def gallery_index_key(gallery_id: str, version: str, index_sha256: str) -> str:
    return _join(gallery_prefix(gallery_id, version), f"index-{index_sha256[:16]}.faiss")


def gallery_pending_prefix(gallery_id: str, version: str, settings_id: str) -> str:
    """Embeddings of an enrolment still under way, saved as it goes (a killed one resumes from them)."""
    return _join(gallery_prefix(gallery_id, version), f"pending-{settings_id}") + "/"


def gallery_pending_key(gallery_id: str, version: str, settings_id: str, part_sha256: str) -> str:
    return gallery_pending_prefix(gallery_id, version, settings_id) + f"part-{part_sha256[:16]}.parquet"


# --- matching runs ---------------------------------------------------------------------------


def match_prefix(run_id: str) -> str:
    return _join("matches", run_id)


def match_run_key(run_id: str) -> str:
    return _join(match_prefix(run_id), "run.json")


def match_shard_key(run_id: str, shard: int) -> str:
    return _join(match_prefix(run_id), "shards", f"{shard:05d}.parquet")


def match_results_prefix(run_id: str) -> str:
    return _join(match_prefix(run_id), "results") + "/"


def match_results_key(run_id: str, shard: int) -> str:
    return _join(match_prefix(run_id), "results", f"{shard:05d}.parquet")
