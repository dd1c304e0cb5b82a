import pathlib

import jax
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
