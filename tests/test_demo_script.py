"""`make demo` builds a testbed of its own name and tears down only that one; `testbed up
--name` is how (other people's testbeds on the machine are never touched)."""

from __future__ import annotations

from conftest import ROOT, dumbbell_yaml, needs_root, run_cli, unique_name


def test_the_demo_never_tears_down_other_testbeds():
    text = (ROOT / "scripts" / "demo.sh").read_text()
    assert "--all" not in text
    assert 'up "$SPEC" --name "$NAME"' in text and text.count('down "$NAME"') == 2
    assert "dualpi2 aqm-llm" in text and "compare" in text  # the flagship, side by side


@needs_root
def test_up_name_builds_the_file_under_another_name(tmp_path):
    other, mine = unique_name("oth"), unique_name("mine")
    path = tmp_path / "tb.yaml"
    path.write_text(dumbbell_yaml(other))
    try:
        res = run_cli("up", str(path), "--name", mine)
        assert res.returncode == 0, res.stderr
        assert f"testbed '{mine}' is up" in res.stdout
        status = run_cli("status", mine)
        assert status.returncode == 0 and mine in status.stdout
        assert other not in run_cli("status").stdout  # the file's own name was not used
    finally:
        run_cli("down", mine)
    bad = run_cli("up", str(path), "--name", "../x")
    assert bad.returncode == 2 and "bad testbed name" in bad.stderr and "Traceback" not in bad.stderr
