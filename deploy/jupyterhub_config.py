"""JupyterHub configuration of ``make hub`` / ``deploy/hub.py``.

``deploy/hub.py`` checks the room's options, makes the accounts and passwords, writes the settings
this file reads (``$LABKIT_HUB_SETTINGS``, a JSON file in the hub's private state folder) and
starts ``jupyterhub -f`` on this file. Everything here is JupyterHub's standard pieces: the local
process spawners, the configurable-http-proxy, an authenticator that checks one password per
account.
"""

import json
import os
from hmac import compare_digest
from pathlib import Path

from jupyterhub.auth import Authenticator
from traitlets import Dict

settings = json.loads(Path(os.environ["LABKIT_HUB_SETTINGS"]).read_text())
users = [*settings["students"], settings["instructor"]]
homes = Path(settings["homes"])
c = get_config()  # noqa: F821 (JupyterHub defines it)


class ClassListAuthenticator(Authenticator):
    """Each account signs in with its own password; nobody else signs in (no sign-up)."""

    passwords = Dict(config=True, help="user name -> password")

    async def authenticate(self, handler, data):
        name = self.normalize_username(data.get("username", ""))
        expected, given = self.passwords.get(name, "").encode(), data.get("password", "").encode()
        return name if expected and compare_digest(expected, given) else None


# the public address (HTTPS when given a certificate); the hub and proxy APIs stay on loopback
c.JupyterHub.bind_url = settings["bind_url"]
c.JupyterHub.ssl_cert = settings["ssl_cert"]
c.JupyterHub.ssl_key = settings["ssl_key"]
c.JupyterHub.hub_bind_url = settings["hub_url"]
c.ConfigurableHTTPProxy.api_url = settings["proxy_api_url"]
c.ConfigurableHTTPProxy.command = [settings["proxy"]]
c.ConfigurableHTTPProxy.pid_file = str(Path(settings["state"]) / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{Path(settings['state']) / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(Path(settings["state"]) / "cookie_secret")
c.JupyterHub.cleanup_servers = True  # Ctrl-C stops every user's server too

# accounts: the class list and the instructor (admin), nobody else
c.JupyterHub.authenticator_class = ClassListAuthenticator
c.ClassListAuthenticator.passwords = settings["passwords"]
c.Authenticator.allowed_users = set(users)
c.Authenticator.allow_existing_users = False
c.Authenticator.admin_users = {settings["instructor"]}

# servers: as root, each as its own system account; otherwise all as the hub's user
c.JupyterHub.spawner_class = "localprocess" if settings["as_root"] else "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(homes / "{username}")
deploy = Path(settings["deploy"])
c.Spawner.cmd = [settings["python"], str(deploy / "start_user_server.py")]
c.Spawner.args = [f"--LabApp.app_settings_dir={deploy / 'jupyterlab'}"]  # no news prompt
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = c.Spawner.http_timeout = 120


def per_user(key):
    return lambda spawner: settings[key][spawner.user.name]


c.Spawner.environment = {
    "PATH": f"{Path(settings['python']).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    "LABKIT_DATA": settings["data"],
    "LABKIT_RUNS": lambda spawner: str(homes / spawner.user.name / "runs"),
    "LABKIT_CACHE": lambda spawner: str(homes / spawner.user.name / ".cache" / "labkit"),
    "LABKIT_HUB_NOTEBOOKS": per_user("notebooks"),  # copied into the home when missing
    "CUDA_VISIBLE_DEVICES": per_user("gpus"),
    "LABKIT_PROFILE": per_user("profiles"),
    "LABKIT_HUB_CPUS": per_user("cpus"),  # the cores the server is pinned to ("" = all)
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # TensorFlow would otherwise take a whole shared GPU
}
