"""The DNS capability and service: `<name>.vm` follows the VM lifecycle."""

from __future__ import annotations

import asyncio
import socket

import pytest
from dnslib import RCODE, DNSRecord

from banger.capabilities.base import BootContributions
from banger.capabilities.dns import DnsCapability
from banger.net._ns import call_in_netns
from banger.net.dns import DnsService
from banger.vm import VMRecord
from tests.records import vm_record


def vm(name: str, ip: str | None, state: str = "running") -> VMRecord:
    return vm_record(name, ip, state=state)


async def _ask(name: str, host: str, port: int, ns: str | None = None) -> DNSRecord:
    def query() -> DNSRecord:
        # In a namespace the client must live there too: the bridge address does.
        sock = call_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            sock.settimeout(2)
            sock.sendto(bytes(DNSRecord.question(name).pack()), (host, port))
            return DNSRecord.parse(sock.recv(512))
        finally:
            sock.close()

    return await asyncio.to_thread(query)


@pytest.mark.netns
async def test_attach_serves_the_name_on_the_bridge_and_detach_removes_it(bridge_ns: str) -> None:
    service = DnsService("172.30.0.1", 53, netns=bridge_ns)
    cap = DnsCapability(service)
    web = vm("web", "172.30.0.2")
    try:
        await cap.attach(web, BootContributions())  # starts the server lazily
        assert service.serving and service.error is None
        reply = await _ask("web.vm", "172.30.0.1", 53, bridge_ns)
        assert reply.header.rcode == RCODE.NOERROR
        assert [str(r.rdata) for r in reply.rr] == ["172.30.0.2"]

        await cap.detach(web)
        reply = await _ask("web.vm", "172.30.0.1", 53, bridge_ns)
        assert reply.header.rcode == RCODE.NXDOMAIN
        await cap.destroy(web)  # idempotent
    finally:
        service.close()


async def test_bind_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        service = DnsService("127.0.0.1", holder.getsockname()[1])
        cap = DnsCapability(service)
        await cap.attach(vm("web", "172.30.0.2"), BootContributions())  # a create goes on
        assert not service.serving
        assert service.error is not None and "in use" in service.error
        assert "DNS is off" in caplog.text
        assert service.records() == {"web": "172.30.0.2"}  # served once the port frees up
        assert await service.ensure_started() is False  # retried later, not on every VM
    finally:
        holder.close()


async def test_sync_answers_for_readopted_vms() -> None:
    vms = [vm("web", "172.30.0.2"), vm("old", "172.30.0.3", state="stopped"), vm("x", None)]
    service = DnsService("127.0.0.1", 0)
    service.register("stale", "172.30.0.9")
    await DnsCapability(service).reclaim(vms)  # what a restarted daemon does after re-adopting
    assert service.records() == {"web": "172.30.0.2"}
    assert await service.ensure_started()
    try:
        assert service.server.address is not None
        port = service.server.address[1]
        assert str((await _ask("WEB.vm", "127.0.0.1", port)).rr[0].rdata) == "172.30.0.2"
        assert (await _ask("stale.vm", "127.0.0.1", port)).header.rcode == RCODE.NXDOMAIN
    finally:
        service.close()
    assert not service.serving
