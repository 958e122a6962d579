"""Simulated Longhorn v1.7.2 (longhorn-manager subset) for the cluster emulator.

Every behaviour here follows ``/work/shared/longhorn/BRIEF.md`` (cited as BRIEF §n) and the
longhorn-manager source at tag v1.7.2 (cited as ``lm v1.7.2 <file>:<line>``). See
``bimguard/sim/README.md`` for what is emulated and what is not.
"""

NAMESPACE = "longhorn-system"
GROUP = "longhorn.io"
VERSION = "v1beta2"
