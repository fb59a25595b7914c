"""The measuring tools under tools/cpu_peaks build with the machine's compiler and give well-formed records."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bnnctl import kernels
from bnnctl.kernels import build as build_py

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "cpu_peaks"
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def build(tmp_path: Path, name: str, *sources: str, flags=()) -> Path:
    out = tmp_path / name
    subprocess.run(["g++", "-O2", "-fopenmp", *flags, *sources, "-o", str(out)], check=True, cwd=ROOT)
    return out


@needs_gxx
def test_popc_peak_quick_json_record(tmp_path):
    exe = build(tmp_path, "popc_peak", str(TOOLS / "popc_peak.cpp"), flags=["-march=native"])
    record = json.loads(subprocess.run([str(exe), "1", "--quick", "--json"], capture_output=True, text=True,
                                       check=True).stdout)
    assert record["kind"] == "cpu-peaks"
    (block,) = record["threads"].values()
    rows = block["rows"]
    assert "xor+popcnt scalar" in rows and all(r["all_threads"] > 0 for r in rows.values())
    reads = block["read_bandwidth_gbs"]  # a loaded machine may starve the all-threads reads, never the layout
    assert "memory" in reads and all(r["one_thread"] > 0 and r["all_threads"] >= 0 for r in reads.values())
    assert reads["memory"]["buffer_bytes_one_thread"] >= 64 << 20
    caches = record["caches"]
    assert set(reads) == {"memory"} | {level for level, key in (("l2", "l2_bytes_per_core"), ("l3", "l3_bytes"))
                                       if caches[key] > 0}
    ladder = block["read_bandwidth_by_size_gbs"]  # from 256 KiB to the memory buffer, in steps of sqrt(2)
    sizes = [step["bytes"] for step in ladder]
    assert sizes[0] >= 256 << 10 and sizes[-1] <= reads["memory"]["buffer_bytes_one_thread"]
    assert sizes[-1] * 1.5 > reads["memory"]["buffer_bytes_one_thread"]
    assert all(1.3 < b / a < 1.5 for a, b in zip(sizes, sizes[1:]))
    assert all(step["one_thread"] > 0 and step["all_threads"] >= 0 for step in ladder)


@needs_gxx
def test_xnor_share_checks_every_isa_and_records_a_share(tmp_path):
    kernel_sources = [f"cuda/{name}" for name in build_py.CPU_KERNEL_SOURCES]
    exe = build(tmp_path, "xnor_share", str(TOOLS / "xnor_share.cpp"), *kernel_sources, flags=["-Icuda"])
    result = subprocess.run([str(exe), "37", "70", "1000", "--repeats", "1", "--json"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr  # it refuses to report when an ISA's product is wrong
    record = json.loads(result.stdout)
    assert record["kind"] == "cpu-xnor-share" and record["shape"] == [37, 70, 1000]
    assert set(record["isas"]) == set(kernels.supported_cpu_isas())
    for row in record["isas"].values():
        assert 0 < row["share_min"] <= row["share"] <= row["share_max"] and row["gemm_ms"] > 0
    bad = subprocess.run([str(exe), "10", "0", "5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
