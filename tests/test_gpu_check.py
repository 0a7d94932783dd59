"""bench/gpu_check.py --smoke, the GPU check's CPU run (TRITON_INTERPRET=1, a 4×6 input grid, rrdb23 cut to one
RRDB): every phase is recorded, those that can run on the CPU do, every conv variant and block choice it tried
matches the float64 reference, the fused forward and engine.infer stay close to fp32, and the suggested block table
is keyed and written like kernels.blocks.BLOCK_TABLE. One run of the script (about a minute on 2 cores) serves
every test here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernels.blocks import Blocks, blocks_for

REPO = Path(__file__).resolve().parents[1]
PHASES = ["env", "ceilings", "convs", "sweep", "forward", "tests", "infer", "bench", "video", "overflow"]
ON_THE_CPU = {"env", "convs", "sweep", "forward", "infer"}
LAYERS = ["conv_first", "rdb.conv1", "rdb.conv2", "rdb.conv3", "rdb.conv4", "rdb.conv5", "conv_body", "conv_up1",
          "conv_up2", "conv_hr", "conv_last"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


def test_every_phase_ran_or_says_why_not(report: dict[str, Any]) -> None:
    phases = report["phases"]
    assert list(phases) == PHASES
    for name, p in phases.items():
        assert p["status"] in ("ok", "skipped"), (name, p.get("error"), p.get("trace"))
        assert p["status"] == "ok" or p["reason"].strip(), name
    assert {name for name, p in phases.items() if p["status"] == "ok"} == ON_THE_CPU
    assert report["smoke"] and report["build"]["status"] == "skipped" and report["build"]["reason"]


def test_every_conv_variant_matches_the_reference(report: dict[str, Any]) -> None:
    """Our kernel with the table's blocks and with the tap-reuse loop order flipped, per conv of rrdb23, against
    float64. The tolerance is 4 fp16 ulps of the output's largest magnitude (the layers' weights give outputs of
    order 1, so it stays below 0.05); a wrong tap, channel or pixel is off by the output's own size."""
    rows = report["convs"]
    assert [r["layer"] for r in rows] == LAYERS
    for r in rows:
        dtype, op, cin, cout, res = r["key"]
        table = blocks_for(dtype, op, cin=cin, cout=cout, res=res)
        flipped = "flat" if table.tap_reuse else "tap_reuse"
        assert set(r["variants"]) == {"table", flipped}, r["layer"]
        assert Blocks(**r["variants"]["table"]["blocks"]) == table
        assert Blocks(**r["variants"][flipped]["blocks"]).tap_reuse != table.tap_reuse
        for label, v in r["variants"].items():
            assert 2.0**-8 <= v["tol"] < 0.05, (r["layer"], label, v)
            assert v["ok"] and v["max_diff"] <= v["tol"], (r["layer"], label, v)


def test_every_block_choice_the_sweep_tried_is_correct(report: dict[str, Any]) -> None:
    rows, order = report["sweep"]["rows"], report["sweep"]["order"]
    # the heaviest layer first: by FLOPs × launches per forward under the interpreter (its wall clock says nothing)
    assert [w for _, w in order] == sorted((w for _, w in order), reverse=True) and len(order) == 11
    assert rows and rows[0]["layer"] == order[0][0]
    for r in rows:
        assert "error" not in r, r
        assert r["ok"] and r["max_diff"] <= r["tol"] < 0.05, r


def test_the_fused_forward_and_infer_stay_close_to_fp32(report: dict[str, Any]) -> None:
    """fp16 storage between the convs rounds each activation to 2⁻¹¹ of its size; on an output scaled to span [0, 1]
    (`forward_network`) that leaves errors of order 10⁻⁴, some 70 dB, while a conv reading a wrong tap, channel slice
    or pixel moves the output by a sizeable part of its range (under 30 dB). 50 dB is what the issue asks of the
    GPU forward. engine.infer's uint8 output differs from the rounded fp32 output by a level where fp16 error
    crosses a rounding boundary (about 60 dB); 40 dB allows for that and no more."""
    assert report["forward_network"]["conv_last_scale"] > 0
    rows = report["forward"]
    assert rows[0]["label"].startswith("fused, table blocks")
    for r in rows:
        assert r["launches"] == 1 + 15 + 1 + 2 + 2
        assert r["psnr_db"] is None or r["psnr_db"] >= 50, r
    if len(rows) > 1:  # the sweep suggested a row that differs from the table: the forward looked it up
        assert rows[1]["rows_applied"] and not rows[1]["rows_not_looked_up"]
    assert report["infer"]["output"] == [16, 24, 3]
    assert report["infer"]["psnr_8bit_db"] is None or report["infer"]["psnr_8bit_db"] >= 40


def test_the_suggested_table_is_keyed_and_written_like_block_table(report: dict[str, Any]) -> None:
    table = report["sweep"]["suggested_table"]
    layer_keys = {tuple(r["key"]): r["layer"] for r in report["convs"]}
    assert table
    for key_text, s in table.items():
        key = ast.literal_eval(key_text)
        assert layer_keys.get(key) == s["layer"]
        blocks = Blocks(**s["blocks"])
        pasted = ast.parse("{" + s["row"] + "}", mode="eval").body  # a dict entry, as in BLOCK_TABLE
        assert isinstance(pasted, ast.Dict) and ast.literal_eval(pasted.keys[0]) == key
        assert eval(compile(ast.Expression(pasted.values[0]), "row", "eval"), {"Blocks": Blocks}) == blocks
        correct = [r for r in report["sweep"]["rows"] if r["layer"] == s["layer"] and r.get("ok")]
        assert s["ms"] == min(r["ms"] for r in correct)  # the fastest correct choice
        assert s["differs"] == (blocks != blocks_for(*key[:2], cin=key[2], cout=key[3], res=key[4]))
