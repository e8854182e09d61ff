"""The `bceloss` command: every format and option against the library's functions on the same
arrays, streaming equal to the in-memory sum to the last bit, a dask.distributed run, and a
one-line error with exit status 2 for every kind of bad input."""

from __future__ import annotations

import importlib.resources
import importlib.util
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import bceloss
from bceloss import _summation
from bceloss.cli import main, parser
from bceloss.cli.eval_command import run_eval
from bceloss.cli.progress import Progress
from bceloss.compat import mindspore, paddle

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "bceloss" / "data"
ROWS, LABELS = 20_011, 3  # 60,033 elements: 7 full summation blocks and a partial one


def run(argv, capsys):
    """The command run in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(argv, capsys) -> dict:
    code, out, err = run([*argv, "--json"], capsys)
    assert (code, err) == (0, ""), err
    return json.loads(out)


@pytest.fixture(scope="module")
def data():
    """Logits with large magnitudes, soft labels, per-row weights and per-label pos_weights."""
    rng = np.random.default_rng(6)
    x = rng.normal(scale=4.0, size=(ROWS, LABELS))
    x[::97] *= 50.0
    y = rng.random((ROWS, LABELS))
    y[rng.random((ROWS, LABELS)) < 0.5] = 1.0
    x[::1013], y[::1013] = 1e15, 0.0  # huge losses among small ones: the grouping of a sum shows
    return {
        "x": x,
        "y": y,
        "p": 1 / (1 + np.exp(-x)),
        "w": rng.random(ROWS) + 0.5,
        "pw": np.array([0.5, 2.0, 3.0]),
    }


def write(tmp_path: Path, kind: str, name: str, a: np.ndarray) -> str:
    """Save `a` as a file of `kind` and return the command's source naming all its columns."""
    a2 = a if a.ndim == 2 else a.reshape(len(a), 1)
    cols = ",".join(f"{name}{j}" for j in range(a2.shape[1]))
    path = tmp_path / f"{name}.{kind}"
    if kind == "npy":
        np.save(path, a)
        return str(path)
    if kind == "npz":
        np.savez(path, other=np.zeros(2), **{name: a})
        return f"{path}:{name}"
    if kind == "csv":
        np.savetxt(path, a2, fmt="%.17g", delimiter=",", header=cols, comments="")
        return f"{path}:{cols}"
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    table = pa.table({f"{name}{j}": a2[:, j] for j in range(a2.shape[1])})
    pq.write_table(table, path, row_group_size=7_000)  # row groups that cut chunks
    return f"{path}:{cols}"


def same(a, b) -> bool:
    """Equal to the last bit (NaN equal to NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", ["npy", "npz", "csv", "parquet"])
def test_each_format_matches_the_library(kind, data, tmp_path, capsys):
    x, y, w, pw = data["x"], data["y"], data["w"], data["pw"]
    srcs = [write(tmp_path, kind, n, data[n]) for n in ("x", "y", "w", "pw")]
    argv = ["eval", srcs[0], srcs[1], "--weight", srcs[2], "--pos-weight", srcs[3]]
    got = run_json([*argv, "--per-label", "--chunk-size", 5000], capsys)
    f = bceloss.binary_cross_entropy_with_logits
    assert same(got["loss"], f(x, y, w[:, None], pos_weight=pw))
    assert got["elements"] == x.size
    for j in range(LABELS):
        col = np.ascontiguousarray
        want = f(col(x[:, j]), col(y[:, j]), w, pos_weight=pw[j : j + 1])
        assert same(got["per_label"][j], want), j


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize(
    ("flavor", "module", "dtype"),
    [
        ("torch", bceloss, "float64"),
        ("mindspore", mindspore, "float32"),
        ("paddle", paddle, "float64"),
    ],
)
def test_options_match_the_library(reduction, probs, flavor, module, dtype, data, tmp_path, capsys):
    pred = data["p"] if probs else data["x"]
    x, y, w = (a.astype(dtype) for a in (pred, data["y"], data["w"]))
    srcs = [write(tmp_path, "npy", n, a) for n, a in (("x", x), ("y", y), ("w", w))]
    argv = ["eval", *srcs[:2], "--weight", srcs[2], "--reduction", reduction, "--flavor", flavor]
    argv += ["--probs"] if probs else []
    got = run_json(argv, capsys)
    if probs:
        want = module.binary_cross_entropy(x, y, w[:, None], reduction)
    else:
        want = module.binary_cross_entropy_with_logits(x, y, w[:, None], reduction)
    assert got["dtype"] == dtype
    assert same(got["loss"], want)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtype_option_casts_every_input(dtype, data, tmp_path, capsys):
    srcs = [write(tmp_path, "npy", n, data[n]) for n in ("x", "y")]
    got = run_json(["eval", *srcs, "--dtype", dtype, "--chunk-size", 1], capsys)
    t = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    with np.errstate(over="ignore"):  # 1e15 is inf in float16
        want = bceloss.binary_cross_entropy_with_logits(data["x"].astype(t), data["y"].astype(t))
    assert got["dtype"] == dtype
    assert same(got["loss"], want)


@pytest.mark.parametrize("chunk", [1, 2731, 8192, 20_000, 10**6])
@pytest.mark.parametrize(("width", "dtype"), [(3, "float64"), (4, "float64"), (1, "float32")])
def test_streaming_equals_in_memory_to_the_last_bit(chunk, width, dtype, data, tmp_path, capsys):
    rows = data["x"].size // width
    x = data["x"].reshape(-1)[: rows * width].reshape(rows, width).squeeze().astype(dtype)
    y = data["y"].reshape(-1)[: rows * width].reshape(rows, width).squeeze().astype(dtype)
    srcs = [write(tmp_path, "npy", n, a) for n, a in (("x", x), ("y", y))]
    got = run_json(["eval", *srcs, "--reduction", "sum", "--chunk-size", chunk], capsys)
    assert same(got["loss"], bceloss.binary_cross_entropy_with_logits(x, y, reduction="sum"))
    # the same total as fsum of the library's blocks of the whole elementwise loss
    whole = bceloss.binary_cross_entropy_with_logits(x, y, reduction="none")
    if dtype == "float64":
        assert same(got["loss"], _summation.total(whole))


def test_chunk_sums_would_differ_without_block_alignment(data):
    """Why chunks follow the blocks: summing misaligned chunks changes the last bits."""
    l = bceloss.binary_cross_entropy_with_logits(data["x"], data["y"], reduction="none").ravel()
    aligned = _summation.total(l)
    misaligned = [
        _summation.combine(
            np.concatenate([_summation.block_sums(l[a : a + n]) for a in range(0, l.size, n)])
        )
        for n in (1000, 3001, 5000, 10007)
    ]
    assert any(m != aligned for m in misaligned)


@pytest.mark.parametrize(
    ("weight", "shape"),
    [("per_element", (ROWS, LABELS)), ("per_label_row", (1, LABELS)), ("scalar", (1,))],
)
def test_weight_and_pos_weight_shapes(weight, shape, data, tmp_path, capsys):
    rng = np.random.default_rng(1)
    w = rng.random(shape) + 0.5
    pw = rng.random((ROWS, LABELS)) * 3  # a per-element pos_weight, streamed with the rows
    srcs = [write(tmp_path, "csv", n, a) for n, a in (("x", data["x"]), ("y", data["y"]))]
    srcs += [write(tmp_path, "npy", n, a) for n, a in (("w", w), ("pw", pw))]
    argv = ["eval", *srcs[:2], "--weight", srcs[2], "--pos-weight", srcs[3], "--chunk-size", 999]
    got = run_json(argv, capsys)
    want = bceloss.binary_cross_entropy_with_logits(
        data["x"], data["y"], w.reshape(-1) if len(w) == 1 else w, pos_weight=pw
    )
    assert same(got["loss"], want)


def test_plain_output_prints_the_loss_then_each_label(data, tmp_path, capsys):
    srcs = [write(tmp_path, "csv", n, data[n]) for n in ("x", "y")]
    code, out, err = run(["eval", *srcs, "--per-label"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    x, y = data["x"], data["y"]
    assert lines[0] == str(bceloss.binary_cross_entropy_with_logits(x, y)[()])
    for j, line in enumerate(lines[1:]):
        name, value = line.split()
        assert name == f"x{j}"
        assert float(value) == float(bceloss.binary_cross_entropy_with_logits(x[:, j], y[:, j]))
    assert len(lines) == 1 + LABELS


def test_empty_files_give_nan_mean_and_zero_sum(tmp_path, capsys):
    srcs = [write(tmp_path, "npy", n, np.empty((0, 2))) for n in ("x", "y")]
    assert np.isnan(run_json(["eval", *srcs], capsys)["loss"])
    got = run_json(["eval", *srcs, "--reduction", "sum"], capsys)
    assert (got["loss"], got["elements"]) == (0.0, 0)


@pytest.mark.slow  # 4 s: starts a local Dask cluster
def test_distributed_run_equals_the_in_process_run(data, tmp_path, capsys):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    srcs = [write(tmp_path, "csv", n, data[n]) for n in ("x", "y")]
    srcs.append(write(tmp_path, "npy", "w", data["w"]))
    argv = ["eval", *srcs[:2], "--weight", srcs[2], "--per-label", "--chunk-size", 8192]
    local = run_json(argv, capsys)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        remote = run_json([*argv, "--scheduler", cluster.scheduler_address], capsys)
        code, _, err = run(
            ["eval", srcs[0], srcs[1], "--probs", "--scheduler", cluster.scheduler_address], capsys
        )
    assert remote == local
    assert same(
        remote["loss"],
        bceloss.binary_cross_entropy_with_logits(data["x"], data["y"], data["w"][:, None]),
    )
    # an error on a worker reaches the user as the same one line
    assert code == 2
    assert err.startswith("bceloss eval: input must hold probabilities in [0, 1]")


def _bad_inputs(tmp: Path, data) -> dict[str, tuple[list[str], str]]:
    x = write(tmp, "npy", "x", data["x"])
    y = write(tmp, "npy", "y", data["y"])
    csv = write(tmp, "csv", "c", data["x"])
    (tmp / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    (tmp / "short.csv").write_text("a,b\n1,2\n3\n")
    np.save(tmp / "words.npy", np.array(["a", "b"]))
    np.save(tmp / "cube.npy", np.zeros((2, 2, 2)))
    np.save(tmp / "y5.npy", np.zeros(5))
    np.save(tmp / "y2.npy", np.zeros((ROWS, 2)))
    (tmp / "x.txt").write_text("1\n")
    (tmp / "empty.csv").write_text("")
    outside = data["p"].copy()
    outside[12_345, 1] = 1.5
    np.save(tmp / "outside.npy", outside)
    return {
        "missing file": ([str(tmp / "nope.npy"), y], "no such file"),
        "unknown suffix": ([str(tmp / "x.txt"), y], "unknown file type '.txt'"),
        "unknown column": ([csv.rsplit(":", 1)[0] + ":c0,zz", y], "no column 'zz'"),
        "unknown npz array": ([write(tmp, "npz", "z", data["x"]) + "x", y], "no array 'zx'"),
        "rows mismatch": ([x, str(tmp / "y5.npy")], "have 5 rows; predictions have"),
        "columns mismatch": ([x, str(tmp / "y2.npy")], "have 2 columns; predictions have 3"),
        "weight rows": ([x, y, "--weight", str(tmp / "y5.npy")], "weight y5.npy has 5 rows"),
        "non-numeric csv": (
            [f"{tmp / 'bad.csv'}:a,b", f"{tmp / 'bad.csv'}:a,b"],
            "non-numeric value 'oops'",
        ),
        "short csv line": (
            [f"{tmp / 'short.csv'}:a,b", f"{tmp / 'short.csv'}:a,b"],
            "line 3 has 1 fields",
        ),
        "non-numeric npy": ([str(tmp / "words.npy"), y], "holds non-numeric values"),
        "3-D array": ([str(tmp / "cube.npy"), y], "expected a 1-D or 2-D array"),
        "empty csv": ([str(tmp / "empty.csv"), y], "the file is empty"),
        "outside [0, 1]": (
            [str(tmp / "outside.npy"), y, "--probs"],
            "input must hold probabilities in [0, 1]; got values from 1.5 to 1.5 (rows ",
        ),
        "flavour dtype": ([x, y, "--flavor", "mindspore"], "--dtype converts"),
        "pos_weight with probs": (
            [x, y, "--probs", "--pos-weight", y],
            "--pos-weight needs logits",
        ),
    }


BAD = [
    "missing file", "unknown suffix", "unknown column", "unknown npz array", "rows mismatch",
    "columns mismatch", "weight rows", "non-numeric csv", "short csv line", "non-numeric npy",
    "3-D array", "empty csv", "outside [0, 1]", "flavour dtype", "pos_weight with probs",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_status_2(case, data, tmp_path, capsys):
    argv, expected = _bad_inputs(tmp_path, data)[case]
    code, out, err = run(["eval", *argv], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("bceloss eval: ")
    assert err.count("\n") == 1
    assert expected in err, err


def test_non_numeric_parquet_column(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    pq.write_table(
        pa.table({"x": [1.0, 2.0], "s": ["a", "b"], "n": [1.0, None]}), tmp_path / "t.parquet"
    )
    for col, expected in (("s", "column 's' holds string, not numbers"), ("n", "missing values")):
        code, _, err = run(
            ["eval", f"{tmp_path / 't.parquet'}:{col}", f"{tmp_path / 't.parquet'}:x"], capsys
        )
        assert code == 2
        assert expected in err


def test_unreachable_scheduler(data, tmp_path, capsys):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srcs = [write(tmp_path, "npy", n, data[n]) for n in ("x", "y")]
    for address, expected in ((f"tcp://127.0.0.1:{port}", "refused"), ("nonsense", "port")):
        code, out, err = run(["eval", *srcs, "--scheduler", address], capsys)
        assert (code, out, err.count("\n")) == (2, "", 1)
        assert err.startswith(f"bceloss eval: cannot reach the Dask scheduler at {address}: ")
        assert expected in err


def test_usage_errors_exit_2(capsys):
    assert run([], capsys)[0] == 2
    assert run(["eval", "a.npy", "b.npy", "--chunk-size", "0"], capsys)[0] == 2
    assert run(["eval", "a.npy"], capsys)[0] == 2
    assert run(["eval", "a.npy", "b.npy", "--reduction", "none"], capsys)[0] == 2


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal_and_never_with_json(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Progress, "DELAY", 0.0)
    monkeypatch.setattr(Progress, "EVERY", 0.0)
    srcs = [write(tmp_path, "npy", n, data[n]) for n in ("x", "y")]
    args = parser.build_parser().parse_args(["eval", *srcs, "--chunk-size", "8192"])
    terminal, out = _Terminal(), io.StringIO()
    assert run_eval(args, out=out, err=terminal) == 0
    assert f"of {ROWS:,} rows" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\033[K")  # erased at the end
    assert out.getvalue().count("\n") == 1  # the loss alone on stdout
    args = parser.build_parser().parse_args(["eval", *srcs, "--chunk-size", "8192", "--json"])
    terminal = _Terminal()
    assert run_eval(args, out=io.StringIO(), err=terminal) == 0
    assert terminal.getvalue() == ""
    pipe = io.StringIO()
    args = parser.build_parser().parse_args(["eval", *srcs, "--chunk-size", "8192"])
    assert run_eval(args, out=io.StringIO(), err=pipe) == 0
    assert pipe.getvalue() == ""


def test_the_sample_files_give_the_library_loss(capsys):
    shipped = importlib.resources.files("bceloss") / "data"  # inside the installed package
    assert (shipped / "breast_cancer.csv").is_file()
    assert (shipped / "breast_cancer_logits.npy").is_file()
    table = np.loadtxt(SAMPLE / "breast_cancer.csv", delimiter=",", skiprows=1)
    logits, probs, labels = table.T
    assert table.shape == (569, 3)
    assert same(np.load(SAMPLE / "breast_cancer_logits.npy"), logits)
    csv = SAMPLE / "breast_cancer.csv"
    code, out, _ = run(["eval", f"{csv}:logit", f"{csv}:malignant"], capsys)
    assert code == 0
    assert out == f"{bceloss.binary_cross_entropy_with_logits(logits, labels)[()]}\n"
    code, out, _ = run(["eval", f"{csv}:probability", f"{csv}:malignant", "--probs"], capsys)
    assert out == f"{bceloss.binary_cross_entropy(probs, labels)[()]}\n"


def test_python_dash_m_runs_the_command():
    csv = SAMPLE / "breast_cancer.csv"
    argv = [sys.executable, "-m", "bceloss", "eval", f"{csv}:logit", f"{csv}:malignant", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    labels, logits = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=(2, 0)).T
    assert same(
        json.loads(done.stdout)["loss"], bceloss.binary_cross_entropy_with_logits(logits, labels)
    )
    bad = [sys.executable, "-m", "bceloss", "eval", f"{csv}:logit", f"{csv}:nope"]
    done = subprocess.run(bad, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("bceloss eval: labels breast_cancer.csv: no column 'nope'")
    assert "Traceback" not in done.stderr


def test_sample_option_evaluates_the_shipped_sample(capsys):
    """`--sample` is the explicit command on the CSV shipped in the package, and agrees with
    BCE with logits computed here in float64 from the file's columns."""
    csv = SAMPLE / "breast_cancer.csv"
    explicit = run(["eval", f"{csv}:logit", f"{csv}:malignant"], capsys)
    assert run(["eval", "--sample"], capsys) == explicit
    assert explicit == (0, "0.09643331520293881\n", "")
    options = ["--per-label", "--json", "--reduction", "sum", "--dtype", "float32"]
    got = run_json(["eval", "--sample", *options], capsys)
    assert got == run_json(["eval", f"{csv}:logit", f"{csv}:malignant", *options], capsys)
    x, y = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=(0, 2)).T
    # softplus(x) - x y, with softplus(x) = max(x, 0) + log1p(exp(-|x|))
    want = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
    loss = float(explicit[1])
    assert abs(loss - want) <= 1e-15 * want


def test_sample_option_from_another_directory(tmp_path):
    """`python -m bceloss eval --sample` finds the file in the package, wherever it runs."""
    argv = [sys.executable, "-m", "bceloss", "eval", "--sample"]
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "0.09643331520293881\n", "")


def test_sample_option_with_sources_is_a_usage_error(capsys):
    message = "bceloss eval: --sample replaces PREDICTIONS and LABELS; give one or the other\n"
    assert run(["eval", "--sample", "a.npy", "b.npy"], capsys) == (2, "", message)
    assert run(["eval", "a.npy", "--sample"], capsys) == (2, "", message)
    code, out, err = run(["eval"], capsys)  # without --sample, both sources are required
    assert (code, out) == (2, "")
    assert err.endswith("error: the following arguments are required: PREDICTIONS, LABELS\n")
    code, out, _ = run(["eval", "--help"], capsys)
    assert code == 0
    assert "--sample" in out
    assert "breast_cancer.csv:logit breast_cancer.csv:malignant" in " ".join(out.split())


def test_demo_prints_the_documented_examples(capsys):
    code, out, _ = run(["demo"], capsys)
    assert code == 0
    printed = [float(line) for line in out.splitlines() if line.startswith("    0.")]
    for value, documented in zip(printed, ("0.3463612", "0.45618808", "0.38240486"), strict=True):
        assert abs(value - float(documented)) <= 2e-7 * value  # float32's precision


def test_bench_points_to_the_benchmark_script(capsys):
    """The benchmark is a script of the repository (benchmarks/bench_bce.py), not a module of
    the package: `bceloss bench` says where it is, whatever follows it."""
    assert importlib.util.find_spec("bceloss.bench") is None
    assert (ROOT / "benchmarks" / "bench_bce.py").is_file()
    message = (
        "bceloss bench: the benchmark is python benchmarks/bench_bce.py in a source checkout "
        "(not installed)\n"
    )
    assert main(["bench", "--quick", "eval"]) == 2
    assert capsys.readouterr() == ("", message)
    assert run(["bench"], capsys) == (2, "", message)
