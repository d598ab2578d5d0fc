"""The VM and node part of a scrape, byte for byte, for a recorded set of bulk stats records
(tests/unit/golden/metrics_scrape*.txt, written by the renderer before its speed-up): a
faster renderer must not change a name, label, value, order or the format."""

from __future__ import annotations

from agent.metrics.bounded import BoundedStats
from agent.metrics.collector import VMCollector
from agent.metrics.ports import DomainStats, NodeFacts, StatValue, VMView
from agent.ports import JobSample
from tests.unit.golden_files import assert_golden
from tests.unit.test_metrics import QEMU_RECORD, TCG_RECORD

FACTS = NodeFacts("node-\"a\"\\1", cpus=8, memory_bytes=16 << 30, reserved_memory_bytes=1 << 30,
                  virt_type="qemu")  # fmt: skip
# Values that take every branch of Go's float spelling: exponents, negatives, fractions,
# huge counters, NaN and infinities, and values that are no number at all.
ODD_VALUES: dict[str, StatValue] = {
    "cpu.time": 123_456_789_012_345_678,
    "cpu.user": 7,
    "cpu.system": -5,
    "balloon.maximum": 3.75,
    "balloon.current": 1_000_000,
    "balloon.rss": 10**20,
    "balloon.available": 5,
    "balloon.unused": 9,
    "balloon.usable": float("nan"),
    "balloon.disk_caches": float("inf"),
    "balloon.swap_in": float("-inf"),
    "balloon.swap_out": True,
    "balloon.major_fault": "12",
    "balloon.minor_fault": 0.1 + 0.2,
    "vcpu.maximum": 3,
    "vcpu.0.state": 2,
    "vcpu.0.time": 999_999,
    "vcpu.1.state": 0,
    "vcpu.1.time": 1_000_000_000_000_001,
    "vcpu.1.delay": 1,
    "vcpu.2.state": 7,
    "vcpu.2.wait": 42,
    "net.count": 3,
    "net.0.name": "",
    "net.0.rx.bytes": 1,
    "net.1.name": 'tap"odd\\\n',
    "net.1.rx.bytes": 123456789,
    "net.1.tx.pkts": 3,
    "net.2.name": "vknown",
    "net.2.tx.bytes": 4,
    "block.count": 2,
    "block.0.name": "vdb",
    "block.0.rd.times": 1,
    "block.1.name": "",
}
PAUSED = {**TCG_RECORD, "vcpu.maximum": 0, "vcpu.current": 2, "vcpu.0.state": 1}


def records() -> list[DomainStats]:
    return [
        DomainStats("team-a_web", dict(QEMU_RECORD)),
        DomainStats("foreign", dict(QEMU_RECORD)),
        DomainStats("team-b_db", dict(TCG_RECORD)),
        DomainStats("odd_x", dict(ODD_VALUES)),
        DomainStats("team-b_paused", dict(PAUSED)),
        DomainStats("team-c_empty", {}),
    ]


VIEWS = [
    VMView("team-b_db", "team-b", "db", "running"),
    VMView("team-a_web", "team-a", "web", "running", "q35", nic_names={"va1a2b3c4d5e6": "default"}),
    VMView("odd_x", 'n"s\\', "x\ny", "running", os="linux", nic_names={"vknown": 'net"1'}),
    VMView("team-b_paused", "team-b", "paused", "paused"),
    VMView("team-c_empty", "team-c", "empty", "running"),
    VMView("team-b_off", "team-b", "off", "stopped"),
]
JOB = JobSample(data_total=1 << 30, data_processed=1 << 29, data_remaining=1 << 29,
                dirty_rate=100, page_size=4096, memory_bps=10 << 20)  # fmt: skip


class Recorded:
    def all_domain_stats(self) -> list[DomainStats]:
        return records()


def collector() -> VMCollector:
    return VMCollector(BoundedStats(Recorded(), bound=5.0), lambda: VIEWS, lambda: FACTS,
                       lambda: [("team-a_web", JOB), ("gone", JOB)])  # fmt: skip


def test_scrape_text_is_unchanged_for_recorded_records() -> None:
    assert_golden("metrics_scrape.txt", collector().collect().render())


def test_openmetrics_text_is_unchanged_for_recorded_records() -> None:
    assert_golden("metrics_scrape_openmetrics.txt", collector().collect().render(openmetrics=True))


def test_a_second_scrape_with_new_values_renders_them() -> None:
    scraper = collector()
    first = scraper.collect().render()
    QEMU_RECORD["cpu.time"] = 13_000_000_000
    try:
        second = scraper.collect().render()
    finally:
        QEMU_RECORD["cpu.time"] = 12_500_000_000
    assert first != second
    assert 'name="web"} 13.0\n' in second
    assert second == first.replace('name="web"} 12.5\n', 'name="web"} 13.0\n')


def test_a_collector_that_scraped_before_renders_what_a_fresh_one_does() -> None:
    """Plans and their memos are kept between scrapes: whatever came before (other values,
    a stat turning into text or bool, NICs and disks coming and going), the text is the one
    a collector scraping for the first time writes."""
    rounds = [records()]
    for shift in (0, 1, 2):
        changed = []
        for index, record in enumerate(records()):
            stats = dict(record.stats)
            for key, value in stats.items():
                if type(value) is int and not key.endswith(("count", "maximum", "state")):
                    stats[key] = value + shift * index
            if shift == 1:
                stats.update({"cpu.time": True, "balloon.rss": "x", "net.count": 0})
            if shift == 2:
                stats.update({"cpu.time": 1.5, "block.count": 0, "vcpu.maximum": 1})
            changed.append(DomainStats(record.name, stats))
        rounds.append(changed)
    rounds.append(records())
    scraper = collector()
    for batch in rounds:
        fresh = collector()
        scraper.stats.source = fresh.stats.source = Batch(batch)
        assert scraper.collect().render() == fresh.collect().render()


class Batch:
    def __init__(self, batch: list[DomainStats]) -> None:
        self.batch = batch

    def all_domain_stats(self) -> list[DomainStats]:
        return self.batch
