"""Processes and parts a test owns and breaks at will, never the shared services on their default ports:

- `free_port()`: a loopback port nothing listens on;
- `stop_process_group()`: SIGTERM, then SIGKILL, to a process started in a session of its own and its children;
- `OwnRedis`: a `redis-server` of the test's own on a free port (killed, paused and restarted at will);
- `ServiceProcess`: a server run as a real process, waited for over HTTP, stopped with its process group
  (tests/support/api.py runs Courier's API that way: `ApiProcess`);
- `TcpProxy`: a TCP forwarder the test can cut and restore (a broker that vanishes and comes back).

tests/conftest.py offers `own_redis` as a fixture (a factory that cleans up after the test).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import redis

from tests.support.session import ROOT, VAR_DIR, join

#: How much of a process's log a failure message quotes.
LOG_TAIL = 3000


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON log records of a process's output (banners and other plain lines skipped)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def free_port() -> int:
    """A TCP port nothing listens on right now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes], timeout: float) -> int:
    """End a process started with `start_new_session=True` and all its children: SIGTERM to its group, SIGKILL
    after `timeout` seconds; its exit code."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return process.returncode


class OwnRedis:
    """A `redis-server` of the test's own: on a fixed free port across restarts, in a directory of its own.

    Parameters:
        appendonly: keep an append-only file, fsync'd on every write (otherwise it persists nothing).
        extra_args: more command-line options, e.g. `("--requirepass", "secret")`; `client()` and `url` use
            that password.

    As a context manager it is started on entry and removed on exit.
    """

    def __init__(self, *, appendonly: bool = False, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="own-redis-", dir=VAR_DIR))
        self.log_path = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str | None:
        args = self.extra_args
        return args[args.index("--requirepass") + 1] if "--requirepass" in args else None

    @property
    def url(self) -> str:
        login = f":{self.password}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
        )

    def start(self) -> None:
        """Start (or restart) the server on its port and wait until it answers PING."""
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", *args, *self.extra_args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {self.log_path.read_text(errors='replace')[-LOG_TAIL:]}")
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        join(answers, timeout=15, what=f"redis-server on :{self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would (nothing is saved on the way out)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def refuse_writes(self, why: str) -> None:
        """It answers, but refuses every write: `memory`, its maxmemory reached under noeviction (OOM), or `disk`, an
        RDB save that failed with stop-writes-on-bgsave-error on (MISCONF, as when its disk is full): here the save
        fails because its directory is gone."""
        client = self.client()
        if why == "memory":
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
            return
        client.config_set("save", "3600 1")
        shutil.rmtree(self.dir)
        client.bgsave()
        join(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err", timeout=15, what="a failed save")

    def accept_writes(self) -> None:
        """Undo `refuse_writes`: memory freed, or writes allowed again although the last save failed (the server
        still works in its deleted directory, so no later save could succeed there)."""
        client = self.client()
        client.config_set("maxmemory", "0")
        client.config_set("save", "")
        client.config_set("stop-writes-on-bgsave-error", "no")

    def remove(self) -> None:
        """Kill it (paused or not) and delete its directory."""
        self.resume()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class ServiceProcess:
    """A server run as a real process in a session of its own, its output in `log_path`.

    `wait_listening()` waits until `ready_url` answers 200 (failing with the tail of the log if the process exits
    or never answers); `stop()` ends the whole process group (SIGTERM, then SIGKILL). As a context manager it is
    stopped on exit.
    """

    def __init__(
        self, command: Sequence[str], *, env: Mapping[str, str], log_path: Path, ready_url: str, what: str
    ) -> None:
        self.log_path = log_path
        self.ready_url = ready_url
        self.what = what
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                list(command), cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _answers(self) -> bool:
        try:
            return httpx.get(self.ready_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_listening(self, timeout: float = 90.0) -> None:
        try:
            join(
                lambda: self.process.poll() is not None or self._answers(),
                timeout=timeout,
                what=f"{self.what} to listen",
            )
        except pytest.fail.Exception:
            pytest.fail(f"{self.what} did not listen within {timeout} s:\n{self.log()[-LOG_TAIL:]}")
        if self.process.poll() is not None:
            pytest.fail(f"{self.what} exited with {self.process.returncode}:\n{self.log()[-LOG_TAIL:]}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a clean shutdown: lines written at exit are in the log too), then SIGKILL."""
        stop_process_group(self.process, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; `cut()` drops every connection and refuses new ones until `restore()`;
    `hold()` keeps what clients send from reaching the target (connections stay open) until `release()`, as a
    RabbitMQ under a memory or disk alarm stops reading a publisher's socket.

    Runs its own event loop in a thread, so a test (or an API under test) sees a broker that vanishes and comes
    back without the real broker being touched.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()  # (cleared by freeze: nothing forwarded either way)
        self._flowing.set()
        self._sending = asyncio.Event()  # (cleared by hold: nothing forwarded from the clients)
        self._sending.set()

    def __enter__(self) -> Self:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def restore(self) -> None:
        """Listen again on the same port."""

        async def listen() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        self._run(listen())

    def freeze(self) -> None:
        """Stop forwarding while every connection stays open (a broker whose process is stopped, or cut off)."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        """Forward again what was held and what comes next."""
        self._loop.call_soon_threadsafe(self._flowing.set)

    def cut(self) -> None:
        """Close the listener and every forwarded connection (a broker that died)."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._run(close())

    def hold(self) -> None:
        """Stop forwarding what clients send (it waits in the proxy); what the target sends still flows back."""
        self._loop.call_soon_threadsafe(self._sending.clear)

    def release(self) -> None:
        """Forward again, beginning with everything held."""
        self._loop.call_soon_threadsafe(self._sending.set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, held: bool = False) -> None:
            try:
                while data := await src.read(65536):
                    if held:
                        await self._sending.wait()
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                dst.transport.abort()
            else:
                # The source closed: what was forwarded (held data included) is read before the close, as a
                # client's FIN after its last bytes would be, not thrown away with a reset.
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, held=True), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
