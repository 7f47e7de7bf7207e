"""Network namespace restore with pyroute2.

A checkpoint of a tree that lives in a network namespace of its own holds that namespace's
state beside the tasks (CRIU's criu/net.c): its links (netdev-N.img), its sysctls
(netns-N.img), its addresses, routes and rules as raw ``ip ... save`` netlink dumps
(ifaddr-N.img, route-N.img, route6-N.img, rule-N.img) and its firewall rules
(nftables-N.img, iptables-N.img). ``plan/netns.py`` reads them into a ``NetNamespacePlan``
without side effects; this package makes the namespace:

    ipdump.py     the ``ip save`` dump format: magic word, then netlink messages
    namespace.py  NetNamespace: create, configure in CRIU's order, hold, enter for the fork
"""
