import os
import pathlib

# The suite compiles hundreds of small XLA programs and runs each briefly: XLA's cheapest
# backend optimization level cuts its wall time by about a tenth (numerics are unchanged:
# it only skips LLVM optimization passes). A user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import pytest

# Catch accidental broadcasting between arrays of different rank.
jax.config.update("jax_numpy_rank_promotion", "raise")

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def h100():
    import jaxmodel as jm

    return jm.load_hardware("h100-sxm").datasheet()


@pytest.fixture(scope="session")
def llama70b():
    import jaxmodel as jm

    return jm.load_model("llama-3-70b")
