"""The README's Python examples run as written (they are the first code a newcomer copies)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


def test_readme_examples_run_in_order(capsys):
    namespace: dict = {}
    for i, block in enumerate(BLOCKS):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {i} raised {type(e).__name__}: {e}")
    out = capsys.readouterr().out
    assert "1,256,080" in out  # the lecture's LeNet total from jcnn.summary
    assert "(7 - 3 + 2*0)/3 + 1 = 2.33" in out  # explain_fit's message
