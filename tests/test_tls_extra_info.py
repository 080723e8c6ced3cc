"""get_extra_info() of a TLS transport and the SSL protocol's lazily made
state, on the stdlib loop (asyncio's sslproto) and pyasync_c's native layer:
the TLS keys before and after the handshake, names that are not plain str,
the write backlog of a fresh protocol.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from net_util import (arun, client_context, server_context, tcp_server, tls_connect, tls_files)

__all__ = ["arun", "tls_files"]  # fixtures, imported for pytest

TLS_KEYS = ("sslcontext", "ssl_object", "peercert", "cipher", "compression")


@pytest.fixture(autouse=True)
def native_tls(monkeypatch: pytest.MonkeyPatch, loop_name: str) -> None:
    if loop_name == "pyasync_c":
        from pyasync_c import _network
        monkeypatch.setattr(_network, "_NATIVE_TLS", True)


def ssl_protocol_class(loop_name: str) -> Any:
    if loop_name == "pyasync_c":
        from pyasync_c import _loop
        return _loop.SSLProtocol
    return asyncio.sslproto.SSLProtocol


class StrName(str):
    pass


class EqualsCipher:
    """Hashes and compares like 'cipher' (a dict lookup finds the key)."""

    def __hash__(self) -> int:
        return hash("cipher")

    def __eq__(self, other: object) -> bool:
        return other == "cipher"


class EqualsPeercert:
    def __hash__(self) -> int:
        return hash("peercert")

    def __eq__(self, other: object) -> bool:
        return other == "peercert"


def test_before_the_handshake_only_sslcontext(arun, tls_files, loop_name):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = client_context(tls_files)
        proto = ssl_protocol_class(loop_name)(loop, asyncio.Protocol(), ctx, None,
                                              server_hostname="localhost")
        tr = proto._app_transport
        assert tr.get_extra_info("sslcontext") is ctx
        assert tr.get_extra_info(StrName("sslcontext")) is ctx
        for name in TLS_KEYS[1:]:
            assert tr.get_extra_info(name, "none yet") == "none yet"
        assert len(proto._write_backlog) == 0
        assert proto._write_backlog is proto._write_backlog
        tr.close()
    arun(main())


def test_after_the_handshake(arun, tls_files):
    async def main() -> None:
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            tr2, proto2 = await tls_connect(server, tls_files)
            sslobj = tr.get_extra_info("ssl_object")
            assert isinstance(sslobj, ssl.SSLObject)
            assert isinstance(tr.get_extra_info("sslcontext"), ssl.SSLContext)
            peercert = tr.get_extra_info("peercert")
            assert peercert["subject"] == ((("commonName", "localhost"),),)
            assert tr.get_extra_info("peercert") is peercert
            cipher = tr.get_extra_info("cipher")
            assert cipher == sslobj.cipher() and isinstance(cipher, tuple)
            assert tr2.get_extra_info("cipher") == cipher
            assert tr.get_extra_info("compression") is None
            assert tr.get_extra_info("compression", 5) is None  # a key, whose value is None
            # names that are not exactly str: a dict lookup, as asyncio's _extra
            assert tr.get_extra_info(StrName("cipher")) == cipher
            assert tr.get_extra_info(EqualsCipher()) == cipher
            with pytest.raises(TypeError):
                tr.get_extra_info(["unhashable"])
            assert tr.get_extra_info("no such key", 7) == 7
            assert tr.get_extra_info("peername")[0] == "127.0.0.1"
            for t, p in ((tr, proto), (tr2, proto2)):
                t.close()
                await p.wait_lost()
            assert tr.get_extra_info("ssl_object") is sslobj
            assert tr.get_extra_info("cipher") == cipher
            assert tr.get_extra_info("peercert") is peercert
            # first asked once the connection is gone: the handshake's certificate
            peercert2 = tr2.get_extra_info(EqualsPeercert())
            assert peercert2 == peercert
            assert tr2.get_extra_info("peercert") is peercert2
    arun(main())


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_peercert_on_both_sides(arun, tls_files, version):
    """The client's view of the server certificate and, with a client
    certificate required, the server's view of the client's, on TLS 1.2 and
    1.3; asked before and after the connection is gone."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sctx = server_context(tls_files)
        sctx.verify_mode = ssl.CERT_REQUIRED
        sctx.load_verify_locations(tls_files.cert)
        cctx = client_context(tls_files)
        cctx.load_cert_chain(tls_files.cert, tls_files.key)
        cctx.maximum_version = getattr(ssl.TLSVersion, version)
        server_side: list[Any] = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                server_side.append(transport)
                transport.write(b"hi")

        server = await loop.create_server(Server, "127.0.0.1", 0, ssl=sctx)
        try:
            got: asyncio.Future[bytes] = loop.create_future()

            class Client(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    if not got.done():
                        got.set_result(data)

            tr, _ = await loop.create_connection(
                Client, "127.0.0.1", server.sockets[0].getsockname()[1], ssl=cctx,
                server_hostname="localhost")
            assert await asyncio.wait_for(got, 5) == b"hi"
            assert tr.get_extra_info("ssl_object").version() == version.replace("_", ".")
            seen_by_server = server_side[0].get_extra_info("peercert")
            assert seen_by_server["subject"] == ((("commonName", "localhost"),),)
            tr.close()
            await asyncio.sleep(0.1)
            seen_by_client = tr.get_extra_info("peercert")
            assert seen_by_client == seen_by_server  # one self-signed certificate
            assert tr.get_extra_info("peercert") is seen_by_client
        finally:
            server.close()
    arun(main())
