#!/usr/bin/python3
"""Run Debian's unmodified impacket samrdump.py over ncacn_ip_tcp.

samrdump.py only speaks SAMR over SMB named pipes (ncacn_np, ports 445 and
139). This wrapper runs the shipped script as __main__, with impacket's
transport factory redirected so that its \\pipe\\samr binding becomes
ncacn_ip_tcp:HOST[PORT]; everything else (its SAMR bind, connect, domain
and user enumeration, its output) is samrdump's own code.

Usage: samrdump_tcp.py SAMRDUMP_PY HOST PORT [samrdump arguments...]
"""

import runpy
import sys

from impacket.dcerpc.v5 import transport


def main():
    if len(sys.argv) < 4:
        sys.stderr.write(__doc__)
        return 2
    script, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real_factory = transport.DCERPCTransportFactory

    def tcp_factory(stringbinding):
        sys.stderr.write("samrdump_tcp: %s -> ncacn_ip_tcp:%s[%d]\n" % (stringbinding, host, port))
        t = real_factory("ncacn_ip_tcp:%s[%d]" % (host, port))
        t.set_connect_timeout(5)
        t.set_dport = lambda _port: None  # samrdump sets 445 or 139
        return t

    transport.DCERPCTransportFactory = tcp_factory
    sys.argv = [script] + sys.argv[4:]
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
