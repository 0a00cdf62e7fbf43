"""A real browser drives each notebook's dashboard in JupyterLab (Playwright + chromium).

For every notebook in ``NOTEBOOKS``: open it, wait for the kernel, Run All, then operate the
dashboard contract that every tlgates dashboard follows (see ``tlgates.dashboard``):

* the root widget has the CSS class ``tlgates-dashboard``;
* its sliders are ipywidgets sliders (``.widget-hslider`` with a ``.noUi-handle``);
* its Train button is a ``button.jupyter-button`` reading ``Train``;
* its results table is an HTML table in an Output with class ``tlgates-results``, one row per
  training run, earlier runs kept.

Move the first slider one step, click Train, and check that one new row shows the new value.
A screenshot goes to ``build/screenshots/<notebook-stem>.png``. ``test_stand_in_dashboard``
checks the same steps on a stand-in dashboard written with plain ipywidgets, so a failure
there is the harness's (JupyterLab, ipywidgets, chromium), not a notebook's.
"""
from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import NOTEBOOKS_DIR, REPO_ROOT

pytestmark = [
    pytest.mark.browser,
    # pytest-playwright's own base_url fixture (without pytest-base-url) warns on pytest 9.
    pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods"),
]

# Add a notebook here (one line) once it has a dashboard.
NOTEBOOKS = [
    "00_transfer_basics.ipynb",
    "01_gtn.ipynb",
    "02_delta.ipynb",
    "03_spottune.ipynb",
    "04_adafilter.ipynb",
    "05_ptu.ipynb",
    "06_comparison.ipynb",
    "07_parameter_efficient.ipynb",
]

KERNEL_IDLE_TIMEOUT_MS = 120_000  # kernel start (the first import of torch is slow)
RUN_ALL_TIMEOUT_MS = 600_000  # the whole notebook, run by Run All
TRAIN_TIMEOUT_MS = 120_000  # one click of Train until the new results row

NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook tab on show
KERNEL_IDLE = ".jp-StatusBar-TextItem:has-text('| Idle')"  # status bar: "Python 3 ... | Idle"
SLIDER = ".widget-hslider"  # ipywidgets 8: IntSlider, FloatSlider, FloatLogSlider, ...
ROWS = "table tbody tr"

# The code cells' prompts read "[ ]:" (not run), "[*]:" (queued or running) or "[7]:" (ran).
_PROMPTS = (f"[...document.querySelectorAll('{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt')]"
            ".map(e => e.textContent.trim())")
RUN_STARTED_JS = f"() => {_PROMPTS}.some(p => p !== '[ ]:')"
# Done: nothing queued, and every cell ran or a traceback stopped the run (the rest stay [ ]:).
RUN_FINISHED_JS = f"""() => {{
    const prompts = {_PROMPTS};
    if (prompts.some(p => p === '[*]:')) return false;
    if (prompts.every(p => /^\\[\\d+\\]:$/.test(p))) return true;
    return [...document.querySelectorAll('{NOTEBOOK} .jp-OutputArea-output')]
        .some(e => e.textContent.includes('Traceback'));
}}"""

# A slider shows its value in its readout (or, without one, in the handle's aria-valuenow).
SLIDER_MOVED_JS = """([slider, before]) => {
    const readout = slider.querySelector('.widget-readout');
    const now = readout ? readout.textContent.trim()
        : slider.querySelector('.noUi-handle').getAttribute('aria-valuenow');
    return now !== before;
}"""


def _notebook_param(name: str) -> Any:
    missing = not (NOTEBOOKS_DIR / name).exists()
    return pytest.param(name, marks=pytest.mark.skipif(
        missing, reason=f"notebooks/{name} does not exist yet"))


@pytest.mark.parametrize("name", [_notebook_param(name) for name in NOTEBOOKS])
def test_notebook_dashboard(lab_page: Any, lab_url: str, screenshot_dir: Path, name: str) -> None:
    path = NOTEBOOKS_DIR / name
    check_dashboard(lab_page, lab_url, path, screenshot_dir / f"{path.stem}.png")


def test_stand_in_dashboard(lab_page: Any, lab_url: str, scratch_dir_in_repo: Path,
                            screenshot_dir: Path) -> None:
    path = scratch_dir_in_repo / "stand_in_dashboard.ipynb"
    write_stand_in_notebook(path)
    check_dashboard(lab_page, lab_url, path, screenshot_dir / "stand_in_dashboard.png")


# --- the steps ---------------------------------------------------------------------------------

def check_dashboard(page: Any, lab_url: str, notebook: Path, screenshot: Path) -> None:
    """Open ``notebook``, Run All, move the first slider, Train; check the new results row."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    open_notebook(page, lab_url, notebook)
    run_all(page)

    dashboard = page.locator(f"{NOTEBOOK} .tlgates-dashboard").first
    dashboard.wait_for(state="visible")
    dashboard.scroll_into_view_if_needed()
    results = dashboard.locator(".tlgates-results")
    results.wait_for(state="attached")
    rows_before = results.locator(ROWS).count()

    value = move_first_slider(dashboard)
    dashboard.locator("button.jupyter-button", has_text=re.compile(r"^\s*Train\s*$")).click()
    try:
        results.locator(ROWS).nth(rows_before).wait_for(timeout=TRAIN_TIMEOUT_MS)
    except Exception:
        page.screenshot(path=str(screenshot), full_page=False)
        raise AssertionError(
            f"no new results row {TRAIN_TIMEOUT_MS // 1000} s after Train "
            f"(screenshot {screenshot}); dashboard reads:\n{dashboard.inner_text()}") from None
    assert results.locator(ROWS).count() == rows_before + 1, "Train added more than one row"
    cells = results.locator(ROWS).nth(rows_before).locator("td").all_inner_texts()
    assert any(same_value(cell, value) for cell in cells), (
        f"the new row {cells} does not show the slider's new value {value!r}")

    dashboard.evaluate("el => el.scrollIntoView({block: 'start'})")  # as much as fits
    page.screenshot(path=str(screenshot))


def open_notebook(page: Any, lab_url: str, notebook: Path) -> None:
    """Open the notebook in JupyterLab (a fresh workspace) and wait until its kernel is idle."""
    relative = notebook.resolve().relative_to(REPO_ROOT).as_posix()
    # ?reset: do not restore the tabs of an earlier test (their widgets would match too).
    page.goto(f"{lab_url}/lab/tree/{relative}?reset")
    # A Run All clicked before the kernel is ready is silently dropped.
    page.locator(KERNEL_IDLE).wait_for(timeout=KERNEL_IDLE_TIMEOUT_MS)


def click_menu(page: Any, menu: str, item: str) -> None:
    """Click ``item`` in the menu bar's ``menu``."""
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(item)}")).click()


def run_all(page: Any) -> None:
    """Clear the outputs, Run All, and wait until every code cell has run (or one failed)."""
    click_menu(page, "Edit", "Clear Outputs of All Cells")  # every prompt reads [ ]: now
    click_menu(page, "Run", "Run All Cells")
    try:
        page.wait_for_function(RUN_STARTED_JS, timeout=15_000)
    except Exception:
        raise AssertionError("Run All did not start (no cell became [*] or ran)") from None
    page.wait_for_function(RUN_FINISHED_JS, timeout=RUN_ALL_TIMEOUT_MS, polling=500)
    page.locator(KERNEL_IDLE).wait_for(timeout=RUN_ALL_TIMEOUT_MS)
    failed = page.locator(f"{NOTEBOOK} .jp-OutputArea-output", has_text="Traceback")
    if failed.count():
        raise AssertionError(f"the notebook raised during Run All:\n{failed.first.inner_text()}")


def move_first_slider(dashboard: Any) -> str:
    """Move the first slider one step (right, or left at its maximum); return its new value."""
    slider = dashboard.locator(SLIDER).first
    slider.scroll_into_view_if_needed()
    before = slider_value(slider)
    handle = slider.locator(".noUi-handle").first
    for key in ("ArrowRight", "ArrowLeft"):
        handle.focus()
        handle.press(key)
        try:  # the readout changes once the widget has taken the new value
            slider.page.wait_for_function(SLIDER_MOVED_JS, arg=[slider.element_handle(), before],
                                          timeout=5_000)
        except Exception:
            continue
        return slider_value(slider)
    raise AssertionError(f"neither ArrowRight nor ArrowLeft moved the first slider ({before})")


def slider_value(slider: Any) -> str:
    readout = slider.locator(".widget-readout")
    if readout.count():
        return readout.first.inner_text().strip()
    return slider.locator(".noUi-handle").first.get_attribute("aria-valuenow") or ""


def same_value(cell: str, value: str) -> bool:
    """Whether a table cell shows ``value``, a slider readout (rounded to its last digit)."""
    cell, value = cell.strip(), value.strip()
    if cell == value:
        return True
    try:
        x, y = float(cell), float(value)
    except ValueError:
        return False
    digits = value.split("e")[0].split("E")[0]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    scale = 10 ** int(value.lower().split("e")[1]) if "e" in value.lower() else 1
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=0.5 * 10 ** -decimals * scale + 1e-12)


# --- a stand-in dashboard ------------------------------------------------------------------------

STAND_IN_CODE = '''\
import threading
import time

import ipywidgets as widgets
import pandas as pd

rows = []
shots = widgets.IntSlider(5, 1, 50, description="shots", continuous_update=False)
lr = widgets.FloatLogSlider(0.1, base=10, min=-3, max=0, description="lr",
                            continuous_update=False)
train_button = widgets.Button(description="Train", button_style="primary", icon="play")
stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
table = widgets.Output()
table.add_class("tlgates-results")


def train():
    time.sleep(1)
    rows.append({"shots": shots.value, "lr": lr.value, "accuracy %": 50.0})
    frame = pd.DataFrame(rows)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="run")
    table.outputs = ({"output_type": "display_data", "metadata": {},
                      "data": {"text/html": frame.to_html(), "text/plain": frame.to_string()}},)


train_button.on_click(lambda _: threading.Thread(target=train, daemon=True).start())
buttons = widgets.HBox([train_button, stop_button])
dashboard = widgets.VBox([widgets.HBox([widgets.VBox([shots, lr]), buttons]), table])
dashboard.add_class("tlgates-dashboard")
train()
dashboard
'''


def write_stand_in_notebook(path: Path) -> None:
    """A notebook whose dashboard follows the contract, built with plain ipywidgets."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    long_text = "\n\n".join(f"Paragraph {i} pushes the dashboard down." for i in range(40))
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# A stand-in dashboard\n\n{long_text}"),
        nbformat.v4.new_code_cell("import time\n\ntime.sleep(1)"),
        nbformat.v4.new_code_cell(STAND_IN_CODE),
        nbformat.v4.new_code_cell(textwrap.dedent("""\
            assert len(rows) == 1
            print("after the dashboard")""")),
    ]
    nbformat.write(nb, path)
