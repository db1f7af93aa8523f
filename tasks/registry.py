"""The model registry in storage: ``models/<version>/`` with everything needed to trust a model.

Files: ``pair.keras`` (the verification model), ``embedder.keras`` (for matching),
``config.json``, ``people.json`` (its train and validation people), ``history.csv``,
``curve.png``, and ``manifest.json`` last: sha256 of every file, data fingerprint, metrics,
machine and wall time. Loading verifies the sha256 and uses
Keras safe mode, so no pickled or arbitrary code is ever run from storage.
"""
from __future__ import annotations

import hashlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from storage import NotFoundError, Storage, catalog
from storage.manifests import IntegrityError, read_verified
from storage.pointers import update_pointer

if TYPE_CHECKING:
    from model import keras

# Keras is imported inside the functions that load a model: the champion pointer, manifests and reports
# (the promote flow, matching's thresholds) are read without starting TensorFlow.

PAIR_MODEL = "pair.keras"  # (left, right) -> P(same): verification, and the scorer's source
EMBEDDER = "embedder.keras"  # image -> embedding
MODEL_FILES = (PAIR_MODEL, EMBEDDER)
PEOPLE_FILE = "people.json"  # the people of its training and validation splits: what it may never be tested on


class ModelIntegrityError(IntegrityError):
    pass


def publish(store: Storage, version: str, files: dict[str, Path], manifest: dict) -> dict:
    """Upload ``files`` (name -> local path) and then the manifest with their checksums."""
    sums = {}
    for name, path in files.items():
        sums[name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        store.upload_file(path, catalog.model_file_key(version, name))
    manifest = {**manifest, "version": version, "files": sums}
    store.write_json(catalog.model_manifest_key(version), manifest)  # last: the model is complete
    return manifest


def read_manifest(store: Storage, version: str) -> dict:
    return store.read_json(catalog.model_manifest_key(version))


def read_report(store: Storage, version: str) -> dict | None:
    """The plain (not test-time-augmented) evaluation of ``version``: the thresholds matching uses."""
    return store.read_json_or_none(catalog.report_key(version))


def load_model(store: Storage, version: str, name: str = PAIR_MODEL) -> keras.Model:
    """Download, verify the sha256 against the manifest, and load in safe mode."""
    expected = read_manifest(store, version)["files"].get(name)
    if expected is None:
        raise ModelIntegrityError(f"model {version} has no {name}")
    try:
        data = read_verified(store, catalog.model_file_key(version, name), expected)
    except IntegrityError as err:
        raise ModelIntegrityError(str(err)) from None
    import model.layers  # noqa: F401 - registers the custom layers before any load
    import model.losses  # noqa: F401
    from model import keras  # through the package: TensorFlow's start-up stays quiet

    with tempfile.TemporaryDirectory(prefix="siamese-model-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return keras.saving.load_model(path, safe_mode=True, compile=False)


def load_scorer(store: Storage, version: str, flip: bool | None = None):
    """The registered pair model as a scorer: embed once, score pairs and galleries from embeddings.
    ``flip`` (mirror-image averaging) defaults to what the model's manifest records."""
    from model.scoring import PairScorer

    manifest = read_manifest(store, version)
    if flip is None:
        flip = bool(manifest.get("inference", {}).get("flip", False))
    return PairScorer(in_process_precision(load_model(store, version, PAIR_MODEL), manifest.get("network")), flip=flip)


def in_process_precision(pair: keras.Model, network: dict | None) -> keras.Model:
    """The pair model computing in this process's precision: a saved model keeps the dtype policy it
    was trained under (bfloat16 on a machine that has it), which elsewhere would run emulated, slower
    than float32, and on a bfloat16 machine a float32-trained one would leave its speed unused. So
    it is rebuilt from its recorded network under this process's policy, with the same weights;
    one without a recorded network (or that does not rebuild) runs as saved."""
    import model
    from model.networks import NetworkConfig, build_models

    if network is None or _policy_of(pair) == model.precision():
        return pair
    try:
        rebuilt = build_models(NetworkConfig(**network)).pair
        rebuilt.set_weights(pair.get_weights())
    except ValueError:  # another builder's network (an older format): as saved
        return pair
    return rebuilt


def _policy_of(pair: keras.Model) -> str:
    """The dtype policy the twin network's layers compute in (its first convolution's or dense layer's)."""
    from model import keras

    for layer in pair.layers:
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                if isinstance(inner, (keras.layers.Conv2D, keras.layers.Dense)):
                    return inner.dtype_policy.name
    return "float32"


def model_preprocess(manifest: dict):
    """How the model's training faces were cut (crop box, size, grey or colour; or dlib's aligned
    chip), so enrolment and matching cut theirs alike; for models registered before it was recorded,
    their dataset's."""
    from tasks.data.datasets import get_dataset
    from tasks.images import PreprocessConfig, face_input

    recorded = manifest.get("preprocess")
    if recorded:
        return face_input(recorded)
    return PreprocessConfig(crop_box=get_dataset(manifest["config"]["dataset"]).crop_box)


def read_model_people(store: Storage, version: str) -> dict[str, list[str]] | None:
    """split -> people the model learned from (train) or was selected on (validation), verified; None for
    models registered before it was recorded."""
    import json

    expected = read_manifest(store, version)["files"].get(PEOPLE_FILE)
    if expected is None:
        return None
    return json.loads(read_verified(store, catalog.model_file_key(version, PEOPLE_FILE), expected))


def read_champion(store: Storage) -> str | None:
    pointer = store.read_json_or_none(catalog.CHAMPION_KEY)
    return pointer["version"] if pointer else None


HISTORY_KEPT = 100  # earlier champions remembered for roll-backs


def read_champion_pointer(store: Storage) -> dict | None:
    """``{"version", "decision", "since", "history"}``; history: the earlier champions, oldest first."""
    return store.read_json_or_none(catalog.CHAMPION_KEY)


class ChampionMovedError(RuntimeError):
    """The champion is no longer the one a decision was made against."""


def set_champion(store: Storage, version: str, decision: dict) -> dict:
    """Point the champion at ``version`` (which must be registered); ``decision`` says why. When the
    decision names the champion it beat (``decision["champion"]``, None: there was none), the
    pointer must still be at that one: a champion rolled back or replaced since the decision (a
    nightly enrols for hours between the two) is never overwritten. The champion it replaces joins
    the pointer's history, so it can be rolled back to."""
    read_manifest(store, version)  # refuses an unregistered version

    def promoted(before: dict | None) -> dict:
        current = before["version"] if before else None
        if current == version and before.get("decision") == decision:
            return before  # already done by this decision (a write whose answer was lost, then retried)
        if "champion" in decision and decision["champion"] != current:
            raise ChampionMovedError(
                f"{version} was judged against champion {decision['champion']}, but the champion is now {current} "
                f"(moved since the decision): {version} was not promoted; evaluate it again")
        history = list(before.get("history", [])) if before else []
        if before and before["version"] != version:
            history.append(before["version"])
        return _champion_pointer(version, decision, history)

    return update_pointer(store, catalog.CHAMPION_KEY, promoted)


def roll_back_champion(store: Storage, reason: str) -> dict:
    """Point the champion back at the one before it (the history's last), which leaves the history:
    rolling back twice goes two champions back, never to and fro."""

    def rolled_back(before: dict | None) -> dict:
        if before is None:
            raise LookupError(f"no champion in {store.url}: nothing to roll back")
        history = list(before.get("history", []))
        if not history:
            raise LookupError(f"champion {before['version']} has no earlier champion in {store.url} to roll back to")
        target = history.pop()
        read_manifest(store, target)
        decision = {"promote": True, "rollback": True, "by_hand": True, "challenger": target,
                    "champion": before["version"], "reason": reason}
        return _champion_pointer(target, decision, history)

    return update_pointer(store, catalog.CHAMPION_KEY, rolled_back)


def _champion_pointer(version: str, decision: dict, history: list[str]) -> dict:
    return {"version": version, "decision": decision,
            "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "history": history[-HISTORY_KEPT:]}


def list_versions(store: Storage) -> list[str]:
    """Registered versions (those with a manifest), oldest first (versions start with a UTC time)."""
    found = (catalog.version_of_manifest_key(info.key) for info in store.list(catalog.MODELS_PREFIX))
    return sorted(v for v in found if v)


def resolve_version(store: Storage, version: str) -> str:
    """``latest``, ``champion`` or a registered version -> a registered version."""
    if version == "latest":
        versions = list_versions(store)
        if not versions:
            raise LookupError(f"no models registered in {store.url}: run training first")
        return versions[-1]
    if version == "champion":
        champion = read_champion(store)
        if champion is None:
            raise LookupError(f"no champion model in {store.url}: evaluate and promote a model first")
        return champion
    try:
        catalog.model_prefix(version)
    except ValueError:
        raise LookupError(f"{version!r} is not a model version, latest or champion") from None
    try:
        read_manifest(store, version)
    except NotFoundError:
        raise LookupError(f"model version {version!r} is not registered in {store.url}") from None
    return version
