"""Loaders of measured data into the tidy tables of :mod:`calibration.schema`."""

from pathlib import Path

#: The shared measured-data folder next to the project checkout (``<repo>/../shared/data``),
#: every loader's default root.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
