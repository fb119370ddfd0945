"""A NotebookClient that cannot miss a kernel message and records when each cell showed something:
used by the notebook tests and bench/notebooks_full.py.

nbclient 0.11 waits for a cell's reply with one `await socket.poll(timeout)` on the shell channel
(and one on IOPub for outputs). A ZMQ socket's file descriptor is edge-triggered: when a message
arrives while the client is busy with another channel (widget comm messages: notebook 03's cells),
that poll can sleep through it, and execution hangs with the kernel idle. Seen here twice in
`test_03` (stack: nbclient awaiting the shell reply, kernel idle, its last input the widget cell);
reported as jupyter/nbclient#312. Polling in one-second slices re-checks the socket each time, so
a message that arrived is always picked up; the cell's own timeout still applies.

The client also notes, per cell, the kernel's send time of every message a frontend would show
(outputs, widget updates such as a progress bar moving), so a test can find the longest stretch in
which a running cell showed nothing (`longest_silence`).
"""

from __future__ import annotations

import time
from datetime import datetime
from queue import Empty

from nbclient import NotebookClient

SLICE_S = 1.0
# What a frontend shows while a cell runs: its outputs, and the widget messages that draw or move
# a widget (a progress bar, a live figure). "status" busy/idle mark the cell's start and end.
SHOWN = {"stream", "display_data", "execute_result", "update_display_data", "clear_output", "error"}
WIDGET = {"comm_open", "comm_msg"}


def _sliced(get_msg):
    async def get_msg_in_slices(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(timeout=min(SLICE_S, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    return get_msg_in_slices


class SlicedPollClient(NotebookClient):
    """NotebookClient whose shell and IOPub waits poll in `SLICE_S` slices (see the module doc)."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        for channel in (kc.shell_channel, kc.iopub_channel):
            channel.get_msg = _sliced(channel.get_msg)
        return kc

    def __init__(self, nb, km=None, **kw):
        super().__init__(nb, km=km, **kw)
        self.shown_at: dict[int, list[float]] = {}  # cell index -> send times (s since the epoch)

    def process_message(self, msg, cell, cell_index):
        kind = msg["msg_type"]
        if kind in SHOWN or kind in WIDGET or kind == "status":
            self.shown_at.setdefault(cell_index, []).append(_sent(msg))
        return super().process_message(msg, cell, cell_index)

    def longest_silence(self, cell_index: int) -> tuple[float, float]:
        """(run time, longest stretch with nothing shown) of a code cell, in seconds.

        The stretches run from the cell's start (the kernel's "busy") through every message it
        showed to its end ("idle"); a cell that shows nothing until it ends has one stretch.
        """
        times = sorted(self.shown_at.get(cell_index, []))
        if len(times) < 2:
            return 0.0, 0.0
        return times[-1] - times[0], max(b - a for a, b in zip(times, times[1:], strict=False))

    def silence_began(self, cell_index: int) -> float:
        """Seconds into the cell at which its longest stretch with nothing shown began."""
        times = sorted(self.shown_at.get(cell_index, []))
        start = max(zip(times, times[1:], strict=False), key=lambda ab: ab[1] - ab[0])[0]
        return start - times[0]


def _sent(msg) -> float:
    date = msg["header"]["date"]  # jupyter_client parses it to a datetime; a string otherwise
    return (date if isinstance(date, datetime) else datetime.fromisoformat(date)).timestamp()
