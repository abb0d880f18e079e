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


def test_an_old_candidate_json_still_loads_with_the_default_layout():
    # written before init/norm/layer_norm_eps/pooler/head_dim existed (still version 1)
    old = ('{"version":1,"n_layers":2,"d_model":64,"n_heads":4,"d_ffn":128,"dropout":0.1,"max_len":128,'
           '"pooling":"mean","attention":{"kind":"softmax","window":null,"k":null,"feature_map":null},'
           '"quant":{"version":1,"embedding_bits":32,"attention_bits":32,"ffn_bits":32,"scheme":"symmetric",'
           '"granularity":"per_channel"},"sparsity":{"version":1,"kind":"none","amount":0.0},'
           '"distill":{"kind":"none","temperature":2.0,"alpha":0.5,"hidden_weight":1.0,"attention_weight":1.0}}')
    c = Candidate.from_json(old)
    assert (c.init, c.norm, c.layer_norm_eps, c.pooler, c.head_dim) == ("scratch", "pre", 1e-5, "none", None)
    assert c.resolved_head_dim == 16 and c.attention_width == 64
    assert c.flat()["init"] == "scratch"


def test_head_dim_lifts_the_divisibility_rule():
    c = Candidate(d_model=48, n_heads=5, head_dim=8, pooling="cls", pooler="tanh", norm="post")
    assert (c.resolved_head_dim, c.attention_width) == (8, 40)
    assert Candidate.from_json(c.to_json()) == c


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
        ({"pooler": "tanh"}, ["pooler='tanh'", "pooling: cls"]),
        ({"pooler": "gelu", "pooling": "cls"}, ["pooler", "gelu"]),
        ({"norm": "sandwich"}, ["norm", "sandwich"]),
        ({"init": "pretrained"}, ["init", "pretrained"]),
        ({"layer_norm_eps": 0}, ["layer_norm_eps", "greater than 0"]),
        ({"head_dim": 0}, ["head_dim", "greater than or equal to 1"]),
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
