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

# The other kinds of CRIU 4.x (criu/image-desc.c): TCP streams, the legacy per-fd-kind images
# (files.img holds these fds since CRIU 3.x), namespaces, mounts, cgroups, ghost files, locks.
FIFO_MAGIC = 0x58364939            # Kirov
FIFO_DATA_MAGIC = 0x59333054       # Tosno
INETSK_MAGIC = 0x56443851          # Pereslavl
PACKETSK_MAGIC = 0x60454618        # Veliky Ustyug
UTSNS_MAGIC = 0x54473203           # Smolensk
IPC_VAR_MAGIC = 0x53115007         # Samara
IPCNS_SHM_MAGIC = 0x46283044       # Odessa
IPCNS_MSG_MAGIC = 0x55453737       # Moscow
IPCNS_SEM_MAGIC = 0x59573019       # St. Petersburg
REMAP_FPATH_MAGIC = 0x59133954     # Vologda
GHOST_FILE_MAGIC = 0x52583605      # Oryol
TCP_STREAM_MAGIC = 0x51465506      # Orenburg
EVENTPOLL_FILE_MAGIC = 0x45023858  # Krasnodar
EVENTPOLL_TFD_MAGIC = 0x44433746   # Novorossiysk
SIGNALFD_MAGIC = 0x57323820        # Uglich
INOTIFY_FILE_MAGIC = 0x48424431    # Volgograd
INOTIFY_WD_MAGIC = 0x54562009      # Svetlogorsk (Rauschen)
MNTS_MAGIC = 0x55563928            # Petushki
FILE_LOCKS_MAGIC = 0x54323616      # Kaluga
FANOTIFY_FILE_MAGIC = 0x55096122   # Chelyabinsk
FANOTIFY_MARK_MAGIC = 0x56506035   # Yekaterinburg
PSIGNAL_MAGIC = SIGNAL_MAGIC
NETLINK_SK_MAGIC = 0x58005614      # Perm
NS_FILES_MAGIC = 0x61394011        # Nyandoma
TUNFILE_MAGIC = 0x57143751         # Kalyazin
CGROUP_MAGIC = 0x59383330          # Tikhvin
TIMERFD_MAGIC = 0x50493712         # Korocha
USERNS_MAGIC = 0x55474906          # Kazan
BINFMT_MISC_MAGIC = 0x67343323     # Apatity
BINFMT_MISC_OLD_MAGIC = BINFMT_MISC_MAGIC
AUTOFS_MAGIC = 0x49353943          # Sochi
PIDNS_MAGIC = 0x61157326           # Surgut
BPFMAP_FILE_MAGIC = 0x57506142     # Alapayevsk
BPFMAP_DATA_MAGIC = 0x64324033     # Arkhangelsk
APPARMOR_MAGIC = 0x59423047        # Nikolskoye
PIDFD_MAGIC = 0x54435556           # Ufa

# Images older CRIUs wrote and CRIU 4.x still reads: pages before pagemap ids existed.
PAGES_OLD_MAGIC = PAGEMAP_MAGIC
SHM_PAGES_OLD_MAGIC = PAGEMAP_MAGIC

# Service files (behind IMG_SERVICE_MAGIC).
STATS_MAGIC = 0x57093306         # Ostashkov
IRMAP_CACHE_MAGIC = 0x57004059   # Ivanovo

# Network namespace images (criu/include/magic.h). ifaddr, route, route6, rule, iptables,
# ip6tables, nftables and the conntrack dumps are RAW_IMAGE_MAGIC: CRIU stores the output of
# `ip addr/route/rule save` and the tables' save tools as they are; so are the tmpfs and
# /dev tarballs (tmpfs-N.tar.gz, tmpfs-dev-N.tar.gz).
NETDEV_MAGIC = 0x57373951  # Yaroslavl
NETNS_MAGIC = 0x55933752  # Dolgoprudny
