"""Every bad input of tests/unit/test_cli_bad_input.py through the real CLI, as a table: exit code,
the one error line, and whether the run directory was left byte for byte as it was.

    .venv/bin/python benchmarks/bad_inputs.py      # -> benchmarks/results/bad_inputs.md
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.test_cli_bad_input import CASES, _files, cli, tree_digest  # noqa: E402


def run_dir(tmp: Path) -> Path:
    d = tmp / "run"
    (d / "sl_cai").mkdir(parents=True)
    (d / "manifest.json").write_text('{"name": "earlier", "stages": {}}\n')
    (d / "sl_cai" / "data.jsonl").write_text('{"id": "p-1"}\n')
    return d


def main() -> None:
    rows = ["| bad input | arguments | exit | message | run dir untouched |",
            "|---|---|---|---|---|"]
    for case in sorted(CASES):
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            files = _files(tmp)
            (tmp / "my_rewards.py").write_text("def one(prompts, completions, **kw):\n"
                                               "    return [1.0]\n")
            d = run_dir(tmp)
            args = [a.format(**files) for a in CASES[case][0]]
            before = tree_digest(d)
            res = cli("run", "tiny", "--run-dir", str(d), *args, cwd=tmp)
            line = next((ln for ln in res.stderr.splitlines()
                         if ln.startswith("cai-ray: error:")), res.stderr.strip()[-200:])
            line = line.replace(str(tmp), "$TMP").replace("|", "\\|")
            shown = " ".join(a.replace(str(tmp), "$TMP") for a in args).replace("|", "\\|")
            rows.append(f"| {case} | `{shown}` | {res.returncode} | {line} | "
                        f"{'yes' if tree_digest(d) == before else 'NO'} |")
        print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "bad_inputs.md"
    out.write_text("# Bad inputs through the real CLI (`cai-ray run tiny --run-dir RUN ...`)\n\n"
                   + "\n".join(rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
