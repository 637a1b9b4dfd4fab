"""Producer metrics, built on the hooks (``aiokprod/hooks.py``): ``ProducerMetrics`` is the producer's own
hook, called per batch and per request (never per record), and ``Producer.metrics()`` returns its snapshot.

Names are the Java producer's core set in snake_case (``record-send-rate`` -> ``record_send_rate``). Rates,
averages and maxima are over a sliding window of 30 s (the Java client's two samples of
``metrics.sample.window.ms``, 30 s each, kept here as 30 one-second buckets, so the window slides by the
second rather than jumping every 30 s); ``*_total`` counters are cumulative. A rate divides by the window,
or by the time since the producer started while that is shorter (at least one second), as Java's ``Rate``
does, so a fresh producer does not report a burst as a rate over 30 s.

The keys the producer reported before these (``records_sent``, ``record_errors``, ...) are still there.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

WINDOW_SECONDS = 30


class WindowedStat:
    """Sum, count and max of values recorded over the last ``window`` seconds (one-second buckets), and
    the cumulative total. ``clock`` is injectable so the window can be tested as a plain function.

    ``record`` runs per batch on the sender's path, so it touches only the current second's bucket, held in
    plain attributes (one clock read, a comparison, a few adds); the bucket is closed into the list of past
    seconds only when the second changes, and old seconds are dropped when the window is read or a bucket
    closes.
    """

    __slots__ = ("window", "clock", "started", "_closed_total", "_closed_count", "_buckets",
                 "_second", "_end", "_sum", "_count", "_max")

    def __init__(self, window: int = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.started = clock()
        # Totals of the closed buckets (the current one is added when read).
        self._closed_total = 0.0
        self._closed_count = 0
        # Closed buckets [second, sum, count, max], oldest first; only seconds in which something was recorded.
        self._buckets: list[list[float]] = []
        # The current second's bucket: recording into it needs no list and no int(); _end = _second + 1.
        self._second = -1
        self._end = float("-inf")  # nothing current yet: the first record opens a bucket
        self._sum = 0.0
        self._count = 0
        self._max = float("-inf")

    @property
    def total(self) -> float:
        """Sum of every value ever recorded (cumulative, not windowed)."""
        return self._closed_total + self._sum

    @property
    def count(self) -> int:
        """Number of values ever recorded."""
        return self._closed_count + self._count

    def record(self, value: float) -> None:
        if self.clock() < self._end:
            self._sum += value
            self._count += 1
            if value > self._max:
                self._max = value
        else:
            self._open(value)

    def _open(self, value: float) -> None:
        """The second changed: close the current bucket (if anything is in it) and start one with ``value``."""
        self._close()
        second = int(self.clock())
        self._second = second
        self._end = second + 1.0
        self._sum = value
        self._count = 1
        self._max = value
        self._prune(second)

    def _close(self) -> None:
        if self._count:
            buckets = self._buckets
            if buckets and buckets[-1][0] == self._second:
                # Closed earlier in this same second by a read: one bucket per second, however often read.
                bucket = buckets[-1]
                bucket[1] += self._sum
                bucket[2] += self._count
                if self._max > bucket[3]:
                    bucket[3] = self._max
            else:
                buckets.append([self._second, self._sum, self._count, self._max])
            self._closed_total += self._sum
            self._closed_count += self._count
            self._sum = 0.0
            self._count = 0
            self._max = float("-inf")

    def _prune(self, second: int) -> None:
        oldest = second - self.window + 1
        buckets = self._buckets
        drop = 0
        while drop < len(buckets) and buckets[drop][0] < oldest:
            drop += 1
        if drop:
            del buckets[:drop]

    def _live(self) -> list[list[float]]:
        """The buckets within the window, the current one included (closed first, so that it is listed)."""
        self._close()
        self._prune(int(self.clock()))
        return self._buckets

    def rate(self) -> float:
        """Sum per second over the window."""
        now = self.clock()
        elapsed = min(float(self.window), max(now - self.started, 1.0))
        return sum(bucket[1] for bucket in self._live()) / elapsed

    def count_rate(self) -> float:
        """Recordings per second over the window."""
        now = self.clock()
        elapsed = min(float(self.window), max(now - self.started, 1.0))
        return sum(bucket[2] for bucket in self._live()) / elapsed

    def avg(self) -> float:
        buckets = self._live()
        count = sum(bucket[2] for bucket in buckets)
        return sum(bucket[1] for bucket in buckets) / count if count else 0.0

    def max(self) -> float:
        buckets = self._live()
        return max((bucket[3] for bucket in buckets), default=0.0)


def error_name(error: BaseException) -> str:
    """The name ``errors_by_code`` counts an error under: the broker's code name, else the class name."""
    name = getattr(error, "name", None)
    if isinstance(name, str) and getattr(error, "code", None) is not None:
        return name
    return type(error).__name__


class ProducerMetrics:
    """The producer's own hook: counts what the sender reports and answers ``Producer.metrics()``.

    ``buffer_used_fn`` and ``waiting_fn`` read the accumulator's state when a snapshot is taken (gauges are
    read, not tracked event by event).
    """

    def __init__(self, buffer_memory: int, buffer_used_fn: Callable[[], int],
                 waiting_fn: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.buffer_memory = buffer_memory
        self.buffer_used_fn = buffer_used_fn
        self.waiting_fn = waiting_fn
        self.clock = clock

        def stat() -> WindowedStat:
            return WindowedStat(WINDOW_SECONDS, clock)

        self.records_sent = stat()         # records acknowledged, per batch
        self.record_errors = stat()        # records failed, per batch
        self.record_retries = stat()       # records sent again, per batch
        self.batch_size = stat()           # bytes on the wire per drained batch
        self.records_per_request = stat()
        self.compression_rate = stat()     # wire bytes / uncompressed bytes, per drained batch
        self.request_latency = stat()      # ms, per answered Produce request
        self.throttle_time = stat()        # ms, per answered Produce request
        self.bytes_sent = 0
        self.batches_sent = 0
        self.batch_errors = 0
        self.requests_sent = 0
        self.requests_answered = 0
        self.buffer_exhausted = 0
        self.metadata_refreshes = 0
        self.metadata_refresh_errors = 0
        self.connections_opened = 0
        self.connections_lost = 0
        self.errors_by_code: dict[str, int] = {}

    # -- the hook ------------------------------------------------------------------------------------------
    def on_batch_drained(self, topic: str, partition: int, records: int, uncompressed_bytes: int,
                         wire_bytes: int, attempt: int) -> None:
        if attempt > 1:
            self.record_retries.record(records)
        self.batch_size.record(wire_bytes)
        if uncompressed_bytes > 0:
            self.compression_rate.record(wire_bytes / uncompressed_bytes)

    def on_request_sent(self, node: int, batches: int, records: int, wire_bytes: int) -> None:
        self.requests_sent += 1
        self.records_per_request.record(records)

    def on_request_answered(self, node: int, latency_ms: float, throttle_time_ms: int,
                            error: Optional[BaseException]) -> None:
        self.requests_answered += 1
        if error is None:
            self.request_latency.record(latency_ms)
            self.throttle_time.record(throttle_time_ms)
        else:
            self._count_error(error)

    def on_batch_acknowledged(self, topic: str, partition: int, records: int, base_offset: int,
                              wire_bytes: int) -> None:
        self.records_sent.record(records)
        self.batches_sent += 1
        self.bytes_sent += wire_bytes

    def on_batch_retry(self, topic: str, partition: int, records: int, error: BaseException, attempt: int) -> None:
        if getattr(error, "code", None) is not None:  # a broker's answer; lost requests count once, above
            self._count_error(error)

    def on_batch_failed(self, topic: str, partition: int, records: int, error: BaseException) -> None:
        self.record_errors.record(records)
        self.batch_errors += 1
        cause = error.__cause__ if error.__cause__ is not None else error
        self._count_error(cause)

    def on_metadata_refresh(self, error: Optional[BaseException]) -> None:
        self.metadata_refreshes += 1
        if error is not None:
            self.metadata_refresh_errors += 1

    def on_connection_opened(self, node: int, host: str, port: int) -> None:
        self.connections_opened += 1

    def on_connection_lost(self, node: int, host: str, port: int, error: Optional[BaseException]) -> None:
        self.connections_lost += 1

    def on_buffer_wait_done(self, waited_ms: float, exhausted: bool) -> None:
        if exhausted:
            self.buffer_exhausted += 1

    def _count_error(self, error: BaseException) -> None:
        name = error_name(error)
        self.errors_by_code[name] = self.errors_by_code.get(name, 0) + 1

    # -- the snapshot --------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        used = self.buffer_used_fn()
        sent, failed, retried = self.records_sent, self.record_errors, self.record_retries
        latency, throttle = self.request_latency, self.throttle_time
        return {
            # The Java producer's core set, in snake_case.
            "record_send_rate": sent.rate(),
            "record_send_total": int(sent.total),
            "record_error_rate": failed.rate(),
            "record_error_total": int(failed.total),
            "record_retry_rate": retried.rate(),
            "record_retry_total": int(retried.total),
            "batch_size_avg": self.batch_size.avg(),
            "batch_size_max": self.batch_size.max(),
            "records_per_request_avg": self.records_per_request.avg(),
            "compression_rate_avg": self.compression_rate.avg(),
            "request_latency_avg": latency.avg(),
            "request_latency_max": latency.max(),
            "produce_throttle_time_avg": throttle.avg(),
            "produce_throttle_time_max": throttle.max(),
            "requests_in_flight": self.requests_sent - self.requests_answered,
            "buffer_total_bytes": self.buffer_memory,
            "buffer_available_bytes": self.buffer_memory - used,
            "buffer_exhausted_total": self.buffer_exhausted,
            "waiting_senders": self.waiting_fn(),
            "metadata_refresh_total": self.metadata_refreshes,
            "connection_count": self.connections_opened - self.connections_lost,
            "errors_by_code": dict(self.errors_by_code),
            # Kept from before (cumulative).
            "records_sent": int(sent.total),
            "bytes_sent": self.bytes_sent,
            "batches_sent": self.batches_sent,
            "requests_sent": self.requests_sent,
            "retries": int(retried.total),
            "record_errors": int(failed.total),
            "batch_errors": self.batch_errors,
            "request_latency_avg_ms": latency.total / latency.count if latency.count else 0.0,
            "request_latency_max_ms": latency.max(),
            "metadata_refreshes": self.metadata_refreshes,
            "buffer_used_bytes": used,
        }
