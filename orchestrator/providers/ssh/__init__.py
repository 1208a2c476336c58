"""The ssh provider: existing machines reached over SSH and configured with Ansible.

settings (endpoints, options, remote paths) -> connect (paramiko checks) -> transport (the
SshTestbed: commands, processes, files) -> ansible, hostvars, freebsd (what the playbooks
run) -> build (up, down). The names other code uses are here.
"""

from orchestrator.providers.ssh.build import TESTBED, check_hosts, down, leftover_names, plan, probe, up
from orchestrator.providers.ssh.connect import connect
from orchestrator.providers.ssh.settings import Endpoint, endpoint, remote_dir, settings_of
from orchestrator.providers.ssh.transport import SshTestbed

__all__ = ["TESTBED", "Endpoint", "SshTestbed", "check_hosts", "connect", "down", "endpoint",
           "leftover_names", "plan", "probe", "remote_dir", "settings_of", "up"]
