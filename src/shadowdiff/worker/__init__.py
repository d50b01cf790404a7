"""The worker process: the copies' plan, circuit breakers, the recorder
(compare, redact, store in the store thread) and the switch. `__main__` is the process entry
and the composition root that wires the faces in."""

from shadowdiff.worker.recorder import Recorder
from shadowdiff.worker.switch import Switch
from shadowdiff.worker.worker import Worker

__all__ = ["Recorder", "Switch", "Worker"]
