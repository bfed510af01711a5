"""The eval report in a real headless Chromium (the system package: `apt-get install chromium`;
`make test-slow`, not in CI, where installing a browser does not fit): the page loads, its plots
decode as images with a size, its tables are there."""

import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from cai_ray.eval import arena as E
from cai_ray.eval import report
from cai_ray.judges import Judgement

pytestmark = pytest.mark.slow

PROBE = """<script>
function inked(img) {  // drawn pixels (not white, not transparent) in the image's lower half
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(img, 0, 0);
  const h = Math.floor(c.height / 2), d = g.getImageData(0, h, c.width, c.height - h).data;
  let n = 0;
  for (let k = 0; k < d.length; k += 4) if (d[k + 3] > 0 && d[k] + d[k + 1] + d[k + 2] < 600) n++;
  return n;
}
window.addEventListener("load", async () => {
  const ok = await Promise.all([...document.images].map(
    i => i.decode().then(() => (inked(i) > 500 ? 1 : 0), () => 0)));
  document.body.setAttribute("data-images-ok", ok.reduce((a, b) => a + b, 0));
  document.body.setAttribute("data-tables", document.querySelectorAll("table").length);
});
</script></body>"""


class Longer:
    def label(self, items):
        return [Judgement(it.id, 0.8 if len(it.first) > len(it.second) else 0.3) for it in items]


def browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")
    if not exe:
        pytest.fail("no Chromium on PATH: apt-get install chromium (a system package)")
    return exe


def test_report_renders_with_its_plots_in_chromium(tmp_path):
    pols = [E.Policy("base", "b", 0), E.Policy("sft", "s", 1), E.Policy("rl", "r", 5)]
    ps = [SimpleNamespace(id=f"p{k}", prompt=f"prompt {k}") for k in range(6)]
    answers = {p.name: {q.id: ("I can't help with that." if p.name == "rl" else "Sure. " * k)
                        for k, q in enumerate(ps)} for p in pols}
    harm, ben = {"red_team": ps[:4]}, {"helpful": ps[4:]}
    bar = SimpleNamespace(update=lambda n: None)
    comps = E.tournament(Longer(), pols, answers, ps[:4], "h", bar)
    result = {"judge": "logprob base", "attribution": [],
              "refusals": E.refusal_figures(pols, answers, harm, ben, 200, 0),
              "elo": {k: E.elo_figures(pols, comps, 200, 0) for k in ("harmless", "helpful")}}
    report.write(tmp_path, tmp_path, result, pols, answers, harm["red_team"], ben["helpful"], 2)
    page = tmp_path / "probe.html"
    page.write_text((tmp_path / "report.html").read_text().replace("</body>", PROBE))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser(), *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert re.search(r'data-images-ok="2"', dom), dom[:2000]
    assert int(re.search(r'data-tables="(\d+)"', dom).group(1)) >= 5
    shot = tmp_path / "report.png"
    subprocess.run([browser(), *flags, f"--screenshot={shot}", "--window-size=1280,2400",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a page with plots, not a blank one
