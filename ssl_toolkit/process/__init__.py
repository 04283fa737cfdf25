"""The process boundary: how a command's process ends and what it tells whoever started it.

- `status`: the exit codes (one enum), the statuses a run ends with, the errors that carry one, and the one
  place an allocation failure is recognised;
- `outcome`: the small JSON file a process leaves (status, message, step), written by the entry points and
  read by every caller instead of the process's stderr;
- `launch`: starting a command in this process, as a subprocess or under `accelerate launch`, and
  collecting its outcome, exit code and peak memory.

Nothing here imports torch: tools that only start runs stay light.
"""
