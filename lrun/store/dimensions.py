"""Named axes for lrun's HDF5 files: netCDF-4 dimension scales that h5netcdf, xarray and netCDF tools read.

Every scale lives in the root group, so `steps/`, `steps/reward_terms/` and `episodes/` share them (netCDF looks
a dimension up in the group and its ancestors). The row axes `step` and `episode` are unlimited scales that hold
no data: their length is that of the datasets attached to them, so a rank file that grows (or is cut back on
`--resume`) never has to touch them. Axes with labels (muscle names, observation names, x/y/radius, left/right)
are coordinate variables: string scales whose values are the labels.

>>> import xarray as xr
>>> tree = xr.open_datatree("runs/tiny/trajectories/master.h5", engine="h5netcdf")
>>> tree["steps"].excitations.sel(action="glut_max_r")       # one muscle's excitation over every step
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from lrun.store.schema import FIXED_LABELS, ROW_DIMS, dimension_names

#: netCDF-4 marks a dimension without a coordinate variable by this prefix of the scale's NAME attribute.
NOT_A_VARIABLE = "This is a netCDF dimension but not a netCDF variable."
#: Attributes that tie datasets to scales: they hold object references into one file, never copied across files.
SCALE_ATTRIBUTES = ("DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid")


def datasets_in(group: h5py.Group) -> dict[str, h5py.Dataset]:
    """Every dataset below `group`, by path relative to it (e.g. 'reward_terms/delta_x')."""
    found: dict[str, h5py.Dataset] = {}
    group.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _scale(f: h5py.File, dim: str, size: int, labels: Sequence[str] | None) -> h5py.Dataset:
    """The root-level scale named `dim`, created on first use (`step` and `episode`: unlimited, no data)."""
    if dim in f:
        scale = f[dim]
        if dim not in ROW_DIMS.values() and scale.shape[0] != size:
            raise ValueError(
                f"{f.filename}: axis {dim!r} has length {scale.shape[0]} in one dataset, {size} in another"
            )
        return scale
    if dim in ROW_DIMS.values():
        scale = f.create_dataset(dim, shape=(0,), maxshape=(None,), dtype="i1", chunks=(1,))
        scale.make_scale(f"{NOT_A_VARIABLE}{0:10d}")
    elif labels is not None:
        if len(labels) != size:
            raise ValueError(f"{len(labels)} labels for axis {dim!r} of length {size}: {list(labels)}")
        scale = f.create_dataset(dim, data=np.array(list(labels), dtype=object), dtype=h5py.string_dtype())
        scale.make_scale(dim)
    else:
        scale = f.create_dataset(dim, shape=(size,), dtype="i1")  # never written: no storage
        scale.make_scale(f"{NOT_A_VARIABLE}{size:10d}")
    return scale


def attach_dimensions(f: h5py.File, labels: Mapping[str, Sequence[str]] | None = None) -> None:
    """Name every axis of every known dataset in steps/ and episodes/ (call before SWMR mode; idempotent).

    `labels` maps an axis name (`observation`, `action`) to its labels; `obstacle_field` and `leg` are always
    labelled. Datasets this schema does not know are left alone.
    """
    every_label = {**FIXED_LABELS, **(labels or {})}
    for group in ROW_DIMS:
        if group not in f:
            continue
        for name, ds in datasets_in(f[group]).items():
            dims = dimension_names(group, name)
            if dims is None or len(dims) != ds.ndim:
                continue
            for axis, dim in enumerate(dims):
                scale = _scale(f, dim, ds.shape[axis], every_label.get(dim))
                if not ds.dims[axis]:  # already attached when called again
                    ds.dims[axis].attach_scale(scale)


def stored_labels(f: h5py.File) -> dict[str, list[str]]:
    """The labelled axes of a file (axis name -> labels), to carry them into a rewritten or joined file."""
    found = {}
    for name, obj in f.items():
        if isinstance(obj, h5py.Dataset) and obj.is_scale and h5py.check_string_dtype(obj.dtype) is not None:
            found[name] = [value.decode() if isinstance(value, bytes) else str(value) for value in obj[:]]
    return found


def copy_attributes(source: h5py.HLObject, target: h5py.HLObject) -> None:
    """Copy an object's attributes except the dimension-scale bookkeeping (references into the source file)."""
    for key, value in source.attrs.items():
        if key not in SCALE_ATTRIBUTES:
            target.attrs[key] = value
