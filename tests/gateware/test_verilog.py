# amaranth: UnusedElaboratable=no
"""``gsaccel verilog``: every block converts, and the core's Verilog lints clean."""

import re
import subprocess

import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.sw.cli.main import main
from gsaccel.hw.export import BLOCKS, block_component
from gsaccel.sw.errors import GsaccelError

#: Verilator -Wall warnings that Amaranth's Verilog (Yosys write_verilog) triggers by
#: construction: unused bits of internal nets, operand widths it leaves to the Verilog
#: rules, `initial`-style register initialisers, case statements without a default, and
#: every submodule in the one file (named ``top.child$N``). docs/protocol.md lists them.
AMARANTH_INHERENT_WARNINGS = {"UNUSEDSIGNAL", "WIDTHEXPAND", "WIDTHTRUNC", "PROCASSINIT",
                              "CASEINCOMPLETE", "DECLFILENAME"}


def test_cli_writes_the_core(tmp_path, capsys):
    out = tmp_path / "core.v"
    assert main(["verilog", "--lanes", "4", "--encoding", "int8", "--depth", "16",
                 "-o", str(out)]) == 0
    text = out.read_text()
    assert "module gsaccel_core(" in text
    assert re.search(r"input \[7:0\] i_stream__payload;", text)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_every_block_converts(block):
    from amaranth.back import verilog
    text = verilog.convert(block_component(block, CoreConfig(lanes=4, bank_depth=8)),
                           name=f"gsaccel_{block}", emit_src=False)
    assert f"module gsaccel_{block}(" in text


def test_bad_block_and_config(capsys):
    with pytest.raises(ValueError, match=r"^Block must be one of .*, not 'alu'$"):
        block_component("alu", CoreConfig())
    assert main(["verilog", "--lanes", "3", "-o", "/dev/null"]) == 1
    assert "Lane count must be 2, 4, 8 or 16, not 3" in capsys.readouterr().err


@pytest.mark.verilator
@pytest.mark.parametrize("lanes,encoding", [(8, "pow2"), (4, "int8")])
def test_core_lints_clean(tmp_path, lanes, encoding):
    from gsaccel.sim.build import require_verilator
    from gsaccel.sim.toolchain import verilator_env
    require_verilator()
    source = tmp_path / "gsaccel_core.v"
    assert main(["verilog", "--lanes", str(lanes), "--encoding", encoding, "--depth", "16",
                 "-o", str(source)]) == 0
    result = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module",
                             "gsaccel_core", str(source)], env=verilator_env(),
                            capture_output=True, text=True, timeout=600)
    kinds = set(re.findall(r"%Warning-([A-Z0-9_]+)", result.stderr))
    errors = [line for line in result.stderr.splitlines() if line.startswith("%Error")
              and "Exiting due to" not in line]
    assert not errors, "\n".join(errors[:20])
    assert kinds <= AMARANTH_INHERENT_WARNINGS, result.stderr[:4000]
