"""The JAX pool event loop (:func:`simulate_pool`) against the plain-Python reference
(:func:`simulate_pool_reference`) on random traces, hand-computed oracles and invariants."""

import functools
import itertools
import math

import jax
import numpy as np
import pytest

from jaxmodel.serving import reference
from jaxmodel.serving.pool import (
    REJECTED,
    SERVED,
    PoolMachines,
    PoolRequests,
    simulate_pool,
)
from jaxmodel.serving.reference import simulate_pool_reference

M = 6  # machines in every random case (absent ones masked), so shapes stay fixed
N_CHOICES = (12, 24)  # request counts: one compile per (N, slots, chunked)
SLOT_CHOICES = (2, 8)
SEEDS = range(40)
TRACES = 4  # per seed: compiling dominates the runtime, so more traces per test cost little


def iteration_time(kind, s):
    """Uses every stats field; plain arithmetic, so it runs on Python floats and traced arrays."""
    return (1 + 0.5 * kind) * (0.01 + 5e-4 * s.prefill_seqs + 1e-3 * s.prefill_tokens
                               + 1e-5 * s.prefill_sq_tokens + 2e-6 * s.prefill_past_tokens
                               + 1e-3 * s.prefill_finishing + 2e-3 * s.decode_seqs + 1e-5 * s.decode_context)


def oracle_time(kind, s):
    """Dyadic coefficients, so hand-computed times are exact in binary floating point."""
    return (1 + kind) * (1 + s.prefill_tokens / 8 + s.decode_seqs / 4)


@functools.cache
def _jitted(time_fn, slots, chunked):
    # Cached so every case of one static combination reuses the compiled loop (budget is traced).
    return jax.jit(functools.partial(simulate_pool, iteration_time=time_fn, slots=slots, chunked=chunked))


def run_jax(requests, machines, time_fn=iteration_time, *, slots, budget, chunked):
    with jax.enable_x64(True):
        out = _jitted(time_fn, slots, chunked)(requests, machines, budget=budget)
        return jax.tree_util.tree_map(np.asarray, out)


def random_case(seed, trace):
    """A small random pool and trace; knobs drawn so that slots, memory, budgets, rejections,
    ties and empty requests all come up over the seeds."""
    rng = np.random.default_rng([seed, trace])
    n = int(rng.choice(N_CHOICES))
    slots = int(rng.choice(SLOT_CHOICES))
    chunked = bool(trace % 2)  # both modes for every seed
    budget = int(rng.integers(8, 65))

    present = np.zeros(M, bool)
    present[rng.choice(M, int(rng.integers(1, M + 1)), replace=False)] = True
    kind = rng.integers(0, 2, M).astype(np.int32)
    # Whole numbers of bytes keep the reserved-byte sums exact in both simulators (no round-off
    # can make them disagree on a feasibility test at its boundary).
    capacity = rng.integers(20, 101, M).astype(float)
    capacity[~present] = 1000.0  # larger than anything: routing there or sizing by it is a bug

    gap = float(rng.choice([0.002, 0.01, 0.05, 0.3], p=[0.3, 0.3, 0.25, 0.15]))  # heavy to light load
    gaps = rng.exponential(gap, n)
    gaps[rng.random(n) < 0.25] = 0.0  # duplicate timestamps
    arrival = np.cumsum(gaps)
    style = rng.integers(3)
    if style == 0:  # few distinct prompts: identical iterations, hence tied ends
        prefill = rng.choice([4, 8], n).astype(float)
        context = np.zeros(n)
    else:
        if style == 1:
            prefill = rng.integers(1, 81, n).astype(float)
        else:  # around the budget: whether a prompt still fits beside others decides batches
            prefill = rng.integers(max(budget - 8, 1), budget + 3, n).astype(float)
        context = rng.integers(0, 51, n).astype(float)
    decode = rng.integers(0, 13, n).astype(float)
    prefill[rng.random(n) < 0.15] = 0.0  # decode-only (or, with decode 0, nothing to do)
    decode[rng.random(n) < 0.1] = 0.0
    biggest = capacity[present].max()
    # Small reservations on some traces, so that slots rather than bytes bind.
    reserve = rng.integers(0, int(biggest * rng.choice([0.2, 1.0])) + 1, n).astype(float)
    reserve[rng.random(n) < 0.1] = biggest  # exactly the largest capacity: fits only when empty
    reserve[rng.random(n) < 0.08] = biggest + rng.integers(1, 20)  # fits nowhere: rejected
    requests = PoolRequests(arrival, prefill, context, decode, reserve)
    machines = PoolMachines(present, capacity, kind)
    return requests, machines, {"slots": slots, "budget": budget, "chunked": chunked}


def grid_case(seed, trace):
    """A busy trace on a 1/4 s grid, to be timed by :func:`oracle_time` (multiples of 1/8 s too):
    few distinct prompts on machines of one kind, so arrivals meet iteration ends and machines
    end together, exactly."""
    rng = np.random.default_rng([seed, trace, 1])
    n = 12
    present = rng.random(M) < 0.6
    present[rng.integers(M)] = True
    capacity = rng.choice([8.0, 16.0], M)
    arrival = np.cumsum(rng.integers(0, 2, n) / 4)
    prefill = rng.choice([0, 8, 16], n, p=[0.2, 0.5, 0.3]).astype(float)
    decode = rng.integers(0, 4, n).astype(float)
    reserve = rng.choice([0.0, 4.0, 8.0, 17.0], n, p=[0.2, 0.5, 0.25, 0.05])
    requests = PoolRequests(arrival, prefill, np.zeros(n), decode, reserve)
    machines = PoolMachines(present, capacity, np.zeros(M, np.int32))
    return requests, machines, {"slots": 2, "budget": 16, "chunked": bool(trace % 2)}


def assert_same(got, want):
    np.testing.assert_array_equal(got.machine, want.machine)
    np.testing.assert_array_equal(got.status, want.status)
    for name in ("routed_s", "first_token_s", "done_s"):
        # equal_nan also requires NaNs (never set) at the same positions.
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12, atol=0,
                                   equal_nan=True, err_msg=name)
    assert int(got.events) == int(want.events)


class CapacitySpy:
    """Wraps the reference's Machine to check every routing against slots and capacity, and
    to record why the head request could not be routed (one feasibility scan per event)."""

    def __init__(self, monkeypatch):
        self.scans = []  # per can_take call: (slot free, bytes fit)
        take, can_take = reference.Machine.take, reference.Machine.can_take

        def checked_take(machine, request, now):
            take(machine, request, now)
            assert len(machine.held) <= machine.slots
            assert machine.reserved <= machine.capacity

        def logged_can_take(machine, reserve):
            self.scans.append((len(machine.held) < machine.slots, machine.reserved + reserve <= machine.capacity))
            return can_take(machine, reserve)

        monkeypatch.setattr(reference.Machine, "take", checked_take)
        monkeypatch.setattr(reference.Machine, "can_take", logged_can_take)

    def blocked(self, n_present):
        """Counts of scans where no machine was feasible: because of memory on some machine
        with a free slot, or because every slot was taken."""
        memory = slots = 0
        for i in range(0, len(self.scans), n_present):
            scan = self.scans[i:i + n_present]
            if not any(free and fits for free, fits in scan):
                memory += any(free and not fits for free, fits in scan)
                slots += not any(free for free, _ in scan)
        return memory, slots


def check_invariants(requests, machines, result, *, slots, budget, chunked):
    served = result.status == SERVED
    assert np.all(result.machine[served] >= 0) and np.all(machines.present[result.machine[served]])
    assert np.all(result.machine[~served] == -1)
    assert np.all(np.isnan(result.routed_s[~served]) & np.isnan(result.done_s[~served]))
    r, f, d = result.routed_s[served], result.first_token_s[served], result.done_s[served]
    assert not np.any(np.isnan(d)), "a served request never finished"
    assert np.all(requests.arrival_s[served] <= r) and np.all(r <= f) and np.all(f <= d)
    assert np.all(np.diff(r) >= 0), "requests are routed first come, first served"
    # Lower bound from the request's own iterations: each lasts at least the base time plus its
    # own share (prefill tokens, one prefill sequence, the finishing row, one decode).
    for i in np.flatnonzero(served):
        k = result.machine[i]
        speed = 1 + 0.5 * machines.kind[k]
        p, dec = requests.prefill[i], requests.decode[i]
        chunks = (math.ceil(p / budget) if chunked else 1) if p > 0 else 0
        prefill_lb = speed * (chunks * (0.01 + 5e-4) + 1e-3 * p + (1e-3 if p > 0 else 0.0))
        decode_lb = speed * dec * (0.01 + 2e-3)
        assert result.first_token_s[i] - result.routed_s[i] >= prefill_lb * (1 - 1e-9)
        assert result.done_s[i] - result.first_token_s[i] >= decode_lb * (1 - 1e-9)
        if p == 0:
            assert result.first_token_s[i] == result.routed_s[i]
    # Capacity replayed from the outputs alone: requests still held (done strictly later) when
    # another is routed to the same machine. (Ties at equal times are left to CapacitySpy.)
    holds = served & ((requests.prefill > 0) | (requests.decode > 0))
    for i in np.flatnonzero(holds):
        k = result.machine[i]
        held = holds & (result.machine == k) & (np.arange(len(holds)) <= i) & (result.done_s > result.routed_s[i])
        assert held.sum() <= slots
        assert requests.reserve_bytes[held].sum() <= machines.capacity_bytes[k]


@pytest.mark.parametrize("seed", SEEDS)
def test_jax_loop_matches_reference(seed, monkeypatch):
    CapacitySpy(monkeypatch)  # asserts slots and capacity at every routing of the reference
    for trace in range(TRACES):
        requests, machines, settings = random_case(seed, trace)
        want = simulate_pool_reference(requests, machines, iteration_time, **settings)
        got = run_jax(requests, machines, **settings)
        try:
            assert_same(got, want)
            check_invariants(requests, machines, got, **settings)
        except AssertionError as e:
            raise AssertionError(f"trace {trace} of seed {seed}, {settings}: {e}") from e


@pytest.mark.parametrize("seed", range(10))
def test_jax_loop_matches_reference_on_exact_ties(seed, monkeypatch):
    """Dyadic times make every sum exact, so arrivals coincide with iteration ends and ends with
    each other: the tie rules (routing first, lowest index) decide the outcome."""
    CapacitySpy(monkeypatch)
    for trace in range(10):  # a tie decides the outcome in about one trace in ten
        requests, machines, settings = grid_case(seed, trace)
        want = simulate_pool_reference(requests, machines, oracle_time, **settings)
        got = run_jax(requests, machines, oracle_time, **settings)
        try:
            np.testing.assert_array_equal(got.routed_s, want.routed_s)  # exact: no rounding at all
            np.testing.assert_array_equal(got.first_token_s, want.first_token_s)
            np.testing.assert_array_equal(got.done_s, want.done_s)
            assert_same(got, want)
        except AssertionError as e:
            raise AssertionError(f"trace {trace} of seed {seed}, {settings}: {e}") from e


def test_random_cases_cover_the_contract(monkeypatch):
    """The random traces do exercise what the comparison is meant to check."""
    counts = ("rejected", "nothing", "decode_only", "tied_arrivals", "over_budget_chunked",
              "over_budget_whole", "memory_blocked", "slot_blocked", "absent")
    seen = {name: 0 for name in counts} | {"kinds": set()}
    spy = CapacitySpy(monkeypatch)
    for seed, trace in itertools.product(SEEDS, range(TRACES)):
        requests, machines, settings = random_case(seed, trace)
        spy.scans.clear()
        res = simulate_pool_reference(requests, machines, iteration_time, **settings)
        memory, slots = spy.blocked(int(machines.present.sum()))
        seen["memory_blocked"] += memory
        seen["slot_blocked"] += slots
        seen["rejected"] += int(np.sum(res.status == REJECTED))
        none = (requests.prefill == 0) & (requests.decode == 0)
        seen["nothing"] += int(np.sum(none & (res.status == SERVED)))
        seen["decode_only"] += int(np.sum((requests.prefill == 0) & (requests.decode > 0)))
        seen["tied_arrivals"] += int(np.sum(np.diff(requests.arrival_s) == 0))
        over = int(np.sum(requests.prefill > settings["budget"]))
        seen["over_budget_chunked" if settings["chunked"] else "over_budget_whole"] += over
        seen["absent"] += int(np.sum(~machines.present))
        seen["kinds"] |= set(machines.kind[machines.present].tolist())
    assert seen.pop("kinds") == {0, 1}
    assert all(v > 0 for v in seen.values()), seen


# Hand-computed oracles: oracle_time = (1 + kind) * (1 + prefill_tokens/8 + decode_seqs/4).

def _oracle(arrival, prefill, decode, reserve, *, context=None, capacity=(100.0,), kind=(0,),
            present=None, slots=4, budget=8, chunked):
    n = len(arrival)
    requests = PoolRequests(np.asarray(arrival, float), np.asarray(prefill, float),
                            np.zeros(n) if context is None else np.asarray(context, float),
                            np.asarray(decode, float), np.asarray(reserve, float))
    machines = PoolMachines(np.ones(len(capacity), bool) if present is None else np.asarray(present),
                            np.asarray(capacity, float), np.asarray(kind, np.int32))
    settings = {"slots": slots, "budget": budget, "chunked": chunked}
    return (simulate_pool_reference(requests, machines, oracle_time, **settings),
            run_jax(requests, machines, oracle_time, **settings))


def _expect(results, routed, first, done, machine, events):
    for res in results:
        np.testing.assert_array_equal(res.routed_s, routed)
        np.testing.assert_array_equal(res.first_token_s, first)
        np.testing.assert_array_equal(res.done_s, done)
        np.testing.assert_array_equal(res.machine, machine)
        np.testing.assert_array_equal(res.status, np.where(np.asarray(machine) < 0, REJECTED, SERVED))
        assert int(res.events) == events


def test_whole_prompts_long_prompt_runs_alone():
    # Budget 8, all arrive at 0. A (4 tokens) starts alone on the idle machine: 1 + 4/8 = 1.5.
    # At 1.5 A is done; B (12 > 8) is first without decodes so runs alone: 1 + 12/8 = 2.5 -> 4.0.
    # C (2 tokens) would fit beside B but may not overtake it: it runs next, 1 + 2/8 -> 5.25 (first
    # token), then decodes its one token: 1 + 1/4 -> 6.5. Events: 3 routings + 4 iteration ends.
    results = _oracle([0, 0, 0], [4, 12, 2], [0, 0, 1], [1, 1, 1], chunked=False)
    _expect(results, routed=[0, 0, 0], first=[1.5, 4.0, 5.25], done=[1.5, 4.0, 6.5], machine=[0, 0, 0], events=7)


def test_chunked_prompt_split_beside_a_decode():
    # Budget 8. A (3 tokens, 2 decodes) at 0: 1 + 3/8 = 1.375. B (10 tokens) arrives at 0.5, waits.
    # At 1.375 A has its first token; A decodes (1 of the budget) and B takes 7: 1 + 7/8 + 1/4 = 2.125
    # -> 3.5. Then A decodes again and B takes its last 3: 1 + 3/8 + 1/4 = 1.625 -> 5.125, when A
    # finishes its decodes and B its prompt. Events: 2 routings + 3 ends.
    results = _oracle([0, 0.5], [3, 10], [2, 0], [1, 1], chunked=True)
    _expect(results, routed=[0, 0.5], first=[1.375, 5.125], done=[5.125, 5.125], machine=[0, 0], events=5)


def test_memory_blocks_routing_until_a_request_leaves():
    # Capacity 10, both reserve 6: B cannot join A (12 > 10) although a slot is free.
    # A: 1 + 8/8 = 2.0; at 2.0 A leaves, then B is routed at 2.0: 1 + 4/8 -> 3.5.
    # Events: route A, end at 2.0 (machine left idle), route B, end at 3.5.
    results = _oracle([0, 0], [8, 4], [0, 0], [6, 6], capacity=(10.0,), chunked=True)
    _expect(results, routed=[0, 2.0], first=[2.0, 3.5], done=[2.0, 3.5], machine=[0, 0], events=4)


def test_rejection_empty_request_and_absent_machine():
    # Machine 0 is absent (its big capacity must not count); machine 1 (kind 1: times x2) holds 10.
    # A reserves 11: rejected. B has nothing to do: done on the spot at its arrival 1.0. C only
    # decodes 2 tokens (context 5): first token = routing = 1.0, then one decode-only run of two
    # iterations of 2(1 + 1/4) = 2.5 s each -> done at 6.0.
    # Events: 1 rejection, 2 routings, 1 run end.
    results = _oracle([0.0, 1.0, 1.0], [0, 0, 0], [0, 0, 2], [11, 1, 1], context=[0, 0, 5],
                      capacity=(1000.0, 10.0), kind=(0, 1), present=[False, True], chunked=True)
    nan = np.nan
    _expect(results, routed=[nan, 1.0, 1.0], first=[nan, 1.0, 1.0], done=[nan, 1.0, 6.0], machine=[-1, 1, 1],
            events=4)


def test_ties_go_to_routing_and_lowest_index():
    # Two equal machines, capacity 10; A, B identical at 0 (reserve 2, 4 tokens, 1 decode):
    # A -> machine 0 (both empty: lowest index), B -> machine 1 (load 0 < 0.2). Both end at
    # 1 + 4/8 = 1.5. C arrives at 1.5, the next end: routing wins the tie; A and B are still held,
    # loads are equal (0.2), so C goes to machine 0, which is busy: C waits for its next iteration.
    # Machine 0 ends first (tie, lowest index): A decodes and C prefills: 1 + 4/8 + 1/4 = 1.75 -> 3.25.
    # Then machine 1: B decodes, 1 + 1/4 -> 2.75 (done). At 3.25 A is done and C has its first
    # token; C is done after no decode. Events: 3 routings, 4 ends (1.5, 1.5, 2.75, 3.25).
    results = _oracle([0, 0, 1.5], [4, 4, 4], [1, 1, 0], [2, 2, 2], capacity=(10.0, 10.0), kind=(0, 0),
                      chunked=True)
    _expect(results, routed=[0, 0, 1.5], first=[1.5, 1.5, 3.25], done=[3.25, 2.75, 3.25], machine=[0, 1, 0],
            events=7)


@pytest.mark.parametrize("arrival_b", [2.0, 2.5])
def test_decode_run_stops_where_a_request_joins(arrival_b):
    # A decodes 4 tokens alone: one run of 4 iterations of 1 + 1/4 = 1.25 s, due to end at 5.0.
    # B (2 decode tokens) arrives at 2.0 (or exactly on the boundary 2.5): the run stops at the
    # first boundary at or after it, ceil(2.0 / 1.25) = 2 iterations -> 2.5. Then A (2 left) and B
    # decode together: 2 iterations of 1 + 2/4 = 1.5 s -> both done at 5.5.
    # Events: 2 routings, 2 run ends.
    results = _oracle([0.0, arrival_b], [0, 0], [4, 2], [1, 1], context=[3, 3], chunked=False)
    _expect(results, routed=[0.0, arrival_b], first=[0.0, arrival_b], done=[5.5, 5.5], machine=[0, 0], events=4)


def test_routing_prefers_the_shortest_prefill_queue_over_memory():
    # Capacity 100 each. A only decodes (reserve 50) -> machine 0 (both empty). B prefills 20
    # tokens (reserve 2): no prompt queued anywhere, so the lower load wins -> machine 1. C (4
    # tokens) at 0.1: machine 1 still has B's 20 tokens to prefill, machine 0 none -> machine 0,
    # although machine 1 has far more room (by memory alone C would queue behind B's prompt).
    ref, jax_res = _oracle([0.0, 0.0, 0.1], [0, 20, 4], [10, 1, 1], [50, 2, 2], context=[5, 0, 0],
                           capacity=(100.0, 100.0), kind=(0, 0), chunked=True)
    np.testing.assert_array_equal(ref.machine, [0, 1, 0])
    for field in ("routed_s", "first_token_s", "done_s", "machine", "status"):
        np.testing.assert_array_equal(getattr(jax_res, field), getattr(ref, field))
    # So C, on the other machine, has its first token before B has finished its prompt.
    assert ref.first_token_s[2] < ref.first_token_s[1]
