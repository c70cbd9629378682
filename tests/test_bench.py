"""bnlab.bench: every row is in the table and the JSON report, ratios and byte counts follow
their definitions. No timing assertions: speed is measured by the benchmark itself
(`make bench`), never asserted by a unit test."""

import json
import math
import subprocess
import sys

import pytest

from bnlab import bench

QUICK = [(name, bench.SHAPES[name]) for name in bench.SHAPE_SETS["quick"]]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bnlab.bench", "--device", "cpu", "--shapes", "quick",
         "--repeats", "2", "--json", str(path)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(path.read_text()), path


def test_every_backend_shape_and_pass_has_a_row(cli_run):
    stdout, report, _ = cli_run
    rows = {(r["backend"], r["shape_name"], r["pass"]): r for r in report["rows"]}
    assert len(rows) == len(report["rows"]) == len(bench.BACKENDS) * len(QUICK) * 3
    table = stdout.splitlines()
    for backend in bench.BACKENDS:
        for name, shape in QUICK:
            for pass_ in bench.PASSES:
                row = rows[(backend, name, pass_)]
                assert tuple(row["shape"]) == shape
                label = f"{name} {'x'.join(map(str, shape))}"
                assert any(line.startswith(backend) and label in line and f" {pass_} " in line
                           for line in table), (backend, name, pass_)


def test_triton_is_skipped_on_the_cpu_with_a_note(cli_run):
    stdout, report, _ = cli_run
    for row in report["rows"]:
        if row["backend"] == "triton":
            assert row["ms"] is None and row["gbps"] is None and row["ratio_to_native"] is None
            assert "CUDA" in row["note"]
        else:
            assert row["note"] is None and row["ms"] > 0
    assert "skipped: Triton kernels need a CUDA device" in stdout


def test_ratios_are_to_torch_native_in_the_same_run(cli_run):
    _, report, _ = cli_run
    native = {(r["shape_name"], r["pass"]): r["ms"] for r in report["rows"]
              if r["backend"] == bench.NATIVE}
    for row in report["rows"]:
        if row["ms"] is None:
            continue
        if row["backend"] == bench.NATIVE:
            assert row["ratio_to_native"] == 1.0
        assert math.isclose(row["ratio_to_native"],
                            row["ms"] / native[(row["shape_name"], row["pass"])])


def test_bytes_follow_the_model_and_bandwidths_their_definitions(cli_run):
    _, report, _ = cli_run
    copy_gbps = report["copy_bandwidth_gbps"]
    assert copy_gbps > 0
    times = {"forward": 3, "backward": 5, "both": 8}  # x bytes(x), the module docstring's model
    for row in report["rows"]:
        assert row["bytes"] == times[row["pass"]] * math.prod(row["shape"]) * 4  # float32
        if row["ms"] is not None:
            assert math.isclose(row["gbps"], row["bytes"] / (row["ms"] * 1e-3) / 1e9)
            assert math.isclose(row["fraction_of_copy_bandwidth"], row["gbps"] / copy_gbps)
        assert set(bench.ROW_KEYS) <= set(row)


def test_report_describes_the_run(cli_run):
    stdout, report, path = cli_run
    for key in ("date", "device", "threads", "versions", "copy_bandwidth_gbps", "byte_model",
                "repeats", "rows"):
        assert key in report, key
    assert report["device"]["device"] == "cpu" and report["device"]["name"]
    assert report["device"]["logical_cpus"] >= 1
    assert report["threads"] == 1 and report["repeats"] == 2
    assert {"torch", "numpy", "triton", "python"} <= set(report["versions"])
    assert "threads: 1" in stdout
    assert "copy bandwidth, measured now" in stdout
    assert f"wrote {path}" in stdout


def test_run_api_always_measures_the_native_baseline():
    rows = bench.run("quick-mlp", backends=["numpy"], passes=("forward",), repeats=1,
                     copy_gbps=10.0)
    assert [(r["backend"], r["pass"]) for r in rows] == [("numpy", "forward"),
                                                         (bench.NATIVE, "forward")]
    assert all(set(bench.ROW_KEYS) <= set(r) for r in rows)
    assert rows[1]["ratio_to_native"] == 1.0
    assert "numpy" in bench.format_table(rows)


def test_shapes_and_sets():
    assert bench.SHAPES["resnet50-stem"] == (32, 64, 112, 112)
    assert bench.SHAPES["mlp"] == (4096, 1024)
    assert [s for _, s in bench.resolve_shapes("networks")] == [
        (32, 64, 112, 112), (32, 256, 56, 56), (32, 2048, 7, 7), (4096, 1024)]
    assert bench.resolve_shapes(["8x3x4x4", (5, 2)]) == [("8x3x4x4", (8, 3, 4, 4)),
                                                         ("5x2", (5, 2))]


@pytest.mark.parametrize("kwargs, message", [
    (dict(backends=["cudnn"]), "unknown backends"),
    (dict(passes=("sideways",)), "unknown passes"),
    (dict(shapes="resnet51"), "expected a shape name"),
    (dict(shapes=[(1, 4)]), "not a training BatchNorm input"),
    (dict(device="tpu"), "expected device"),
])
def test_bad_arguments_say_what_was_expected(kwargs, message):
    args = dict(shapes="quick", copy_gbps=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        bench.run(**args)


def test_cli_rejects_an_unknown_backend(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--device", "cpu", "--backends", "cudnn"])
    assert exit_.value.code == 2 and "unknown backends" in capsys.readouterr().err


@pytest.mark.parametrize("name, gbps", [
    ("NVIDIA H100 80GB HBM3", 3350.0), ("NVIDIA H100 PCIe", 2000.0), ("NVIDIA H200", 4800.0),
    ("NVIDIA A100-SXM4-40GB", 1555.0), ("NVIDIA A100-SXM4-80GB", 2039.0),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_datasheet_peaks_of_known_gpus(name, gbps):
    assert bench.datasheet_peak_gbps(name) == gbps
