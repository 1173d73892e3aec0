"""The stats registry and the Prometheus renderer, parsed back with the exposition grammar."""

from __future__ import annotations

import math
import re

import pytest

from nodeproxy.stats import names as s
from nodeproxy.stats.prometheus import (
    Family,
    escape_label_value,
    families_json,
    format_value,
    render,
    stats_families,
)
from nodeproxy.stats.registry import DEFAULT_BUCKETS, Histogram, Stats, labels

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABEL = rf"[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE}"
VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)"
SAMPLE = re.compile(rf"^({NAME})(\{{(?:{LABEL}(?:,{LABEL})*)?\}})? ({VALUE})$")
LABEL_PAIR = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})")

Sample = tuple[str, dict[str, str], float]


def unescape(quoted: str) -> str:
    out, it = [], iter(quoted[1:-1])
    for ch in it:
        if ch == "\\":
            nxt = next(it)
            out.append("\n" if nxt == "n" else nxt)
        else:
            out.append(ch)
    return "".join(out)


def parse_exposition(text: str) -> tuple[dict[str, str], list[Sample]]:
    """Check every line against the 0.0.4 grammar; return TYPE per family and samples."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples: list[Sample] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name)
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            assert name not in types, f"duplicate TYPE for {name}"
            assert name in helped
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a valid sample line: {line!r}"
            lbls = {k: unescape(v) for k, v in LABEL_PAIR.findall(m.group(2) or "")}
            raw = m.group(3)
            value = float(raw.replace("Inf", "inf"))
            family = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            assert m.group(1) in types or types.get(family) == "histogram", line
            samples.append((m.group(1), lbls, value))
    return types, samples


def test_counters_gauges_and_label_sets() -> None:
    st = Stats()
    a = labels(cluster="a", code_class="2xx", listener="out")
    st.inc(s.REQUESTS, a)
    st.inc(s.REQUESTS, a, 2)
    st.inc(s.REQUESTS, labels(cluster="b", code_class="5xx", listener="out"))
    st.gauge_add(s.DOWNSTREAM_CONNECTIONS_ACTIVE, labels(listener="out"))
    st.gauge_add(s.DOWNSTREAM_CONNECTIONS_ACTIVE, labels(listener="out"), -1)
    st.gauge_set(s.POOL_CONNECTIONS, labels(cluster="a", endpoint="h:1", state="idle"), 4)
    assert st.counter(s.REQUESTS, a) == 3
    assert st.sum_counter(s.REQUESTS, listener="out") == 4
    assert st.sum_counter(s.REQUESTS, cluster="b") == 1
    assert st.gauge(s.DOWNSTREAM_CONNECTIONS_ACTIVE, labels(listener="out")) == 0
    assert labels(b="1", a="2") == (("a", "2"), ("b", "1"))
    assert repr(st) == "<Stats [1 counters, 2 gauges, 0 histograms]>"


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    h = Histogram(buckets=(1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 7.0):
        h.observe(v)
    assert h.counts == [2, 2, 1]
    assert h.cumulative() == [(1.0, 2), (2.0, 4), (math.inf, 5)]
    assert h.total == 12.0
    assert h.count == 5


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, 0.0),
        ([0.5] * 10, 0.5, 0.5),  # all in (0, 1]: halfway through the first bucket
        ([1.5] * 10, 0.99, 1.99),  # interpolated inside (1, 2]
        ([0.5] * 9 + [1.5], 0.9, 1.0),
        ([9.0] * 4, 0.5, 2.0),  # +Inf bucket -> the last finite bound
    ],
)
def test_histogram_estimate(values: list[float], q: float, expected: float) -> None:
    h = Histogram(buckets=(1.0, 2.0))
    for v in values:
        h.observe(v)
    assert h.estimate(q) == pytest.approx(expected)


def test_value_formatting_and_escaping() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def filled_stats() -> Stats:
    st = Stats()
    st.inc(s.REQUESTS, labels(cluster="bdgreeter", code_class="2xx", listener="outbound"), 5)
    st.inc(s.PROXY_ERRORS, labels(cause='weird "quoted"\\path\nnewline'))
    st.gauge_set(s.DOWNSTREAM_CONNECTIONS_ACTIVE, labels(listener="outbound"), 2)
    for v in (0.4, 3.0, 3.0, 200.0, 45000.0):
        st.observe(s.REQUEST_DURATION_MS, labels(cluster="bdgreeter"), v)
    st.observe(s.REQUEST_DURATION_MS, labels(cluster="other"), 10.0)
    return st


def test_rendered_exposition_parses_back_and_histograms_are_cumulative() -> None:
    text = render(stats_families(filled_stats()))
    types, samples = parse_exposition(text)
    assert types[s.REQUESTS] == "counter"
    assert types[s.DOWNSTREAM_CONNECTIONS_ACTIVE] == "gauge"
    assert types[s.REQUEST_DURATION_MS] == "histogram"
    assert f"# HELP {s.REQUESTS} {s.HELP[s.REQUESTS]}" in text

    req = [x for x in samples if x[0] == s.REQUESTS]
    assert req == [
        (s.REQUESTS, {"cluster": "bdgreeter", "code_class": "2xx", "listener": "outbound"}, 5.0)
    ]
    (err,) = [x for x in samples if x[0] == s.PROXY_ERRORS]
    assert err[1]["cause"] == 'weird "quoted"\\path\nnewline'  # escaping round-trips

    for cluster, count in (("bdgreeter", 5), ("other", 1)):
        buckets = [
            (lbl["le"], v)
            for name, lbl, v in samples
            if name == f"{s.REQUEST_DURATION_MS}_bucket" and lbl["cluster"] == cluster
        ]
        assert len(buckets) == len(DEFAULT_BUCKETS) + 1
        values = [v for _, v in buckets]
        assert values == sorted(values), "buckets must be cumulative"
        bounds = [float(le.replace("Inf", "inf")) for le, _ in buckets]
        assert bounds == sorted(bounds)
        assert buckets[-1] == ("+Inf", count)
        (cnt,) = [
            v
            for n, lbl, v in samples
            if n == f"{s.REQUEST_DURATION_MS}_count" and lbl["cluster"] == cluster
        ]
        assert cnt == count
    le = {
        lbl["le"]: v
        for n, lbl, v in samples
        if n.endswith("_bucket") and lbl["cluster"] == "bdgreeter"
    }
    assert le["0.5"] == 1
    assert le["5.0"] == 3
    assert le["30000.0"] == 4  # 45 s is beyond the last finite bucket
    (total,) = [
        v
        for n, lbl, v in samples
        if n == f"{s.REQUEST_DURATION_MS}_sum" and lbl["cluster"] == "bdgreeter"
    ]
    assert total == pytest.approx(45206.4)


def test_families_are_sorted_and_empty_registry_renders_nothing() -> None:
    assert render(stats_families(Stats())) == ""
    names = [f.name for f in stats_families(filled_stats())]
    assert names == sorted(names)


def test_unlabelled_family_and_unknown_help() -> None:
    text = render([Family("nodeproxy_x", "gauge", "line one\nline \\two", (((), 1.5),))])
    assert text == (
        "# HELP nodeproxy_x line one\\nline \\\\two\n# TYPE nodeproxy_x gauge\nnodeproxy_x 1.5\n"
    )
    parse_exposition(text)


def test_families_json_shape() -> None:
    data = families_json(stats_families(filled_stats()))
    (req,) = data["counters"][s.REQUESTS]
    assert req == {
        "labels": {"cluster": "bdgreeter", "code_class": "2xx", "listener": "outbound"},
        "value": 5,
    }
    hist = next(
        h
        for h in data["histograms"][s.REQUEST_DURATION_MS]
        if h["labels"] == {"cluster": "bdgreeter"}
    )
    assert hist["count"] == 5
    assert isinstance(hist["p50"], float)
    assert 2.5 <= hist["p50"] <= 5.0
    assert hist["p99"] == 30000.0
    buckets = hist["buckets"]
    assert isinstance(buckets, dict)
    assert buckets["+Inf"] == 5
