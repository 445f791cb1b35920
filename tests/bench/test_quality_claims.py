"""The claims table decides from the rows' numbers: beyond two standard errors of the seeds
a difference counts, within them it does not, and a missing row leaves a claim undecided."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.quality.claims import FAILS, HOLDS, UNDECIDED, decide, diff, render


def row(
    label: str, loss: float, sd: float | None, n: int, mb: float = 1.0, **more: Any
) -> dict[str, Any]:
    method = more.pop("method", label.split(" ")[0])
    group = more.pop("group", "main" if " " not in label else "ablation")
    out = {
        "label": label,
        "method": method,
        "group": group,
        "id_loss": {"mean": loss, "sd": sd, "n": n},
        "id_acc": {"mean": None, "sd": None, "n": 0},
        "cum_mb": {"mean": mb, "sd": None, "n": n},
        "mb_up": {"mean": more.pop("up", mb / 2), "sd": None, "n": n},
        "mb_down": {"mean": more.pop("down", mb / 2), "sd": None, "n": n},
    }
    return out


def verdicts(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {c.claim: c.verdict for c in decide(rows)}


def test_noise_is_two_standard_errors_and_one_seed_rows_borrow_the_main_sd() -> None:
    rows = [row("fedsrd", 2.0, 0.03, 3), row("fedsrd sparsifier=random", 2.2, None, 1)]
    d = diff(rows[1], rows[0], rows)
    assert d.value == pytest.approx(0.2)
    assert d.noise == pytest.approx(2 * math.sqrt(0.03**2 / 1 + 0.03**2 / 3))


def test_claims_hold_fail_or_stay_undecided_by_the_numbers() -> None:
    base = [
        row("fedavg", 2.00, 0.01, 3, mb=10.0),
        row("fedsrd", 2.005, 0.01, 3, mb=1.0),
        row("fed_dare", 2.10, 0.01, 3),
        row("fedsrd-e", 2.30, 0.01, 3),
        row("fedsrd sparsifier=random", 2.2, None, 1),
        row("fedsrd sparsifier=magnitude", 2.01, None, 1),
        row("fedsrd wire=bfloat16", 2.006, None, 1, mb=0.6),
    ]
    got = verdicts(base)
    assert got["FedSRD keeps FedAvg's in-domain quality at about 10% of its bytes"] == HOLDS
    assert got["FedSRD beats Fed-DARE"] == HOLDS
    assert got["FedSRD-e is close to FedSRD"] == FAILS
    # random is beaten, magnitude is within the noise: not both
    assert got["importance beats random and magnitude sparsification"] == UNDECIDED
    assert got["bfloat16 values on the wire cost FedSRD no quality"] == HOLDS
    assert got["the importance plug-in helps FedAvg"] == UNDECIDED  # its row did not run
    missing = next(c for c in decide(base) if c.claim.startswith("the importance plug-in"))
    assert "not run: fedavg + importance uplink" in missing.evidence
    # FedSRD above FedAvg by far more than the noise: quality not kept
    worse = [row("fedavg", 2.0, 0.01, 3, mb=10.0), row("fedsrd", 2.2, 0.01, 3, mb=1.0)]
    assert (
        verdicts(worse)["FedSRD keeps FedAvg's in-domain quality at about 10% of its bytes"]
        == FAILS
    )
    # without a seed spread nothing is decided
    single = [row("fedavg", 2.0, None, 1, mb=10.0), row("fedsrd", 1.0, None, 1, mb=1.0)]
    assert (
        verdicts(single)["FedSRD keeps FedAvg's in-domain quality at about 10% of its bytes"]
        == UNDECIDED
    )


def test_florist_claims_need_monotone_bytes_and_less_download_than_flora() -> None:
    rows = [
        row("fedavg", 2.0, 0.01, 3),
        row("flora", 2.0, 0.01, 3, down=5.0),
        row("florist", 1.99, 0.01, 3, mb=2.0, down=1.0),
        row(
            "florist tau=0.80 pad=fresh",
            2.10,
            None,
            1,
            mb=1.0,
            method="florist",
            group="florist-tau",
        ),
        row(
            "florist tau=0.99 pad=fresh",
            1.95,
            None,
            1,
            mb=3.0,
            method="florist",
            group="florist-tau",
        ),
        row("florist tau=0.90 pad=zeros", 1.99, None, 1, method="florist", group="florist-tau"),
    ]
    got = verdicts(rows)
    assert got["FLoRIST matches or beats FedIT with less download than FLoRA"] == HOLDS
    assert got["higher tau trades bytes for quality (FLoRIST)"] == HOLDS
    assert got["fresh padding beats zeros (FLoRIST)"] == UNDECIDED
    rows[3]["cum_mb"]["mean"] = 5.0  # tau 0.80 sending more than 0.90: not a trade
    assert verdicts(rows)["higher tau trades bytes for quality (FLoRIST)"] == FAILS
    table = render(decide(rows))
    assert table.startswith("| claim | verdict | evidence |") and "**does not hold**" in table
