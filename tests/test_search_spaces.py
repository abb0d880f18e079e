import ast
from pathlib import Path

import optuna
import pytest

from nas.config import Candidate
from nas.errors import ConfigError
from search_spaces import PRESETS, ReplayTrial, SearchSpace, load_space, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_sample_valid_candidates(preset):
    space = load_space(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(60):
        trial = study.ask()
        cand = suggest(trial, space)
        assert isinstance(cand, Candidate)
        assert cand.d_model % cand.n_heads == 0
        kinds.add(cand.attention.kind)
        # conditional parameters appear only with their attention type
        assert ("window" in trial.params) == (cand.attention.kind == "local")
        assert ("k" in trial.params) == (cand.attention.kind == "lowrank")
        assert ("feature_map" in trial.params) == (cand.attention.kind == "linear")
        study.tell(trial, 0.0)
    assert kinds == set(space.attention)


def test_heads_that_do_not_divide_fall_back_deterministically():
    space = SearchSpace(d_model=[96], n_heads=[4, 5])
    cand = suggest(optuna.trial.FixedTrial({**_base_params(), "d_model": 96, "n_heads": 5}), space)
    assert cand.n_heads == 4


def _base_params():
    return {"n_layers": 1, "n_heads": 2, "d_model": 32, "ffn_ratio": 2, "attention": "softmax",
            "embedding_bits": 32, "attention_bits": 8, "ffn_bits": 4, "quant_scheme": "symmetric",
            "quant_granularity": "per_channel", "sparsity": "none", "distill": "none", "dropout": 0.0,
            "pooling": "mean", "rank_attention": 1.0, "rank_ffn": 1.0, "activation_bits": 32}


def test_replay_trial_matches_optuna_fixed_trial_and_stored_params():
    space = load_space("tiny")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    for _ in range(10):
        t = study.ask()
        cand = suggest(t, space)
        study.tell(t, 1.0)
        assert suggest(ReplayTrial(t.params), space) == cand
        assert suggest(optuna.trial.FixedTrial(t.params), space) == cand


def test_replay_trial_rejects_missing_or_bad_params():
    space = load_space("tiny")
    with pytest.raises(ConfigError, match="n_layers"):
        suggest(ReplayTrial({}), space)
    with pytest.raises(ConfigError, match="choices"):
        suggest(ReplayTrial({**_base_params(), "n_layers": 99}), space)


def test_overrides_from_yaml_and_errors_name_the_field():
    space = load_space("tiny", {"attention": ["linear"], "n_layers": [4]})
    cand = suggest(ReplayTrial({**_base_params(), "attention": "linear", "feature_map": "relu",
                                "n_layers": 4, "layer_shapes": "uniform", "sharing": "none",
                                "drop_layers": 0}), space)
    assert cand.attention.kind == "linear" and cand.n_layers == 4
    with pytest.raises(ConfigError, match="attention"):
        load_space("tiny", {"attention": ["flash"]})
    with pytest.raises(ConfigError, match="unknown key"):
        load_space("tiny", {"depth": [2]})
    with pytest.raises(ConfigError, match="preset"):
        load_space("huge")


def test_search_spaces_imports_no_torch():
    src = Path(__import__("search_spaces").__file__).read_text()
    mods = {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import)}
    mods |= {n.module.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in mods and "storage" not in mods
