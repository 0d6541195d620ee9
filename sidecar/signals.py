"""SIGTERM and SIGINT as a graceful stop, for as long as the process lives.

The handler stays installed after the first signal: a second SIGTERM while draining must not
kill the process with its default action (that would orphan an attached app and cut
in-flight requests); it is logged, and the drain goes on to its deadline.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

log = logging.getLogger("sidecar.signals")


async def stop_on_signals(
    stop: Callable[[], None], *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Call `stop` on the first SIGTERM/SIGINT; log later ones. Run until cancelled."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        first = True
        async for signum in signals:
            name = signal.Signals(signum).name
            if first:
                log.info("received %s: stopping gracefully", name)
                first = False
                stop()
            else:
                log.info("received %s again: already stopping, the drain goes on", name)
