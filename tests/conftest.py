"""Shared fixtures: paths, a JupyterLab server and a Playwright page for the browser tests.

The browser tests (mark ``browser``) drive a real JupyterLab in Debian's chromium through
pytest-playwright: ``page`` is pytest-playwright's fixture, launched with the system chromium
(never ``playwright install``). ``lab_url`` is one fresh JupyterLab per test session on
127.0.0.1, serving the repository root so that ``/lab/tree/notebooks/<name>`` opens a notebook.
Without chromium the browser tests skip, except under CI (``CI=true``), where they fail.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tlgates.runs
from tlgates.backbones import tiny_resnet
from tlgates.methods import TransferModel, build_method
from tlgates.train import training_step

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 90.0
# Requests to the local server never go through an HTTP proxy of the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# JupyterLab user settings written before the server starts: no news pop-up (it can cover
# widgets) and no request for updates.
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The root of the checkout."""
    return REPO_ROOT


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jupyter_env(base: Path) -> dict[str, str]:
    """An environment whose Jupyter config, runtime, data, settings and workspaces are in base."""
    env = dict(os.environ)
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTERLAB_SETTINGS_DIR": base / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "workspaces",
        "IPYTHONDIR": base / "ipython",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    for relative, settings in LAB_SETTINGS.items():
        path = dirs["JUPYTERLAB_SETTINGS_DIR"] / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2))
    env.pop("JUPYTER_TOKEN", None)
    env.pop("JUPYTER_PREFER_ENV_PATH", None)
    env.pop("MPLBACKEND", None)  # the kernels draw inline, as the students' do
    return env


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with _LOCAL.open(f"{url}/api/status", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"JupyterLab did not answer at {url} in {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def lab_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a fresh JupyterLab on a free port of 127.0.0.1 and yield its base URL.

    No token or password; the repository root is the server's root; every Jupyter directory
    is in a temporary folder. The server log is ``<tmp>/jupyter/server.log``.
    """
    base = tmp_path_factory.mktemp("jupyter")
    env = _jupyter_env(base)
    log = base / "server.log"
    last_error: Exception | None = None
    for _ in range(3):  # a free port may be taken between the probe and the server's bind
        port = _free_port()
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            "--ServerApp.token=", "--ServerApp.password=",
            # The tests call the REST API (kernel shutdown) without a browser's XSRF cookie.
            "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={REPO_ROOT}",
        ]
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url, proc, log, SERVER_START_TIMEOUT_S)
        except RuntimeError as err:
            _stop(proc)
            last_error = err
            continue
        try:
            yield url
        finally:
            _stop(proc)
        return
    raise RuntimeError(f"could not start JupyterLab: {last_error}")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments, with Debian's chromium (skip if it is missing)."""
    if not os.access(CHROMIUM, os.X_OK):
        message = (f"{CHROMIUM} not found: install it with "
                   "`sudo apt-get update && sudo apt-get install -y chromium` "
                   "(scripts/test.sh does this when run as root); never `playwright install`")
        if _in_ci():
            pytest.fail(message + " [CI=true: the browser tests must run]", pytrace=False)
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A window large enough to show a dashboard beside its notebook."""
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}


def shutdown_kernels(lab_url: str) -> None:
    """Shut down every kernel of the server at ``lab_url``."""
    with _LOCAL.open(f"{lab_url}/api/kernels", timeout=10) as reply:
        kernels = json.load(reply)
    for kernel in kernels:
        request = urllib.request.Request(f"{lab_url}/api/kernels/{kernel['id']}",
                                         method="DELETE")
        with _LOCAL.open(request, timeout=30):
            pass


@pytest.fixture
def lab_page(page: Any, lab_url: str) -> Iterator[Any]:
    """pytest-playwright's ``page`` for the JupyterLab at ``lab_url`` (30 s default timeouts).

    The kernels the test started are shut down after it (each notebook's kernel holds its
    models in memory).
    """
    page.set_default_timeout(30_000)
    yield page
    page.close()
    shutdown_kernels(lab_url)


@pytest.fixture(scope="session")
def screenshot_dir(repo_root: Path) -> Path:
    """``build/screenshots/`` of the checkout (created)."""
    path = repo_root / "build" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def scratch_dir_in_repo(repo_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder under ``build/`` (ignored by git, reachable by the Lab server), removed after."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    path = repo_root / "build" / "pytest-tmp" / f"{name}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def source():
    """A small random tiny ResNet standing in for the pre-trained source in unit tests."""
    torch.manual_seed(0)
    return tiny_resnet(width=8).eval()


@pytest.fixture
def batch():
    """Eight random 3×32×32 images with labels in 0..2."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)


@pytest.fixture
def one_step() -> Callable[..., torch.Tensor]:
    """``one_step(model, x, y, lr=0.1)``: one SGD step (momentum 0.9) in training mode through
    the training loop's own step; returns the loss."""
    def step(model: TransferModel, x: torch.Tensor, y: torch.Tensor,
             lr: float = 0.1) -> torch.Tensor:
        model.train()
        optimizer = torch.optim.SGD(model.param_groups(lr), lr=lr, momentum=0.9)
        return training_step(model, optimizer, x, y)[0]
    return step


@pytest.fixture
def trained(source, batch, one_step) -> Callable[..., TransferModel]:
    """``trained(name, steps=3, **params)``: method ``name`` built on ``source`` for 3 classes
    and trained ``steps`` steps on ``batch``, so that its weights and BatchNorm statistics
    differ from the source's."""
    def train(name: str, steps: int = 3, **params: Any) -> TransferModel:
        torch.manual_seed(0)
        model = build_method(name, source, 3, **params)
        for _ in range(steps):
            one_step(model, *batch)
        return model
    return train


@pytest.fixture(autouse=True)
def _train_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests train what they ask for: the run cache (tlgates.runs) is off in them, except
    where a test module overrides this fixture. The notebooks, run by nbval, keep it on."""
    monkeypatch.setattr(tlgates.runs, "enabled", lambda: False)
