"""Objects that each do rounds of work on a thread of their own, one round
per SIGUSR1 on every thread at once (shared by the probe test targets)."""

import signal
import threading


class RoundThread:
    def __init__(self, name):
        self.name = name
        self.go = threading.Event()
        self.done = threading.Event()
        self.ready = threading.Event()

    def start(self):
        threading.Thread(target=self.serve, daemon=True).start()
        self.ready.wait()

    def serve(self):
        self.tid = threading.get_native_id()
        self.prepare()
        while True:
            self.go.wait()
            self.go.clear()
            self.round()
            self.done.set()

    def prepare(self):
        """Runs once on the thread; sets ``ready``."""
        self.ready.set()

    def round(self):
        raise NotImplementedError


def start_all(owners):
    """Start every owner's thread (each ready), keep SIGUSR1 for
    ``serve_rounds``, then print READY."""
    for o in owners:
        o.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("READY", flush=True)


def serve_rounds(owners, after_round):
    """Forever: on each SIGUSR1 one round on every owner's thread, then ``after_round()``."""
    while True:
        signal.sigwait({signal.SIGUSR1})
        for o in owners:
            o.done.clear()
            o.go.set()
        for o in owners:
            o.done.wait()
        after_round()
