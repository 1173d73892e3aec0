"""The signer: a node gets its own identity and its pods', nothing else; tokens are checked.

Real HTTPS on loopback to the real signer, which asks the fake API server
(TokenReview, pods) over HTTP. Node requests are made with the node's own
client (``SignerClient``) or, where the wire answer is the point, with httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509

from nodeproxy.signer.server import Limits
from nodeproxy.tls.ca import CertificateAuthority, build_ca, generate_key, utc_now
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.signer_client import SignerClient, SignerUnavailable, csr_for
from nodeproxy.tls.store import IssuedCert
from tests.fakes.apiserver import FakeApiServer, fake_apiserver
from tests.fakes.k8s_objects import pod
from tests.helpers.signer import (
    RunningSigner,
    client_ssl,
    running_signer,
    seed_cluster,
    write_token,
)

NODE_A, NODE_B = SpiffeId.node("node-a"), SpiffeId.node("node-b")
WEB, REPORTING = SpiffeId.workload("shop", "webserver"), SpiffeId.workload("shop", "reporting")
DATABASE, BATCH = SpiffeId.workload("shop", "database"), SpiffeId.workload("shop", "batch")
HOUR = timedelta(hours=1)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.01)  # jumps only when sockets are idle


@dataclass
class Cluster:
    ca: CertificateAuthority
    api: FakeApiServer
    signer: RunningSigner
    tmp: Path

    def node_client(self, pod: str = "nodeproxy-a", **token: Any) -> SignerClient:
        tok = self.api.token_reviews.issue(pod, "nodeproxy", **token)
        path = write_token(self.tmp, pod, tok)
        return SignerClient(self.signer.url, path, self.ca.cert_pem, "cluster.local", timeout=5)

    async def post(self, token: str | None, *ids: SpiffeId, body: bytes | None = None) -> Any:
        if body is None:
            csrs = [csr_for(sid, generate_key("ec-p256")).decode() for sid in ids]
            body = httpx.Request("POST", "/", json={"csrs": csrs}).read()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(verify=client_ssl(self.ca), timeout=10) as client:
            return await client.post(f"{self.signer.url}/v1/sign", content=body, headers=headers)


@asynccontextmanager
async def cluster(tmp_path: Path, limits: Limits | None = None) -> AsyncIterator[Cluster]:
    ca = build_ca(now=utc_now() - timedelta(days=1))
    async with fake_apiserver() as api:
        seed_cluster(api)
        async with running_signer(ca, api, limits) as signer:
            yield Cluster(ca, api, signer, tmp_path)


def check_issued(issued: IssuedCert, ca: CertificateAuthority, sid: SpiffeId) -> None:
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    assert issued.spiffe_id == sid
    assert issued.not_after - issued.not_before <= HOUR + timedelta(minutes=5)


async def test_a_node_gets_its_own_identity_and_those_of_its_pods(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        out = await c.node_client().sign([NODE_A, WEB, REPORTING], lifetime=HOUR, client=None)
        assert sorted(i.spiffe_id for i in out.issued) == sorted([NODE_A, WEB, REPORTING])
        assert out.refused == []
        for issued in out.issued:
            check_issued(issued, c.ca, issued.spiffe_id)
        # node-b's proxy gets node-b's identities the same way
        out_b = await c.node_client("nodeproxy-b").sign(
            [NODE_B, DATABASE], lifetime=HOUR, client=None
        )
        assert sorted(i.spiffe_id for i in out_b.issued) == sorted([NODE_B, DATABASE])
        reviews = [t for t, _ in c.api.requests if t.startswith("/apis/authentication")]
        assert len(reviews) == 2  # one TokenReview per request, never cached
        assert any("fieldSelector=spec.nodeName%3Dnode-a" in t for t, _ in c.api.requests)


async def test_an_identity_without_a_pod_on_the_callers_node_is_refused_with_403(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        token = c.api.token_reviews.issue("nodeproxy-a", "nodeproxy")
        r = await c.post(token, DATABASE)  # shop/database runs only on node-b
        assert r.status_code == 403
        assert r.headers["x-nodeproxy-error"] == "forbidden"
        assert (
            r.json()["reason"] == "no pod with service account shop/database runs on node 'node-a'"
        )
        assert r.json()["refused"] == [{"spiffe_id": str(DATABASE), "reason": r.json()["reason"]}]
        r = await c.post(token, NODE_B)  # another node's identity
        assert (r.status_code, r.json()["reason"]) == (
            403, "the caller runs on node 'node-a', not 'node-b'",
        )  # fmt: skip
        r = await c.post(token, BATCH)  # its only pod on node-a has finished
        assert r.status_code == 403
        # asked together with a legitimate one: that one is signed, the other refused beside it
        r = await c.post(token, WEB, DATABASE)
        assert r.status_code == 200
        assert [i["spiffe_id"] for i in r.json()["issued"]] == [str(WEB)]
        assert r.json()["refused"][0]["spiffe_id"] == str(DATABASE)


async def test_the_node_client_reports_refusals_per_identity(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        out = await c.node_client().sign([DATABASE], lifetime=HOUR, client=None)
        assert out.issued == []
        assert [(r.spiffe_id, r.reason) for r in out.refused] == [
            (str(DATABASE), "no pod with service account shop/database runs on node 'node-a'")
        ]


async def test_a_pod_leaving_the_node_takes_its_identity_with_it(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        client = c.node_client()
        assert [i.spiffe_id for i in (await client.sign([WEB], lifetime=HOUR, client=None)).issued]
        c.api.delete("pods", "web-1", "shop")
        out = await client.sign([WEB], lifetime=HOUR, client=None)
        assert (out.issued, [r.spiffe_id for r in out.refused]) == ([], [str(WEB)])


@pytest.mark.parametrize(
    ("token_args", "reason"),
    [
        (
            {"audiences": ("https://kubernetes.default.svc.cluster.local",)},
            "is invalid for the target audiences",
        ),
        ({"lifetime": 60.0}, "service account token has expired"),
    ],
    ids=["wrong-audience", "expired"],
)
async def test_a_bad_token_is_refused_with_401(
    tmp_path: Path, clock: trio.testing.MockClock, token_args: dict[str, Any], reason: str
) -> None:
    async with cluster(tmp_path) as c:
        token = c.api.token_reviews.issue("nodeproxy-a", "nodeproxy", **token_args)
        await trio.sleep(61)
        r = await c.post(token, NODE_A)
        assert r.status_code == 401
        assert r.headers["x-nodeproxy-error"] == "unauthenticated"
        assert reason in r.json()["reason"]


async def test_missing_unknown_and_orphaned_tokens_are_refused(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        r = await c.post(None, NODE_A)
        assert (r.status_code, r.json()["reason"]) == (401, "no bearer token")
        r = await c.post("not-a-token", NODE_A)
        assert r.status_code == 401
        assert "invalid bearer token" in r.json()["reason"]
        token = c.api.token_reviews.issue("nodeproxy-a", "nodeproxy")
        c.api.delete("pods", "nodeproxy-a", "nodeproxy")  # the token's pod is gone
        r = await c.post(token, NODE_A)
        assert r.status_code == 401
        assert 'pods "nodeproxy-a" not found' in r.json()["reason"]


async def test_only_the_node_proxies_service_account_may_ask(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        # any pod can get a token with our audience for its own account
        token = c.api.token_reviews.issue("web-1", "shop")
        r = await c.post(token, WEB)
        assert r.status_code == 403
        assert r.json()["reason"] == (
            "service account shop/webserver may not request certificates (only nodeproxy/nodeproxy)"
        )


async def test_without_node_info_in_the_token_the_bound_pod_names_the_node(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        out = await c.node_client(with_node=False).sign([NODE_A, WEB], lifetime=HOUR, client=None)
        assert sorted(i.spiffe_id for i in out.issued) == sorted([NODE_A, WEB])
        assert any(t == "/api/v1/namespaces/nodeproxy/pods/nodeproxy-a" for t, _ in c.api.requests)


async def test_a_client_certificate_must_be_the_tokens_node(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        b = c.node_client("nodeproxy-b")
        node_b = (await b.sign([NODE_B], lifetime=HOUR, client=None)).issued[0]
        a = c.node_client("nodeproxy-a")
        # node-a's token from a connection that proves node-b: refused
        out = await a.sign([NODE_A], lifetime=HOUR, client=node_b)
        assert out.issued == []
        assert out.refused[0].reason == (
            "the client certificate is spiffe://cluster.local/node/node-b, "
            "but the token is spiffe://cluster.local/node/node-a's"
        )
        node_a = (await a.sign([NODE_A], lifetime=HOUR, client=None)).issued[0]
        out = await a.sign([WEB], lifetime=HOUR, client=node_a)  # mutual TLS, matching
        assert [i.spiffe_id for i in out.issued] == [WEB]


async def test_malformed_and_oversized_requests(tmp_path: Path) -> None:
    async with cluster(tmp_path, Limits(max_body=16 * 1024)) as c:
        token = c.api.token_reviews.issue("nodeproxy-a", "nodeproxy")
        r = await c.post(token, body=b"x" * 20_000)
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (413, "too_large")
        r = await c.post(token, body=b'{"csrs": ["not a csr"]}')
        assert (r.status_code, r.json()["reason"]) == (
            400,
            "a CSR is not a PEM certificate request",
        )
        r = await c.post(token, body=b"[1, 2]")
        assert r.status_code == 400
        other_td = csr_for(
            SpiffeId.workload("shop", "webserver", "evil.example"), generate_key("ec-p256")
        )
        r = await c.post(token, body=b'{"csrs": ["%s"]}' % other_td.replace(b"\n", b"\\n"))
        assert r.status_code == 400
        assert "outside trust domain 'cluster.local'" in r.json()["reason"]
        assert c.api.token_reviews.reviews == 0  # none of this cost an API call


async def test_the_api_server_down_is_a_503_the_node_retries(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        client = c.node_client()
        c.api.go_down()
        with pytest.raises(
            SignerUnavailable, match="503 unavailable: the Kubernetes API did not answer"
        ):
            await client.sign([NODE_A], lifetime=HOUR, client=None)
        c.api.go_up()
        assert len((await client.sign([NODE_A], lifetime=HOUR, client=None)).issued) == 1


async def test_a_node_refuses_a_signer_whose_certificate_does_not_name_its_host(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        token = write_token(tmp_path, "a", c.api.token_reviews.issue("nodeproxy-a", "nodeproxy"))
        url = f"https://127.0.0.1:{c.signer.port}"  # the certificate says localhost
        client = SignerClient(url, token, c.ca.cert_pem, "cluster.local", timeout=5)
        with pytest.raises(SignerUnavailable, match="IP address mismatch"):
            await client.sign([NODE_A], lifetime=HOUR, client=None)
        other_ca = build_ca(now=utc_now() - timedelta(days=1))  # a signer under another CA
        url = c.signer.url
        client = SignerClient(url, token, other_ca.cert_pem, "cluster.local", timeout=5)
        with pytest.raises(SignerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await client.sign([NODE_A], lifetime=HOUR, client=None)


async def test_health_metrics_and_unknown_routes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c, httpx.AsyncClient(verify=client_ssl(c.ca)) as client:
        r = await client.get(f"{c.signer.url}/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        r = await client.get(f"{c.signer.url}/v1/sign")
        assert r.status_code == 405
        r = await client.get(f"{c.signer.url}/secrets")
        assert r.status_code == 404
        token = c.api.token_reviews.issue("nodeproxy-a", "nodeproxy")
        assert (await c.post(token, NODE_A, DATABASE)).status_code == 200
        assert (await c.post(None, NODE_A)).status_code == 401
        r = await client.get(f"{c.signer.url}/metrics")
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        lines = set(r.text.splitlines())
        assert 'nodeproxy_signer_requests_total{outcome="signed"} 1' in lines
        assert 'nodeproxy_signer_requests_total{outcome="unauthenticated"} 1' in lines
        assert "nodeproxy_signer_certificates_total 1" in lines
        assert "nodeproxy_signer_refusals_total 1" in lines


async def test_slow_and_excess_connections_are_closed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    limits = Limits(max_connections=2, request_timeout=10.0)
    async with cluster(tmp_path, limits) as c:
        idle = [await trio.open_tcp_stream("127.0.0.1", c.signer.port) for _ in range(2)]
        await trio.sleep(0.5)  # both accepted: the cap is reached
        extra = await trio.open_tcp_stream("127.0.0.1", c.signer.port)
        with trio.fail_after(1):
            assert await extra.receive_some(1024) == b""  # closed at accept
        start = trio.current_time()
        with trio.fail_after(30):
            assert await idle[0].receive_some(1024) == b""  # no handshake in 10 s: closed
        assert 9.5 <= trio.current_time() - start <= 10.5
        for stream in (*idle, extra):
            await stream.aclose()
        # the slots are free again: a real request is served
        token = c.api.token_reviews.issue("nodeproxy-a", "nodeproxy")
        assert (await c.post(token, NODE_A)).status_code == 200


async def test_a_node_with_more_identities_than_one_request_holds_asks_in_batches(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        accounts = [f"team-{i}" for i in range(70)]
        for i, sa in enumerate(accounts):
            c.api.add("pods", pod(f"p-{i}", f"10.0.3.{i}", node="node-a", ns="shop",
                                  service_account=sa))  # fmt: skip
        ids = [NODE_A, *(SpiffeId.workload("shop", sa) for sa in accounts)]
        out = await c.node_client().sign(ids, lifetime=HOUR, client=None)
        assert sorted(i.spiffe_id for i in out.issued) == sorted(ids)
        assert c.signer.signer.counts == {"signed": 2}  # 64 + 7 CSRs
