"""Serving clusters: request traces, iteration-level simulation of machine pools (JAX, with a
plain-Python reference), disaggregated and co-located schedulers, SLO metrics and provisioning."""
