"""``aiokprod produce``: produce the lines of standard input to a topic, then print a summary.

    printf 'a\\nb\\n' | aiokprod produce --bootstrap 127.0.0.1:9092 --topic events
    aiokprod produce --topic events --keyed < keyed.tsv          # key<TAB>value; embedded broker
    aiokprod produce --topic t --headers source=cli -X linger.ms=20 -X batch.size=65536 < data.txt

Each line (without its newline) is one record's value; with ``--keyed`` the text before the first TAB is the
key. Settings: ``--acks``, ``--compression``, ``--linger-ms``, and ``-X name=value`` for any producer
setting, keyword (``max_request_size``) or Java/librdkafka dotted name (``max.request.size``).

Exit status: 0 when every record was delivered; 1 when a record failed or the producer could not start (each
error on stderr, the first few by line number); 2 for bad arguments; 130 when interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import os
import stat
import sys
import threading
import time
from typing import Any, AsyncIterator, Callable, Optional, Union

from . import errors
from .config import COMPRESSION_TYPES, DOTTED_NAMES, ConfigError
from .producer import Producer

# Past this many, failed records are counted (by error type) but not printed one by one: a broker that is
# gone would otherwise print one line per input line.
MAX_ERRORS_SHOWN = 10
# Bytes asked of stdin per read: a pipe or terminal answers with what it has (so interactive input is sent
# as it is typed), a file with this much.
READ_SIZE = 1 << 16
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name.strip(), value


def _topic(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the topic name must not be empty")
    return text


def _header(text: str) -> tuple[str, bytes]:
    name, value = _setting(text)
    return name, value.encode()


def _separator(text: str) -> bytes:
    # Shells make a literal TAB awkward to type: accept the escape too.
    separator = text.encode().decode("unicode_escape").encode() if "\\" in text else text.encode()
    if not separator:
        raise argparse.ArgumentTypeError("the key separator must not be empty")
    return separator


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", metavar="HOST:PORT",
                        help="broker(s) to bootstrap from, comma-separated; default: start the embedded broker "
                             "(needs the 'broker' extra: pip install 'aiokprod[broker]')")
    parser.add_argument("--topic", type=_topic, required=True, help="the topic to produce to")
    parser.add_argument("--keyed", action="store_true", help="each line is key<SEP>value (SEP: --key-separator)")
    parser.add_argument("--key-separator", type=_separator, default=b"\t", metavar="SEP",
                        help="what separates key and value with --keyed (default: TAB; '\\t' is understood)")
    parser.add_argument("--headers", type=_header, action="append", default=[], metavar="NAME=VALUE",
                        help="a header given to every record (repeat for more)")
    parser.add_argument("--acks", choices=("0", "1", "all", "-1"), help="default: all")
    parser.add_argument("--compression", choices=COMPRESSION_TYPES, help="default: none")
    parser.add_argument("--linger-ms", type=float, metavar="MS", help="default: 5")
    parser.add_argument("-X", dest="settings", type=_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="any producer setting, keyword or dotted name (repeat for more): "
                             "-X max.request.size=2097152 -X enable_idempotence=false")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar on stderr (default: when stderr is a terminal and rich is installed: "
                             "pip install 'aiokprod[cli]')")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return parser


def producer_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The ``Producer.from_config`` dict from -X and the dedicated flags; one setting given two ways is an
    argument error (which one would win is not obvious)."""
    settings: dict[str, Any] = {}
    given: dict[str, str] = {}  # keyword name -> how it was given
    for name, value in args.settings:
        keyword = DOTTED_NAMES.get(name, name)
        if keyword in given:
            parser.error(f"-X {name}: {keyword} is already set by {given[keyword]}")
        given[keyword] = f"-X {name}"
        settings[name] = value
    flags = (("--bootstrap", "bootstrap_servers", args.bootstrap), ("--acks", "acks", args.acks),
             ("--compression", "compression_type", args.compression), ("--linger-ms", "linger_ms", args.linger_ms))
    for flag, keyword, value in flags:
        if value is None:
            continue
        if keyword in given:
            parser.error(f"{flag}: {keyword} is already set by {given[keyword]}")
        given[keyword] = flag
        settings[keyword] = value
    return settings


class Tally:
    """What happened to the records: counts, bytes, partitions, and the errors (the first few in full)."""

    def __init__(self) -> None:
        self.lines = 0
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.bytes = 0  # keys and values of the delivered records
        self.partitions: collections.Counter[int] = collections.Counter()
        self.error_types: collections.Counter[str] = collections.Counter()

    def record_failed(self, line: int, error: BaseException) -> None:
        self.failed += 1
        kind = type(error).__name__
        self.error_types[kind] += 1
        if self.failed <= MAX_ERRORS_SHOWN:
            print(f"error: line {line}: {kind}: {error}", file=sys.stderr)

    async def collect(self, lines: list[int], sizes: list[int], handles: list[Any]) -> None:
        """Wait for one chunk's delivery handles and count what they say."""
        results = await asyncio.gather(*handles, return_exceptions=True)
        for line, size, result in zip(lines, sizes, results):
            if isinstance(result, BaseException):
                self.record_failed(line, result)
            else:
                self.delivered += 1
                self.bytes += size
                self.partitions[result.partition] += 1


class Progress:
    """A rich progress bar on stderr, or nothing. Bytes read against the input's size when stdin is a file;
    records sent, delivered and failed always."""

    def __init__(self, enabled: bool, total_bytes: Optional[int]) -> None:
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn)

        # enabled means the caller decided this is (or is to be treated as) a terminal.
        console = Console(file=sys.stderr, force_terminal=True)
        self._progress = RichProgress(
            TextColumn("[bold]producing"), BarColumn(), DownloadColumn(),
            TextColumn("{task.fields[sent]:,} sent, {task.fields[delivered]:,} delivered, "
                       "{task.fields[failed]:,} failed, {task.fields[rate]:,.0f} records/s"),
            TimeElapsedColumn(), console=console, transient=True)
        self._task = self._progress.add_task("produce", total=total_bytes, sent=0, delivered=0, failed=0, rate=0.0)
        self._started = time.perf_counter()
        self._progress.start()

    def update(self, read_bytes: int, tally: Tally) -> None:
        if self._progress is None:
            return
        elapsed = time.perf_counter() - self._started
        self._progress.update(self._task, completed=read_bytes, sent=tally.sent, delivered=tally.delivered,
                              failed=tally.failed, rate=tally.delivered / elapsed if elapsed > 0 else 0.0)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _input_size(fd: int) -> Optional[int]:
    """What is left to read when stdin is a regular file (a known total for the bar); None for a pipe."""
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            return max(0, info.st_size - os.lseek(fd, 0, os.SEEK_CUR))
    except OSError:
        pass
    return None


_Chunk = Union[bytes, OSError]  # what the stdin thread hands over: data, b"" at the end, or the read's error


def _start_reader(fd: int, loop: asyncio.AbstractEventLoop, queue: "asyncio.Queue[_Chunk]") -> None:
    """Read stdin in a daemon thread (a blocked read of a terminal must not keep the process alive after
    Ctrl-C); the bounded queue holds it back while the producer is busy. ``b""`` marks the end."""

    def put(item: _Chunk) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def read() -> None:
        try:
            while True:
                data = os.read(fd, READ_SIZE)
                put(data)
                if not data:
                    return
        except OSError as exc:
            put(exc)
        except (RuntimeError, concurrent.futures.CancelledError):
            # The run ended before the input did (an error, Ctrl-C): the loop is closed or closing and its
            # pending put was cancelled. Nobody is listening; the rest of the input stays unread.
            return

    threading.Thread(target=read, name="aiokprod-stdin", daemon=True).start()


async def _lines(fd: int, on_read: Callable[[int], None]) -> AsyncIterator[list[bytes]]:
    """Yield lists of complete lines (without their newline, and without a CR before it) as they arrive."""
    queue: asyncio.Queue[_Chunk] = asyncio.Queue(maxsize=4)
    _start_reader(fd, asyncio.get_running_loop(), queue)
    pending: list[bytes] = []  # pieces of a line not ended yet (a long line spans reads)
    while True:
        data = await queue.get()
        if isinstance(data, OSError):
            raise data
        if not data:
            break
        on_read(len(data))
        if b"\n" not in data:
            pending.append(data)
            continue
        if pending:
            pending.append(data)
            data = b"".join(pending)
            pending = []
        lines = data.split(b"\n")
        last = lines.pop()
        if last:
            pending.append(last)
        yield [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if pending:
        line = b"".join(pending)
        yield [line[:-1] if line.endswith(b"\r") else line]


async def produce(producer: Producer, args: argparse.Namespace, fd: int, progress: Progress,
                  tally: Tally) -> None:
    """Send every line of ``fd``; returns when every record is delivered or failed."""
    topic, headers = args.topic, args.headers or None
    keyed, separator = args.keyed, args.key_separator
    shown_separator = "<TAB>" if separator == b"\t" else repr(separator.decode(errors="replace"))
    read_bytes = 0

    def on_read(size: int) -> None:
        nonlocal read_bytes
        read_bytes += size

    collecting: set[asyncio.Task[None]] = set()
    try:
        async with producer:
            try:
                async for chunk in _lines(fd, on_read):
                    numbers, sizes, handles = [], [], []
                    for line in chunk:
                        tally.lines += 1
                        key = None
                        if keyed:
                            key, sep, line = line.partition(separator)
                            if not sep:
                                tally.record_failed(tally.lines, ValueError(
                                    f"no key separator ({shown_separator}) in the line: --keyed reads "
                                    f"key{shown_separator}value"))
                                continue
                        try:
                            handle = await producer.send(topic, line, key=key, headers=headers)
                        except errors.RecordTooLargeError as exc:  # this record only: go on with the next
                            tally.record_failed(tally.lines, exc)
                            continue
                        # Anything else send() raises (closed, failed, no metadata within max_block_ms) would
                        # hit every line after this one too: it ends the run.
                        tally.sent += 1
                        numbers.append(tally.lines)
                        sizes.append(len(line) + (len(key) if key is not None else 0))
                        handles.append(handle)
                    if handles:
                        task = asyncio.ensure_future(tally.collect(numbers, sizes, handles))
                        collecting.add(task)
                        task.add_done_callback(collecting.discard)
                    progress.update(read_bytes, tally)
            finally:
                # However the input ended (its end, an error, Ctrl-C), deliver what was sent. A producer that
                # cannot flush (it failed) is left to stop(), which fails what it could not deliver.
                try:
                    await producer.flush()
                except errors.KafkaError:
                    pass
    finally:
        # stop() has resolved every handle, delivered or failed, so counting them cannot hang: every record
        # sent is in the summary.
        if collecting:
            await asyncio.gather(*collecting)
        progress.update(read_bytes, tally)


def summary(tally: Tally, topic: str, bootstrap: str, elapsed: float) -> dict[str, Any]:
    return {
        "topic": topic,
        "bootstrap": bootstrap,
        "lines": tally.lines,
        "records": tally.delivered,
        "errors": tally.failed,
        "bytes": tally.bytes,
        "partitions": {str(p): n for p, n in sorted(tally.partitions.items())},
        "seconds": round(elapsed, 3),
        "records_per_second": round(tally.delivered / elapsed, 1) if elapsed > 0 else 0.0,
        "error_types": dict(tally.error_types),
    }


def print_summary(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    partitions = " ".join(f"{p}={n}" for p, n in result["partitions"].items()) or "-"
    megabytes = result["bytes"] / 1e6 / result["seconds"] if result["seconds"] > 0 else 0.0
    print(f"topic: {result['topic']} at {result['bootstrap']}")
    print(f"records: {result['records']} delivered of {result['lines']} lines")
    print(f"bytes: {result['bytes']} (keys and values delivered)")
    print(f"partitions: {partitions}")
    print(f"errors: {result['errors']}" + "".join(
        f" ({kind}: {n})" for kind, n in sorted(result["error_types"].items())))
    print(f"rate: {result['records_per_second']:.0f} records/s, {megabytes:.2f} MB/s in {result['seconds']:.3f} s")


def _progress_wanted(parser: argparse.ArgumentParser, requested: Optional[bool]) -> bool:
    if requested is False:
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        if requested:
            parser.error("--progress needs rich: pip install 'aiokprod[cli]'")
        return False
    # The bar is drawn on stderr, so that is the stream that must be a terminal.
    return requested or sys.stderr.isatty()


def main(argv: Optional[list[str]] = None, prog: str = "aiokprod produce") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    settings = producer_settings(parser, args)
    broker = None
    if "bootstrap_servers" not in settings and not any(DOTTED_NAMES.get(n) == "bootstrap_servers" for n in settings):
        from .testing import EmbeddedBroker

        broker = EmbeddedBroker()  # its port is chosen now, so the settings can be checked before it starts
        settings["bootstrap_servers"] = broker.bootstrap
    try:
        producer = Producer.from_config(settings)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError) as exc:  # None, closed, or not a real file
        parser.error(f"no standard input to read records from ({exc})")
    bootstrap = ",".join(f"{host}:{port}" for host, port in producer.config.bootstrap_list)
    show_progress = _progress_wanted(parser, args.progress)
    tally = Tally()
    started = time.perf_counter()
    try:
        if broker is not None:
            broker.start()
            print(f"embedded broker (Tansu) listening on {broker.bootstrap}", file=sys.stderr)
        progress = Progress(show_progress, _input_size(fd))
        try:
            asyncio.run(produce(producer, args, fd, progress, tally))
        finally:
            progress.stop()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        print_summary(summary(tally, args.topic, bootstrap, time.perf_counter() - started), args.json)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the run is over; say why, and what became of the records
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if tally.lines:
            print(f"error: stopped at input line {tally.lines}, after sending {tally.sent} records; "
                  "the rest of the input was not sent", file=sys.stderr)
        print_summary(summary(tally, args.topic, bootstrap, time.perf_counter() - started), args.json)
        return EXIT_FAILED
    finally:
        if broker is not None:
            broker.stop()
    print_summary(summary(tally, args.topic, bootstrap, time.perf_counter() - started), args.json)
    if tally.failed:
        shown = min(tally.failed, MAX_ERRORS_SHOWN)
        more = f" ({tally.failed - shown} not shown)" if tally.failed > shown else ""
        print(f"error: {tally.failed} of {tally.lines} records failed{more}", file=sys.stderr)
        return EXIT_FAILED
    return 0
