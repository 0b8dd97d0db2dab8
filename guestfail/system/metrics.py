"""Prometheus metrics for node_exporter's textfile collector.

`[metrics] textfile = "/var/lib/prometheus/node-exporter/guestfail.prom"`
makes the daemon write this file, atomically (a temporary file in the same
directory, renamed over it), every time it writes its state file: on every
switch, reconciliation and change of a pair.  The metrics are rendered from
the status document (`guestfail.core.records.document()`, STATUS JSON in
guestfail(8)) plus what only a series of documents tells: the switches by
reason and the latency histogram, counted from each pair's `switches` total
and `history` (its last 32 switches; every switch writes a document, so none
is missed).  Counters start again with the daemon, as Prometheus expects.

prometheus_client (python3-prometheus-client) renders and writes the file;
it is optional: without it the daemon logs once that the file is not
written, and carries on.

The metrics (every name starts with ``guestfail_``; `master` is the pair's
master's name):

| metric | type | labels |
|---|---|---|
| up | gauge: 1 while the daemon runs, 0 once it stopped | |
| build_info | gauge 1 | version, backend |
| start_time_seconds | gauge | |
| reconciles_total, resyncs_total | counter | |
| health | gauge 1 for the overall state, else 0 | state |
| pair_health | gauge 1 for the pair's state, else 0 | master, state |
| pair_active | gauge 1 for the active member's role, else 0 | master, role |
| pair_switches_total | counter | master, reason, by |
| pair_last_switch_timestamp_seconds | gauge | master |
| pair_last_switch_latency_seconds | gauge (absent if unknown) | master |
| pair_switch_latency_seconds | histogram | master |
| refusals, unpaired, kernel_managed_pairs | gauge | |
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger(__name__)

#: switch latency buckets, seconds: a switch takes milliseconds when
#: guestfail makes it, up to a miimon interval or more when the bond does
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HEALTH_STATES = ("healthy", "degraded", "failed")
ROLES = ("primary", "standby")

_NAME_EVENT = re.compile(r"^(\S+) (lost carrier|got carrier|removed|joined|changed)$")
_BUTTON = re.compile(r"^attention button on slot \S+")


def reason_label(reason: str, pair: Mapping[str, Any]) -> str:
    """A switch's reason without interface names, so that the label's values
    stay few: "ens4npf lost carrier" -> "primary lost carrier".  The standby
    keeps its name; any other member named is the primary (a VF's name may
    change from one plug to the next); "attention button on slot 5001" ->
    "attention button"."""
    if _BUTTON.match(reason):  # the slot's name varies from one plug to the next
        return "attention button" + (" cancelled" if reason.endswith("cancelled") else "")
    m = _NAME_EVENT.match(reason)
    if m is None:
        return reason or "unknown"
    name, event = m.groups()
    return f"{'standby' if name == pair.get('standby') else 'primary'} {event}"


def _epoch(iso: Any) -> Optional[float]:
    """'2026-11-27T17:25:01.123Z' (state.py's format, with or without the
    milliseconds) as seconds since the epoch."""
    if not isinstance(iso, str):
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", iso)
    if m is None:
        return None
    whole = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return whole + (float(m.group(2)) if m.group(2) else 0.0)


def _pair_name(pair: Mapping[str, Any]) -> str:
    return str(pair.get("master") or pair.get("key") or "")


@dataclass
class _PairCounts:
    seen: int = 0  # the pair's `switches` at the last document
    by_reason: dict[tuple[str, str], int] = field(default_factory=dict)  # (reason, by) -> count
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))  # not cumulative
    over: int = 0  # latencies above the last bucket
    latency_sum: float = 0.0


class Counters:
    """What a series of status documents tells and one does not: switches by
    reason, and the latency histogram, per pair (by its key)."""

    def __init__(self) -> None:
        self.pairs: dict[str, _PairCounts] = {}

    def update(self, doc: Mapping[str, Any]) -> None:
        """Count the switches that are new since the last document; the same
        document twice counts nothing."""
        current: dict[str, _PairCounts] = {}
        for pair in doc.get("pairs", []):
            key = str(pair.get("key", ""))
            counts = self.pairs.get(key, _PairCounts())
            total = int(pair.get("switches") or 0)
            if total < counts.seen:  # the pair was built anew: its count started again
                counts = _PairCounts()
            new = total - counts.seen
            history = list(pair.get("history") or [])
            known = history[max(len(history) - new, 0) :] if new > 0 else []
            for sw in known:
                reason = reason_label(str(sw.get("reason", "")), pair)
                by = str(sw.get("by") or "unknown")
                counts.by_reason[(reason, by)] = counts.by_reason.get((reason, by), 0) + 1
                latency_ms = sw.get("latency_ms")
                if isinstance(latency_ms, (int, float)) and latency_ms >= 0:
                    self._observe(counts, latency_ms / 1000)
            if new > len(known):  # fell out of the history before a document showed them
                k = ("unknown", "unknown")
                counts.by_reason[k] = counts.by_reason.get(k, 0) + new - len(known)
            counts.seen = total
            current[key] = counts
        self.pairs = current  # released pairs go, with their series

    @staticmethod
    def _observe(counts: _PairCounts, seconds: float) -> None:
        counts.latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts.buckets[i] += 1
                return
        counts.over += 1


def families(doc: Mapping[str, Any], counters: Counters, *, up: bool = True) -> list[Any]:
    """The metric families (prometheus_client.core) for one document."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    daemon = doc.get("daemon") or {}
    out: list[Any] = []
    out.append(GaugeMetricFamily("guestfail_up", "1 while the guestfail daemon runs", value=1 if up else 0))
    info = GaugeMetricFamily(
        "guestfail_build_info", "guestfail's version and backend", labels=["version", "backend"]
    )
    info.add_metric([str(daemon.get("version", "")), str(daemon.get("backend", ""))], 1)
    out.append(info)
    started = _epoch(daemon.get("started"))
    if started is not None:
        out.append(
            GaugeMetricFamily("guestfail_start_time_seconds", "When the daemon started", value=started)
        )
    for name, what in (("reconciles", "Reconciliations"), ("resyncs", "Reconciliations after lost events")):
        out.append(CounterMetricFamily(f"guestfail_{name}", what, value=int(daemon.get(name) or 0)))

    health = GaugeMetricFamily("guestfail_health", "1 for the overall state", labels=["state"])
    for state in HEALTH_STATES:
        health.add_metric([state], 1 if doc.get("health") == state else 0)
    out.append(health)

    pair_health = GaugeMetricFamily(
        "guestfail_pair_health", "1 for the pair's state", labels=["master", "state"]
    )
    active = GaugeMetricFamily(
        "guestfail_pair_active", "1 for the role of the pair's active member", labels=["master", "role"]
    )
    switches = CounterMetricFamily(
        "guestfail_pair_switches", "Switches of the active member", labels=["master", "reason", "by"]
    )
    last_time = GaugeMetricFamily(
        "guestfail_pair_last_switch_timestamp_seconds", "When the last switch happened", labels=["master"]
    )
    last_latency = GaugeMetricFamily(
        "guestfail_pair_last_switch_latency_seconds",
        "From the event's arrival to the kernel's confirmation, last switch",
        labels=["master"],
    )
    histogram = HistogramMetricFamily(
        "guestfail_pair_switch_latency_seconds",
        "From the event's arrival to the kernel's confirmation",
        labels=["master"],
    )
    for pair in doc.get("pairs", []):
        master = _pair_name(pair)
        for state in HEALTH_STATES:
            pair_health.add_metric([master, state], 1 if pair.get("state") == state else 0)
        for role in ROLES:
            active.add_metric(
                [master, role], 1 if pair.get("active") and pair.get("active") == pair.get(role) else 0
            )
        counts = counters.pairs.get(str(pair.get("key", "")), _PairCounts())
        for (reason, by), n in sorted(counts.by_reason.items()):
            switches.add_metric([master, reason, by], n)
        last = pair.get("last_switch") or {}
        when = _epoch(last.get("time"))
        if when is not None:
            last_time.add_metric([master], when)
        if isinstance(last.get("latency_ms"), (int, float)):
            last_latency.add_metric([master], float(last["latency_ms"]) / 1000)
        cumulative, buckets = 0, []
        for bound, n in zip(LATENCY_BUCKETS, counts.buckets):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", cumulative + counts.over))
        histogram.add_metric([master], buckets, counts.latency_sum)
    out += [pair_health, active, switches, last_time, last_latency, histogram]

    for name, section, what in (
        ("refusals", "refusals", "VFs or standbys refused, with a reason in guestfail status"),
        ("unpaired", "unpaired", "Standbys and primaries without a partner"),
        ("kernel_managed_pairs", "kernel_managed", "Pairs the kernel manages (net_failover, netvsc)"),
    ):
        out.append(GaugeMetricFamily(f"guestfail_{name}", what, value=len(doc.get(section) or [])))
    return out


class _Collector:
    def __init__(self, metric_families: list[Any]) -> None:
        self.metric_families = metric_families

    def collect(self) -> Iterator[Any]:
        yield from self.metric_families


def registry(doc: Mapping[str, Any], counters: Counters, *, up: bool = True) -> Any:
    """A prometheus_client registry holding the metrics of one document."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(families(doc, counters, up=up)))
    return reg


class Textfile:
    """The daemon's writer: `write()` wherever it writes its state file."""

    def __init__(self) -> None:
        self.counters = Counters()
        self._missing_logged = False
        self._failed: Optional[str] = None

    def write(self, path: str, doc: Mapping[str, Any], *, up: bool = True) -> bool:
        """Write the metrics of `doc` to `path` (nothing if `path` is "").
        True if the file was written; problems are logged, never raised:
        metrics must not stop failover."""
        if not path:
            return False
        self.counters.update(doc)
        try:
            from prometheus_client import write_to_textfile
        except ImportError:
            if not self._missing_logged:
                log.error(
                    "metrics.textfile is set, but prometheus_client is not installed "
                    "(python3-prometheus-client): %s is not written",
                    path,
                )
                self._missing_logged = True
            return False
        try:
            write_to_textfile(path, registry(doc, self.counters, up=up))
        except OSError as e:
            # prometheus_client < 0.20 leaves its temporary file behind
            with contextlib.suppress(OSError):
                os.unlink(f"{path}.{os.getpid()}.{threading.current_thread().ident}")
            problem = f"cannot write {path}: {e}"
            if problem != self._failed:  # once per distinct problem, not on every event
                log.warning("%s", problem)
                self._failed = problem
            return False
        if self._failed is not None:
            log.info("%s written again", path)
            self._failed = None
        return True
