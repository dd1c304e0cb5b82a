"""Loaders of measured data into the tidy tables of :mod:`calibration.schema`."""
