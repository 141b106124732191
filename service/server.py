"""The gRPC server: recsys.v1.Recommender, grpc.health.v1, reflection, Prometheus metrics.

    server = RecommendationServer(load_config(["--model", "runs/demo/export", "--port", "0"]))
    server.start()          # listening; health NOT_SERVING
    server.load_model()     # health SERVING
    server.reload()         # a new export at the model path: load, warm, swap; or keep the old
    server.stop()           # NOT_SERVING, drain, refuse new calls, let running ones finish

An asyncio (grpc.aio) server on an event loop of its own thread; the model runs in a worker
thread beside it (batching.py). With --workers N > 1 each of N processes runs one, on the
same port (workers/supervisor.py), linked to the others (workers/link.py). This module owns the
lifecycle: listening, loading and hot-reloading the model, draining on shutdown. The
methods are handlers.py; the pipeline itself is recommender.Recommender.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .clickbus import ClickBus
from .config import ServiceConfig
from .handlers import SERVICE_NAME, Handlers
from .learning.catalogue import Catalogue, CatalogueConfig, read_catalogue_file
from .learning.guard import GuardConfig, LearningGuard
from .learning.online import OnlineModel
from .metrics import MetricsEndpoint, ServerStats
from .pipeline.blend import BlendConfig, OnlineLayer, online_config_for
from .pipeline.decode import Limits
from .pipeline.recommender import Recommender
from .pipeline.sessions import SessionCache
from .pipeline.user_store import make_user_store
from .pipeline.users import UserSessions
from .proto import recommender_pb2 as pb
from .reload import ModelSource
from .runtime import ExportedModel, ModelLoadError
from .workers.link import WorkerLink

log = logging.getLogger(__name__)
main_log = logging.getLogger("service")  # the process's own news, as before workers
# on shutdown, once the calls in flight have answered: how long no new call may have come
# in (every caller that retries then waits on a held refusal) before gRPC itself stops; and
# how long that is waited for at most (callers with deadlines under a second keep coming)
REFUSE_QUIET_S = 0.2
REFUSE_QUIET_WAIT_MAX_S = 1.0
# how long after gRPC's stop began (GOAWAY sent, listener closed) the held refusals answer:
# callers hear the GOAWAY first and retry on a new connection, which is refused, UNAVAILABLE
GOAWAY_S = 0.1
# gRPC's stop gets at least this long, so that held refusals answer rather than be cancelled
STOP_GRACE_MIN_S = 1.0

# Status's last_reload_result until the first model is loaded
LOADING = "loading"

T = TypeVar("T")
# the cyclic collector's first threshold (Python's default: 700). Every call allocates
# gRPC and asyncio objects, so at 700 the collector ran ~50 times a second and its full
# passes over the growing online layer (kept answers, session records) took 0.74 s of the
# first 60,000 calls at 32 callers, against 0.11 s at 10,000 (scripts/bench_service.py's
# load); reference counting frees nearly everything anyway
GC_THRESHOLD = 10_000


class RecommendationServer:
    """One process's gRPC and metrics servers, on an event loop in a thread of their own."""

    def __init__(self, config: ServiceConfig, link: WorkerLink | None = None):
        """link: this process is one of several workers (workers/), sharing what it learns
        through the link; it turns SERVING when the supervisor says all have loaded."""
        self.config = config
        self.link = link
        self.stats = ServerStats()
        self.handlers = Handlers(self.stats)
        self.handlers.status = pb.StatusResponse(
            model_dir=str(config.model_dir), last_reload_result=LOADING
        )
        self.metrics = MetricsEndpoint(self.stats)
        self.source = ModelSource(config.model_dir)
        self.online = make_online_layer(config)  # outlives model reloads
        self.guard = make_guard(config, link)  # so do what it learnt and the catalogue
        self.catalogue = self.guard.catalogue
        self.stats.learning = self.guard.stats
        self._catalogue_file_mtime: float | None = None
        self.bus: ClickBus | None = None  # shares self.online's clicks (--redis-url)
        self.port = 0
        self.metrics_port = 0
        self._loop = _new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._watcher: asyncio.Task | None = None
        self._reloading = asyncio.Lock()
        if link is not None:
            link.attach(self.online)
            link.on_serve = self._serve
            link.on_reloaded = lambda: self._reload(force=False)  # at once, not at next poll
            self.stats.worker_link = link.stats

    # --- the synchronous face (tests, __main__) ---

    def start(self) -> None:
        """Listen on config.host:port (health NOT_SERVING) and start the metrics endpoint.
        Raises OSError when the port cannot be had."""
        self._thread.start()
        self._call(self._start())

    def load_model(self) -> None:
        """Load the model and start serving; raises runtime.ModelLoadError."""
        self._call(self._first_load())

    def reload(self) -> bool:
        """Load the export now at the model path and swap it in; False (old model kept)
        when it cannot be loaded."""
        return self._call(self._reload(force=True))

    def request_reload(self) -> None:
        """reload() without waiting (from a signal handler)."""
        asyncio.run_coroutine_threadsafe(self._reload(force=True), self._loop)

    def stop(self, grace_s: float | None = None, drain_s: float | None = None) -> None:
        """NOT_SERVING; keep taking calls for drain_s; then refuse new calls and give those
        in flight grace_s seconds (None: the config's)."""
        grace = self.config.grace_s if grace_s is None else grace_s
        drain = self.config.drain_s if drain_s is None else drain_s
        if self._thread.is_alive():
            self._call(self._stop(grace, drain))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self.metrics.close()
        log.info("stopped")

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # --- on the loop ---

    async def _start(self) -> None:
        cfg = self.config
        options = [
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
            ("grpc.max_receive_message_length", cfg.max_request_bytes),
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((self.handlers.generic_handler(),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.handlers.catalogue_token = _catalogue_token(cfg)
        self._refresh_catalogue()  # raises OSError / ValueError for a bad file
        address = _join(cfg.host, cfg.port)
        try:
            if cfg.tls_cert is not None:
                self.port = server.add_secure_port(address, _tls_credentials(cfg))
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as err:  # grpc.aio raises where grpc returned 0
            raise OSError(f"cannot listen on {address} ({err}); is the port in use?") from err
        if self.port == 0:
            raise OSError(f"cannot listen on {address}; is the port in use?")
        await server.start()
        self._server = server
        self.metrics_port = self.metrics.serve(cfg.metrics_host or cfg.host, cfg.metrics_port)
        tls = " (TLS)" if cfg.tls_cert else ""
        if self.link is None:
            log.info("gRPC on %s%s, metrics on port %d", _join(cfg.host, self.port), tls,
                     self.metrics_port)  # fmt: skip
        else:
            log.info("gRPC on %s%s; this worker's own metrics on %s:%d", _join(cfg.host, self.port),
                     tls, cfg.metrics_host, self.metrics_port)  # fmt: skip
            await self.link.start()
            self.link.send({"k": "hello", "metrics_port": self.metrics_port})
        if cfg.redis_url and self.online is not None:
            self.bus = ClickBus(self.online, cfg.redis_url)
            self.stats.clickbus = self.bus.stats
            await self.bus.start()  # in the background: serving never waits for Redis
        elif cfg.redis_url and cfg.user_store != "redis":
            log.warning("--redis-url is ignored: the online layer is off")

    async def _load(self, initial: bool) -> None:
        """Load, warm up and swap in the export at the model path. Raises ModelLoadError."""
        cfg = self.config
        signature = self.source.signature()
        try:
            engine = await asyncio.to_thread(self._build_engine)
        except Exception as err:
            self._record_reload(False, str(err), signature)
            if isinstance(err, ModelLoadError):
                raise
            raise ModelLoadError(f"{cfg.model_dir}: the export could not be used ({err})") from err
        engine.start_batching(cfg.max_batch, cfg.max_wait_ms / 1000.0, cfg.max_queue,
                              self.stats.batch)  # fmt: skip
        old, self.handlers.engine = self.handlers.engine, engine
        self._record_reload(True, "ok", signature)
        model = engine.model
        self.stats.model_loaded = 1.0
        self.stats.model_info = {
            "model_version": model.model_version,
            "provider": model.provider,
            "n_items": str(model.n_items),
            "state_size": str(model.state_size),
        }
        self.stats.cache_entries = engine.cache.__len__
        self.stats.cache_bytes = lambda: engine.cache.nbytes
        users = engine.users
        self.stats.user_entries = (lambda: 0) if users is None else users.store.__len__
        if self.online is not None:  # the ranker's weights and hit rates, in /metrics
            self.stats.online_report = self.online.report
        catalogue = self.catalogue
        self.stats.catalogue_sizes = lambda: {"model": model.n_items, **catalogue.sizes()}
        self.handlers.status = pb.StatusResponse(
            model_version=model.model_version,
            model_dir=str(self.source.resolved()),
            n_items=model.n_items,
            provider=model.provider,
            loaded_at=time.time(),
            last_reload_result="ok",
            last_reload_at=time.time(),
        )
        if initial:
            if self.link is None:
                await self._serve()
            else:  # SERVING once every worker has loaded: the supervisor says "serve"
                self.link.send({"k": "loaded"})
            if cfg.reload_poll_s > 0:
                self._watcher = asyncio.get_running_loop().create_task(self._watch())
        elif self.link is not None:
            self.link.send({"k": "reloaded"})
        if old is not None:
            await old.close()  # calls already queued on the old model finish there
        log.info("serving model %s from %s", model.model_version, self.source.resolved())

    async def _serve(self) -> None:
        """Health SERVING, unless shutting down already (NOT_SERVING sticks)."""
        if self._health is not None and not self.handlers.closing:
            for name in ("", SERVICE_NAME):
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _build_engine(self) -> Recommender:
        cfg = self.config
        model = ExportedModel.load(self.source.resolved(), cfg.device, cfg.ort_threads)
        cache = SessionCache(cfg.cache_size, cfg.cache_ttl_s, int(cfg.cache_mb * 2**20))
        limits = Limits(
            max_clicks=cfg.max_clicks,
            max_candidates=cfg.max_candidates,
            max_exclude=cfg.max_exclude,
            max_item_id_bytes=cfg.max_item_id_bytes,
        )
        users = store = None
        # user states belong to the model's weights: one store each. A shared store is made
        # for any model: ForgetUser must delete there what an HRNN export before this one
        # left (a rollback would read it), also while a model without a user graph serves
        if model.has_user_graph or cfg.user_store == "redis":
            store = make_user_store(cfg, model, self.stats.user_store)
        if model.has_user_graph:
            assert store is not None
            users = UserSessions(model, store, cfg.user_session_idle_s, cache)
        engine = Recommender(model, cache, limits, online=self.online, guard=self.guard,
                             users=users, user_store=store)  # fmt: skip
        engine.warm_up()
        if self.link is not None:
            self.link.share_forgetting(engine)
        return engine

    async def _first_load(self) -> None:
        # under the reload lock: a SIGHUP during the first load waits for it, then reloads,
        # instead of starting a second first load (and a second watcher) beside it
        async with self._reloading:
            if self.handlers.engine is None:  # else a SIGHUP's reload got here first
                await self._load(initial=True)

    async def _reload(self, force: bool) -> bool:
        async with self._reloading:
            if not force and not self.source.changed():
                return False
            try:
                await self._load(initial=self.handlers.engine is None)
            except ModelLoadError as err:
                log.error("model reload rejected, the old model keeps serving: %s", err)
                return False
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_poll_s)
            try:
                await self._reload(force=False)
            except Exception:  # the watcher must survive anything a bad export does
                log.exception("model watcher")
            try:
                self._refresh_catalogue()
            except (OSError, ValueError) as err:
                log.error("catalogue file rejected, the items read before stay: %s", err)

    def _refresh_catalogue(self) -> None:
        """Drop expired items; re-read --catalogue-file when it changed. Raises OSError or
        ValueError for a file that cannot be used (nothing is changed then)."""
        now = time.time()
        self.catalogue.expire(now)
        path = self.config.catalogue_file
        if path is None:
            return
        mtime = path.stat().st_mtime
        if mtime == self._catalogue_file_mtime:
            return
        items = read_catalogue_file(path, self.config.max_item_id_bytes)
        added, removed = self.catalogue.replace_file_items(items, now)
        self._catalogue_file_mtime = mtime
        log.info("catalogue file %s: %d items, %d new, %d withdrawn", path, len(items), added,
                 removed)  # fmt: skip

    def _record_reload(self, ok: bool, message: str, signature: object) -> None:
        self.stats.reloads["ok" if ok else "failed"] += 1
        self.stats.last_reload_ok = 1.0 if ok else 0.0
        self.stats.last_reload_at = time.time()
        self.source.tried(signature)
        status = pb.StatusResponse()
        status.CopyFrom(self.handlers.status)
        status.last_reload_result = message
        status.last_reload_at = self.stats.last_reload_at
        self.handlers.status = status

    async def _refuse_then_wait(self, grace: float) -> float:
        """New calls get UNAVAILABLE from the handlers; wait (at most grace) until the calls
        in flight have answered, then hold refusals until no new call has come in for
        REFUSE_QUIET_S (at most REFUSE_QUIET_WAIT_MAX_S). Returns the grace for gRPC's own
        stop: 0 (cancel at once) when the grace ran out with calls still in flight."""
        handlers = self.handlers
        handlers.closing = True
        deadline = time.monotonic() + grace
        while handlers.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if grace <= 0 or handlers.in_flight > 0:
            return 0.0
        handlers.hold_refusals()
        holding_since = time.monotonic()
        while time.monotonic() < min(deadline, holding_since + REFUSE_QUIET_WAIT_MAX_S):
            if time.monotonic() - max(holding_since, handlers.last_refused) >= REFUSE_QUIET_S:
                break
            await asyncio.sleep(0.01)
        return max(deadline - time.monotonic(), STOP_GRACE_MIN_S)

    async def _stop_grpc(self, server: grpc.aio.Server, grace: float) -> None:
        """gRPC's own stop: listener closed, GOAWAY on every connection, calls that reach it
        from now on cancelled. The held refusals answer once callers have heard the GOAWAY."""
        if grace <= 0:
            self.handlers.release_refusals()
            await server.stop(0)
            return
        stopping = asyncio.ensure_future(server.stop(grace))
        await asyncio.sleep(GOAWAY_S)
        self.handlers.release_refusals()
        await stopping

    async def _stop(self, grace: float, drain: float) -> None:
        self.stats.model_loaded = 0.0
        if self._watcher is not None:
            self._watcher.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()  # NOT_SERVING, and it sticks
        if self._server is not None:
            if drain > 0:
                log.info("shutting down: still taking calls for %.1f s", drain)
                await asyncio.sleep(drain)
            log.info("shutting down: in-flight calls get up to %.1f s", grace)
            t0 = time.monotonic()
            await self._stop_grpc(self._server, await self._refuse_then_wait(grace))
            log.info("gRPC stopped %.2f s after new calls were first refused",
                     time.monotonic() - t0)  # fmt: skip
            self._server = None
        engine = self.handlers.engine
        if engine is not None:
            await engine.close()
        if self.bus is not None:
            await self.bus.stop()  # after the last calls, so their clicks go out too
        if self.link is not None:
            await self.link.stop()


def serve(config: ServiceConfig, link: WorkerLink | None = None) -> int:
    """`python -m service` with one worker, or one worker of a supervisor (link): one
    server in this process until SIGTERM or SIGINT; the exit status (__main__'s)."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        main_log.info("received %s", signal.Signals(signum).name)
        stopping.set()

    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    server = RecommendationServer(config, link)

    def on_hangup(signum: int, _frame: object) -> None:
        main_log.info("received SIGHUP: reloading the model")
        server.request_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        server.start()
    except (OSError, ValueError) as err:  # port in use, unreadable TLS file, bad Redis URL
        main_log.error("%s", err)
        server.stop(0, 0)
        return 2
    try:
        server.load_model()
    except ModelLoadError as err:
        main_log.error("cannot serve: %s", err)
        server.stop(0, 0)
        return 1
    while not stopping.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    server.stop()
    return 0


def make_online_layer(cfg: ServiceConfig) -> OnlineLayer | None:
    if not cfg.online:
        return None
    blend = BlendConfig(model_weight=cfg.blend_model_weight)
    settings = online_config_for(
        blend, half_life_s=cfg.online_half_life_s, max_items=cfg.online_max_items
    )
    return OnlineLayer(OnlineModel(settings), blend, max_sessions=session_records(cfg))


def session_records(cfg: ServiceConfig) -> int:
    """Sessions the online layer and the guard keep records of: as many as the state cache
    holds, or its default with the cache off. `--cache-size 0` turns off the cached states,
    not the per-session learning rules (with one record, two interleaved sessions taught a
    click on every call)."""
    return cfg.cache_size or ServiceConfig.cache_size


def make_guard(cfg: ServiceConfig, link: WorkerLink | None = None) -> LearningGuard:
    """The learning guard and its catalogue; with a link, ones that share with the other
    workers what they let through and the items announced."""
    catalogue_config = CatalogueConfig(
        max_items=cfg.catalogue_max_items,
        open=cfg.catalogue_open,
        open_min_sessions=cfg.catalogue_open_min_sessions,
        open_min_clients=cfg.catalogue_open_min_clients,
    )
    settings = GuardConfig(
        session_clicks=cfg.learn_session_clicks,
        client_clicks=cfg.learn_client_clicks,
        client_window_s=cfg.learn_client_window_s,
        max_sessions=session_records(cfg),  # as the online layer's
        max_clients=cfg.learn_max_clients,
    )
    if link is not None:
        return link.guard(settings, catalogue_config)
    return LearningGuard(settings, Catalogue(catalogue_config))


def _catalogue_token(cfg: ServiceConfig) -> str | None:
    """PutItems' token from --catalogue-token or its file (None: PutItems is off); raises
    OSError for an unreadable file, ValueError for an empty one."""
    if cfg.catalogue_token_file is None:
        return cfg.catalogue_token or None
    try:
        token = cfg.catalogue_token_file.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise OSError(f"cannot read the catalogue token file: {err}") from err
    if not token:
        raise ValueError(f"the catalogue token file {cfg.catalogue_token_file} is empty")
    return token


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (the serve extras install it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _tls_credentials(cfg: ServiceConfig) -> grpc.ServerCredentials:
    assert cfg.tls_cert is not None and cfg.tls_key is not None
    try:
        key, chain = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
        client_ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    except OSError as err:
        raise OSError(f"cannot read a TLS file: {err}") from err
    try:  # grpc would only fail at the port, with a message about the address
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except ssl.SSLError as err:
        raise ValueError(
            f"TLS certificate {cfg.tls_cert} and key {cfg.tls_key} cannot be used together "
            f"({err.reason or err}): give the certificate's own private key, both PEM "
            "(--tls-cert / --tls-key)"
        ) from err
    if cfg.tls_client_ca:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cfg.tls_client_ca)
        except (ssl.SSLError, ValueError) as err:
            raise ValueError(
                f"TLS client CA bundle {cfg.tls_client_ca} holds no usable CA certificate "
                f"({getattr(err, 'reason', None) or err}): give the PEM certificate of the CA "
                "that signs the clients' certificates (--tls-client-ca)"
            ) from err
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
