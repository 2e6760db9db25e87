"""Bad input to the commands is one line ``gsaccel CMD: error: ...`` and exit 1, never a
traceback: missing files and folders, directories given as files, arrays of strings, empty
arrays, NaN and infinity, uint64 beyond int64, and models with non-finite weights."""

import json
import re
import struct
import zlib

import numpy as np
import pytest

from gsaccel.sw.cli.main import main
from gsaccel.sw.format import GSMatrix


def _error(capsys, argv):
    """Run the command; it must exit 1 with one error line, which is returned."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"gsaccel {argv[0]}: error: "), err[0]
    return err[0]


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "w.npy", np.array([[1, 0], [0, -2]]))
    np.save(tmp_path / "strings.npy", np.array([["1", "2"], ["4", "8"]]))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4)))
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [0.0, 2.0]]))
    np.save(tmp_path / "inf.npy", np.array([[1.0, -np.inf]]))
    np.save(tmp_path / "big.npy", np.array([[2**64 - 1, 1]], dtype=np.uint64))
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    np.savez(tmp_path / "archive.npz", w=np.ones((2, 2)))
    (tmp_path / "junk.npy").write_bytes(b"not an array at all, nor a GS file, " * 4)
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000,), }"
    header = header.ljust(117) + "\n"            # a header asking for 745 GiB, 64 bytes after
    (tmp_path / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                                        + header.encode() + bytes(64))
    (tmp_path / "badheader.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8',\n")
    np.save(tmp_path / "complex.npy", np.ones((2, 2), dtype=complex))
    np.save(tmp_path / "order.npy", np.array([1e300, 0.0]))
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    GSMatrix.from_dense(np.array([[1, 0], [0, -2]]), "unstructured", 2).save(tmp_path / "w.gsf")
    return tmp_path


@pytest.mark.parametrize("weights, message", [
    ("missing.npy", r"missing\.npy: no such weights file$"),
    ("folder", r"folder: is a directory, not a weights file$"),
    ("strings.npy", r"strings\.npy: weights must be an array of numbers, not dtype <U1$"),
    ("empty.npy", r"empty\.npy: weights is empty \(shape \(0, 4\)\)$"),
    ("nan.npy", r"nan\.npy: weights holds 1 NaN or infinite values, the first nan at "
                r"\(0, 1\)$"),
    ("inf.npy", r"inf\.npy: weights holds 1 NaN or infinite values, the first -inf"),
    ("big.npy", r"big\.npy: weights holds 18446744073709551615 at \(0, 0\), beyond the "
                r"int64 range$"),
    ("cube.npy", r"Weights must be a non-empty 2-D matrix, not shape \(2, 2, 2\)$"),
    ("archive.npz", r"archive\.npz: a \.npz archive, not a \.npy array"),
    ("junk.npy", r"junk\.npy: not a \.npy array"),
    ("huge.npy", r"huge\.npy: truncated or padded: its \.npy header promises 800000000000 "
                 r"bytes of data \(float64 \(100000000000,\)\), the file holds 64$"),
    ("badheader.npy", r"badheader\.npy: not a \.npy array \("),
    ("complex.npy", r"complex\.npy: weights must be an array of numbers, not dtype "
                    r"complex128$"),
])
def test_pack_bad_weights(files, capsys, weights, message):
    line = _error(capsys, ["pack", "--weights", str(files / weights), "--lanes", "2",
                           "-o", str(files / "out.gsf")])
    assert re.search(message, line), line


def test_pack_bad_row_order(files, capsys):
    line = _error(capsys, ["pack", "--weights", str(files / "w.npy"), "--lanes", "2",
                           "--pattern", "gs-scatter", "--row-order", str(files / "order.npy"),
                           "-o", str(files / "o.gsf")])
    assert re.search(r"Row order must be a permutation of the 2 rows$", line), line


@pytest.mark.parametrize("command, output, message", [
    ("pack", "folder", r"folder: is a directory; give a file name for the packed matrix$"),
    ("pack", "no/such/dir/w.gsf", r"no such folder 'no/such/dir' for the packed matrix$"),
    ("pack", "afile/w.gsf", r"no such folder '.*afile' for the packed matrix$"),
    ("unpack", "folder", r"folder: is a directory; give a file name for the dense matrix$"),
    ("unpack", "no/such/dir/w.npy", r"no such folder 'no/such/dir' for the dense matrix$"),
    ("verilog", "folder", r"folder: is a directory; give a file name for the Verilog$"),
    ("verilog", "no/such/dir/core.v", r"no such folder 'no/such/dir' for the Verilog$"),
])
def test_bad_outputs(files, capsys, monkeypatch, command, output, message):
    monkeypatch.chdir(files)
    argv = {"pack": ["pack", "--weights", "w.npy", "--lanes", "2", "-o", output],
            "unpack": ["unpack", "w.gsf", "-o", output],
            "verilog": ["verilog", "--lanes", "2", "--depth", "16", "--block", "crc",
                        "-o", output]}[command]
    line = _error(capsys, argv)
    assert re.search(message, line), line


@pytest.mark.parametrize("command", ["unpack", "inspect"])
@pytest.mark.parametrize("source, message", [
    ("folder", r"folder: is a directory, not a"),
    ("missing.gsf", r"missing\.gsf: no such file$"),
    ("junk.npy", r"junk\.npy: not a GS file"),
])
def test_bad_gsf_inputs(files, capsys, command, source, message):
    argv = [command, str(files / source)] + (["-o", str(files / "o.npy")]
                                              if command == "unpack" else [])
    line = _error(capsys, argv)
    assert re.search(message, line), line


def test_inspect_json_is_standard_json(files, capsys):
    """An all-zero matrix has no nonzero to divide by: null, not Infinity."""
    GSMatrix.from_dense(np.zeros((2, 4), dtype=np.int64), "unstructured", 2).save(
        files / "zero.gsf")
    assert main(["inspect", str(files / "zero.gsf"), "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    stats = json.loads(out, parse_constant=refuse)
    assert stats["nnz"] == 0 and stats["bytes_per_nonzero"] is None


def test_prune_bad_paths(files, capsys):
    line = _error(capsys, ["prune", str(files / "folder"), "--pattern", "gs-gather",
                           "--sparsity", "0.5", "-o", str(files / "p.pt")])
    assert re.search(r"folder: is a directory, not a model file$", line), line
    line = _error(capsys, ["prune", str(files / "missing.pt"), "--pattern", "gs-gather",
                           "--sparsity", "0.5", "-o", str(files / "p.pt")])
    assert re.search(r"missing\.pt: no such model file$", line), line


# Commands on torch models ---------------------------------------------------------------------

@pytest.fixture
def model_files(files):
    torch = pytest.importorskip("torch")
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    torch.save(model, files / "m.pt")
    with torch.no_grad():
        model[1].weight[2, 1] = float("nan")
    torch.save(model, files / "nan.pt")
    with torch.no_grad():
        model[1].weight[2, 1] = float("inf")
    torch.save(model, files / "inf.pt")
    rng = np.random.default_rng(0)
    np.save(files / "x.npy", rng.normal(size=(8, 4)))
    np.save(files / "xnan.npy", np.full((8, 4), np.nan))
    np.save(files / "xempty.npy", np.zeros((0, 4)))
    np.save(files / "xstr.npy", np.full((8, 4), "a"))
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        bn[1].running_var[5] = -1.0
    torch.save(bn, files / "bn.pt")
    return files


def test_prune_to_a_directory_or_under_a_file(model_files, capsys):
    base = ["prune", str(model_files / "m.pt"), "--pattern", "gs-gather", "--sparsity", "0.5",
            "--lanes", "4", "-o"]
    line = _error(capsys, base + [str(model_files / "folder")])
    assert re.search(r"folder: is a directory; give a file name for the pruned model$",
                     line), line
    line = _error(capsys, base + [str(model_files / "afile" / "p.pt")])
    assert re.search(r"p\.pt: cannot write the pruned model: ", line), line


def test_pack_a_model_into_a_file(model_files, capsys):
    line = _error(capsys, ["pack", str(model_files / "m.pt"), "--lanes", "4", "-o",
                           str(model_files / "afile")])
    assert re.search(r"afile: is a file; a model packs into a folder of \.gsf files$",
                     line), line


@pytest.mark.parametrize("model, example, message", [
    ("nan.pt", "x.npy", r"module '1' \(nn\.Linear\) at node '_1' has 1 non-finite weights "
                        r"\(the first nan at \[2, 1\]\)"),
    ("inf.pt", "x.npy", r"has 1 non-finite weights \(the first inf at \[2, 1\]\)"),
    ("bn.pt", "x.npy", r"module '1' \(nn\.BatchNorm1d\) at node '_1' has running_var -1\.0 at "
                       r"channel 5: running_var \+ eps must be positive to fold it$"),
    ("m.pt", "xnan.npy", r"xnan\.npy: example input holds 32 NaN or infinite values"),
    ("m.pt", "xempty.npy", r"xempty\.npy: example input is empty"),
    ("m.pt", "xstr.npy", r"xstr\.npy: example input must be an array of numbers"),
    ("m.pt", "folder", r"folder: is a directory, not a example input file"),
])
def test_compile_bad_models_and_examples(model_files, capsys, model, example, message):
    line = _error(capsys, ["compile", str(model_files / model), "--example",
                           str(model_files / example), "--lanes", "4", "-o",
                           str(model_files / "m.gsp")])
    assert re.search(message, line), line


def test_run_bad_inputs_and_programs(model_files, capsys):
    assert main(["compile", str(model_files / "m.pt"), "--example", str(model_files / "x.npy"),
                 "--lanes", "4", "-o", str(model_files / "m.gsp")]) == 0
    capsys.readouterr()
    for inputs, message in (("xnan.npy", r"input holds 32 NaN or infinite values"),
                            ("xempty.npy", r"input is empty"),
                            ("xstr.npy", r"input must be an array of numbers")):
        line = _error(capsys, ["run", str(model_files / "m.gsp"), "--input",
                               str(model_files / inputs)])
        assert re.search(message, line), line
    for program, message in (("folder", r"is a directory, not a program file$"),
                             ("w.gsf", r"not a gsaccel program")):
        line = _error(capsys, ["run", str(model_files / program), "--input",
                               str(model_files / "x.npy")])
        assert re.search(message, line), line
    # A program whose header says ReLU "no": refused, not run with ReLU on.
    data = (model_files / "m.gsp").read_bytes()
    hlen = struct.unpack_from("<I", data, 6)[0]
    header = json.loads(data[10:10 + hlen])
    next(layer for layer in header["layers"] if layer["kind"] == "gs")["relu"] = "no"
    text = json.dumps(header, sort_keys=True).encode()
    body = data[:6] + struct.pack("<I", len(text)) + text + data[10 + hlen:-4]
    (model_files / "bad.gsp").write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    line = _error(capsys, ["run", str(model_files / "bad.gsp"), "--input",
                           str(model_files / "x.npy")])
    assert re.search(r"layers\[\d+\]\.relu: must be true or false, not \"no\"$", line), line


def test_pack_takes_fractional_powers_of_two(tmp_path, capsys):
    """The issue's case: exact signed powers of two below 1 pack (an exponent bias) and
    unpack to the same floats; a value that is no power of two is still refused."""
    from gsaccel.sw.cli.main import main
    weights = np.array([[0.25, 0, -0.125, 0], [0, 0.5, 0, 1.0]])
    np.save(tmp_path / "w.npy", weights)
    assert main(["pack", "--weights", str(tmp_path / "w.npy"), "--encoding", "pow2", "--lanes",
                 "2", "-o", str(tmp_path / "w.gsf")]) == 0
    assert main(["inspect", str(tmp_path / "w.gsf")]) == 0
    assert "pow2, exponent bias -3 (weights = codes · 2**-3)" in capsys.readouterr().out
    assert main(["unpack", str(tmp_path / "w.gsf"), "-o", str(tmp_path / "back.npy")]) == 0
    assert "2x4 float64 (pow2 exponent bias -3)" in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "back.npy"), weights)
    np.save(tmp_path / "bad.npy", np.array([[0.25, 0.3]]))
    line = _error(capsys, ["pack", "--weights", str(tmp_path / "bad.npy"), "--lanes", "2",
                           "-o", str(tmp_path / "bad.gsf")])
    assert re.search(r"Weight 0.3 at \(0, 1\) is not a signed power of two 2\*\*k or zero; "
                     r"use --encoding int8 or quantise it first$", line), line
