"""Evaluators: tasks, tokenizers, brief training, distillation, teachers and accuracy metrics.

Nothing here is imported eagerly (torch loads only when a submodule that needs it is imported):

- :mod:`evaluators.tasks` -- ``load_task("builtin:longmatch")`` or a TSV/CSV/JSONL file or folder.
- :mod:`evaluators.tokenize` -- WordPiece / word-level / teacher tokenizers with save and load.
- :mod:`evaluators.train` -- ``train(model, task, cfg)``: AdamW, warmup + cosine, rungs, budgets.
- :mod:`evaluators.pruning` -- when a trial prunes (one-shot or cubic) and the batches Taylor importance reads.
- :mod:`evaluators.distill` -- logit, hidden-state and attention-map distillation losses.
- :mod:`evaluators.teacher` -- ``load_teacher(spec, task)``: a local Hugging Face folder or ``auto``.
- :mod:`evaluators.metrics` -- ``evaluate(model, task)``: accuracy and macro-F1.
- :mod:`evaluators.meters`, :mod:`evaluators.measure` -- energy meters and the inference protocol.
"""

__all__ = ["tasks", "tokenize", "train", "distill", "teacher", "metrics"]
