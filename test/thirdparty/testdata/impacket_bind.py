#!/usr/bin/python3
"""Bind one DCE/RPC interface over ncacn_ip_tcp with impacket and report.

Usage: impacket_bind.py HOST PORT IFACE AUTH
  IFACE: samr | lsarpc | epm | mgmt | kms
  AUTH:  none  (no auth trailer)
         null  (NTLM NULL session: empty user and password, auth level connect)

Prints exactly one JSON object on stdout:
  {"iface": ..., "auth": ..., "result": "bind_ack"}
  {"iface": ..., "auth": ..., "result": "refused", "error_type": ..., "error": ...}
Exit status 0 when the outcome was observed (either way), 2 on misuse.
"""

import json
import sys

from impacket.dcerpc.v5 import epm, lsad, mgmt, samr, transport
from impacket.dcerpc.v5.rpcrt import RPC_C_AUTHN_LEVEL_CONNECT, RPC_C_AUTHN_WINNT
from impacket.uuid import uuidtup_to_bin

KMS = uuidtup_to_bin(("51c82175-844e-4750-b0d8-ec255555bc06", "1.0"))

IFACES = {
    "samr": samr.MSRPC_UUID_SAMR,
    "lsarpc": lsad.MSRPC_UUID_LSAD,
    "epm": epm.MSRPC_UUID_PORTMAP,
    "mgmt": mgmt.MSRPC_UUID_MGMT,
    "kms": KMS,
}


def main(argv):
    if len(argv) != 5 or argv[3] not in IFACES or argv[4] not in ("none", "null"):
        sys.stderr.write(__doc__)
        return 2
    host, port, iface, auth = argv[1], int(argv[2]), argv[3], argv[4]
    out = {"iface": iface, "auth": auth}

    rpctransport = transport.DCERPCTransportFactory("ncacn_ip_tcp:%s[%d]" % (host, port))
    rpctransport.set_connect_timeout(5)
    if auth == "null":
        rpctransport.set_credentials("", "")
    dce = rpctransport.get_dce_rpc()
    if auth == "null":
        dce.set_credentials("", "")
        dce.set_auth_type(RPC_C_AUTHN_WINNT)
        dce.set_auth_level(RPC_C_AUTHN_LEVEL_CONNECT)
    try:
        dce.connect()
        dce.bind(IFACES[iface])
    except Exception as e:  # bind_nak, fault, or the connection closing
        out["result"] = "refused"
        out["error_type"] = type(e).__name__
        out["error"] = str(e)
    else:
        out["result"] = "bind_ack"
    finally:
        try:
            dce.disconnect()
        except Exception:
            pass
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
