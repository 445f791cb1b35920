"""docs/performance.md's generated blocks are in step with the committed benchmark JSON."""

from __future__ import annotations

import pytest

from benchmarks import performance_doc as pd


def test_the_committed_page_is_in_step_with_the_committed_json() -> None:
    assert pd.main(["--check"]) == 0


def test_a_server_row_is_computed_from_its_report() -> None:
    report = {
        "machine": {"device": "cpu", "cpus": 2, "load_average_1min": 1.5},
        "methods": [
            {
                "method": "fedsrd",
                "project_full": {"best": 1.9, "median": 2.0, "runs": 3},
                "roofline_s": 0.8,
                "upload_bytes": 17_500_000,
                "wire": {"best": 0.08, "median": 0.09, "runs": 3},
                "copy": {"best": 0.001, "median": 0.0015, "runs": 20},
            },
            {
                "method": "fedavg",
                "project_full": None,
                "upload_bytes": None,
                "wire": None,
                "copy": None,
            },
        ],
    }
    rows = pd.server_rows("server-cpu-x", report)
    assert rows[0] == (
        "| `server-cpu-x` | cpu, 2 cores, load 1.5 | fedsrd | 2 s | 2.50× | 17.50 | 0.090 s | 60× |"
    )
    assert rows[1].endswith("| fedavg | – | – | – | – | – |")


def test_a_stale_or_unknown_block_is_found() -> None:
    text = "a\n<!-- generated: server -->\nold\n<!-- end generated -->\nb\n"
    fresh = pd.regenerate(text, {"server": lambda: "new\n"})
    assert fresh == "a\n<!-- generated: server -->\nnew\n<!-- end generated -->\nb\n"
    with pytest.raises(ValueError, match="no generator for block 'server'"):
        pd.regenerate(text, {})


def test_a_secagg_row_is_computed_from_its_report() -> None:
    row = {
        "clients": 16,
        "num_shares": 5,
        "plain": {"seconds": 1.8, "upload_bytes": 2048.0, "moved_bytes": 4096.0},
        "secure": {"seconds": 3.0, "upload_bytes": 3072.0, "moved_bytes": 5120.0},
        "extra_seconds": 1.2,
    }
    (line,) = pd.secagg_rows("x", {"rows": [row]})
    assert line == "| `x` | 16 | 5 (SecAgg+) | 1.80 | 3.00 | 1.20 | 2.0 / 3.0 | 5.0 |"
    (whole,) = pd.secagg_rows("x", {"rows": [{**row, "num_shares": 16}]})
    assert "| 16 (SecAgg) |" in whole


def test_a_client_row_is_computed_from_its_report() -> None:
    method = {
        "method": "fedavg",
        "repeats": 5,
        "train_tokens_per_s": 812.4,
        "bare_tokens_per_s": 790.0,
        "train_ratio": 1.0284,
        "round_ratio": 1.01,
        "trl_ratio": None,
        "non_training_share": 0.0123,
    }
    report = {
        "model": "smollm2-135m",
        "threads": 2,
        "load_before": [0.5, 0.4, 0.3],
        "load_after": [1.9, 1.2, 0.8],
        "methods": [method],
    }
    (line,) = pd.client_rows("client-x", report)
    assert line == (
        "| `client-x` | smollm2-135m, 2 threads, load 0.5 → 1.9 | fedavg | 5 | 812 | 790 | "
        "1.03× | 1.01× | – | 1.2% |"
    )


def test_round_rows_are_computed_from_a_round_report() -> None:
    # Prepare: the shape report_json writes (benchmarks.round), two methods
    report = {
        "load_before": [0.5, 0.4, 0.3],
        "load_after": [1.8, 1.2, 0.8],
        "demo": [
            {
                "method": "fedavg",
                "round_s": 40.0,
                "train_s": 39.0,
                "client_other_s": 0.16,
                "server_s": 0.11,
                "rest_s": 0.73,
            },
            {
                "method": "fedsrd",
                "round_s": 39.6,
                "train_s": 38.0,
                "client_other_s": 0.9,
                "server_s": 0.34,
                "rest_s": 0.36,
            },
        ],
        "paper": [
            {
                "method": "fedavg",
                "client_train_s": 13000.0,
                "wire_s": 1.08,
                "server_s": 0.16,
                "round_s": 13002.32,
            },
            {
                "method": "fedsrd",
                "client_train_s": 13000.0,
                "wire_s": 0.2,
                "server_s": 6.8,
                "round_s": 13007.2,
            },
        ],
        "demo_round_ratio": 0.99,
        "paper_round_ratio": 13007.2 / 13002.32,
        "on_paper_hardware_minutes": {"fedavg": 1.96, "fedsrd": 2.04},
    }
    # Execute
    rows = pd.round_rows("round-x", report)
    # Assert: one row per method and setting, the ratio on FedSRD's row
    assert len(rows) == 6
    assert rows[1] == (
        "| `round-x` | 0.5 → 1.8 | demo budget, measured | fedsrd | 39.60 | 38.00 | 0.900 | "
        "0.340 | – | 0.360 | 0.990 |"
    )
    assert rows[2].endswith("| fedavg | 13002.3 | 13000.0 | – | 0.16 | 1.080 | – |  |")
    assert rows[3].endswith("| fedsrd | 13007.2 | 13000.0 | – | 6.80 | 0.200 | – | 1.0004 |")
    assert rows[5].endswith("| fedsrd | 122.4 | – | – | – | – | – | 1.041 |")


def test_target_rows_show_the_evaluated_targets_only() -> None:
    report = {
        "targets": [
            {"name": "fedsrd <= 1.1x", "passed": False, "measured": "1.47x", "note": ""},
            {"name": "gpu only", "passed": None, "measured": "-", "note": "run: --device cuda"},
            {"name": "peak", "passed": True, "measured": "0.39x", "note": "timed run"},
        ]
    }
    rows = pd.target_rows("r", report)
    assert rows == [
        "| `r` | fedsrd <= 1.1x | 1.47x | fail |",
        "| `r` | peak | 0.39x (timed run) | pass |",
    ]


def test_every_report_the_targets_block_names_is_committed() -> None:
    for name in pd.TARGET_REPORTS:
        assert (pd.SERVER_RESULTS / f"{name}.json").is_file(), name


def test_scale_rows_show_memory_growth_against_the_methods_first_run() -> None:
    def run(method: str, registered: int, rss_mib: float) -> dict[str, object]:
        return {
            "method": method,
            "registered": registered,
            "sampled": 10,
            "peak_rss_bytes": int(rss_mib * 2**20),
            "round_s": 1.5,
            "round_s_per_ktok": 0.25,
            "server_s": 0.02,
        }

    report = {
        "model": "tiny-llama",
        "scale": [run("fedavg", 10, 500), run("fedavg", 1000, 505), run("fedsrd", 10, 600)],
    }
    rows = pd.scale_rows("client-x", report)
    assert rows[1] == (
        "| `client-x` | tiny-llama | fedavg | 1000 | 10 | 505 | +1.00% | 1.500 | 0.250 | 2.00 |"
    )
    assert "| fedsrd | 10 | 10 | 600 | +0.00% |" in rows[2]
    assert pd.scale_rows("client-y", {"model": "m", "methods": []}) == []


def test_batching_rows_are_ratios_of_real_tokens_per_second() -> None:
    def side(padding: float | None) -> dict[str, object]:
        return {"padding": padding}

    report = [
        {
            "data": "iid",
            "seq_len": 512,
            "mean_length": 70.4,
            "sides": {"pad": side(0.3), "pack": side(0.024), "trl": side(None)},
            "tokens_per_s": {"pad": 100.0, "pack": 150.0, "trl": 120.0},
            "mfu": {"pad": 0.2, "pack": 0.3, "trl": 0.24},
        }
    ]
    rows = pd.batching_rows("batching-x", report)
    assert (
        rows[1]
        == "| `batching-x` | iid, seq 512 (mean 70 tok) | pack | 150 | 1.50 | 1.25 | 2.4% | 30.0% |"
    )
    assert rows[2].endswith("| trl | 120 | 1.20 | 1.00 | – | 24.0% |")
    assert len(rows) == 3
