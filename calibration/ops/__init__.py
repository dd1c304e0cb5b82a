"""Per-kernel calibration: measured rows of the tidy kernel table turned into the inputs of a
:mod:`jaxmodel.kernels` model, fitted, and scored on held-out groups."""
