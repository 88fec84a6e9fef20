"""Fixtures shared by test modules."""

from __future__ import annotations

import dataclasses
import socket
import urllib.request

import pytest


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A moto S3 server on loopback with one empty bucket, and the ways each client reaches it."""

    url: str
    bucket: str
    client: object  # boto3 S3 client

    @property
    def beam_args(self) -> list[str]:
        """Beam's S3 pipeline options (``affectstream convert``)."""
        return ["--s3_endpoint_url", self.url, "--s3_access_key_id", "testing", "--s3_secret_access_key",
                "testing", "--s3_region_name", "us-east-1"]

    @property
    def tf_env(self) -> dict[str, str]:
        """tensorflow-io's S3 settings (trainer, predict), for a subprocess's environment."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT": self.url, "S3_USE_HTTPS": "0",
                "S3_VERIFY_SSL": "0"}

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3-compatible server (moto) on loopback, emptied first.

    moto keeps its buckets in process-wide state that outlives a server, so each test resets it: a bucket left by
    an earlier test would otherwise make an output look "already there".
    """
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket="affect")
        yield S3Server(url=url, bucket="affect", client=client)
    finally:
        server.stop()
