"""``make hub``: a workshop room on one machine, and the same course on Kubernetes.

The browser test is the instructor's first morning: ``make hub`` for a class list of two, both
students sign in at once in Debian's chromium, open Lab 1 and run its first cells; each sees only
their own files (as root: not even from a kernel), a wrong password is refused, the class results
board shows both runs, Ctrl-C stops everything and nothing is left listening. The accounts it made
are removed afterwards. The other tests check the pieces without a browser.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import hub  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LAB1 = "01_vnet_prostate.ipynb"
STUDENTS, INSTRUCTOR = ["lkann", "lkben"], "lkteach"  # short, unlikely names for system accounts
HUB_START_S = 300  # a first `make hub` also writes the student notebooks and installs the proxy
WAIT_MS = 120_000  # two servers and two kernels starting at once on a 2-core machine
AS_ROOT = os.geteuid() == 0


# ---------------------------------------------------------------- accounts and passwords

def test_class_list_takes_names_and_refuses_bad_ones(tmp_path):
    good = tmp_path / "class.txt"
    good.write_text("# room 4\nann\nben  # late\n\nann\n")
    assert hub.read_class_list(good) == ["ann", "ben"]
    bad = tmp_path / "bad.txt"
    bad.write_text("ann\nBen Smith\n")
    with pytest.raises(hub.HubError, match=r"bad.txt:2: 'Ben Smith' is not a usable account name"):
        hub.read_class_list(bad)


def test_passwords_are_per_account_private_and_kept(tmp_path):
    path = tmp_path / "passwords.txt"
    first = hub.load_passwords(path, ["ann", "ben"], "teach", shared=False)
    assert path.stat().st_mode & 0o777 == 0o600
    assert first["ann"] != first["ben"] and len(first["ann"]) >= 8 and len(first["teach"]) >= 32
    assert hub.load_passwords(path, ["ann", "ben", "cy"], "teach", shared=False).items() >= first.items()
    shared = hub.load_passwords(tmp_path / "room.txt", ["ann", "ben"], "teach", shared=True)
    assert shared["ann"] == shared["ben"] != shared["teach"]


def test_hub_settings_and_config_as_a_plain_user(tmp_path, monkeypatch, tiny_prostate_root):
    """Without root: folders only, said plainly; only the class list signs in, with its passwords."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    proxy = tmp_path / "bin" / "configurable-http-proxy"
    proxy.parent.mkdir()
    proxy.write_text("#!/bin/sh\n")
    proxy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{proxy.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # no .venv/proxy here: found on PATH
    notebooks, data = tmp_path / "student", tmp_path / "data"
    notebooks.mkdir()
    (notebooks / LAB1).write_text("{}")
    shutil.copytree(tiny_prostate_root, data)
    args = hub.parse_args(["--dir", str(tmp_path / "hub"), "--accounts", "2", "--data", str(data),
                           "--student-notebooks", str(notebooks)])
    settings = hub.prepare(args)
    text = hub.describe(settings)
    passwords = settings["passwords"]
    assert settings["students"] == ["student01", "student02"] and not settings["as_root"]
    assert "separated by folders only" in text and "127.0.0.1:8000" in text
    assert not any(password in text for password in passwords.values())
    assert settings["notebooks"]["instructor"] == str((ROOT / "notebooks").resolve())
    assert settings["notebooks"]["student01"] == str(notebooks.resolve())
    assert (data / "Task05_Prostate" / "labkit_splits.json").exists()  # students cannot write it

    config = load_hub_config(settings, tmp_path, monkeypatch)
    assert config.JupyterHub.spawner_class == "simple"
    assert config.Authenticator.allowed_users == {"student01", "student02", "instructor"}
    assert config.Authenticator.admin_users == {"instructor"}
    authenticator = config.JupyterHub.authenticator_class(config=config)
    sign_in = lambda name, password: asyncio.run(  # noqa: E731
        authenticator.authenticate(None, {"username": name, "password": password}))
    assert sign_in("student01", passwords["student01"]) == "student01"
    assert sign_in("student01", passwords["student02"]) is None
    assert sign_in("stranger", passwords["student01"]) is None
    assert sign_in("instructor", "") is None


def load_hub_config(settings: dict, tmp_path: Path, monkeypatch):
    from traitlets.config.loader import PyFileConfigLoader

    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    monkeypatch.setenv("LABKIT_HUB_SETTINGS", str(path))
    return PyFileConfigLoader("jupyterhub_config.py", path=str(DEPLOY)).load_config()


# ---------------------------------------------------------------- GPUs, notebooks, lab settings

def test_gpus_round_robin_with_the_profile_that_fits():
    users = [f"s{i}" for i in range(8)]
    plan = hub.plan_gpus(users, {"0": 80.0, "1": 80.0}, "share", None)
    assert [plan[user][0] for user in users[:3]] == ["0", "1", "0"]
    assert {profile for _, profile in plan.values()} == {"gpu"}  # 4 per 80 GB GPU
    assert {p for _, p in hub.plan_gpus(users, {"0": 16.0}, "share", None).values()} == {"cpu"}
    assert hub.plan_gpus(users, {"0": 16.0, "1": 16.0}, "all", None)["s5"] == ("0,1", "cpu")
    assert hub.plan_gpus(users, {}, "share", None)["s0"] == ("", "cpu")
    assert hub.plan_gpus(users, {"0": 16.0}, "none", "smoke")["s0"] == ("", "smoke")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_copied_when_missing_and_never_overwritten(tmp_path):
    copy_missing = load_script("start_user_server").copy_missing
    source, home = tmp_path / "student", tmp_path / "home"
    (source / "figures").mkdir(parents=True)
    (source / ".ipynb_checkpoints").mkdir()
    for name in (LAB1, "figures/a.png", ".ipynb_checkpoints/x.ipynb"):
        (source / name).write_text("course")
    assert sorted(p.relative_to(home).as_posix() for p in copy_missing(source, home)) == [
        LAB1, "figures/a.png"]
    (home / LAB1).write_text("my answers")
    (home / "figures" / "a.png").unlink()
    assert copy_missing(source, home) == [home / "figures" / "a.png"]
    assert (home / LAB1).read_text() == "my answers"


def test_lab_settings_turn_off_the_news_prompt():
    """The override is valid for the installed JupyterLab's schema and answers the news question."""
    import jsonschema
    import jupyterlab

    overrides = json.loads((DEPLOY / "jupyterlab" / "overrides.json").read_text())
    plugin = "@jupyterlab/apputils-extension:notification"
    schema_path = (Path(jupyterlab.__file__).parent / "schemas" / "@jupyterlab" /
                   "apputils-extension" / "notification.json")
    jsonschema.validate(overrides[plugin], json.loads(schema_path.read_text()))
    assert overrides[plugin]["fetchNews"] == "false"
    makefile = (ROOT / "Makefile").read_text()
    assert "--LabApp.app_settings_dir=$(CURDIR)/deploy/jupyterlab" in makefile
    assert "$(LAB_SETTINGS)" in makefile.split("\nlab:")[1].split("\n\n")[0]


# ---------------------------------------------------------------- Kubernetes and the image

def merged(defaults: dict, values: dict) -> dict:
    """``values`` over ``defaults``, maps merged key by key, as helm does."""
    out = dict(defaults)
    for key, value in values.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def test_helm_values_match_the_chart_schema():
    """deploy/kubernetes/values.yaml over the chart's defaults, against its schema (both vendored)."""
    import jsonschema
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator

    folder = DEPLOY / "kubernetes"
    values = yaml.safe_load((folder / "values.yaml").read_text())
    schema = json.loads((folder / "values.schema.json").read_text())
    defaults = json.loads((folder / "chart-values.json").read_text())
    defaults.pop("$comment")
    jsonschema.validate(merged(defaults, values), schema)
    with pytest.raises(jsonschema.ValidationError, match="'limt' was unexpected"):
        jsonschema.validate(merged(defaults, {"singleuser": {"cpu": {"limt": 2}}}), schema)
    singleuser, config = values["singleuser"], values["hub"]["config"]
    assert singleuser["cmd"][-1].endswith("/deploy/start_user_server.py")
    assert singleuser["defaultUrl"] == "/lab"
    assert singleuser["cpu"]["limit"] and singleuser["memory"]["limit"]
    assert set(config["JupyterHub"]) <= set(JupyterHub.class_traits(config=True))
    assert set(config["Authenticator"]) <= set(Authenticator.class_traits(config=True))
    for name, code in values["hub"]["extraConfig"].items():
        compile(code, f"hub.extraConfig.{name}", "exec")


@pytest.mark.slow
def test_image_build_steps_run_in_a_plain_virtual_environment(tmp_path):
    """The Dockerfile's RUN steps, in order, in a fresh venv standing in for the image."""
    result = subprocess.run([sys.executable, str(DEPLOY / "check_image_steps.py"), "--venv",
                             str(tmp_path / "image"), "--build-arg",
                             "DATA_ARGS=--prostate-cases 4 --lung-cases 4"],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    course = tmp_path / "image" / "course"
    assert (course / "build" / "student" / LAB1).exists()
    assert (course / "data" / "Task05_Prostate" / "labkit_splits.json").exists()
    assert (course / ".venv" / "share" / "jupyter" / "lab" / "settings" / "overrides.json").exists()
    assert "not run: USER 1000:100" in result.stdout


# ---------------------------------------------------------------- the room, in a browser

def free_port() -> int:
    return hub.free_port()


def listening_ports(pids: set[int]) -> set[int]:
    import psutil

    return {c.laddr.port for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def remove_accounts(hub_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEPLOY / "hub.py"), "--remove-accounts",
                           "--dir", str(hub_dir)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """``make hub`` for two students on a free port; stopped and its accounts removed at the end."""
    from test_browser import CHROMIUM

    for tool, found in (("chromium", CHROMIUM.exists()), ("node", shutil.which("node")),
                        ("npm", shutil.which("npm"))):
        if not found:
            pytest.skip(f"{tool} not found: the hub's browser test needs chromium, node and npm "
                        "(apt-get install chromium nodejs npm)")
    for name in [*STUDENTS, INSTRUCTOR]:
        try:
            if pwd.getpwnam(name).pw_gecos != hub.MARK:
                pytest.fail(f"account {name} exists on this machine and is not the hub's")
        except KeyError:
            pass
    work = tmp_path_factory.mktemp("hub-test")
    class_list = work / "class.txt"
    class_list.write_text("\n".join(STUDENTS) + "\n")
    hub_dir = Path(tempfile.mkdtemp(prefix="labkit-hub-test-"))  # accounts must reach their homes
    port = free_port()
    hub_args = (f"--dir {hub_dir} --class-list {class_list} --instructor {INSTRUCTOR} "
                f"--port {port} --gpus none")
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("MAKE") and key not in ("MFLAGS", "LABKIT_RUNS")}
    log = work / "hub.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(["make", "--no-print-directory", "hub", f"HUB_ARGS={hub_args}"],
                                   cwd=ROOT, env=environment, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HUB_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"make hub exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/hub/api", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"no hub after {HUB_START_S} s:\n{log.read_text()[-4000:]}")
                time.sleep(1)
        passwords = dict(line.split() for line in (hub_dir / "passwords.txt").read_text().splitlines()
                         if line and not line.startswith("#"))
        yield {"url": url, "process": process, "log": log, "dir": hub_dir, "passwords": passwords}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if AS_ROOT:
            remove_accounts(hub_dir)
        shutil.rmtree(hub_dir, ignore_errors=True)


def cells_up_to_the_data() -> int:
    """How many cells of Lab 1 to run to reach the one that lists the (shared) data."""
    cells = json.loads((ROOT / "notebooks" / LAB1).read_text())["cells"]
    return next(i for i, cell in enumerate(cells) if "prostate_dir()" in "".join(cell["source"])) + 1


def sign_in(page, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")


def isolation_cell(name: str, hub_dir: Path, dice: float) -> str:
    """One line typed into a new cell: can this kernel read the other home; write a run."""
    other = hub_dir / "homes" / next(s for s in STUDENTS if s != name)
    record = (f"dict(lab='vnet', profile='cpu', device='cpu', data_source='synthetic', epochs=1, "
              f"wall_time_s=12.0, train_dice={dice}, validation_dice={dice}, test_dice={dice}, "
              "per_case=[])")
    return (f"import os; from labkit import paths, runs; print('OTHER', os.access('{other}', os.R_OK), "
            f"os.access('{other / LAB1}', os.R_OK), 'RUNS', paths.runs_root()); "
            f"runs.write_metrics(paths.run_dir('vnet', 'cpu-browser'), {record});")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_room_of_two_in_a_real_browser(room, tmp_path):
    import psutil
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS, save_screenshot

    url, hub_dir, passwords = room["url"], room["dir"], room["passwords"]
    hub_log = room["log"].read_text()
    assert ("separated by folders only" in hub_log) != AS_ROOT
    assert not any(password in hub_log for password in passwords.values())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            pages = {}
            for name in STUDENTS:  # both sign in; their servers start side by side
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(WAIT_MS)
                sign_in(page, url, name, passwords[name])
                pages[name] = page
            for name, page in pages.items():  # each lands in their lab, the notebooks in view
                page.wait_for_url(f"**/user/{name}/lab**")
                page.locator(".jp-DirListing-item", has_text=LAB1).dblclick()
                page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            for page in pages.values():  # Lab 1's first cells: parameters, set-up, data
                page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for()
                page.locator(".jp-Notebook .jp-Cell").first.click()
                page.keyboard.press("Escape")
                for _ in range(cells_up_to_the_data()):
                    page.keyboard.press("Shift+Enter")
            for index, (name, page) in enumerate(pages.items()):
                page.locator(".jp-OutputArea-output", has_text="Task05_Prostate").wait_for()
                page.keyboard.press("b")
                page.keyboard.press("Enter")
                page.keyboard.insert_text(isolation_cell(name, hub_dir, 0.7 + index / 10))
                page.keyboard.press("Shift+Enter")
            for name, page in pages.items():
                output = page.locator(".jp-OutputArea-output", has_text="OTHER").first.inner_text()
                assert f"RUNS {hub_dir / 'homes' / name / 'runs'}" in output
                if AS_ROOT:  # a system account per student: not even a kernel gets in
                    assert "OTHER False False" in output
                assert page.get_by_text("official Jupyter news").count() == 0
                news = page.request.get(f"{url}/user/{name}/lab/api/settings/"
                                        "@jupyterlab/apputils-extension:notification").json()
                assert news["schema"]["properties"]["fetchNews"]["default"] == "false"
                other = next(s for s in STUDENTS if s != name)
                assert page.request.get(f"{url}/user/{other}/api/contents").status in (403, 404)
                save_screenshot(f"hub_{name}.png", page.screenshot())

            wrong = browser.new_context().new_page()  # a third sign-in, with a wrong password
            sign_in(wrong, url, STUDENTS[0], "not-the-password")
            wrong.locator(".login_error", has_text="Invalid username or password").wait_for()
            assert "/hub/login" in wrong.url

            # the results board, made by the instructor's account (as root: its group reads homes)
            board = hub_dir / "homes" / INSTRUCTOR / "board.html" if AS_ROOT else tmp_path / "b.html"
            as_instructor = {}
            if AS_ROOT:
                from jupyterhub.spawner import set_user_setuid

                as_instructor = {"preexec_fn": set_user_setuid(INSTRUCTOR), "cwd": board.parent}
            result = subprocess.run([sys.executable, str(DEPLOY / "class_results.py"),
                                     str(hub_dir / "homes"), "--out", str(board)],
                                    capture_output=True, text=True, timeout=120, **as_instructor)
            assert result.returncode == 0, result.stderr
            view = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            view.goto(board.as_uri())
            rows = view.locator("table.runs tbody tr")
            assert rows.count() == 2
            assert {rows.nth(i).locator("td").first.inner_text() for i in range(2)} == set(STUDENTS)
            assert view.locator("img.plot").count() == 1
            save_screenshot("hub_class_results.png", view.screenshot(full_page=True))
        finally:
            browser.close()

    process = room["process"]
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    ports = listening_ports({p.pid for p in tree})
    assert urllib.parse.urlsplit(url).port in ports and len(ports) >= 4  # proxy, hub, 2 servers
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the instructor's terminal
    process.wait(timeout=90)
    _, alive = psutil.wait_procs(tree, timeout=30)  # kernels end a moment after their server
    assert not alive, f"still running after Ctrl-C: {[(p.pid, p.name()) for p in alive]}"
    assert not [c for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]
    if AS_ROOT:
        result = remove_accounts(hub_dir)
        assert result.returncode == 0, result.stderr
        for name in [*STUDENTS, INSTRUCTOR]:
            with pytest.raises(KeyError):
                pwd.getpwnam(name)
