"""The history of runs: database tables, content-addressed images and the repository API over both."""

from arpo.storage.database import create_database_engine
from arpo.storage.history import History
from arpo.storage.image_store import ImageStore, StoredImageRef
from arpo.storage.locations import (
    checkpoint_path_for,
    default_database_url,
    default_image_root,
)
from arpo.storage.records import CandidateRecord, IterationRecord, RunDetail, RunSummary

__all__ = [
    "CandidateRecord",
    "History",
    "ImageStore",
    "IterationRecord",
    "RunDetail",
    "RunSummary",
    "StoredImageRef",
    "checkpoint_path_for",
    "create_database_engine",
    "default_database_url",
    "default_image_root",
]
