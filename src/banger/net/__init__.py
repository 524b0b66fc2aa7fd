"""The host network: bridge, TAP devices and their warm pool, NAT, `.vm` DNS.

Narrow interface, one module per concern:

- `addresses`: pure subnet arithmetic (gateway, `allocate`, the MAC and `ip=` builders).
- `bridge`:    `ensure_bridge`, `get_bridge`, `delete_bridge`.
- `tap`:       `create_tap`, `attach_tap`, `delete_tap`, `list_taps`, `tap_exists`.
- `pool`:      `TapPool` (`acquire`/`lease`, `release`, `refill`, `reclaim`, `drain`).
- `nat`:       `ensure_table`, `enable_nat`, `disable_nat`, `list_nat`, `flush`.
- `dns`:       `DnsServer`, an asyncio UDP responder for `<name>.vm`.
- `ops`:       the bodies of the privileged operations (netlink, sysctls), run as root.
- `privileged`: `OPERATIONS`, the one table of what the sudo path may run, and
               `dispatch`, which runs an operation in-process or through sudo.

Every operation takes `netns=None` (the current namespace) or the name of a
namespace from `ip netns`, so tests and a daemon started inside a namespace use the
same code. Link work goes through netlink (pyroute2); nftables through `nft`.
Privileged operations run in-process as root and through
`sudo -n python -m banger.net.privileged` otherwise (see `privileged`); `bridge`, `tap`
and `nat` call them by name, so the imports go one way: callers → privileged → ops. Calls are
blocking and short; from a coroutine prefer `asyncio.to_thread`.
"""
