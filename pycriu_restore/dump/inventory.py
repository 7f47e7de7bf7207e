"""inventory.img: what kind of checkpoint this is (images/inventory.proto).

The fields and values of a CRIU 4.2 dump of tasks in the dumper's namespaces: image
format v1.1, one fdinfo image per fd table (``fdinfo_per_id``), one image per namespace
(``ns_per_id``), the dumper's own kernel-object ids as ``root_ids`` (dump/ids.py), cgroup
set 1, no LSM, the network locked with iptables (method 0, nothing to unlock), no
plugins, and a run id (a UUID) that names this dump.
"""

from __future__ import annotations

import uuid

from pycriu_restore.dump.ids import DUMPER_KOBJ_ID, kobj_ids
from pycriu_restore.dump.core import CG_SET_ID
from pycriu_restore.images.framing import CRTOOLS_IMAGES_V1_1
from pycriu_restore.images.schemas import inventory_pb2

# criu/include/cr_options.h: NETWORK_LOCK_IPTABLES, the default.
NETWORK_LOCK_IPTABLES = 0


def inventory_entry() -> inventory_pb2.InventoryEntry:
    """The InventoryEntry of a fresh dump (a new dump_criu_run_id each call)."""
    entry = inventory_pb2.InventoryEntry(
        img_version=CRTOOLS_IMAGES_V1_1, fdinfo_per_id=True, ns_per_id=True,
        root_cg_set=CG_SET_ID, lsmtype=inventory_pb2.NO_LSM,
        network_lock_method=NETWORK_LOCK_IPTABLES, dump_criu_run_id=str(uuid.uuid4()))
    entry.root_ids.CopyFrom(kobj_ids(DUMPER_KOBJ_ID))
    entry.plugins_entry.SetInParent()   # present and empty, as CRIU writes it
    return entry
