"""A local Hugging Face folder (BERT, RoBERTa, DistilBERT; MiniLM is a BERT) converted into our model.

:func:`load_hf_encoder` loads the folder with ``transformers`` (``local_files_only``) and copies its
weights into an :class:`~nas.models.EncoderClassifier` built from the teacher's
:meth:`~nas.teacher_shape.TeacherShape.candidate` (post-LN, embedding LayerNorm, the teacher's LayerNorm
epsilon, ``[CLS]`` pooling through a tanh or relu pooler, explicit head width). A full copy gives the Hugging
Face model's logits and hidden states. The mapping (see ``docs/teachers.md``):

- word embeddings -> ``tok_emb``; position embeddings -> ``pos_emb``, with BERT's and RoBERTa's
  ``token_type_embeddings[0]`` added in (every token is segment 0) and RoBERTa's rows taken from
  ``pad_token_id + 1`` on (its first real position);
- per layer: query/key/value/attention output -> ``attn.{q,k,v,out}_proj``, the attention LayerNorm ->
  ``ln_1``, intermediate/output dense -> ``ffn.fc1``/``ffn.fc2``, the output LayerNorm -> ``ln_2``;
- BERT's pooler, RoBERTa's classification dense and DistilBERT's pre-classifier -> ``pooler``; the
  classifier -> ``head``.

RoBERTa gives padded tokens the padding position; ours count on. Real tokens never see padded ones, so only
the (meaningless) states at padded positions differ.

:func:`check_hf_folder` is the cheap part, run before a search or trial writes anything: the folder, its
``config.json``, a ``model_type`` that ``transformers`` knows and that converts, readable safetensors
headers, and a tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from torch import Tensor
from transformers import AutoModel, AutoModelForSequenceClassification

from evaluators.tasks import TaskData
from evaluators.tokenize import SPECIAL_TOKENS, TextTokenizer, load_tokenizer
from nas.errors import ConfigError
from nas.models import EncoderClassifier, build
from nas.teacher_shape import SUPPORTED_MODEL_TYPES, TeacherShape

__all__ = ["HFEncoder", "load_hf_encoder", "check_hf_folder", "check_teacher_head", "unknown_token_share",
           "warn_unknown_tokens", "UNK_WARN_SHARE"]

log = logging.getLogger(__name__)

#: Above this share of a task's tokens mapped to the unknown token, adapting a task to a teacher warns.
UNK_WARN_SHARE = 0.2
_FOLDER_FIX = "pass a folder written by model.save_pretrained(...) and tokenizer.save_pretrained(...), or 'auto'"
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")

#: (our module, Hugging Face module) inside one layer, for each family.
_LAYER = {
    "bert": (("attn.q_proj", "attention.self.query"), ("attn.k_proj", "attention.self.key"),
             ("attn.v_proj", "attention.self.value"), ("attn.out_proj", "attention.output.dense"),
             ("ln_1", "attention.output.LayerNorm"), ("ffn.fc1", "intermediate.dense"),
             ("ffn.fc2", "output.dense"), ("ln_2", "output.LayerNorm")),
    "distilbert": (("attn.q_proj", "attention.q_lin"), ("attn.k_proj", "attention.k_lin"),
                   ("attn.v_proj", "attention.v_lin"), ("attn.out_proj", "attention.out_lin"),
                   ("ln_1", "sa_layer_norm"), ("ffn.fc1", "ffn.lin1"), ("ffn.fc2", "ffn.lin2"),
                   ("ln_2", "output_layer_norm")),
}
_LAYER["roberta"] = _LAYER["bert"]
_LAYER_PREFIX = {"bert": "encoder.layer", "roberta": "encoder.layer", "distilbert": "transformer.layer"}
#: Where the pooler and head live: (module on the base model, module on the classifier), per family.
_POOLER = {"bert": ("pooler.dense", None), "roberta": ("pooler.dense", "classifier.dense"),
           "distilbert": (None, "pre_classifier")}
_HEAD = {"bert": "classifier", "roberta": "classifier.out_proj", "distilbert": "classifier"}


@dataclass(frozen=True)
class HFEncoder:
    """A Hugging Face folder converted into our model.

    Attributes:
        model: The converted :class:`~nas.models.EncoderClassifier`, in eval mode.
        tokenizer: The folder's tokenizer.
        shape: The teacher's shape, from its ``config.json``.
        head_fits: True when the folder has a sequence-classification head with the asked number of labels
            and its weights were copied; False when the head (and a pooler the folder lacks) is freshly
            initialised.
    """

    model: EncoderClassifier
    tokenizer: TextTokenizer
    shape: TeacherShape
    head_fits: bool


def check_hf_folder(path: str | Path, *, field: str = "teacher") -> TeacherShape:
    """The cheap checks of a teacher folder (no weights are loaded); returns its shape.

    Raises:
        ConfigError: A missing path, a folder without ``config.json`` or ``model_type``, a model type
            ``transformers`` does not know or that does not convert, no weights or an unreadable
            safetensors file, or no tokenizer. One line, naming ``field`` and the fix.
    """
    d = Path(path).expanduser()
    value = str(path)
    if not d.is_dir():
        raise ConfigError("teacher folder not found", field=field, value=value,
                          fix="pass a local Hugging Face folder (model.save_pretrained) or 'auto'")
    config_file = d / "config.json"
    if not config_file.is_file():
        raise ConfigError("teacher folder has no config.json, so it is not a Hugging Face model folder",
                          field=field, value=value, fix=_FOLDER_FIX)
    config = _read_config(config_file, field, value)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError("the teacher's config.json has no model_type, so it is not a model folder", field=field,
                          value=value, fix=_FOLDER_FIX)
    if model_type not in transformers.CONFIG_MAPPING:
        raise ConfigError(f"model type {model_type!r} in config.json is not known to transformers "
                          f"{transformers.__version__}", field=field, value=value,
                          fix=f"pass a {', '.join(SUPPORTED_MODEL_TYPES)} folder (MiniLM is a bert)")
    try:
        shape = TeacherShape.from_config(config, source=str(config_file))
    except ConfigError as e:
        raise ConfigError(str(e).removeprefix("teacher: "), field=field) from e
    _check_weights(d, field, value)
    if not any((d / name).is_file() for name in _TOKENIZER_FILES):
        raise ConfigError("teacher folder has no tokenizer (tokenizer.json or tokenizer_config.json)", field=field,
                          value=value, fix="save the tokenizer into the same folder with tokenizer.save_pretrained")
    return shape


def check_teacher_head(shape: TeacherShape, num_labels: int, *, value: str, field: str = "teacher") -> None:
    """The teacher's classification head fits the task's ``num_labels`` (for a teacher used as it is).

    Raises:
        ConfigError: The folder has no classification head, or one with another number of labels; the fix
            names fine-tuning.
    """
    if shape.num_labels == num_labels:
        return
    tune = "fine-tune it on the task (teacher: {path: DIR, fine_tune: {...}} or `nas teacher fit`)"
    if shape.num_labels is None:
        raise ConfigError(f"the teacher has no classification head for the task's {num_labels} labels",
                          field=field, value=value, fix=f"{tune}, or use a teacher fine-tuned on this task")
    raise ConfigError(f"the teacher has {shape.num_labels} labels but the task has {num_labels}", field=field,
                      value=value, fix=f"use a teacher fine-tuned on this task's labels, or {tune}")


def _read_config(config_file: Path, field: str, value: str) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_file} is not readable JSON ({e})", field=field, value=value,
                          fix=_FOLDER_FIX) from e
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} is not a JSON object", field=field, value=value, fix=_FOLDER_FIX)
    return config


def _check_weights(d: Path, field: str, value: str) -> None:
    """Weights exist, and every safetensors file's header reads (a truncated or garbled file fails here)."""
    files = sorted(d.glob("*.safetensors"))
    if not files and not (d / "pytorch_model.bin").is_file():
        raise ConfigError("teacher folder has no weights (model.safetensors or pytorch_model.bin)", field=field,
                          value=value, fix="save the model into the folder with model.save_pretrained")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"{f.name} is corrupted or truncated ({reason})", field=field, value=value,
                              fix="save the model again with model.save_pretrained, or copy the file again") from e


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (expected missing/unused keys) and progress bar while a folder loads."""
    before = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        transformers.logging.set_verbosity(before)
        if bars:
            transformers.logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def load_hf_encoder(path: str | Path, num_labels: int | None) -> HFEncoder:
    """Load a local Hugging Face folder and convert it into our model.

    Args:
        path: The folder (``config.json``, weights, tokenizer).
        num_labels: Labels of the converted model's head; None means the folder's own head's count.

    Returns:
        An :class:`HFEncoder`. Without a fitting head, the head (and a pooler the folder lacks) stays
        freshly initialised and ``head_fits`` is False.

    Raises:
        ConfigError: A bad folder (see :func:`check_hf_folder`), weights that do not load, a tokenizer
            that does not load, or ``num_labels`` None for a folder without a classification head.
    """
    shape = check_hf_folder(path)
    d = Path(path).expanduser()
    labels = num_labels if num_labels is not None else shape.num_labels
    if labels is None:
        raise ConfigError("the teacher folder has no classification head, so the number of labels is unknown",
                          field="teacher", value=str(path), fix="pass the task's num_labels")
    try:
        tokenizer = load_tokenizer(d)
    except Exception as e:
        raise ConfigError(f"the teacher's tokenizer does not load ({_first_line(e)})", field="teacher",
                          value=str(path), fix="save the tokenizer with tokenizer.save_pretrained") from e
    hf, missing = _load_hf(d, shape)
    with torch.random.fork_rng(devices=[]):  # a fresh head/pooler is the same on every load
        torch.manual_seed(0)
        model = build(shape.candidate(), vocab_size=shape.vocab_size, num_labels=labels)
    state, head_copied = _converted_state(hf, shape, missing, copy_head=shape.num_labels == labels)
    result = model.load_state_dict(state, strict=False)
    fresh = [k for k in result.missing_keys if not k.startswith(("pooler.", "head."))]
    if fresh or result.unexpected_keys:
        raise ConfigError(f"the weights do not convert (missing {fresh}, unexpected {result.unexpected_keys})",
                          field="teacher", value=str(path), fix="report this folder's layout as a bug")
    model.eval()
    log.info("converted %s teacher %s: %d layers, width %d, %d heads, head %s", shape.model_type, d,
             shape.n_layers, shape.d_model, shape.n_heads, "copied" if head_copied else "fresh")
    return HFEncoder(model=model, tokenizer=tokenizer, shape=shape, head_fits=head_copied)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _load_hf(d: Path, shape: TeacherShape) -> tuple[torch.nn.Module, set[str]]:
    """The Hugging Face model (with its head when the folder has one) and the keys it did not find."""
    auto = AutoModelForSequenceClassification if shape.num_labels is not None else AutoModel
    try:
        with _quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf, info = auto.from_pretrained(str(d), local_files_only=True, attn_implementation="eager",
                                            output_loading_info=True)
    except Exception as e:  # transformers raises OSError, ValueError, safetensors errors, ...
        raise ConfigError(f"the teacher's weights do not load ({_first_line(e)})", field="teacher",
                          value=str(d), fix="save the model again with model.save_pretrained") from e
    return hf.float().eval(), set(info.get("missing_keys", ()))


def _linear(state: dict[str, Tensor], ours: str, src: dict[str, Tensor], theirs: str) -> bool:
    """Copy ``theirs.{weight,bias}`` to ``ours.{weight,bias}``; False when the source has no such module."""
    if f"{theirs}.weight" not in src:
        return False
    state[f"{ours}.weight"] = src[f"{theirs}.weight"]
    if f"{theirs}.bias" in src:
        state[f"{ours}.bias"] = src[f"{theirs}.bias"]
    return True


def _converted_state(hf: torch.nn.Module, shape: TeacherShape, missing: set[str],
                     copy_head: bool) -> tuple[dict[str, Tensor], bool]:
    """Our state dict from the Hugging Face model's; and whether the head was copied."""
    base_model: Any = getattr(hf, "base_model", hf)
    base = {k: v.detach() for k, v in base_model.state_dict().items()}
    top = {k: v.detach() for k, v in hf.state_dict().items()}
    family = shape.model_type
    positions = base["embeddings.position_embeddings.weight"]
    positions = positions[shape.position_offset: shape.position_offset + shape.max_positions]
    if "embeddings.token_type_embeddings.weight" in base:  # every token is segment 0: fold its row in
        positions = positions + base["embeddings.token_type_embeddings.weight"][0]
    state = {"tok_emb.weight": base["embeddings.word_embeddings.weight"], "pos_emb.weight": positions}
    _linear(state, "emb_ln", base, "embeddings.LayerNorm")
    for i in range(shape.n_layers):
        for ours, theirs in _LAYER[family]:
            _linear(state, f"blocks.{i}.{ours}", base, f"{_LAYER_PREFIX[family]}.{i}.{theirs}")
    on_base, on_head = _POOLER[family]
    head_missing = any(k.startswith("classifier") or k.startswith("pre_classifier") for k in missing)
    has_head = shape.num_labels is not None and not head_missing
    if not (has_head and on_head is not None and _linear(state, "pooler", top, on_head)) and on_base is not None:
        _linear(state, "pooler", base, on_base)
    # a head of another label count stays fresh (its pooler, a trained transform, is kept)
    head_copied = has_head and copy_head and _linear(state, "head", top, _HEAD[family])
    return state, head_copied


def _unk_id(tokenizer: TextTokenizer) -> int | None:
    if tokenizer.is_hf:
        unk = tokenizer.backend.unk_token_id
        return int(unk) if unk is not None else None
    return tokenizer.get_vocab().get(SPECIAL_TOKENS[1])


def unknown_token_share(task: TaskData) -> float:
    """The share of the training split's real, non-special tokens that its tokenizer mapped to unknown."""
    tokenizer = task.tokenizer
    unk = _unk_id(tokenizer)
    if unk is None:
        return 0.0
    if tokenizer.is_hf:
        special = [int(i) for i in tokenizer.backend.all_special_ids if int(i) != unk]
    else:
        vocab = tokenizer.get_vocab()
        special = [vocab[t] for t in SPECIAL_TOKENS if t in vocab and vocab[t] != unk]
    ids, real = task.train_ids, task.train_mask.bool()
    words = real & ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype))
    n = int(words.sum())
    return float(((ids == unk) & words).sum()) / n if n else 0.0


def warn_unknown_tokens(task: TaskData, teacher: str) -> float:
    """Warn (log and ``warnings.warn``) when more than :data:`UNK_WARN_SHARE` of ``task``'s tokens are unknown.

    Args:
        task: The task, already encoded with the teacher's tokenizer.
        teacher: The teacher's name, for the message.

    Returns:
        The unknown share (see :func:`unknown_token_share`).
    """
    share = unknown_token_share(task)
    if share > UNK_WARN_SHARE:
        msg = (f"the teacher {teacher}'s tokenizer maps {share:.0%} of {task.name}'s training tokens to the "
               f"unknown token (more than {UNK_WARN_SHARE:.0%}): the teacher and its students see little of the "
               "text. Fix: use a teacher whose vocabulary covers the task's language and casing")
        log.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return share
