"""The control pipe's one encoding: JSON lines, and the one Endpoints message every front end's child reads."""

from __future__ import annotations

import json

import pytest

from lbbench.model.service import Endpoint, endpoints_update, read_endpoints_update
from lbbench.system.control import JsonLines, encode


def test_endpoints_update_round_trips() -> None:
    eps = (Endpoint("web-0", "127.10.0.2", 8080, "node-0"), Endpoint("web-1", "127.10.1.2", 8081),
           Endpoint("web-2", "127.10.1.3", 8080, "node-1", ready=False, serving=True, terminating=True))
    message = json.loads(json.dumps(endpoints_update("default/web", eps)))  # as it travels
    assert read_endpoints_update(message) == ("default/web", eps)
    assert read_endpoints_update(endpoints_update("default/web", ())) == ("default/web", ())


@pytest.mark.parametrize(("item", "reason"), [
    ({"pod": "p", "ip": "10.0.0.1", "port": 80}, r"127\.0\.0\.0/8"),
    ({"pod": "p", "ip": "127.0.0.2", "port": 0}, "out of range"),
    ({"pod": "p", "ip": "127.0.0.2", "port": 65536}, "out of range"),
    ({"pod": "p", "ip": "127.0.0.2", "port": "80"}, "out of range"),
    ({"pod": "p", "ip": "127.0.0.2", "port": True}, "out of range"),
    ({"pod": "p", "ip": "127.0.0.2"}, "out of range"),
    ({"ip": "127.0.0.2", "port": 80}, "string pod"),
    ({"pod": "p", "ip": "127.0.0.2", "port": 80, "weight": 2}, "unknown key 'weight'"),
    ({"pod": "p", "ip": "127.0.0.2", "port": 80, "terminating": "yes"}, "true or false"),
    (["p", "127.0.0.2", 80], "must be an object"),
])
def test_a_malformed_endpoint_is_refused_with_its_reason(item: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read_endpoints_update({"service": "default/web", "endpoints": [item]})


def test_a_malformed_update_is_refused() -> None:
    with pytest.raises(ValueError, match="'service'"):
        read_endpoints_update({"endpoints": []})
    with pytest.raises(ValueError, match="must be a list"):
        read_endpoints_update({"service": "default/web", "endpoints": {}})


def test_json_lines_split_across_reads_and_skip_what_is_not_an_object() -> None:
    lines = JsonLines()
    wire = encode({"id": 1, "ok": True}) + b"\n  \nnot json\n[1, 2]\n" + encode({"ready": ["127.0.0.1:80"]})
    got = [msg for i in range(0, len(wire), 5) for msg in lines.feed(wire[i:i + 5])]
    assert got == [{"id": 1, "ok": True}, {"ready": ["127.0.0.1:80"]}]
    assert lines.feed(b'{"partial": ') == [] and lines.feed(b"1}\n") == [{"partial": 1}]
