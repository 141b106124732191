"""Service configuration: command-line flags, each with an environment variable behind it.

    python -m service --model runs/demo/export --port 50051 --metrics-port 9090
    RECSYS_MODEL_DIR=runs/demo/export RECSYS_PORT=50051 python -m service

A flag overrides its variable; the variable overrides the default. The Dockerfile and the
Kubernetes manifests set the same variables with the same defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .pipeline.decode import Limits
from .runtime import DEVICES

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PUT_ITEMS = Limits.max_put_items  # items (and removals) a PutItems call may carry
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's message size limits are int32
USER_STORES = ("memory", "redis")


@dataclass(frozen=True)
class ServiceConfig:
    model_dir: Path  # an export directory, or a symlink to one (swapped for a new model)
    host: str = "0.0.0.0"  # all interfaces: in a container the probes come from outside
    port: int = 50051  # gRPC; 0 = any free port (tests)
    metrics_port: int = 9090  # Prometheus /metrics over HTTP; 0 = any free port
    metrics_host: str = ""  # address /metrics listens on; "" = the same as host
    device: str = "auto"  # cuda when usable, else cpu
    # session state cache: at 100 hidden units an entry takes about 1.3 KB (measured in
    # tests/service/pipeline/test_sessions.py), so 100,000 sessions are about 130 MB; the byte bound
    # wins when it is the smaller one
    cache_size: int = 100_000  # sessions; 0 turns the cache off
    cache_mb: float = 256.0
    cache_ttl_s: float = 1800.0  # a session idle for 30 minutes is forgotten
    # user states (users.py), for models with a user graph (HRNN) and calls with a user_id:
    # an entry holds the user state and two session states, about 2 KB at 100 units
    user_store_size: int = 100_000  # users; 0 remembers none (every session from zero)
    user_ttl_s: float = 30 * 86400.0  # a user without a call for 30 days is forgotten
    # a user's session ends after this long without a call, as training splits sessions
    user_session_idle_s: float = 1800.0
    # "memory": each replica its own users; "redis": shared by the replicas through
    # --redis-url, keys an HMAC of the user id with the secret file's key (users.py)
    user_store: str = "memory"
    user_store_secret_file: Path | None = None  # the same secret on every replica
    user_store_timeout_ms: float = 50.0  # the longest a Redis round trip holds the event loop
    # on SIGTERM: health turns NOT_SERVING at once, new calls are still taken for drain_s
    # (load balancers need a moment to stop sending), then calls in flight get grace_s
    drain_s: float = 2.0
    grace_s: float = 10.0
    max_clicks: int = 200  # longest click history a request may carry
    max_item_id_bytes: int = 128  # longest item id a request may carry
    max_exclude: int = 1000  # exclude_items per request
    max_candidates: int = 1000  # ScoreItems candidates per request
    # dynamic batching: calls that arrive while a batch runs form the next one; under load
    # a batch is held up to max_wait_ms to fill (pipeline/batching.py; a lone caller never
    # waits); docs/service.md and the README's serving table have the measured trade-off
    max_batch: int = 64
    max_wait_ms: float = 4.0
    max_queue: int = 512  # calls waiting for the model; beyond, RESOURCE_EXHAUSTED at once
    # onnxruntime intra-op threads per batch run (0 = one per core). The event loop needs
    # a core of its own on a 2-core machine
    ort_threads: int = 1
    # online layer (blend.py, online.py): statistics learnt from the requests' clicks,
    # blended with the model; the defaults come from `python -m service.tools.replay` runs
    online: bool = True
    blend_model_weight: float = 0.7
    online_half_life_s: float = 3600.0
    online_max_items: int = 100_000
    # replicas share the clicks they learn through this Redis (clickbus.py); None: each
    # replica learns from its own calls only
    redis_url: str | None = None
    # what the online layer may learn and recommend (catalogue.py, guard.py): the model's
    # items and announced ones. PutItems (and ForgetUser) need this operator token; without
    # one they answer UNIMPLEMENTED
    catalogue_token: str | None = None  # prefer the file: a flag shows in the process list
    catalogue_token_file: Path | None = None
    catalogue_file: Path | None = None  # announced items, one a line; read on change
    catalogue_max_items: int = 1_000_000  # about 150 MB of announced ids at most
    catalogue_open: bool = False  # admit unannounced ids seen in enough sessions and clients
    catalogue_open_min_sessions: int = 10
    catalogue_open_min_clients: int = 3  # calls without x-client-id count as one client
    # learning caps (guard.py): clicks one session may teach, and one x-client-id per window
    learn_session_clicks: int = 50
    learn_client_clicks: int = 20
    learn_client_window_s: float = 60.0
    learn_max_clients: int = 100_000  # clients whose windows are remembered
    reload_poll_s: float = 5.0  # how often the model path is checked for a new export; 0: off
    reuse_port: bool = False  # SO_REUSEPORT: off, so a second server on the port fails
    # processes answering on the port (workers/); 0: the CPUs this process may use
    workers: int = 0
    tls_cert: Path | None = None  # server certificate chain (PEM); with tls_key turns on TLS
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # CA of client certificates: mutual TLS when given
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = []
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                problems.append(f"{name}={getattr(self, name)} is not a TCP port (0-65535)")
        if self.device not in DEVICES:
            problems.append(f"device={self.device!r} must be one of {', '.join(DEVICES)}")
        if self.user_store_size < 0:
            problems.append(f"user_store_size={self.user_store_size} must be >= 0")
        if self.user_store not in USER_STORES:
            problems.append(
                f"user_store={self.user_store!r} must be one of {', '.join(USER_STORES)}"
            )
        elif self.user_store == "redis" and (not self.redis_url or not self.user_store_secret_file):
            problems.append(
                "user_store='redis' needs redis_url and user_store_secret_file (a file with a "
                "random key, the same on every replica, e.g. from `openssl rand -hex 32`)"
            )
        if self.cache_size < 0:
            problems.append(f"cache_size={self.cache_size} must be >= 0 (0 turns it off)")
        positive: tuple[str, ...] = ("cache_mb", "cache_ttl_s", "max_clicks", "max_item_id_bytes")
        positive += ("user_ttl_s", "user_session_idle_s", "user_store_timeout_ms")
        positive += ("max_batch",)
        positive += ("max_queue", "max_exclude", "max_candidates", "catalogue_max_items")
        positive += ("catalogue_open_min_sessions", "catalogue_open_min_clients")
        positive += ("learn_session_clicks", "learn_client_clicks", "learn_client_window_s")
        positive += ("learn_max_clients",)
        for name in positive:
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if not 0.0 <= self.blend_model_weight <= 1.0:
            problems.append(f"blend_model_weight={self.blend_model_weight} must be in [0, 1]")
        if self.online_half_life_s <= 0 or self.online_max_items <= 0:
            problems.append("online_half_life_s and online_max_items must be positive")
        for name in (
            "drain_s",
            "grace_s",
            "ort_threads",
            "max_wait_ms",
            "reload_poll_s",
            "workers",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must not be negative")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            problems.append("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        if self.catalogue_token is not None and self.catalogue_token_file is not None:
            problems.append("catalogue_token and catalogue_token_file: give one or neither")
        if self.log_level.upper() not in LOG_LEVELS:
            problems.append(f"log_level={self.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
        if not problems and self.max_request_bytes > MAX_MESSAGE_BYTES:
            problems.append(
                f"max_clicks, max_exclude, max_candidates and max_item_id_bytes allow requests "
                f"of {self.max_request_bytes:,} bytes, more than gRPC's {MAX_MESSAGE_BYTES:,}; "
                "lower them"
            )
        if problems:
            raise ValueError("invalid service configuration: " + "; ".join(problems))

    @property
    def log_level_number(self) -> int:
        return int(getattr(logging, self.log_level.upper()))

    @property
    def max_request_bytes(self) -> int:
        """The largest valid request on the wire, with room to spare: the receive limit.

        Every id costs its bytes plus at most 3 of framing (tag and length); a PutItems
        entry (an item, or a removal) its id plus at most 16 (the item's own framing and
        its expires_at): PutItems takes its fixed PUT_ITEMS per call whatever the
        Recommend limits are."""
        ids = self.max_clicks + self.max_exclude + self.max_candidates
        recommend = ids * (self.max_item_id_bytes + 3)
        put_items = 2 * PUT_ITEMS * (self.max_item_id_bytes + 16)
        return 4096 + max(recommend, put_items)


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


# field -> (flag, environment variable, parser, help)
_OPTIONS: dict[str, tuple[str, str, Callable[[str], Any], str]] = {
    "model_dir": ("--model", "RECSYS_MODEL_DIR", Path, "export directory or a symlink to one"),
    "host": ("--host", "RECSYS_HOST", str, "address to listen on"),
    "port": ("--port", "RECSYS_PORT", int, "gRPC port"),
    "metrics_port": ("--metrics-port", "RECSYS_METRICS_PORT", int, "Prometheus HTTP port"),
    "metrics_host": (
        "--metrics-host",
        "RECSYS_METRICS_HOST",
        str,
        "address /metrics listens on (default: --host)",
    ),
    "device": ("--device", "RECSYS_DEVICE", str, "auto, cpu or cuda"),
    "cache_size": ("--cache-size", "RECSYS_CACHE_SIZE", int, "sessions kept; 0 = no cache"),
    "cache_mb": ("--cache-mb", "RECSYS_CACHE_MB", float, "memory the session cache may use"),
    "cache_ttl_s": ("--cache-ttl-s", "RECSYS_CACHE_TTL_S", float, "idle seconds a session is kept"),
    "user_store_size": (
        "--user-store-size",
        "RECSYS_USER_STORE_SIZE",
        int,
        "user states kept (HRNN models, calls with user_id); 0 = none",
    ),
    "user_ttl_s": ("--user-ttl-s", "RECSYS_USER_TTL_S", float, "idle seconds a user is kept"),
    "user_session_idle_s": (
        "--user-session-idle-s",
        "RECSYS_USER_SESSION_IDLE_S",
        float,
        "idle seconds after which a user's session ends",
    ),
    "user_store": (
        "--user-store",
        "RECSYS_USER_STORE",
        str,
        "memory (each replica its own) or redis (shared through --redis-url)",
    ),
    "user_store_secret_file": (
        "--user-store-secret-file",
        "RECSYS_USER_STORE_SECRET_FILE",
        Path,
        "HMAC key of the user store's Redis keys (same file on every replica)",
    ),
    "user_store_timeout_ms": (
        "--user-store-timeout-ms",
        "RECSYS_USER_STORE_TIMEOUT_MS",
        float,
        "longest wait for one Redis round trip of the user store",
    ),
    "drain_s": ("--drain-s", "RECSYS_DRAIN_S", float, "seconds calls are still taken on SIGTERM"),
    "grace_s": ("--grace-s", "RECSYS_GRACE_S", float, "seconds in-flight calls get on SIGTERM"),
    "max_clicks": ("--max-clicks", "RECSYS_MAX_CLICKS", int, "most clicks a request may carry"),
    "max_item_id_bytes": (
        "--max-item-id-bytes",
        "RECSYS_MAX_ITEM_ID_BYTES",
        int,
        "longest item id a request may carry",
    ),
    "max_exclude": ("--max-exclude", "RECSYS_MAX_EXCLUDE", int, "most exclude_items per call"),
    "max_candidates": (
        "--max-candidates",
        "RECSYS_MAX_CANDIDATES",
        int,
        "most ScoreItems candidates per call",
    ),
    "max_batch": ("--max-batch", "RECSYS_MAX_BATCH", int, "most calls in one model run"),
    "max_wait_ms": (
        "--max-wait-ms",
        "RECSYS_MAX_WAIT_MS",
        float,
        "how long a batch may wait to fill under load (not for a lone caller); 0 = run as "
        "soon as the model is free",
    ),
    "max_queue": ("--max-queue", "RECSYS_MAX_QUEUE", int, "calls waiting before refusing more"),
    "ort_threads": (
        "--ort-threads",
        "RECSYS_ORT_THREADS",
        int,
        "onnxruntime threads per model run; 0 = one per core",
    ),
    "online": ("--online", "RECSYS_ONLINE", _flag, "learn from requests' clicks (1 or 0)"),
    "blend_model_weight": (
        "--blend-model-weight",
        "RECSYS_BLEND_MODEL_WEIGHT",
        float,
        "the model's share in the blend with the online statistics, 0 to 1",
    ),
    "online_half_life_s": (
        "--online-half-life-s",
        "RECSYS_ONLINE_HALF_LIFE_S",
        float,
        "seconds after which a click counts half in the online popularity",
    ),
    "online_max_items": (
        "--online-max-items",
        "RECSYS_ONLINE_MAX_ITEMS",
        int,
        "items the online statistics track",
    ),
    "redis_url": (
        "--redis-url",
        "RECSYS_REDIS_URL",
        str,
        "share learnt clicks with the other replicas through this Redis, redis://HOST:6379/0",
    ),
    "catalogue_token": (
        "--catalogue-token",
        "RECSYS_CATALOGUE_TOKEN",
        str,
        "operator token: the bearer token PutItems and ForgetUser calls must carry; "
        "unset: both are off",
    ),
    "catalogue_token_file": (
        "--catalogue-token-file",
        "RECSYS_CATALOGUE_TOKEN_FILE",
        Path,
        "file holding the operator token (e.g. a mounted secret)",
    ),
    "catalogue_file": (
        "--catalogue-file",
        "RECSYS_CATALOGUE_FILE",
        Path,
        "announced items, one a line, optional tab and expiry (Unix s); re-read on change",
    ),
    "catalogue_max_items": (
        "--catalogue-max-items",
        "RECSYS_CATALOGUE_MAX_ITEMS",
        int,
        "announced items held at most",
    ),
    "catalogue_open": (
        "--catalogue-open",
        "RECSYS_CATALOGUE_OPEN",
        _flag,
        "admit unannounced items once clicked in enough sessions and clients",
    ),
    "catalogue_open_min_sessions": (
        "--catalogue-open-min-sessions",
        "RECSYS_CATALOGUE_OPEN_MIN_SESSIONS",
        int,
        "distinct sessions that open an item",
    ),
    "catalogue_open_min_clients": (
        "--catalogue-open-min-clients",
        "RECSYS_CATALOGUE_OPEN_MIN_CLIENTS",
        int,
        "distinct x-client-ids that open an item (none sent: set 1)",
    ),
    "learn_session_clicks": (
        "--learn-session-clicks",
        "RECSYS_LEARN_SESSION_CLICKS",
        int,
        "clicks one session may teach the online layer",
    ),
    "learn_client_clicks": (
        "--learn-client-clicks",
        "RECSYS_LEARN_CLIENT_CLICKS",
        int,
        "clicks one x-client-id may teach per window",
    ),
    "learn_client_window_s": (
        "--learn-client-window-s",
        "RECSYS_LEARN_CLIENT_WINDOW_S",
        float,
        "seconds of that window",
    ),
    "learn_max_clients": (
        "--learn-max-clients",
        "RECSYS_LEARN_MAX_CLIENTS",
        int,
        "clients whose windows are remembered (least recent forgotten)",
    ),
    "reload_poll_s": (
        "--reload-poll-s",
        "RECSYS_RELOAD_POLL_S",
        float,
        "seconds between checks of --model for a new export; 0 = only on SIGHUP",
    ),
    "reuse_port": ("--reuse-port", "RECSYS_REUSE_PORT", _flag, "share the port (SO_REUSEPORT)"),
    "workers": (
        "--workers",
        "RECSYS_WORKERS",
        int,
        "worker processes on the port; 0 = one per CPU the pod may use",
    ),
    "tls_cert": ("--tls-cert", "RECSYS_TLS_CERT", Path, "server certificate chain, PEM"),
    "tls_key": ("--tls-key", "RECSYS_TLS_KEY", Path, "server private key, PEM"),
    "tls_client_ca": (
        "--tls-client-ca",
        "RECSYS_TLS_CLIENT_CA",
        Path,
        "CA bundle for client certificates (mutual TLS)",
    ),
    "log_level": ("--log-level", "RECSYS_LOG_LEVEL", str, "DEBUG, INFO, WARNING or ERROR"),
}


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Flags over environment over defaults. Raises ValueError naming the bad flag/variable."""
    environ = os.environ if environ is None else environ
    defaults = {f.name: f.default for f in fields(ServiceConfig)}
    values: dict[str, Any] = {}
    for name, (flag, var, parse, _) in _OPTIONS.items():
        if var in environ and environ[var] != "":
            try:
                values[name] = parse(environ[var])
            except ValueError:
                raise ValueError(f"{var}={environ[var]!r} is not a valid {flag} value") from None
    args = _parser(defaults).parse_args(argv)
    values.update({k: v for k, v in vars(args).items() if v is not None})
    if "model_dir" not in values:
        raise ValueError("no model given: pass --model DIR or set RECSYS_MODEL_DIR")
    return ServiceConfig(**values)


def _parser(defaults: Mapping[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="gRPC session-based recommendation service (recsys.v1.Recommender).",
    )
    for name, (flag, var, parse, text) in _OPTIONS.items():
        default = defaults[name]
        shown = "" if not isinstance(default, (int, float, str)) else f", default {default}"
        if parse is _flag and default is False:  # a switch: present means on
            parser.add_argument(
                flag, dest=name, action="store_const", const=True, help=f"{text} [{var}]"
            )
            continue
        parser.add_argument(
            flag, dest=name, type=parse, default=None, help=f"{text} [{var}{shown}]"
        )
    return parser
