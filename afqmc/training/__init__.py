"""The training recipe in parts: trainer, evaluator, checkpointer, callbacks, distributed helpers."""
