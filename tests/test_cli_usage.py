"""Every usage error of the CLI is one line on stderr, ``netslim: error: ...``, exit code 2,
no traceback: typer's own exception types (missing argument, unknown command or option,
bad value, missing option value), range-checked numbers, bad choices, unreadable recipes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netslim import cli

CASES = [  # (argv, pattern in the one line)
    (["bogus"], "No such command 'bogus'"),
    (["eval"], "Missing argument 'artifact'"),
    (["compress"], "Missing argument 'recipe'"),
    (["compress", "x", "--limit", "abc"], "Invalid value for '--limit'"),
    (["compress", "x", "--limit", "0"], r"--limit must be an int in \[1, 2,147,483,647\]; got 0\."),
    (["compress", "x", "--limit", "-5"], r"--limit must be an int in \[1, 2,147,483,647\]; got -5\."),
    (["eval", "x", "--limit", "9" * 30], r"--limit must be an int in \[1, 2,147,483,647\]; got 9{30}\."),
    (["eval", "x", "--limit", "0"], r"--limit must be an int in \[1, 2,147,483,647\]; got 0\."),
    (["eval", "x", "--bogus"], "No such option: --bogus"),
    (["compress", "x", "--resum"], "No such option: --resum"),
    (["eval", "x", "--limit"], "Option '--limit' requires an argument"),
    (["eval", "x", "--split", "dev"], "--split must be one of train, val, test; got 'dev'"),
    (["recipes", "extra"], "unexpected extra argument"),
    (["bench", "x", "--batch-size", "0"], r"--batch-size must be an int in \[1, 65,536\]; got 0"),
    (["bench", "x", "--repeats", "0"], r"--repeats must be an int in \[1, 10,000\]; got 0"),
    (["bench", "x", "--repeats", "many"], "Invalid value for '--repeats'"),
    (["bench", "x", "--threads", "0"], r"--threads must be an int in \[1, 4,096\]; got 0"),
    (["train", "lenet300", "--epochs", "-1"], r"--epochs must be an int in \[0, 10,000\]; got -1"),
    (["train", "lenet300", "--epochs", "1000000000000"], r"--epochs must be an int in \[0, 10,000\]"),
    (["train", "lenet300", "--batch-size", "0"], "--batch-size must be an int in"),
    (["train", "lenet300", "--lr", "0"], r"--lr must be a number > 0; got 0\.0"),
    (["train", "lenet300", "--lr", "-1e-3"], "--lr must be a number > 0"),
    (["train", "lenet300", "--lr", "nan"], "--lr must be a number > 0; got nan"),
    (["train", "lenet300", "--seed", "-1"], "--seed must be an int in"),
    (["train", "lenet300", "--data", "d", "--task", "bogus"], "--task must be one of auto, image-classification"),
]


def run_main(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["netslim", *argv])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, out, err, pattern):
    import re

    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("netslim: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert len(lines[0]) < 600


@pytest.mark.parametrize("argv, pattern", CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_usage_errors_are_one_line_exit_2(monkeypatch, capsys, argv, pattern):
    assert_one_line_error(*run_main(monkeypatch, capsys, argv), pattern)


def test_bare_netslim_prints_help_and_exits_0(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, [])
    assert code == 0 and err == ""
    assert "compress" in out and "eval" in out and "Usage" in out


def test_help_exits_0(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, ["compress", "--help"])
    assert code == 0 and "--force" in out and "--resume" in out


def test_unreadable_recipes_and_a_bad_out_are_one_line(monkeypatch, capsys, tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: café\nsteps:\n  - method: evaluate\n".encode("latin-1"))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n" for i in range(1, 9))
        + "steps: *a8\n"
    )
    deep = tmp_path / "deep.yaml"
    deep.write_text("steps: " + "[" * 100_000 + "]" * 100_000 + "\n")
    a_file = tmp_path / "taken"
    a_file.write_text("not a directory")
    for argv, pattern in [
        (["compress", str(latin1)], r"is not UTF-8 text \(byte 0xe9 at offset 9\)"),
        (["compress", str(bomb)], "expands to more than 10,000 values"),
        (["compress", str(deep)], "nested more than 50 levels deep"),
        (["compress", str(tmp_path / "gone.yaml")], "does not exist"),
        (["compress", "demo", "--out", str(a_file)], "exists and is not a directory"),
        (["compress", "demo", "--out", str(a_file / "sub")], "its parent .* exists and is not a directory"),
    ]:
        assert_one_line_error(*run_main(monkeypatch, capsys, argv), pattern)


def test_the_installed_entry_point_behaves_the_same(tmp_path):
    env = {**os.environ, "NETSLIM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    bad = subprocess.run(
        [sys.executable, "-m", "netslim.cli", "eval", "--bogus"], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("netslim: error: ") and len(bad.stderr.splitlines()) == 1, bad.stderr
    bare = subprocess.run([sys.executable, "-m", "netslim.cli"], capture_output=True, text=True, env=env, timeout=120)
    assert bare.returncode == 0 and "Usage" in bare.stdout and bare.stderr == ""
