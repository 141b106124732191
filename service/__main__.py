"""python -m service --model DIR [--port 50051] [--metrics-port 9090] ...

Starts listening at once (health NOT_SERVING), loads the model (SERVING), and on SIGTERM or
SIGINT drains: NOT_SERVING, calls still taken for --drain-s seconds, then no new calls and
running calls get --grace-s seconds. SIGHUP reloads the model path now (it is also polled
every --reload-poll-s). Exit status 0 after a clean stop, 2 for a bad configuration or a
port in use, 1 when the model cannot be loaded.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from .config import load_config
from .runtime import ModelLoadError
from .server import RecommendationServer

log = logging.getLogger("service")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level_number,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stopping.set()

    server = RecommendationServer(config)

    def on_hangup(signum: int, _frame: object) -> None:
        log.info("received SIGHUP: reloading the model")
        server.request_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        server.start()
    except (OSError, ValueError) as err:  # port in use, unreadable TLS file, bad Redis URL
        log.error("%s", err)
        server.stop(0, 0)
        return 2
    try:
        server.load_model()
    except ModelLoadError as err:
        log.error("cannot serve: %s", err)
        server.stop(0, 0)
        return 1
    while not stopping.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
