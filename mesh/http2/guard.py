"""Abuse accounting for one server connection (RELIABILITY rows 16 and 17).

Rapid reset (CVE-2023-44487): a client opening streams and resetting them before any answer
makes the proxy start work it never finishes. As Envoy 1.27.1: once 500 streams have been
opened, more than half of them reset before their response head means GOAWAY; so does a
total of 1,000 premature resets whatever the ratio.

Floods of frames that cost the server an answer or a wakeup but carry no request (PING,
SETTINGS, empty DATA, PRIORITY): more than `FLOOD_FRAMES` in `FLOOD_WINDOW` seconds
closes the connection. A gRPC client's keepalive pings are far below that.
"""

from __future__ import annotations

from dataclasses import dataclass

RESET_STREAMS_CHECKED = 500
MAX_PREMATURE_RESETS = 1000
FLOOD_FRAMES = 1000
FLOOD_WINDOW = 10.0


@dataclass(slots=True)
class Guard:
    streams: int = 0
    premature_resets: int = 0
    refused: int = 0
    flood_frames: int = 0
    window_start: float = 0.0

    def reset_early(self) -> bool:
        """A stream was reset before its answer started; True: the client abuses resets."""
        self.premature_resets += 1
        if self.premature_resets >= MAX_PREMATURE_RESETS:
            return True
        return self.streams >= RESET_STREAMS_CHECKED and 2 * self.premature_resets > self.streams

    def control_frame(self, now: float) -> bool:
        """A frame that carries no request arrived; True: a flood."""
        if now - self.window_start > FLOOD_WINDOW:
            self.window_start = now
            self.flood_frames = 0
        self.flood_frames += 1
        return self.flood_frames > FLOOD_FRAMES
