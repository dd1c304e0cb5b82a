"""Request traces: the Azure 2023 traces against their README, rescaling, the CSV schema and its
errors, synthetic Poisson traces."""

import math

import numpy as np
import pytest

from calibration.loaders import SHARED_DATA
from jaxmodel.serving import trace as tr
from jaxmodel.serving.trace import Trace

AZURE = SHARED_DATA / "azure-llm-trace-2023"
needs_azure = pytest.mark.skipif(not AZURE.is_dir(), reason=f"Azure LLM trace data not found at {AZURE}")

# From the data folder's README: rows, minutes, and mean/p50/p90/p99/max of prompt and output tokens.
README = {
    "code": dict(rows=8819, minutes=57.3, rate=2.57, input=(2048, 1469, 5188, 7436, 7437),
                 output=(28, 13, 55, 251, 1899)),
    "conv": dict(rows=19366, minutes=58.4, rate=5.53, input=(1155, 1020, 2735, 4142, 14050),
                 output=(211, 129, 424, 601, 1000)),
}
STATS = ("mean", "p50", "p90", "p99", "max")


@pytest.fixture(scope="module")
def azure_traces():
    if not AZURE.is_dir():
        pytest.skip(f"Azure LLM trace data not found at {AZURE}")
    return {kind: tr.azure(kind, data_dir=SHARED_DATA) for kind in tr.TRACES}


def small():
    return Trace([0.0, 1.0, 1.0, 3.0, 7.0], [10, 20, 30, 40, 50], [1, 2, 3, 4, 5], "small")


# ---------------------------------------------------------------- Azure traces

@needs_azure
@pytest.mark.parametrize("kind", tr.TRACES)
def test_azure_matches_readme(azure_traces, kind):
    t, ref = azure_traces[kind], README[kind]
    assert len(t) == ref["rows"] and t.name == f"azure-{kind}"
    assert t.arrival_s[0] == 0.0 and np.all(np.diff(t.arrival_s) >= 0)
    assert t.arrival_s.dtype == np.float64 and t.input_tokens.dtype == t.output_tokens.dtype == np.int64
    assert abs(t.duration_s / 60 - ref["minutes"]) <= 0.1
    s = t.summary()
    assert s["requests"] == ref["rows"] and s["duration_s"] == t.duration_s
    assert abs(s["rate"] - ref["rate"]) <= 0.005
    for field, key in (("input_tokens", "input"), ("output_tokens", "output")):
        for stat, want in zip(STATS, ref[key]):
            assert abs(s[f"{field}_{stat}"] - want) <= 0.5, (field, stat)  # README rounds to whole tokens
        assert t.input_tokens.min() >= 1 and t.output_tokens.min() >= 1


@needs_azure
def test_azure_aliases_and_default_dir(monkeypatch, azure_traces):
    monkeypatch.delenv(tr.DATA_ENV, raising=False)
    assert tr._default_data_dir() == SHARED_DATA  # the library's default is the tests' convention
    assert tr.azure("coding") == azure_traces["code"]
    assert tr.azure("Conversation", data_dir=AZURE) == azure_traces["conv"]  # the folder itself works too


def test_azure_timestamps_exact(tmp_path, monkeypatch):
    # 7 fractional digits (100 ns) and a midnight rollover, read through the environment variable.
    folder = tmp_path / "azure-llm-trace-2023"
    folder.mkdir()
    (folder / "AzureLLMInferenceTrace_code.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.9999998,5,1\n"
        "2023-11-16 23:59:59.9999999,6,2\n"
        "2023-11-17 00:00:01.2345678,7,3\n")
    monkeypatch.setenv(tr.DATA_ENV, str(tmp_path))
    t = tr.azure("code")
    np.testing.assert_allclose(t.arrival_s, [0.0, 1e-7, 1.234568], rtol=0, atol=1e-13)
    assert t.input_tokens.tolist() == [5, 6, 7] and t.output_tokens.tolist() == [1, 2, 3]


def test_azure_missing_data_and_bad_kind(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"(?s){tmp_path}.*{tr.DATA_ENV}"):
        tr.azure("conv", data_dir=tmp_path)
    monkeypatch.setenv(tr.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tr.azure("code")
    with pytest.raises(ValueError, match="kind"):
        tr.azure("chat", data_dir=tmp_path)


# ---------------------------------------------------------------- Trace

def test_trace_basics():
    t = small()
    assert len(t) == 5 and t.duration_s == 7.0 and t.rate == 4 / 7
    assert math.isnan(t.head(1).rate)
    assert t.head(2).input_tokens.tolist() == [10, 20]
    w = t.window(1.0, 7.0)  # half-open: 7.0 is out; re-based so the first arrives at 0
    assert w.arrival_s.tolist() == [0.0, 0.0, 2.0] and w.output_tokens.tolist() == [2, 3, 4]
    frame = t.to_frame()
    assert list(frame.columns) == ["arrival_s", "input_tokens", "output_tokens"]
    assert frame["input_tokens"].dtype == np.int64 and frame["arrival_s"].tolist() == t.arrival_s.tolist()
    s = t.summary()
    assert (s["input_tokens_mean"], s["input_tokens_p50"], s["output_tokens_max"]) == (30.0, 30.0, 5)
    with pytest.raises(ValueError):
        t.arrival_s[0] = 1.0  # read-only: a Trace is a value
    with pytest.raises(ValueError, match="window"):
        t.window(8.0, 9.0)
    with pytest.raises(ValueError, match="n must"):
        t.head(0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(arrival_s=[0.0, 2.0, 1.0]), "arrival_s"),
    (dict(arrival_s=[-1.0, 0.0, 1.0]), "arrival_s"),
    (dict(input_tokens=[1, 0, 1]), "input_tokens"),
    (dict(output_tokens=[1.0, 2.5, 1.0]), "output_tokens"),
    (dict(output_tokens=[1, 1]), "output_tokens"),
])
def test_trace_validates(kwargs, field):
    args = dict(arrival_s=[0.0, 1.0, 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 2, 3]) | kwargs
    with pytest.raises(ValueError, match=f"Trace.{field}"):
        Trace(**args)


# ---------------------------------------------------------------- rescale

@needs_azure
@pytest.mark.parametrize("kind", tr.TRACES)
def test_rescale_to_70(azure_traces, kind):
    t = azure_traces[kind]
    r = tr.rescale(t, 70.0)
    assert abs(r.rate / 70.0 - 1) <= 1e-9
    assert r.arrival_s[0] == 0.0 and np.all(np.diff(r.arrival_s) >= 0)
    np.testing.assert_array_equal(r.input_tokens, t.input_tokens)
    np.testing.assert_array_equal(r.output_tokens, t.output_tokens)
    factor = t.rate / 70.0
    # Every gap scaled by one factor (burstiness kept); atol: float64 spacing of ~3500 s arrivals.
    np.testing.assert_allclose(np.diff(r.arrival_s), factor * np.diff(t.arrival_s), rtol=1e-9, atol=1e-12)
    assert np.array_equal(np.argsort(r.arrival_s, kind="stable"), np.argsort(t.arrival_s, kind="stable"))


def test_rescale_keeps_start_and_validates():
    t = Trace([2.0, 3.0, 5.0], [1, 1, 1], [1, 1, 1])
    r = tr.rescale(t, 4.0)
    np.testing.assert_allclose(r.arrival_s, [2.0, 2.0 + 1 / 6, 2.5], rtol=1e-15)  # gaps 1, 2 -> 1/6, 2/6
    assert r.rate == 4.0
    for bad in (0.0, -1.0, math.nan, math.inf, "70", None, True):
        with pytest.raises(ValueError, match="rate"):
            tr.rescale(t, bad)
    with pytest.raises(ValueError, match="rate"):
        tr.rescale(t.head(1), 1.0)


# ---------------------------------------------------------------- CSV

def test_csv_round_trip(tmp_path):
    t = tr.poisson(2000, 37.0, lambda rng, n: rng.integers(1, 9000, n), 7, seed=3)
    path = tr.save_csv(t, tmp_path / "mine.csv")
    back = tr.load_csv(path)
    assert back.name == "mine"
    for field in tr.COLUMNS:
        np.testing.assert_array_equal(getattr(back, field), getattr(t, field))
        assert getattr(back, field).dtype == getattr(t, field).dtype


@needs_azure
def test_csv_round_trip_azure(tmp_path, azure_traces):
    t = azure_traces["conv"]
    assert tr.load_csv(tr.save_csv(t, tmp_path / "azure-conv.csv")) == t


def test_csv_extra_columns_and_whole_floats(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text("id,arrival_s,input_tokens,output_tokens,note\n7,0,12.0,3,x\n8,0.5,4,1e2,y\n")
    t = tr.load_csv(path)
    assert t.arrival_s.tolist() == [0.0, 0.5] and t.input_tokens.tolist() == [12, 4]
    assert t.output_tokens.tolist() == [3, 100]


GOOD_HEADER = "arrival_s,input_tokens,output_tokens\n"


@pytest.mark.parametrize("text, column, problem, row", [
    ("arrival_s,input_tokens\n0,1\n", "output_tokens", "missing column", None),
    (GOOD_HEADER + "0,1,1\n0.5,abc,1\n", "input_tokens", "non-numeric", 1),
    (GOOD_HEADER + "0,1,1\nsoon,1,1\n", "arrival_s", "non-numeric", 1),
    (GOOD_HEADER + "0,1,1\n1,1,1\n2,-3,1\n", "input_tokens", "below 1", 2),
    (GOOD_HEADER + "0,1,0\n", "output_tokens", "below 1", 0),
    (GOOD_HEADER + "0,1,1\n1,1,2.5\n", "output_tokens", "non-integer", 1),
    (GOOD_HEADER + "0,1,1\n2,1,1\n1,1,1\n", "arrival_s", "decrease", 2),
    (GOOD_HEADER + "0,1,1\n1,,1\n", "input_tokens", "NaN", 1),
    (GOOD_HEADER + "0,1,1\nnan,1,1\n", "arrival_s", "NaN", 1),
    (GOOD_HEADER + "-1,1,1\n", "arrival_s", "negative", 0),
    (GOOD_HEADER + "0,inf,1\n", "input_tokens", "infinite", 0),
])
def test_csv_errors_name_file_column_row(tmp_path, text, column, problem, row):
    path = tmp_path / "bad_trace.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        tr.load_csv(path)
    msg = str(info.value)
    assert "bad_trace.csv" in msg and f"'{column}'" in msg and problem in msg, msg
    if row is not None:
        assert f"row {row}" in msg, msg


def test_csv_reports_every_bad_column(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text(GOOD_HEADER + "1,1,1\n0,0,1\n")
    with pytest.raises(ValueError, match="(?s)'arrival_s'.*row 1.*'input_tokens'.*row 1"):
        tr.load_csv(path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        tr.load_csv(tmp_path / "empty.csv")


# ---------------------------------------------------------------- poisson

def test_poisson_rate():
    n, rate = 20000, 70.0
    t = tr.poisson(n, rate, 128, 16, seed=11)
    gaps = np.diff(t.arrival_s)
    assert t.arrival_s[0] == 0.0 and np.all(gaps >= 0) and len(t) == n
    stderr = (1 / rate) / math.sqrt(n - 1)  # exponential: std = mean
    assert abs(gaps.mean() - 1 / rate) <= 4 * stderr
    assert abs(gaps.std() * rate - 1) < 0.05  # exponential, not e.g. uniform gaps
    assert np.all(t.input_tokens == 128) and np.all(t.output_tokens == 16)
    assert tr.poisson(n, rate, 128, 16, seed=11) == t  # reproducible
    assert tr.poisson(n, rate, 128, 16, seed=12) != t


def test_poisson_length_sources():
    pool = np.array([3, 50, 700])
    t = tr.poisson(500, 2.0, pool, lambda rng, n: rng.integers(1, 5, size=n), seed=1, name="syn")
    assert t.name == "syn"
    assert set(t.input_tokens.tolist()) == {3, 50, 700}  # only the array's values, all of them (n=500)
    assert t.output_tokens.min() >= 1 and t.output_tokens.max() <= 4
    one = tr.poisson(1, 5.0, 1, 1)
    assert len(one) == 1 and one.arrival_s.tolist() == [0.0]


@pytest.mark.parametrize("kwargs, field", [
    (dict(n=0), "n"), (dict(n=2.5), "n"), (dict(n=True), "n"),
    (dict(rate=0.0), "rate"), (dict(rate=-3.0), "rate"), (dict(rate=math.nan), "rate"),
    (dict(input_tokens=0), "input_tokens"), (dict(input_tokens=np.array([4, 0])), "input_tokens"),
    (dict(input_tokens=np.array([], dtype=int)), "input_tokens"),
    (dict(output_tokens=lambda rng, n: np.ones(n + 1)), "output_tokens"),
    (dict(output_tokens="many"), "output_tokens"),
])
def test_poisson_validates(kwargs, field):
    args = dict(n=10, rate=1.0, input_tokens=8, output_tokens=8) | kwargs
    with pytest.raises(ValueError, match=field):
        tr.poisson(**args)


def test_resample_draws_lengths_from_the_trace_at_a_poisson_rate():
    source = tr.Trace(np.array([0.0, 5.0, 9.0]), np.array([10, 200, 3000]), np.array([1, 7, 90]), "mine")
    out = tr.resample(source, 50.0, n=20_000, seed=4)
    assert len(out) == 20_000 and out.name == "mine~poisson@50rps"
    assert set(out.input_tokens) == {10, 200, 3000} and set(out.output_tokens) <= {1, 7, 90}
    gaps = np.diff(out.arrival_s)
    # Exponential gaps of mean 1/50 s: mean within 3 standard errors, coefficient of variation ~1.
    assert abs(gaps.mean() - 0.02) < 3 * 0.02 / np.sqrt(len(gaps))
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03
    assert len(tr.resample(source, 1.0)) == 3  # as many requests as the trace by default
    with pytest.raises(ValueError, match="resample: rate must be finite and > 0"):
        tr.resample(source, 0.0)
