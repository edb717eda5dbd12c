"""A JupyterHub for a workshop room on one machine (``make hub``).

Each account (a class list or N students, and the instructor) signs in with its password from
``<dir>/passwords.txt`` and gets JupyterLab in its home, where the student notebooks of
``make student`` (the instructor: the solutions) are copied when missing, never over a copy;
``LABKIT_DATA`` is one shared data copy, ``LABKIT_RUNS`` is ``~/runs``. As root every account is
a system account running its own server: students cannot read each other's homes; the
instructor's group can. As anyone else students are separated by folders only. JupyterHub's
side is ``jupyterhub_config.py`` and ``start_user_server.py`` beside this script. It is a script,
not part of labkit (the notebooks never import it); it imports labkit from this checkout.

    sudo .venv/bin/python deploy/hub.py --accounts 20 --ip 0.0.0.0 --ssl-cert c.pem --ssl-key k.pem
    sudo .venv/bin/python deploy/hub.py --remove-accounts   # the accounts, their homes, the grants
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from labkit.paths import data_root, project_root  # noqa: E402

GROUP = "labkit-hub"  # every account the hub makes; only it gets the traverse grants below
MARK = "labkit hub account"  # the comment field of those accounts: nobody else's is reused
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ACL = "system.posix_acl_access"
DEPLOY = Path(__file__).resolve().parent
# GPU memory (GB) one student needs in each profile, the larger lab: estimates, deploy/README.md
STUDENT_GPU_GB = {"gpu": 8.0, "cpu": 1.4, "smoke": 1.1}


class HubError(Exception):
    """A problem the instructor can fix; the message says how."""


def parse_args(argv):
    root = project_root()
    p = argparse.ArgumentParser(prog="deploy/hub.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=root / "hub", help="state, passwords and homes")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--accounts", type=int, default=10, help="students student01..studentNN")
    who.add_argument("--class-list", type=Path, help="a file of user names, one a line")
    p.add_argument("--instructor", default="instructor", help="the admin account (solutions)")
    p.add_argument("--shared-password", action="store_true", help="one password for all students")
    p.add_argument("--ip", default="127.0.0.1", help="0.0.0.0 to serve a room (default: only here)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ssl-cert", type=Path, help="HTTPS certificate (PEM)")
    p.add_argument("--ssl-key", type=Path, help="its private key (PEM)")
    p.add_argument("--data", type=Path, default=data_root(), help="the shared data (read-only)")
    p.add_argument("--student-notebooks", type=Path, default=root / "build" / "student")
    p.add_argument("--solutions", type=Path, default=root / "notebooks")
    p.add_argument("--gpus", choices=("share", "all", "none"), default="share",
                   help="share: one GPU per user, round robin; all: every GPU for everyone")
    p.add_argument("--profile", choices=("smoke", "cpu", "gpu"), help="default: what fits a share")
    p.add_argument("--cpus-per-user", type=int, help="pin each server to this many cores")
    p.add_argument("--remove-accounts", action="store_true",
                   help="delete the accounts this --dir made, their homes and the grants")
    return p.parse_args(argv)


def read_class_list(path: Path) -> list[str]:
    """User names from ``path``: one a line, ``#`` starts a comment; bad names are refused."""
    names = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        name = line.split("#")[0].strip()
        if name and not NAME.match(name):
            raise HubError(f"{path}:{number}: {name!r} is not a usable account name: use lower-case "
                           "letters, digits, - and _, starting with a letter (at most 32)")
        if name and name not in names:
            names.append(name)
    if not names:
        raise HubError(f"{path}: no names in the class list: write one user name a line")
    return names


def load_passwords(path: Path, students: list[str], instructor: str, shared: bool) -> dict:
    """``{name: password}``: lines of ``path`` win, missing ones are made and written (mode 0600)."""
    known = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#") and len(line.split()) == 2:
                known.setdefault(*line.split())
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"  # nothing that reads as another letter
    token = lambda n: "".join(secrets.choice(alphabet) for _ in range(n))  # noqa: E731
    room = next((known[name] for name in students if name in known), None) or token(10)
    for name in students:
        known.setdefault(name, room if shared else token(10))
    known.setdefault(instructor, token(32))
    lines = [f"{name} {known[name]}" for name in [*students, instructor]]
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text("# account password (the hub reads this file at start)\n" + "\n".join(lines) + "\n")
    return {name: known[name] for name in [*students, instructor]}


def ensure_accounts(names: list[str], instructor: str, homes: Path, state: dict) -> None:
    """System accounts (root): made once, homes 0750 readable by the instructor's group."""
    subprocess.run(["groupadd", "-f", "--system", GROUP], check=True)
    for name in [instructor, *(name for name in names if name != instructor)]:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--home-dir", str(homes / name), "--shell",
                            "/bin/bash", "--comment", MARK, "--user-group", "--groups", GROUP, name],
                           check=True)
            state.setdefault("accounts", []).append(name)
            entry = pwd.getpwnam(name)
        if entry.pw_gecos != MARK or entry.pw_uid == 0:
            raise HubError(f"{name!r} is an account on this machine that the hub did not make: "
                           "pick other names (--class-list, --instructor)")
        if Path(entry.pw_dir) != homes / name:
            raise HubError(f"{name!r} belongs to the hub whose homes are in "
                           f"{Path(entry.pw_dir).parent}: --remove-accounts --dir there, or "
                           "pick other names")
        os.chown(entry.pw_dir, entry.pw_uid, pwd.getpwnam(instructor).pw_gid)  # group: instructor
        os.chmod(entry.pw_dir, 0o700 if name == instructor else 0o750)


def grant_traverse(paths: list[Path], state: dict) -> None:
    """Let the hub's group pass through folders closed to others (an ACL entry: x only)."""
    gid = grp.getgrnam(GROUP).gr_gid
    for path in paths:
        for folder in [*reversed(path.resolve().parents), path.resolve()]:
            mode = folder.stat().st_mode
            if not folder.is_dir() or mode & 0o001:
                continue
            entry = lambda tag, perm, qid=0xFFFFFFFF: struct.pack("<HHI", tag, perm, qid)  # noqa: E731
            try:
                current = os.getxattr(folder, ACL)
            except OSError:
                current = None
            if current is not None:
                if entry(8, 1, gid) in [current[i:i + 8] for i in range(4, len(current), 8)]:
                    continue  # granted before
                raise HubError(f"{folder} is closed to the student accounts and already has an ACL: "
                               f"give group {GROUP} x on it, or install the course elsewhere")
            state.setdefault("grants", {}).setdefault(str(folder), mode & 0o7777)
            try:
                os.setxattr(folder, ACL, struct.pack("<I", 2) + entry(1, mode >> 6 & 7)
                            + entry(4, mode >> 3 & 7) + entry(8, 1, gid)
                            + entry(0x10, mode >> 3 & 7 | 1) + entry(0x20, mode & 7))
            except OSError:  # a file system without ACLs: every account may pass instead
                os.chmod(folder, mode | 0o001)


def remove_accounts(directory: Path) -> list[str]:
    """Undo what the hub did to the system for ``directory``; returns what was removed."""
    path = directory / "state" / "system.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    done = []
    for name in state.get("accounts", []):
        if subprocess.run(["userdel", "--remove", name], capture_output=True).returncode in (0, 6):
            done.append(name)  # 6: no such account any more
    for folder, mode in state.get("grants", {}).items():
        if os.path.isdir(folder):
            with contextlib.suppress(OSError):  # opened by mode, not by an ACL
                os.removexattr(folder, ACL)
            os.chmod(folder, mode)
            done.append(folder)
    if GROUP in {group.gr_name for group in grp.getgrall() if not group.gr_mem}:
        subprocess.run(["groupdel", GROUP], capture_output=True)  # no other hub's accounts in it
    path.unlink(missing_ok=True)
    return done


def detect_gpus() -> dict[str, float]:
    """``{index: memory GB}`` of the NVIDIA GPUs visible here (honours CUDA_VISIBLE_DEVICES)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    gpus = {i.strip(): float(m) / 1024 for i, m in (r.split(",") for r in out.splitlines() if "," in r)}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return gpus if visible is None else {i: gpus[i] for i in visible.split(",") if i in gpus}


def plan_gpus(users: list[str], gpus: dict[str, float], mode: str, profile: str | None) -> dict:
    """``{user: (CUDA_VISIBLE_DEVICES, LABKIT_PROFILE)}``: round robin, and the profile that fits.

    >>> plan_gpus(["a", "b", "c"], {"0": 80.0, "1": 80.0}, "share", None)["c"]
    ('0', 'gpu')
    """
    ids = list(gpus)
    if not ids or mode == "none":
        return {user: ("", profile or "cpu") for user in users}
    per_gpu = len(users) if mode == "all" else -(-len(users) // len(ids))
    memory = 0.95 * min(gpus.values())  # a little kept free
    fits = [name for name in ("gpu", "cpu", "smoke") if per_gpu * STUDENT_GPU_GB[name] <= memory]
    chosen = profile or (fits or ["smoke"])[0]
    return {user: (",".join(ids) if mode == "all" else ids[i % len(ids)], chosen)
            for i, user in enumerate(users)}


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def prepare(args) -> dict:
    """Check the options, make passwords (and as root the accounts); returns the hub's settings."""
    as_root = os.geteuid() == 0
    students = read_class_list(args.class_list) if args.class_list else [
        f"student{i:0{max(2, len(str(args.accounts)))}d}" for i in range(1, args.accounts + 1)]
    if not students:
        raise HubError("no students: give --accounts N (N of at least 1) or --class-list FILE")
    if not NAME.match(args.instructor) or args.instructor in students:
        raise HubError(f"--instructor {args.instructor!r}: give a name not in the class list")
    if not any(args.student_notebooks.glob("*.ipynb")):
        raise HubError(f"{args.student_notebooks}: no student notebooks: run `make student`")
    for name, path in (("--data", args.data), ("--solutions", args.solutions)):
        if not path.is_dir():
            raise HubError(f"{name} {path}: not a folder (`make data` writes the synthetic sets)")
    if bool(args.ssl_cert) != bool(args.ssl_key) or any(
            p and not p.is_file() for p in (args.ssl_cert, args.ssl_key)):
        raise HubError("HTTPS needs both --ssl-cert and --ssl-key, each an existing PEM file")
    proxy = Path(sys.prefix, "proxy", "node_modules", ".bin", "configurable-http-proxy")
    proxy = proxy if proxy.exists() else Path(shutil.which("configurable-http-proxy") or proxy)
    if not proxy.exists():
        raise HubError(f"{proxy}: JupyterHub's proxy is missing: `make proxy` installs it (npm)")
    directory = args.dir.resolve()
    homes, state = directory / "homes", directory / "state"
    for folder, mode in ((directory, 0o755), (homes, 0o755), (state, 0o700)):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, mode)
    users = [*students, args.instructor]
    for dataset in ("prostate", "lung"):  # the splits are written now: students cannot write there
        with contextlib.suppress(ValueError, OSError):  # a missing set: its lab says what to do
            __import__(f"labkit.data.{dataset}", fromlist=["_"]).load_splits(args.data.resolve())
    system = {}
    if as_root:
        record = state / "system.json"
        system = json.loads(record.read_text()) if record.exists() else {}
        try:
            ensure_accounts(users, args.instructor, homes, system)
            grant_traverse([Path(sys.executable), Path(sys.base_prefix) / "lib", Path(sys.prefix),
                            project_root(), args.data, args.student_notebooks, args.solutions,
                            homes], system)
        finally:
            record.write_text(json.dumps(system, indent=1))
        check_runs_as(students[0], homes / students[0])
    plan = plan_gpus(users, detect_gpus(), args.gpus, args.profile)
    cores, k = sorted(os.sched_getaffinity(0)), args.cpus_per_user or 0
    return {
        "students": students, "instructor": args.instructor, "as_root": as_root,
        "grants": sorted(system.get("grants", {})),
        "passwords": load_passwords(directory / "passwords.txt", students, args.instructor,
                                    args.shared_password),
        "bind_url": f"{'https' if args.ssl_cert else 'http'}://{args.ip}:{args.port}",
        "ssl_cert": str(args.ssl_cert or ""), "ssl_key": str(args.ssl_key or ""),
        "hub_url": f"http://127.0.0.1:{free_port()}", "proxy": str(proxy),
        "proxy_api_url": f"http://127.0.0.1:{free_port()}",
        "state": str(state), "homes": str(homes), "data": str(args.data.resolve()),
        "python": sys.executable, "deploy": str(DEPLOY),
        "notebooks": {user: str((args.solutions if user == args.instructor
                                 else args.student_notebooks).resolve()) for user in users},
        "gpus": {user: plan[user][0] for user in users},
        "profiles": {user: plan[user][1] for user in users},
        "cpus": {user: ",".join(str(cores[(i * k + j) % len(cores)]) for j in range(k))
                 for i, user in enumerate(users)},
    }


def check_runs_as(name: str, home: Path) -> None:
    """Start the course's Python as ``name`` once: its server will need the same."""
    from jupyterhub.spawner import set_user_setuid

    result = subprocess.run([sys.executable, str(DEPLOY / "start_user_server.py"), "--version"],
                            preexec_fn=set_user_setuid(name), cwd=home, capture_output=True,
                            text=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise HubError(f"account {name} cannot run {sys.executable}:\n{result.stderr[-1500:]}\n"
                       "Install the course where every account can read it (e.g. /opt/course).")


def describe(settings: dict) -> str:
    """What the instructor needs to know, without any password."""
    s, homes = settings, Path(settings["homes"])
    shares = sorted({f"{s['gpus'][user] or 'none'} -> {s['profiles'][user]}" for user in s["gpus"]})
    text = (f"labkit hub: {s['bind_url']}  students {', '.join(s['students'])}; admin "
            f"{s['instructor']}\n  passwords: {homes.parent / 'passwords.txt'} (only you can read "
            f"it: hand each student their line)\n  GPUs -> profile: {', '.join(shares)}\n"
            f"  results board: {sys.executable} {DEPLOY / 'class_results.py'} {homes}")
    if s["grants"]:
        text += (f"\n  opened to the hub's accounts (execute only; --remove-accounts closes them): "
                 f"{', '.join(s['grants'])}")
    if not s["as_root"]:
        text += ("\n  WARNING: not root, so every server runs as you and students are separated by "
                 "folders only: any of them can read and change the others' files from a terminal "
                 "or a kernel. For a real room start the hub as root (sudo).")
    if s["bind_url"].startswith("http:") and "//127.0.0.1:" not in s["bind_url"]:
        text += "\n  WARNING: plain HTTP: passwords cross the network readable (--ssl-cert/key)"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.remove_accounts:
            if os.geteuid() != 0:
                raise HubError("only root made accounts, so only root removes them: use sudo")
            print("removed:", ", ".join(remove_accounts(args.dir.resolve())) or "nothing")
            return 0
        settings = prepare(args)
    except HubError as error:
        print(f"labkit hub: {error}", file=sys.stderr)
        return 2
    print(describe(settings), flush=True)
    path = Path(settings["state"]) / "settings.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(settings, indent=1))
    os.chdir(settings["state"])
    os.environ["LABKIT_HUB_SETTINGS"] = str(path)
    os.execv(sys.executable, [sys.executable, "-m", "jupyterhub", "-f",
                              str(DEPLOY / "jupyterhub_config.py")])


if __name__ == "__main__":
    sys.exit(main())
