"""Training an aLoRA or LoRA validator adapter: setup / train / evaluate / save.

aLoRA: the item and requirement come before the invocation, so their hidden states are the base
model's. Their key/value cache is computed once without gradients (kept across epochs when it fits
the memory budget) and forward + backward run only over invocation + label tokens. Loss and
gradients equal the full-sequence forward; the cost falls by roughly prefix/suffix length.
LoRA: ordinary full-sequence training, loss on label tokens only.
Several processes (accelerate launch, torchrun) split the items between them (distributed.py); the
state after each epoch (resume.py's Checkpointer) lets an interrupted run continue (`resume_state`).
Judging the epochs (evaluation.py) and writing the adapter directory (artifacts.py) live beside it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from validora.adapter.saving import check_target, staged_directory
from validora.core.calibration import expected_calibration_error, top_label
from validora.core.data import Example, labels_of, load_jsonl, stratified_split
from validora.core.metrics import Metrics
from validora.core.models import LoadedModel, check_target_modules, load_base_model
from validora.core.prompting import Encoded, PromptFormat, load_promptfile
from validora.errors import ConfigError, TrainingDiverged
from validora.score import scoring
from validora.score.packing import Segment, pack
from validora.train.artifacts import adapter_info, write_adapter
from validora.train.distributed import Shard, all_sum, gather_rows, shard_of, sum_gradients
from validora.train.prefix_store import PrefixStore
from validora.train.recipe import Recipe, TrainConfig, resolve_epochs
from validora.train.report import EpochRecord, Progress, SilentProgress, StepLoss, TrainReport
from validora.train.resume import Checkpointer, RunState
from validora.train.validation import calibrate, judge

# Re-exported: callers import the report types from here.
__all__ = ["EpochRecord", "Progress", "Recipe", "SilentProgress", "StepLoss", "TrainConfig", "TrainReport"]
__all__ += ["Trainer", "train"]


def lr_factor(update: int, total: int, warmup_fraction: float) -> float:
    """The learning-rate multiplier at optimizer update `update` of `total`: linear warm-up, then decay."""
    warmup = max(1, int(total * warmup_fraction))
    if update < warmup:
        return (update + 1) / warmup
    return max(0.0, (total - update) / max(1, total - warmup))


class Trainer:
    """One training run: `setup()`, `train()`, `save()`; `evaluate()` works at any point."""

    def __init__(
        self,
        config: TrainConfig,
        progress: Progress | None = None,
        loaded: LoadedModel | None = None,
        *,
        keep_state: bool = False,
        resume_state: bool = False,
    ):
        """`keep_state`: write the training state beside the outfile after every epoch (the CLI does);
        `resume_state`: continue from that state if there is one (else start with a notice)."""
        self.config = config
        self.recipe: Recipe = config.recipe  # re-exported here with TrainConfig
        self.progress = progress or SilentProgress()
        self.checkpointer = Checkpointer(config, keep=keep_state, resume=resume_state, log=self.progress.log)
        self._loaded = loaded

    @property
    def uses_cache(self) -> bool:
        """aLoRA runs its loss over invocation + label on top of cached prefixes; LoRA, or aLoRA with
        prefix_cache off, runs the plain full-sequence forward."""
        return self.recipe.adapter == "alora" and self.recipe.prefix_cache

    # ----- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Each job in its own step, in this order: data, model, optimizer and schedule, prefixes."""
        check_target(Path(self.config.outfile), overwrite=self.config.overwrite)
        self._setup_data()
        self.run = RunState()  # the loop's bookkeeping: from the first epoch, or as the saved state left it
        saved = self.checkpointer.read()  # before the model loads: another run's state is refused fast
        self._setup_model()
        self._setup_optimizer()
        self._setup_prefixes()
        if saved is not None:
            self.run = self.checkpointer.restore(
                saved, model=self.peft, optimizer=self.optimizer, scheduler=self.lr_scheduler,
                shard=self.shard, epochs=self.epochs,
            )  # fmt: skip

    def _setup_data(self) -> None:
        """Everything read from disk before the model loads, so bad input fails fast."""
        cfg, r = self.config, self.recipe
        examples = load_jsonl(cfg.datafile)
        self.labels = labels_of(examples)
        self.train_examples, self.val_examples = stratified_split(examples, r.val_fraction, r.seed)
        self.invocation = load_promptfile(cfg.promptfile) if cfg.promptfile else None

    def _setup_model(self) -> None:
        """The base model, its prompt format, and a fresh adapter (initialised from the seed)."""
        from accelerate import Accelerator
        from peft import LoraConfig, get_peft_model

        cfg, r = self.config, self.recipe
        self.accelerator = Accelerator(cpu=cfg.device == "cpu")
        self.shard: Shard = shard_of(self.accelerator)
        device = cfg.device if cfg.device != "auto" else str(self.accelerator.device.type)
        self.progress.log(
            f"Loading base model {cfg.basemodel or 'smollm2-135m-instruct (embedded)'} on {device}"
        )
        loaded = self._loaded or load_base_model(
            cfg.basemodel, device=device, trust_remote_code=cfg.trust_remote_code
        )
        self.spec = loaded.spec
        self.tokenizer = loaded.tokenizer
        self.fmt = PromptFormat(self.tokenizer, self.labels, self.invocation, r.max_length)

        torch.manual_seed(r.seed)
        lora = LoraConfig(
            r=r.rank,
            lora_alpha=r.lora_alpha,
            lora_dropout=r.dropout,
            target_modules=list(r.target_modules),
            task_type="CAUSAL_LM",
            alora_invocation_tokens=self.fmt.invocation_ids if r.adapter == "alora" else None,
        )
        check_target_modules(loaded.model, r.target_modules)
        try:
            self.peft = get_peft_model(loaded.model, lora)
        except ValueError as exc:  # PEFT's NoMatchingPeftModuleError: target_modules not in this model
            raise ConfigError(f"target_modules {list(r.target_modules)}: {exc}") from exc

    def _setup_optimizer(self) -> None:
        """AdamW over the adapter weights; the schedule: linear warm-up, then linear decay to zero."""
        r = self.recipe
        params = [p for p in self.peft.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=r.learning_rate, weight_decay=0.0)
        # Not wrapped in DDP: each process sums the adapter's gradients itself (distributed.py).
        self.device = self.accelerator.device
        self.model = self.peft.to(self.device)
        self.optimizer = self.accelerator.prepare(optimizer)
        self.params = params
        per_epoch = math.ceil(self.n_batches / r.grad_accum)
        self.epochs = resolve_epochs(r.epochs, per_epoch)
        total = self.epochs * per_epoch
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda update: lr_factor(update, total, r.warmup_fraction)
        )

    def _setup_prefixes(self) -> None:
        """Tokenise every item; on the cached path, compute their caches once if they fit the budget."""
        self.train_enc = self._encode(self.train_examples)
        self.val_enc = self._encode(self.val_examples)
        self.truncated_items = sum(e.truncated > 0 for e in (*self.train_enc, *self.val_enc))
        # Each process caches only the items it owns (distributed.Shard): it alone computes their losses.
        splits = {
            name: {i: e.prefix for i, e in enumerate(enc) if self.shard.owns(i)}
            for name, enc in (("train", self.train_enc), ("val", self.val_enc))
        }
        self.prefixes = PrefixStore(self.peft, splits, self.fmt.pad_id, self.device)
        self.cache_seconds = 0.0
        if not self.uses_cache:
            return
        budget = self.config.cache_memory_gb
        fits = self.prefixes.fits(budget)
        over = f"over cache_memory_gb={budget}, recomputed per batch"
        how = "kept across epochs" if fits else over
        need = f"{self.prefixes.need_gb():.2f} GiB for {self.prefixes.tokens} tokens"
        self.progress.log(f"Prefix caches: {need}; {how}.")
        if fits:
            started = time.perf_counter()
            self.progress.start("Caching prefixes", len(self.prefixes))
            self.prefixes.fill(
                max(self.recipe.eval_batch_size, self.recipe.batch_size), self.progress.advance
            )
            self.cache_seconds = time.perf_counter() - started

    def _encode(self, examples: Sequence[Example]) -> list[Encoded]:
        """Each example's prompt ids, carrying its gold label."""
        return [replace(self.fmt.encode(e.item, e.requirement), label=e.label) for e in examples]

    @property
    def n_batches(self) -> int:
        """Global batches per epoch: batch_size items per process, batch_size x processes in all."""
        return math.ceil(len(self.train_examples) / (self.recipe.batch_size * self.shard.world))

    # ----- the loss ----------------------------------------------------------------------------------
    def loss_step(self, keys: Sequence[int], batch: Sequence[Encoded]) -> StepLoss:
        """The objective over the gold label + end tokens (label-smoothed), their plain NLL, their count."""
        rows = [[Segment(self.fmt.invocation_ids, [self.fmt.label_ids[e.label]])] for e in batch]
        if self.uses_cache:
            prefix = self.prefixes.get("train", keys)
            packed = pack(rows, self.fmt.pad_id, cache=prefix.mask)
        else:
            prefix = scoring.empty_prefix(len(batch), self.device)
            packed = pack(rows, self.fmt.pad_id, leads=[e.prefix for e in batch])
        nll, spread = scoring.target_losses(scoring.suffix_forward(self.model, prefix, packed), packed)
        eps = self.recipe.label_smoothing
        objective = nll.mean() if eps == 0 else ((1 - eps) * nll + eps * spread).mean()
        return StepLoss(objective, float(nll.detach().mean()), int(nll.numel()))

    # ----- train / evaluate --------------------------------------------------------------------------
    def train(self) -> TrainReport:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        r, run = self.recipe, self.run
        first = run.epoch + 1
        started = time.perf_counter()
        self.progress.start("Training", (self.epochs - run.epoch) * self.n_batches)
        for epoch in range(first, self.epochs + 1):
            epoch_start = time.perf_counter()
            loss_sum, token_sum = self._train_epoch(epoch)
            metrics, val_loss, val_loglik = self.evaluate()
            record = EpochRecord(
                epoch=epoch,
                train_loss=loss_sum / max(token_sum, 1),
                val_loss=val_loss,
                val_accuracy=metrics.accuracy,
                val_macro_f1=metrics.macro_f1,
                seconds=time.perf_counter() - epoch_start,
            )
            run.records.append(record)
            self.progress.log(
                f"epoch {epoch}: train loss {record.train_loss:.4f}  val loss {val_loss:.4f}  "
                f"accuracy {metrics.accuracy:.3f}  macro-F1 {metrics.macro_f1:.3f}"
            )
            score = (metrics.macro_f1 + metrics.accuracy, -val_loss)
            if not math.isfinite(val_loss):  # its predictions are argmaxes over NaN: never the best
                self.progress.log(f"epoch {epoch}: validation loss is {val_loss}; it cannot be chosen.")
                run.stale += 1
            elif run.best_score is None or score > run.best_score:
                run.best_score, run.best_epoch, run.best_loglik, run.stale = score, epoch, val_loglik, 0
                run.best_state = {
                    k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft).items()
                }
            else:
                run.stale += 1
                if r.early_stop and run.stale >= r.early_stop:
                    self.progress.log(f"Stopping early: no improvement for {run.stale} epoch(s).")
                    break
            if epoch < self.epochs:  # not the last: a kill while saving resumes from the one before
                self.checkpointer.keep(
                    run, model=self.peft, optimizer=self.optimizer, scheduler=self.lr_scheduler, shard=self.shard
                )  # fmt: skip
        records, best_loglik = run.records, run.best_loglik
        if run.best_state is None or best_loglik is None:
            raise self._diverged("no epoch had a finite validation loss")
        best_metrics = judge(best_loglik, self.val_enc, self.fmt)[0]  # as evaluate() gave it at that epoch
        set_peft_model_state_dict(self.peft, run.best_state)
        self.model.eval()
        splits = (self.train_examples, self.val_examples)
        fitted = calibrate(
            best_loglik, self.val_gold, splits, self.fmt.labels, r.lexical_weight, self.progress.log
        )
        self.readout, self.val_probs = fitted.readout, fitted.val_probs
        seconds = time.perf_counter() - started
        self.report = TrainReport(
            epochs=records,
            best_epoch=run.best_epoch,
            metrics=best_metrics,
            n_train=len(self.train_enc),
            n_val=len(self.val_enc),
            truncated_items=self.truncated_items,
            train_seconds=seconds,
            cache_seconds=self.cache_seconds,
            examples_per_second=len(self.train_enc)
            * (len(records) + 1 - first)
            / (seconds + self.cache_seconds),
            prefix_cache="kept across epochs"
            if self.prefixes.kept
            else ("per batch" if self.uses_cache else "off"),
            temperature=fitted.temperature,
            val_ece=expected_calibration_error(*top_label(self.val_probs, self.val_gold)),
            lexical=fitted.lexical,
        )
        return self.report

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this epoch's global batches; (sum, count) of the gold tokens' NLL, all processes'.
        Each process backpropagates its own items' token losses over the global batch's token count and
        the gradients are summed (distributed.py): the update is the one-process mean of the batch."""
        r, shard = self.recipe, self.shard
        self.model.train()
        order = list(range(len(self.train_enc)))
        random.Random(r.seed * 1000 + epoch).shuffle(order)
        size = r.batch_size * shard.world
        batches = [order[b * size : (b + 1) * size] for b in range(self.n_batches)]
        loss_sum, token_sum, bad = 0.0, 0, ""
        for i, keys in enumerate(batches):
            group_start = i - i % r.grad_accum
            group_size = min(r.grad_accum, len(batches) - group_start)  # the last group may be short
            where = f"epoch {epoch}, batch {i + 1} of {len(batches)}"
            if mine := shard.mine(keys):  # a process may own none of a batch: it still joins the sum
                loss, value, n_tokens = self.loss_step(mine, [self.train_enc[k] for k in mine])
                if not math.isfinite(value):
                    bad = bad or f"the training loss is {value} at {where}"
                    if shard.world == 1:
                        raise self._diverged(bad)
                everyone = sum(len(self.fmt.label_ids[self.train_enc[k].label]) for k in keys)
                self.accelerator.backward((loss if n_tokens == everyone else loss * (n_tokens / everyone)) / group_size)  # fmt: skip
                loss_sum += value * n_tokens
                token_sum += n_tokens
            if (i + 1) % r.grad_accum == 0 or i + 1 == len(batches):
                if sum_gradients(self.params, shard, float(bool(bad))):
                    raise self._diverged(bad or f"the training loss is not finite in another process at {where}")  # fmt: skip
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if not self._weights_finite():
                    raise self._diverged(f"the adapter weights became NaN or infinite after {where}")
            self.progress.advance()
        loss_sum, tokens = all_sum([loss_sum, token_sum], shard)
        return loss_sum, int(tokens)

    def _weights_finite(self) -> bool:
        """Cheap: one fused max-abs per tensor (as clip_grad_norm_ fuses), NaN or inf if any weight is."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return bool(torch.stack(torch._foreach_norm(params, math.inf)).isfinite().all())

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"Training diverged: {what}. Nothing was saved; any earlier adapter at {self.config.outfile} "
            f"is untouched. Try a lower learning_rate than {self.recipe.learning_rate:g}.",
            option="learning_rate",
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[Metrics, float, torch.Tensor]:
        """Validation metrics by label scoring, the validation loss (per label token) and the [N, K]
        label log-likelihoods (the temperature is fitted on the best epoch's)."""
        self.model.eval()
        bs = self.recipe.eval_batch_size
        mine = self.shard.mine(range(len(self.val_enc)))  # this process's items, gathered back below
        rows = [torch.empty(0, len(self.fmt.labels))]
        for start in range(0, len(mine), bs):
            keys = mine[start : start + bs]
            if self.recipe.adapter == "alora":
                ll = scoring.label_loglik(self.peft, self.fmt, self.prefixes.get("val", keys))
            else:
                ll = scoring.full_loglik(self.peft, self.fmt, [self.val_enc[k].prefix for k in keys])
            rows.append(ll.float().cpu())
        loglik = gather_rows(torch.cat(rows), mine, len(self.val_enc), self.shard)
        return (*judge(loglik, self.val_enc, self.fmt), loglik)

    @property
    def val_gold(self) -> list[int]:
        return [self.fmt.labels.index(e.label) for e in self.val_enc]

    # ----- save --------------------------------------------------------------------------------------
    def save(self, outfile: str | Path | None = None) -> Path:
        """Write the complete adapter directory; the target changes only when everything is written."""
        target = Path(outfile or self.config.outfile)
        if not self.accelerator.is_main_process:
            return target
        info = adapter_info(
            self.config, epochs=self.epochs, base_model=self.spec.name, fmt=self.fmt, report=self.report,
            requirements=any(e.requirement for e in (*self.train_examples, *self.val_examples)),
            readout=self.readout,
        )  # fmt: skip
        with staged_directory(target, overwrite=self.config.overwrite) as staging:
            write_adapter(staging, self.peft, info, self.report, self.readout, self.val_probs, self.val_gold)
        self.report.outfile = str(target)
        self.checkpointer.finish()  # the run is complete: nothing to resume
        return target


def train(config: TrainConfig, progress: Progress | None = None) -> TrainReport:
    """Setup, train and save in one call."""
    trainer = Trainer(config, progress)
    trainer.setup()
    report = trainer.train()
    trainer.save()
    return report
