"""Repository layout limits: one module per paper noun stays small enough to read in one sitting."""

from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mimiq"
MAX_MODULE_LINES = 350  # a module above this is doing two jobs
MAX_DENSE_LINES = 650  # dense/ is the mm* glue only; the QAT loop, pipeline and generator core are shared


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_over_the_limit():
    big = {str(p.relative_to(SRC)): lines(p) for p in SRC.rglob("*.py") if lines(p) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_dense_is_only_the_mm_glue():
    total = sum(lines(p) for p in (SRC / "dense").glob("*.py"))
    assert 0 < total <= MAX_DENSE_LINES, f"src/mimiq/dense/ has {total} lines (limit {MAX_DENSE_LINES})"
