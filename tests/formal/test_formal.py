"""Formal proofs of the gateware (docs/verification.md), with SymbiYosys and Yices from PyPI.

Every property is proved (``PASS``) on the real design, and shown able to fail: a fault
injected into the design or its model, or an assumption dropped, must give a counterexample
(``FAIL``, a trace from the initial state) within a small bound. ``prove`` is k-induction
(unbounded); ``bmc`` is bounded to ``depth`` cycles from reset. The fast ones run in the
default suite; ``make formal`` runs them all.
"""

import pytest

from formal_command import CommandRejects
from formal_command_streams import command_stream_harness
from formal_engine import ENGINE_CFGS, EngineCredits, EngineGather
from formal_framing import (RECEIVER_CFG, FRAME_OVERHEAD, ReceiverNoWedge, StreamHarness,
                            receiver_stream_harness, transmitter_stream_harness)
from formal_sequencer import sequencer_stream_harness
from gsaccel.hw.uart import UARTReceiver
from gsaccel.sim.formal import run_formal

pytestmark = pytest.mark.formal


def check(harness, tmp_path, name, *, expect, depth, mode="prove", timeout=600):
    # sby's own timeout ends the solver too (status TIMEOUT), on a loaded machine as well.
    result = run_formal(harness, harness.ports, name=name, workdir=tmp_path, mode=mode,
                        depth=depth, timeout=timeout)
    print(result)
    assert result.status == expect, str(result)
    if expect == "FAIL":
        # A real counterexample, from the initial state, naming a failed assertion.
        assert result.failed and list(result.workdir.glob("engine_0/trace*.vcd")), str(result)
    return result


# Every stream obeys valid/ready ----------------------------------------------------------

def test_receiver_stream_rule(tmp_path):
    harness = receiver_stream_harness()
    check(harness, tmp_path, "rx_stream", expect="PASS", depth=6)
    assert harness.produced == ("o_frame",)


def test_receiver_stream_rule_can_fail(tmp_path):
    # A receiver reset while its frame waits drops valid before ready.
    check(receiver_stream_harness(glitch=True), tmp_path, "rx_stream_glitch",
          expect="FAIL", mode="bmc", depth=14)


def test_transmitter_stream_rule(tmp_path):
    harness = transmitter_stream_harness()
    check(harness, tmp_path, "tx_stream", expect="PASS", depth=6)
    assert harness.produced == ("o_stream",)


def test_transmitter_stream_rule_can_fail(tmp_path):
    check(transmitter_stream_harness(glitch=True), tmp_path, "tx_stream_glitch",
          expect="FAIL", mode="bmc", depth=12)


def test_uart_receiver_stream_rule(tmp_path):
    harness = StreamHarness(UARTReceiver(divisor=4))
    check(harness, tmp_path, "uart_rx_stream", expect="PASS", depth=6)
    assert harness.produced == ("o_stream",)


def test_uart_receiver_stream_rule_can_fail(tmp_path):
    check(StreamHarness(UARTReceiver(divisor=4), glitch=True), tmp_path,
          "uart_rx_stream_glitch", expect="FAIL", mode="bmc", depth=60)


def test_command_processor_stream_rule(tmp_path):
    # o_reply and o_data, under the rule on i_frame.
    harness = command_stream_harness()
    check(harness, tmp_path, "cmd_stream", expect="PASS", depth=8)
    assert harness.produced == ("o_reply", "o_data")


def test_command_processor_stream_rule_can_fail(tmp_path):
    check(command_stream_harness(glitch=True), tmp_path, "cmd_stream_glitch", expect="FAIL",
          mode="bmc", depth=14)


def test_sequencer_stream_rule(tmp_path):
    # o_group, and o_row within a layer; every input free.
    harness = sequencer_stream_harness()
    check(harness, tmp_path, "seq_stream", expect="PASS", depth=8)
    assert harness.produced == ("o_group",)


def test_sequencer_withdraws_a_surplus_row_at_a_layers_end(tmp_path):
    # Why o_row is checked within a layer only: with the plain rule there is a trace.
    from gsaccel.hw.sequencer import Sequencer
    from formal_command import COMMAND_CFG
    check(StreamHarness(Sequencer(COMMAND_CFG), exempt=("o_group",)), tmp_path,
          "seq_row_plain", expect="FAIL", mode="bmc", depth=16)


def test_sequencer_stream_rule_can_fail(tmp_path):
    check(sequencer_stream_harness(glitch=True), tmp_path, "seq_stream_glitch",
          expect="FAIL", mode="bmc", depth=12)


# The frame receiver never wedges ----------------------------------------------------------

def test_receiver_never_wedges(tmp_path):
    check(ReceiverNoWedge(), tmp_path, "rx_no_wedge", expect="PASS", depth=6)


def test_receiver_wedge_is_caught(tmp_path):
    # A receiver that can stop advancing while it signals ready (frozen in REPORT, it is
    # not hunting after its frame is taken: 11 cycles from reset at the earliest).
    check(ReceiverNoWedge(stuck=True, invariants=False), tmp_path, "rx_stuck", expect="FAIL",
          mode="bmc", depth=16)


def test_receiver_byte_bound_is_tight(tmp_path):
    # The longest frame (max_payload bytes) takes every byte of the bound: one fewer fails.
    harness = ReceiverNoWedge(bound=FRAME_OVERHEAD + RECEIVER_CFG.max_payload - 1,
                              invariants=False)
    check(harness, tmp_path, "rx_bound_tight", expect="FAIL", mode="bmc",
          depth=FRAME_OVERHEAD + RECEIVER_CFG.max_payload + 2)


# The gather engine: one word per bank, to the right lanes --------------------------------

def test_engine_conflict_free(tmp_path):
    check(EngineGather(ENGINE_CFGS["v4_deep"], check="conflict"), tmp_path,
          "engine_conflict", expect="PASS", depth=5)


def test_engine_conflict_needs_packer_valid_groups(tmp_path):
    check(EngineGather(ENGINE_CFGS["v4_deep"], check="conflict", packer_valid=False),
          tmp_path, "engine_conflict_invalid", expect="FAIL", mode="bmc", depth=6)


def test_engine_gather(tmp_path):
    # k = 4: the expected words' pipeline is as long as the engine's (crossbar_stage).
    check(EngineGather(ENGINE_CFGS["v4_deep"]), tmp_path, "engine_gather", expect="PASS",
          depth=4)


def test_engine_gather_can_fail(tmp_path):
    # A scratchpad whose data comes a cycle early: every lane's word is another address's.
    check(EngineGather(ENGINE_CFGS["v4_deep"], bank_latency=1, invariants=False), tmp_path,
          "engine_gather_latency", expect="FAIL", mode="bmc", depth=6)


def test_engine_sums_only_offered_with_room(tmp_path):
    # o_sums is exempt from the stream rule: its credits keep the consumer from overflowing.
    check(EngineCredits(ENGINE_CFGS["v4_deep"]), tmp_path, "engine_credits", expect="PASS",
          depth=4)


def test_engine_credit_check_can_fail(tmp_path):
    # A consumer with one slot fewer than the engine's credits.
    harness = EngineCredits(ENGINE_CFGS["v4_deep"])
    harness = EngineCredits(ENGINE_CFGS["v4_deep"], capacity=harness.capacity - 1,
                            invariants=False)
    check(harness, tmp_path, "engine_credits_small", expect="FAIL", mode="bmc", depth=16)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["v4_shallow"])
def test_engine_gather_configs(tmp_path, cfg):
    # (V = 8: the induction step did not finish in 7 minutes, with or without the stage
    # invariants; the conflict check below does V = 8.)
    check(EngineGather(ENGINE_CFGS[cfg]), tmp_path, f"engine_gather_{cfg}", expect="PASS",
          depth=4)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["v4_shallow", "v8_deep"])
def test_engine_conflict_configs(tmp_path, cfg):
    check(EngineGather(ENGINE_CFGS[cfg], check="conflict"), tmp_path,
          f"engine_conflict_{cfg}", expect="PASS", depth=5)


# A rejected frame writes no memory --------------------------------------------------------

def test_rejected_frame_writes_nothing(tmp_path):
    check(CommandRejects(), tmp_path, "cmd_rejects", expect="PASS", depth=8)


def test_rejected_frame_check_can_fail(tmp_path):
    # A processor that executes a frame the receiver flagged.
    check(CommandRejects(ignore_flag=True, invariants=False), tmp_path,
          "cmd_rejects_unchecked", expect="FAIL", mode="bmc", depth=30)


def test_internal_wants_exactly_one_signal():
    from amaranth.hdl import Module
    from gsaccel.hw.framing import FrameReceiver
    from gsaccel.sim.formal import elaborated, fsm_state, internal
    fragment = elaborated(FrameReceiver(RECEIVER_CFG))
    assert internal(fragment, "remaining").name == "remaining"
    with pytest.raises(LookupError, match="found 0"):
        internal(fragment, "no_such_register")
    state, states = fsm_state(fragment, "rx")
    assert states["HUNT"] == 0 and set(states) >= {"PAYLOAD", "REPORT", "CRC_3"}
    # Two receivers: which ``remaining`` is meant is ambiguous, so neither is picked.
    m = Module()
    m.submodules.a = FrameReceiver(RECEIVER_CFG)
    m.submodules.b = FrameReceiver(RECEIVER_CFG)
    with pytest.raises(LookupError, match="found 2"):
        internal(elaborated(m), "remaining")


def test_run_formal_checks_its_arguments(tmp_path):
    harness = ReceiverNoWedge()
    with pytest.raises(ValueError, match="identifier"):
        run_formal(harness, harness.ports, name="no-dash", workdir=tmp_path)
    with pytest.raises(ValueError, match="mode"):
        run_formal(harness, harness.ports, name="x", workdir=tmp_path, mode="live")
    with pytest.raises(ValueError, match="solver"):
        run_formal(harness, harness.ports, name="x", workdir=tmp_path, solver="z3")
