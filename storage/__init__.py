"""Where outputs live: a local directory (default) or an S3 prefix, behind one interface."""
from storage.base import NotFoundError, ObjectInfo, Storage, StorageError, normalize_key
from storage.location import default_storage_url, open_storage, siamese_home

__all__ = [
    "NotFoundError", "ObjectInfo", "Storage", "StorageError", "normalize_key",
    "default_storage_url", "open_storage", "siamese_home",
]
