"""Issue 18: heads + FFN pruned MiniLM -> ``format: hf`` -> plain ``transformers.AutoModel`` ->
the same sentence embeddings (in a child process that never imports netslim).

MiniLM (all-MiniLM-L6-v2, from the PyPI package) with a third of its heads (4 of 12 per block)
and half its FFN neurons removed (L2 criterion, no recovery: the export is what is measured, not
the pruning), exported with :func:`netslim.export.hf.export_hf`; the child loads the directory
with ``AutoModel.from_pretrained`` and embeds the same Python-docs test sentences (mean pooling
over the attention mask, L2-normalised, as sentence-transformers does). Reported: max |difference|
of the embeddings, their mean cosine, the pruned model's fidelity to dense MiniLM from both sides,
parameters and directory bytes (the removed heads are written back as zero heads: BERT's config
cannot hold 8 heads of 32 with hidden 384).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/export_hf_encoder.py`` (``--tiny``: 64
sentences). Writes benchmarks/results/issue18_hf_minilm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, torch, transformers
from safetensors.torch import load_file, save_file
directory, batch_file, out_file = sys.argv[1:4]
model = transformers.AutoModel.from_pretrained(directory).eval()
b = load_file(batch_file)
embs = []
with torch.no_grad():
    for i in range(0, len(b["input_ids"]), 64):
        ids, mask = b["input_ids"][i:i + 64], b["attention_mask"][i:i + 64]
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        embs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1))
assert "netslim" not in sys.modules
save_file({"emb": torch.cat(embs)}, out_file)
print(type(model).__name__, sum(p.numel() for p in model.parameters()))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/netslim_export_hf_minilm")
    ap.add_argument("--out", default="benchmarks/results/issue18_hf_minilm.json")
    args = ap.parse_args()
    n = 64 if args.tiny else args.sentences
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    from netslim.export.hf import export_hf
    from netslim.models import build_model
    from netslim.models.hf import register_hf_models
    from netslim.prune.structured import shrink_ffn, shrink_heads
    from netslim.train.lm_tasks import EmbeddingTask

    register_hf_models()
    dense = build_model("minilm").eval()
    task = EmbeddingTask(limit=n)
    texts = task.sentences("test")
    model = build_model("minilm").eval()
    shrink_heads(model, 1 / 3)
    shrink_ffn(model, 0.5)
    ours = task.embed(model, texts)
    ref = task.embed(dense, texts)
    directory, notes = export_hf(model, work / "minilm_heads_ffn", {"source": "minilm"})
    batch = task.encode(texts)
    save_file({k: v.contiguous() for k, v in batch.items()}, str(work / "batch.safetensors"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(directory),
            str(work / "batch.safetensors"),
            str(work / "theirs.safetensors"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    cls, params = proc.stdout.split()[-2:]
    theirs = load_file(str(work / "theirs.safetensors"))["emb"]
    result = {
        "sentences": len(texts),
        "heads_kept": notes.get("pruned_heads", {}).get("heads_kept"),
        "intermediate_size": model.config.intermediate_size,
        "max_abs_diff": float((ours - theirs).abs().max()),
        "mean_cosine_netslim_vs_transformers": float((ours * theirs).sum(-1).mean()),
        "fidelity_to_dense_netslim": float((ours * ref).sum(-1).mean()),
        "fidelity_to_dense_transformers": float((theirs * ref).sum(-1).mean()),
        "params_netslim": sum(p.numel() for p in model.parameters()),
        "params_transformers": int(params),
        "params_dense": sum(p.numel() for p in dense.parameters()),
        "transformers_class": cls,
        "directory_bytes": sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()),
        "export_notes": notes,
        "threads": args.threads,
        "load_avg": os.getloadavg()[0],
        "command": "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/export_hf_encoder.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out if not args.tiny else work / "tiny.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "export_notes"}, indent=1))


if __name__ == "__main__":
    main()
