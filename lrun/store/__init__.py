"""HDF5 trajectory storage: one SWMR file per simulator rank, a virtual master file, a reader."""

from lrun.store.reader import RunStore, StoreError
from lrun.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "RunStore", "StoreError"]
