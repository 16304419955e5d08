"""Schema migrations, one module each: `vNNNN_name.py` with `DESCRIPTION` and `SQL`, a dict
of statement lists keyed by backend ("sqlite", "postgres"). Applied in version order by
`..migrate`; a shipped migration is never edited, only followed by a new one."""
