"""python -m service --model DIR [--port 50051] [--metrics-port 9090] [--workers N] ...

Starts listening at once (health NOT_SERVING), loads the model (SERVING), and on SIGTERM or
SIGINT drains: NOT_SERVING, calls still taken for --drain-s seconds, then no new calls and
running calls get --grace-s seconds. SIGHUP reloads the model path now (it is also polled
every --reload-poll-s). Exit status 0 after a clean stop, 2 for a bad configuration or a
port in use, 1 when the model cannot be loaded (or, with several workers, when one died).
A SIGTERM or SIGINT that comes while it imports ends the process with 0 (there is nothing
to drain yet), a SIGHUP then does nothing (no model is loaded yet; workers/signals.py).

--workers N (default: the CPUs the process may use) runs N such servers on the port, each
a process of its own, under a supervisor (workers/supervisor.py); 1 runs the server in this process.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from .workers import signals


def main(argv: Sequence[str] | None = None) -> int:
    signals.block()  # before the imports (0.3 s and more): a signal meanwhile killed the process
    from .config import load_config
    from .workers.supervisor import Supervisor, resolve_workers

    try:
        config = load_config(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level_number,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    n = resolve_workers(config)
    if n > 1:
        return Supervisor(config, n).run()
    from .server import serve  # not before: a supervisor forks before gRPC is imported

    signals.until_handled()
    signals.unblock()
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
