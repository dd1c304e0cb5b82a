"""Calibration: measured GPU and serving data, loaded into tidy tables (see :mod:`calibration.schema`)."""
