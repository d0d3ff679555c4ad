"""Loaded by every Python process when this directory is on PYTHONPATH (`make test-bare`): the optional extras
(TensorBoard, W&B, the video encoder, pandas, xarray, h5netcdf) behave as if they were not installed, so the
suite shows that lrun and its tests work without them.

A None entry in sys.modules is Python's own "not importable" mark: `import x` raises ModuleNotFoundError and
`importlib.util.find_spec("x")` returns None, exactly as for a package that is absent.
"""

import sys

BLOCKED = (
    *("tensorboard", "torch.utils.tensorboard", "wandb"),
    *("imageio_ffmpeg", "moviepy"),
    *("pandas", "xarray", "h5netcdf"),
)

for name in BLOCKED:
    sys.modules[name] = None
