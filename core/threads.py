"""Give the process's threads their Python names in the operating system too (Linux).

Python 3.11 leaves every thread's OS name as the program's (``python``), so ``top -H``, ``ps -L``,
``/proc/<pid>/task/*/comm`` and the ``cost`` stage's per-thread figures cannot tell the historian
writer from the MQTT client. :func:`name_os_threads` copies each live thread's ``threading`` name
(its first 15 bytes, the kernel's limit) to ``/proc/self/task/<native id>/comm``; threads already
named are skipped (and the main thread, whose OS name is the process's), so calling it now and then (a status reporter's tick) is cheap. It goes by the
thread's kernel id, not its pthread handle: a thread that ends meanwhile only makes the write fail.

>>> import threading
>>> done = threading.Event()
>>> t = threading.Thread(target=done.wait, name="doc-example-thread", daemon=True)
>>> t.start()
>>> name_os_threads() >= 1, os_thread_name(t.native_id)
(True, 'doc-example-thr')
>>> done.set(); t.join()
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["name_os_threads", "os_thread_name"]

_NAME_MAX = 15
"""Bytes of a thread name the kernel keeps (16 with the terminating NUL)."""
_ENABLED = sys.platform.startswith("linux")
_named: dict[int, str] = {}
_lock = threading.Lock()


def name_os_threads() -> int:
    """Name every live thread not named yet after its ``threading`` name; returns how many were."""
    if not _ENABLED:
        return 0
    count = 0
    with _lock:
        main = threading.main_thread()  # its OS name is the process's (``ps``): left as it is
        live = {
            t.native_id: t.name for t in threading.enumerate() if t.native_id is not None and t is not main
        }
        for tid in [i for i in _named if i not in live]:  # ended; the id may be reused
            del _named[tid]
        for tid, name in live.items():
            if _named.get(tid) == name:
                continue
            _named[tid] = name
            try:
                fd = os.open(f"/proc/self/task/{tid}/comm", os.O_WRONLY)
            except OSError:  # ended meanwhile, or no /proc
                continue
            try:
                os.write(fd, name.encode("utf-8", "replace")[:_NAME_MAX])
                count += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return count


def os_thread_name(native_id: int | None) -> str | None:
    """The OS name of thread ``native_id`` of this process (``/proc``), ``None`` if unknown."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/comm") as f:
            return f.read().strip()
    except OSError:
        return None
