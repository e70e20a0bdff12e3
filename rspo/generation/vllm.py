"""vLLM generation backend (optional extra ``[vllm]``, CUDA), colocated with training.

Written against vLLM's documented offline API (>= 0.11): ``LLM(..., enable_sleep_mode=True)``,
``LLM.generate`` with token-id prompts and one ``SamplingParams`` per sequence (its ``seed``
is our per-sequence seed), ``LoRARequest`` for adapters, and sleep mode for sharing the GPU
with training:

* LoRA runs: the engine serves the base model with ``enable_lora=True``; the policy of each
  iteration is a ``LoRARequest`` on its checkpoint directory, so no weights are ever copied.
  While training runs the engine sleeps at level 1 (base weights to CPU RAM, KV cache freed).
* full fine-tuning: the engine is built on a "live" directory that holds links to the current
  policy's files. A new policy = relink the directory, then the sequence vLLM's sleep-mode
  docs give for RLHF weight updates: ``sleep(level=2)``, ``wake_up(tags=["weights"])``,
  ``collective_rpc("reload_weights")``, ``wake_up(tags=["kv_cache"])``.

Several processes (torchrun / accelerate launch): every rank runs its own engine in-process
on its own GPU (``distributed_executor_backend="external_launcher"``, the layout TRL's
colocate mode and verl use: vLLM places each rank on ``cuda:LOCAL_RANK`` and lets data-parallel
ranks generate independently) and samples its share of the prompts; per-sequence seeds make
the samples independent of the split.

Untested on a real GPU here: the tests drive it with a fake ``vllm`` module.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rspo.generation.base import (
    Completion,
    GenerationBackend,
    SamplingParams,
    stop_ids,
    until_eos,
)

INSTALL_HINT = (
    "generation.backend=vllm needs vLLM, which runs on CUDA GPUs: pip install 'rspo[vllm]' "
    "(or pick generation.backend: hf, the default, which runs anywhere)"
)
#: files of a model directory that the live directory mirrors (weights + what vLLM reads)
_LIVE_FILES = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
)
#: LoRA ranks vLLM accepts for max_lora_rank
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def import_vllm() -> Any:
    """Import vllm or raise ImportError with the install hint."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


def vllm_sampling_params(
    vllm: Any, params: SamplingParams, seed: int, eos_token_id: int | Sequence[int]
) -> Any:
    """One ``vllm.SamplingParams`` for one sequence, matching the HF backend's semantics.

    Stops at rspo's stop ids (:func:`rspo.generation.base.stop_ids`: the tokenizer's EOS and
    generation_config.json's; ``ignore_eos`` drops vLLM's own set so both backends agree);
    top_k 0 = off (vLLM: -1); temperature 0 = greedy; ``seed`` makes the sequence's
    sampling depend on its seed alone.
    """
    stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return vllm.SamplingParams(
        n=1,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        max_tokens=params.max_new_tokens,
        seed=int(seed),
        ignore_eos=True,
        stop_token_ids=stops,
        skip_special_tokens=True,
    )


def to_completion(output: Any, tokenizer: Any, stops: Sequence[int] | None = None) -> Completion:
    """A vLLM ``RequestOutput`` as our Completion: ids end with a stop token iff it finished.

    vLLM may or may not keep the stop token in ``token_ids``; either way the response is
    cut after the first stop token (or the one it stopped on is appended: ``stop_reason``,
    else the tokenizer's EOS), as the HF backend records it, and the text is decoded by our
    tokenizer without special tokens.
    """
    stops = list(stops) if stops else [tokenizer.eos_token_id]
    out = output.outputs[0]
    ids = [int(i) for i in out.token_ids]
    cut = until_eos(ids, stops)
    if cut and cut[-1] in stops:
        ids = cut
        finished = True
    elif out.finish_reason == "stop":
        reason = getattr(out, "stop_reason", None)
        ids.append(int(reason) if isinstance(reason, int) and reason in stops else stops[0])
        finished = True
    else:
        finished = False
    text_ids = ids[:-1] if finished else ids
    return Completion(
        ids=ids, text=tokenizer.decode(text_ids, skip_special_tokens=True), finished=finished
    )


def _generation_config(path: str, trust_remote_code: bool = False) -> Any:
    """The model's generation config (for its ``eos_token_id``s) as transformers builds it:
    generation_config.json, else config.json's ids; a local dir or the hub cache. None if
    neither loads (stops are then the tokenizer's EOS only)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        pass
    try:
        conf = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    conf = getattr(conf, "get_text_config", lambda: conf)()
    return GenerationConfig(eos_token_id=getattr(conf, "eos_token_id", None))


def _lora_rank(r: int) -> int:
    """The smallest LoRA rank vLLM accepts that holds ``r``."""
    for x in _VLLM_LORA_RANKS:
        if x >= r:
            return x
    raise ValueError(
        f"model.lora.r {r}: vLLM serves LoRA ranks up to {_VLLM_LORA_RANKS[-1]}; use a smaller "
        "rank or generation.backend: hf"
    )


def local_model_dir(path: str, need_weights: bool = False) -> str:
    """``path`` as the engine is given it, one spelling per model (adapter-vs-base checks
    compare these): a local dir resolved (symlinks too); a hub id its snapshot in the local
    cache when that holds the weights (never downloaded here), else the hub id itself, for
    vLLM to fetch, unless ``need_weights`` (full fine-tuning links the files): then an error."""
    p = Path(path).expanduser()
    if p.is_dir():
        return str(p.resolve())
    why = "no *.safetensors in its cached snapshot"
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(path, local_files_only=True)).resolve()
        if any(snap.glob("*.safetensors")):
            return str(snap)
    except Exception as e:  # noqa: BLE001 - not cached, offline, or not a repo id
        why = type(e).__name__
    if not need_weights:
        return path
    raise ValueError(
        f"generation.backend vllm: model {path!r} is not a local directory and its weights "
        f"are not in the local Hugging Face cache ({why}); full fine-tuning serves the policy "
        "from local files: download it first or pass its directory as model.path"
    )


class VLLMBackend(GenerationBackend):
    """``vllm.LLM`` behind the generation interface; ``set_policy`` picks the weights."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        lora_rank: int | None = None,
        live_dir: str | Path | None = None,
        trust_remote_code: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.vllm = import_vllm()
        self.tok = tokenizer
        self.lora = lora_rank is not None
        self._given = str(model_path)  # the base as the run names it (a hub id vLLM may fetch)
        self.base_path = local_model_dir(self._given, need_weights=not self.lora)
        self.generation_config = _generation_config(self.base_path, trust_remote_code)
        self.live_dir = Path(live_dir) if live_dir else None
        if not self.lora and self.live_dir is None:
            raise ValueError("VLLMBackend: full fine-tuning needs a live_dir for weight updates")
        self.policy = self.base_path  # the weights generate() samples from
        self.in_engine = self.base_path  # the weights the engine holds (full fine-tuning)
        self.asleep = 0  # 0 awake, else the sleep level
        self._lora_ids: dict[str, int] = {}
        kwargs: dict[str, Any] = {
            "tokenizer": self.base_path,
            "dtype": dtype,
            "seed": int(seed),
            "enable_sleep_mode": True,
            "gpu_memory_utilization": gpu_memory_utilization,
            "trust_remote_code": trust_remote_code,
            "load_format": "safetensors",
        }
        if world_size > 1:  # one engine per rank, on its own GPU, sampling its own prompts
            if int((engine_kwargs or {}).get("tensor_parallel_size", 1)) != 1:
                raise ValueError(
                    "generation.vllm_kwargs.tensor_parallel_size: with several processes each "
                    "rank runs its own engine (tensor_parallel_size 1); launch one process to "
                    "spread one engine over GPUs"
                )
            kwargs["distributed_executor_backend"] = "external_launcher"
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process
            if self.live_dir is not None:
                self.live_dir = self.live_dir / f"rank{rank}"
        if self.lora:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(lora_rank), max_loras=1)
            engine_model = self.base_path
        else:
            self._link_live(self.base_path)
            engine_model = str(self.live_dir)
        kwargs.update(engine_kwargs or {})
        self.llm = self.vllm.LLM(model=engine_model, **kwargs)

    # ------------------------------------------------------------- weights and memory
    def _link_live(self, path: str) -> None:
        """Make the live directory mirror ``path``'s weights (hard links, else copies)."""
        live = self.live_dir
        live.mkdir(parents=True, exist_ok=True)
        for f in live.iterdir():
            f.unlink()
        src = Path(path)
        for pat in _LIVE_FILES:
            for f in src.glob(pat):
                try:
                    os.link(f, live / f.name)
                except OSError:
                    shutil.copy2(f, live / f.name)

    def set_policy(self, path: str) -> None:
        """Sample from the model (base or full checkpoint) or adapter directory at ``path``."""
        path = str(path)
        # the base by any spelling (its hub id resolves to a snapshot once vLLM fetched it)
        base = path == self._given or local_model_dir(path) == local_model_dir(self._given)
        self.policy = self.base_path if base else local_model_dir(path)

    def update_weights(self, model: Any) -> None:
        """Point at new weights: a model directory path (in-memory models are not accepted)."""
        if not isinstance(model, (str, Path)):
            raise TypeError("VLLMBackend.update_weights takes a checkpoint directory path")
        self.set_policy(str(model))

    def sleep(self) -> None:
        """Free the GPU for training: level 1 (LoRA: base weights kept in CPU RAM) or 2."""
        if not self.asleep:
            level = 1 if self.lora else 2
            self.llm.sleep(level=level)
            self.asleep = level

    def wake_up(self) -> None:
        """Back on the GPU, holding the current policy's weights."""
        if self.lora:
            if self.asleep:
                from rspo.modeling import free_memory

                free_memory()  # torch's cached blocks (training) back to the driver for vLLM
                self.llm.wake_up()
                self.asleep = 0
            return
        if self.asleep != 2 and self.in_engine == self.policy:
            return
        if not self.asleep:
            self.llm.sleep(level=2)
        from rspo.modeling import free_memory

        free_memory()  # the trainer's freed blocks, cached by torch, back to the driver for vLLM
        if self.in_engine != self.policy:
            self._link_live(self.policy)
        self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights")
        self.llm.wake_up(tags=["kv_cache"])
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.in_engine, self.asleep = self.policy, 0

    def _lora_request(self) -> Any:
        if not self.lora or self.policy == self.base_path:
            return None
        from vllm.lora.request import LoRARequest

        n = self._lora_ids.setdefault(self.policy, len(self._lora_ids) + 1)
        return LoRARequest(f"rspo_policy_{n}", n, self.policy)

    # ------------------------------------------------------------- generation
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], params: SamplingParams
    ) -> list[Completion]:
        if len(prompt_ids) != len(seeds):
            raise ValueError("generate: need one seed per prompt")
        self.wake_up()
        stops = stop_ids(self.tok, self.generation_config)
        prompts = [{"prompt_token_ids": [int(t) for t in p]} for p in prompt_ids]
        sps = [vllm_sampling_params(self.vllm, params, s, stops) for s in seeds]
        outs = self.llm.generate(prompts, sps, use_tqdm=False, lora_request=self._lora_request())
        return [to_completion(o, self.tok, stops) for o in outs]
