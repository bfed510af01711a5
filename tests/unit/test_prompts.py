import gzip
import json

import pytest

from cai_ray.errors import InputError
from cai_ray.prompts.sources import load_prompts, prompt_id, split_heldout


def test_builtin_sets():
    red = load_prompts(["builtin:red_team"])
    helpful = load_prompts(["builtin:helpful"])
    assert len(red) >= 64 and len(helpful) >= 64
    assert len({p.category for p in red.prompts}) >= 8
    assert not {p.id for p in red.prompts} & {p.id for p in helpful.prompts}


@pytest.mark.parametrize("spec, at_least", [
    ("hh-rlhf:{d}/hh-rlhf/harmless-base-test.jsonl.gz", 1000),
    ("{d}/hh-rlhf/harmless-base-test.jsonl.gz", 1000),
    ("harmbench:{d}/harmbench/harmbench_prompts.txt", 190),
    ("advbench:{d}/advbench/adv_bench.prompt", 500),
    ("donotanswer:{d}/donotanswer", 900),
    ("{d}/donotanswer/information_hazard.jsonl", 100),
])
def test_shared_data_sources(shared_data, spec, at_least):
    ps = load_prompts([spec.format(d=shared_data)])
    assert len(ps) >= at_least, ps.counts
    assert all(p.prompt.strip() for p in ps.prompts)
    assert ps.counts["read"] == ps.counts["kept"] + sum(
        v for k, v in ps.counts.items() if k.startswith("dropped"))


def test_hh_rlhf_keeps_the_conversation(shared_data):
    ps = load_prompts([f"hh-rlhf:{shared_data}/hh-rlhf/harmless-base-test.jsonl.gz"], limit=5)
    p = ps.prompts[0]
    assert p.conversation[0] == {"role": "user", "content": p.prompt}
    assert p.conversation[1]["role"] == "assistant" and len(p.conversation) >= 2


def test_advbench_categories(shared_data):
    ps = load_prompts([f"{shared_data}/advbench/adv_bench.prompt"], limit=3)
    assert ps.prompts[0].prompt.startswith("Write a script that can exploit")
    assert ps.prompts[0].category


def test_formats_dedupe_and_limits(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        '{"prompt": "How do I pick a lock?"}\n{"text": "how do i  PICK a lock?"}\n'
        '{"prompt": ""}\n{"prompt": "' + "x" * 300 + '"}\n')
    (tmp_path / "b.csv").write_text("question,category\nWhat is love?,misc\n")
    (tmp_path / "c.txt").write_text("First line\n\nSecond line\n")
    (tmp_path / "d.json").write_text(json.dumps(["From json", {"instruction": "Another"}]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["From parquet"]}), tmp_path / "e.parquet")
    specs = [str(tmp_path / n) for n in ("a.jsonl", "b.csv", "c.txt", "d.json", "e.parquet")]
    ps = load_prompts(specs, max_chars=200)
    texts = [p.prompt for p in ps.prompts]
    assert texts == ["How do I pick a lock?", "What is love?", "First line", "Second line",
                     "From json", "Another", "From parquet"]
    assert ps.counts["dropped_duplicate"] == 1 and ps.counts["dropped_too_long"] == 1
    assert ps.counts["dropped_empty"] == 2
    cut = load_prompts(specs, max_chars=200, on_too_long="truncate", limit=3)
    assert cut.counts["truncated"] == 1 and len(cut) == 3 and cut.counts["dropped_limit"] == 5
    assert prompt_id("Hello  World") == prompt_id("hello world")  # stable, normalised ids


def test_heldout_split_is_stable():
    ps = load_prompts(["builtin:red_team"]).prompts
    keep, held = split_heldout(ps, 0.25)
    keep2, held2 = split_heldout(list(reversed(ps)), 0.25)
    assert {p.id for p in held} == {p.id for p in held2}
    assert 5 < len(held) < 35 and len(keep) + len(held) == len(ps)


@pytest.mark.parametrize("content, name, where", [
    (b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n', "bad.jsonl", "line 2: not UTF-8"),
    (b'{"prompt": "ok"}\n{"prompt": "trunc', "cut.jsonl", "line 2: invalid JSON"),
    (b'{"nothing": 1}\n', "nofield.jsonl", "line 1: no prompt field"),
    (b"a,b\n1,2\n", "nocol.csv", "line 1: no prompt column"),
    (b"\x1f\x8b\x08\x00broken", "cut.jsonl.gz", "not a complete gzip"),
    (b"seeds: 3\n", "adv.yaml", "seeds"),
])
def test_bad_prompt_files(tmp_path, content, name, where):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_prompts([str(f)])
    assert str(f) in str(err.value) and where in str(err.value)


def test_truncated_gzip_hh(tmp_path, shared_data):
    raw = (shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz").read_bytes()
    f = tmp_path / "hh.jsonl.gz"
    f.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="hh.jsonl.gz"):
        load_prompts([f"hh-rlhf:{f}"])
    good = tmp_path / "ok.jsonl.gz"
    good.write_bytes(gzip.compress(b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"}\n'))
    assert load_prompts([str(good)]).prompts[0].prompt == "hi"


def test_unknown_sources():
    with pytest.raises(InputError, match="no built-in prompt set"):
        load_prompts(["builtin:nope"])
    with pytest.raises(InputError, match="not found"):
        load_prompts(["/nonexistent/file.jsonl"])
