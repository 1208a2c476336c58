"""The ssh provider: existing machines reached over SSH and configured with Ansible."""
