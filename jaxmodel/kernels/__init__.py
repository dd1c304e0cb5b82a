"""Measured-kernel models: how real GEMM, attention and collective kernels fall short of the
roofline, as functions of their shape. Each model's parameters are positive array leaves that
:mod:`calibration` fits to measured kernel times; :class:`jaxmodel.Efficiency` carries a fitted
model, and the roofline engine then times every matching operator with it."""
