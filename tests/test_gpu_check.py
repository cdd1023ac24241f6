"""benchmarks/gpu_check.py in CPU mode (--device cpu --tiny): the same code path the H200 run takes, so it cannot rot.

One tiny run of every section writes the JSON/CSV with parity within tolerance and every site once per epoch; a
second run (same store) shows that a parity failure and a crashing section both end in a nonzero exit while the
other sections still report.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("cellio_gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("gpu_check_work")


def test_cpu_tiny_run_writes_results_with_parity_and_coverage(gpu_check, work, tmp_path, capsys):
    out = tmp_path / "out"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--sections", "parity,coverage,throughput,train",
                         "--work", str(work), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "gpu_check_cpu.json").read_text())
    assert report["hardware"] == "cpu" and report["device"] == "cpu" and report["errors"] == []
    assert report["store"]["sites"] == 320 and report["store"]["image_shape"] == [67, 61, 6]

    parity = {r["name"]: r for r in report["parity"]}
    assert set(parity) == set(gpu_check.PARITY_GROUPS)
    for name, r in parity.items():
        assert r["ok"] and r["values"] > 0 and r["values_over_tolerance"] == 0, r
        if r["interpolated"]:
            assert r["max_grey_diff"] <= 1.0 + 1e-3 and r["frac_off_by_one_grey"] < 0.05, r
        else:
            assert r["max_abs_diff"] < 1e-4 and r["max_grey_diff"] < 1e-3, r

    assert [r["name"] for r in report["coverage"]] == ["epoch0", "epoch1"]
    for r in report["coverage"]:
        assert r["ok"] and r["seen"] == r["unique"] == r["sites"] == 320 and r["ranks"] == 3, r
        assert sum(int(x) for x in r["per_rank"].split()) == 320
    assert report["coverage"][-1]["order_differs_from_epoch0"] is True

    rows = {(r["row"], r["scenario"], r["crop"]) for r in report["throughput"]}
    assert rows == {(row, sc, crop) for row, sc, crop in gpu_check.throughput_plan(
        gpu_check.make_plan(True, "cpu", None, None, None), "cpu")}
    assert all(r["sites_per_s"] > 0 and r["sites_per_epoch"] > 0 for r in report["throughput"])
    assert len(report["train"]) == 1 and report["train"][0]["resident_ms"] > 0 and report["train"][0]["ratio"] > 0
    assert report["verdicts"]["parity_ok"] is True and report["verdicts"]["coverage_ok"] is True
    assert report["verdicts"]["p3_met"] is None  # no GPU row: never estimated

    with open(out / "gpu_check_cpu.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {"parity", "coverage", "throughput", "train", "verdict"} <= {r["section"] for r in table}
    assert any(r["section"] == "coverage" and r["metric"] == "ok" and r["value"] == "True" for r in table)
    # the short table comes last
    tail = printed.rstrip().splitlines()
    assert tail[-1] == "result: OK" and any(line.startswith("coverage") for line in tail[-20:])


def test_parity_failure_and_a_crashing_section_exit_nonzero(gpu_check, work, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "EXACT_ATOL", -1.0)  # every exact value now counts as over tolerance

    def boom(*args, **kwargs):
        raise RuntimeError("coverage exploded")

    monkeypatch.setattr(gpu_check, "run_coverage", boom)
    out = tmp_path / "out"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--sections", "parity,coverage", "--work", str(work),
                         "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 1
    report = json.loads((out / "gpu_check_cpu.json").read_text())
    assert report["verdicts"]["parity_ok"] is False
    assert not parity_ok_rows(report, interpolated=False)
    assert all(r["ok"] for r in report["parity"] if r["interpolated"])  # the grey-level rule is unaffected
    assert [e["section"] for e in report["errors"]] == ["coverage"] and "exploded" in report["errors"][0]["error"]
    assert printed.rstrip().splitlines()[-1].startswith("result: FAIL")


def parity_ok_rows(report: dict, *, interpolated: bool) -> list[dict]:
    return [r for r in report["parity"] if r["interpolated"] == interpolated and r["ok"]]


def test_spent_time_budget_skips_timed_rows_but_never_estimates(gpu_check, work, tmp_path, capsys):
    out = tmp_path / "out"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--sections", "throughput,train", "--budget", "0",
                         "--work", str(work), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "gpu_check_cpu.json").read_text())
    assert report["throughput"] == [] and report["train"] == []
    assert len(report["skipped"]) == 9 + 1 and all("time budget" in s for s in report["skipped"])
    assert "parity_ok" not in report["verdicts"] and report["verdicts"]["p3_met"] is None


def test_unknown_section_is_refused(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--sections", "parity,speed"])
