"""Per-kernel calibration: measured rows of the tidy kernel table turned into the inputs of a
:mod:`jaxmodel.kernels` model, fitted, and scored on held-out groups."""

import numpy as np


def roofline(r: dict) -> np.ndarray:
    """The uncalibrated roofline of rows given as kernel-model inputs (``flops``,
    ``bytes_moved``, ``peak_flops``, ``bandwidth_Bps``): exact maximum of FLOPs at peak and bytes
    at datasheet bandwidth (every efficiency 1, no overheads)."""
    return np.maximum(np.asarray(r["flops"]) / np.asarray(r["peak_flops"]),
                      np.asarray(r["bytes_moved"]) / np.asarray(r["bandwidth_Bps"]))
