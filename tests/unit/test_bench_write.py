"""Where `cai-ray bench ... --out` puts its JSON and table."""

import json

from cai_ray.bench.common import write


def test_out_as_a_folder_gets_name_json_and_md(tmp_path):
    got = write("serve", {"x": 1}, "| t |", tmp_path / "res")
    assert got == tmp_path / "res" / "serve.json"
    assert json.loads(got.read_text())["x"] == 1
    assert (tmp_path / "res" / "serve.md").read_text().startswith("# serve")


def test_out_ending_in_json_is_the_file_itself_with_the_table_beside_it(tmp_path):
    got = write("serve", {"x": 2}, "| t |", tmp_path / "runs" / "serve_rounds.json")
    assert got == tmp_path / "runs" / "serve_rounds.json" and got.is_file()
    assert json.loads(got.read_text())["benchmark"] == "serve"
    assert "| t |" in (tmp_path / "runs" / "serve_rounds.md").read_text()
