"""Plain-Python reference simulator of one pool of serving machines.

:func:`jaxmodel.serving.pool.simulate_pool` runs the pool contract (the docstring of
:mod:`jaxmodel.serving.pool`) as a fixed-shape JAX ``lax.while_loop``: masked slot arrays,
argsorts and scatters, so that it jit-compiles once and vmaps. That form is fast but hard to
read and easy to get subtly wrong. This module is the same contract written the way one would
explain it: machines hold a list of requests in routing order, and a loop handles one event at
a time. It exists to be compared with the JAX loop (``tests/test_serving_pool.py``) and to
answer "what should happen here?" by reading rather than by tracing.

It only uses Python numbers inside the loop (numpy only to unpack inputs and pack results) and
performs the same float operations in the same order where the order matters (``now +
duration`` as one addition; a machine's reserved bytes grow by one request's reservation at
routing and shrink by the sum of the leaving requests' reservations at an iteration end), so
results agree with the JAX loop to float rounding. Sums of token counts are exact (whole
numbers), so the order of summation does not matter for them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np

from .pool import (
    REJECTED,
    SERVED,
    IterationStats,
    PoolMachines,
    PoolRequests,
    PoolResult,
)


@dataclasses.dataclass
class HeldRequest:
    """A request a machine holds, queued or running, with what it still has to do here."""

    index: int  # position in the pool's request arrays (= routing order)
    reserve: float  # device bytes held from routing until it leaves
    prefill_left: int
    decode_left: int
    context: float  # tokens cached so far (the prefix it arrived with, then its own)
    chunk: int = 0  # prefill tokens it processes in the running iteration
    decoding: bool = False  # whether it decodes a token in the running iteration

    @property
    def finished(self) -> bool:
        return self.prefill_left == 0 and self.decode_left == 0


class Machine:
    """One present machine: its requests in routing order, reserved bytes, running iteration."""

    def __init__(self, index: int, capacity: float, kind: int, slots: int):
        self.index = index  # position among all machines, present or not (results use it)
        self.capacity = capacity
        self.kind = kind
        self.slots = slots
        self.held: list[HeldRequest] = []  # routing order: iterations are formed in this order
        self.reserved = 0.0
        self.end = math.inf  # end of the running run of iterations; infinity when idle
        self.run_start = 0.0  # when the run started
        self.run_tau = 0.0  # duration of each of its iterations
        self.run_iters = 0  # iterations it makes before ``end``

    @property
    def busy(self) -> bool:
        return self.end < math.inf

    @property
    def load(self) -> tuple[int, float]:
        """Routing picks the machine with the fewest prompt tokens left to prefill, then the
        smallest fraction of its capacity reserved."""
        return sum(r.prefill_left for r in self.held), self.reserved / self.capacity

    def can_take(self, reserve: float) -> bool:
        """A free slot and room for the reservation (the step-2 feasibility test)."""
        return len(self.held) < self.slots and self.reserved + reserve <= self.capacity

    def take(self, request: HeldRequest, now: float) -> None:
        """Hold a routed request; a running run stops at the first iteration boundary at or
        after ``now``, where the request joins."""
        self.held.append(request)
        self.reserved += request.reserve
        if self.busy:
            joined = max(math.ceil((now - self.run_start) / self.run_tau), 1)
            if joined < self.run_iters:
                self.run_iters = joined
                self.end = self.run_start + joined * self.run_tau

    def start_iteration(self, now: float, budget: int, chunked: bool,
                        iteration_time: Callable[[int, IterationStats], float]) -> None:
        """Form the next iteration from the held requests and time it; stay idle without work.

        Membership is decided here, at the start, so requests routed while the iteration runs
        wait for the next one."""
        plan_iteration(self.held, budget, chunked)
        if any(r.chunk > 0 or r.decoding for r in self.held):
            duration = float(iteration_time(self.kind, iteration_stats(self.held)))
            # A run is one iteration if it prefills; a decode-only batch repeats that
            # iteration's duration until its first member finishes (or a request joins).
            if any(r.chunk > 0 for r in self.held):
                iters = 1
            else:
                iters = min(r.decode_left for r in self.held if r.decoding)
            self.run_start, self.run_tau, self.run_iters = now, duration, iters
            self.end = now + iters * duration  # computed as the JAX loop does
        else:
            self.run_iters = 0
            self.end = math.inf

    def finish_iteration(self, first_token_s: np.ndarray, done_s: np.ndarray) -> None:
        """Apply the running iteration at its end (``self.end``) and release finished requests."""
        t = self.end
        for r in self.held:
            if r.chunk > 0:
                r.prefill_left -= r.chunk
                r.context += r.chunk
                if r.prefill_left == 0:  # the last prefill chunk emits the first token
                    first_token_s[r.index] = t
            if r.decoding:
                r.decode_left -= self.run_iters
                r.context += self.run_iters
            r.chunk, r.decoding = 0, False
        leaving = [r for r in self.held if r.finished]
        for r in leaving:
            done_s[r.index] = t
        # One subtraction of the summed reservations, as the JAX loop does (exact for whole bytes).
        self.reserved -= sum(r.reserve for r in leaving)
        self.held = [r for r in self.held if not r.finished]
        if not self.held:
            self.reserved = 0.0  # an emptied machine holds exactly nothing (as the JAX loop)
        self.end = math.inf


def plan_iteration(held: list[HeldRequest], budget: int, chunked: bool) -> None:
    """Set each held request's ``chunk`` and ``decoding`` for an iteration starting now.

    Every request past its prefill with tokens left decodes one. Prefill chunks then fill the
    token budget in routing order: *chunked*, the decodes use up budget first and each prompt
    takes what is left of it (so a prompt may be split over iterations); *whole prompts*, a
    prompt joins only if it fits what earlier prompts left of the budget (decodes do not count
    here, as in the JAX loop), except that the first prompt of an iteration without decodes
    always joins (so a prompt longer than the budget runs alone), and the first prompt that
    does not join closes the batch (first come, first served: no later prompt overtakes it).
    """
    for r in held:
        r.decoding = r.prefill_left == 0 and r.decode_left > 0
        r.chunk = 0
    n_decode = sum(r.decoding for r in held)
    prompts = [r for r in held if r.prefill_left > 0]
    if chunked:
        left = max(budget - n_decode, 0)
        for r in prompts:
            r.chunk = min(r.prefill_left, left)
            left -= r.chunk
    else:
        left = budget
        for i, r in enumerate(prompts):
            runs_alone = i == 0 and n_decode == 0
            if r.prefill_left > left and not runs_alone:
                break
            r.chunk = r.prefill_left
            left -= r.chunk


def iteration_stats(held: list[HeldRequest]) -> IterationStats:
    """What the planned iteration processes, as Python floats (see :class:`IterationStats`)."""
    chunks = [r for r in held if r.chunk > 0]
    decodes = [r for r in held if r.decoding]
    return IterationStats(
        prefill_seqs=float(len(chunks)),
        prefill_tokens=float(sum(r.chunk for r in chunks)),
        prefill_sq_tokens=float(sum(r.chunk * r.chunk for r in chunks)),
        prefill_past_tokens=float(sum(r.chunk * r.context for r in chunks)),
        prefill_finishing=float(sum(r.chunk == r.prefill_left for r in chunks)),
        decode_seqs=float(len(decodes)),
        decode_context=float(sum(r.context for r in decodes)),
    )


def _whole(values, name: str) -> list[int]:
    """Token counts as Python ints, refusing fractions (the JAX loop would truncate them)."""
    values = np.asarray(values, dtype=np.float64)
    if np.any(values < 0) or np.any(values != np.round(values)):
        raise ValueError(f"{name} must be whole non-negative numbers")
    return [int(v) for v in values]


def simulate_pool_reference(requests: PoolRequests, machines: PoolMachines,
                            iteration_time: Callable[[int, IterationStats], float], *, slots: int,
                            budget, chunked: bool) -> PoolResult:
    """Run the pool contract event by event; same arguments and results as ``simulate_pool``.

    ``requests`` and ``machines`` hold 1-D arrays (numpy or JAX); ``iteration_time(kind,
    stats)`` gets a Python ``int`` and an :class:`IterationStats` of Python floats. Results
    are numpy arrays (float64 times, NaN where never set) and ``events`` counts every
    rejection, routing and iteration end, as the JAX loop does.
    """
    arrival = [float(a) for a in np.asarray(requests.arrival_s, dtype=np.float64)]
    prefill = _whole(requests.prefill, "prefill")
    decode = _whole(requests.decode, "decode")
    context = [float(c) for c in np.asarray(requests.context, dtype=np.float64)]
    reserve = [float(r) for r in np.asarray(requests.reserve_bytes, dtype=np.float64)]
    n = len(arrival)
    if any(b < a for a, b in itertools.pairwise(arrival)) or any(math.isnan(a) for a in arrival):
        raise ValueError("requests must be sorted by arrival_s")
    if budget != int(budget) or int(budget) < 1:
        # With no budget a chunked machine holding only prompts would never run them.
        raise ValueError(f"budget must be a whole number >= 1 (got {budget})")
    budget = int(budget)
    present = np.asarray(machines.present, dtype=bool)
    capacity = np.asarray(machines.capacity_bytes, dtype=np.float64)
    kind = np.asarray(machines.kind)
    pool = [Machine(k, float(capacity[k]), int(kind[k]), slots) for k in range(len(present)) if present[k]]
    biggest = max((m.capacity for m in pool), default=-math.inf)  # no machine: reject everything

    routed_s = np.full(n, np.nan)
    first_token_s = np.full(n, np.nan)
    done_s = np.full(n, np.nan)
    machine = np.full(n, -1, dtype=np.int32)

    now, q, events = 0.0, 0, 0
    # 5. Run until every request is routed or rejected and no machine is busy.
    while q < n or any(m.busy for m in pool):
        events += 1
        # 1. A request larger than every machine can never be served: reject it right away.
        if q < n and reserve[q] > biggest:
            q += 1
            continue
        # 2. The next iteration end (ties: lowest index; min keeps the first of equal keys).
        busy = [m for m in pool if m.busy]
        ending = min(busy, key=lambda m: m.end) if busy else None
        t_e = ending.end if ending else math.inf
        if q < n:
            t_r = max(arrival[q], now)
            feasible = [m for m in pool if m.can_take(reserve[q])]
            # 3. Route when the request can go somewhere no later than the next iteration end
            #    (a tie goes to routing, so the request can join the iteration formed then).
            if feasible and t_r <= t_e:
                now = t_r
                target = min(feasible, key=lambda m: m.load)  # ties: lowest index
                routed_s[q] = now
                machine[q] = target.index
                if prefill[q] == 0 and decode[q] == 0:
                    # Nothing to do here: it finishes on the spot and never takes a slot (it
                    # still needed a feasible machine, as step 3 routes only those).
                    first_token_s[q] = done_s[q] = now
                else:
                    if prefill[q] == 0:  # no prompt here: its first token predates this pool
                        first_token_s[q] = now
                    was_busy = target.busy
                    target.take(HeldRequest(q, reserve[q], prefill[q], decode[q], context[q]), now)
                    if not was_busy:
                        target.start_iteration(now, budget, chunked, iteration_time)
                q += 1
                continue
        # 4. Otherwise time moves to the earliest iteration end; that machine goes on at once.
        if ending is None:
            # Unreachable: an idle machine holds nothing, so a request that passed step 1 fits it.
            raise RuntimeError(f"request {q} fits no idle machine")
        now = t_e
        ending.finish_iteration(first_token_s, done_s)
        ending.start_iteration(now, budget, chunked, iteration_time)

    status = np.where(machine < 0, REJECTED, SERVED).astype(np.int32)
    return PoolResult(routed_s, first_token_s, done_s, machine, status, events)
