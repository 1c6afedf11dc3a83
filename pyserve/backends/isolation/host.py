"""The server's side of an isolated instance: a child process that runs the backend, and
the shared-memory arena the tensors cross (see arena.py and child.py).

A child that dies (a segfault in a native extension, os._exit, the kernel's OOM killer)
fails the batch it was running with INTERNAL and a text that says how it died; a new child is
started at once, in the background, and the instance's next batch runs on it. Requests still
queued are not lost: they wait for the new child. Closing asks the child to finalize and
exit, and kills it (by its PID) if it has not within STOP_TIMEOUT_S.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection

import numpy as np

from pyserve.backends.base import Backend, BatchResult, InstanceSpec, ModelContext, RequestInfo
from pyserve.backends.isolation import CHILD_ENV
from pyserve.backends.isolation.arena import Arena
from pyserve.backends.isolation.messages import (apply_object_states, detach_requests,
                                                 restore_error)
from pyserve.errors import ErrorCode, ServerError

log = logging.getLogger("pyserve")

STOP_TIMEOUT_S = 10.0  # for the batch in flight, finalize and exit, before the child is killed
# The child's entry point; the current directory leaves sys.path first, so that the installed
# pyserve is the one imported (python -P, from Python 3.11 on).
_CHILD_MAIN = ("import sys; del sys.path[0]; "
               "from pyserve.backends.isolation.child import main; main(sys.argv[1:])")


class ChildDied(ServerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.INTERNAL)


class ChildProcess:
    """One child process and its control connection."""

    def __init__(self, arena: Arena, label: str) -> None:
        self.label = label
        ours, theirs = socket.socketpair()
        try:
            with theirs:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno()), str(arena.fd)],
                    pass_fds=(theirs.fileno(), arena.fd), stdin=subprocess.DEVNULL,
                    env={**os.environ, CHILD_ENV: "1"},
                    start_new_session=True)  # a Ctrl+C at the terminal is the server's
        except BaseException:
            ours.close()
            raise
        self.connection = Connection(ours.detach())
        self.pid = self.process.pid
        self._calling = threading.Lock()  # one exchange at a time on the connection

    def call(self, message: tuple, doing: str) -> tuple:
        """Send `message` and wait for the reply's values; the child's error is raised as
        itself, its death as ChildDied."""
        with self._calling:
            try:
                self.connection.send(message)
                reply = self.connection.recv()
            except (EOFError, OSError):
                raise ChildDied(f"{self.label}: the model's process (pid {self.pid}) died "
                                f"while {doing}: {self.ended()}") from None
        if reply[0] == "error":
            raise restore_error(reply[1])
        return reply[1:]

    def stop(self) -> None:
        """Ask the child to close its model and exit once its batch in flight is done; kill
        it when that takes longer than STOP_TIMEOUT_S (a hung model)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        if not self._calling.acquire(timeout=STOP_TIMEOUT_S):  # held from here: no more calls
            self._kill("did not finish its batch")  # which then fails as ChildDied
            return
        try:
            self.connection.send(("close",))
            self.connection.poll(max(deadline - time.monotonic(), 0))
        except (EOFError, OSError):
            pass  # already gone
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self._kill("did not exit")
        self.connection.close()

    def _kill(self, why: str) -> None:
        log.warning("%s: the model's process (pid %d) %s in %.0f s; killing it", self.label,
                    self.pid, why, STOP_TIMEOUT_S)
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait()

    def ended(self) -> str:
        """How the child ended, once it has (killed if it still lives on after closing its
        end of the connection)."""
        try:
            code = self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # closed its end but lives on: end it
            os.kill(self.pid, signal.SIGKILL)
            code = self.process.wait()
        self.connection.close()
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name} ({signal.strsignal(-code)})"
        return f"exited with code {code}"


class ProcessIsolatedBackend(Backend):
    """An instance of `cls` run in a child process, with the same interface as `cls`."""

    closes_while_executing = True  # close() kills the child: a hung execute then fails

    def __init__(self, cls: type[Backend], model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        self.request_info = cls.request_info
        self._target = f"{cls.__module__}:{cls.__qualname__}"
        self._label = (f"model '{model.name}' version {model.version} "
                       f"instance {instance.index}")
        self._arena = Arena.create(f"pyserve-{model.name}-{instance.index}")
        self._child: Future = Future()
        self._closed = False
        self._lock = threading.Lock()  # _child and _closed, between close and a restart
        try:
            self._child.set_result(self._start())
        except BaseException:
            self._arena.close()
            raise

    def _start(self) -> ChildProcess:
        child = ChildProcess(self._arena, self._label)
        try:
            model = self.model
            child.call(("init", self._target, model.name, model.version,
                        model.config.SerializeToString(), model.version_dir, self.instance),
                       "loading")
        except BaseException:
            child.stop()
            raise
        log.info("%s runs in process %d", self._label, child.pid)
        return child

    def _restart(self) -> None:
        """Start a new child in the background; the next batch waits for it."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                return
            self._child = future

        def start() -> None:
            try:
                future.set_result(self._start())
            except BaseException as e:  # noqa: BLE001 - the next batch reports it
                future.set_exception(e)

        threading.Thread(target=start, name="ps-model-restart", daemon=True).start()

    def _live_child(self) -> ChildProcess:
        try:
            child = self._child.result()
        except Exception:  # the (re)start failed: the next batch tries again
            self._restart()
            raise
        if child.process.poll() is None:
            return child
        # Died between batches (killed, the OOM killer): not this batch's fault.
        log.error("%s: the model's process (pid %d) %s while idle; starting a new one",
                  self._label, child.pid, child.ended())
        self._restart()
        return self._child.result()

    def execute(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                requests: list[RequestInfo] | None = None) -> BatchResult:
        child = self._live_child()
        descriptors, end = self._arena.write(inputs)
        try:
            (kind, payload), written, states = child.call(
                ("execute", descriptors, end, batch_sizes, detach_requests(requests)),
                "executing")
        except ChildDied as e:
            log.error("%s; starting a new one", e.message)
            self._restart()
            raise
        apply_object_states(requests, states)
        if kind == "batch":
            return self._arena.read(payload, written)
        return [self._arena.read(value, written) if tag == "outputs" else restore_error(value)
                for tag, value in payload]

    def close(self) -> None:
        """Stop the child; safe from any thread, even with a batch in flight (which then
        fails when the child is killed), and more than once. A child still starting is
        stopped once it is up."""
        with self._lock:
            if self._closed:
                return  # its child is stopped (or stopping) already
            self._closed = True
            future = self._child
        future.add_done_callback(self._stop)

    def _stop(self, future: Future) -> None:
        if future.exception() is None:
            future.result().stop()
        self._arena.close()
