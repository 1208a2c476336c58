"""Quick, typed checks of a host with paramiko (reachable? right key? known host key?): every
failure becomes one line that names the host, what is wrong and what to do. The transport
copies files back over the same kind of connection (SFTP).

Secrets: the spec, the state file, the inventory and the manifests hold paths to keys, never
key material; password authentication is not supported on purpose (use keys or ssh-agent).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from typing import Any

from orchestrator.errors import UserError
from orchestrator.providers.ssh.settings import Endpoint, endpoint, known_hosts, settings_of
from orchestrator.spec.schema import Spec
from orchestrator.spec.ssh import SshSettings


def fingerprint(key: Any) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def connect(spec: Spec, host: str) -> Any:
    """A paramiko client connected to host with the spec's key and host-key policy; any
    failure is a UserError that names the host and says what is wrong and what to do."""
    import paramiko

    s, ep = settings_of(spec), endpoint(spec, host)
    timeout = s.connect_timeout_s
    if ep.key_file and not os.path.isfile(ep.key_file):
        raise UserError(f"{host}: key file {ep.key_file} does not exist")
    client = paramiko.SSHClient()
    if s.insecure_ignore_host_keys:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # kept in memory only
    else:
        kh = known_hosts(s)
        if not os.path.isfile(kh):
            raise UserError(f"{host}: known_hosts file {kh} does not exist; record the hosts' keys "
                            f"(ssh-keyscan, and check the fingerprints out of band), or set "
                            f"ssh.insecure_ignore_host_keys: true for a throwaway lab")
        client.load_host_keys(kh)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(ep.address, port=ep.port, username=ep.user, key_filename=ep.key_file,
                       look_for_keys=ep.key_file is None, allow_agent=ep.key_file is None,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
        client.close()
        raise UserError(f"{host} ({ep.where}): {_why(e, s, ep, timeout)}") from None
    return client


def _why(e: Exception, s: SshSettings, ep: Endpoint, timeout: float) -> str:
    import paramiko

    kh = known_hosts(s)
    entry = ep.address if ep.port == 22 else f"[{ep.address}]:{ep.port}"
    if isinstance(e, paramiko.BadHostKeyException):
        return (f"host key CHANGED: {kh} records {fingerprint(e.expected_key)}, the host offers "
                f"{fingerprint(e.key)}. Someone may be intercepting the connection, or the host was "
                f"reinstalled; if you trust the new key: ssh-keygen -R '{entry}' -f {kh}")
    if isinstance(e, paramiko.AuthenticationException):
        key = f"key {ep.key_file}" if ep.key_file else "ssh-agent or default keys"
        return (f"authentication failed for user {ep.user!r} with {key} "
                f"(is its public key in authorized_keys?)")
    if isinstance(e, paramiko.PasswordRequiredException):
        return f"key file {ep.key_file} is encrypted: add it to ssh-agent and leave key_file out"
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return (f"host key unknown: {entry} is not in {kh}; record it (ssh-keyscan, and check the "
                f"fingerprint out of band), or set ssh.insecure_ignore_host_keys: true for a throwaway lab")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"unreachable: no answer within {timeout:g} s"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return "unreachable: connection refused (is sshd running on that port?)"
    if isinstance(e, OSError):
        return f"unreachable: {e.strerror or e}"
    if isinstance(e, paramiko.SSHException):
        return f"ssh handshake failed: {e}"
    return f"{type(e).__name__}: {e}"
