"""The Verilator build cache (gsaccel.sim.build) without compiling anything: where it lives,
what its key covers, its stamp and its lock, and that no entry point writes into the source
tree. tests/cocotb/test_verilate.py builds a tiny design for real."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gsaccel.sim import build
from gsaccel.sim.build import cache_root, ensure_built, prepare_build
from gsaccel.sw.errors import GsaccelError, ToolNotFound

ROOT = Path(__file__).resolve().parents[2]

TINY = "module tiny(input wire a, output wire b);\n    assign b = ~a;\nendmodule\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSACCEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GSACCEL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "gsaccel"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_root() == tmp_path / "home" / ".cache" / "gsaccel"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "gsaccel"
    monkeypatch.setenv("GSACCEL_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GSACCEL_CACHE", "rel")
    assert cache_root() == tmp_path / "rel"


def test_key_covers_every_input(cache):
    base = dict(sources={"harness.cpp": "int main() {}\n"}, flags=["-O3"], executable="obj/x")
    folder = prepare_build("tiny", TINY, **base)
    assert folder.parent == cache / "verilator" and folder.name.startswith("tiny-")
    assert (folder / "tiny.v").read_text() == TINY
    assert (folder / "harness.cpp").read_text() == "int main() {}\n"
    assert json.loads((folder / "inputs.json").read_text())["flags"] == ["-O3"]
    assert prepare_build("tiny", TINY, **base) == folder
    changed = [prepare_build("tiny", TINY + "\n", **base),
               prepare_build("tiny", TINY, **{**base, "sources": {"harness.cpp": "//\n"}}),
               prepare_build("tiny", TINY, **{**base, "flags": ["-O2"]}),
               prepare_build("tiny", TINY, **base, extra=["cocotb 2"])]
    assert len({folder, *changed}) == 5


def test_key_covers_the_toolchain(cache, monkeypatch):
    folder = prepare_build("tiny", TINY)
    monkeypatch.setattr(build, "_toolchain_id", lambda: "verilator 9.999; c++ 99")
    assert prepare_build("tiny", TINY) != folder


def test_bad_names_are_refused(cache):
    with pytest.raises(ValueError, match=r"^Build name must be an identifier, not 'a-b'$"):
        prepare_build("a-b", TINY)
    with pytest.raises(ValueError, match=r"^Source must be a plain file name other than "
                                         r"tiny.v, not '../x.cpp'$"):
        prepare_build("tiny", TINY, sources={"../x.cpp": ""})


def _counting(calls, executable=None):
    def compile(folder):
        calls.append(folder)
        if executable:
            (folder / executable).parent.mkdir(exist_ok=True)
            (folder / executable).write_text("")
    return compile


def test_stamp_is_honoured(cache, capfd):
    folder = prepare_build("tiny", TINY, executable="obj/tiny_sim")
    calls = []
    assert ensure_built(folder, _counting(calls, "obj/tiny_sim"), what="tiny")
    assert capfd.readouterr().err == "gsaccel: building tiny with Verilator (first use; a " \
                                     "minute or more)…\n"
    assert not ensure_built(folder, _counting(calls, "obj/tiny_sim"), what="tiny")
    assert len(calls) == 1 and capfd.readouterr().err == ""
    assert json.loads((folder / ".built").read_text())["key"] == folder.name.split("-")[1]
    # A stamp of another key, or a stamp without its executable, is no stamp.
    (folder / ".built").write_text(json.dumps({"key": "0" * 16, "seconds": 1}))
    assert ensure_built(folder, _counting(calls, "obj/tiny_sim"), what="tiny")
    (folder / "obj" / "tiny_sim").unlink()
    assert ensure_built(folder, _counting(calls, "obj/tiny_sim"), what="tiny")
    assert len(calls) == 3


def test_a_failed_build_leaves_no_stamp(cache):
    folder = prepare_build("tiny", TINY, executable="obj/tiny_sim")

    def fail(folder):
        raise GsaccelError("broken")

    with pytest.raises(GsaccelError, match=r"^broken$"):
        ensure_built(folder, fail, what="tiny")
    with pytest.raises(GsaccelError, match=r"^The Verilator build of tiny made no obj/tiny_sim"):
        ensure_built(folder, _counting([]), what="tiny")
    assert not (folder / ".built").exists()
    assert ensure_built(folder, _counting([], "obj/tiny_sim"), what="tiny")


_WORKER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from gsaccel.sim.build import ensure_built, prepare_build
    role, tiny, log = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    folder = prepare_build("tiny", tiny)

    def compile(folder):
        with open(log, "a") as f:
            f.write(role + "\\n")
        (log.parent / "started").touch()
        deadline = time.monotonic() + 60
        while not (log.parent / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    (log.parent / f"{role}-ready").touch()
    print(ensure_built(folder, compile, what="tiny", timeout=120))
""")


def _wait_for(path, timeout=60):
    import time
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_two_processes_build_one_folder_once(cache, tmp_path):
    """The second process waits on the lock while the first builds, then finds the stamp."""
    log = tmp_path / "builds.txt"
    command = [sys.executable, "-c", _WORKER]
    env = {**os.environ, "GSACCEL_CACHE": str(cache)}
    first = subprocess.Popen(command + ["first", TINY, str(log)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "started")                  # the first holds the lock
        second = subprocess.Popen(command + ["second", TINY, str(log)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            _wait_for(tmp_path / "second-ready")
            import time
            time.sleep(0.5)                              # let it reach the lock
            assert second.poll() is None                 # ... and wait there
            (tmp_path / "go").touch()
            assert second.communicate(timeout=60)[0] == "False\n"
        finally:
            second.kill()
        assert first.communicate(timeout=60)[0] == "True\n"
    finally:
        first.kill()
    assert log.read_text() == "first\n"


def test_missing_compiler_is_a_tool_not_found(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "verilator_root", lambda: tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFound, match=r"^Building a Verilator simulation needs a C\+\+ "
                                           r"compiler \(c\+\+\) and make, and c\+\+ and make "
                                           r"is not on PATH; install build-essential"):
        build.require_build_tools()


def test_a_missing_compiler_stops_the_native_build_before_it_converts(cache, monkeypatch,
                                                                      tmp_path):
    from gsaccel.hw.config import CoreConfig
    from gsaccel.sim import native

    def convert(cfg):
        raise AssertionError("converted the core although it cannot be built")

    monkeypatch.setattr(native, "_core_verilog", convert)
    monkeypatch.setattr(build, "verilator_root", lambda: tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFound, match=r"C\+\+ compiler"):
        native.build_native(CoreConfig(lanes=4, bank_depth=16))


_AUDIT = textwrap.dedent("""\
    import os, sys
    from pathlib import Path
    root = Path(sys.argv[1])
    writes = []

    def under_root(path):
        try:
            return Path(os.fsdecode(path)).absolute().is_relative_to(root)
        except (TypeError, ValueError):
            return False

    def hook(event, args):
        if event == "open" and args[1] is not None and any(c in str(args[1]) for c in "wax+"):
            paths = [args[0]]
        elif event == "open" and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR
                                                                         | os.O_CREAT):
            paths = [args[0]]
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.symlink", "os.truncate"):
            paths = [args[0]]
        elif event in ("os.rename", "os.link"):
            paths = list(args[:2])
        elif event == "subprocess.Popen":
            paths = [args[2] or os.getcwd()]             # where a child process would write
        else:
            return
        writes.extend(str(p) for p in paths if isinstance(p, (str, bytes, os.PathLike))
                      and under_root(p))

    sys.addaudithook(hook)
    from gsaccel.boards.ptysim import build_pty_sim
    from gsaccel.hw.config import CoreConfig
    from gsaccel.sim import build
    from gsaccel.sim import native
    from gsaccel.hw.crc import Crc32

    conversions = []
    convert = native._core_verilog
    native._core_verilog = lambda cfg: conversions.append(cfg) or convert(cfg)

    def fake_verilator(folder, command, timeout):       # no compiler needed
        target = folder / "obj" / command[command.index("-o") + 1]
        target.parent.mkdir(exist_ok=True)
        target.write_text("")

    build._run_verilator = fake_verilator
    build.require_build_tools = lambda: None
    build.verilator_root = lambda: Path("/nonexistent/verilator")
    cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=256, row_depth=64, layer_depth=4,
                     result_queue=8, max_payload=256)
    paths = [native.build_native(cfg), native.build_native(cfg), build_pty_sim(cfg)]
    folder = build.cached_verilog(Crc32, "crc32")
    build.ensure_built(folder, lambda f: (f / "crc32").write_text(""), what="crc32")
    print("\\n".join(map(str, paths + [folder])))
    print("CONVERSIONS", len(conversions))
    print("WRITES", writes)
""")


def test_nothing_is_written_under_the_source_tree(cache, tmp_path):
    """The native, pty and cocotb entry points write only into GSACCEL_CACHE (an audit hook
    records every file the Python side opens for writing and every child's folder)."""
    result = subprocess.run([sys.executable, "-c", _AUDIT, str(ROOT)], cwd=tmp_path,
                            env={**os.environ, "GSACCEL_CACHE": str(cache),
                                 "PYTHONDONTWRITEBYTECODE": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    *paths, conversions, writes = result.stdout.splitlines()
    assert writes == "WRITES []"
    assert paths[0] == paths[1] and len(set(paths)) == 3
    assert all(Path(path).is_relative_to(cache / "verilator") for path in paths)
    # The second native call found its build through the shortcut: no second conversion.
    assert conversions == "CONVERSIONS 1"
