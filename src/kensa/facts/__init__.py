"""Read-only knowledge of a target: how a sysctl key maps to /proc/sys, how an audit
rule line parses. Checks and handlers' validate use it; it changes nothing."""
