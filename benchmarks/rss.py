"""Resident-memory probes of the benchmarks' CPU peak measurements (Linux ``/proc``)."""

from __future__ import annotations


def rss_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux: writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
