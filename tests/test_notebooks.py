"""Every notebook in notebooks/ runs top to bottom at smoke size (JAXMODEL_NOTEBOOK_SMOKE=1).

Code cells are executed in order in one namespace, as a kernel would, without needing a
Jupyter kernel installed; figures go to the non-interactive Agg backend.
"""

import json
import pathlib

import pytest

from calibration.loaders import SHARED_DATA

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def run_notebook(path: pathlib.Path) -> dict:
    cells = json.loads(path.read_text())["cells"]
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)  # noqa: S102 - our own notebooks
    return namespace


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_at_smoke_size(path, monkeypatch):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"notebooks read measured data from {SHARED_DATA}, which is absent")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("JAXMODEL_NOTEBOOK_SMOKE", "1")
    monkeypatch.chdir(path.parent)
    import matplotlib.pyplot as plt

    try:
        namespace = run_notebook(path)
    finally:
        plt.close("all")
    assert namespace.get("SMOKE") is True, "the notebook must honour JAXMODEL_NOTEBOOK_SMOKE"


def test_there_is_a_calibration_notebook():
    assert any(p.name == "calibration.ipynb" for p in NOTEBOOKS)
