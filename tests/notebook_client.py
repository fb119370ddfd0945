"""A NotebookClient that cannot miss a kernel message: used by the notebook tests and bench/notebooks_full.py.

nbclient 0.11 waits for a cell's reply with one `await socket.poll(timeout)` on the shell channel
(and one on IOPub for outputs). A ZMQ socket's file descriptor is edge-triggered: when a message
arrives while the client is busy with another channel (widget comm messages: notebook 03's cells),
that poll can sleep through it, and execution hangs with the kernel idle. Seen here twice in
`test_03` (stack: nbclient awaiting the shell reply, kernel idle, its last input the widget cell);
reported as jupyter/nbclient#312. Polling in one-second slices re-checks the socket each time, so
a message that arrived is always picked up; the cell's own timeout still applies.
"""

from __future__ import annotations

import time
from queue import Empty

from nbclient import NotebookClient

SLICE_S = 1.0


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
