# amaranth: UnusedElaboratable=no
"""ScratchpadArbiter: each owner's client drives the banks, every reader gets the banks' data,
and the host's element port addresses its bank; the bank port signatures check their
parameters."""

import pytest

from gsaccel.hw.arbiter import HOST_READ_LATENCY, ScratchpadArbiter
from gsaccel.hw.config import CoreConfig
from gsaccel.hw.scratchpad import (BankPort, ElementPort, bank_addr_width,
                                   element_addr_width)
from gsaccel.hw.sequencer import ScratchpadOwner
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng


def test_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not 'x'$"):
        ScratchpadArbiter("x")


def test_port_signatures():
    with pytest.raises(TypeError, match=r"^Address width must be a positive integer, not 0$"):
        BankPort(addr_width=0)
    with pytest.raises(TypeError, match=r"^Address width must be a positive integer, not '4'$"):
        ElementPort(addr_width="4")
    with pytest.raises(ValueError, match=r"^Bank port must read, write or both, not "
                                         r"read=False and write=False$"):
        BankPort(addr_width=4, read=False, write=False)
    assert list(BankPort(addr_width=4, write=False).members) == ["rd_addr", "rd_data"]
    assert list(BankPort(addr_width=4, read=False).members) == ["wr_en", "wr_addr", "wr_data"]
    assert BankPort(addr_width=4) == BankPort(addr_width=4) != BankPort(addr_width=4,
                                                                        write=False)
    assert ElementPort(addr_width=9) == ElementPort(addr_width=9) != ElementPort(addr_width=8)
    assert repr(BankPort(addr_width=5, read=False)) == \
        "BankPort(addr_width=5, read=False, write=True)"
    cfg = CoreConfig(lanes=8, bank_depth=16)
    assert (bank_addr_width(cfg), element_addr_width(cfg)) == (4, 7)


@pytest.mark.parametrize("basis", [True, False])
def test_owner_routes_the_ports(basis):
    """Random traffic on every client under a random owner: the owner's client drives every
    bank (the host its element's bank only, by default and for BASIS without a basis unit;
    CLEAR writes 0 at the clear port's word of every bank), and the read data reaches every
    reader."""
    cfg = CoreConfig(lanes=4, bank_depth=8, basis=basis)
    dut = ScratchpadArbiter(cfg)
    rng = seeded_rng(11 + basis)
    lanes, bank_width = cfg.lanes, bank_addr_width(cfg)
    clients = ["engine", "writer"] + (["basis"] if cfg.basis else [])
    assert hasattr(dut, "basis") == cfg.basis

    async def bench(ctx):
        host_banks = []               # the host's bank in each cycle, oldest first
        for _ in range(300):
            owner = int(rng.integers(0, 4))
            host_addr = int(rng.integers(0, cfg.act_size))
            host = {"addr": host_addr, "wr_en": int(rng.integers(0, 2)),
                    "wr_data": int(rng.integers(-128, 128))}
            ctx.set(dut.owner.as_value(), owner)
            for name, value in host.items():
                ctx.set(getattr(dut.host, name), value)
            driven = {}
            for client in clients:
                for bank in range(lanes):
                    port = getattr(dut, client)[bank]
                    for name in port.signature.members:
                        if name == "rd_data":
                            continue
                        value = int(rng.integers(-128, 128) if name == "wr_data" else
                                    rng.integers(0, 2 if name == "wr_en" else 1 << bank_width))
                        ctx.set(getattr(port, name), value)
                        driven[client, bank, name] = value
            clear = {"en": int(rng.integers(0, 2)), "addr": int(rng.integers(0, 1 << bank_width))}
            for name, value in clear.items():
                ctx.set(getattr(dut.clear, name), value)
            bank_data = [int(rng.integers(-128, 128)) for _ in range(lanes)]
            for bank in range(lanes):
                ctx.set(dut.banks[bank].rd_data, bank_data[bank])
            host_banks.append(host_addr % lanes)

            for bank in range(lanes):
                port = dut.banks[bank]
                got = {name: ctx.get(getattr(port, name))
                       for name in ("rd_addr", "wr_en", "wr_addr", "wr_data")}
                if owner == ScratchpadOwner.GS.value:
                    want = {"rd_addr": driven["engine", bank, "rd_addr"],
                            **{name: driven["writer", bank, name]
                               for name in ("wr_en", "wr_addr", "wr_data")}}
                elif owner == ScratchpadOwner.BASIS.value and cfg.basis:
                    want = {name: driven["basis", bank, name] for name in got}
                elif owner == ScratchpadOwner.CLEAR.value:
                    want = {"rd_addr": 0, "wr_en": clear["en"], "wr_addr": clear["addr"],
                            "wr_data": 0}
                else:
                    element = host_addr // lanes
                    want = {"rd_addr": element, "wr_addr": element,
                            "wr_en": host["wr_en"] if host_addr % lanes == bank else 0,
                            "wr_data": host["wr_data"]}
                assert got == want, (owner, bank)
                for client in ("engine", "basis"):
                    if client in clients:
                        assert ctx.get(getattr(dut, client)[bank].rd_data) == bank_data[bank]
            if len(host_banks) > HOST_READ_LATENCY:
                assert ctx.get(dut.host.rd_data) == \
                    bank_data[host_banks[-1 - HOST_READ_LATENCY]]
            await ctx.tick()

    run_sim(dut, bench, name=f"arbiter_{int(basis)}")
