"""A model is only evaluated on the data it was trained against: the same tensor store, the same
train and validation pairs, and test pairs that hold out what its protocol says (images or people).
Regenerating pairs with another seed would otherwise silently put training images into "test"."""
from __future__ import annotations

from tasks.data.pairs import held_out_violations, people_in, split_fingerprint
from tasks.data.prepared import PairsTable


class DataFingerprintError(ValueError):
    """The stored data no longer matches the model's; the message says what differs and what to do."""


def check_model_data(version: str, manifest: dict, pairs: PairsTable, tensors_sha256: str,
                     people: dict[str, list[str]] | None = None, preprocess: dict | None = None) -> None:
    """``people``: the model's recorded train and validation people (registry.read_model_people). With
    them, an identity-disjoint model may be scored on data that grew since it was trained (a folder
    dataset's next night): what must hold is that no person it trained on is in the validation or test
    pairs and none it was selected on is in the test pairs, and that its faces are cut the same way.
    Without them, the data must be exactly the data it was trained with."""
    data, config = manifest.get("data", {}), manifest["config"]
    where = f"{config['dataset']}/{config['protocol']}"
    fix = ("evaluate it on the data it was trained on (the data flow with the settings it was made with) or "
           "train a new model on the current data")
    if people is not None and config["protocol"] == "identity_disjoint":
        if preprocess is not None and manifest.get("preprocess") not in (None, preprocess):
            raise DataFingerprintError(f"model {version} learned from faces cut as {manifest['preprocess']}; the "
                                       f"tensor store of {config['dataset']} now holds {preprocess}: {fix}")
        learned = {"validation": set(people.get("train", [])),
                   "test": set(people.get("train", [])) | set(people.get("validation", []))}
        for split, forbidden in learned.items():
            g = pairs.frame[pairs.frame["split"] == split]
            shared = sorted(people_in(g) & forbidden)
            if shared:
                raise DataFingerprintError(f"the {split} pairs of {where} show {len(shared)} people model {version} "
                                           f"{'trained' if split == 'validation' else 'trained or was selected'} on, "
                                           f"e.g. {shared[:3]}: {fix}")
        return
    if data.get("tensors_sha256") and data["tensors_sha256"] != tensors_sha256:
        raise DataFingerprintError(f"model {version} was trained on another tensor store of {config['dataset']} "
                                   f"({data['tensors_sha256'][:12]}, now {tensors_sha256[:12]}): {fix}")
    recorded = data.get("splits_sha256")
    if not recorded:  # models registered before split fingerprints: the whole pairs file must match
        if data.get("pairs_sha256") != pairs.sha256:
            raise DataFingerprintError(f"model {version} was trained on other {where} pairs "
                                       f"({str(data.get('pairs_sha256'))[:12]}, now {pairs.sha256[:12]}): "
                                       f"its validation and test pairs may hold what it trained on; {fix}")
        return
    for split in ("train", "validation"):
        now = split_fingerprint(pairs.frame, split)
        if recorded.get(split) != now:
            raise DataFingerprintError(f"the {split} pairs of {where} differ from those model {version} was "
                                       f"trained with ({str(recorded.get(split))[:12]}, now {now[:12]}): {fix}")
    for split in ("validation", "test"):  # validation picks the epoch and the thresholds: it must hold out too
        shared = held_out_violations(pairs.frame, config["protocol"], split)
        if shared:
            raise DataFingerprintError(f"the {split} pairs of {where} share what model {version} trained on, "
                                       f"e.g. {shared[:3]}: {fix}")
