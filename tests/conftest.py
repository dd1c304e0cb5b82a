import contextlib
import io
import os
import pathlib
import subprocess

# The suite compiles hundreds of small XLA programs and runs each briefly, so compile time is
# most of its wall time. XLA's cheapest backend optimization level skips LLVM optimization
# passes, and the CPU backend's older elemental emitters compile fused loops about twice as
# fast as its fusion emitters (jamba-v0.1 systolic: 5.0 s to 2.1 s). Both are code-generation
# choices, not model changes. Programs run slower (a bulk sweep by about a third), which these
# small tests never notice, so the library itself keeps XLA's defaults. A user's XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")

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


def run_cli(*args) -> subprocess.CompletedProcess:
    """``jaxmodel ARGS`` inside this process: exit code, stdout and stderr as a subprocess would give them.

    Only the entry point itself needs a fresh interpreter (tests/test_cli.py runs one); every other
    command test runs here, sharing the compiled programs instead of importing JAX again each time.
    """
    from jaxmodel.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors exit with 2
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
