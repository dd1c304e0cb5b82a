"""Beam search (Workload.beam_width): the decode step runs every beam, the KV cache holds each
prompt once and every beam's generated tokens (GenZ's 2·B·(τ_p + S_b·τ_d)·H_kv·D/H·L)."""

import pytest

import jaxmodel as jm


@pytest.fixture(scope="module")
def setup():
    return jm.load_model("llama-3-8b"), jm.load_hardware("h100-sxm").datasheet()


def test_kv_cache_matches_genz_formula(setup):
    arch, system = setup
    b, tp_, td, beams, tp = 4, 2048, 512, 4, 2
    r = jm.predict(arch, jm.Workload(batch=b, input_tokens=tp_, output_tokens=td, tp=tp, beam_width=beams), system)
    # llama-3-8b: 32 layers, 8 KV heads of 128 (= H_kv·D), K and V, 2 bytes, split over TP 2.
    expected = 2 * b * (tp_ + beams * td) * 8 * 128 * 32 * 2 / tp
    assert r["kv_cache_bytes"] == pytest.approx(expected, rel=1e-6)


def test_decode_step_runs_every_beam(setup):
    arch, system = setup
    beams = jm.predict(arch, jm.Workload(batch=4, input_tokens=1024, output_tokens=256, beam_width=8), system)
    wide = jm.predict(arch, jm.Workload(batch=32, input_tokens=1024, output_tokens=256), system)
    plain = jm.predict(arch, jm.Workload(batch=4, input_tokens=1024, output_tokens=256), system)
    assert beams["tpot_s"] == pytest.approx(wide["tpot_s"], rel=1e-6)  # 4 x 8 beams = 32 sequences
    assert beams["prefill_s"] == pytest.approx(plain["prefill_s"], rel=1e-6)  # prompts prefilled once
    # One output sequence per request: 4 tokens per step, not 32.
    assert beams["decode_throughput_tok_s"] == pytest.approx(4 / beams["tpot_s"], rel=1e-6)
    assert beams["tpot_s"] > plain["tpot_s"]


def test_more_beams_fit_fewer_requests(setup):
    arch, system = setup
    batches = [jm.predict(arch, jm.Workload(batch=1, input_tokens=4096, output_tokens=4096, beam_width=s),
                          system)["max_batch"] for s in (1, 2, 4, 8)]
    assert batches == sorted(batches, reverse=True) and batches[-1] < batches[0]


def test_beam_width_must_be_a_whole_number():
    with pytest.raises(ValueError, match="Workload.beam_width"):
        jm.Workload(beam_width=0)
    with pytest.raises(ValueError, match="Workload.beam_width"):
        jm.Workload(beam_width=1.5)
