"""Pieces every LLM training stage uses: TRL's logs into the run's metrics, and the final model
saved (LoRA merged) from the main process."""

from __future__ import annotations

from pathlib import Path

from classic.metrics import MetricsLogger


class MetricsCallback:
    """A ``transformers.TrainerCallback`` forwarding TRL's logs to :class:`MetricsLogger`.

    A stage resumed from checkpoint N replays steps N+1.. that were logged before the interruption;
    resuming is exact, so those lines are already in ``metrics.jsonl`` and are not written twice
    (the steps up to the last one logged under ``prefix`` are skipped).
    """

    def __new__(cls, logger: MetricsLogger, prefix: str):
        from transformers import TrainerCallback

        class _CB(TrainerCallback):
            logged_up_to = 0

            def on_train_begin(self, args, state, control, **kwargs):
                if state.global_step > 0:
                    self.logged_up_to = logger.last_step(prefix)

            def on_log(self, args, state, control, logs=None, **kwargs):
                scalars = {
                    f"{prefix}{k}": float(v)
                    for k, v in (logs or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                if scalars and int(state.global_step) > self.logged_up_to:
                    logger.log(int(state.global_step), scalars)

        return _CB()


def save_final(trainer, tokenizer, path: Path):
    """Save the trained model (LoRA merged into the weights) and tokenizer from the main process
    (``Trainer.save_model`` gathers ZeRO-3 shards); returns the model (merged, on every rank)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(path)
    else:
        trainer.save_model(str(path))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(path)
    trainer.accelerator.wait_for_everyone()
    return model
