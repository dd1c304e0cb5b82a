"""The tidy measured-data tables: conforming, typing and unit checks."""

import numpy as np
import pandas as pd
import pytest

from calibration import schema


def test_conform_fills_types_and_orders_columns():
    table = schema.kernels(pd.DataFrame({"op": ["gemm"], "gpu": ["h100_sxm"], "m": [8], "n": [4096], "k": [4096],
                                         "measured_s": [2.5e-5], "source": ["user"]}))
    assert list(table.columns) == list(schema.KERNEL_COLUMNS)
    assert table.loc[0, "m"] == 8.0 and np.isnan(table.loc[0, "seq_kv"]) and table.loc[0, "kernel"] == ""
    assert table["measured_s"].dtype == np.float64


@pytest.mark.parametrize("frame,message", [
    ({"op": ["gemm"], "measured_s": [25.0 * 1e3]}, "measured_s must be a time in seconds"),  # ms read as s
    ({"op": ["gemm"], "measured_s": [np.nan]}, "measured_s must be a time in seconds"),
    ({"op": ["matmul"], "measured_s": [1e-3]}, "unknown op"),
    ({"op": ["gemm"], "measured_s": [1e-3], "m": [-1.0]}, "m must be >= 0"),
])
def test_bad_tables_name_the_column(frame, message):
    with pytest.raises(ValueError, match=message):
        schema.kernels(pd.DataFrame(frame))


def test_end_to_end_table_allows_missing_ttft_but_not_latency():
    ok = schema.end_to_end(pd.DataFrame({"model": ["m"], "latency_s": [3.2]}))
    assert np.isnan(ok.loc[0, "ttft_s"])
    with pytest.raises(ValueError, match="latency_s"):
        schema.end_to_end(pd.DataFrame({"model": ["m"], "ttft_s": [0.1]}))
