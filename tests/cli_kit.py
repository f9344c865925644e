"""The CLI run in process (stdout and stderr captured), and the check that a refusal is one line: `error: ...`,
exit 2, no traceback. How the export tests run `act` and `export`."""

from __future__ import annotations

from himari_ray.cli import main
from tests.test_fuzz import assert_refused


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """The bad-input contract (`tests.test_fuzz.assert_refused`), and each of `fragments` in that line."""
    assert_refused(code, err)
    for f in fragments:
        assert f in err.strip(), err
