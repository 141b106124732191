"""What the workers of one pod share (--workers > 1): learnt clicks, the learning guard's
records, announced items, news of a reloaded model.

    link = WorkerLink(sock, learn_clicks=True)       # sock: this worker's end of a socketpair
    guard, catalogue = link.guard(settings, catalogue_config)   # in place of make_guard's
    link.attach(layer)                               # the online layer, or None
    await link.start()                               # on the serving event loop
    ...                                              # every record goes to the supervisor,
    await link.stop()                                # which relays it to the other workers

Each worker is a process with its own online layer and learning guard (guard.py). The kernel
spreads connections over the workers (SO_REUSEPORT), so a session's calls, and a client's,
may reach any of them. Without sharing each worker would learn 1/N of the clicks, and a
client spreading its calls over N workers could teach N times its cap. So whenever the guard
lets clicks of a call through, the worker sends one record, and every other worker applies
it on its event loop:

  - the guard's records: the session's click count and last click (a call repeated on
    another worker teaches nothing), the transitions the session and the x-client-id taught
    (repeat_transition, session_cap and client_cap then count them wherever they come);
  - the clicks themselves, through clickbus.learn_shared, as the Redis bus applies another
    replica's (not with --redis-url: the bus then carries the clicks to every worker of
    every pod, and the records carry the guard's part only).

The rules then hold across workers up to the time a record takes to arrive (well under a
millisecond between calls; behind a busy worker's queue of calls at worst): calls racing on
two workers within that time are judged on what each knew, so a client may exceed its cap
by what it teaches on the other workers meanwhile, never N times over a whole window.
PutItems on one worker announces (or withdraws) the items on every worker, ForgetUser
forgets the user on every worker (the id crosses only this pod's socket); a worker that
loads a new export tells the others, which look at the model path at once rather than at
their next poll. Items opened on evidence (--catalogue-open) are counted per worker.

Wire: one JSON object per line over a Unix socket; the supervisor (supervisor.py) relays every
line whose "k" is in RELAYED to the other workers, and sends "serve" once all have loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import traceback
from collections.abc import Awaitable, Callable, Container, Iterable, Sequence
from typing import Any

from ..clickbus import WINDOW, SharedClick, learn_shared
from ..learning.catalogue import Catalogue, CatalogueConfig, CatalogueFull
from ..learning.guard import GuardConfig, LearningGuard, transition_hashes
from ..metrics import BusStats
from ..pipeline.blend import OnlineLayer

log = logging.getLogger(__name__)

RELAYED = frozenset({"learnt", "items", "forget", "reloaded"})  # the supervisor passes on
KINDS = RELAYED | {"serve"}  # the records a worker applies
# a worker's "beat" to the supervisor, this often, from its event loop: the supervisor kills
# a worker it has not heard from for supervisor.HUNG_AFTER_S (stopped, or its loop stuck)
BEAT_S = 1.0
# bytes a worker lets wait for the supervisor before it drops records (and counts them)
MAX_BUFFERED = 8 * 2**20


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class SharedGuard(LearningGuard):
    """The learning guard of one worker: decides as LearningGuard does, tells the others
    what it let through (on_learnt), and records what they let through (apply)."""

    def __init__(self, config: GuardConfig, catalogue: Catalogue):
        super().__init__(config, catalogue)
        self.on_learnt: Callable[[dict[str, Any]], None] | None = None

    def select(
        self,
        session_id: str,
        clicks: Sequence[str],
        client_id: str,
        now: float,
        known: Container[str],
    ) -> list[tuple[int, str]]:
        chosen = super().select(session_id, clicks, client_id, now, known)
        if chosen and self.on_learnt is not None:
            # per learnt click: its index, whether the layer gets the session id with it,
            # and the clicks up to it that the others' layers and guards need
            learnt = [[i, bool(key), list(clicks[max(0, i - WINDOW + 1) : i + 1])]
                      for i, key in chosen]  # fmt: skip
            self.on_learnt({"k": "learnt", "s": session_id, "c": client_id, "n": len(clicks),
                            "l": clicks[-1], "t": now, "w": learnt})  # fmt: skip
        return chosen

    def apply(self, session_id: str, client_id: str, n: int, last: str,
              transitions: Iterable[tuple[str | None, str | None, str]],
              now: float) -> None:  # fmt: skip
        """Record what another worker's guard let through for a call of n clicks ending
        in `last`, as if this guard had: the same call here is then a repeat, and the
        transitions count against the session's and the client's caps. transitions: per
        learnt click (the click two back, the previous one, the click; None where none).

        Reaches into LearningGuard's records (same rules): the hashes are those
        LearningGuard._check records."""
        session = self._session(session_id)
        if n > session.n:
            session.n, session.last = n, last
        client = self._client(client_id, now) if client_id else None
        for two_back, previous, item in transitions:
            pair, skip = transition_hashes(two_back, previous, item)
            if pair not in session.pairs:
                session.pairs.append(pair)
            if client is not None and pair not in client.pairs:
                client.pairs.append(pair)
                if skip:
                    client.skips.append(skip)


class SharedCatalogue(Catalogue):
    """A worker's catalogue: what PutItems announces or withdraws here reaches the others."""

    def __init__(self, config: CatalogueConfig | None = None):
        super().__init__(config)
        self.on_change: Callable[[dict[str, Any]], None] | None = None

    def put(self, items: Iterable[tuple[str, float]], now: float) -> int:
        items = list(items)
        added = super().put(items, now)  # raises CatalogueFull before anything changes
        if self.on_change is not None:
            self.on_change({"k": "items", "put": items, "t": now})
        return added

    def remove(self, items: Iterable[str]) -> int:
        items = list(items)
        removed = super().remove(items)
        if self.on_change is not None:
            self.on_change({"k": "items", "remove": items})
        return removed

    def apply(self, message: dict[str, Any]) -> None:
        """Another worker's PutItems, without telling anyone again."""
        try:
            if "put" in message:
                super().put([(str(i), float(e)) for i, e in message["put"]], message["t"])
            if "remove" in message:
                super().remove(str(i) for i in message["remove"])
        except CatalogueFull as err:  # the sender had room: this copy differs; keep serving
            log.error("items announced on another worker do not fit here: %s", err)


class WorkerLink:
    """One worker's end of the channel to the supervisor. start() and stop() run on the
    worker's event loop, and so do the records it applies; sending never waits (records
    are dropped and counted when the supervisor lags MAX_BUFFERED behind)."""

    def __init__(self, sock: socket.socket, learn_clicks: bool = True):
        self.sock = sock
        self.learn_clicks = learn_clicks  # False with --redis-url: the bus shares the clicks
        self.stats = BusStats()
        self.layer: OnlineLayer | None = None
        self.shared_guard: SharedGuard | None = None
        self.shared_catalogue: SharedCatalogue | None = None
        self.on_serve: Callable[[], Awaitable[None]] | None = None  # all workers loaded
        self.on_reloaded: Callable[[], Awaitable[object]] | None = None  # another reloaded
        self._forget: Callable[[str], None] | None = None  # the serving engine's own
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._beat_task: asyncio.Task | None = None
        self._pending: list[bytes] = []  # records of this loop iteration, written together
        self._pending_bytes = 0

    def guard(self, settings: GuardConfig, catalogue: CatalogueConfig) -> SharedGuard:
        """The guard (with its catalogue) whose decisions and items this link shares."""
        shared_catalogue = SharedCatalogue(catalogue)
        shared_catalogue.on_change = lambda message: self.send(message)
        guard = SharedGuard(settings, shared_catalogue)
        guard.on_learnt = self._send_learnt
        self.shared_guard, self.shared_catalogue = guard, shared_catalogue
        return guard

    def attach(self, layer: OnlineLayer | None) -> None:
        self.layer = layer

    def share_forgetting(self, engine: Any) -> None:
        """Make engine.forget_user (ForgetUser) forget the user on the other workers too;
        for each engine the server loads (user states belong to a model). They apply it with
        engine.forget_user_here where the engine has one: what that worker holds only, as
        this one deleted the user from a shared store (a second delete there could fail)."""
        forget = engine.forget_user

        def forget_everywhere(user_id: str) -> None:
            forget(user_id)
            self.send({"k": "forget", "u": user_id})

        engine.forget_user = forget_everywhere
        self._forget = getattr(engine, "forget_user_here", forget)

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock)
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read(reader), name="worker-link"
        )
        self._beat_task = asyncio.get_running_loop().create_task(self._beat(), name="beat")

    async def stop(self) -> None:
        """Send what is buffered and stop applying the others' records."""
        if self.shared_guard is not None:
            self.shared_guard.on_learnt = None
        if self._beat_task is not None:
            self._beat_task.cancel()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._flush()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self._writer.drain(), 1.0)
            self._writer.close()
            self._writer = None

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the supervisor; never waits. The records of one event-loop
        iteration (a batch's calls) go out in one write: a write per call was a system
        call per call, 5% of a worker's time under load."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() + self._pending_bytes > MAX_BUFFERED:
            self.stats.dropped += 1
            return
        record = encode(message)
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(record)
        self._pending_bytes += len(record)

    def _flush(self) -> None:
        records, self._pending, self._pending_bytes = self._pending, [], 0
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(records))

    async def _beat(self) -> None:
        while True:
            self.send({"k": "beat"})
            await asyncio.sleep(BEAT_S)

    def _send_learnt(self, message: dict[str, Any]) -> None:
        self.stats.published += 1
        self.send(message)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError) as err:  # ValueError: a line over the limit
                log.error("worker link: %s", err)
                return
            if not line:  # the supervisor is gone (killed): nobody would stop this worker
                log.error("worker link: the supervisor is gone; draining and exiting")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            kind = "unreadable"
            try:
                message = json.loads(line)
                kind = message.get("k") if message.get("k") in KINDS else "unknown"
                await self._apply(message)
            except Exception as err:  # a malformed record must not stop the others
                # its kind, the error's type and where: never the record nor the error's
                # message, which may quote it (user ids of ForgetUser, sessions, clicks)
                stack = "".join(traceback.format_tb(err.__traceback__))
                log.error("worker link: cannot apply a %s record (%s)\n%s", kind,
                          type(err).__name__, stack.rstrip())  # fmt: skip

    async def _apply(self, message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind == "learnt":
            self._apply_learnt(message)
        elif kind == "items" and self.shared_catalogue is not None:
            self.shared_catalogue.apply(message)
        elif kind == "forget" and self._forget is not None:
            self._forget(str(message["u"]))
        elif kind == "serve" and self.on_serve is not None:
            await self.on_serve()
        elif kind == "reloaded" and self.on_reloaded is not None:
            await self.on_reloaded()

    def _apply_learnt(self, message: dict[str, Any]) -> None:
        session, client, now = str(message["s"]), str(message["c"]), float(message["t"])
        learnt = [(int(i), bool(keyed), [str(c) for c in window])
                  for i, keyed, window in message["w"]]  # fmt: skip
        if self.shared_guard is not None:
            transitions = [(w[-3] if i > 1 and len(w) > 2 else None,
                            w[-2] if i > 0 and len(w) > 1 else None, w[-1])
                           for i, _, w in learnt]  # fmt: skip
            n, last = int(message["n"]), str(message["l"])
            self.shared_guard.apply(session, client, n, last, transitions, now)
        self.stats.applied += 1
        if not self.learn_clicks or self.layer is None:
            return
        for i, keyed, window in learnt:
            click = SharedClick(session if keyed else "", i + 1, tuple(window), now)
            if not learn_shared(self.layer, click):
                self.stats.duplicates += 1
