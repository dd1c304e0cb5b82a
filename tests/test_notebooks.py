"""Every notebook in notebooks/ runs top to bottom at smoke size (JAXMODEL_NOTEBOOK_SMOKE=1).

Code cells are executed in order in one namespace, as a kernel would, without needing a
Jupyter kernel installed; figures go to the non-interactive Agg backend. A notebook that reads
measured data from ``../shared/data`` says so in its metadata (``"jaxmodel": {"needs_shared_data":
true}``) and is skipped when that directory is absent; the others always run.
"""

import json
import pathlib

import pytest

from calibration.loaders import SHARED_DATA

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def needs_shared_data(path: pathlib.Path) -> bool:
    return bool(json.loads(path.read_text()).get("metadata", {}).get("jaxmodel", {}).get("needs_shared_data", False))


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
    if needs_shared_data(path) and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads measured data from {SHARED_DATA}, which is absent")
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


def test_there_is_a_chip_sizing_notebook():
    path = next((p for p in NOTEBOOKS if p.name == "chip_sizing.ipynb"), None)
    assert path is not None
    assert not needs_shared_data(path), "chip sizing needs no measured data, so CI always runs it"


def test_the_calibration_notebook_is_marked_as_needing_shared_data():
    assert all(needs_shared_data(p) for p in NOTEBOOKS if p.name == "calibration.ipynb")
