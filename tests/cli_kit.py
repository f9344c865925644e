"""The CLI run in process (stdout and stderr captured), and the check that a refusal is one line: `error: ...`,
exit 2, no traceback. How the export tests run `act` and `export`."""

from __future__ import annotations

from himari_ray.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    line = err.strip()
    assert line.startswith("error:") and "\n" not in line and "Traceback" not in line, err
    for f in fragments:
        assert f in line, line
