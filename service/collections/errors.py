"""What can go wrong with collections, as plain exceptions.

They carry no HTTP status: the store serves the CLI as well as the server, and
``service.errors`` maps each type to the status the server answers, in one table.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the collection errors."""


class InvalidName(StoreError):
    """A collection name outside the safe alphabet (names double as file names)."""


class CollectionNotFound(StoreError):
    pass


class ItemNotFound(StoreError):
    def __init__(self, collection: str, item_id: str) -> None:
        super().__init__(f"item {item_id!r} not found in collection {collection!r}")


class CheckpointMismatch(StoreError):
    """The collection's codes were made by another checkpoint: they mean nothing to this one."""


class CollectionCorrupt(StoreError):
    """The file is not a collection this Monolith can read."""


class InvalidFilter(StoreError):
    """A search filter that cannot be evaluated (unknown operator, wrong value type)."""


class InvalidExport(StoreError):
    """An export file that is not one, or was truncated or altered (its checksum disagrees)."""


class CollectionExists(StoreError):
    """An import into a collection that already exists, without asking to replace it."""


class StorageFull(StoreError):
    """The disk (or quota) holding the collections is full: the write was rolled back, nothing changed."""


class CollectionBusy(StoreError):
    """A migration (or fit) of this collection is already running; one at a time."""


class SettingsConflict(StoreError):
    """A request asks an existing collection for a setting it cannot change in place."""


class NotMigratable(StoreError):
    """Some items keep neither a vector nor a text, so nothing can re-encode them."""


class NoKeptVectors(StoreError):
    """Exact rescoring asked of a collection that keeps no vectors."""


class CannotFit(StoreError):
    """A fit asked of a collection that cannot be fitted (no kept vectors, too few items, a bad recipe)."""


class NoFit(StoreError):
    """No fit of this collection is known (GET), or none is running (DELETE)."""


class ModelChanged(StoreError):
    """The collection switched to another model between encoding a request and storing or
    searching it: the caller encodes again with the collection's model (never surfaces)."""
