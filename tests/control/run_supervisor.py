"""A supervisor in its own process, on a :class:`FileDesiredState`, so a test can ``kill -9`` it.

``python -m tests.control.run_supervisor DESIRED_JSON DATA_DIR MQTT_URL DATABASE_URL``; SIGTERM drains
the flows and exits.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from control.supervisor import Supervisor
from tests.control.desired import FileDesiredState


def main(argv: list[str]) -> int:
    desired, data_dir, mqtt_url, database_url = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    sup = Supervisor(
        FileDesiredState(Path(desired)),
        data_dir=data_dir,
        mqtt_url=mqtt_url,
        database_url=database_url,
        resync_s=0.5,
        drain_timeout_s=15,
    )
    sup.start()
    done.wait()
    sup.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
