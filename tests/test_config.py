"""Config loading: defaults, TOML, overrides, and errors that name the key."""

from pathlib import Path

import pytest

from fedlora import config
from fedlora.errors import ConfigError


def test_overrides_set_nested_values_and_method_shorthand(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('seed = 3\n[train]\nlr = 0.001\n[method]\nname = "fedavg"\n')

    cfg = config.load(path, ["train.local_steps=7", "method=florist", "method.florist.tau=0.8"])

    assert cfg.seed == 3
    assert cfg.train.lr == 0.001
    assert cfg.train.local_steps == 7
    assert cfg.method.name == "florist"
    assert cfg.method.options == {"tau": 0.8}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lr=-1", "train.lr"),
        ("lora.rank=0", "lora.rank"),
        ("federation.weighting=median", "federation.weighting"),
        ("train.nonsense=1", "train.nonsense"),
        ("method=nope", "nope"),
        ("method=florist", None),
        ("wire.value_dtype=int8", "wire.value_dtype"),
        ('train.batch_size="four"', "train.batch_size"),
    ],
)
def test_bad_values_name_the_key(override: str, named: str | None) -> None:
    if named is None:
        assert config.load(None, [override]).method.name == "florist"
        return
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    assert named in str(err.value)


def test_method_option_out_of_range_names_the_option() -> None:
    with pytest.raises(ConfigError) as err:
        config.load(None, ["method=florist", "method.florist.tau=1.5"])
    assert "tau" in str(err.value)


def test_unknown_method_option_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        config.load(None, ["method=fedavg", "method.fedavg.p_down=0.5"])
    assert "method.fedavg.p_down" in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_per_client_ranks_must_match_clients_and_default_alpha_is_ratio() -> None:
    cfg = config.load(
        None, ["data.clients=3", "lora.ranks=[8, 4, 2]", "lora.rank=8", "lora.alpha=16"]
    )
    assert cfg.client_ranks() == [8, 4, 2]
    assert cfg.client_alphas() == [16.0, 8.0, 4.0]
    with pytest.raises(ConfigError, match="lora.ranks"):
        config.load(None, ["data.clients=3", "lora.ranks=[8, 4]"])


def test_to_dict_round_trips() -> None:
    cfg = config.load(None, ["method=florist", "method.florist.tau=0.7", "lora.ranks=[4,4,2,2]"])
    assert config.from_dict(config.to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("uplink.base=1.5", "uplink.base"),
        ("method.fedsrd.base=1.5", "method.fedsrd: base"),
        ("method.fedsrd-e.base=1.5", "method.fedsrd-e: base"),
    ],
)
def test_one_ratio_rule_is_validated_alike_for_fedsrd_fedsrd_e_and_the_uplink(
    override: str, where: str
) -> None:
    from fedlora.ops.ratio import RatioRule

    extra = [override.split(".")[0] + "=" + override.split(".")[1]] if "method" in override else []
    with pytest.raises(ConfigError, match=rf"{where}: must be in \[0, 1\); got 1.5"):
        config.load(None, [*extra, override])
    assert issubclass(type(config.load(None, []).uplink), RatioRule)
