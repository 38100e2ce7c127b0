"""moto's SQS server, with one race fixed: the SQS server the tests use.

    $VENV/bin/python deploy/local/sqs_server.py -H 127.0.0.1 -p 4566

Why not plain `moto_server`: moto 5.2.5 serves each request on a thread of
its own, and its ReceiveMessage checks that a message is visible, then marks
it received, with nothing held in between. Two receives at once can both
take the same message. SQS never does that within the visibility timeout, on
FIFO queues above all, and the conformance kit's
`concurrent_consumers_never_share_a_message` caught it (61 receives for 60
messages, about one run in three on FIFO queues).

The fix: every scan of a queue, and every call that changes what a scan
sees (send, delete, change visibility, purge), runs under one lock. The long
poll itself waits outside the lock, so a receive waiting 20 s holds nobody
up. Everything else is moto as it ships.

`crates/spillway-queue/src/sqs/tests.rs` has a test that fails against a
server without this fix (`the_server_never_hands_one_message_to_two_receives`).
"""

import functools
import sys
import threading
import time

from moto.server import main
from moto.sqs.models import SQSBackend

_LOCK = threading.RLock()
# An empty scan that found the queue's wait already satisfied (a FIFO queue
# whose visible messages all sit in groups in flight) waits this long before
# it scans again, instead of spinning.
_IDLE = 0.02


def _serialised(method):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with _LOCK:
            return method(self, *args, **kwargs)

    return locked


_scan = SQSBackend.receive_message


@functools.wraps(_scan)
def receive_message(
    self,
    queue_name,
    count,
    wait_seconds_timeout,
    visibility_timeout,
    message_attribute_names=None,
):
    deadline = time.monotonic() + (wait_seconds_timeout or 0)
    while True:
        with _LOCK:
            # A wait of 0 makes moto scan once and return.
            got = _scan(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        left = deadline - time.monotonic()
        if got or left <= 0:
            return got
        started = time.monotonic()
        self.get_queue(queue_name).wait_for_messages(min(1.0, left))
        if time.monotonic() - started < _IDLE:
            time.sleep(_IDLE)


SQSBackend.receive_message = receive_message
for _name in (
    "send_message",
    "send_message_batch",
    "delete_message",
    "delete_message_batch",
    "change_message_visibility",
    "change_message_visibility_batch",
    "purge_queue",
):
    if hasattr(SQSBackend, _name):
        setattr(SQSBackend, _name, _serialised(getattr(SQSBackend, _name)))

if __name__ == "__main__":
    main(sys.argv[1:])
