"""One typed configuration tree shared by Python, YAML files and CLI overrides.

``Config`` holds one section per pipeline part. Its defaults are the RSPO paper's recipe for
a real model on a GPU (method.md §3a); the embedded gym's small-model values live in the
``gym`` preset (``rspo/configs/gym.yaml``). YAML files and ``--section.key value`` CLI
overrides are checked against the dataclass fields: unknown keys and bad values are errors
that name the key and the allowed values (a setting's choices are its ``Literal`` type).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it."""


#: experiment trackers ``run.report_to`` may name (``rspo.evaluation.trackers`` sends to them)
TRACKER_NAMES: tuple[str, ...] = ("tensorboard", "wandb", "mlflow")


def report_to_names(report_to: list[str] | str | None) -> list[str]:
    """``run.report_to`` as a list of lower-case names (a list, one name or a comma-separated
    string); ``none`` or empty gives []; ``all`` stays ``["all"]``."""
    if report_to is None:
        return []
    names = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    return [] if names in ([], ["none"]) else list(dict.fromkeys(names))


def check_report_to_names(report_to: list[str] | str | None) -> None:
    """A ConfigError for an unknown tracker name, or ``none``/``all`` mixed with names."""
    names = report_to_names(report_to)
    if names == ["all"]:
        return
    for n in names:
        if n in ("none", "all"):
            raise ConfigError(f"run.report_to: {n!r} cannot be combined with tracker names")
        if n not in TRACKER_NAMES:
            raise ConfigError(
                f"run.report_to: unknown tracker {n!r}; use any of {', '.join(TRACKER_NAMES)}, "
                "all (those installed) or none"
            )


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft); π_ref is the adapter-disabled base, no second model."""

    #: adapter rank r
    r: int = 16
    #: scaling numerator: the update is (alpha / r) · B A
    alpha: float = 32.0
    #: dropout on the adapter input during training
    dropout: float = 0.0
    #: module names to adapt (e.g. [q_proj, v_proj]) or "all-linear" (every linear but the output)
    target_modules: list[str] | str = "all-linear"


@dataclass
class ModelConfig:
    """The policy π_0 and the reference π_ref (``gym`` = the embedded base model)."""

    #: local model directory, hub id (needs network) or ``gym`` (selects the gym preset);
    #: required: null until set
    path: str | None = None
    #: reference policy for the regularizer; ``None`` = same as ``path`` (π_ref = π_0)
    ref_path: str | None = None
    #: run model code from the hub repo (off: only transformers' own classes)
    trust_remote_code: bool = False
    #: float32 | bfloat16 | float16 (LoRA only) | auto (bfloat16 on a CUDA device that
    #: supports it, else float32). float32 by default: bfloat16 weights round away updates
    #: of lr 5e-7 (the paper's) to most weights
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    #: LoRA adapters instead of full fine-tuning (needs the [peft] extra); null = full fine-tune
    lora: LoraConfig | None = None
    #: QLoRA: load the base in 4-bit NF4 (needs model.lora, a CUDA device and bitsandbytes)
    load_in_4bit: bool = False
    #: hold π_ref in memory for the whole run instead of loading it for each iteration's
    #: scoring (one load fewer per iteration; one more copy of the weights beside generation
    #: and training): auto (HF backend, weights at most 5% of the device's memory) | on (HF
    #: backend) | off; never for dynamic-RoPE models (their state changes with the inputs)
    keep_reference: Literal["auto", "on", "off"] = "auto"
    #: float32 linear layers of π_t and π_ref on the CPU: torch (F.linear, MKL; the default:
    #: the model's layers stay as loaded) | auto (oneDNN where this torch has it,
    #: single-process runs; opt-in, on in the gym preset; docs/benchmarks.md) | onednn
    #: (also under several processes; an error where it cannot). Results differ by float
    #: rounding only; GPUs are unaffected; rspo's HF judges always use auto
    cpu_linear: Literal["auto", "onednn", "torch"] = "torch"


@dataclass
class DataConfig:
    """Where prompts come from and how they are formatted."""

    #: JSONL file (``prompt`` or chat ``messages`` field), local HF dataset dir, or ``gym``;
    #: required: null until set
    prompts: str | None = None
    #: eval prompts (same formats); ``gym`` = the gym's eval split; required while
    #: evaluation.enabled
    eval_prompts: str | None = None
    #: number of train prompts (gym: how many to generate; files: take the first N; null =
    #: all of them)
    num_prompts: int | None = None
    #: number of held-out eval prompts
    num_eval_prompts: int = 64
    #: prompts per iteration: None = all every iteration, else consecutive slices (SPPO style)
    prompts_per_iteration: int | None = None
    #: prompts longer than this (tokens) are an error naming the prompt (1024 holds nearly
    #: all UltraFeedback prompts)
    max_prompt_length: int = 1024
    #: auto (use the tokenizer's chat template if it has one) | always | never
    chat_template: Literal["auto", "always", "never"] = "auto"


@dataclass
class GenerationConfig:
    """Sampling K responses per prompt from π_t."""

    #: hf | vllm
    backend: Literal["hf", "vllm"] = "hf"
    #: K, responses per prompt (the paper's 5)
    num_samples: int = 5
    #: response length cap (tokens); hitting it counts as truncation. 512 holds most chat
    #: answers of a 7B instruct model; raise it for long-form tasks
    max_new_tokens: int = 512
    #: sampling temperature (> 0: greedy samples of a prompt would all be the same; the
    #: paper's 0.7)
    temperature: float = 0.7
    #: nucleus sampling mass (1 = off; the paper's 0.9)
    top_p: float = 0.9
    #: top-k sampling (0 = off)
    top_k: int = 0
    #: sequences per generate call
    batch_size: int = 64
    #: HF backend: auto = rspo's sampling loop that drops finished rows from the KV cache
    #: (checked once per model against generate; on CPU and GPU: the one GPU measurement,
    #: benchmarks/results/gpu_smoke_h200, does not separate it from recorded log-probs) |
    #: generate = transformers' generate
    hf_decode: Literal["auto", "generate"] = "auto"
    #: record log π_t of each sample while sampling (HF backend), so scoring skips one
    #: forward: auto (float32 models) | on | off (always a separate forward)
    logprobs: Literal["auto", "on", "off"] = "auto"
    #: vllm backend: fraction of GPU memory the engine may take (the rest: training, judge)
    vllm_gpu_memory_utilization: float = 0.5
    #: vllm backend: extra vllm.LLM engine arguments, e.g. {tensor_parallel_size: 2}
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class JudgeConfig:
    """The preference model used for training (P(y ≻ y') on the K×K pairs)."""

    #: registered judge name (see docs/judges.md) or ``module:Class`` (a Judge subclass in
    #: the user's code; see run.imports); pairrm = the paper's judge
    name: str = "pairrm"
    #: judge constructor settings, e.g. {model: /path/to/reward-model}
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: query both presentation orders and average; None = only for order-sensitive judges
    both_orders: bool | None = None
    #: include the self-match (worth ½) in p̂_k = mean_j P(y_k ≻ y_j), as SPPO's code does
    include_self_match: bool = True
    #: on-disk cache of judgements under the run directory
    cache: bool = True
    #: judged pairs per judge call
    batch_size: int = 256


@dataclass
class ObjectiveConfig:
    """The RSPO loss: SPPO square loss + coef × regularizer (see docs/objectives.md)."""

    #: a name from rspo.objectives.PRESETS fills the fields below not set explicitly
    preset: str | None = None
    #: sppo | sppo_hard | inpo
    loss_type: Literal["sppo", "sppo_hard", "inpo"] = "sppo"
    #: mirror-descent step size η (target η(p̂ − ½); the paper's 1000)
    eta: float = 1000.0
    #: regularizer spec, e.g. "reverse_kl", "0.5*forward_kl + 0.5*reverse_kl[k2]"; "" = none.
    #: Default: the paper's headline, IS forward KL + 5 × reverse KL (preset rspo)
    regularizer: str = "forward_kl[ratio] + 10*reverse_kl[k2]"
    #: λ in L_SPPO + λ·R̂ (λ = 2ητ matches the regularized mirror step); 0.2 = the paper's
    #: λ = 0.1 in rspo's scale (preset rspo)
    coef: float = 0.2
    #: INPO's τ (loss_type inpo only)
    tau: float | None = None
    #: all K samples (general SPPO loss) | best_worst (official SPPO and RSPO code)
    samples: Literal["all", "best_worst"] = "best_worst"
    #: MPO: refresh the regularization anchor to the current policy every N iterations
    magnet_refresh: int | None = None
    #: adaptive coefficient: none | kl | length | kpi (follows objective.kpi; docs/operations.md)
    adaptive: Literal["none", "kl", "length", "kpi"] = "none"
    #: target of the adaptive coefficient (KL in nats, or mean length in tokens; kl and length)
    adaptive_target: float | None = None
    # --- issue 18: the KPI-driven coefficient (objective.adaptive: kpi; rspo.selfplay.kpi)
    #: adaptive kpi: the metrics.jsonl metric (higher = better) that steers λ: spot_win_rate,
    #: spot_lc_win_rate, win_rate, lc_win_rate, accuracy or win_rate_<subset label>
    kpi: str | None = None
    #: adaptive kpi: the most λ changes in one iteration (a factor; 2 = at most ×2 or ÷2)
    kpi_step: float = 2.0
    #: adaptive kpi: the KPI change that earns the full step (smaller changes, a fraction of
    #: it: λ_t = λ_{t−1} · kpi_step^(−clip(ΔKPI / kpi_scale, −1, 1))); ~ the KPI's noise or more
    kpi_scale: float = 0.05
    #: adaptive kpi: the smallest λ the rule may set
    coef_min: float = 0.01
    #: adaptive kpi: the largest λ the rule may set
    coef_max: float = 10.0
    #: R: estimators clip log importance weights / log ratios at R, e.g. forward_kl[ratio] =
    #: min(π_ref/π_θ, e^R) (the authors' IS forward KL; their loss names use R = 5, 7, 10)
    is_clip: float = 10.0


@dataclass
class TrainingConfig:
    """Optimisation of π_{t+1} from π_t on one iteration's dataset."""

    #: adamw | rmsprop (the paper's)
    optimizer: Literal["adamw", "rmsprop"] = "rmsprop"
    #: learning rate (constant; the paper's 5e-7 for a 7B model)
    lr: float = 5e-7
    #: decoupled weight decay
    weight_decay: float = 0.0
    #: passes over each iteration's dataset (the paper's one)
    epochs: int = 1
    #: samples per optimizer step (global; the paper's 64)
    batch_size: int = 64
    #: samples per forward/backward; batch_size must be a multiple. 2: small enough for a
    #: 7B model's long sequences, even for the pair losses (chosen and rejected together);
    #: raise it after ``rspo train --dry-run`` reports the peak memory
    micro_batch_size: int = 2
    #: gradient clipping (null = off)
    max_grad_norm: float | None = 1.0
    #: save resumable training state every N optimizer steps (0 = only at the end); a 7B
    #: model's state is ~90 GB, so not too often
    save_steps: int = 100
    #: recompute activations in the backward pass (less memory, one extra forward per step)
    gradient_checkpointing: bool = False
    #: turn off the model's dropout and MoE router noise while training (not model.lora.dropout):
    #: log π_t is scored without them, so with them log π_θ − log π_t ≠ 0 at θ = π_t
    disable_dropout: bool = True
    #: log-prob forwards (scoring and training) pack each prompt with all its responses in
    #: one row, the prompt computed once: auto (on CPU, when a probe matches the padded
    #: forward; off on CUDA, where the one measurement found a packed train step 1.6x
    #: slower: benchmarks/results/gpu_smoke_h200/hf.dry.json vs plain.dry.json) | on | off
    packing: Literal["auto", "on", "off"] = "auto"


@dataclass
class SpotCheckConfig:
    """Issue 18: an independent judge on a fixed subset of the eval pairs (docs/operations.md)."""

    #: the spot judge (registered name or ``module:Class``, e.g. openai, gym-skills-gold);
    #: required
    judge: str | None = None
    #: settings of the spot judge
    judge_kwargs: dict[str, Any] = field(default_factory=dict)
    #: eval prompts in the subset (all of them when there are fewer), each with its
    #: evaluation.num_samples pairs
    num_prompts: int = 64
    #: check every N iterations (iteration 0 and the last are always checked)
    every: int = 1
    #: draws the subset (the same prompts at every checked iteration)
    seed: int = 0
    #: the over-optimization alarm fires when spot_agreement falls below this; null = never
    #: on agreement
    min_agreement: float | None = 0.5
    #: price of 1M prompt tokens (spot_judge_cost = tokens × prices; 0 = no cost reported)
    prompt_token_price: float = 0.0
    #: price of 1M completion tokens
    completion_token_price: float = 0.0


@dataclass
class EvaluationConfig:
    """Per-iteration evaluation of π_{t+1} against π_ref on held-out prompts."""

    #: judge for evaluation (registered name or ``module:Class``); null = the training judge
    #: (judge.name with judge.kwargs)
    judge: str | None = None
    #: settings of the evaluation judge
    judge_kwargs: dict[str, Any] = field(default_factory=dict)
    #: evaluate after every iteration (and the initial policy)
    enabled: bool = True
    #: temperature 0 = greedy
    temperature: float = 0.0
    #: responses per eval prompt for the win rate: k > 1 pairs the policy's j-th sample with
    #: π_ref's j-th (both drawn with the same seed: common random numbers), estimating the
    #: game's P(π ≻ π_ref) with an interval over prompts
    num_samples: int = 1
    #: response length cap for evaluation (as generation.max_new_tokens)
    max_new_tokens: int = 512
    #: samples per eval prompt for diversity metrics (0 = skip)
    diversity_samples: int = 4
    #: temperature of the diversity samples
    diversity_temperature: float = 1.0
    #: "module:function" (prompt, response) -> bool for task accuracy; "" = none
    accuracy_fn: str = ""
    #: "module:function" prompt -> subset label; adds win_rate_<label> per subset; "" = none
    subset_fn: str = ""
    #: bootstrap resamples for the win-rate interval
    n_boot: int = 1000
    # issue 18 (rspo.selfplay.spot)
    #: spot check: an independent judge on a fixed subset of the eval pairs, the alarm's
    #: input (docs/operations.md); null = off
    spot_check: SpotCheckConfig | None = None


@dataclass
class RunConfig:
    """Run-level settings: output directory, iterations, seed."""

    #: run directory
    output: str = "runs/default"
    #: self-play iterations (may be raised when resuming)
    iterations: int = 3
    #: seeds generation, data order and bootstrap
    seed: int = 0
    #: all | last: which iteration checkpoints to keep
    keep_checkpoints: Literal["all", "last"] = "all"
    #: torch CPU threads (0 = torch's default); 1 is fastest for tiny models and avoids
    #: oversubscription when other processes share the cores. Bitwise results hold for a
    #: given count: another count (or 0 on another machine) rounds sums differently
    num_threads: int = 0
    #: directory of the SQLite judge caches (null = the run directory); on several machines
    #: with the run directory on a network filesystem, point it at local disk
    cache_dir: str | None = None
    #: glibc: keep host memory freed by one step for the next instead of returning it to the
    #: OS (mallopt trim/mmap thresholds; process-wide), so CPU training does not page its
    #: activations in again every iteration; the heap stays at its peak. Same numbers.
    #: Opt-in (the gym preset turns it on)
    keep_freed_memory: bool = False
    #: modules imported before the judges and the objective are built, in every process
    #: (``my_pkg.judges`` or ``path/to/file.py``): plug-ins that call register_judge or
    #: register_regularizer
    imports: list[str] = field(default_factory=list)
    #: experiment trackers for per-step losses, per-iteration metrics and the config, as in
    #: TRL: a list of tensorboard, wandb, mlflow; "all" (those installed); [] or "none" = none
    #: (explicit opt-in). The run directory stays the record; a resume sends no step twice
    report_to: list[str] | str = field(default_factory=list)
    # issue 18 (rspo.selfplay.spot.stop_after)
    #: stop after an iteration whose over-optimization alarm fired (needs
    #: evaluation.spot_check); checkpoints and metrics are kept; false (resumable) continues
    stop_on_overoptimization: bool = False


@dataclass
class Config:
    """The whole configuration of a self-play run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML/JSON-able)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved configuration as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> Config:
        """Check values that types alone do not constrain; raise ConfigError naming the key."""
        _validate(self)
        return self


_POSITIVE = (
    "generation.max_new_tokens",
    "generation.batch_size",
    "judge.batch_size",
    "training.lr",
    "training.epochs",
    "training.batch_size",
    "training.micro_batch_size",
    "evaluation.max_new_tokens",
    "evaluation.num_samples",
    "data.max_prompt_length",
    "data.num_eval_prompts",
    "run.iterations",
    "evaluation.diversity_temperature",
    "objective.eta",
    "objective.is_clip",
)
_NON_NEGATIVE = (
    "objective.coef",
    "generation.temperature",
    "generation.top_k",
    "training.weight_decay",
    "training.save_steps",
    "evaluation.temperature",
    "evaluation.diversity_samples",
    "evaluation.n_boot",
    "run.seed",
    "run.num_threads",
)


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _validate(cfg: Config) -> None:
    for sec in dataclasses.fields(cfg):  # the choices: Literal annotations (a Python-built
        for key, tp in _field_types(type(getattr(cfg, sec.name))).items():  # Config too)
            if typing.get_origin(tp) is Literal:
                _choice(getattr(getattr(cfg, sec.name), key), tp, f"{sec.name}.{key}")
    for key in _POSITIVE + _NON_NEGATIVE:
        v = _get(cfg, key)
        if isinstance(v, float) and math.isnan(v):
            raise ConfigError(f"{key}: value is NaN")
        if isinstance(v, float) and math.isinf(v):
            raise ConfigError(f"{key}: must be finite, got {v}")
        if key in _POSITIVE and not v > 0:
            raise ConfigError(f"{key}: must be > 0, got {v!r}")
        if key in _NON_NEGATIVE and v < 0:
            raise ConfigError(f"{key}: must be >= 0, got {v!r}")
    if cfg.generation.num_samples < 2:
        raise ConfigError(
            f"generation.num_samples: K must be >= 2 to estimate win rates, got "
            f"{cfg.generation.num_samples}"
        )
    if cfg.generation.temperature == 0:
        raise ConfigError(
            "generation.temperature: 0 (greedy) makes the K samples of a prompt identical, so "
            "every win rate is 1/2 and there is nothing to learn; use a temperature > 0"
        )
    if not str(cfg.run.output).strip() or Path(cfg.run.output) == Path("."):
        raise ConfigError(
            f"run.output: {cfg.run.output!r} is the current directory; give the run its own"
        )
    _validate_device(cfg.model.device)
    check_report_to_names(cfg.run.report_to)  # whether they are installed: when a run starts
    if not 0.0 < cfg.generation.top_p <= 1.0:
        raise ConfigError(f"generation.top_p: must be in (0, 1], got {cfg.generation.top_p}")
    t = cfg.training
    if t.batch_size % t.micro_batch_size:
        raise ConfigError(
            f"training.batch_size ({t.batch_size}) must be a multiple of "
            f"training.micro_batch_size ({t.micro_batch_size})"
        )
    g = t.max_grad_norm
    if g is not None and not (math.isfinite(g) and g >= 0):
        raise ConfigError(
            f"training.max_grad_norm: must be >= 0 and finite (0 or null: no clipping); got {g}"
        )
    if cfg.objective.loss_type in ("sppo_hard", "inpo") and t.micro_batch_size % 2:
        raise ConfigError(
            f"training.micro_batch_size ({t.micro_batch_size}) must be even for pair losses "
            f"(objective.loss_type {cfg.objective.loss_type!r}: chosen and rejected together)"
        )
    for key in ("data.num_prompts", "data.prompts_per_iteration", "objective.magnet_refresh"):
        v = _get(cfg, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{key}: must be > 0 or null, got {v!r}")
    o = cfg.objective
    if o.loss_type == "inpo" and (o.tau is None or o.tau < 0):
        raise ConfigError("objective.tau: INPO needs tau >= 0")
    if o.adaptive in ("kl", "length") and o.adaptive_target is None:
        raise ConfigError(
            f"objective.adaptive_target: required when objective.adaptive={o.adaptive!r}"
        )
    if o.adaptive in ("kl", "length") and not (
        math.isfinite(o.adaptive_target) and o.adaptive_target > 0
    ):
        raise ConfigError(
            f"objective.adaptive_target: must be > 0 and finite, got {o.adaptive_target}"
        )
    e = cfg.evaluation
    if e.num_samples > 1 and e.temperature == 0:
        raise ConfigError(
            f"evaluation.num_samples={e.num_samples} at evaluation.temperature 0: greedy "
            "samples are all the same; set a temperature > 0 or num_samples: 1"
        )
    if e.diversity_samples == 1:
        raise ConfigError(
            "evaluation.diversity_samples: 1 sample has no diversity to measure; use >= 2, "
            "or 0 to skip diversity"
        )
    if cfg.run.imports:  # plug-ins register judges and regularizers named below
        from rspo.utils.imports import import_modules

        try:
            import_modules(cfg.run.imports)
        except ImportError as e:
            raise ConfigError(f"run.imports: {e}") from e
    if o.coef > 0 and not o.regularizer.strip():
        raise ConfigError("objective.regularizer: coef > 0 needs a regularizer spec")
    if o.regularizer.strip():  # a typo is named here (rspo config, sweeps), not mid-run
        from rspo.objectives.spec import parse_regularizer

        try:
            parse_regularizer(o.regularizer)
        except ValueError as e:
            raise ConfigError(f"objective.regularizer: {e}") from e
    _validate_spot_kpi(cfg)  # issue 18: evaluation.spot_check, objective.kpi, stop_on_...
    _validate_scaling(cfg)


#: issue 18: metrics objective.kpi may name (higher = better); also win_rate_<subset label>
KPI_METRICS = ("spot_win_rate", "spot_lc_win_rate", "win_rate", "lc_win_rate", "accuracy")


def _validate_spot_kpi(cfg: Config) -> None:
    """Issue 18's keys: ``evaluation.spot_check``, ``objective.adaptive: kpi`` and
    ``run.stop_on_overoptimization`` (one self-contained block)."""
    e, o, s = cfg.evaluation, cfg.objective, cfg.evaluation.spot_check
    if s is not None:
        if not (isinstance(s.judge, str) and s.judge.strip()):
            raise ConfigError(
                "evaluation.spot_check.judge: required (e.g. openai, gym-gold); set "
                "evaluation.spot_check: null to turn the spot check off"
            )
        for key in ("num_prompts", "every"):
            if getattr(s, key) <= 0:
                raise ConfigError(
                    f"evaluation.spot_check.{key}: must be > 0, got {getattr(s, key)}"
                )
        if s.seed < 0:
            raise ConfigError(f"evaluation.spot_check.seed: must be >= 0, got {s.seed}")
        m = s.min_agreement
        if m is not None and not (math.isfinite(m) and 0.0 <= m <= 1.0):
            raise ConfigError(
                f"evaluation.spot_check.min_agreement: must be in [0, 1] or null, got {m}"
            )
        for key in ("prompt_token_price", "completion_token_price"):
            v = getattr(s, key)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"evaluation.spot_check.{key}: must be >= 0, got {v}")
        if not e.enabled:
            raise ConfigError(
                "evaluation.spot_check: judges the evaluation's pairs, so it needs "
                "evaluation.enabled: true (or evaluation.spot_check: null)"
            )
    if cfg.run.stop_on_overoptimization and s is None:
        raise ConfigError(
            "run.stop_on_overoptimization: the alarm needs evaluation.spot_check (a judge "
            "other than the training judge); set one, or stop_on_overoptimization: false"
        )
    if o.adaptive != "kpi":
        return
    if o.adaptive_target is not None:
        raise ConfigError(
            "objective.adaptive_target: unused by objective.adaptive=kpi (it follows the "
            "direction of objective.kpi); remove it"
        )
    if not o.kpi:
        raise ConfigError(
            f"objective.kpi: required when objective.adaptive=kpi; one of "
            f"{', '.join(KPI_METRICS)}, win_rate_<subset label>"
        )
    if o.kpi not in KPI_METRICS and not re.fullmatch(r"win_rate_\w+", o.kpi):
        raise ConfigError(
            f"objective.kpi: unknown metric {o.kpi!r}; allowed: {', '.join(KPI_METRICS)}, "
            "win_rate_<subset label> (a length target: objective.adaptive: length)"
        )
    if o.kpi == "win_rate_ci":
        raise ConfigError("objective.kpi: win_rate_ci is an interval, not a metric; use win_rate")
    if not e.enabled:
        raise ConfigError("objective.adaptive=kpi: reads the evaluation, needs evaluation.enabled")
    if o.kpi.startswith("spot_") and s is None:
        raise ConfigError(
            f"objective.kpi={o.kpi}: needs evaluation.spot_check (the spot judge measures it)"
        )
    if o.kpi == "accuracy" and not e.accuracy_fn:
        raise ConfigError("objective.kpi=accuracy: needs evaluation.accuracy_fn")
    if o.kpi.startswith("win_rate_") and o.kpi not in KPI_METRICS and not e.subset_fn:
        raise ConfigError(f"objective.kpi={o.kpi}: a subset win rate needs evaluation.subset_fn")
    for key in ("kpi_step", "kpi_scale", "coef_min", "coef_max"):
        v = getattr(o, key)
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"objective.{key}: must be > 0 and finite, got {v}")
    if o.kpi_step < 1:
        raise ConfigError(f"objective.kpi_step: a factor >= 1 (1 = λ fixed), got {o.kpi_step}")
    if not o.coef_min <= o.coef <= o.coef_max:
        raise ConfigError(
            f"objective.coef: the starting λ ({o.coef:g}) must lie in [objective.coef_min, "
            f"objective.coef_max] = [{o.coef_min:g}, {o.coef_max:g}] for adaptive=kpi"
        )
    if not o.regularizer.strip():
        raise ConfigError("objective.adaptive=kpi: steers λ of a regularizer; set one")


def check_runnable(cfg: Config) -> None:
    """The settings a run cannot start without (``Config()`` leaves them unset: the model
    and the prompts are the user's); errors say what to set, the gym preset included."""
    hint = " (or run the embedded gym: preset: gym, --preset gym, load_config(preset='gym'))"
    if not cfg.model.path:
        raise ConfigError("model.path: not set; give a local model directory or a hub id" + hint)
    if not cfg.data.prompts:
        raise ConfigError(
            'data.prompts: not set; give a JSONL file ({"prompt": ...} or chat '
            '"messages" per line) or a local HF dataset directory' + hint
        )
    if cfg.evaluation.enabled and not cfg.data.eval_prompts:
        raise ConfigError(
            "data.eval_prompts: not set while evaluation.enabled is true; give held-out "
            "prompts (same formats as data.prompts) or set evaluation.enabled: false"
        )


def evaluation_judge(cfg: Config) -> tuple[str, dict[str, Any]]:
    """The evaluation judge's name and settings: ``evaluation.judge``, or the training
    judge (``judge.name`` with ``judge.kwargs``) when it is null."""
    e = cfg.evaluation
    if e.judge is None:
        return cfg.judge.name, dict(cfg.judge.kwargs)
    return e.judge, dict(e.judge_kwargs)


def check_trainable(cfg: Config) -> None:
    """What only training refuses (``rspo eval`` may sample in float16): float16 full weights,
    whose AdamW/RMSprop eps (1e-8) rounds to 0, so a zero gradient entry is 0/0 at step 1;
    and the settings no run starts without (:func:`check_runnable`)."""
    check_runnable(cfg)
    if cfg.model.dtype == "float16" and cfg.model.lora is None:
        raise ConfigError(
            "model.dtype: float16 cannot train full weights (AdamW/RMSprop's eps rounds to 0 "
            "in float16, so the first step divides by zero); use bfloat16, float32, or "
            "float16 with model.lora"
        )


def _validate_device(device: str) -> None:
    """``auto`` or a device torch can name (``cpu``, ``cuda``, ``cuda:1``, ``mps``...)."""
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"model.device: {device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from e


def _validate_scaling(cfg: Config) -> None:
    """LoRA, 4-bit and vLLM engine settings."""
    m, g = cfg.model, cfg.generation
    if m.load_in_4bit and m.lora is None:
        raise ConfigError(
            "model.load_in_4bit: 4-bit weights cannot be fine-tuned directly; set model.lora "
            "(QLoRA) or load_in_4bit: false"
        )
    if m.lora is not None:
        lo = m.lora
        if lo.r <= 0:
            raise ConfigError(f"model.lora.r: must be > 0, got {lo.r}")
        if not lo.alpha > 0:
            raise ConfigError(f"model.lora.alpha: must be > 0, got {lo.alpha}")
        if not 0.0 <= lo.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout: must be in [0, 1), got {lo.dropout}")
        tm = lo.target_modules
        if (isinstance(tm, str) and not tm.strip()) or (isinstance(tm, list) and not tm):
            raise ConfigError('model.lora.target_modules: empty; give module names or "all-linear"')
    if g.backend == "vllm" and m.keep_reference == "on":
        raise ConfigError(
            "model.keep_reference: on needs generation.backend hf (a held π_ref would take GPU "
            "memory the vLLM engine was sized without); use auto or off"
        )
    if g.backend == "vllm" and g.logprobs == "on":
        raise ConfigError(
            "generation.logprobs: on needs generation.backend hf (vLLM's sampler log-probs "
            "differ from the trainer's forward); use auto or off"
        )
    if not 0.0 < g.vllm_gpu_memory_utilization <= 1.0:
        raise ConfigError(
            f"generation.vllm_gpu_memory_utilization: must be in (0, 1], got "
            f"{g.vllm_gpu_memory_utilization}"
        )


# ---------------------------------------------------------------- building from dicts


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) > 1:
            names = [getattr(a, "__name__", str(a)) for a in args if a is not type(None)]
            raise ConfigError(f"{key}: expected one of {', '.join(names)}; got {value!r}")
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "5e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(tp)):
            value = "on" if value else "off"  # YAML 1.1 reads unquoted on/off as booleans
        return _choice(_coerce(value, str, key), tp, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _choice(value: Any, tp: Any, key: str) -> Any:
    """``value`` if the ``Literal`` annotation ``tp`` allows it, else a ConfigError listing them."""
    allowed = typing.get_args(tp)
    if value not in allowed:
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: {', '.join(allowed)}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        where = f"section {prefix!r}" if prefix else "top level"
        raise ConfigError(
            f"unknown config key {prefix + '.' if prefix else ''}{unknown[0]} ({where}); "
            f"valid keys: {', '.join(types_)}"
        )
    kwargs = {}
    for name, tp in types_.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, key)
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    return cls(**kwargs)


#: dict-valued fields that are settings of one object: replaced whole, never merged or diffed
_LEAF_DICTS = ("kwargs", "judge_kwargs", "vllm_kwargs")


class _Entries(dict):
    """Entries of a settings dict set one by one (``--judge.kwargs.model X``): merged into
    the dict, where a whole dict given as the value replaces it."""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested config dicts merged key by key, ``over`` winning; settings dicts are leaves
    (replaced whole) unless ``over`` sets single entries of them."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _LEAF_DICTS:
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, _Entries) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = dict(v) if isinstance(v, _Entries) else v
    return out


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``["--objective.tau", "0.1", "--run.seed=3"]`` into a nested dict (YAML values)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--preset" or a.startswith("--preset="):  # the config preset (top level)
            if "=" in a:
                out["preset"], i = a.split("=", 1)[1], i + 1
            elif i + 1 < len(args):
                out["preset"], i = args[i + 1], i + 2
            else:
                raise ConfigError("--preset needs a name (e.g. gym) or a YAML file")
            continue
        if not a.startswith("--") or "." not in a:
            raise ConfigError(
                f"unrecognised argument {a!r}; overrides look like --section.key VALUE"
            )
        if "=" in a:
            key, raw = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {a} needs a value")
            key, raw = a[2:], args[i + 1]
            i += 2
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, _Entries() if p in _LEAF_DICTS else {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def _apply_preset(data: dict[str, Any], base_eta: float | None = None) -> dict[str, Any]:
    """Fill objective fields from ``objective.preset`` unless set explicitly (``base_eta``:
    η of the config preset below ``data``, for INPO's τ)."""
    obj = data.get("objective") or {}
    name = obj.get("preset")
    if not name:
        return data
    from rspo.objectives import PRESETS

    if name not in PRESETS:
        raise ConfigError(f"objective.preset: unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    p = PRESETS[name]
    defaults = {
        "loss_type": p.loss_type,
        "regularizer": p.regularizer or "",
        "coef": p.coef,
        "samples": p.samples,
        "magnet_refresh": p.magnet_refresh,
    }
    if p.tau_eta is not None:  # INPO: the preset fixes ητ, so τ follows the configured η
        eta = float(obj.get("eta", ObjectiveConfig.eta if base_eta is None else base_eta))
        if eta > 0:  # η <= 0 is refused by validation
            defaults["tau"] = p.tau_eta / eta
    data = dict(data)
    data["objective"] = {**defaults, **obj}
    return data


#: the packaged config presets (``rspo/configs/<name>.yaml``)
CONFIG_PRESETS = ("gym", "gym-skills")
#: a packaged preset drawn on top of another one
_PRESET_PARENT = {"gym-skills": "gym"}
#: ``model.path`` values that select a preset when none is named
_PATH_PRESETS = {"gym": "gym", "gym-skills": "gym-skills"}


def preset_dict(name: str) -> dict[str, Any]:
    """The settings of config preset ``name`` (packaged, e.g. ``gym``, or a YAML file path)."""
    if name in CONFIG_PRESETS:
        from importlib.resources import files

        text = (files("rspo") / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
        where = f"preset {name!r}"
    elif name.endswith((".yaml", ".yml")) and Path(name).is_file():
        text, where = Path(name).read_text(encoding="utf-8"), name
    else:
        raise ConfigError(
            f"preset: unknown preset {name!r}; valid: {', '.join(CONFIG_PRESETS)}, none, or a "
            "YAML file"
        )
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or "preset" in data:
        raise ConfigError(f"{where}: a preset is a mapping of config sections (no preset: key)")
    parent = _PRESET_PARENT.get(name)
    return deep_merge(preset_dict(parent), data) if parent else data


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build and validate a Config from a nested dict (unknown keys are errors).

    A top-level ``preset`` (``gym``, ``gym-skills``, a YAML file, or ``none``) gives the
    values the dict does not set; ``model.path: gym`` / ``gym-skills`` without a preset
    selects that gym's preset, whose small model the paper's recipe (the defaults) cannot
    train.
    """
    data = dict(data or {})
    name = data.pop("preset", None)
    if name is None:
        name = _PATH_PRESETS.get((data.get("model") or {}).get("path"))
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"preset: expected a name, got {name!r}")
    base = {} if name in (None, "", "none") else preset_dict(name)
    base = _apply_preset(base)
    base_eta = (base.get("objective") or {}).get("eta")
    data = deep_merge(base, _apply_preset(data, base_eta))
    return _build(Config, data, "").validate()


def _nest(over: dict[str, Any]) -> dict[str, Any]:
    """``{"training.lr": 1e-6, "judge.kwargs.model": "m", "run": {...}}`` as a nested
    override dict: dotted keys split (entries of a settings dict merge into it, as on the
    command line); nested dicts kept."""
    out: dict[str, Any] = {}
    for key, value in over.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = _Entries() if p in _LEAF_DICTS else {}
            node = node[p]
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict) and last not in _LEAF_DICTS:
            node[last] = deep_merge(node[last], value)
        else:
            node[last] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the
    last one silently, so a setting written twice would be half ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} at line {line} (first given at line {seen[key]})",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: str | Path) -> Any:
    """A YAML file's content; malformed YAML or a key given twice in one mapping is a
    ConfigError naming the file, line and key."""
    p = Path(path)
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as e:
        if e.problem and e.problem.startswith("duplicate key"):
            raise ConfigError(f"{p}: {e.problem}; give each key once") from e
        raise ConfigError(f"{p}: malformed YAML ({e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: malformed YAML ({e})") from e


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    preset: str | None = None,
) -> Config:
    """Load a YAML config (or the defaults: the paper's recipe), apply ``overrides``
    (``["--section.key", "VALUE"]`` or ``{"section.key": value}``, nested dicts too) and
    the config ``preset`` (``gym``; else the file's ``preset:`` key), then validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        data = load_yaml_file(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    ov: dict[str, Any] = {}
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else _nest(overrides)
        data = deep_merge(data, ov)
    if preset is not None:
        data = {**data, "preset": preset}
    try:
        return config_from_dict(data)
    except ConfigError as e:
        keys = [k for k in _dotted(ov) if k != "preset"]  # "preset" also names objective.preset
        named = (re.search(rf"(?<![\w.]){re.escape(k)}(?![\w.])", str(e)) for k in keys)
        if any(named) or ("preset" in ov and str(e).startswith("preset")):  # command line
            raise ConfigError(f"command-line override: {e}") from e
        if path is not None:
            raise ConfigError(f"{path}: {e}") from e
        raise


def _dotted(d: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a nested override dict (``training.lr``)."""
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += _dotted(v, key) if isinstance(v, dict) and k not in _LEAF_DICTS else [key]
    return out


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        key = f"{prefix}.{k}" if prefix else k
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k not in _LEAF_DICTS:
            out += diff_configs(va, vb, key)
        elif va != vb:
            out.append(key)
    return out
