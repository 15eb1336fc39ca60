"""Peak memory of worker processes, measured by the kernel rather than sampled."""

from __future__ import annotations

import resource


def _reset_peak() -> bool:
    # Writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory(client) -> None:
    """Start a new peak-memory window on every worker."""
    client.run(_reset_peak)


def peak_memory(client) -> dict:
    """Peak resident memory (bytes) of each worker process since the last reset."""
    return client.run(_peak_bytes)
