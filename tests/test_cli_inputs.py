"""Bad input through the CLI (issue 17, "Bad input"): the user's own model and data.

Every case must end the same way: exit code 2, stderr exactly one line ``netslim: error: ...``
that names the input (a path, column or file) and the problem, no traceback, and no ``--out``
folder or file (the run resolves model and data before it writes anything).

The cases run in one subprocess that imports netslim, torch and transformers once and then
forks a fresh child per command line (``fork`` + ``netslim.cli.main``): each child is a real
process with its own stderr, logging and warning state, as a separate ``netslim`` call would
be, without paying the imports again for each of the ~35 cases.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

tf = pytest.importorskip("transformers")
if not hasattr(os, "fork"):
    pytest.skip("the cases run in forked children (POSIX)", allow_module_level=True)

import netslim  # noqa: E402
from netslim.models.hf_tokenizers import byte_tokenizer  # noqa: E402

CNN_FILE = textwrap.dedent("""
    import torch
    from torch import nn


    def build(width=4):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(width * 8 * 8, 2))


    def wide():
        return build(8)
""")

# Runs each case in a forked child of one process that has done the imports.
DRIVER = textwrap.dedent("""
    import json, os, sys, traceback

    # What the commands import, imported once before the forks (the test checks that it prints nothing).
    import PIL.Image, PIL.PngImagePlugin, transformers
    import netslim.cli, netslim.recipe.runner, netslim.models.sources, netslim.report, netslim.train.user
    from netslim.core.registry import load_sources
    from transformers import BertForSequenceClassification, BertModel, LlamaForCausalLM, PreTrainedTokenizerFast

    load_sources()  # the method families (importing them registers them)
    cases, folder = json.load(open(sys.argv[1])), sys.argv[2]
    results = {}
    for name, argv in cases:
        err = os.path.join(folder, name + ".stderr")
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.argv = ["netslim", *argv]
            try:
                netslim.cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:  # what the interpreter would print for an uncaught exception
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        results[name] = {"rc": os.waitstatus_to_exitcode(status), "stderr": open(err).read()}
    print(json.dumps(results))
""")

R = "compress {d}/recipe.yaml --out {out}"
COLUMN = "compress {d}/recipe_category.yaml --out {out}"  # the recipe names label_column: category
CNN = "--model {d}/cnn.py:build"

# (case, command line, what the one line must say). {d}: the inputs; {out}: the output that must not appear.
CASES = [
    # ------------------------------------------------------------------ models
    (
        "hf_without_weights",
        R + " --model {d}/no_weights --data {d}/corpus.txt",
        r"{d}/no_weights has no weights: expected model\.safetensors.*save_pretrained",
    ),
    (
        "hf_without_config",
        R + " --model {d}/no_config --data {d}/corpus.txt",
        r"{d}/no_config is not a Hugging Face model directory: it has no config\.json",
    ),
    (
        "hf_unknown_architecture",
        R + " --model {d}/unknown_arch --data {d}/corpus.txt",
        r"{d}/unknown_arch/config\.json: Unknown Hugging Face model class 'FooBarForCausalLM'.*fix 'architectures'",
    ),
    (
        "hf_weights_missing",
        R + " --model {d}/cls_missing --data {d}/labelled.jsonl",
        r"{d}/cls_missing: the weights do not match config\.json \(BertForSequenceClassification\): "
        r"no tensor for bert\.encoder\.layer\.0\.attention\.self\.query\.weight",
    ),
    (
        "hf_weights_other_shape",
        R + " --model {d}/cls_shape --data {d}/labelled.jsonl",
        r"{d}/cls_shape: the weights do not match config\.json .*classifier\.bias: file \(3,\) vs config \(2,\)",
    ),
    (
        "hf_weights_corrupt",
        R + " --model {d}/corrupt_weights --data {d}/corpus.txt",
        r"{d}/corrupt_weights: transformers cannot load it as LlamaForCausalLM: .*header",
    ),
    (
        "hf_without_tokenizer",
        R + " --model {d}/no_tokenizer --data {d}/corpus.txt",
        r"{d}/no_tokenizer has no tokenizer files",
    ),
    (
        "factory_file_missing",
        R + " --model {d}/missing.py:build --data {d}/imgs",
        r"Model file '{d}/missing\.py' \(from '{d}/missing\.py:build'\) does not exist",
    ),
    (
        "factory_function_missing",
        R + " --model {d}/cnn.py:nofunc --data {d}/imgs",
        r"{d}/cnn\.py has no function 'nofunc'; callables there: build, wide",
    ),
    (
        "factory_weights_missing",
        R + " " + CNN + " --weights {d}/missing.safetensors --data {d}/imgs",
        r"Weights file '{d}/missing\.safetensors' does not exist",
    ),
    (
        "factory_weights_of_another_model",
        R + " " + CNN + " --weights {d}/linear.safetensors --data {d}/imgs",
        r"Weights {d}/linear\.safetensors do not match the model \(Sequential\): missing 0\.bias.*unexpected bias",
    ),
    (
        "factory_weights_other_shape",
        R + " " + CNN + " --weights {d}/wide.safetensors --data {d}/imgs",
        r"Weights {d}/wide\.safetensors do not match the model \(Sequential\): .*0\.weight: file \(8, 1, 3, 3\) vs "
        r"model \(4, 1, 3, 3\)",
    ),
    (
        "factory_weights_not_a_state_dict",
        R + " " + CNN + " --weights {d}/garbage.pt --data {d}/imgs",
        r"Weights {d}/garbage\.pt: torch\.load\(weights_only=True\) cannot read it \(UnpicklingError: ",
    ),
    # -------------------------------------------------------------------- data
    (
        "images_one_class",
        R + " " + CNN + " --data {d}/one_class",
        r"Image folder '{d}/one_class' has one class \('a'\); classification needs at least two",
    ),
    (
        "image_unreadable",
        R + " " + CNN + " --data {d}/corrupt_image",
        r"Image '{d}/corrupt_image/a/3\.png' cannot be read",
    ),
    (
        "images_mixed_sizes",
        R + " " + CNN + " --data {d}/mixed_sizes",
        r"Image folder '{d}/mixed_sizes': images differ in size .*b/5\.png is 10x6.*set image_size",
    ),
    (
        "jsonl_missing_text_column",
        R + " --model {d}/cls --data {d}/sentences.jsonl",
        r"{d}/sentences\.jsonl: no column 'text' \(the text_column\); columns present: sentence, label",
    ),
    (
        "csv_missing_text_column",
        R + " --model {d}/cls --data {d}/sentences.csv",
        r"{d}/sentences\.csv: no column 'text' \(the text_column\); columns present: sentence, label",
    ),
    (
        "jsonl_missing_named_label_column",
        COLUMN + " --model {d}/cls --data {d}/labelled.jsonl",
        r"{d}/labelled\.jsonl: no column 'category' \(the label_column\); columns present: text, label",
    ),
    (
        "csv_missing_named_label_column",
        COLUMN + " --model {d}/cls --data {d}/labelled.csv --task text-classification",
        r"{d}/labelled\.csv: no column 'category' \(the label_column\); columns present: text, label",
    ),
    ("empty_text_file", R + " --model {d}/llama --data {d}/empty.txt", r"Text file '{d}/empty\.txt' is empty"),
    (
        "empty_text_row",
        R + " --model {d}/llama --data {d}/empty_row.jsonl --task causal-lm",
        r"{d}/empty_row\.jsonl:8: empty text in column 'text'",
    ),
    (
        "label_a_list",
        R + " --model {d}/cls --data {d}/label_list.jsonl",
        r"{d}/label_list\.jsonl:1: label \[0\] in column 'label' must be an integer or a non-empty string",
    ),
    (
        "label_a_float",
        R + " --model {d}/cls --data {d}/label_float.jsonl",
        r"{d}/label_float\.jsonl:1: label 0\.5 in column 'label' must be an integer or a non-empty string",
    ),
    (
        "data_path_missing",
        R + " " + CNN + " --data {d}/nothing_here",
        r"Data path '{d}/nothing_here' does not exist; give an image folder",
    ),
    (
        "data_wildcard",
        R + " " + CNN + " --data {d}/*.png",
        r"Data path '{d}/\*\.png' does not exist \(wildcards are not expanded",
    ),
    (
        "data_folder_of_nothing_readable",
        R + " " + CNN + " --data {d}/unreadable_folder",
        r"Data folder '{d}/unreadable_folder' holds no class subfolders of images",
    ),
    # --------------------------------------------------------- task vs model
    (
        "perplexity_for_an_encoder",
        R + " --model {d}/bert --data {d}/corpus.txt --task causal-lm",
        r"data '{d}/corpus\.txt': task 'causal-lm' does not fit an encoder \(BertModel\).*--task embedding",
    ),
    (
        "images_for_a_causal_lm",
        R + " --model {d}/llama --data {d}/imgs",
        r"data '{d}/imgs': task 'image-classification' does not fit a causal LM \(LlamaForCausalLM\)",
    ),
    (
        "text_for_a_cnn",
        R + " " + CNN + " --data {d}/corpus.txt",
        r"data '{d}/corpus\.txt': text without labels .*got a plain nn\.Module \(Sequential\)",
    ),
    (
        "labels_for_a_causal_lm",
        R + " --model {d}/llama --data {d}/labelled.jsonl",
        r"data '{d}/labelled\.jsonl': task 'text-classification' does not fit a causal LM.*--task causal-lm",
    ),
    # ----------------------------------------------------------------- options
    (
        "limit_zero",
        R + " " + CNN + " --data {d}/imgs --limit 0",
        r"--limit must be an int in \[1, 2,147,483,647\]; got 0\.",
    ),
    (
        "limit_negative",
        R + " " + CNN + " --data {d}/imgs --limit -5",
        r"--limit must be an int in \[1, 2,147,483,647\]; got -5\.",
    ),
    (
        "task_bogus",
        R + " " + CNN + " --data {d}/imgs --task bogus",
        r"--task must be one of auto, image-classification, text-classification, causal-lm, embedding; got 'bogus'",
    ),
    # ------------------------------------------------------- other commands
    (
        "train_one_class",
        "train " + CNN + " --data {d}/one_class --out {out}/m.safetensors",
        r"Image folder '{d}/one_class' has one class",
    ),
    (
        "train_perplexity_for_an_encoder",
        "train --model {d}/bert --data {d}/corpus.txt --task causal-lm --out {out}/m.safetensors",
        r"task 'causal-lm' does not fit an encoder \(BertModel\)",
    ),
    (
        "train_limit_zero",
        "train " + CNN + " --data {d}/imgs --limit 0 --out {out}/m.safetensors",
        r"--limit must be an int in \[1, 2,147,483,647\]; got 0\.",
    ),
    (
        "eval_mixed_sizes",
        "eval {d}/cnn.py:build --data {d}/mixed_sizes",
        r"Image folder '{d}/mixed_sizes': images differ",
    ),
    (
        "eval_limit_negative",
        "eval {d}/cnn.py:build --data {d}/imgs --limit -5",
        r"--limit must be an int in \[1, 2,147,483,647\]; got -5\.",
    ),
    ("eval_hf_without_weights", "eval {d}/no_weights --data {d}/corpus.txt", r"{d}/no_weights has no weights"),
]
# The same inputs, well formed: these run (so the recipe, the files and the harness are sound, and
# a run does create --out).
CONTROLS = [
    ("control_compress_cnn_on_images", R + " " + CNN + " --data {d}/imgs"),
    ("control_eval_classifier_on_jsonl", "eval {d}/cls --data {d}/labelled.jsonl --limit 4"),
]


# ---------------------------------------------------------------------------- inputs
def _png(path, value, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _hf_dir(path, model, tokenizer_kind):
    model.save_pretrained(path)
    byte_tokenizer(tokenizer_kind).save_pretrained(path)
    return path


def _copy_dir(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _models(d):
    (d / "cnn.py").write_text(CNN_FILE)
    save_file({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, str(d / "linear.safetensors"))
    wide = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 2)
    )
    save_file(wide.state_dict(), str(d / "wide.safetensors"))
    (d / "garbage.pt").write_bytes(b"not a torch file")

    llama = _hf_dir(d / "llama", netslim.build_model("tiny-llama"), "causal")
    bert = netslim.build_model("tiny-bert")
    _hf_dir(d / "bert", bert, "bert")
    config = copy.deepcopy(bert.config)
    config.num_labels, config.architectures = 2, None
    torch.manual_seed(0)
    cls = _hf_dir(d / "cls", tf.BertForSequenceClassification(config), "bert")

    (_copy_dir(llama, d / "no_weights") / "model.safetensors").unlink()
    (_copy_dir(llama, d / "no_config") / "config.json").unlink()
    cfg = json.loads((llama / "config.json").read_text())
    (_copy_dir(llama, d / "unknown_arch") / "config.json").write_text(
        json.dumps({**cfg, "architectures": ["FooBarForCausalLM"]})
    )
    (_copy_dir(llama, d / "corrupt_weights") / "model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{}junk")
    for f in _copy_dir(llama, d / "no_tokenizer").glob("tokenizer*"):
        f.unlink()
    state = load_file(str(cls / "model.safetensors"))
    # A body tensor (a missing task head is only a warning: a new head to fine-tune).
    missing = {k: v for k, v in state.items() if k != "bert.encoder.layer.0.attention.self.query.weight"}
    save_file(missing, str(_copy_dir(cls, d / "cls_missing") / "model.safetensors"), metadata={"format": "pt"})
    other = {**state, "classifier.weight": torch.zeros(3, config.hidden_size), "classifier.bias": torch.zeros(3)}
    save_file(other, str(_copy_dir(cls, d / "cls_shape") / "model.safetensors"), metadata={"format": "pt"})


def _data(d):
    for c in "ab":
        for i in range(12):
            _png(d / "imgs" / c / f"{i}.png", 10 * i + (100 if c == "b" else 0))
            _png(d / "corrupt_image" / c / f"{i}.png", 10 * i)
            _png(d / "mixed_sizes" / c / f"{i}.png", 10 * i, (10, 6) if (c, i) == ("b", 5) else (8, 8))
    (d / "corrupt_image" / "a" / "3.png").write_bytes(b"not a png")
    for i in range(12):
        _png(d / "one_class" / "a" / f"{i}.png", i)
    (d / "unreadable_folder").mkdir()
    (d / "unreadable_folder" / "notes.json").write_text("{}")

    (d / "corpus.txt").write_text("".join(f"Line {i} of a text to score a language model on.\n" for i in range(60)))
    (d / "empty.txt").write_text("  \n\n")
    _jsonl(d / "labelled.jsonl", [{"text": f"sentence number {i} here.", "label": i % 2} for i in range(40)])
    (d / "labelled.csv").write_text("text,label\n" + "".join(f"row {i} of text,{i % 2}\n" for i in range(40)))
    _jsonl(d / "sentences.jsonl", [{"sentence": f"s {i}.", "label": i % 2} for i in range(40)])
    (d / "sentences.csv").write_text("sentence,label\n" + "".join(f"s {i}.,{i % 2}\n" for i in range(40)))
    _jsonl(d / "empty_row.jsonl", [{"text": "" if i == 7 else f"s {i}.", "label": i % 2} for i in range(40)])
    _jsonl(d / "label_list.jsonl", [{"text": f"s {i}.", "label": [i % 2]} for i in range(40)])
    _jsonl(d / "label_float.jsonl", [{"text": f"s {i}.", "label": 0.5 + i % 2} for i in range(40)])

    steps = "measure: {batch_size: 2, repeats: 1}\nsteps:\n  - method: evaluate\n"
    (d / "recipe.yaml").write_text("name: inputs\n" + steps)
    (d / "recipe_category.yaml").write_text("name: inputs\ndata: {label_column: category}\n" + steps)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(inputs folder, {case: {"rc", "stderr", "out"}})`` for every case and control."""
    d = tmp_path_factory.mktemp("inputs")
    _models(d)
    _data(d)
    logs = tmp_path_factory.mktemp("stderr")
    outs = tmp_path_factory.mktemp("outs")
    cases = {name: (line, outs / name) for name, line, *_ in CASES + CONTROLS}
    argv = [[name, shlex.split(line.format(d=d, out=out))] for name, (line, out) in cases.items()]
    (logs / "cases.json").write_text(json.dumps(argv))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NETSLIM_PROGRESS": "0",
        "NETSLIM_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(logs / "cases.json"), str(logs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    results["imports"] = {"stderr": proc.stderr}
    for name, (_, out) in cases.items():
        results[name]["out"] = out
    return d, results


@pytest.mark.parametrize("name, line, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, name, line, pattern):
    d, results = runs
    r = results[name]
    assert "Traceback" not in r["stderr"], r["stderr"]
    lines = r["stderr"].splitlines()
    assert r["rc"] == 2, r["stderr"]
    assert len(lines) == 1 and lines[0].startswith("netslim: error: "), r["stderr"]
    assert re.search(pattern.format(d=re.escape(str(d))), lines[0]), lines[0]
    assert not r["out"].exists(), f"{r['out']} was created"


def test_imports_print_nothing(runs):
    # Whatever the shared imports printed would open every real command's stderr.
    assert runs[1]["imports"]["stderr"] == ""


@pytest.mark.parametrize("name", [c[0] for c in CONTROLS])
def test_the_same_inputs_well_formed_run(runs, name):
    r = runs[1][name]
    assert r["rc"] == 0, r["stderr"]
    if name.startswith("control_compress"):
        assert (r["out"] / "report.json").is_file()
