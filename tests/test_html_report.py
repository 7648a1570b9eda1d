"""The HTML report of a real torch/paddle run: drawn by headless Chromium, checked in its DOM."""

import inspect
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from html import unescape
from html.parser import HTMLParser

import numpy as np
import paddle
import pytest
import torch

from padiff import PadiffError, auto_diff
from padiff.report import html as html_report
from padiff.report.html import HTML_NAME, aligned_rows, render_html, write_html, write_reports

# --- a 5-block MLP twin; the paddle port has a Sigmoid where torch has a ReLU in block 3 --------


class TBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


class TNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.Sequential(*[TBlock() for _ in range(5)])

    def forward(self, x):
        return self.blocks(x)


class PBlock(paddle.nn.Layer):
    def __init__(self, bug=False):
        super().__init__()
        self.fc = paddle.nn.Linear(8, 8)
        self.act = paddle.nn.Sigmoid() if bug else paddle.nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


class PNet(paddle.nn.Layer):
    def __init__(self, bug_block=3):
        super().__init__()
        self.blocks = paddle.nn.Sequential(*[PBlock(i == bug_block) for i in range(5)])

    def forward(self, x):
        return self.blocks(x)


def mlp_inputs(seed=0):
    x = np.random.default_rng(seed).standard_normal((4, 8)).astype("float32")
    return torch.tensor(x), paddle.to_tensor(x)


def failing_result(**opts):
    return auto_diff(TNet(), PNet(), mlp_inputs(), auto_weights=True, **opts)


# --- a small DOM -------------------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class El:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.kids, self.text = tag, dict(attrs), parent, [], []

    @property
    def classes(self):
        return (self.attrs.get("class") or "").split()

    def iter(self):
        yield self
        for k in self.kids:
            yield from k.iter()

    def all_text(self):
        return "".join(self.text) + "".join(k.all_text() for k in self.kids)

    def ancestors(self):
        p = self.parent
        while p is not None:
            yield p
            p = p.parent


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = El("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        el = El(tag, attrs, self.cur)
        self.cur.kids.append(el)
        if tag not in _VOID:
            self.cur = el

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.text.append(data)


def parse(text):
    b = _Builder()
    b.feed(text)
    return b.root


def by_id(root, ident):
    return [e for e in root.iter() if e.attrs.get("id") == ident]


# --- Chromium ----------------------------------------------------------------------------------

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium(*args):
    exe = _chromium()
    profile = tempfile.mkdtemp(prefix="padiff-chromium-")
    try:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: the page must need no network
               f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


needs_chromium = pytest.mark.skipif(
    _chromium() is None,
    reason="no chromium binary on PATH (install it with: apt-get install -y chromium)")


# --- tests -------------------------------------------------------------------------------------

@needs_chromium
def test_failing_run_in_headless_chromium_highlights_the_bug_layer(tmp_path):
    result = failing_result()
    assert not result and result.first.ref_path == "TNet.blocks.3.act"
    path = write_html(result, str(tmp_path / "report.html"))
    url = "file://" + path

    shot = tmp_path / "shot.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1400,900", url)
    assert shot.exists(), run.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1400, 900)
    assert len(png) > 20_000  # a drawn page, not a blank one

    run = chromium("--dump-dom", url)
    dom = parse(run.stdout)
    assert "NOT ALIGNED" in by_id(dom, "verdict")[0].all_text()
    rows = by_id(dom, "first-divergence")
    assert len(rows) == 1
    row = rows[0]
    assert row.tag == "summary" and "first" in row.classes and "bad" in row.classes
    assert row.attrs["data-ref"] == "TNet.blocks.3.act"
    assert row.attrs["data-test"] == "PNet.blocks.3.act"
    assert "ReLU" in row.all_text() and "Sigmoid" in row.all_text()
    # the only highlighted row, opened, and every block around it opened too
    assert [e.attrs.get("data-ref") for e in dom.iter() if "first" in e.classes and "r" in e.classes] == \
        ["TNet.blocks.3.act"]
    details = [a for a in row.ancestors() if a.tag == "details"]
    assert len(details) == 4  # TNet, blocks, blocks.3, blocks.3.act itself
    assert all("open" in d.attrs for d in details)
    # blocks that do not lead to the bug stay closed
    opened = [k.attrs["data-ref"] for e in dom.iter() if e.tag == "details" and "open" in e.attrs
              for k in e.kids if k.tag == "summary" and "r" in k.classes]
    assert opened == ["TNet", "TNet.blocks", "TNet.blocks.3", "TNet.blocks.3.act"]
    closed = [k.attrs["data-ref"] for e in dom.iter() if e.tag == "details" and "open" not in e.attrs
              for k in e.kids if k.tag == "summary" and "r" in k.classes]
    assert {"TNet.blocks.0", "TNet.blocks.1", "TNet.blocks.2", "TNet.blocks.4"} <= set(closed)

    # from the highlighted row to the user's source line: the paddle side is PBlock.forward's return
    links = [a for a in details[0].iter() if a.tag == "a" and "srclink" in a.classes]
    here = os.path.abspath(__file__)
    line = inspect.getsourcelines(PBlock.forward)[1] + 1
    assert [a.attrs["href"] for a in links] == ["file://" + here] * 2
    assert links[1].all_text() == f"{here}:{line}"
    assert "return self.act(self.fc(x))" in links[1].parent.all_text()


def _tree_rows(text, kind="net"):
    """(colour class, ref path, test path) of every tree row of layer calls."""
    return [(m.group(1), unescape(m.group(3)), unescape(m.group(4))) for m in re.finditer(
        r'class="r (\w+)[^"]*"(?: id="[^"]*")? data-kind="(\w+)" data-ref="([^"]*)" data-test="([^"]*)"', text)
        if m.group(2) == kind]


def test_rows_are_coloured_by_their_error_against_tolerance():
    text = render_html(failing_result())
    rows = {ref: (cls, test) for cls, ref, test in _tree_rows(text)}
    assert len(rows) == 17  # root, Sequential, 5 blocks x (block, fc, act)
    # forward is fine up to block 3's Linear; the activation and everything after differs
    assert rows["TNet.blocks.3.fc"][1] == "PNet.blocks.3.fc"
    fwd = {}
    for m in re.finditer(r'data-kind="net" data-ref="([^"]*)" [^>]*>.*?<span class="e (\w+)"[^>]*>([^<]*)</span>', text):
        fwd[m.group(1)] = (m.group(2), m.group(3))
    assert fwd["TNet.blocks.2.act"][0] == "ok"
    assert fwd["TNet.blocks.3.fc"][0] == "ok"
    assert fwd["TNet.blocks.3.act"][0] == "bad"
    assert fwd["TNet.blocks.4.fc"][0] == "bad"
    bug = result_first_figure(text)
    assert bug == fwd["TNet.blocks.3.act"][1]


def result_first_figure(text):
    m = re.search(r'id="first-divergence"[^>]*>.*?<span class="e bad"[^>]*>([^<]*)</span>', text)
    return m.group(1)


def test_error_plot_marks_the_first_difference_and_every_failing_point():
    result = failing_result()
    text = render_html(result)
    fwd = result.steps[0].forward
    svgs = re.findall(r"<svg class=\"plot\".*?</svg>", text, re.S)
    assert len(svgs) == 2  # forward and backward
    forward_svg, backward_svg = svgs
    assert forward_svg.count("<circle") == sum(1 for f in fwd if not f.passed)
    assert backward_svg.count("<circle") == sum(1 for f in result.steps[0].backward if not f.passed)
    # the vertical line sits at the first failing output's position in execution order
    i = next(k for k, f in enumerate(fwd) if f is result.first)
    plot = html_report.error_plot(fwd, result.first, "Forward", "")
    assert plot["mark"]["x"] == pytest.approx(plot["left"] + (plot["right"] - plot["left"]) * i / (len(fwd) - 1), abs=0.1)
    assert f'class="firstmark" x1="{plot["mark"]["x"]}"' in forward_svg
    assert "first diff: TNet.blocks.3.act" in forward_svg
    assert "rel-L2 limit 0.0001" in forward_svg
    assert "first diff" not in backward_svg  # the first difference is a forward one
    # points below the axis (exact zeros) are drawn on the bottom line and the axis says so
    assert "\u22641e-" in backward_svg


def test_report_is_self_contained():
    text = render_html(failing_result())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert not re.search(r"<script[^>]*\bsrc=", text)


def test_options_and_versions_are_shown():
    result = failing_result(options={"diff_phase": "both", "atol": 1e-6})
    dom = parse(render_html(result))
    options = {tr.kids[0].all_text(): tr.kids[1].all_text() for tr in by_id(dom, "options")[0].iter() if tr.tag == "tr"}
    assert options["atol"] == "1e-06" and options["diff_phase"] == "'both'" and options["steps"] == "1"
    versions = {tr.kids[0].all_text(): tr.kids[1].all_text() for tr in by_id(dom, "versions")[0].iter()
                if tr.tag == "tr"}
    assert versions["torch"] == torch.__version__
    assert versions["paddlepaddle"] == paddle.__version__
    assert versions["numpy"] == np.__version__
    assert versions["python"] == "%d.%d.%d" % sys.version_info[:3]


def test_one_tab_per_step_for_a_multi_step_run():
    tm, pm = TNet(), PNet(bug_block=-1)
    opts = [torch.optim.SGD(tm.parameters(), lr=0.1), paddle.optimizer.SGD(0.1, parameters=pm.parameters())]
    result = auto_diff(tm, pm, mlp_inputs(), auto_weights=True, optimizer=opts, steps=3)
    assert result and len(result.steps) == 3
    text = render_html(result)
    dom = parse(text)
    radios = [e for e in dom.iter() if e.tag == "input" and e.attrs.get("name") == "step"]
    assert [r.attrs["id"] for r in radios] == ["st0", "st1", "st2"]
    assert ["checked" in r.attrs for r in radios] == [True, False, False]
    labels = [e.all_text() for e in dom.iter() if e.tag == "label" and e.attrs.get("for", "").startswith("st")]
    assert labels == ["Step 0 \u2713", "Step 1 \u2713", "Step 2 \u2713"]
    tabs = [e for e in dom.iter() if e.tag == "section" and "tab" in e.classes]
    assert [t.attrs["data-step"] for t in tabs] == ["0", "1", "2"]
    assert "ALIGNED" == by_id(dom, "verdict")[0].all_text()
    assert by_id(dom, "first-divergence") == []
    # the weights after each optimizer step are listed
    assert text.count("Weights after the optimizer step") == 3


def test_calls_without_a_partner_get_a_row_of_their_own():
    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.r, self.b = torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.r(self.a(x)))

    class P(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.a, self.b = paddle.nn.Linear(4, 4), paddle.nn.Linear(4, 4)

        def forward(self, x):
            return self.b(paddle.nn.functional.relu(self.a(x)))

    x = np.ones((2, 4), "float32")
    for first, second, inp in ((T(), P(), (torch.tensor(x), paddle.to_tensor(x))),
                               (P(), T(), (paddle.to_tensor(x), torch.tensor(x)))):
        result = auto_diff(first, second, inp, auto_weights=True)
        assert result
        sr = result.steps[0]
        top = aligned_rows(sr.ref_trace, sr.test_trace, sr.pairing)
        # torch is the reference either way; paddle's functional relu runs right after P.a, where
        # torch runs its ReLU module
        kids = [(r.ref and r.ref.label(), r.test and r.test.label()) for r in top[0].kids]
        assert kids == [("T.a", "P.a"), ("T.r", None), (None, "P > paddle.nn.functional.relu"), ("T.b", "P.b")]
        text = render_html(result)
        assert [r for r in _tree_rows(text) if r[0] == "solo"] == [("solo", "T.r", "")]
        assert [r for r in _tree_rows(text, "api") if r[0] == "solo"] == [
            ("solo", "T.r > torch.nn.functional.relu", ""), ("solo", "", "P > paddle.nn.functional.relu")]


def test_500_layer_model_report_is_quick_and_small(tmp_path):
    n = 250
    tm = torch.nn.Sequential(*[m for _ in range(n) for m in (torch.nn.Linear(4, 4), torch.nn.ReLU())])
    pm = paddle.nn.Sequential(*[m for _ in range(n) for m in (paddle.nn.Linear(4, 4), paddle.nn.ReLU())])
    x = np.random.default_rng(1).standard_normal((2, 4)).astype("float32")
    result = auto_diff(tm, pm, (torch.tensor(x), paddle.to_tensor(x)), auto_weights=True)
    layer_outputs = sum(1 for f in result.steps[0].forward if f.ref_node.kind == "net")
    assert layer_outputs == 2 * n + 1
    render_html(result)  # templates compile once per process; time a report, not the compiler
    started = time.perf_counter()
    paths = write_reports(result, str(tmp_path))
    took = time.perf_counter() - started
    print(f"\nHTML + CSV + JSON for {2 * n} layers: {took * 1000:.0f} ms, HTML {os.path.getsize(paths[0]) // 1024} KiB")
    assert took < 5.0  # a guard; bench/bench_html.py measures
    assert os.path.getsize(paths[0]) < 1_500_000
    text = open(paths[0], encoding="utf-8").read()
    assert len(_tree_rows(text)) == 2 * n + 1


def test_write_html_into_a_folder_and_errors_a_user_can_fix(tmp_path, monkeypatch):
    result = failing_result()
    path = write_html(result, str(tmp_path))
    assert path == str(tmp_path / HTML_NAME) and os.path.getsize(path) > 1000
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PadiffError, match="Cannot write padiff's log folder"):
        write_html(result, str(blocker / "sub" / "r.html"))
    monkeypatch.setattr(html_report, "_ENV", None)
    monkeypatch.setitem(sys.modules, "jinja2", None)  # what Python does when jinja2 is not installed
    with pytest.raises(PadiffError) as e:
        write_html(result, str(tmp_path / "x.html"))
    assert "pip install 'padiff[html]'" in str(e.value)
    assert not (tmp_path / "x.html").exists()
