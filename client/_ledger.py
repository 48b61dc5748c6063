"""The ledger: what the client knows of each job, and the one interface between caller
threads and the loop thread.

A call or map is one :class:`Func` (its function, options, and the pickled arguments
read ahead or later from its sequences); its jobs are numbered ``start`` to
``start + n - 1`` and their ids are ``tag-N``. A job has a :class:`JobEntry` while it
is live; a finished map job is kept compact inside its ``Func``. Facades (``Client``,
``Executor``, the joblib backend, progress bars) use only the methods marked "any
thread"; the loop thread's ``AsyncClient`` records what the scheduler decided with
the others. Waiting itself is client/_waiting.py's, over :meth:`Ledger.add_callback`.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from mesh.client._handle import Job
from mesh.client._options import depends_on, env_requirements, file_names, split_options
from mesh.client._scheduler import DEFAULT_PRIORITY

from mesh._protocol import DONE, ERROR, KILLED, PROCESSING, QUEUED, ErrorInfo, Payload, ResultItem
from mesh._serialize import (
    dumps_function,
    dumps_payload,
    function_name,
    loads,
    pack_exception,
    payload_size,
    unpack_error,
)
from mesh.errors import ConnectionClosed, ErrorKind, SerializationError, UnknownJob

__all__ = ["EAGER_ARGS_BYTES", "UNKNOWN", "Func", "Handover", "JobEntry", "Ledger", "count_items"]

T = TypeVar("T")

UNKNOWN = -1  # a job id this client did not submit and has not yet heard of
# A map pickles its arguments at once up to this many bytes; the rest are read from its
# sequences and pickled as the nodes take them, so a map of a million items (or of large
# ones) keeps only a window of pickled arguments in memory.
EAGER_ARGS_BYTES = 4 << 20
BYTES_OVERHEAD = 33  # what a bytes object costs beside its contents (for that budget)

# What the ledger asks the nodes about job ids of other processes: for each id a node
# knows, (the id of the node holding it, its state there).
AskNodes = Callable[[tuple[str, ...]], Awaitable[dict[str, tuple[str, int]]]]


class Func:
    """One call or map: its function, its options and its jobs, ids ``tag-start`` to
    ``tag-(start + n - 1)``. A job has a :class:`JobEntry` only while it is live (sent,
    or looked at before); once finished it is kept compact: a flag, its node, when it
    came back and its result in one buffer, about 18 bytes beside the result. So a map
    of a million jobs costs the client its handles and its results, not a million objects."""

    __slots__ = ("after", "ahead", "at", "blob", "came", "cores", "done", "env", "fhash", "files",
                 "kill_process", "label", "live", "max_runtime", "n", "name", "next", "node_ids",
                 "nodes", "on_start", "pickled", "prefer", "priority", "push", "results", "retries",
                 "sizes", "source", "speculative", "start", "submitted")  # fmt: skip

    def __init__(self, fhash: bytes, blob: bytes, name: str) -> None:
        self.fhash, self.blob, self.name = fhash, blob, name
        # One call or map: its jobs share these options (per job they would cost a map
        # of a million jobs 32 MB).
        self.cores, self.label, self.max_runtime, self.retries = 1, "", 0.0, 3
        self.speculative = False  # stragglers of this map get a copy elsewhere
        self.after: tuple[str, ...] = ()  # _depends_on: jobs that must be done first
        self.priority = DEFAULT_PRIORITY  # _priority: lower runs first
        self.kill_process = False  # _kill_process: a fresh worker process after each job
        self.files: tuple[str, ...] = ()  # _files: mesh files its jobs read
        self.prefer: frozenset[str] | None = None  # link keys holding them, once asked
        self.env: tuple[str, ...] = ()  # _env: requirements, sent with every Submit
        self.push: tuple[tuple[str, str], ...] = ()  # (local path, store name) to push first
        # called with a job's id on the loop thread when its node starts it (the Submit
        # asks for Started messages); None: not asked (see Ledger.prepare)
        self.on_start: Callable[[str], None] | None = None
        self.start = self.n = 0  # the id number of job 0, and how many jobs
        self.submitted = 0.0  # when the call or map was made (epoch seconds)
        # when each job's result reached this client, in seconds after ``submitted``
        # (0: not yet; allocated with the first): mesh.info's answer once a node is lost
        self.came = array("f")
        # the job whose arguments are read next (from ``ahead``, then ``source``): a map's
        # jobs are first sent in order, and those killed before that skip their items
        self.next = 0
        self.live: dict[int, JobEntry] = {}  # job index -> its JobEntry, while it has one
        # arguments pickled by prepare(), for the first jobs to leave the queue, in order;
        # then those read from ``source`` as jobs leave it
        self.ahead: deque[Payload] = deque()
        self.source: Iterator[tuple[Any, ...]] | None = None
        self.pickled = [0, 0]  # argument tuples pickled, their bytes: the size to expect
        # finished jobs, compact (allocated with the first): a flag and a node (an
        # index in node_ids) a job, and the results in one buffer at ``at`` for ``sizes``
        self.done = bytearray()
        self.nodes = bytearray()
        self.node_ids: list[str] = []
        self.results = bytearray()
        self.at = array("Q")
        self.sizes = array("I")

    def job(self, tag: str, k: int, jid: str | None = None) -> JobEntry:
        """Job ``k``: its live entry, a view of it once finished and compacted, or a new
        live one (not sent yet: the queue takes that one when its turn comes). Any thread."""
        job = self.live.get(k)
        if job is not None:
            return job
        if self.done and self.done[k]:  # done before live lost it: see compact()
            view = JobEntry(jid or f"{tag}-{self.start + k}", self, b"", DONE)
            at = self.at[k]
            view.blob = bytes(self.results[at : at + self.sizes[k]])
            view.node = self.node_ids[self.nodes[k]]
            return view
        return self.live.setdefault(k, JobEntry(jid or f"{tag}-{self.start + k}", self, None))

    def is_final(self, k: int) -> bool:
        job = self.live.get(k)
        return job.final if job is not None else bool(self.done and self.done[k])

    def arrived(self, k: int, now: float) -> None:
        """Job ``k``'s outcome reached this client at ``now`` (epoch seconds)."""
        if not self.came:
            self.came = array("f", bytes(4 * self.n))
        self.came[k] = max(now - self.submitted, 1e-3)  # 0.0 means "not yet"

    def came_at(self, k: int) -> float | None:
        """When job ``k``'s outcome reached this client, if it did (float32: to about a
        millisecond an hour after the map)."""
        return self.submitted + self.came[k] if self.came and self.came[k] else None

    def compact(self, k: int, blob: Payload, node_id: str) -> None:
        """Job ``k`` is done with ``blob`` from node ``node_id``: keep that, drop its entry."""
        if isinstance(blob, tuple):
            return  # big buffers beside a pickle: it keeps its entry, they stay apart
        if node_id in self.node_ids:
            i = self.node_ids.index(node_id)
        elif len(self.node_ids) < 256 and len(blob) < 1 << 32:
            i = len(self.node_ids)
            self.node_ids.append(node_id)
        else:
            return  # it keeps its entry
        if not self.done:
            self.done, self.nodes = bytearray(self.n), bytearray(self.n)
            self.at, self.sizes = array("Q", bytes(8 * self.n)), array("I", bytes(4 * self.n))
        self.at[k] = len(self.results)
        self.sizes[k] = len(blob)
        self.results += blob
        self.nodes[k] = i
        self.done[k] = 1  # before the entry goes, so a lookup always finds one or the other
        self.live.pop(k, None)


class JobEntry:
    """A job as the ledger knows it; where it runs is the scheduler's (``node_of``)."""

    __slots__ = ("args", "attempts", "blob", "callbacks", "error", "func", "jid", "node", "state")

    def __init__(
        self, jid: str, func: Func | None, args: Payload | None, state: int = QUEUED
    ) -> None:
        self.jid = jid
        self.func = func
        # pickled; None: not read yet (func.ahead, then func.source, as the job first
        # leaves the queue); b"" once the job is final
        self.args = args
        self.state = state
        self.node = ""  # the id of the node that ran it last (names repeat, ids do not)
        self.blob: Payload = b""
        self.error: ErrorInfo | None = None
        # what to call once it is final: one callable (a wait over a million jobs
        # would spend 64 MB on one-item lists), a list when there are several
        self.callbacks: Callable[[JobEntry], None] | list[Callable[[JobEntry], None]] | None = None
        self.attempts = 0  # attempts that ended with their worker or node dying

    @property
    def label(self) -> str:
        """Its call's or map's ``_label``; a job adopted from another process has none."""
        return self.func.label if self.func is not None else ""

    @property
    def final(self) -> bool:
        return self.state >= DONE


def _call_back(job: JobEntry) -> None:
    """Call what waits for ``job``, now final, once (with the final lock held)."""
    callbacks, job.callbacks = job.callbacks, None
    if isinstance(callbacks, list):
        for cb in callbacks:
            cb(job)
    elif callbacks is not None:
        callbacks(job)


def count_items(sequences: Sequence[Iterable[Any]]) -> int | None:
    """How many items ``zip(*sequences)`` gives, if every one is a Sequence (list, tuple,
    range, str: iterating one gives len() items), so a big map reads them as it goes;
    None for anything else (a generator, a DataFrame, whose len() is not what it yields)."""
    if all(isinstance(s, Sequence) for s in sequences):
        return min(len(s) for s in sequences)  # type: ignore[arg-type]
    return None


def _set_options(func: Func, opts: dict[str, Any], cores: int) -> None:
    """A call's or map's job options (checked) on its ``Func``."""
    func.cores = cores
    func.speculative = bool(opts.get("_speculative", False))
    func.files = file_names(opts.get("_files"))
    func.env, func.push = env_requirements(opts.get("_env"))
    func.label = str(opts.get("_label", ""))
    func.max_runtime = float(opts.get("_max_runtime", 0.0) or 0.0)
    func.retries = int(opts.get("_retries", 3))
    func.after = depends_on(opts.get("_depends_on"))
    priority = opts.get("_priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"_priority= takes an integer (lower runs first), not {priority!r}")
    func.priority = priority
    kill_process = opts.get("_kill_process", False)
    if not isinstance(kill_process, bool):
        raise TypeError(f"_kill_process= takes True or False, not {kill_process!r}")
    func.kill_process = kill_process


class Handover(Generic[T]):
    """Items handed to the loop thread from any thread, in batches: the first item since
    the last batch schedules ``flush(batch)`` on the loop; the ones added before it runs
    ride along, so a burst wakes the loop thread once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[list[T]], None]) -> None:
        self._loop, self._flush = loop, flush
        self._lock = threading.Lock()
        self._items: list[T] = []

    def add(self, items: Iterable[T]) -> None:
        """Any thread, never blocks. RuntimeError if the loop has closed."""
        with self._lock:
            first = not self._items
            self._items.extend(items)
            if not self._items:
                return
        if first:
            self._loop.call_soon_threadsafe(self._take)

    def _take(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        self._flush(items)


class Ledger:
    """Every call and map of one client, in id order, and the jobs of other processes it
    waits for (adopted). Methods say which thread may call them; the loop thread's are
    for the ``AsyncClient`` that owns the ledger."""

    def __init__(self, tag: str, name_of: Callable[[str], str]) -> None:
        """``tag`` starts every job id; ``name_of(node_id)`` is the name a node showed."""
        self.tag = tag
        self._name_of = name_of
        self._funcs: list[Func] = []
        self._starts: list[int] = []  # the id number of each one's first job
        self._next_id = 1
        self._ids_lock = threading.Lock()
        # Guards job finalisation against waiters registered from other threads.
        self._final_lock = threading.Lock()
        self._adopted: dict[str, JobEntry] = {}  # jobs of other processes waited for
        self._ask: AskNodes | None = None
        self._submits: Handover[Func] | None = None
        self._kills: Handover[str] | None = None

    # ---- the loop thread's side of the hand-over ----

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_submit: Callable[[list[Func]], None],
        on_kill: Callable[[list[str]], None],
        ask: AskNodes,
    ) -> None:
        """Loop thread, when its client starts: ``submit`` and ``kill_soon`` from any
        thread reach ``on_submit``/``on_kill`` there; ``ask`` learns of foreign ids."""
        self._submits = Handover(loop, on_submit)
        self._kills = Handover(loop, on_kill)
        self._ask = ask

    def detach(self) -> None:
        """The client closes: nothing more is handed over."""
        self._submits = self._kills = None

    # ---- any thread ----

    def prepare(
        self,
        fn: Callable[..., Any],
        arg_tuples: Iterable[tuple[Any, ...]],
        kwargs: dict[str, Any],
        count: int | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> tuple[Func, list[Job[Any]]]:
        """Pickle the function once and allocate job ids (any thread); return the call or
        map and its job handles. Arguments are pickled here up to EAGER_ARGS_BYTES; the
        rest as the jobs leave the queue, read from ``arg_tuples`` then (``count``: how
        many it yields; None: read it all now). ``on_start(jid)``: called on the loop
        thread when a node starts each job (its Submits ask for Started messages, which
        plain calls and maps skip); mesh.Executor's futures enter RUNNING with it."""
        opts: dict[str, Any] = {}
        if kwargs:  # a plain call has none: Func's defaults are the options' defaults
            kwargs, opts = split_options(dict(kwargs))
        cores = int(opts.get("_cores", 1)) if opts else 1
        if cores < 1:
            raise ValueError("_cores must be at least 1")
        fhash, blob = dumps_function(fn, kwargs)
        func = Func(fhash, blob, function_name(fn))
        func.on_start = on_start
        if opts:
            _set_options(func, opts, cores)
        if count is None:
            arg_tuples = list(arg_tuples)  # a generator: its length gives the job ids
            count = len(arg_tuples)
        source = iter(arg_tuples)
        ahead, cost, pickled = func.ahead, 0, 0
        what = f"arguments of {func.name}"  # once, not per item
        while len(ahead) < count and cost < EAGER_ARGS_BYTES:
            try:
                args = dumps_payload(next(source), what)
            except StopIteration:
                count = len(ahead)  # a sequence shorter than its len() said
                break
            ahead.append(args)
            size = payload_size(args)
            pickled += size
            cost += size + BYTES_OVERHEAD
        func.pickled = [len(ahead), pickled]
        if len(ahead) < count:
            func.source = source
        func.submitted = time.time()
        with self._ids_lock:  # a map's ids are consecutive, whichever threads submit
            func.start, func.n = self._next_id, count
            self._next_id += count
            self._funcs.append(func)  # before its start: a lookup may run meanwhile
            self._starts.append(func.start)
        tag = self.tag
        return func, [Job(f"{tag}-{i}") for i in range(func.start, func.start + count)]

    def submit(self, func: Func) -> None:
        """Any thread, never blocks: hand a prepared call or map to the loop thread, which
        places it. Those handed over before the loop thread gets to them go in one batch
        (a loop of calls wakes it once per batch, and one function's jobs share Submits)."""
        if self._submits is None:
            raise ConnectionClosed(f"cannot submit {func.name}: the client is not running")
        self._submits.add((func,))

    def kill_soon(self, jids: Sequence[str]) -> None:
        """Any thread, never blocks: have these jobs killed (a future's ``cancel``). Ids
        gathered before the loop thread gets to them go in one kill; none once closed."""
        kills = self._kills
        if kills is not None:
            try:
                kills.add(jids)
            except RuntimeError:  # the loop has just closed: nothing to kill with
                pass

    def ids(self) -> list[str]:
        """Every job id this client handed out, oldest first."""
        with self._ids_lock:
            last = self._next_id
        return [f"{self.tag}-{i}" for i in range(1, last)]

    def entries(self, func: Func) -> list[JobEntry]:
        """The entries of every job of ``func``, live (an Executor's future holds one)."""
        return [func.job(self.tag, k) for k in range(func.n)]

    def find(self, jid: str) -> JobEntry | None:
        """The job ``jid`` (this client's, or adopted), or None."""
        found = self.locate(jid)
        if found is None:
            return self._adopted.get(jid)
        return found[0].job(self.tag, found[1], jid)

    def known(self, jids: Sequence[str]) -> list[JobEntry] | None:
        """The entries of ``jids``, or None when one is not known yet (see :meth:`lookup`)."""
        jobs = []
        for jid in jids:
            job = self.find(jid)
            if job is None:
                return None
            jobs.append(job)
        return jobs

    def is_final(self, jid: str) -> bool:
        """Whether job ``jid`` is final, without making it an object."""
        found = self.locate(jid)
        if found is None:
            job = self._adopted.get(jid)
            return job is not None and job.final
        return found[0].is_final(found[1])

    def unfinished(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` not final yet (without making them objects)."""
        return [jid for jid in ids if not self.is_final(jid)]

    def add_callback(self, jobs: Sequence[JobEntry], cb: Callable[[JobEntry], None]) -> None:
        """Call ``cb(job)`` once per job when it is final (at once if it is).

        ``cb`` runs on the loop thread (or on the caller's, for jobs already final);
        it must be quick and thread-safe.
        """
        with self._final_lock:
            for job in jobs:
                if job.final:
                    cb(job)
                elif job.callbacks is None:
                    job.callbacks = cb
                elif isinstance(job.callbacks, list):
                    job.callbacks.append(cb)
                else:
                    job.callbacks = [job.callbacks, cb]

    def value(self, job: JobEntry) -> Any:
        """A final job's result, unpickled; or its exception raised, re-created."""
        if job.state == DONE:
            return loads(job.blob)
        assert job.error is not None
        raise unpack_error(job.jid, self._name_of(job.node) or "?", job.blob, job.error)

    def num(self, jid: str) -> int | None:
        """The number of one of this client's job ids (None: not this client's)."""
        tag, _, num = jid.rpartition("-")
        if tag != self.tag or not (num.isascii() and num.isdigit()):
            return None
        return int(num)

    def locate(self, jid: str) -> tuple[Func, int] | None:
        """The call or map of one of this client's job ids, and the job's place in it."""
        n = self.num(jid)
        return None if n is None else self.locate_num(n)

    def locate_num(self, n: int) -> tuple[Func, int] | None:
        """The call or map of this client's job number ``n``, and the job's place in it."""
        i = bisect.bisect_right(self._starts, n) - 1
        if i < 0:
            return None
        func = self._funcs[i]
        return (func, n - func.start) if n - func.start < func.n else None

    def unfinished_numbers(self, fhash_hex: str, label: str) -> list[int]:
        """The numbers of this client's unfinished jobs whose function's hash starts with
        ``fhash_hex`` and whose ``_label`` is ``label`` (a map the console names). Loop thread."""
        nums: list[int] = []
        for func in self._funcs:
            if func.label == label and func.fhash.hex().startswith(fhash_hex):
                nums += [func.start + k for k in range(func.n) if not func.is_final(k)]
        return nums

    def job_of(self, num: int) -> JobEntry | None:
        found = self.locate_num(num)
        return found[0].job(self.tag, found[1]) if found is not None else None

    @staticmethod
    def index(job: JobEntry) -> int:
        """``job``'s place in its call or map."""
        assert job.func is not None
        return int(job.jid.rpartition("-")[2]) - job.func.start

    # ---- the loop thread ----

    async def lookup(self, jids: Iterable[str]) -> list[JobEntry]:
        """The entries of ``jids``; ids this client never submitted are asked of the
        nodes and watched (UnknownJob if no reachable node knows one)."""
        jobs, adopted = [], []
        for jid in jids:
            if not isinstance(jid, str):
                raise TypeError(f"job ids are strings, got {jid!r}")
            job = self.find(jid)
            if job is None:
                job = self._adopted[jid] = JobEntry(jid, None, b"", state=UNKNOWN)
                adopted.append(job)
            jobs.append(job)
        if adopted:
            await self._adopt(adopted)
        return jobs

    async def _adopt(self, adopted: list[JobEntry]) -> None:
        if self._ask is None:
            raise ConnectionClosed("cannot ask about jobs: the client is not running")
        known = await self._ask(tuple(j.jid for j in adopted))
        missing = [job.jid for job in adopted if job.jid not in known]
        if missing:
            for jid in missing:
                self._adopted.pop(jid, None)
            raise UnknownJob(
                f"no reachable node knows job {', '.join(missing[:5])}"
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        for job in adopted:
            node_id, state = known[job.jid]
            job.node = node_id
            if job.state == UNKNOWN:
                job.state = min(state, PROCESSING)  # a finished result is on its way (watch)

    def adopted_result(self, item: ResultItem, node_id: str) -> None:
        """The result of a job of another process that this client waits for."""
        jid, state, blob, error = item
        with self._final_lock:
            job = self._adopted.get(jid)
            if job is None or job.final:
                return  # a late duplicate
            job.state, job.blob, job.error, job.node = state, blob, error, node_id
            if job.callbacks is not None:
                _call_back(job)

    def accept(self, nums: Sequence[int], items: dict[int, ResultItem], node_id: str) -> None:
        """The scheduler holds these results final: store them and wake their waiters."""
        now = time.time()
        tag = self.tag
        func: Func | None = None
        with self._final_lock:
            for num in nums:
                _, state, blob, error = items[num]
                if func is None or not func.start <= num < func.start + func.n:
                    found = self.locate_num(num)  # a map's results come in runs
                    if found is None:
                        continue
                    func = found[0]
                k = num - func.start
                job = func.job(tag, k)
                job.state, job.blob, job.error, job.node = state, blob, error, node_id
                job.args = b""  # final: it will not be sent again
                if not func.came:
                    func.came = array("f", bytes(4 * func.n))
                func.came[k] = now - func.submitted  # func.arrived(), inline: per job
                if job.callbacks is not None:
                    _call_back(job)
                if state == DONE and not job.attempts and func.n > 1:  # a call keeps its entry
                    func.compact(k, blob, node_id)

    def fail(self, job: JobEntry, error: ErrorInfo, blob: bytes = b"") -> None:
        """``job`` ends with ``error`` (killed, or failed before or instead of running)."""
        with self._final_lock:
            job.state = KILLED if error.kind == ErrorKind.KILLED else ERROR
            job.error = error
            job.blob = blob
            job.args = b""
            if job.func is not None:
                job.func.arrived(self.index(job), time.time())
            if job.callbacks is not None:
                _call_back(job)

    def fail_nums(self, nums: Sequence[int], error: ErrorInfo) -> None:
        """Jobs the scheduler failed. A range: jobs never sent, and none of their call's
        or map's later jobs will be either: its unread arguments go too."""
        funcs: dict[int, Func] = {}
        for num in nums:
            found = self.locate_num(num)
            if found is not None:
                funcs[found[0].start] = found[0]
                self.fail(found[0].job(self.tag, found[1]), error)
        if isinstance(nums, range):
            for func in funcs.values():
                if nums.stop >= func.start + func.n:
                    func.ahead.clear()
                    func.source = None

    def fail_unsent(self, func: Func, error: ErrorInfo) -> None:
        """A call or map the scheduler never saw fails whole (its _env could not be pushed);
        the arguments pickled ahead are dropped, its sequences left unread."""
        for k in range(func.n):
            self.fail(func.job(self.tag, k), error)
        func.ahead.clear()
        func.source = None

    def lost(self, num: int, attempts: int, node_id: str) -> None:
        """Job ``num`` lost an attempt on node ``node_id`` ("": unknown) and waits again."""
        job = self.job_of(num)
        if job is not None:
            job.attempts, job.state = attempts, QUEUED
            job.node = node_id or job.node

    def requeue(self, jid: str) -> None:
        """A node handed job ``jid`` back unstarted: it waits to be placed again."""
        job = self.find(jid)
        if job is not None and not job.final:
            job.state = QUEUED

    def started(self, jid: str) -> None:
        """A node started job ``jid``: tell its call's ``on_start``, if it asked."""
        found = self.locate(jid)
        if found is not None and found[0].on_start is not None:
            found[0].on_start(jid)

    def take(self, nums: Sequence[int], dropped: list[int]) -> tuple[Func | None, list[JobEntry]]:
        """The jobs ``nums`` leave for a node: their entries, marked processing, with
        their arguments read the first time (one whose arguments cannot be read or
        pickled fails here and goes to ``dropped``). Also their (last) call or map."""
        jobs: list[JobEntry] = []
        func: Func | None = None
        for num in nums:
            found = self.locate_num(num)
            if found is None:
                continue
            func = found[0]
            job = func.job(self.tag, found[1])
            if job.args is None and not self._read_args(job, found[1]):
                dropped.append(num)
                continue
            job.state = PROCESSING
            jobs.append(job)
        return func, jobs

    def _read_args(self, job: JobEntry, k: int) -> bool:
        """Job ``k`` of its map is sent the first time: take its pickled arguments, read
        from the map's sequences if not pickled yet (in order; items of jobs killed before
        they were sent are skipped). False: they could not be read or pickled (it failed)."""
        func = job.func
        assert func is not None
        while func.next < k:  # killed before they were sent: their items are skipped
            if func.ahead:
                func.ahead.popleft()
            elif func.source is not None:
                next(func.source, None)
            func.next += 1
        func.next = k + 1
        if func.ahead:  # pickled by prepare()
            job.args = func.ahead.popleft()
            return True
        assert func.source is not None
        try:
            args = next(func.source)
        except StopIteration:  # so will the jobs after it: the iterator stays exhausted
            exc: Exception = SerializationError(
                f"the sequences of map({func.name}, ...) ended before job {job.jid}: "
                "they were changed after map() was called"
            )
        except Exception as e:  # e.g. a dict changed size while it was read
            exc = SerializationError(
                f"cannot read the arguments of job {job.jid} from the sequences of "
                f"map({func.name}, ...): {type(e).__name__}: {e}"
            )
        else:
            try:
                job.args = dumps_payload(args, f"arguments of {func.name} (job {job.jid})")
                return True
            except SerializationError as e:
                exc = e
        blob, info = pack_exception(exc)
        self.fail(job, info, blob)
        return False
