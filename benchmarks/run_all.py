"""`make bench`: the exact command of every figure BENCHMARKS.md quotes, and a quick subset.

Each :class:`Run` is one figure (or one table's worth of figures): the commands that produce its
record under ``benchmarks/results/``, in order, the technique section of BENCHMARKS.md that
quotes it, and the wall time the run took on the 2-core EPYC where it was recorded.
``compose.py`` lists these commands under each technique section, and checks that every ``run``
id a reference table names is defined here.

    .venv/bin/python benchmarks/run_all.py --list                  # ids, minutes, what each writes
    .venv/bin/python benchmarks/run_all.py --dry-run               # every command, nothing run
    .venv/bin/python benchmarks/run_all.py --quick                 # the quick subset (below)
    .venv/bin/python benchmarks/run_all.py prune-speed int8-resnet20   # some ids
    .venv/bin/python benchmarks/run_all.py --technique quantization
    .venv/bin/python benchmarks/run_all.py --check                 # each script's options exist (runs --help)

Everything takes many hours on 2 CPU cores: the wall times recorded add up to over 9 hours, and a
third of the runs have none recorded (``--list``).
``--quick`` is the documented subset that fits in about 15 minutes on that machine (the sum of the
wall times recorded for these runs, or estimated where marked ``~``; it prints the real total):
it re-measures the SparseLinear kernel, the LeNet-300 95 % method comparison (all but RigL / SET),
the LeNet-300 Deep Compression recipe, ResNet-20 int8 PTQ, the checksum overhead, the LeNet-300
baseline, prune + distill and activation-aware rank on LeNet-300, the SVD recipe and the Ray
search check; then ``compose.py`` rebuilds the tables generated from those records
(``baselines``, ``prune_methods``, ``deep_compression``, ``int8_resnet20``, ``checksum_overhead``).
It needs the zoo checkpoints in ``$NETSLIM_CACHE`` (a full run, or ``netslim train NAME``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "benchmarks/results"
QUICK_BUDGET_MIN = 20.0


@dataclass(frozen=True)
class Copy:
    """After the commands: copy a run's file (a recipe report) into benchmarks/results/."""

    src: str
    dst: str


@dataclass(frozen=True)
class Run:
    id: str
    technique: str  # the reference section (benchmarks/reference/*.md) that quotes it
    cmds: tuple[str, ...]  # shell-free command lines; "netslim" is the venv's CLI
    writes: tuple[str, ...] = ()  # files under benchmarks/results/ it (re)writes
    minutes: float | None = None  # wall time recorded on the 2-core EPYC; None: not recorded
    estimated: bool = False  # minutes is an estimate, not a recorded wall time
    quick: bool = False
    env: tuple[tuple[str, str], ...] = ()
    copies: tuple[Copy, ...] = field(default=())
    note: str = ""


def recipe(
    rid: str,
    technique: str,
    name: str,
    *,
    extra: str = "",
    report: str | None = None,
    minutes: float | None = None,
    note: str = "",
    quick: bool = False,
    estimated: bool = False,
    more: tuple[Copy, ...] = (),
) -> Run:
    """``netslim compress recipes/NAME.yaml --out runs/bench/ID``; its report.json copied to results/REPORT."""
    out = f"runs/bench/{rid}"
    copies = ((Copy(f"{out}/report.json", report),) if report else ()) + more
    return Run(
        rid,
        technique,
        (f"netslim compress recipes/{name}.yaml {extra}--out {out} --force".replace("  ", " "),),
        writes=tuple(c.dst for c in copies),
        minutes=minutes,
        quick=quick,
        estimated=estimated,
        copies=copies,
        note=note,
    )


def llm(rid: str, rows: str, minutes: float | None = None, extra: str = "", note: str = "") -> Run:
    return Run(
        rid,
        "llm-oneshot",
        (f"benchmarks/llm_oneshot.py --rows {rows} --num-samples 32{extra}",),
        writes=("llm_oneshot.jsonl",),
        minutes=minutes,
        note=note,
    )


S = "benchmarks/structured.py"
R20KD = f"{S} cnn --model resnet20 --drop layer1.1,layer1.2 --round-to 16 --distill 0.5"
LD = "benchmarks/lowrank_distill.py"
Q = "benchmarks/quantize.py"
SE = "benchmarks/search.py"

RUNS: tuple[Run, ...] = (
    # ---- baselines (issue 2)
    Run(
        "baselines",
        "baselines",
        ("benchmarks/baselines.py --reuse",),
        ("baselines.json",),
        note="re-measures cached checkpoints; trains the missing ones first (about 85 min for all five)",
    ),
    Run(
        "baselines-lenet300",
        "baselines",
        ("benchmarks/baselines.py --reuse --models lenet300",),
        ("baselines.json",),
        minutes=0.5,
        estimated=True,
        quick=True,
    ),
    Run("hf-baselines", "baselines", ("benchmarks/hf_baselines.py --blocks 32",), ("hf_baselines.json",)),
    # ---- unstructured pruning (issue 3)
    Run(
        "prune-speed",
        "unstructured",
        ("benchmarks/prune_unstructured.py --only speed --threads 2 --rounds 5",),
        ("prune_unstructured_3a.json",),
        minutes=1,
        estimated=True,
        quick=True,
    ),
    recipe(
        "prune-lenet300-95",
        "unstructured",
        "prune_lenet300_95",
        minutes=5.3,
        note="then prune_unstructured.py reads the run (accuracy, sparse file, round trip)",
    ),
    Run(
        "prune-lenet300-95-measure",
        "unstructured",
        ("benchmarks/prune_unstructured.py --only lenet300 --from-run runs/bench/prune-lenet300-95",),
        ("prune_unstructured_3a.json",),
        note="after prune-lenet300-95",
    ),
    Run(
        "prune-lenet5-93",
        "unstructured",
        ("benchmarks/prune_unstructured.py --only lenet5 --lenet5-epochs 12 3 --threads 1",),
        ("prune_unstructured_3a.json",),
        minutes=4.2,
    ),
    Run(
        "prune-compare-lenet300-magnitude",
        "unstructured",
        ("benchmarks/prune_unstructured.py --only compare --sparsity 0.9 0.95 --threads 1",),
        ("prune_compare_3a.json",),
        minutes=9.7,
        note="--threads 1 as its rows record (the history section's command leaves it out)",
    ),
    Run(
        "prune-compare-lenet300",
        "sparse-training",
        (
            "benchmarks/prune_compare.py --model lenet300 --sparsity 0.9 0.95 --epochs 4 --scratch-epochs 20 "
            "--threads 1",
        ),
        ("prune_compare.json",),
        minutes=15.5,
        note="--threads 1 as its rows record (the history section's command leaves it out)",
    ),
    Run(
        "prune-compare-lenet300-95-quick",
        "unstructured",
        (
            "benchmarks/prune_unstructured.py --only compare --sparsity 0.95 --threads 1",
            "benchmarks/prune_compare.py --model lenet300 --sparsity 0.95 --epochs 4 --methods obd movement l0 "
            "--threads 1",
        ),
        ("prune_compare_3a.json", "prune_compare.json"),
        minutes=3.0,
        quick=True,
        note="the 95 % rows of the two runs above; RigL / SET (3.5-3.8 min each) left out",
    ),
    Run(
        "prune-compare-resnet20-magnitude",
        "unstructured",
        (
            "benchmarks/prune_unstructured.py --only compare --model resnet20 --sparsity 0.8 --epochs 2 "
            "--methods one-shot imp gradual --threads 1",
            "benchmarks/prune_unstructured.py --only compare --model resnet20 --sparsity 0.8 --epochs 2 "
            "--methods lottery --lottery-rounds 1 --lottery-epochs 2 --threads 1",
        ),
        ("prune_compare_3a.json",),
        minutes=13.5,
    ),
    Run(
        "prune-compare-resnet20",
        "sparse-training",
        (
            "benchmarks/prune_compare.py --model resnet20 --sparsity 0.8 --epochs 2 "
            "--methods movement obd l0 rigl set --dst-from dense --threads 1",
        ),
        ("prune_compare.json",),
        minutes=13.0,
    ),
    recipe(
        "rigl-lenet300-90",
        "sparse-training",
        "rigl_lenet300_90",
        report="rigl_lenet300_90_report.json",
        minutes=5,
        note="the quoted run kept its report outside the repository; this run copies it",
    ),
    recipe(
        "lottery-lenet300",
        "unstructured",
        "lottery_lenet300",
        report="lottery_lenet300_report.json",
        minutes=5,
        note="the quoted run kept its report outside the repository; this run copies it",
    ),
    # ---- N:M
    recipe(
        "nm24-resnet20",
        "nm",
        "nm24_resnet20",
        report="nm24_resnet20_report.json",
        minutes=8,
        note="the quoted run kept its report outside the repository; this run copies it",
    ),
    # ---- structured (issue 4; coverage issue 22)
    Run(
        "structured-resnet20-speedplan",
        "structured",
        (
            f"{R20KD} --tag 2x_d2r16kd --threads 1",
            f"{R20KD} --tag 2x_d2r16kd_s1 --seed 1 --threads 1",
            f"{R20KD} --tag 2x_d2r16kd_s2 --seed 2 --threads 1",
        ),
        ("structured.json",),
    ),
    Run(
        "structured-resnet20-tp",
        "structured",
        (
            f"{S} torch_pruning --model resnet20 --tag tp2x --threads 1",
            f"{S} torch_pruning --model resnet20 --tag tp2x_s1 --seed 1 --threads 1",
            f"{S} torch_pruning --model resnet20 --tag tp2x_s2 --seed 2 --threads 1",
            f"{S} torch_pruning --model resnet20 --distill 0.5 --tag tp2xkd --seed 0 --threads 1",
            f"{S} torch_pruning --model resnet20 --distill 0.5 --tag tp2xkd_s1 --seed 1 --threads 1",
            f"{S} torch_pruning --model resnet20 --distill 0.5 --tag tp2xkd_s2 --seed 2 --threads 1",
        ),
        ("structured.json",),
    ),
    Run(
        "structured-resnet20-global",
        "structured",
        (
            f"{S} cnn --model resnet20 --tag 2x --threads 1",
            f"{S} cnn --model resnet20 --tag 2x_s1 --seed 1 --threads 1",
            f"{S} cnn --model resnet20 --tag 2x_s2 --seed 2 --threads 1",
            f"{S} cnn --model resnet20 --distill 0.5 --tag 2xkd --seed 0 --threads 1",
            f"{S} cnn --model resnet20 --distill 0.5 --tag 2xkd_s1 --seed 1 --threads 1",
            f"{S} cnn --model resnet20 --distill 0.5 --tag 2xkd_s2 --seed 2 --threads 1",
        ),
        ("structured.json",),
    ),
    Run(
        "structured-resnet20-latency",
        "structured",
        (
            f"{S} latency --model resnet20 --tag 2x,2x_d2r16,2x_d2r16kd,tp2x --threads 2 --rounds 11 "
            "--variants plain,fold+cl",
            f"{S} sizes --model resnet20 --tag 2x,tp2x,2x_d2r16,2x_d2r16kd --threads 1",
        ),
        ("structured.json",),
        note="needs the tags above; both cores free",
    ),
    recipe(
        "channels-resnet20-2x",
        "structured",
        "channels_resnet20_2x",
        report="channels_resnet20_2x_report.json",
        minutes=5,
        note="the quoted run kept its report outside the repository; this run copies it",
    ),
    Run(
        "structured-mobilenetv2",
        "structured",
        (
            f"{S} cnn --model mobilenetv2 --criterion l2_bn --tag 2x_l2bn --epochs 3 --threads 1",
            f"{S} cnn --model mobilenetv2 --criterion l2_bn --tag 2x_l2bn_s1 --seed 1 --epochs 3 --threads 1",
            f"{S} torch_pruning --model mobilenetv2 --tag tp2x --epochs 3 --threads 1",
            f"{S} torch_pruning --model mobilenetv2 --tag tp2x_s1 --seed 1 --epochs 3 --threads 1 --budget 570",
            f"{S} latency --model mobilenetv2 --tag 2x,2x_l2bn,tp2x --threads 2 --rounds 9 --variants plain,fold+cl",
            f"{S} sizes --model mobilenetv2 --tag 2x,2x_l2bn,tp2x --threads 1",
        ),
        ("structured.json",),
        note="a fine-tune over the 10-minute job limit resumes from its checkpoint when re-run (--budget)",
    ),
    Run(
        "structured-minilm",
        "structured",
        (f"{S} minilm --criterion activation --sentences 500 --rounds 5 --threads 2",),
        ("structured.json",),
    ),
    Run(
        "structured-smollm2",
        "structured",
        (f"{S} smollm2 --what ffn --blocks 16 --threads 1", f"{S} smollm2 --what layers --blocks 16 --threads 1"),
        ("structured.json",),
    ),
    Run(
        "structured-real",
        "structured",
        ("benchmarks/structured_coverage.py --real --repeats 5",),
        ("issue22_real.json",),
        minutes=2,
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    Run(
        "structured-coverage",
        "structured",
        ("benchmarks/structured_coverage.py",),
        ("issue22_coverage.json", "issue22_coverage.md"),
        minutes=6,
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    # ---- one-shot LLM compression (issue 6)
    llm(
        "llm-sparsegpt",
        "dense,sparsegpt50,sparsegpt24,sparsegpt50_lowmem",
        note="the earlier session's rows; how they were grouped into jobs is in git history",
    ),
    llm("llm-llmc", "llmc_sparsegpt50,llmc_sparsegpt24,llmc_gptq_g64", note="needs .cache/venv-llmc (README)"),
    llm("llm-wanda", "wanda50,llmc_wanda50"),
    llm("llm-gptq", "gptq_g64,gptq_g64_clip"),
    llm("llm-stream-exact-owl", "sparsegpt50_stream,sparsegpt24_exact,wanda50_owl"),
    llm("llm-references", "magnitude50,rtn_g64", extra=" --threads 1", note="one core: times not comparable"),
    llm("llm-llmc-mse-owl", "llmc_gptq_g64_mse,llmc_wanda50_owl", note="the OWL row fails inside llmcompressor 0.14"),
    llm("llm-gptq-up", "gptq_g64_up"),
    # ---- quantization (issue 5; ONNX Runtime issue 18)
    Run(
        "int8-resnet20",
        "quantization",
        (f"{Q} resnet20 --only minmax --rounds 15 --repeats 10 --tag _int8_rerun2",),
        ("quantize_resnet20_int8_rerun2.json",),
        minutes=2,
        estimated=True,
        quick=True,
    ),
    Run(
        "int8-resnet20-r9",
        "quantization",
        (f"{Q} resnet20 --only minmax --rounds 9 --tag _int8_rerun",),
        ("quantize_resnet20_int8_rerun.json",),
    ),
    recipe("int8-resnet20-recipe", "quantization", "int8_resnet20", report="quantize_int8_resnet20_recipe.json"),
    Run(
        "int8-minilm",
        "quantization",
        (
            f"{Q} minilm --sentences 300 --rounds 5 --repeats 3 --tag _bf16body",
            f"{Q} minilm --sentences 300 --rounds 9 --repeats 3 --tag _bf16body_r9",
        ),
        ("quantize_minilm_bf16body.json", "quantize_minilm_bf16body_r9.json"),
        minutes=5,
    ),
    recipe("int8-minilm-recipe", "quantization", "int8_minilm", report="quantize_int8_minilm_recipe.json", minutes=1),
    recipe(
        "qat4-lenet5",
        "quantization",
        "qat4_lenet5",
        extra="--model .cache/netslim/models/lenet5.safetensors ",
        report="quantize_qat4_lenet5.json",
        minutes=8,
    ),
    Run(
        "onnx-runtime",
        "quantization",
        ("benchmarks/onnx_runtime.py --threads 1",),
        ("issue18_onnx.json",),
        minutes=4,
        env=(("OMP_NUM_THREADS", "1"),),
    ),
    # ---- weight-only int4 / GPTQ
    Run(
        "weight-only-smollm2",
        "weight-only",
        (
            f"{Q} smollm2 --tag _a --only 'int8 g64' 'int4 g64 asym rtn' 'int4 g64 sym rtn' 'int4 g64 asym hqq'",
            f"{Q} smollm2 --tag _b --only trap g128 'g64 sym hqq' per-channel",
        ),
        ("quantize_smollm2_a.json", "quantize_smollm2_b.json"),
        minutes=15,
    ),
    recipe("int4-smollm2-recipe", "weight-only", "int4_smollm2", report="quantize_int4_smollm2_recipe.json", minutes=9),
    recipe(
        "gptq-int8emb-smollm2",
        "weight-only",
        "gptq_int8emb_smollm2",
        report="quantize_smollm2_gptq_int8emb_recipe.json",
        minutes=7,
    ),
    # ---- mixed precision
    Run(
        "mixed-resnet20",
        "mixed-precision",
        (
            f"{Q} resnet20 --no-latency --only 'uniform W4A8' 'uniform W3A8' '(kl)' --tag _mixed_kl --threads 1",
            f"{Q} resnet20 --no-latency --only '(hessian)' --tag _mixed_hessian --threads 1",
        ),
        ("quantize_resnet20_mixed_kl.json", "quantize_resnet20_mixed_hessian.json"),
    ),
    recipe(
        "mixed-resnet20-recipe",
        "mixed-precision",
        "mixed_resnet20",
        report="quantize_mixed_resnet20_recipe.json",
        minutes=1,
    ),
    Run("search-mixed-bits", "mixed-precision", (f"{SE} mixed",), ("search.json",), minutes=2.4),
    # ---- low-rank (issue 7)
    Run("svd-lenet300", "lowrank", (f"{LD} --only svd_lenet300 --seeds 3",), ("lowrank_distill.json",), minutes=20.8),
    Run(
        "svd-resnet20",
        "lowrank",
        (f"{LD} --only svd_resnet20 --seeds 3 --ft-epochs 2",),
        ("lowrank_distill.json",),
        minutes=11.9,
    ),
    Run(
        "svd-minilm",
        "lowrank",
        (
            f"{LD} --threads 1 --only svd_minilm --minilm-calib 256 --no-minilm-latency",
            f"{LD} --threads 1 --only svd_minilm --minilm-calib 256 --no-minilm-latency "
            "--minilm-variants output_aware output_aware_sequential output_alloc_sequential",
        ),
        ("lowrank_distill.json",),
        note="the second command replaces the first's key: the quoted record merged both by hand (its runs list)",
    ),
    Run(
        "activation-rank",
        "lowrank",
        (f"{LD} --only activation_rank",),
        ("lowrank_distill.json",),
        minutes=0.5,
        estimated=True,
        quick=True,
    ),
    recipe(
        "svd-lenet300-2x",
        "lowrank",
        "svd_lenet300_2x",
        report="svd_lenet300_2x_report.json",
        minutes=0.5,
        quick=True,
        estimated=True,
    ),
    recipe("svd-minilm-ffn", "lowrank", "svd_minilm_ffn", report="svd_minilm_ffn_report.json", minutes=7.2),
    # ---- distillation (issue 7)
    Run(
        "kd-resnet20",
        "distillation",
        tuple(
            f"{LD} --threads 1 --only kd_resnet20 --seeds 1 --seed-start {s} --kd-epochs 3 --tag _s{s}"
            for s in range(3)
        ),
        ("lowrank_distill.json",),
        minutes=13.5,
    ),
    Run(
        "prune-distill-lenet300",
        "distillation",
        (f"{LD} --threads 1 --only prune_distill --seeds 3",),
        ("lowrank_distill.json",),
        minutes=1,
        quick=True,
    ),
    Run(
        "prune-distill-resnet20-25",
        "distillation",
        tuple(
            f"{LD} --threads 1 --only prune_distill_resnet20 --seeds 1 --seed-start {s} --kd-epochs 2 "
            f"--pd-macs 0.25 --pd-teacher-split --pd-variants 4:0.5:4 --tag _25macs_s{s}"
            for s in range(4)
        ),
        ("lowrank_distill.json",),
        minutes=18,
        note="the quoted record `prune_distill_resnet20_25macs` merged the four per-seed files by hand",
    ),
    Run(
        "prune-distill-resnet20-50",
        "distillation",
        (f"{LD} --threads 1 --only prune_distill_resnet20 --seeds 3 --kd-epochs 1",),
        ("lowrank_distill.json",),
        minutes=7.8,
    ),
    Run("train-big", "distillation", (f"{LD} --only train_big --seeds 3",), ("lowrank_distill.json",), minutes=4.7),
    recipe("kd-resnet20-half", "distillation", "kd_resnet20_half", report="kd_resnet20_half_report.json", minutes=8),
    recipe(
        "prune-distill-lenet300-recipe",
        "distillation",
        "prune_distill_lenet300",
        report="prune_distill_lenet300_report.json",
        minutes=0.5,
        estimated=True,
    ),
    # ---- Deep Compression (issue 8)
    recipe(
        "dc-lenet300",
        "deep-compression",
        "deep_compression_lenet300",
        report="deep_compression_lenet300_v2_report.json",
        minutes=2.4,
        quick=True,
        more=(Copy("runs/bench/dc-lenet300/deep_compression.md", "deep_compression_lenet300_v2.md"),),
    ),
    Run(
        "dc-lenet5-resnet20",
        "deep-compression",
        (
            "netslim compress recipes/deep_compression_lenet5.yaml --out runs/bench/dc/lenet5 --force",
            "netslim compress recipes/deep_compression_resnet20.yaml --out runs/bench/dc/resnet20 --force",
            "benchmarks/deep_compression.py --models lenet5,resnet20 --from-runs runs/bench/dc",
        ),
        ("deep_compression.json",),
        minutes=15.2,
    ),
    Run(
        "dc-lenet300-measure",
        "deep-compression",
        (
            "netslim compress recipes/deep_compression_lenet300.yaml --out runs/bench/dc/lenet300 --force",
            "benchmarks/deep_compression.py --models lenet300 --from-runs runs/bench/dc",
        ),
        ("deep_compression.json",),
        minutes=3,
        note="the quoted load times and index coding were measured on the first recipe's file (superseded ratio)",
    ),
    Run(
        "dc-tradeoff",
        "deep-compression",
        ("benchmarks/deep_compression.py --models '' --tradeoff",),
        ("deep_compression.json", "deep_compression_tradeoff.png"),
    ),
    # ---- policy search / NAS (issue 9)
    Run("search-ray", "search", (f"{SE} ray",), ("search.json",), minutes=1.5, estimated=True, quick=True),
    Run(
        "search-resnet20",
        "search",
        (
            f"{SE} prep",
            *(f"{SE} finetune --seed {s} --max-steps 200" for s in range(3)),
            f"{SE} cem-fill",
            *(f"{SE} finetune --seed {s} --max-steps 200 --policies cem_fill" for s in range(3)),
        ),
        ("search.json",),
        minutes=70,
        estimated=True,
    ),
    Run(
        "search-mbv2",
        "search",
        (
            f"{SE} mbv2 --phase search --tag _v2",
            f"{SE} mbv2 --phase finetune --tag _v2",
            f"{SE} mbv2 --phase finetune --tag _v2 --ft-seed 2",
            f"{SE} mbv2 --phase finetune --tag _v2 --ft-seed 3",
        ),
        ("search.json",),
        minutes=13,
        estimated=True,
    ),
    Run(
        "search-nas",
        "search",
        (
            f"{SE} nas --population 6 --generations 3 --steps 100",
            f"{SE} nas-train --arch best --steps 800",
            f"{SE} nas-latency",
            f"{SE} nas-train --arch resnet20 --steps 800",
            f"{SE} nas-train --arch resnet20,best --steps 800 --seed 1",
            f"{SE} nas-plot --name nas_pareto",
        ),
        ("search.json",),
        minutes=30,
        estimated=True,
        note="the first command stopped at the 10-minute job limit after its 12 trials; a rerun resumes them",
    ),
    recipe(
        "search-resnet20-recipe",
        "search",
        "search_resnet20_macs2x",
        minutes=5.5,
        more=(
            Copy("runs/bench/search-resnet20-recipe/report.json", "search/recipe_search_resnet20_macs2x/report.json"),
        ),
    ),
    # ---- export / import (issue 18)
    Run(
        "export-hf-gptq",
        "export",
        (
            "benchmarks/export_hf.py --group-size 64 --threads 2 --out benchmarks/results/issue18_hf_g64.json",
            "benchmarks/export_hf.py --group-size 128 --threads 2 --out benchmarks/results/issue18_hf.json",
        ),
        ("issue18_hf_g64.json", "issue18_hf.json"),
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    Run(
        "export-hf-sparse",
        "export",
        (
            "netslim compress sparsegpt_smollm2_50 --out runs/bench/sparsegpt_smollm2_50 --force",
            "benchmarks/export_hf.py --artifact runs/bench/sparsegpt_smollm2_50/sparsegpt_smollm2_50.sparse.safetensors "
            "--threads 2 --out benchmarks/results/issue18_hf_sparsegpt50.json",
        ),
        ("issue18_hf_sparsegpt50.json",),
        note="the quoted record exported the streamed run's artifact",
    ),
    Run(
        "export-hf-int8emb",
        "export",
        (
            "netslim compress gptq_int8emb_smollm2 --out runs/bench/gptq_int8emb_smollm2 --force",
            "benchmarks/export_hf.py --artifact runs/bench/gptq_int8emb_smollm2/gptq_int8emb_smollm2.safetensors "
            "--threads 1 --out benchmarks/results/issue18_hf_int8emb.json",
        ),
        ("issue18_hf_int8emb.json",),
    ),
    Run(
        "export-hf-minilm",
        "export",
        ("benchmarks/export_hf_encoder.py",),
        ("issue18_hf_minilm.json",),
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    Run(
        "export-gguf",
        "export",
        ("benchmarks/export_gguf.py --threads 2 --keep /tmp/gguf_keep",),
        ("issue18_gguf.json",),
        minutes=22,
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    Run(
        "import-llmc",
        "export",
        ("benchmarks/import_llmc.py --threads 1",),
        ("issue18_llmc_import.json",),
        env=(("OMP_NUM_THREADS", "1"),),
        note="needs .cache/venv-llmc (README)",
    ),
    # ---- prune + quantize (issue 21)
    Run(
        "prune-quantize-llm",
        "prune-quantize",
        ("benchmarks/prune_quantize.py --llm --llm-orders dense_gptq prune_first quantize_first joint",),
        ("issue21_llm.json",),
        minutes=46,
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    Run(
        "prune-quantize-cnn",
        "prune-quantize",
        ("benchmarks/prune_quantize.py --cnn --only lenet5",),
        ("issue21_cnn.json",),
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    Run(
        "prune-quantize-cnn-resnet20",
        "prune-quantize",
        (
            "benchmarks/prune_quantize.py --cnn --only resnet20 --orders prune_ptq --sparsities 0.5 --bits 4",
            "benchmarks/prune_quantize.py --cnn --only resnet20 --orders prune_ptq --sparsities 0.7 --bits 4 "
            "--keep .cache/issue21_keep",
            "benchmarks/prune_quantize.py --cnn --only resnet20 --orders prune_ptq --sparsities 0.9 --bits 8 "
            "--keep .cache/issue21_keep",
        ),
        ("issue21_cnn.json",),
        minutes=60,
        env=(("OMP_NUM_THREADS", "2"),),
        note="about 20 min per case on 2 cores beside other jobs; the cases the issue lists that are not here did not run",
    ),
    Run(
        "prune-quantize-cnn-resnet20-latency",
        "prune-quantize",
        ("benchmarks/prune_quantize.py --remeasure-latency .cache/issue21_keep --only resnet20",),
        ("issue21_cnn.json",),
        minutes=3,
        estimated=True,
        note="re-times the kept artifacts on a quiet machine (latency_remeasured in the record)",
    ),
    Run(
        "train-minilm-docs",
        "structured",
        ("netslim train minilm-docs --epochs 1",),
        (),
        minutes=47,
        note="one epoch (the shipped default is 3); beside other jobs; writes the cache's models/minilm-docs.safetensors",
    ),
    Run(
        "transformer-pruning-heads",
        "structured",
        (
            "benchmarks/transformer_pruning.py --only heads --checkpoint .cache/netslim/models/minilm-docs.safetensors "
            "--max-steps 100 --artifacts .cache/issue20",
        ),
        ("issue20_transformer_pruning.json",),
        minutes=20,
    ),
    # ---- int8 transformer inference, shared harness (issue 25)
    Run(
        "inference-minilm",
        "quantization",
        ("benchmarks/inference.py --out benchmarks/results/issue25_minilm.json",),
        ("issue25_minilm.json", "issue25_minilm.md"),
        minutes=6,
        env=(("OMP_NUM_THREADS", "2"), ("HF_HUB_OFFLINE", "1")),
    ),
    Run(
        "inference-smollm2",
        "weight-only",
        ("benchmarks/inference.py --llm --out benchmarks/results/issue25_smollm2.json",),
        ("issue25_smollm2.json", "issue25_smollm2.md"),
        env=(("OMP_NUM_THREADS", "2"), ("HF_HUB_OFFLINE", "1")),
    ),
    Run(
        "inference-smollm2-int4kernel",
        "weight-only",
        ("benchmarks/inference.py --llm --only int4 --out benchmarks/results/issue25_smollm2_int4kernel.json",),
        ("issue25_smollm2_int4kernel.json", "issue25_smollm2_int4kernel.md"),
        minutes=10,
        env=(("OMP_NUM_THREADS", "2"), ("HF_HUB_OFFLINE", "1")),
    ),
    Run(
        "inference-smollm2-ort",
        "weight-only",
        ("benchmarks/inference.py --llm --only ORT --out benchmarks/results/issue25_smollm2_ort.json",),
        ("issue25_smollm2_ort.json", "issue25_smollm2_ort.md"),
        minutes=10,
        estimated=True,
        env=(("OMP_NUM_THREADS", "2"), ("HF_HUB_OFFLINE", "1")),
    ),
    # ---- scale (issue 19)
    Run(
        "streaming-smollm2",
        "scale",
        ("benchmarks/streaming.py --parts smollm2",),
        ("issue19_streaming.json",),
        minutes=22,
    ),
    Run(
        "ddp-resnet20",
        "scale",
        ("benchmarks/ddp.py --epochs 2 --batch-size 128 --threads 2",),
        ("issue19_ddp.json",),
        minutes=7,
        env=(("OMP_NUM_THREADS", "2"),),
    ),
    # ---- reliability (issue 23)
    Run(
        "reliability-probe",
        "reliability",
        ("benchmarks/reliability_probe.py --jobs 1 --markdown /tmp/probe_tables.md",),
        ("reliability_probe.json",),
        minutes=16,
        env=(("OMP_NUM_THREADS", "1"),),
        note="the quoted run ran in a snapshot clone of its commit, so that no file changed under it",
    ),
    Run(
        "checksum-overhead",
        "reliability",
        ("benchmarks/checksum_overhead.py --repeats 5",),
        ("checksum_overhead.json",),
        minutes=1.5,
        estimated=True,
        quick=True,
        env=(("OMP_NUM_THREADS", "1"),),
    ),
    # ---- your own model and data (issue 17)
    Run(
        "journeys",
        "journeys",
        ("benchmarks/byo_data.py all .cache/byo", "benchmarks/journeys.py a b c --c-recipes gptq_w4g128 sparsegpt_50"),
        ("issue17_journeys.json",),
        minutes=100,
        estimated=True,
    ),
)
BY_ID = {r.id: r for r in RUNS}


def environment(run: Run) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NETSLIM_CACHE", str(ROOT / ".cache" / "netslim"))
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("NETSLIM_PROGRESS", "0")
    env.update(dict(run.env))
    return env


def argv(cmd: str) -> list[str]:
    """A command line as run: scripts under this interpreter, ``netslim`` as the venv's CLI beside it."""
    parts = shlex.split(cmd)
    if parts[0] == "netslim":
        return [str(Path(sys.executable).with_name("netslim")), *parts[1:]]
    return [sys.executable, *parts]


def shown(run: Run, cmd: str) -> str:
    """The command as a person types it from the repository root (``make bench`` sets the same environment)."""
    prefix = " ".join(f"{k}={v}" for k, v in run.env)
    cmd = f".venv/bin/{cmd}" if cmd.startswith("netslim ") else f".venv/bin/python {cmd}"
    return f"{prefix} {cmd}".strip()


def minutes_text(run: Run) -> str:
    return "?" if run.minutes is None else f"{'~' if run.estimated else ''}{run.minutes:g} min"


def execute(run: Run) -> int:
    for cmd in run.cmds:
        print(f"[bench] {run.id}: {shown(run, cmd)}", flush=True)
        rc = subprocess.call(argv(cmd), cwd=ROOT, env=environment(run))
        if rc:
            return rc
    for c in run.copies:
        dst = ROOT / RESULTS / c.dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / c.src, dst)
        print(f"[bench] {run.id}: copied {c.src} -> {RESULTS}/{c.dst}", flush=True)
    return 0


def check(runs: list[Run]) -> int:
    """Every ``--option`` a command uses appears in its script's ``--help`` (the scripts are not run)."""
    helps: dict[tuple[str, ...], str] = {}
    bad = 0
    for run in runs:
        for cmd in run.cmds:
            parts = shlex.split(cmd)
            probe = tuple(argv(cmd)[:2]) + tuple(_subcommand(parts))
            if probe not in helps:
                done = subprocess.run(
                    [*probe, "--help"], cwd=ROOT, env=environment(run), capture_output=True, text=True, timeout=300
                )
                helps[probe] = done.stdout + done.stderr
            missing = [o for o in re.findall(r"(?<![\w-])--[a-z][\w-]*", cmd) if o not in helps[probe]]
            if missing:
                bad += 1
                print(f"[check] {run.id}: {' '.join(missing)} not in the --help of {' '.join(parts[:2])}", flush=True)
    print(f"[check] {len(runs)} runs, {sum(len(r.cmds) for r in runs)} commands, {bad} with unknown options")
    return 1 if bad else 0


def _subcommand(parts: list[str]) -> list[str]:
    """The subcommand whose options a command uses (``structured.py cnn``, ``search.py nas``, ``netslim compress``)."""
    if parts[0] == "netslim" or parts[0].endswith(("structured.py", "search.py", "byo_data.py")):
        return [parts[1]] if len(parts) > 1 and not parts[1].startswith("-") else []
    return []


def main(args: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ids", nargs="*", help="run these ids only (default: all, or the quick subset)")
    p.add_argument("--quick", action="store_true", help=f"the quick subset (under {QUICK_BUDGET_MIN:g} minutes)")
    p.add_argument("--technique", action="append", default=[], help="runs quoted by this reference section")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--list", action="store_true", help="ids, technique, minutes, records")
    p.add_argument("--check", action="store_true", help="check every option against its script's --help")
    p.add_argument("--keep-going", action="store_true", help="run the rest after a failure")
    a = p.parse_args(args)
    unknown = [i for i in a.ids if i not in BY_ID]
    if unknown:
        p.error(f"unknown run id(s) {', '.join(unknown)}; see --list")
    runs = [
        r
        for r in RUNS
        if (not a.ids or r.id in a.ids) and (not a.quick or r.quick) and (not a.technique or r.technique in a.technique)
    ]
    if a.list:
        for r in runs:
            print(f"{r.id:36} {r.technique:18} {minutes_text(r):>9} {'quick ' if r.quick else ''}{', '.join(r.writes)}")
        return 0
    if a.check:
        return check(runs)
    if a.dry_run:
        total = sum(r.minutes or 0 for r in runs)
        for r in runs:
            print(f"# {r.id} ({r.technique}, {minutes_text(r)}){': ' + r.note if r.note else ''}")
            for cmd in r.cmds:
                print(shown(r, cmd))
            for c in r.copies:
                print(f"cp {c.src} {RESULTS}/{c.dst}")
        print(
            f"# {len(runs)} runs; recorded or estimated minutes add up to {total:g}"
            f"{'' if all(r.minutes is not None for r in runs) else ' (some runs have no recorded time)'}"
        )
        return 0
    failed, t0 = [], time.time()
    for r in runs:
        t = time.time()
        rc = execute(r)
        print(
            f"[bench] {r.id}: exit {rc} after {(time.time() - t) / 60:.1f} min ({minutes_text(r)} recorded)", flush=True
        )
        if rc:
            failed.append(r.id)
            if not a.keep_going:
                break
    total = (time.time() - t0) / 60
    print(f"[bench] {len(runs)} runs in {total:.1f} min" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if a.quick and total > QUICK_BUDGET_MIN:
        print(f"[bench] --quick took {total:.1f} min, over its {QUICK_BUDGET_MIN:g}-minute budget: trim the subset")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
