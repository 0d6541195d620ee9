"""`mesh attach`: run an app with its sidecar, in the order a mesh needs.

Start: the sidecar's listeners are up and discovery has answered before the app starts, so
the app's first outbound call cannot race the proxy. The app's environment points
HTTP_PROXY at the sidecar (NO_PROXY keeps loopback calls direct).

Stop (SIGTERM/SIGINT): the sidecar leaves discovery (Consul: maintenance, then a grace for
peers to notice) while still serving; inbound stops taking connections and finishes what is
in flight; then the app gets SIGTERM while outbound keeps serving its last calls; when the
app has exited the sidecar drains the rest and the process exits with the app's code.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import Process

from sidecar.assemble import make_sidecar
from sidecar.config import SidecarConfig
from sidecar.runtime import Sidecar
from sidecar.signals import stop_on_signals

log = logging.getLogger("sidecar.attach")

READY_LOG_EVERY = 5.0


def app_environment(proxy_port: int) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{proxy_port}"
    no_proxy = "localhost,127.0.0.1,::1"
    return {
        **os.environ,
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


async def wait_ready(sidecar: Sidecar) -> None:
    waited = 0.0
    while True:
        ready, why = sidecar.readiness(include_app=False)
        if ready:
            return
        await anyio.sleep(0.05)
        waited += 0.05
        if waited >= READY_LOG_EVERY:
            log.info("app not started yet: sidecar not ready (%s)", why)
            waited = 0.0


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def run_attached(
    config: SidecarConfig,
    command: Sequence[str],
    loader: Callable[[], SidecarConfig] | None = None,
) -> int:
    sidecar = make_sidecar(config)
    sidecar.config_loader = loader
    stop_requested = anyio.Event()
    sidecar.graceful_stop = stop_requested.set
    async with anyio.create_task_group() as tg:
        await tg.start(stop_on_signals, stop_requested.set)
        await tg.start(sidecar.serve)
        with anyio.move_on_after(None) as waiting:
            tg.start_soon(_cancel_when, stop_requested, waiting)
            await wait_ready(sidecar)
        if stop_requested.is_set():
            log.info("stopped before the app was started")
            sidecar.request_stop()
            await sidecar.wait_stopped()
            tg.cancel_scope.cancel()
            return 0
        env = app_environment(sidecar.port_of("proxy"))
        try:
            process = await anyio.open_process(
                list(command), stdin=None, stdout=None, stderr=None, env=env
            )
        except OSError as exc:
            log.error("cannot start %s: %s", command[0], exc)
            sidecar.request_stop()
            await sidecar.wait_stopped()
            tg.cancel_scope.cancel()
            return 127
        log.info("started %s (pid %d)", command[0], process.pid)
        code = await _supervise(sidecar, process, stop_requested)
        sidecar.request_stop()
        await sidecar.wait_stopped()
        tg.cancel_scope.cancel()
    return code


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _supervise(sidecar: Sidecar, process: Process, stop_requested: anyio.Event) -> int:
    async with anyio.create_task_group() as tg:

        async def stop_sequence() -> None:
            await stop_requested.wait()
            # Leave discovery while still serving, so peers stop sending before inbound closes.
            await sidecar.leave()
            await sidecar.drain(("inbound",))
            if process.returncode is None:
                log.info("inbound drained; sending SIGTERM to the app (pid %d)", process.pid)
                process.send_signal(signal.SIGTERM)

        tg.start_soon(stop_sequence)
        returncode = await process.wait()
        tg.cancel_scope.cancel()
    log.info("app exited with %d", returncode)
    return exit_code(returncode)
