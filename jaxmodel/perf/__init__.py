"""Per-operator time models: roofline for compute and memory, alpha-beta for collectives."""
