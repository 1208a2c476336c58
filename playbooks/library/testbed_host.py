#!/usr/bin/python
"""Ansible module: set a testbed host up, or tear it down, in one call.

The commands come from the `tb` host variable (orchestrator/providers/ssh/hostvars.py); this module adds
what only the host knows (was the address already there? what was the sysctl before?) and
records it under tb.dir, so that teardown restores exactly that:
  added/addr-<dev>     an address we added      added/down-<dev>   a link we set up
  orig/sysctl-<key>    a sysctl's old value     orig/offload-<dev>-<feature>  it was on
  pids/*.pid           processes we started (daemons, tcpdump, the provider's popen)
One module call instead of a task per item keeps `testbed up` to seconds, not minutes.
Standard library only; runs on Linux and FreeBSD.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: testbed_host
short_description: Set up or tear down one host of an l4s-testbed
options:
  action:
    description: tools, setup, commands, daemon, stop or teardown.
    required: true
    type: str
  tb:
    description: The host's `tb` variable.
    required: true
    type: dict
  commands:
    description: Argument lists to run in order (action commands); an entry may also be
      {argv, ignore} for a command that may fail.
    type: list
    elements: raw
  ignore_errors:
    description: Keep going when a command fails (teardown steps).
    type: bool
    default: false
  daemon:
    description: name, argv, chdir, config (written to DIR/NAME.json), ready (log regex), timeout.
    type: dict
"""


class Host:
    def __init__(self, module, tb):
        self.module, self.tb, self.dir = module, tb, tb["dir"]
        self.done = []

    # ---- plumbing
    def run(self, argv, check=True, chdir=None):
        argv = [str(a) for a in argv]  # Jinja may hand over numbers
        res = subprocess.run(argv, capture_output=True, text=True, cwd=chdir)
        if check and res.returncode != 0:
            self.module.fail_json(msg=f"{' '.join(argv)}: {res.stderr.strip()[-500:]}", done=self.done)
        return res

    def change(self, argv, what=None):
        self.run(argv)
        self.done.append(what or " ".join(argv))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def record(self, name, content, overwrite=False):
        """Write a record file (never overwriting an older one: it holds the original)."""
        p = self.path(name)
        if overwrite or not os.path.exists(p):
            with open(p, "w") as f:
                f.write(content + "\n")

    def recorded(self, name):
        try:
            with open(self.path(name)) as f:
                return f.read().strip()
        except OSError:
            return None

    # ---- actions
    def tools(self):
        return [t for t in self.tb["tools"] if shutil.which(t) is None]

    def setup(self):
        for sub in ("", "pids", "added", "orig", "out", "capture"):
            os.makedirs(self.path(sub), mode=0o700, exist_ok=True)
        for argv in self.tb["modules"]:
            self.change(argv)
        for iface in self.tb["interfaces"]:
            self.address(iface)
        for off in self.tb["offloads"]:
            if re.search(off["on_pattern"], self.run(off["read"]).stdout):
                self.record(f"orig/offload-{off['dev']}-{off['feature']}", "on")
                self.change(off["off"])
        for sc in self.tb["sysctls"]:
            self.sysctl(sc)
        for argv in self.tb["routes"]["add"]:
            self.change(argv)

    def address(self, iface):
        if not re.search(re.escape(iface["present"]), self.run(iface["show"]).stdout):
            self.change(iface["add"])
            self.record(f"added/addr-{iface['name']}", iface["address"], overwrite=True)
        if not re.search(iface["is_up"], self.run(iface["link_show"]).stdout.split(">")[0]):
            self.record(f"added/down-{iface['name']}", "down")
            self.change(iface["up"])

    def sysctl(self, sc):
        old = self.run(sc["read"]).stdout.strip()
        if old != str(sc["value"]):
            self.record(f"orig/sysctl-{sc['key']}", old)
            self.change([*sc["set_prefix"], f"{sc['key']}={sc['value']}"])

    def commands(self, cmds, ignore):
        """Run each argv; an entry {"argv": [...], "ignore": true} may fail."""
        for entry in cmds:
            argv = entry["argv"] if isinstance(entry, dict) else entry
            if ignore or (isinstance(entry, dict) and entry.get("ignore")):
                if self.run(argv, check=False).returncode == 0:
                    self.done.append(" ".join(argv))
            else:
                self.change(argv)

    def daemon(self, d):
        """Start argv in the background (its own session), pid in pids/NAME.pid, output in
        NAME.log; wait for `ready` in the log."""
        name, log = d["name"], self.path(f"{d['name']}.log")
        pidfile = self.path("pids", f"{name}.pid")
        if self.alive(pidfile):
            return
        if d.get("config") is not None:
            with open(self.path(f"{name}.json"), "w") as f:
                json.dump(d["config"], f)
            os.chmod(self.path(f"{name}.json"), 0o600)
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(a) for a in d["argv"]], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=d.get("chdir"), start_new_session=True)
        self.record(f"pids/{name}.pid", str(proc.pid), overwrite=True)
        self.done.append(f"started {name} (pid {proc.pid})")
        deadline = time.monotonic() + float(d.get("timeout", 20))
        while d.get("ready") and time.monotonic() < deadline:
            with open(log, errors="replace") as f:
                text = f.read()
            if re.search(d["ready"], text):
                return
            if proc.poll() is not None:
                self.module.fail_json(msg=f"{name} exited ({proc.returncode}): {text[-800:]}", done=self.done)
            time.sleep(0.05)
        if d.get("ready"):
            self.module.fail_json(msg=f"{name} not ready after {d.get('timeout', 20)} s", done=self.done)

    @staticmethod
    def alive(pidfile):
        try:
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), 0)
            return True
        except (OSError, ValueError):
            return False

    def stop(self, pattern="*"):
        """TERM every recorded process (matching pids/PATTERN.pid), then KILL what is left."""
        import glob

        files = glob.glob(self.path("pids", f"{pattern}.pid"))
        pids = []
        for f in files:
            try:
                with open(f) as fh:
                    pids.append(int(fh.read().strip()))
            except (OSError, ValueError):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in pids if _signal(p, sig)]
            self.done += [f"signal {sig.name} {p}" for p in alive]
            deadline = time.monotonic() + 5
            while alive and time.monotonic() < deadline:
                alive = [p for p in alive if _signal(p, 0)]
                time.sleep(0.05)
            pids = alive
        for f in files:  # the provider's wrapper removes its own pid file when its command ends
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass

    def teardown(self):
        if os.path.isdir(self.dir):
            self.stop()
        router = self.tb.get("router") or {}
        self.commands((router.get("delayline") or {}).get("del", []), ignore=True)
        self.commands(router.get("unipfw") or [], ignore=True)
        self.commands(self.tb["tc_teardown"], ignore=True)
        self.commands(self.tb["routes"]["del"], ignore=True)
        for sc in self.tb["sysctls"]:
            old = self.recorded(f"orig/sysctl-{sc['key']}")
            if old is not None:
                self.commands([[*sc["set_prefix"], f"{sc['key']}={old}"]], ignore=True)
        for off in self.tb["offloads"]:
            if self.recorded(f"orig/offload-{off['dev']}-{off['feature']}") == "on":
                self.commands([off["on"]], ignore=True)
        for iface in self.tb["interfaces"]:
            if self.recorded(f"added/addr-{iface['name']}") is not None:
                self.commands([iface["del"]], ignore=True)
            if self.recorded(f"added/down-{iface['name']}") is not None:
                self.commands([iface["down"]], ignore=True)
        bpffs = self.path("bpffs")
        if os.path.ismount(bpffs):
            self.commands([["umount", bpffs]], ignore=True)
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
            self.done.append(f"removed {self.dir}")
        try:
            os.rmdir(os.path.dirname(self.dir))  # the testbed's dir, once no host uses it
        except OSError:
            pass


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


def main():
    module = AnsibleModule(argument_spec={
        "action": {"type": "str", "required": True,
                   "choices": ["tools", "setup", "commands", "daemon", "stop", "teardown"]},
        "tb": {"type": "dict", "required": True},
        "commands": {"type": "list", "elements": "raw", "default": []},
        "ignore_errors": {"type": "bool", "default": False},
        "daemon": {"type": "dict", "default": None},
        "pattern": {"type": "str", "default": "*"},
    })
    p = module.params
    host = Host(module, p["tb"])
    action = p["action"]
    if action == "tools":
        module.exit_json(changed=False, missing=host.tools())
    if action == "setup":
        host.setup()
    elif action == "commands":
        host.commands(p["commands"], p["ignore_errors"])
    elif action == "daemon":
        host.daemon(p["daemon"])
    elif action == "stop":
        host.stop(p["pattern"])
    else:
        host.teardown()
    module.exit_json(changed=bool(host.done), done=host.done)


if __name__ == "__main__":
    main()
