"""The training loop: config -> components -> loop.

    components = build(cfg)                  # model, data, optimizer, schedule, precision, checkpoints, metrics
    resume from the newest complete checkpoint (or spec.resumeFrom)
    while step < total_steps:
        train_step(step)                     # grad accumulation over this step's micro-batches
        evaluate every evaluation.everySteps (not once a rank got SIGTERM: the grace period is for the save)
        log, then checkpoint every checkpointing.everySteps
        on SIGTERM: checkpoint this step and exit 143
    checkpoint the last step, export final/
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path

import torch

from helixrun.resolve import ResolvedRun
from helixrun_trainer import distributed
from helixrun_trainer.checkpoint import CheckpointInfo, CheckpointManager, checkpoint_bytes, durable_write
from helixrun_trainer.data import BatchOrder, Prefetch, StepBatches, eval_batches, mix_seed, to_device
from helixrun_trainer.early_stopping import EarlyStopping
from helixrun_trainer.errors import EXIT_OK
from helixrun_trainer.faults import pause_point
from helixrun_trainer.metrics import ProgressLog, PrometheusExporter, RunRecords
from helixrun_trainer.optim import build_optimizer, build_scheduler, schedule_kwargs
from helixrun_trainer.precision import Precision
from helixrun_trainer.preemption import Preemption
from helixrun_trainer.recipes import get_recipe
from helixrun_trainer.run_status import ApiEndpoint, RunStatusReporter
from helixrun_trainer.state import RunState, TrainState, seed_all, set_deterministic

log = logging.getLogger(__name__)


def total_steps_for(training, steps_per_epoch: float) -> int:
    if training.max_steps:
        return training.max_steps
    return max(1, math.ceil((training.epochs or 1) * steps_per_epoch))


class Trainer:
    """Owns the components; `run()` is the loop."""

    def __init__(self, cfg: ResolvedRun, *, metrics_port: int | None = -1):
        # A smoke run (spec.smokeTest, or --tiny locally) trains the recipe's tiny models on generated data.
        self.cfg, self.tiny = cfg, cfg.smoke_test
        spec = cfg.typed_spec
        self.spec, self.plan = spec, cfg.plan
        training = spec.training
        set_deterministic()
        # Metrics answer from the start: rendezvous, data and a model download can outlast the stall
        # alert's window, and a silent port reads as a dead trainer. One port per local rank, so
        # a pod's per-GPU processes do not collide.
        placement = distributed.read_env(os.environ)
        port = spec.metrics.port if metrics_port == -1 else metrics_port
        self.prom = PrometheusExporter(run=cfg.name, namespace=cfg.namespace, rank=placement.rank,
                                       port=port + placement.local_rank if port else port,
                                       cuda=placement.device.type == "cuda")
        self.env = env = distributed.init(sharded=distributed.is_sharded(self.plan))
        if env.device.type == "cuda" and getattr(self.plan, "tf32", False):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.seed = training.seed if training.seed is not None else 42
        if self.plan.distributed == "deepspeed":
            log.info("ZeRO-%d%s plan: running it on FSDP2 (sharded gradients and optimizer state)",
                     self.plan.zero_stage or 2, " with CPU offload" if self.plan.offload else "")

        # Model and data: the recipe's part. Same init on every rank (DDP also broadcasts).
        self.recipe = get_recipe(spec.recipe)
        # Data first: a bad path fails in seconds, before a model download.
        self.data = self.recipe.build_data(cfg, self.tiny, Path(cfg.paths.data))
        seed_all(self.seed)
        model = self.recipe.build_model(cfg, self.tiny)
        if self.plan.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()

        # Batches: token budget when the plan counts tokens and the recipe gives lengths.
        world = env.world_size
        grad_accum = self.plan.grad_accum
        if world != self.plan.world_size:
            per_rank = self.plan.micro_batch_tokens or self.plan.micro_batch
            grad_accum = max(1, math.ceil(self.plan.global_batch / (per_rank * world)))
            log.warning("running on %d ranks, the plan assumed %d: gradient accumulation %d -> %d",
                        world, self.plan.world_size, self.plan.grad_accum, grad_accum)
        self.grad_accum = grad_accum
        tokens = self.plan.global_batch_unit == "tokens" and self.data.lengths is not None
        self.max_tokens = self.plan.micro_batch_tokens if tokens else None
        order = BatchOrder(len(self.data.train), self.seed,
                           lengths=self.data.lengths if tokens or self.data.length_sorted else None,
                           max_tokens=self.max_tokens, batch_size=self.plan.micro_batch,
                           length_sorted=self.data.length_sorted)
        self.batches = StepBatches(order, self.data.train, self.data.collate, seed=self.seed,
                                   grad_accum=grad_accum, world_size=world, rank=env.rank)
        self.total_steps = total_steps_for(training, self.batches.steps_per_epoch())
        # On a GPU, collate the next step on a thread while this one computes (HELIXRUN_PREFETCH=0/1 overrides).
        prefetch = os.environ.get("HELIXRUN_PREFETCH", "1" if env.device.type == "cuda" else "0") == "1"
        self.prefetch = Prefetch(self.batches, last_step=self.total_steps,
                                 pin_memory=env.device.type == "cuda") if prefetch else None

        # Distribution, optimizer, schedule, precision.
        self.model = distributed.wrap(model, self.plan, env,
                                      find_unused_parameters=getattr(self.recipe, "find_unused_parameters", False))
        self.module = distributed.unwrap(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, training)
        self.scheduler = build_scheduler(self.optimizer, schedule_kwargs(training, self.total_steps))
        self.precision = Precision(self.plan.precision, training.precision, env.device)
        self.clip = training.gradient_clip
        self.state = TrainState()
        self.run_state = RunState(model=self.model, module=self.module, optimizer=self.optimizer,
                                  scheduler=self.scheduler, precision=self.precision, batches=self.batches,
                                  recipe=self.recipe, train=self.state, sharded=self.sharded, rank=env.rank,
                                  seed=self.seed)
        # Dropout and other global draws differ per rank, reproducibly.
        seed_all(mix_seed(self.seed, "rank", env.rank))

        ck = spec.checkpointing
        best = ck.keep_best if ck and ck.keep_best else None
        self.checkpoints = CheckpointManager(
            cfg.paths.checkpoints, env, keep_last=(ck.keep_last if ck and ck.keep_last else 3),
            best_metric=best.metric if best else None, best_mode=(best.mode if best and best.mode else "min"),
            archive_every=ck.archive_every_steps if ck else None,
            async_save=bool(getattr(self.plan, "async_checkpoint", False))
            or os.environ.get("HELIXRUN_ASYNC_CHECKPOINT", "") == "1")
        self.checkpoint_every = (ck.every_steps if ck and ck.every_steps else 500)
        ev = spec.evaluation
        self.eval_every = ev.every_steps if ev and ev.every_steps else None
        self.early_stopping = EarlyStopping.from_spec(ev)
        self.log_every = training.log_every_steps or 10

        # Rank 0 reports step, loss and the last checkpoint into the TrainingRun (kubectl get tr); no-op locally.
        self.run_status = RunStatusReporter(ApiEndpoint.in_cluster() if env.is_main else None, cfg.namespace, cfg.name)
        self.prom.info(recipe=spec.recipe, pool=cfg.pool.name, method=self.plan.method, precision=self.precision.name)
        self.prom.set("helixrun_train_total_steps", self.total_steps)
        for name in (ev.metrics if ev and ev.metrics else []):  # NaN until the first evaluation
            self.prom.set("helixrun_eval_metric", float("nan"), metric=f"eval_{name}")
        self.resumed_from = 0
        self._exported_checkpoint_step: int | None = None

    # -- checkpoint round trip ------------------------------------------------

    @property
    def sharded(self) -> bool:
        """FSDP: model and optimizer are sharded over ranks and saved with torch.distributed.checkpoint."""
        return distributed.is_sharded(self.plan) and self.env.initialized

    def save(self, reason: str = "") -> None:
        t0 = time.monotonic()
        meta = {"recipe": self.spec.recipe, "model": self.spec.model.name, "revision": self.spec.model.revision,
                "method": self.plan.method, "init": self.spec.model.init, "grad_accum": self.grad_accum,
                "tiny": self.tiny, "reason": reason}
        self.checkpoints.save(self.state.step, shared=self.run_state.shared, part=self.run_state.part(),
                              metrics=dict(self.state.eval_metrics) if self.state.last_eval_step == self.state.step else {},
                              meta=meta, sharded=self.run_state.save_sharded if self.sharded else None)
        self.prom.observe("helixrun_checkpoint_save_duration_seconds", time.monotonic() - t0)  # the blocking part
        self._export_checkpoint()

    def _export_checkpoint(self) -> None:
        saved = self.checkpoints.last_saved
        if saved is not None and saved.step != self._exported_checkpoint_step:
            self._exported_checkpoint_step = saved.step
            self._set_checkpoint_gauges(saved)
            self.run_status.checkpoint(saved.step, str(saved.path))

    def _set_checkpoint_gauges(self, info: CheckpointInfo) -> None:
        self.prom.set("helixrun_checkpoint_size_bytes", checkpoint_bytes(info))
        self.prom.set("helixrun_checkpoint_last_step", info.step)
        self.prom.set("helixrun_checkpoint_last_timestamp_seconds", info.manifest.get("created_unix", time.time()))

    def resume(self) -> None:
        self.checkpoints.clean_stale()
        info = self.checkpoints.find_resume(self.spec.resume_from)
        if info is None:
            return
        shared, part = self.checkpoints.load(info)
        self.run_state.load(shared, part, info.path)
        self.state.restarts += 1
        self.resumed_from = self.state.step
        self.prom.set("helixrun_train_resumed_from_step", self.state.step)
        self._set_checkpoint_gauges(info)  # the last checkpoint until the next save is the one loaded
        self.prom.inc("helixrun_train_restarts")
        log.info("resumed from %s (step %d)", info.path, self.state.step)

    # -- one optimizer step -----------------------------------------------------

    def _no_sync(self, last: bool):
        """DDP reduces gradients once, on the last micro-batch. FSDP (ZeRO) plans reduce-scatter on every
        micro-batch, as DeepSpeed ZeRO-2 does: deferring it would hold full unsharded gradients between
        micro-batches, memory the plan gave to activations."""
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def train_step(self, step: int) -> dict:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, units, tokens, samples = 0.0, 0, 0, 0
        micro = self.prefetch.for_step(step) if self.prefetch else list(self.batches.for_step(step))
        for i, (batch, generator) in enumerate(micro):
            batch = to_device(batch, self.env.device)
            with self._no_sync(i == len(micro) - 1):
                with self.precision.autocast():
                    out = self.recipe.compute_loss(self.model, batch, generator)
                # Sum over units here; divided by the global unit count below (uneven batches weigh right).
                self.precision.backward(out.loss.float() * out.loss_units)
            loss_sum += float(out.loss.detach().float()) * out.loss_units
            units, tokens, samples = units + int(out.loss_units), tokens + int(out.num_tokens), samples + int(out.num_samples)
        g_loss, g_units = distributed.all_reduce_sum(self.env, [loss_sum, units])
        self.precision.unscale(self.optimizer)
        # DDP/FSDP averaged gradients over ranks; rescale so the gradient is the mean over every unit of the step.
        scale = self.env.world_size / max(g_units, 1)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip if self.clip else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.precision.step(self.optimizer)
        self.scheduler.step()
        return {"loss": g_loss / max(g_units, 1), "lr": lr, "grad_norm": float(grad_norm),
                "tokens": tokens, "samples": samples}

    def evaluate(self) -> dict[str, float]:
        if not self.data.eval:
            return {}
        self.module.eval()
        batches = (to_device(b, self.env.device) for b in eval_batches(
            self.data.eval, self.data.collate, seed=self.seed, lengths=self.data.eval_lengths,
            max_tokens=self.max_tokens, batch_size=self.plan.micro_batch))
        # fork_rng: evaluation never moves the training RNG streams.
        with torch.random.fork_rng(devices=[self.env.device] if self.env.device.type == "cuda" else []), \
                torch.no_grad(), self.precision.autocast():
            scores = self.recipe.evaluate(self.module, batches)
        self.module.train()
        return {f"eval_{k}": float(v) for k, v in scores.items()}

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        self.resume()
        self._write_run_records()
        progress = ProgressLog(self.total_steps, self.state.step, enabled=self.env.is_main)
        try:
            with Preemption() as preempt:
                while self.state.step < self.total_steps and not self._stopped_early():
                    t0 = time.monotonic()
                    out = self.train_step(self.state.step)
                    record = self._account(out, time.monotonic() - t0)
                    step = record["step"]
                    pause_point(self.checkpoints.root, step, "trained", self.env.rank)
                    if self._evaluation_due(step) and not self._stop_agreed(preempt.requested):
                        record.update(self._evaluate_at(step, progress))
                    self._log(record, progress)
                    pause_point(self.checkpoints.root, step, "after-step", self.env.rank)
                    if self._checkpoint_or_stop(step, preempt.requested):
                        return self._exit_preempted(preempt, progress)
                if self._commit_last_save(preempt):
                    return self._exit_preempted(preempt, progress)
            self._finish()
            return EXIT_OK
        finally:
            progress.close()
            if self.prefetch:
                self.prefetch.close()
            self.records.close()
            self.prom.close()
            self.run_status.close()

    # -- the loop's parts ---------------------------------------------------------

    def _write_run_records(self) -> None:
        records = Path(self.cfg.paths.records)
        self.records = RunRecords(records, self.state.step, enabled=self.env.is_main)
        if self.env.is_main:
            durable_write(records / "config.yaml", lambda f: f.write(self.cfg.to_yaml().encode()))
            if self.data.split_mapping is not None:
                text = json.dumps(self.data.split_mapping, indent=1)
                durable_write(records / "split_mapping.json", lambda f: f.write(text.encode()))

    def _account(self, out: dict, dt: float) -> dict:
        """Advance the counters past the step just taken; its metrics record."""
        self.state.step += 1
        self.state.tokens_seen += out["tokens"]
        self.state.samples_seen += out["samples"]
        return {"step": self.state.step, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                "tokens_per_second": out["tokens"] / dt if dt > 0 else 0.0,
                "samples_per_second": out["samples"] / dt if dt > 0 else 0.0,
                "epoch": self.batches.epoch_of(self.state.step - 1), "_seconds": dt}

    def _stopped_early(self) -> bool:
        return self.early_stopping is not None and self.early_stopping.stopped(self.state)

    def _evaluation_due(self, step: int) -> bool:
        return bool(self.eval_every) and (step % self.eval_every == 0 or step == self.total_steps)

    def _stop_agreed(self, signalled: bool) -> bool:
        """Whether any rank was signalled. A preempted step skips its evaluation: the grace period before
        SIGKILL is sized for the save, and a long evaluation (generation on a large model) would eat it."""
        return distributed.flags_any(self.env, signalled)[0]

    def _evaluate_at(self, step: int, progress: ProgressLog) -> dict:
        self.state.eval_metrics = self.evaluate()
        self.state.last_eval_step = step
        if self.early_stopping is not None:
            self.early_stopping.observe(self.state, self.state.eval_metrics)
            if self._stopped_early():
                progress.message(f"early stopping at step {step}: {self.early_stopping.reason(self.state)}")
        for k, v in self.state.eval_metrics.items():
            self.prom.set("helixrun_eval_metric", v, metric=k)
        progress.message(f"eval at step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in self.state.eval_metrics.items()))
        return self.state.eval_metrics

    def _log(self, record: dict, progress: ProgressLog) -> None:
        dt = record.pop("_seconds")
        self._export_step(record, dt, progress)
        step = record["step"]
        logged = step % self.log_every == 0 or step == self.total_steps or "eval_loss" in record
        if logged:
            self.records.write(record)
        progress.update(record, logged)

    def _checkpoint_or_stop(self, step: int, signalled: bool) -> bool:
        """Checkpoint when due or when any rank was signalled (then True: the caller exits)."""
        # One all-reduce per step: did any rank get SIGTERM; is any rank still writing an async save.
        stop, writing = distributed.flags_any(self.env, signalled, not self.checkpoints.part_written())
        self.checkpoints.finish_if_ready(all_ranks_written=not writing)
        self._export_checkpoint()
        if stop or step % self.checkpoint_every == 0 or step == self.total_steps or self._stopped_early():
            self.save("preempted" if stop else "periodic")
        if stop:
            self.checkpoints.wait()
            self._export_checkpoint()
        return stop

    def _commit_last_save(self, preempt: Preemption) -> bool:
        """Commit the last step's save while SIGTERM is still handled: an async save may still be writing, and
        the default handler would kill the process before the commit. True when any rank was signalled."""
        self.checkpoints.wait()
        self._export_checkpoint()
        return self._stop_agreed(preempt.requested)

    def _exit_preempted(self, preempt: Preemption, progress: ProgressLog) -> int:
        progress.message(f"preempted: checkpoint at step {self.state.step} committed, exiting {preempt.exit_code}")
        return preempt.exit_code

    def _finish(self) -> None:
        if self.plan.distributed in ("none", "ddp"):
            distributed.check_replicas_agree(self.env, self.module)
        self.export_final()

    def _export_step(self, record: dict, dt: float, progress: ProgressLog) -> None:
        p = self.prom
        p.set("helixrun_train_step", record["step"])
        p.set("helixrun_train_loss", record["loss"])
        p.set("helixrun_train_learning_rate", record["lr"])
        p.set("helixrun_train_grad_norm", record["grad_norm"])
        p.set("helixrun_train_tokens_per_second", record["tokens_per_second"])
        p.set("helixrun_train_samples_per_second", record["samples_per_second"])
        p.inc("helixrun_train_tokens", record["tokens_per_second"] * dt)
        p.observe("helixrun_train_step_duration_seconds", dt)
        eta = progress.eta(record["step"])
        p.set("helixrun_train_eta_seconds", 0.0 if math.isnan(eta) else eta)
        p.gpu_memory(self.env.device)
        self.run_status.progress(record["step"], self.total_steps, record["loss"], record["tokens_per_second"],
                                 force=record["step"] == self.total_steps)

    def export_final(self) -> None:
        """final/: the recipe's Hugging Face export, staged and renamed like a checkpoint."""
        root = Path(self.cfg.paths.checkpoints)
        final, tmp = root / "final", root / "final.tmp"
        module = self.module
        if self.sharded:  # gather full weights (every rank takes part), export from an unsharded copy on rank 0
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.env.is_main:
                module = self.recipe.build_model(self.cfg, self.tiny)
                module.load_state_dict(full)
                log.info("weights sha256=%s gathered from %d shard(s)", distributed.weights_digest(module),
                         self.env.world_size)
        if self.env.is_main:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            self.recipe.export(module, self.cfg, tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            log.info("exported %s", final)
        distributed.barrier(self.env)
def train(cfg: ResolvedRun, *, metrics_port: int | None = -1) -> int:
    trainer = Trainer(cfg, metrics_port=metrics_port)
    try:
        return trainer.run()
    finally:
        distributed.shutdown()
