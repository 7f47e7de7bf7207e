"""Magic numbers of CRIU image files, as defined in CRIU's ``criu/include/magic.h``.

A CRIU image file starts with one or two of these u32 words (little-endian); see
:mod:`pycriu_restore.images.framing` for the layouts. Each value is defined once, here, with
CRIU's name; :mod:`pycriu_restore.images.kinds` ties them to file names and schemas.
"""

from __future__ import annotations

# The first word of every record image except inventory.img (images v1.1).
IMG_COMMON_MAGIC = 0x54564319   # Sarov
# The first word of the service files: stats-dump, stats-restore, irmap-cache.
IMG_SERVICE_MAGIC = 0x55105940  # Zlatoust
# Raw images (pages-N.img, netlink and tar dumps) carry no magic at all.
RAW_IMAGE_MAGIC = 0x0

# inventory.img has this word only, no IMG_COMMON_MAGIC before it.
INVENTORY_MAGIC = 0x58313116     # Veliky Novgorod

# Per-image magics: the second word of a record image.
PSTREE_MAGIC = 0x50273030        # Kyiv
FDINFO_MAGIC = 0x56213732        # Dmitrov
PAGEMAP_MAGIC = 0x56084025       # Vladimir
SHMEM_PAGEMAP_MAGIC = PAGEMAP_MAGIC
CORE_MAGIC = 0x55053847          # Kolomna
IDS_MAGIC = 0x54432030           # Konigsberg
VMAS_MAGIC = 0x54123737          # Tula
PIPES_MAGIC = 0x56513555         # Tver
PIPES_DATA_MAGIC = 0x56453709    # Dubna
SIGACT_MAGIC = 0x55344201        # Murom
UNIXSK_MAGIC = 0x54373943        # Ryazan
ITIMERS_MAGIC = 0x57464056       # Kostroma
POSIX_TIMERS_MAGIC = 0x52603957  # Lipetsk
SK_QUEUES_MAGIC = 0x56264026     # Suzdal
CREDS_MAGIC = 0x54023547         # Kozelsk
REG_FILES_MAGIC = 0x50363636     # Belgorod
EXT_FILES_MAGIC = 0x59255641     # Usolye
FS_MAGIC = 0x51403912            # Voronezh
MM_MAGIC = 0x57492820            # Pskov
EVENTFD_FILE_MAGIC = 0x44523722  # Anapa
TTY_FILES_MAGIC = 0x59433025     # Pushkin
TTY_INFO_MAGIC = 0x59453036      # Kolpino
TTY_DATA_MAGIC = 0x59413026      # Pavlovsk
RLIMIT_MAGIC = 0x57113925        # Rostov
SIGNAL_MAGIC = 0x59255647        # Berezniki (signal-s-N.img and signal-p-N.img)
SECCOMP_MAGIC = 0x64413049       # Kostomuksha
FILES_MAGIC = 0x56303138         # Toropets
MEMFD_INODE_MAGIC = 0x48453499   # Dnipro
TIMENS_MAGIC = 0x43114433        # Beslan
CPUINFO_MAGIC = 0x61404013       # Nyandoma

# Service files (behind IMG_SERVICE_MAGIC).
STATS_MAGIC = 0x57093306         # Ostashkov

# Network namespace images (criu/include/magic.h). ifaddr, route, route6, rule, iptables,
# ip6tables, nftables and the conntrack dumps are RAW_IMAGE_MAGIC: CRIU stores the output of
# `ip addr/route/rule save` and the tables' save tools as they are.
NETDEV_MAGIC = 0x57373951  # Yaroslavl
NETNS_MAGIC = 0x55933752  # Dolgoprudny
