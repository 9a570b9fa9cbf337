"""The driver-side watch that stops a training run when a Ray node holding its actors is lost.

verl's driver waits in ``ray.get`` on its task runner, which waits on its workers. When a worker node dies,
either the task runner was on it (the driver gets ``ActorUnavailableError``, which names an actor id) or the
surviving ranks wait in a collective for the lost one until gloo's or NCCL's timeout (30 minutes by default).
This thread, in the driver, reads Ray's node table and this job's actor table every ``poll_s``; when a node
that held one of the job's live actors is no longer alive, it logs which node and what it held,
interrupts the driver's main thread (a signal of its own, SIGUSR1: :class:`NodeLost` out of ``ray.get``),
and, if the process still runs ``grace_s`` later, ends it. The driver turns either ending into one message
(:func:`gr_vl_verl.cluster.node_loss.stop_message`); checkpoints already written stay as they are.

The job's actor table comes from ``ray._private.state.actors`` (the GCS, no dashboard needed; Ray 2.60). Where
that is not available the watch counts every node alive at its first poll as the run's, and says so once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import ray

from gr_vl_verl.cluster.node_loss import LostNode, NodeWatchSettings, actors_by_node, lost_nodes

logger = logging.getLogger(__name__)


def _job_actors() -> dict[str, Counter[str]] | None:
    """This job's live actors by node, or None where Ray offers no actor table to this process."""
    try:
        from ray._private import state
    except ImportError:
        return None
    reader = getattr(state, "actors", None)
    if reader is None:
        return None
    job_id = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    return actors_by_node(reader(job_id=job_id).values())


#: Signals the watch may take for its interrupt, the first one nobody handles. Not SIGINT: a driver started in
#: the background (``cmd &`` in a script, ``nohup``) inherits SIGINT ignored, and Python then installs no
#: handler for it, so an interrupt by SIGINT would do nothing there.
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class NodeLost(KeyboardInterrupt):
    """Raised in the driver's main thread when the watch sees a loss. A ``KeyboardInterrupt``: Ray's ``ray.get``
    checks for signals while it waits and stops for a ``KeyboardInterrupt`` only (it comes out as a plain one);
    any other exception a handler raises there is lost, and ``ray.get`` waits on (Ray 2.60, tried)."""


class NodeWatch:
    """See the module docstring. ``message`` builds the text said on a loss (and at the forced exit)."""

    def __init__(self, settings: NodeWatchSettings, message: Callable[[list[LostNode]], str]) -> None:
        self.settings = settings
        self._message = message
        self._lost: list[LostNode] = []
        self._seen = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._driver_ended = False  # the driver's work returned or raised: nothing left to interrupt
        self._signal: signal.Signals | None = None
        self._previous: object = None
        self._sent = False
        self._clean = False  # the driver's work returned: a loss seen after that ends nothing
        self._thread = threading.Thread(target=self._run, name="gr_vl-node-watch", daemon=True)

    # -- driver side -----------------------------------------------------------------------------
    def start(self) -> NodeWatch:
        """Take a free signal for the interrupt (in the main thread; elsewhere, or with none free, a loss ends
        the process by the grace exit only) and start polling."""
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    self._previous = signal.signal(sig, self._interrupted)
                    self._signal = sig
                    break
        if self._signal is None:
            logger.warning("node watch: no free signal to interrupt the driver; a lost node ends it after grace_s")
        self._thread.start()
        return self

    def _interrupted(self, signum: int, frame: object) -> None:
        if not self._driver_ended:
            raise NodeLost(self._message(self._lost))

    def stop(self) -> None:
        self._done.set()

    def lost(self, wait_s: float = 0.0) -> list[LostNode]:
        """The lost nodes seen so far, waiting up to ``wait_s`` for one (0: what is known now)."""
        if wait_s > 0:
            self._seen.wait(wait_s)
        return list(self._lost)

    def returned(self) -> None:
        """The driver's work returned: a loss seen after this neither interrupts nor ends the process."""
        self._clean = True

    def driver_ended(self) -> None:
        """The driver's work is over (returned or raised): a loss seen from now on interrupts nothing. The
        signal's disposition is given back unless an interrupt was sent (one still in flight must not meet the
        default action, which ends the process); the handler is then a no-op."""
        with self._lock:
            self._driver_ended = True
            if self._signal is not None and not self._sent:
                signal.signal(self._signal, self._previous)  # type: ignore[arg-type]
                self._signal = None

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not ray.is_initialized():  # verl's run_ppo calls ray.init
            if self._done.wait(self.settings.poll_s):
                return
        held: dict[str, Counter[str]] = {}
        fallback = False
        while not self._done.wait(self.settings.poll_s):
            try:
                nodes = ray.nodes()
                lost = lost_nodes(held, nodes)
                if lost:
                    self._on_loss(lost)
                    return
                actors = None if fallback else _job_actors()
                if actors is None:
                    if not fallback:
                        logger.warning("no actor table in this Ray: every node alive now counts as the run's")
                        fallback = True
                        held = {n["NodeID"]: Counter() for n in nodes if n.get("Alive")}
                else:  # a node keeps its last count: its actors may be marked dead before the node is
                    held.update(actors)
            except Exception as e:  # a GCS hiccup must not end the run; the next poll tries again
                if not ray.is_initialized():
                    return
                logger.debug("node watch: %s", e)

    def _on_loss(self, lost: list[LostNode]) -> None:
        self._lost = lost
        self._seen.set()
        text = self._message(lost)
        logger.error("%s", text)
        with self._lock:
            if not self._driver_ended and self._signal is not None:
                self._sent = True
                # a real signal to the main thread: one blocked in a system call wakes up too
                signal.pthread_kill(threading.main_thread().ident, self._signal)
        time.sleep(self.settings.grace_s)  # a daemon thread: a driver that ends first ends it too
        if self._clean:
            return
        sys.stderr.write(f"gr_vl_verl: {text} (the driver did not end within {self.settings.grace_s:g} s)\n")
        sys.stderr.flush()
        os._exit(1)


def run_watched(
    run: Callable[[], object], settings: NodeWatchSettings, message: Callable[[list[LostNode]], str]
) -> None:
    """``run()`` (a Ray driver's work; it may call ``ray.init`` itself) under a :class:`NodeWatch`: if a node
    holding the job's actors is lost, whatever ``run`` raised becomes ``SystemExit`` with ``message``."""
    if not settings.enable:
        run()
        return
    watcher = NodeWatch(settings, message).start()
    try:
        run()
        watcher.returned()
    except BaseException as e:
        try:
            watcher.driver_ended()
            lost = watcher.lost(wait_s(e, settings))
        except KeyboardInterrupt:  # the watch's own interrupt, sent as ``run`` raised for another reason
            lost = watcher.lost()
        if not lost:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        logger.warning("the run ended with %s: %s", type(e).__name__, first)
        raise SystemExit(f"gr_vl_verl: {message(lost)}") from None
    finally:
        try:
            watcher.driver_ended()
        except KeyboardInterrupt:  # the watch's, in flight; a loss is already being reported
            pass
        watcher.stop()


def wait_s(error: BaseException, settings: NodeWatchSettings) -> float:
    """How long to wait for the watch to confirm a loss after ``error`` ended the run: Ray's own errors (an
    actor gone with its node) may come before Ray declares the node dead; other errors are not waited on."""
    return settings.confirm_s if isinstance(error, ray.exceptions.RayError) else 0.0
