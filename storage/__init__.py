"""Where outputs live: a local directory (default) or an S3 prefix, behind one interface."""
from storage import catalog
from storage.base import BadKeyError, NotFoundError, ObjectInfo, Storage, StorageError, normalize_key
from storage.location import default_storage_url, open_storage

__all__ = [
    "catalog", "BadKeyError", "NotFoundError", "ObjectInfo", "Storage", "StorageError", "normalize_key",
    "default_storage_url", "open_storage",
]
