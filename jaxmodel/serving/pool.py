"""Iteration-level simulation of one pool of serving machines, as a JAX event loop.

A *pool* is a set of machines (each a whole model replica, e.g. 8 chips at TP 8) that
requests are routed to; a disaggregated cluster chains a prefill pool and a decode pool, a
co-located cluster is one pool (:mod:`jaxmodel.serving.cluster`). The rules below are the
contract shared with the plain-Python reference simulator
(:mod:`jaxmodel.serving.reference`); both produce the same per-request times.

**Requests** (sorted by arrival; ties keep their order), each with: arrival time ``a``,
``prefill`` tokens to process in this pool, ``context`` tokens already cached when it
arrives, ``decode`` tokens to generate here (one per iteration) and ``reserve``: the device
bytes it holds from routing until it leaves (its KV cache at its largest).

**Machines** ``m``: whether present (vmapped cluster sizes share one maximum count),
``capacity`` (device bytes for KV caches) and ``kind`` (which system times its iterations:
pools may mix chips, e.g. prefill chips reallocated to decode). Each has ``slots`` places
for requests (the most it holds at once, queued or running).

**Event loop.** ``now`` starts at 0; ``q`` is the first request not yet routed.

1. If the request ``q`` needs more than the capacity of every present machine (or no
   machine is present) it is *rejected* (never served) and the loop goes on.
2. Routing time ``t_r = max(a_q, now)``. The *feasible* machines have a free slot and
   ``reserved + reserve_q <= capacity``. ``t_e`` is the earliest end of a busy machine's run
   (infinity if none).
3. If ``q`` is feasible somewhere and ``t_r <= t_e``: route it, at ``now = t_r``, to the
   feasible machine with the fewest prompt tokens still to prefill (its held requests', the
   running iteration's included: join-shortest-queue by tokens, as SplitwiseSim's
   ``token_jsq``), then the smallest ``reserved / capacity``, then the lowest index. A request
   with nothing to do here (no prefill, no decode) is routed the same way but finishes on the
   spot without taking a slot or bytes. An idle machine starts a run at once; a busy one
   cuts its running run short at its first iteration boundary at or after ``now`` (at least
   one iteration), where the request joins. A machine left holding no request has exactly
   zero bytes reserved.
4. Otherwise the busy machine with the earliest end (ties: lowest index) finishes its run
   at ``now = t_e`` and, if it holds any work, starts the next one at once.
5. The loop ends when every request is routed or rejected and no machine is busy.

**A run** is one iteration if that iteration prefills; an iteration of decodes only is
repeated with the same members and the same duration until its first member finishes (or a
request joins, above), as SplitwiseSim does: the batch is unchanged, and the context growth
over a run changes a step's time by well under 1% (it is re-timed at the next run). A run
of ``j`` iterations from ``t0`` ends at ``t0 + j·τ``; its boundaries are ``t0 + i·τ``.

**An iteration** is formed at the start of a run from the machine's requests in routing order:

* every request whose prefill is done and that has decode tokens left decodes one token;
* prefill chunks fill the token ``budget``. *Chunked* (Sarathi): the decodes count against
  the budget and each prefilling request takes ``min(left, budget left)`` tokens, in order,
  until the budget is spent. *Whole prompts* (Splitwise prefill machines): a prompt joins
  if the prompts before it and it fit the budget (decodes do not count here: such pools
  have none), or if it is the first prompt of an iteration without decodes
  (a prompt longer than the budget runs alone); the first one that does not join stops the
  batch (first come, first served).

Its duration comes from the pool's ``iteration_time(kind, stats)``
(:class:`IterationStats`: prefill sequences, tokens, sum of squared chunk lengths, sum of
chunk x cached tokens before it, prompts finishing, decode sequences, total decode context).
At its end each chunk adds its tokens to the request's context; a request whose prefill
completes records its *first token* time then (the last prefill chunk emits the first token;
with no prefill here, the first-token time is the routing time); each decode adds one token.
A request with neither prefill nor decode left is *done* then and frees its slot and bytes.
At the end of a run each member has made ``j`` such iterations.

Everything is fixed-shape (``machines x slots`` state, ``lax.while_loop``), so the loop
jit-compiles once and runs a whole batch of cluster configurations (pool sizes, chips,
request rates) together (:func:`simulate_pool`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

#: Status of a request after the simulation.
SERVED, REJECTED = 0, 1


class IterationStats(NamedTuple):
    """What an iteration processes (token counts summed over its members)."""

    prefill_seqs: jax.Array  # requests with a prefill chunk in the iteration
    prefill_tokens: jax.Array  # sum of chunk lengths x
    prefill_sq_tokens: jax.Array  # sum of x^2 (causal attention work grows with it)
    prefill_past_tokens: jax.Array  # sum of x * (tokens cached before the chunk)
    prefill_finishing: jax.Array  # chunks that complete their prompt (each emits a logit row)
    decode_seqs: jax.Array  # requests decoding one token
    decode_context: jax.Array  # sum of their cached tokens before this token


class PoolRequests(NamedTuple):
    """Per-request inputs of a pool (arrays of one length, sorted by ``arrival_s``)."""

    arrival_s: jax.Array
    prefill: jax.Array
    context: jax.Array
    decode: jax.Array
    reserve_bytes: jax.Array


class PoolMachines(NamedTuple):
    """Per-machine inputs of a pool."""

    present: jax.Array  # bool
    capacity_bytes: jax.Array
    kind: jax.Array  # int index into the iteration-time function's systems


class PoolResult(NamedTuple):
    """Per-request outputs: routing time, first-token time (end of the last prefill chunk),
    completion time, machine index (-1 if rejected) and status (:data:`SERVED`,
    :data:`REJECTED`); plus the number of events processed."""

    routed_s: jax.Array
    first_token_s: jax.Array
    done_s: jax.Array
    machine: jax.Array
    status: jax.Array
    events: jax.Array


class _State(NamedTuple):
    now: jax.Array
    q: jax.Array
    events: jax.Array
    busy: jax.Array  # [M]
    end: jax.Array  # [M] end of the running run of iterations (inf when idle)
    run_start: jax.Array  # [M] start of the running run
    run_tau: jax.Array  # [M] duration of each of its iterations
    run_iters: jax.Array  # [M] iterations it makes before ``end``
    reserved: jax.Array  # [M]
    used: jax.Array  # [M] occupied slots; slots 0..used-1 hold requests in routing order
    req: jax.Array  # [M, S] request index, -1 when empty
    prefill: jax.Array  # [M, S] prefill tokens left
    decode: jax.Array  # [M, S] decode tokens left
    context: jax.Array  # [M, S] tokens cached
    chunk: jax.Array  # [M, S] prefill tokens in the running iteration
    decoding: jax.Array  # [M, S] decodes a token in the running iteration
    routed: jax.Array  # [N]
    first: jax.Array  # [N]
    done: jax.Array  # [N]
    machine: jax.Array  # [N]


class _Row(NamedTuple):
    """One machine's slots."""

    req: jax.Array
    prefill: jax.Array
    decode: jax.Array
    context: jax.Array
    chunk: jax.Array
    decoding: jax.Array


def _members(row: _Row, budget, chunked: bool):
    """Chunk tokens and decode flags of an iteration formed from one machine's slots (which
    are in routing order)."""
    occupied = row.req >= 0
    decoding = occupied & (row.prefill == 0) & (row.decode > 0)
    n_decode = jnp.sum(decoding)
    wants = occupied & (row.prefill > 0)
    f = jnp.where(wants, row.prefill, 0)
    before = jnp.cumsum(f) - f  # prefill tokens asked for by earlier requests
    if chunked:
        x = jnp.clip(jnp.maximum(budget - n_decode, 0) - before, 0, f)
    else:
        first = wants & (jnp.cumsum(wants) == 1)
        fits = before + f <= budget
        x = jnp.where(wants & (fits | (first & (n_decode == 0))), f, 0)
    return x.astype(row.prefill.dtype), decoding


def _stats(row: _Row) -> IterationStats:
    x = row.chunk.astype(row.context.dtype)
    return IterationStats(
        prefill_seqs=jnp.sum(row.chunk > 0).astype(x.dtype),
        prefill_tokens=jnp.sum(x),
        prefill_sq_tokens=jnp.sum(x * x),
        prefill_past_tokens=jnp.sum(x * row.context),
        prefill_finishing=jnp.sum((row.chunk > 0) & (row.chunk == row.prefill)).astype(x.dtype),
        decode_seqs=jnp.sum(row.decoding).astype(x.dtype),
        decode_context=jnp.sum(jnp.where(row.decoding, row.context, 0.0)),
    )


def _compact(row: _Row, keep) -> _Row:
    """Move the kept slots to the front, in their order (a stable partition)."""
    n = keep.shape[0]
    dest = jnp.where(keep, jnp.cumsum(keep) - 1, n)  # index n: dropped

    def move(values, empty):
        return jnp.full_like(values, empty).at[dest].set(values, mode="drop")

    return _Row(move(row.req, -1), move(row.prefill, 0), move(row.decode, 0), move(row.context, 0.0),
                move(row.chunk, 0), move(row.decoding, False))


class _Inputs(NamedTuple):
    """One configuration's inputs, cast once outside the loop."""

    arrival: jax.Array
    prefill: jax.Array
    decode: jax.Array
    context: jax.Array
    reserve: jax.Array
    present: jax.Array
    capacity: jax.Array
    kind: jax.Array
    budget: jax.Array
    params: object


def _prepare(requests: PoolRequests, machines: PoolMachines, budget, params) -> _Inputs:
    ftype = requests.arrival_s.dtype
    itype = jnp.int32
    present = machines.present.astype(bool)
    return _Inputs(requests.arrival_s, requests.prefill.astype(itype), requests.decode.astype(itype),
                   requests.context.astype(ftype), requests.reserve_bytes.astype(ftype), present,
                   jnp.where(present, machines.capacity_bytes.astype(ftype), 0.0), machines.kind.astype(itype),
                   jnp.asarray(budget, itype), params)


def _initial(x: _Inputs, slots: int) -> _State:
    n, m = x.arrival.shape[0], x.present.shape[0]
    ftype, itype = x.arrival.dtype, jnp.int32
    zeros_ms = jnp.zeros((m, slots), itype)
    nan = jnp.full((n,), jnp.nan, ftype)
    return _State(now=jnp.asarray(0.0, ftype), q=jnp.asarray(0, itype), events=jnp.asarray(0, itype),
                  busy=jnp.zeros(m, bool), end=jnp.full(m, jnp.inf, ftype), run_start=jnp.zeros(m, ftype),
                  run_tau=jnp.zeros(m, ftype), run_iters=jnp.zeros(m, itype), reserved=jnp.zeros(m, ftype),
                  used=jnp.zeros(m, itype), req=jnp.full((m, slots), -1, itype), prefill=zeros_ms, decode=zeros_ms,
                  context=jnp.zeros((m, slots), ftype), chunk=zeros_ms, decoding=jnp.zeros((m, slots), bool),
                  routed=nan, first=nan, done=nan, machine=jnp.full((n,), -1, itype))


def _running(s: _State) -> jax.Array:
    return (s.q < s.routed.shape[0]) | jnp.any(s.busy)


def _step(s: _State, x: _Inputs, iteration_time, slots: int, chunked: bool) -> _State:
    """One event of one configuration; a configuration that has finished is left unchanged
    (the loop runs until every configuration of a batch has finished)."""
    n = x.arrival.shape[0]
    ftype, itype = x.arrival.dtype, jnp.int32
    inf = jnp.asarray(jnp.inf, ftype)
    active = _running(s)
    pending = s.q < n
    q = jnp.minimum(s.q, n - 1)
    r_q = x.reserve[q]
    t_r = jnp.maximum(x.arrival[q], s.now)
    feasible = x.present & (s.used < slots) & (s.reserved + r_q <= x.capacity)
    t_e = jnp.min(s.end)
    reject = pending & ((r_q > jnp.max(x.capacity)) | ~jnp.any(x.present))
    route = pending & ~reject & jnp.any(feasible) & (t_r <= t_e)
    finish = active & ~reject & ~route
    share = jnp.where(x.present, x.capacity, 1.0)
    pending = jnp.sum(s.prefill, axis=1)  # prompt tokens each machine still has to prefill
    shortest = feasible & (pending == jnp.min(jnp.where(feasible, pending, jnp.iinfo(itype).max)))
    k = jnp.where(route, jnp.argmin(jnp.where(shortest, s.reserved / share, inf)), jnp.argmin(s.end)).astype(itype)
    f_q, d_q = x.prefill[q], x.decode[q]
    nothing = route & (f_q == 0) & (d_q == 0)  # finishes on the spot, takes no slot
    place = route & ~nothing
    now = jnp.where(route, t_r, jnp.where(finish, t_e, s.now))

    old = _Row(s.req[k], s.prefill[k], s.decode[k], s.context[k], s.chunk[k], s.decoding[k])
    # Finishing the running run: chunks and decoded tokens land, finished requests leave.
    made = s.run_iters[k]
    tokens = old.decoding.astype(itype) * made
    grown = _Row(old.req, old.prefill - old.chunk, old.decode - tokens,
                 old.context + old.chunk.astype(ftype) + tokens.astype(ftype), old.chunk, old.decoding)
    completes_prefill = finish & (old.chunk > 0) & (grown.prefill == 0)
    leaving = finish & (old.req >= 0) & (grown.prefill == 0) & (grown.decode == 0)
    row = jax.tree_util.tree_map(lambda a, b: jnp.where(finish, a, b), grown, old)
    row = _compact(row, (row.req >= 0) & ~leaving)
    # Routing: the request joins behind the others.
    at = jnp.where(place, s.used[k], slots)  # index ``slots``: no write
    row = _Row(row.req.at[at].set(q, mode="drop"), row.prefill.at[at].set(f_q, mode="drop"),
               row.decode.at[at].set(d_q, mode="drop"), row.context.at[at].set(x.context[q], mode="drop"),
               row.chunk.at[at].set(0, mode="drop"), row.decoding.at[at].set(False, mode="drop"))
    # A finished run, or a request reaching an idle machine, starts the next run: one
    # iteration if it prefills, else decodes until its first member finishes.
    restart = finish | (place & ~s.busy[k])
    chunk, decoding = _members(row, x.budget, chunked)
    started = row._replace(chunk=chunk, decoding=decoding)
    duration = iteration_time(x.kind[k], _stats(started), x.params)
    work = jnp.any(chunk > 0) | jnp.any(decoding)
    longest = jnp.iinfo(itype).max
    iters = jnp.where(jnp.any(chunk > 0), 1, jnp.min(jnp.where(decoding, row.decode, longest)))
    row = jax.tree_util.tree_map(lambda a, b: jnp.where(restart, a, b), started, row)
    # A request reaching a busy machine joins at the first iteration boundary at or after now.
    joined = jnp.maximum(jnp.ceil((now - s.run_start[k]) / s.run_tau[k]).astype(itype), 1)
    cut = place & s.busy[k] & (joined < s.run_iters[k])
    run_iters = jnp.where(restart, jnp.where(work, iters, 0), jnp.where(cut, joined, s.run_iters[k]))
    run_start = jnp.where(restart, now, s.run_start[k])
    run_tau = jnp.where(restart, duration, s.run_tau[k])
    end = jnp.where(restart | cut, jnp.where(restart & ~work, inf, run_start + run_iters.astype(ftype) * run_tau),
                    s.end[k])

    freed = jnp.sum(jnp.where(leaving, x.reserve[jnp.maximum(old.req, 0)], 0.0))
    used = s.used[k] + place.astype(itype) - jnp.sum(leaving).astype(itype)
    sink = jnp.where(old.req >= 0, old.req, n)  # index n: no write
    return _State(
        now=now, q=jnp.where(route | reject, s.q + 1, s.q), events=s.events + active.astype(itype),
        busy=s.busy.at[k].set(jnp.where(restart, work, s.busy[k])), end=s.end.at[k].set(end),
        run_start=s.run_start.at[k].set(run_start), run_tau=s.run_tau.at[k].set(run_tau),
        run_iters=s.run_iters.at[k].set(run_iters),
        # An emptied machine holds exactly nothing (no round-off left to block a request that
        # fits only an empty machine).
        reserved=s.reserved.at[k].set(jnp.where(used == 0, 0.0, s.reserved[k] + jnp.where(place, r_q, 0.0) - freed)),
        used=s.used.at[k].set(used),
        req=s.req.at[k].set(row.req), prefill=s.prefill.at[k].set(row.prefill),
        decode=s.decode.at[k].set(row.decode), context=s.context.at[k].set(row.context),
        chunk=s.chunk.at[k].set(row.chunk), decoding=s.decoding.at[k].set(row.decoding),
        routed=s.routed.at[jnp.where(route, q, n)].set(t_r, mode="drop"),
        first=s.first.at[jnp.where(completes_prefill, sink, n)].set(now, mode="drop")
        .at[jnp.where(route & (f_q == 0), q, n)].set(t_r, mode="drop"),
        done=s.done.at[jnp.where(leaving, sink, n)].set(now, mode="drop")
        .at[jnp.where(nothing, q, n)].set(t_r, mode="drop"),
        machine=s.machine.at[jnp.where(route | reject, q, n)].set(jnp.where(route, k, -1), mode="drop"),
    )


def simulate_pool(requests: PoolRequests, machines: PoolMachines, iteration_time: Callable, params=None, *,
                  slots: int, budget, chunked: bool) -> PoolResult:
    """Run the event loop of the module docstring for one configuration, or for a batch of
    them when the inputs carry a leading configuration axis: every array of ``requests``,
    ``machines`` and ``params`` then has it (``arrival_s`` is ``[B, N]``); ``budget`` is a
    scalar or ``[B]``.

    ``iteration_time(kind, stats)``, or ``iteration_time(kind, stats, params)`` when
    ``params`` (a pytree, e.g. the configuration's chips) is given, times an iteration of one
    configuration. ``slots`` and ``chunked`` are static; ``budget`` is tokens per iteration.
    Token counts are whole numbers (int32); times carry the dtype of ``arrival_s``.

    A batch runs in one ``lax.while_loop`` whose body handles one event of every
    configuration (``vmap`` inside the loop): vmapping a whole loop from outside would make
    JAX select between complete copies of the state at every step. Each event updates one
    machine's row of slots and a few requests' entries by scatters, with no branch on the
    event kind, so it costs O(slots + machines) per configuration."""
    try:
        if float(jnp.min(jnp.asarray(budget))) < 1:
            raise ValueError(f"simulate_pool: budget must be >= 1 token (got {budget!r})")
    except (TypeError, jax.errors.ConcretizationTypeError):
        pass  # traced: the caller validated it
    batched = requests.arrival_s.ndim == 2
    if params is None:
        def timed(kind, stats, _):
            return iteration_time(kind, stats)
    else:
        timed = iteration_time
    if not batched:
        one = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], (requests, machines, params, budget))
        # The batched call passes params on, so the wrapper above becomes the timing function.
        out = simulate_pool(*one[:2], timed, jnp.zeros(1) if params is None else one[2], slots=slots,
                            budget=one[3], chunked=chunked)
        return jax.tree_util.tree_map(lambda a: a[0], out)
    b = requests.arrival_s.shape[0]
    x = jax.vmap(_prepare)(requests, machines, jnp.broadcast_to(jnp.asarray(budget), (b,)),
                           jnp.zeros(b) if params is None else params)
    s0 = jax.vmap(_initial, in_axes=(0, None))(x, slots)
    step = jax.vmap(lambda s, xi: _step(s, xi, timed, slots, chunked))
    s = jax.lax.while_loop(lambda s: jnp.any(jax.vmap(_running)(s)), lambda s: step(s, x), s0)
    status = jnp.where(s.machine < 0, REJECTED, SERVED).astype(jnp.int32)
    return PoolResult(s.routed, s.first, s.done, s.machine, status, s.events)
