"""SIGTERM, SIGINT and SIGHUP before a process has its own handlers for them.

`python -m service` imports for 0.3 s and more before serve() or the supervisor installs its
handlers, and each worker imports the server after its fork; the default actions killed the
process meanwhile (a worker killed at start stopped the pod). So __main__ blocks these
signals before it imports anything else: they wait, pending, and every thread started
meanwhile (OpenBLAS's, at import) inherits the block, so none can take them instead. The
supervisor unblocks them once its own handlers are in place; a worker, or the single
server, once it has imported the server: the handlers of until_handled() then take what
came, and serve() soon installs its own.
"""

from __future__ import annotations

import logging
import os
import signal

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = logging.getLogger("service")


def block() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


def unblock() -> None:
    """Signals that came while blocked are handled now, by the handlers in place."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def until_handled() -> None:
    """Until serve() installs its own: SIGTERM and SIGINT end the process with status 0
    (nothing has started that needs a drain), SIGHUP does nothing (no model is loaded yet;
    the one that will be is whatever the model path holds then)."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _moot)


def _stop(signum: int, _frame: object) -> None:
    log.info("received %s before serving: exiting", signal.Signals(signum).name)
    # not SystemExit: raised in code that catches it (an import turned it into ImportError),
    # it was lost and the process went on
    os._exit(0)


def _moot(signum: int, _frame: object) -> None:
    log.info("received SIGHUP before the model is loaded: nothing to reload")
