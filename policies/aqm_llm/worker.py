"""The AQM-LLM's decisions in a process of their own, so the control loop never waits on the GIL.

Why a process: in the nfqueue link the control loop is a thread beside the packet event loop.
A forward pass of the backbone is thousands of small torch calls with Python between them, and
every one of them needs the GIL that the event loop takes for each packet (and vice versa):
measured live, the same model took about twice its benchmark time. A process has its own GIL
and the link's event loop loses nothing to it.

Protocol (a multiprocessing Pipe of raw bytes, never pickled objects): the parent sends
    APPLIED (6 float64: the probabilities in force after the previous step) + STATE (the raw
    features.state_vector)
and the worker answers 6 float64 probabilities + the head's base probability p' and coupling k
(NaN for the softmax head; anchored.reanchor needs them) + its compute time. The parent waits at most
until the deadline; an answer that comes later is read and thrown away before the next
request, and a request is only sent once the worker is idle, so decisions always come from
the latest state and never queue up behind each other.

The worker builds its own AqmLlmPolicy (worker=false) from the same parameters, so it loads
the same checkpoint with the same deployment settings; it exits when the pipe closes (the
parent died or closed it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from policies.errors import PolicyError as UserError

READY_TIMEOUT_S = 60.0  # torch import + checkpoint load on a busy 2-core machine
N_PROBS = 6
N_BASE = 2  # p', k
RT_PRIORITY = 10  # SCHED_RR, below the kernel's own threaded IRQs (50)


class Worker:
    """Parent side: start, decide within a deadline, close."""

    def __init__(self, params: Any, settings: dict[str, Any], make_policy: Any) -> None:
        """`make_policy(args)` builds the in-process policy in the child: a module-level function
        of policy.py, passed in so that this module never imports policy.py (which imports it)."""
        ctx = mp.get_context("spawn")  # never fork a process that holds threads and a netlink socket
        self.conn, child = ctx.Pipe(duplex=True)
        args = {**asdict(params), "worker": False}
        self.proc = ctx.Process(target=_serve, args=(child, args, make_policy), name="aqm-llm-worker",
                                daemon=True)
        self.proc.start()
        child.close()
        self.busy = False  # a request is out and its answer not yet read
        self.compute_us: list[float] = []
        self.dropped = 0  # answers that came after their deadline
        self.last_base = (float("nan"), float("nan"))  # p', k of the last answer read
        if not self.conn.poll(READY_TIMEOUT_S):
            self.close()
            raise UserError(f"the aqm-llm worker did not start within {READY_TIMEOUT_S:.0f} s")
        ready = self.conn.recv_bytes().decode()
        if ready != "ready":
            self.close()
            raise UserError(ready)

    def decide(self, vector: np.ndarray, applied: list[list[float]],
               deadline: float) -> list[list[float]] | None:
        """Probabilities for `vector` by `deadline` (perf_counter seconds), or None if late."""
        if self.busy:  # the previous answer missed its deadline: wait for it, then drop it
            if not self._wait(deadline):
                return None
            self._read()
            self.dropped += 1
        self.submit(vector, applied)
        if not self._wait(deadline):
            return None
        return self._read().reshape(2, 3).tolist()

    def collect(self, deadline: float) -> list[list[float]] | None:
        """The answer to the last request if it comes by `deadline` (perf_counter s), else None."""
        if not self.busy or not self._wait(deadline):
            return None
        return self._read().reshape(2, 3).tolist()

    def drop_late(self) -> bool:
        """Read and throw away an answer that came too late; True when the worker is idle."""
        if self.busy and self._wait(0.0):
            self._read()
            self.dropped += 1
        return not self.busy

    def submit(self, vector: np.ndarray, applied: list[list[float]]) -> None:
        """Send a state (and the action applied after the previous one); the worker starts now."""
        self.conn.send_bytes(np.asarray(applied, np.float64).tobytes() + vector.astype(np.float64).tobytes())
        self.busy = True

    def _wait(self, deadline: float) -> bool:
        try:
            return self.conn.poll(max(0.0, deadline - time.perf_counter()))
        except (OSError, EOFError):
            raise RuntimeError(f"the aqm-llm worker died (exit code {self.proc.exitcode})") from None

    def _read(self) -> np.ndarray:
        try:
            out = np.frombuffer(self.conn.recv_bytes(), np.float64)
        except (OSError, EOFError):
            raise RuntimeError(f"the aqm-llm worker died (exit code {self.proc.exitcode})") from None
        self.busy = False
        self.compute_us.append(out[N_PROBS + N_BASE] * 1e6)
        self.last_base = (float(out[N_PROBS]), float(out[N_PROBS + 1]))
        return out[:N_PROBS]

    def stats(self) -> dict[str, float]:
        us = np.asarray(self.compute_us) if self.compute_us else np.asarray([np.nan])
        return {"worker_compute_us_p50": float(np.percentile(us, 50)),
                "worker_compute_us_p99": float(np.percentile(us, 99)),
                "worker_answers": len(self.compute_us), "worker_late_answers_dropped": self.dropped}

    def close(self) -> None:
        self.conn.close()  # the worker's recv fails and it exits
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


def _serve(conn: Any, args: dict[str, Any], make_policy: Any) -> None:
    """Child side: load the policy, then answer requests until the pipe closes."""
    try:
        import torch

        policy = make_policy(args)
        torch.set_num_threads(max(1, policy.settings["threads"]))
    except Exception as e:  # noqa: BLE001 - one line back to the parent, which raises it
        conn.send_bytes(f"aqm-llm worker: {e}".encode())
        return
    _prioritise()
    conn.send_bytes(b"ready")
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        t0 = time.perf_counter()
        buf = np.frombuffer(msg, np.float64)
        policy.applied = buf[:N_PROBS].reshape(2, 3).tolist()
        probs = policy.propose(buf[N_PROBS:].copy()).numpy().reshape(-1)
        took = time.perf_counter() - t0
        try:
            conn.send_bytes(np.concatenate([probs, policy.last_base, [took]]).astype(np.float64).tobytes())
        except (BrokenPipeError, OSError):
            return


def _prioritise() -> None:
    """Run ahead of everything else that is not real-time (root only): the decision has a
    deadline every 16 ms, the senders, the analysis and other users' work do not. Measured
    live on a saturated 2-core machine, nice -10 still left the worker's compute time at about
    twice its CPU time; a real-time round-robin priority lets it run as soon as a state
    arrives. It is bounded: the worker computes for a few ms per 16 ms and sleeps between
    requests, and the kernel's RT throttling keeps 5% for others whatever happens."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.nice(-10)
    except OSError:
        pass


def prioritise_control_thread() -> bool:
    """Raise the calling thread (the control loop's, inside the link process) to the same
    real-time priority as the worker, on Linux as root; never the main thread (a test or a
    CLI calling update() directly). Measured live on the default testbed with the machine
    saturated, the control thread itself - not the model - was the tail: it waited for a CPU
    up to 13 ms between the tick and its request to the worker. True when raised."""
    import threading

    if threading.current_thread() is threading.main_thread():
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
        return True
    except (OSError, AttributeError):
        return False
