import json

import pytest

from nas.config import Candidate, load_candidate
from nas.errors import ConfigError


def test_candidate_round_trips_through_json_with_version():
    c = Candidate(attention={"kind": "local", "window": 4}, quant={"attention_bits": 8, "ffn_bits": 4},
                  sparsity={"kind": "heads", "amount": 0.25}, distill={"kind": "hidden"})
    data = json.loads(c.to_json())
    assert data["version"] == 1
    assert Candidate.from_json(c.to_json()) == c
    assert c.weight_bits == 4


def test_candidate_is_frozen():
    c = Candidate()
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        c.n_layers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "data, needles",
    [
        ({"n_heads": 3, "d_model": 64}, ["n_heads=3", "d_model=64", "allowed n_heads"]),
        ({"attention": {"kind": "flash"}}, ["attention.kind", "flash", "softmax", "lowrank"]),
        ({"attention": {"kind": "local"}}, ["window", "required"]),
        ({"attention": {"kind": "softmax", "window": 4}}, ["window", "only applies"]),
        ({"quant": {"ffn_bits": 3}}, ["quant.ffn_bits", "3"]),
        ({"sparsity": {"kind": "magnitude"}}, ["sparsity.amount", "> 0"]),
        ({"sparsity": {"kind": "heads", "amount": 0.9}, "n_heads": 2, "d_model": 32}, ["remove all"]),
        ({"n_layers": 0}, ["n_layers", "greater than or equal to 1", "0"]),
        ({"depth": 2}, ["depth", "unknown key"]),
        ({"version": 7}, ["version 7"]),
    ],
)
def test_validation_errors_name_field_value_and_allowed(data, needles):
    with pytest.raises(ConfigError) as ei:
        Candidate.from_json(json.dumps(data))
    msg = str(ei.value)
    for n in needles:
        assert n in msg, (n, msg)


def test_load_candidate_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_layers: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*line"):
        load_candidate(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_candidate(empty)
    with pytest.raises(ConfigError, match="not found"):
        load_candidate(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("n_layers: 1\nd_model: 32\nn_heads: 2\nattention: {kind: lowrank, k: 8}\n")
    assert load_candidate(good).attention.k == 8
