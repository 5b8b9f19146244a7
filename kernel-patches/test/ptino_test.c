// SPDX-License-Identifier: GPL-2.0
/*
 * ptino_test - check FUSE inode passthrough (FUSE_PASSTHROUGH_OPS) end to end.
 *
 * A tiny single-threaded FUSE server that speaks /dev/fuse directly (no
 * libfuse) mirrors a small directory tree that it creates, and a forked client
 * works on the mount.  The server counts the requests it receives per node and
 * opcode in shared memory, so the client can check which operations reached
 * the server and which the kernel served from the backing files.
 *
 *   ptino_test ino   [WORKDIR]  negotiate FUSE_PASSTHROUGH|FUSE_PASSTHROUGH_OPS,
 *                               attach backing files with ops masks at LOOKUP
 *   ptino_test plain [WORKDIR]  a server that does not negotiate the flag
 *                               (legacy FOPEN_PASSTHROUGH only): must work on
 *                               a stock and on a patched kernel alike
 *   ptino_test stock [WORKDIR]  plain, and check that the kernel is an
 *                               unpatched 7.46 that does not offer the flag
 *   ptino_test walk  [WORKDIR]  ino with READDIRPLUS and
 *                               FUSE_PASSTHROUGH_DIRENTPLUS: a cold walk
 *                               reaches the server as READDIRPLUS only,
 *                               and a directory passing READDIR through
 *                               sends READDIRPLUS only for a stat walk
 *   ptino_test lookup [WORKDIR] walk flags, and directories with LOOKUP in
 *                               their mask (patch 0015): names resolved by
 *                               the kernel in the backing directory
 *   ptino_test nodp  [WORKDIR]  ino without FUSE_POSIX_ACL, so without
 *                               default_permissions: the kernel still checks
 *                               inodes with a backing file, sticky bit
 *                               included
 *   ptino_test stress [WORKDIR] walk flags; for PTINO_STRESS_SECONDS (default
 *                               20) processes on every CPU stat, list, open
 *                               and read passthrough files while others
 *                               unlink, rename, re-create, chmod and
 *                               truncate them and drop the dentry and inode
 *                               caches; checks every result, then that no
 *                               lookup count or backing file is left over
 *
 * Needs root, /dev/fuse and a kernel with CONFIG_FUSE_PASSTHROUGH.  Prints one
 * line per check; exits 0 only if every check holds.  WORKDIR (default
 * /tmp/ptino) must be on a filesystem with user xattrs and POSIX ACLs (tmpfs).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>

/* ---- FUSE protocol, as in include/uapi/linux/fuse.h of the series (7.47) */

enum {
	FUSE_LOOKUP = 1, FUSE_FORGET = 2, FUSE_GETATTR = 3, FUSE_SETATTR = 4,
	FUSE_READLINK = 5, FUSE_UNLINK = 10, FUSE_RENAME = 12, FUSE_OPEN = 14, FUSE_READ = 15,
	FUSE_WRITE = 16,
	FUSE_STATFS = 17, FUSE_RELEASE = 18, FUSE_FSYNC = 20,
	FUSE_SETXATTR = 21, FUSE_GETXATTR = 22, FUSE_LISTXATTR = 23,
	FUSE_FLUSH = 25, FUSE_INIT = 26, FUSE_OPENDIR = 27, FUSE_READDIR = 28,
	FUSE_RELEASEDIR = 29, FUSE_ACCESS = 34, FUSE_CREATE = 35,
	FUSE_INTERRUPT = 36, FUSE_DESTROY = 38, FUSE_BATCH_FORGET = 42,
	FUSE_READDIRPLUS = 44, FUSE_RENAME2 = 45, FUSE_STATX = 52,
	FUSE_GETLK = 31, FUSE_SETLK = 32, FUSE_SETLKW = 33,
};

#define FUSE_POSIX_LOCKS	(1u << 1)
#define FUSE_FLOCK_LOCKS	(1u << 10)
#define FUSE_POSIX_ACL		(1u << 20)
#define FUSE_INIT_EXT		(1u << 30)
#define FUSE_MAX_PAGES		(1u << 22)
#define FUSE_PASSTHROUGH	(1ULL << 37)
#define FUSE_PASSTHROUGH_OPS	(1ULL << 44)
#define FUSE_PASSTHROUGH_DIRENTPLUS (1ULL << 45)
#define FUSE_DO_READDIRPLUS	(1u << 13)
#define FUSE_READDIRPLUS_AUTO	(1u << 14)
#define FOPEN_PASSTHROUGH	(1u << 7)
#define FATTR_MODE		(1u << 0)
#define FATTR_SIZE		(1u << 3)
#define FATTR_FH		(1u << 6)
#define FUSE_PASSTHROUGH_OP(op)	(1ULL << ((op) - 1))

struct fuse_attr {
	uint64_t ino, size, blocks, atime, mtime, ctime;
	uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev;
	uint32_t blksize, flags;
};
struct fuse_entry_out {
	uint64_t nodeid, generation, entry_valid, attr_valid;
	uint32_t entry_valid_nsec, attr_valid_nsec;
	struct fuse_attr attr;
};
struct fuse_entry_backing { int32_t backing_id; uint32_t flags; };
struct fuse_attr_out {
	uint64_t attr_valid;
	uint32_t attr_valid_nsec, dummy;
	struct fuse_attr attr;
};
struct fuse_in_header {
	uint32_t len, opcode;
	uint64_t unique, nodeid;
	uint32_t uid, gid, pid;
	uint16_t total_extlen, padding;
};
struct fuse_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct fuse_init_in {
	uint32_t major, minor, max_readahead, flags, flags2, unused[11];
};
struct fuse_init_out {
	uint32_t major, minor, max_readahead, flags;
	uint16_t max_background, congestion_threshold;
	uint32_t max_write, time_gran;
	uint16_t max_pages, map_alignment;
	uint32_t flags2, max_stack_depth;
	uint16_t request_timeout, unused[11];
};
struct fuse_open_in { uint32_t flags, open_flags; };
struct fuse_open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id; };
struct fuse_release_in {
	uint64_t fh; uint32_t flags, release_flags; uint64_t lock_owner;
};
struct fuse_read_in {
	uint64_t fh, offset; uint32_t size, read_flags;
	uint64_t lock_owner; uint32_t flags, padding;
};
struct fuse_write_in {
	uint64_t fh, offset; uint32_t size, write_flags;
	uint64_t lock_owner; uint32_t flags, padding;
};
struct fuse_write_out { uint32_t size, padding; };
struct fuse_getxattr_in { uint32_t size, padding; };
struct fuse_getxattr_out { uint32_t size, padding; };
struct fuse_setattr_in {
	uint32_t valid, padding; uint64_t fh, size, lock_owner;
	uint64_t atime, mtime, ctime;
	uint32_t atimensec, mtimensec, ctimensec, mode, unused4, uid, gid;
	uint32_t unused5;
};
struct fuse_forget_in { uint64_t nlookup; };
struct fuse_forget_one { uint64_t nodeid, nlookup; };
struct fuse_batch_forget_in { uint32_t count, dummy; };
struct fuse_dirent {
	uint64_t ino, off; uint32_t namelen, type; char name[];
};
struct fuse_direntplus {
	struct fuse_entry_out entry_out; struct fuse_dirent dirent;
};
struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t ops_mask; };

#define FUSE_DEV_IOC_BACKING_OPEN  _IOW(229, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

#define OP(x)	FUSE_PASSTHROUGH_OP(FUSE_##x)

/* ---- the tree and what each node asks the kernel to pass through */

struct policy {
	const char *path;	/* relative to the source directory */
	int is_dir;
	uint64_t mask;		/* ops_mask of the inode backing file */
	int open_passthrough;	/* OPEN reply: 0 plain, 1 id 0, 2 own id */
	int entry_valid;	/* seconds */
};

static const struct policy policies[] = {
	{ "d", 1, OP(GETATTR) | OP(STATX) | OP(GETXATTR) | OP(LISTXATTR) |
		  OP(READDIR) | OP(OPEN), 0, 3600 },
	{ "d/f1", 0, OP(GETATTR) | OP(STATX) | OP(GETXATTR) | OP(LISTXATTR) |
		     OP(OPEN) | OP(READ) | OP(WRITE), 0, 3600 },
	/* OPEN without READ */
	{ "d/f2", 0, OP(GETATTR) | OP(GETXATTR) | OP(LISTXATTR) | OP(OPEN), 0,
		     3600 },
	/* OPEN left to the server, which asks for I/O passthrough (id 0) */
	{ "d/f3", 0, OP(GETATTR) | OP(READ) | OP(WRITE), 1, 3600 },
	/* metadata only: opens without FOPEN_PASSTHROUGH must still work */
	{ "d/f4", 0, OP(GETATTR), 0, 3600 },
	/* OPEN left to the server, which names the inode's own id */
	{ "d/f5", 0, OP(GETATTR) | OP(READ) | OP(WRITE), 2, 3600 },
	/* READ without WRITE: writes go to the server as direct I/O */
	{ "d/ro", 0, OP(GETATTR) | OP(OPEN) | OP(READ), 0, 3600 },
	/* SETATTR passed through */
	{ "d/setf", 0, OP(GETATTR) | OP(SETATTR) | OP(OPEN) | OP(READ) |
		       OP(WRITE), 0, 3600 },
	/* ACLs served from the backing file */
	{ "d/acl", 0, OP(GETATTR) | OP(GETXATTR) | OP(OPEN) | OP(READ), 0,
		      3600 },
	/* READDIR left to the server */
	{ "d/sub", 1, OP(GETATTR), 0, 3600 },
	{ "d/sub/g", 0, OP(GETATTR) | OP(OPEN) | OP(READ), 0, 3600 },
	/* no backing file at all */
	{ "d/plain", 0, 0, 0, 3600 },
	/* re-looked up every time; the second reply names another backing */
	{ "d/dup", 0, OP(GETATTR), 0, 0 },
	/* a backing file registered with ops_mask 0 cannot be attached */
	{ "d/legacy", 0, 0, 0, 3600 },
	/* permission checks after a change of the backing inode */
	{ "d/pstale", 0, OP(GETATTR) | OP(OPEN) | OP(READ), 0, 3600 },
	{ "d/nacl", 0, OP(GETATTR) | OP(OPEN) | OP(READ), 0, 3600 },
	{ "d/xacl", 0, OP(GETATTR) | OP(GETXATTR) | OP(OPEN) | OP(READ), 0,
		       3600 },
	/* ACL mask after a chmod passed through */
	{ "d/aclc", 0, OP(GETATTR) | OP(SETATTR) | OP(GETXATTR) | OP(OPEN) |
		       OP(READ), 0, 3600 },
	/* locks on a file that the kernel opened */
	{ "d/lck", 0, OP(GETATTR) | OP(OPEN) | OP(READ) | OP(WRITE), 0, 3600 },
	/* no backing file at the first LOOKUP, one for I/O at the next ones */
	{ "d/busy", 0, OP(GETATTR) | OP(READ) | OP(WRITE), 0, 0 },
	/* atime of the backing file on noatime and read-only mounts */
	{ "d/atime", 0, OP(GETATTR) | OP(OPEN) | OP(READ), 0, 3600 },
	/* walk mode: READDIRPLUS left to the server, which attaches backings */
	{ "w", 1, OP(GETATTR) | OP(STATX), 0, 3600 },
	/* every entry of w (policy_of() maps w/NAME here) */
	{ "w/*", 0, OP(GETATTR) | OP(STATX) | OP(OPEN) | OP(READ), 0, 3600 },
	/* walk mode: a directory listed from its backing directory */
	{ "v", 1, OP(GETATTR) | OP(STATX) | OP(READDIR), 0, 3600 },
	{ "v/*", 0, OP(GETATTR) | OP(STATX), 0, 3600 },
	/* lookup mode: the kernel looks names up below l and e itself */
	{ "l", 1, OP(GETATTR) | OP(STATX) | OP(READDIR) | OP(OPEN) |
		  OP(READ) | OP(LOOKUP), 0, 3600 },
	/* what the server registers for the entries it is asked about */
	{ "l/*", 0, OP(GETATTR) | OP(STATX), 0, 3600 },
	/* entries of e expire with e's: one second */
	{ "e", 1, OP(GETATTR) | OP(STATX) | OP(READDIR) | OP(LOOKUP), 0, 1 },
	{ "e/*", 0, OP(GETATTR) | OP(STATX), 0, 3600 },
	/* walk mode: listed whole, then looked up (tar, scandir + stat) */
	{ "x", 1, OP(GETATTR) | OP(STATX) | OP(READDIR), 0, 3600 },
	{ "x/a", 1, OP(GETATTR) | OP(STATX) | OP(READDIR), 0, 3600 },
	{ "x/b", 1, OP(GETATTR) | OP(STATX) | OP(READDIR), 0, 3600 },
	{ "x/*/*", 0, OP(GETATTR) | OP(STATX), 0, 3600 },
	/* nodp mode: t is a sticky directory (1777) of root's */
	{ "k", 1, OP(GETATTR) | OP(STATX), 0, 3600 },
	{ "k/t", 1, OP(GETATTR) | OP(STATX), 0, 3600 },
	{ "k/t/*", 0, OP(GETATTR) | OP(STATX), 0, 3600 },
	/* nodp mode: u (1777) gets its backing file at its second LOOKUP */
	{ "k/u", 1, OP(GETATTR) | OP(STATX), 0, 0 },
	/* stress mode: s passes READDIR through, its files are re-looked up */
	{ "s", 1, OP(GETATTR) | OP(STATX) | OP(READDIR) | OP(OPEN), 0, 3600 },
	{ "s/*", 0, OP(GETATTR) | OP(STATX) | OP(SETATTR) | OP(OPEN) |
		    OP(READ) | OP(WRITE) | OP(GETXATTR) | OP(LISTXATTR), 0, 0 },
	/* stress mode: names in q are looked up by the kernel (patch 0015) */
	{ "q", 1, OP(GETATTR) | OP(STATX) | OP(READDIR) | OP(OPEN) | OP(READ) |
		  OP(WRITE) | OP(SETATTR) | OP(LOOKUP), 0, 1 },
	{ "q/*", 0, OP(GETATTR) | OP(STATX) | OP(SETATTR) | OP(OPEN) |
		    OP(READ) | OP(WRITE), 0, 3600 },
};
#define NPOL (sizeof(policies) / sizeof(policies[0]))
_Static_assert(NPOL <= 64, "struct shared: pcount[64]");

/* ---- state shared by the server (parent) and the client (child) */

#define MAXNODE 512
#define MAXOP 64

struct node {
	int used, fd, pol, parent;
	dev_t dev;
	ino_t ino;
	uint64_t nlookup;
	int backing_id;		/* inode backing (ino) or per-open (plain) */
	int dup_id;		/* second backing offered for d/dup */
	int dup_sent;
	int forgotten;
	int close_rc, close_again_errno;
	int ro_fd;		/* for READ/WRITE with fh 0 */
};

struct shared {
	int ino_mode;
	int walk_mode;			/* ino mode with READDIRPLUS */
	int lookup_mode;		/* walk flags, LOOKUP passed through */
	int nodp_mode;			/* ino without default_permissions */
	int stress_mode;		/* walk flags, concurrent churn */
	unsigned int bk_open, bk_close;	/* BACKING_OPEN/CLOSE that succeeded */
	unsigned int close_fail;	/* FORGET: id not closed exactly once */
	unsigned int forgets;		/* nodes whose lookup count reached 0 */
	unsigned int kernel_nodeids;	/* requests naming nodeid >= MAXNODE */
	int kernel_offers_dirplus, dirplus;	/* FUSE_PASSTHROUGH_DIRENTPLUS */
	int stock;			/* expect an unpatched 7.46 kernel */
	int init_done, probe_done;
	uint32_t kernel_minor;
	int kernel_offers_ino, kernel_offers_passthrough;
	uint64_t supported;		/* ops_mask bits the kernel accepts */
	int unknown_bit_errno;		/* BACKING_OPEN with an unknown bit */
	int high_bit_errno;		/* BACKING_OPEN with bit 63 */
	int no_getattr_errno;		/* BACKING_OPEN without GETATTR */
	int mask_without_ino_errno;	/* plain mode: non-zero ops_mask */
	int legacy_id_errno;		/* plain mode: BACKING_OPEN mask 0 */
	unsigned int count[MAXNODE][MAXOP];
	unsigned int pcount[64][MAXOP];	/* per policy: nodes are reused */
	struct node nodes[MAXNODE];
	int server_errors;
	int client_status;
	struct {			/* unlink_race() */
		unsigned int attempts, ok, eperm, other, stats;
		int other_errno, stop;
	} race;
	struct {			/* client_stress() */
		unsigned long stats, reads, lists, unlinks, renames, refills,
			      writes, chmods, setattrs, drops, getxattrs,
			      estale;
		unsigned long bad_errno, bad_attr, bad_content, bad_names,
			      bad_setattr;
		int stop, nmsg;
		char msg[8][200];
	} st;
};

static struct shared *sh;
static int fuse_fd = -1;
static char srcdir[256], mntdir[256];

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "ptino_test: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, ": %s\n", strerror(errno));
	va_end(ap);
	exit(2);
}

/* ---------------------------------------------------------------- server */

static int reply(uint64_t unique, int error, const void *a, size_t alen,
		 const void *b, size_t blen, const void *c, size_t clen)
{
	struct fuse_out_header oh = { 0 };
	struct iovec iov[4] = {
		{ &oh, sizeof(oh) }, { (void *)a, alen }, { (void *)b, blen },
		{ (void *)c, clen },
	};
	ssize_t n;

	oh.unique = unique;
	oh.error = error;
	oh.len = sizeof(oh) + (error ? 0 : alen + blen + clen);
	n = writev(fuse_fd, iov, error ? 1 : 4);
	if (n < 0 && errno != ENOENT) {
		fprintf(stderr, "ptino_test: server: reply: %s\n",
			strerror(errno));
		sh->server_errors++;
		return -errno;
	}
	return 0;
}

static int reply_err(uint64_t unique, int err)
{
	return reply(unique, -err, NULL, 0, NULL, 0, NULL, 0);
}

static void fill_attr(struct fuse_attr *a, const struct stat *st)
{
	memset(a, 0, sizeof(*a));
	a->ino = st->st_ino;
	a->size = st->st_size;
	a->blocks = st->st_blocks;
	a->atime = st->st_atim.tv_sec;
	a->atimensec = st->st_atim.tv_nsec;
	a->mtime = st->st_mtim.tv_sec;
	a->mtimensec = st->st_mtim.tv_nsec;
	a->ctime = st->st_ctim.tv_sec;
	a->ctimensec = st->st_ctim.tv_nsec;
	a->mode = st->st_mode;
	a->nlink = st->st_nlink;
	a->uid = st->st_uid;
	a->gid = st->st_gid;
	a->rdev = st->st_rdev;
	a->blksize = st->st_blksize;
}

static const char *proc_path(int fd)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), "/proc/self/fd/%d", fd);
	return buf;
}

static int backing_open(int fd, uint64_t mask)
{
	struct fuse_backing_map map = { .fd = fd, .flags = 0, .ops_mask = mask };
	int id = ioctl(fuse_fd, FUSE_DEV_IOC_BACKING_OPEN, &map);

	if (id < 0)
		return -errno;
	sh->bk_open++;
	return id;
}

static int backing_close(int id)
{
	uint32_t i = id;

	if (ioctl(fuse_fd, FUSE_DEV_IOC_BACKING_CLOSE, &i) < 0)
		return -errno;
	sh->bk_close++;
	return 0;
}

static const struct policy *node_policy(int nid)
{
	int p = sh->nodes[nid].pol;

	return p >= 0 ? &policies[p] : NULL;
}

static int policy_of(int parent, const char *name)
{
	char path[256];
	size_t i;
	int p = sh->nodes[parent].pol, n;

	if (parent == 1)
		n = snprintf(path, sizeof(path), "%s", name);
	else if (p >= 0)
		n = snprintf(path, sizeof(path), "%s/%s", policies[p].path,
			     name);
	else
		return -1;
	if (n < 0 || n >= (int)sizeof(path))
		return -1;
	if (!strncmp(path, "w/", 2))
		snprintf(path, sizeof(path), "w/*");
	if (!strncmp(path, "v/", 2))
		snprintf(path, sizeof(path), "v/*");
	if (!strncmp(path, "l/", 2))
		snprintf(path, sizeof(path), "l/*");
	if (!strncmp(path, "e/", 2))
		snprintf(path, sizeof(path), "e/*");
	if (!strncmp(path, "x/a/", 4) || !strncmp(path, "x/b/", 4))
		snprintf(path, sizeof(path), "x/*/*");
	if (!strncmp(path, "k/t/", 4))
		snprintf(path, sizeof(path), "k/t/*");
	if (!strncmp(path, "s/", 2))
		snprintf(path, sizeof(path), "s/*");
	if (!strncmp(path, "q/", 2))
		snprintf(path, sizeof(path), "q/*");
	for (i = 0; i < NPOL; i++)
		if (!strcmp(policies[i].path, path))
			return i;
	return -1;
}

static void handle_init(uint64_t unique, const struct fuse_init_in *in)
{
	struct fuse_init_out out = { 0 };
	uint64_t kflags = in->flags;
	uint64_t want;
	int i, id, dfd;

	if (in->flags & FUSE_INIT_EXT)
		kflags |= (uint64_t)in->flags2 << 32;
	sh->kernel_minor = in->minor;
	sh->kernel_offers_ino = !!(kflags & FUSE_PASSTHROUGH_OPS);
	sh->kernel_offers_passthrough = !!(kflags & FUSE_PASSTHROUGH);
	sh->kernel_offers_dirplus = !!(kflags & FUSE_PASSTHROUGH_DIRENTPLUS);

	want = FUSE_INIT_EXT | FUSE_MAX_PAGES | FUSE_PASSTHROUGH;
	/* a server that keeps locks, which it cannot do without RELEASE */
	if (sh->ino_mode)
		want |= FUSE_PASSTHROUGH_OPS | FUSE_POSIX_LOCKS |
			FUSE_FLOCK_LOCKS;
	/* FUSE_POSIX_ACL turns default_permissions on */
	if (sh->ino_mode && !sh->nodp_mode)
		want |= FUSE_POSIX_ACL;
	/*
	 * READDIRPLUS when the kernel thinks it useful (w: at the start and
	 * after lookups; v, which passes READDIR through: after lookups)
	 */
	if (sh->walk_mode || sh->lookup_mode || sh->stress_mode)
		want |= FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO |
			FUSE_PASSTHROUGH_DIRENTPLUS;
	want &= kflags;
	sh->dirplus = !!(want & FUSE_PASSTHROUGH_DIRENTPLUS);

	out.major = 7;
	out.minor = sh->ino_mode ? 47 : 46;
	if (out.minor > in->minor)
		out.minor = in->minor;
	out.max_readahead = in->max_readahead;
	out.flags = (uint32_t)want;
	out.flags2 = (uint32_t)(want >> 32);
	out.max_background = 16;
	out.congestion_threshold = 12;
	out.max_write = 128 * 1024;
	out.max_pages = 32;
	out.max_stack_depth = 1;
	reply(unique, 0, &out, sizeof(out), NULL, 0, NULL, 0);
	sh->init_done = 1;

	/* The reply has been processed when write() returns: probe now */
	dfd = sh->nodes[1].fd;
	if (sh->ino_mode) {
		/* GETATTR is needed with any other operation */
		for (i = 0; i < 64; i++) {
			id = backing_open(dfd, OP(GETATTR) | 1ULL << i);
			if (id > 0) {
				sh->supported |= 1ULL << i;
				backing_close(id);
			}
		}
		id = backing_open(dfd, OP(GETATTR) | OP(RENAME2));
		sh->unknown_bit_errno = id < 0 ? -id : 0;
		if (id > 0)
			backing_close(id);
		id = backing_open(dfd, OP(GETXATTR));
		sh->no_getattr_errno = id < 0 ? -id : 0;
		if (id > 0)
			backing_close(id);
		id = backing_open(dfd, OP(GETATTR) | 1ULL << 63);
		sh->high_bit_errno = id < 0 ? -id : 0;
		if (id > 0)
			backing_close(id);
	} else {
		id = backing_open(dfd, OP(GETATTR));
		sh->mask_without_ino_errno = id < 0 ? -id : 0;
		if (id > 0)
			backing_close(id);
	}
	sh->probe_done = 1;
}

static int new_node(int parent, int fd, const struct stat *st, int pol)
{
	int i;

	for (i = 2; i < MAXNODE; i++) {
		/* stress mode makes more inodes than fit: reuse forgotten ones */
		if (sh->stress_mode && sh->nodes[i].used &&
		    sh->nodes[i].forgotten) {
			close(sh->nodes[i].fd);
			sh->nodes[i].used = 0;
		}
		if (!sh->nodes[i].used) {
			struct node *n = &sh->nodes[i];

			memset(n, 0, sizeof(*n));
			n->used = 1;
			n->fd = fd;
			n->parent = parent;
			n->pol = pol;
			n->dev = st->st_dev;
			n->ino = st->st_ino;
			n->ro_fd = -1;
			return i;
		}
	}
	return -1;
}

static void handle_lookup(uint64_t unique, uint64_t parent, const char *name)
{
	struct {
		struct fuse_entry_out e;
		struct fuse_entry_backing b;
	} out;
	const struct policy *pol;
	struct stat st;
	struct node *n;
	int fd, i, nid = -1, id;

	if (parent >= MAXNODE || !sh->nodes[parent].used) {
		reply_err(unique, ESTALE);
		return;
	}
	fd = openat(sh->nodes[parent].fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		reply_err(unique, errno);
		return;
	}
	fstat(fd, &st);
	for (i = 2; i < MAXNODE; i++) {
		n = &sh->nodes[i];
		if (n->used && !n->forgotten && n->dev == st.st_dev &&
		    n->ino == st.st_ino) {
			nid = i;
			close(fd);
			break;
		}
	}
	if (nid < 0) {
		nid = new_node(parent, fd, &st, policy_of(parent, name));
		if (nid < 0) {
			close(fd);
			reply_err(unique, ENFILE);
			return;
		}
	}
	n = &sh->nodes[nid];
	pol = node_policy(nid);
	n->nlookup++;

	memset(&out, 0, sizeof(out));
	out.e.nodeid = nid;
	out.e.entry_valid = pol ? pol->entry_valid : 3600;
	out.e.attr_valid = 0;	/* every stat of a non-passthrough inode asks */
	fill_attr(&out.e.attr, &st);

	if (sh->ino_mode && pol) {
		int legacy = !strcmp(pol->path, "d/legacy");
		uint64_t mask = pol->mask & sh->supported;

		if ((!strcmp(pol->path, "d/busy") ||
		     !strcmp(pol->path, "k/u")) && n->nlookup == 1)
			mask = 0;
		/* only regular files and directories have backing files */
		if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
			mask = 0;
		if (!n->backing_id && (mask || legacy)) {
			id = backing_open(n->fd, legacy ? 0 : mask);
			if (id > 0)
				n->backing_id = id;
			else
				fprintf(stderr, "ptino_test: server: BACKING_OPEN %s: %s\n",
					pol->path, strerror(-id));
		}
		out.b.backing_id = n->backing_id;
		if (!strcmp(pol->path, "d/dup") && n->nlookup == 2 &&
		    n->backing_id) {
			/* another backing file for the same inode */
			id = backing_open(n->fd, mask);
			if (id > 0) {
				n->dup_id = id;
				n->dup_sent = 1;
				out.b.backing_id = id;
			}
		}
	}
	reply(unique, 0, &out.e, sizeof(out.e), &out.b,
	      sh->ino_mode ? sizeof(out.b) : 0, NULL, 0);
}

static void forget_node(uint64_t nid, uint64_t nlookup)
{
	struct node *n;
	int rc;

	if (nid < 2 || nid >= MAXNODE || !sh->nodes[nid].used)
		return;
	n = &sh->nodes[nid];
	n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
	if (n->nlookup)
		return;
	n->forgotten = 1;
	sh->forgets++;
	if (sh->ino_mode && n->backing_id) {
		n->close_rc = backing_close(n->backing_id);
		rc = backing_close(n->backing_id);
		n->close_again_errno = rc < 0 ? -rc : 0;
		if (n->close_rc || !rc)
			sh->close_fail++;
	}
	if (n->dup_id)
		backing_close(n->dup_id);
	if (n->ro_fd >= 0)
		close(n->ro_fd);
	n->ro_fd = -1;
}

static void handle_getattr(uint64_t unique, struct node *n)
{
	struct fuse_attr_out out = { 0 };
	struct stat st;

	if (fstatat(n->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
		reply_err(unique, errno);
		return;
	}
	fill_attr(&out.attr, &st);
	reply(unique, 0, &out, sizeof(out), NULL, 0, NULL, 0);
}

static void handle_setattr(uint64_t unique, struct node *n,
			   const struct fuse_setattr_in *in)
{
	const char *path = proc_path(n->fd);

	if ((in->valid & FATTR_MODE) && chmod(path, in->mode & 07777) < 0)
		goto err;
	if (in->valid & FATTR_SIZE) {
		if ((in->valid & FATTR_FH) && in->fh) {
			if (ftruncate(in->fh, in->size) < 0)
				goto err;
		} else if (truncate(path, in->size) < 0) {
			goto err;
		}
	}
	handle_getattr(unique, n);
	return;
err:
	reply_err(unique, errno);
}

static void handle_open(uint64_t unique, int nid, const struct fuse_open_in *in,
			int isdir)
{
	struct fuse_open_out out = { 0 };
	struct node *n = &sh->nodes[nid];
	const struct policy *pol = node_policy(nid);
	int fd, id;

	if (isdir)
		fd = openat(n->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	else
		fd = open(proc_path(n->fd),
			  (in->flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC)) |
			  O_CLOEXEC);
	if (fd < 0) {
		reply_err(unique, errno);
		return;
	}
	out.fh = fd;
	if (!isdir && pol && pol->open_passthrough) {
		if (sh->ino_mode) {
			out.open_flags = FOPEN_PASSTHROUGH;
			out.backing_id = pol->open_passthrough == 2 ?
					 n->backing_id : 0;
		} else {
			/* stock passthrough: one id per inode while open */
			if (!n->backing_id) {
				id = backing_open(n->fd, 0);
				if (id > 0)
					n->backing_id = id;
				else
					sh->legacy_id_errno = -id;
			}
			if (n->backing_id) {
				out.open_flags = FOPEN_PASSTHROUGH;
				out.backing_id = n->backing_id;
			}
		}
	}
	reply(unique, 0, &out, sizeof(out), NULL, 0, NULL, 0);
}

static int io_fd(struct node *n, uint64_t fh)
{
	if (fh)
		return fh;
	if (n->ro_fd < 0)
		n->ro_fd = open(proc_path(n->fd), O_RDWR | O_CLOEXEC);
	return n->ro_fd;
}

static void handle_read(uint64_t unique, struct node *n,
			const struct fuse_read_in *in)
{
	static char buf[128 * 1024];
	size_t size = in->size < sizeof(buf) ? in->size : sizeof(buf);
	ssize_t r = pread(io_fd(n, in->fh), buf, size, in->offset);

	if (r < 0)
		reply_err(unique, errno);
	else
		reply(unique, 0, buf, r, NULL, 0, NULL, 0);
}

static void handle_write(uint64_t unique, struct node *n,
			 const struct fuse_write_in *in, const void *data)
{
	struct fuse_write_out out = { 0 };
	ssize_t r = pwrite(io_fd(n, in->fh), data, in->size, in->offset);

	if (r < 0) {
		reply_err(unique, errno);
		return;
	}
	out.size = r;
	reply(unique, 0, &out, sizeof(out), NULL, 0, NULL, 0);
}

static void handle_readdir(uint64_t unique, const struct fuse_read_in *in)
{
	static char kbuf[32 * 1024], obuf[32 * 1024];
	size_t size = in->size < sizeof(obuf) ? in->size : sizeof(obuf);
	size_t used = 0;
	long n, pos;

	if (lseek(in->fh, in->offset, SEEK_SET) < 0) {
		reply_err(unique, errno);
		return;
	}
	n = syscall(SYS_getdents64, (int)in->fh, kbuf, sizeof(kbuf));
	if (n < 0) {
		reply_err(unique, errno);
		return;
	}
	for (pos = 0; pos < n;) {
		struct {
			uint64_t d_ino;
			int64_t d_off;
			unsigned short d_reclen;
			unsigned char d_type;
			char d_name[];
		} *d = (void *)(kbuf + pos);
		size_t namelen = strlen(d->d_name);
		size_t rec = (sizeof(struct fuse_dirent) + namelen + 7) & ~7UL;
		struct fuse_dirent *fd = (void *)(obuf + used);

		if (used + rec > size)
			break;
		memset(fd, 0, rec);
		fd->ino = d->d_ino;
		fd->off = d->d_off;
		fd->namelen = namelen;
		fd->type = d->d_type;
		memcpy(fd->name, d->d_name, namelen);
		used += rec;
		pos += d->d_reclen;
	}
	reply(unique, 0, obuf, used, NULL, 0, NULL, 0);
}

/*
 * READDIRPLUS: every entry but . and .. is looked up (nlookup + 1) and, with
 * FUSE_PASSTHROUGH_DIRENTPLUS, followed by its backing id.  The entry "bad"
 * names a backing id that does not exist: the kernel must link it without a
 * backing file, not fail.
 */
static void handle_readdirplus(uint64_t unique, uint64_t parent,
			       const struct fuse_read_in *in)
{
	static char kbuf[32 * 1024], obuf[64 * 1024];
	size_t size = in->size < sizeof(obuf) ? in->size : sizeof(obuf);
	size_t used = 0, extra = sh->dirplus ? sizeof(struct fuse_entry_backing) : 0;
	long n, pos;

	if (lseek(in->fh, in->offset, SEEK_SET) < 0) {
		reply_err(unique, errno);
		return;
	}
	n = syscall(SYS_getdents64, (int)in->fh, kbuf, sizeof(kbuf));
	if (n < 0) {
		reply_err(unique, errno);
		return;
	}
	for (pos = 0; pos < n;) {
		struct {
			uint64_t d_ino;
			int64_t d_off;
			unsigned short d_reclen;
			unsigned char d_type;
			char d_name[];
		} *d = (void *)(kbuf + pos);
		size_t namelen = strlen(d->d_name);
		size_t rec = (sizeof(struct fuse_direntplus) + namelen + 7) & ~7UL;
		struct fuse_direntplus *dp = (void *)(obuf + used);
		struct fuse_entry_backing *eb = (void *)(obuf + used + rec);
		int dot = !strcmp(d->d_name, ".") || !strcmp(d->d_name, "..");
		struct stat st;
		int fd, i, nid = -1;

		if (used + rec + extra > size)
			break;
		memset(dp, 0, rec + extra);
		dp->dirent.ino = d->d_ino;
		dp->dirent.off = d->d_off;
		dp->dirent.namelen = namelen;
		dp->dirent.type = d->d_type;
		memcpy(dp->dirent.name, d->d_name, namelen);
		fd = dot ? -1 : openat(sh->nodes[parent].fd, d->d_name,
				       O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0 && !fstat(fd, &st)) {
			for (i = 2; i < MAXNODE; i++) {
				struct node *o = &sh->nodes[i];

				if (o->used && !o->forgotten &&
				    o->dev == st.st_dev && o->ino == st.st_ino) {
					nid = i;
					close(fd);
					break;
				}
			}
			if (nid < 0)
				nid = new_node(parent, fd, &st,
					       policy_of(parent, d->d_name));
			if (nid < 0)
				close(fd);
		} else if (fd >= 0) {
			close(fd);
		}
		if (nid > 0) {
			struct node *nd = &sh->nodes[nid];
			const struct policy *pol = node_policy(nid);
			uint64_t mask = pol ? pol->mask & sh->supported : 0;

			nd->nlookup++;
			dp->entry_out.nodeid = nid;
			dp->entry_out.entry_valid = 3600;
			fill_attr(&dp->entry_out.attr, &st);
			if (extra && !strcmp(d->d_name, "bad")) {
				eb->backing_id = 0x7ffffff0;
			} else if (extra && mask) {
				if (!nd->backing_id) {
					int id = backing_open(nd->fd, mask);

					if (id > 0)
						nd->backing_id = id;
				}
				eb->backing_id = nd->backing_id;
			}
		}
		used += rec + extra;
		pos += d->d_reclen;
	}
	reply(unique, 0, obuf, used, NULL, 0, NULL, 0);
}

static void handle_getxattr(uint64_t unique, struct node *n, int list,
			    const struct fuse_getxattr_in *in, const char *name)
{
	static char buf[64 * 1024];
	struct fuse_getxattr_out out = { 0 };
	size_t size = in->size < sizeof(buf) ? in->size : sizeof(buf);
	ssize_t r;

	if (list)
		r = listxattr(proc_path(n->fd), in->size ? buf : NULL, size);
	else
		r = getxattr(proc_path(n->fd), name, in->size ? buf : NULL,
			     size);
	if (r < 0) {
		reply_err(unique, errno);
		return;
	}
	if (!in->size) {
		out.size = r;
		reply(unique, 0, &out, sizeof(out), NULL, 0, NULL, 0);
	} else {
		reply(unique, 0, buf, r, NULL, 0, NULL, 0);
	}
}

/* struct fuse_statfs_out: for overlayfs, which wants a statfs of its layers */
static void handle_statfs(uint64_t unique, struct node *n)
{
	struct {
		uint64_t blocks, bfree, bavail, files, ffree;
		uint32_t bsize, namelen, frsize, padding, spare[6];
	} out = { 0 };
	struct statvfs sv;

	if (fstatvfs(n->fd, &sv)) {
		reply_err(unique, errno);
		return;
	}
	out.blocks = sv.f_blocks;
	out.bfree = sv.f_bfree;
	out.bavail = sv.f_bavail;
	out.files = sv.f_files;
	out.ffree = sv.f_ffree;
	out.bsize = sv.f_bsize;
	out.namelen = sv.f_namemax;
	out.frsize = sv.f_frsize;
	reply(unique, 0, &out, sizeof(out), NULL, 0, NULL, 0);
}

/* as a server that trusts the kernel's checks: no credentials of its own */
static void handle_unlink(uint64_t unique, struct node *n, const char *name)
{
	reply_err(unique, unlinkat(n->fd, name, 0) ? errno : 0);
}

/* struct fuse_rename_in / fuse_rename2_in, then the two names */
static void handle_rename(uint64_t unique, struct node *n, const void *arg,
			  int v2)
{
	uint64_t newdir = *(const uint64_t *)arg;
	uint32_t flags = v2 ? ((const uint32_t *)arg)[2] : 0;
	const char *oldname = (const char *)arg + (v2 ? 16 : 8);
	const char *newname = oldname + strlen(oldname) + 1;

	if (newdir >= MAXNODE || !sh->nodes[newdir].used) {
		reply_err(unique, ESTALE);
		return;
	}
	reply_err(unique, syscall(SYS_renameat2, n->fd, oldname,
				  sh->nodes[newdir].fd, newname, flags) ?
			  errno : 0);
}

static void serve_one(char *buf, ssize_t len)
{
	struct fuse_in_header *ih = (void *)buf;
	void *arg = buf + sizeof(*ih);
	uint64_t nid = ih->nodeid;
	struct node *n;

	if (len < (ssize_t)sizeof(*ih))
		return;
	/* the kernel's own nodeids (patch 0015) must never reach the server */
	if (nid >= MAXNODE)
		__atomic_add_fetch(&sh->kernel_nodeids, 1, __ATOMIC_SEQ_CST);
	if (nid < MAXNODE && ih->opcode < MAXOP)
		__atomic_add_fetch(&sh->count[nid][ih->opcode], 1,
				   __ATOMIC_SEQ_CST);
	if (nid < MAXNODE && ih->opcode < MAXOP && sh->nodes[nid].used &&
	    sh->nodes[nid].pol >= 0)
		__atomic_add_fetch(&sh->pcount[sh->nodes[nid].pol][ih->opcode],
				   1, __ATOMIC_SEQ_CST);
	if (ih->opcode == FUSE_INIT) {
		handle_init(ih->unique, arg);
		return;
	}
	if (ih->opcode == FUSE_FORGET) {
		forget_node(nid, ((struct fuse_forget_in *)arg)->nlookup);
		return;
	}
	if (ih->opcode == FUSE_BATCH_FORGET) {
		struct fuse_batch_forget_in *bf = arg;
		struct fuse_forget_one *one = (void *)(bf + 1);
		uint32_t i;

		for (i = 0; i < bf->count; i++) {
			if (one[i].nodeid >= MAXNODE)
				__atomic_add_fetch(&sh->kernel_nodeids, 1,
						   __ATOMIC_SEQ_CST);
			if (one[i].nodeid < MAXNODE)
				__atomic_add_fetch(&sh->count[one[i].nodeid][FUSE_FORGET],
						   1, __ATOMIC_SEQ_CST);
			forget_node(one[i].nodeid, one[i].nlookup);
		}
		return;
	}
	if (ih->opcode == FUSE_INTERRUPT)
		return;
	if (nid >= MAXNODE || !sh->nodes[nid].used) {
		reply_err(ih->unique, ESTALE);
		return;
	}
	n = &sh->nodes[nid];
	switch (ih->opcode) {
	case FUSE_LOOKUP:
		handle_lookup(ih->unique, nid, arg);
		break;
	case FUSE_GETATTR:
		handle_getattr(ih->unique, n);
		break;
	case FUSE_SETATTR:
		handle_setattr(ih->unique, n, arg);
		break;
	case FUSE_OPEN:
		handle_open(ih->unique, nid, arg, 0);
		break;
	case FUSE_OPENDIR:
		handle_open(ih->unique, nid, arg, 1);
		break;
	case FUSE_READ:
		handle_read(ih->unique, n, arg);
		break;
	case FUSE_WRITE:
		handle_write(ih->unique, n, arg,
			     (char *)arg + sizeof(struct fuse_write_in));
		break;
	case FUSE_READDIR:
		handle_readdir(ih->unique, arg);
		break;
	case FUSE_READDIRPLUS:
		handle_readdirplus(ih->unique, nid, arg);
		break;
	case FUSE_UNLINK:
		handle_unlink(ih->unique, n, arg);
		break;
	case FUSE_RENAME:
	case FUSE_RENAME2:
		handle_rename(ih->unique, n, arg, ih->opcode == FUSE_RENAME2);
		break;
	case FUSE_STATFS:
		handle_statfs(ih->unique, n);
		break;
	case FUSE_RELEASE:
	case FUSE_RELEASEDIR: {
		struct fuse_release_in *ri = arg;

		if (ri->fh)
			close(ri->fh);
		if (!sh->ino_mode && ih->opcode == FUSE_RELEASE &&
		    n->backing_id) {
			/* plain mode: the per-open id goes with the last open */
			backing_close(n->backing_id);
			n->backing_id = 0;
		}
		reply_err(ih->unique, 0);
		break;
	}
	case FUSE_FLUSH:
	case FUSE_FSYNC:
	case FUSE_SETLK:
	case FUSE_SETLKW:
		reply_err(ih->unique, 0);
		break;
	case FUSE_GETLK: {
		/* struct fuse_lk_out: no conflicting lock known */
		struct { uint64_t start, end; uint32_t type, pid; } lk = {
			.type = F_UNLCK,
		};

		reply(ih->unique, 0, &lk, sizeof(lk), NULL, 0, NULL, 0);
		break;
	}
	case FUSE_GETXATTR:
		handle_getxattr(ih->unique, n, 0, arg,
				(char *)arg + sizeof(struct fuse_getxattr_in));
		break;
	case FUSE_LISTXATTR:
		handle_getxattr(ih->unique, n, 1, arg, NULL);
		break;
	default:
		reply_err(ih->unique, ENOSYS);
		break;
	}
}

static void serve(pid_t client)
{
	static char buf[128 * 1024 + 4096];
	struct pollfd pfd = { .fd = fuse_fd, .events = POLLIN };
	ssize_t len;
	int status;

	for (;;) {
		if (poll(&pfd, 1, 100) > 0) {
			len = read(fuse_fd, buf, sizeof(buf));
			if (len < 0) {
				if (errno == ENOENT || errno == EINTR ||
				    errno == EAGAIN)
					continue;
				if (errno == ENODEV) {
					/* aborted: wait for the client */
					pfd.fd = -1;
					continue;
				}
				die("read /dev/fuse");
			}
			serve_one(buf, len);
			continue;
		}
		if (waitpid(client, &status, WNOHANG) == client) {
			sh->client_status = WIFEXITED(status) ?
					    WEXITSTATUS(status) : 99;
			return;
		}
	}
}

/* ---------------------------------------------------------------- client */

static int checks, failures, skips;
static int allow_missing;

static void check(int ok, const char *fmt, ...)
{
	va_list ap;

	checks++;
	if (!ok)
		failures++;
	printf("%s: ", ok ? "PASS" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static int supported(uint64_t bits, const char *what)
{
	if ((sh->supported & bits) == bits)
		return 1;
	skips++;
	printf("SKIP: %s: the kernel does not pass it through\n", what);
	fflush(stdout);
	return 0;
}

static int nid_of(const char *path)
{
	int i;

	for (i = 2; i < MAXNODE; i++)
		if (sh->nodes[i].used && sh->nodes[i].pol >= 0 &&
		    !strcmp(policies[sh->nodes[i].pol].path, path))
			return i;
	return -1;
}

static unsigned int cnt(const char *path, int op)
{
	int nid = nid_of(path);

	return nid < 0 ? 0 : __atomic_load_n(&sh->count[nid][op],
					     __ATOMIC_SEQ_CST);
}

static const char *m(const char *rel)
{
	static char buf[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", mntdir, rel);
	return buf[i];
}

static const char *s(const char *rel)
{
	static char buf[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", srcdir, rel);
	return buf[i];
}

static int same_stat(const struct stat *a, const struct stat *b)
{
	return a->st_mode == b->st_mode && a->st_size == b->st_size &&
	       a->st_uid == b->st_uid && a->st_gid == b->st_gid &&
	       a->st_nlink == b->st_nlink &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t r;

	if (fd < 0)
		return -errno;
	r = read(fd, buf, len - 1);
	close(fd);
	if (r < 0)
		return -errno;
	buf[r] = 0;
	return r;
}

static int dir_names(const char *path, char *out, size_t len)
{
	DIR *d = opendir(path);
	struct dirent *de;
	char *names[64];
	int n = 0, i, j;

	if (!d)
		return -errno;
	while ((de = readdir(d)) && n < 64)
		names[n++] = strdup(de->d_name);
	closedir(d);
	for (i = 0; i < n; i++)
		for (j = i + 1; j < n; j++)
			if (strcmp(names[i], names[j]) > 0) {
				char *t = names[i];

				names[i] = names[j];
				names[j] = t;
			}
	out[0] = 0;
	for (i = 0; i < n; i++) {
		strncat(out, names[i], len - strlen(out) - 2);
		strncat(out, " ", len - strlen(out) - 1);
		free(names[i]);
	}
	return n;
}

/* run @fn as another uid in a child; returns its errno (0 = success) */
static int as_uid(uid_t uid, const char *path)
{
	pid_t pid = fork();
	int status, fd;

	if (pid == 0) {
		if (setresgid(uid, uid, uid) || setresuid(uid, uid, uid))
			_exit(100);
		fd = open(path, O_RDONLY);
		_exit(fd < 0 ? errno : 0);
	}
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 101;
}

static void wait_for(int *flag)
{
	int i;

	for (i = 0; i < 500 && !__atomic_load_n(flag, __ATOMIC_SEQ_CST); i++)
		usleep(10000);
}

static void open_read(const char *rel, const char *expect)
{
	char buf[256];
	int r = read_file(m(rel), buf, sizeof(buf));

	check(r > 0 && !strcmp(buf, expect),
	      "open+read %s returns the backing file content", rel);
}

static void client_plain(void)
{
	struct stat st, bst;
	char buf[512], bbuf[512];
	ssize_t r;
	int ok, fd;

	check(sh->kernel_minor >= 46, "kernel speaks FUSE 7.%u",
	      sh->kernel_minor);
	printf("INFO: kernel offers FUSE_PASSTHROUGH: %s, FUSE_PASSTHROUGH_OPS: %s\n",
	       sh->kernel_offers_passthrough ? "yes" : "no",
	       sh->kernel_offers_ino ? "yes" : "no");
	if (sh->stock) {
		check(sh->kernel_minor == 46 && !sh->kernel_offers_ino,
		      "stock kernel: FUSE 7.%u, FUSE_PASSTHROUGH_OPS not offered",
		      sh->kernel_minor);
	}
	check(sh->kernel_offers_passthrough, "kernel offers FUSE_PASSTHROUGH");
	check(sh->mask_without_ino_errno == EINVAL,
	      "BACKING_OPEN with a non-zero ops_mask without FUSE_PASSTHROUGH_OPS fails with EINVAL (got %s)",
	      strerror(sh->mask_without_ino_errno));

	ok = stat(m("d/f1"), &st) == 0 && lstat(s("d/f1"), &bst) == 0 &&
	     same_stat(&st, &bst);
	ok = ok && stat(m("d/f1"), &st) == 0;
	check(ok && cnt("d/f1", FUSE_GETATTR) >= 2,
	      "stat d/f1 (twice) matches the backing file and reached the server: GETATTR %u",
	      cnt("d/f1", FUSE_GETATTR));
	ok = stat(m("d"), &st) == 0 && S_ISDIR(st.st_mode);
	check(ok && cnt("d", FUSE_GETATTR) > 0,
	      "stat d reached the server: GETATTR %u", cnt("d", FUSE_GETATTR));

	r = getxattr(m("d/f1"), "user.pt", buf, sizeof(buf));
	ok = r == 6 && !memcmp(buf, "file1", 6);
	check(ok && cnt("d/f1", FUSE_GETXATTR) > 0,
	      "getxattr d/f1 user.pt = \"file1\" reached the server: GETXATTR %u",
	      cnt("d/f1", FUSE_GETXATTR));
	r = listxattr(m("d/f1"), buf, sizeof(buf));
	ok = r > 0 && memmem(buf, r, "user.pt", 8);
	check(ok && cnt("d/f1", FUSE_LISTXATTR) > 0,
	      "listxattr d/f1 reached the server: LISTXATTR %u",
	      cnt("d/f1", FUSE_LISTXATTR));

	ok = dir_names(m("d"), buf, sizeof(buf)) > 0 &&
	     dir_names(s("d"), bbuf, sizeof(bbuf)) > 0 && !strcmp(buf, bbuf);
	check(ok && cnt("d", FUSE_READDIR) > 0 && cnt("d", FUSE_OPENDIR) > 0,
	      "readdir d lists the backing directory and reached the server: OPENDIR %u, READDIR %u",
	      cnt("d", FUSE_OPENDIR), cnt("d", FUSE_READDIR));

	open_read("d/f1", "content of f1\n");
	check(cnt("d/f1", FUSE_OPEN) > 0 && cnt("d/f1", FUSE_READ) > 0,
	      "d/f1 (plain open reply): OPEN %u, READ %u at the server",
	      cnt("d/f1", FUSE_OPEN), cnt("d/f1", FUSE_READ));
	open_read("d/f3", "content of f3\n");
	check(cnt("d/f3", FUSE_OPEN) > 0 && cnt("d/f3", FUSE_READ) == 0,
	      "d/f3 (FOPEN_PASSTHROUGH with a per-open backing id): OPEN %u, READ %u at the server",
	      cnt("d/f3", FUSE_OPEN), cnt("d/f3", FUSE_READ));

	fd = open(m("d/f4"), O_WRONLY);
	ok = fd >= 0 && pwrite(fd, "CONTENT", 7, 0) == 7;
	if (fd >= 0)
		close(fd);
	ok = ok && read_file(s("d/f4"), buf, sizeof(buf)) > 0 &&
	     !strcmp(buf, "CONTENT of f4\n");
	check(ok && cnt("d/f4", FUSE_WRITE) > 0,
	      "write d/f4 reached the backing file through the server: WRITE %u",
	      cnt("d/f4", FUSE_WRITE));

	ok = chmod(m("d/f1"), 0640) == 0 && stat(s("d/f1"), &bst) == 0 &&
	     (bst.st_mode & 07777) == 0640;
	check(ok && cnt("d/f1", FUSE_SETATTR) > 0,
	      "chmod d/f1 reached the server: SETATTR %u",
	      cnt("d/f1", FUSE_SETATTR));
}

static void check_release(void)
{
	int fdc, i, e, all, nb;

	if (chdir("/"))
		return;
	fdc = open("/proc/sys/vm/drop_caches", O_WRONLY);
	for (i = 0; i < 300; i++) {
		if (fdc >= 0) {
			lseek(fdc, 0, SEEK_SET);
			if (write(fdc, "2", 1) != 1)
				break;
		}
		all = 1;
		for (e = 2; e < MAXNODE; e++)
			if (sh->nodes[e].used && !sh->nodes[e].forgotten &&
			    (sh->nodes[e].backing_id || !sh->ino_mode))
				all = 0;
		if (all)
			break;
		usleep(10000);
	}
	if (fdc >= 0)
		close(fdc);
	if (!sh->ino_mode) {
		for (nb = 0, e = 2; e < MAXNODE; e++)
			if (sh->nodes[e].used && !sh->nodes[e].forgotten)
				nb++;
		check(nb == 0 && all,
		      "every looked up inode got its FORGET after drop_caches (%d left)",
		      nb);
		return;
	}
	all = 1;
	nb = 0;
	for (e = 2; e < MAXNODE; e++) {
		struct node *n = &sh->nodes[e];

		if (!n->used || !n->backing_id)
			continue;
		nb++;
		if (!n->forgotten || n->close_rc ||
		    n->close_again_errno != ENOENT) {
			all = 0;
			printf("INFO: %s: forgotten %d, close %d, again %s\n",
			       n->pol >= 0 ? policies[n->pol].path : "?",
			       n->forgotten, n->close_rc,
			       strerror(n->close_again_errno));
		}
	}
	check(nb > 0 && all,
	      "all %d inodes with a backing id got their FORGET; BACKING_CLOSE then succeeded, a second one gave ENOENT",
	      nb);
}

/* system.posix_acl_access with ACL_USER @uid: @uperm, mask @mask */
static int set_acl(const char *path, uint16_t uperm, uint32_t uid,
		   uint16_t mask)
{
	struct { uint16_t tag, perm; uint32_t id; } e[] = {
		{ 0x01, 6, 0xffffffff },	/* USER_OBJ rw- */
		{ 0x02, uperm, uid },		/* USER */
		{ 0x04, 4, 0xffffffff },	/* GROUP_OBJ r-- */
		{ 0x10, mask, 0xffffffff },	/* MASK */
		{ 0x20, 4, 0xffffffff },	/* OTHER r-- */
	};
	char buf[4 + sizeof(e)];
	uint32_t version = 2;

	memcpy(buf, &version, 4);
	memcpy(buf + 4, e, sizeof(e));
	return setxattr(path, "system.posix_acl_access", buf, sizeof(buf), 0);
}

/* does @uid see the xattr @name in listxattr(@path)? 1 yes, 0 no, -errno */
static int lists_xattr(uid_t uid, const char *path, const char *name)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		char buf[4096];
		ssize_t r, i;

		if (uid && (setresgid(uid, uid, uid) || setresuid(uid, uid, uid)))
			_exit(100);
		r = listxattr(path, buf, sizeof(buf));
		if (r < 0)
			_exit(100 + errno);
		for (i = 0; i < r; i += strlen(buf + i) + 1)
			if (!strcmp(buf + i, name))
				_exit(1);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	if (!WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status) >= 100 ? -(WEXITSTATUS(status) - 100) :
					     WEXITSTATUS(status);
}

/*
 * Permission checks of inodes whose attributes come from the backing inode
 * use the backing inode as it is now: mode, owner and ACL.
 */
static void check_permissions(void)
{
	char buf[512], bbuf[512];
	ssize_t r, r2;
	int e0, e, e2;

	/* chmod 600 of the backing file, no stat through the mount first */
	e0 = as_uid(1234, m("d/pstale"));
	chmod(s("d/pstale"), 0600);
	e = as_uid(1234, m("d/pstale"));
	check(e0 == 0 && e == EACCES,
	      "perm_stale_mode: uid 1234 opens d/pstale (0644): %s; after a chmod 600 of the backing file: %s",
	      strerror(e0), strerror(e));

	/* an ACL denying uid 1234 set on the backing file, without GETXATTR */
	e0 = as_uid(1234, m("d/nacl"));
	set_acl(s("d/nacl"), 0, 1234, 4);
	e = as_uid(1234, m("d/nacl"));
	e2 = as_uid(1235, m("d/nacl"));
	check(e0 == 0 && e == EACCES && e2 == 0,
	      "perm_stale_acl (GETXATTR not in the mask): uid 1234 opens d/nacl: %s; after setting user:1234:--- on the backing file: %s (uid 1235: %s)",
	      strerror(e0), strerror(e), strerror(e2));

	/* the same with GETXATTR in the mask */
	e0 = as_uid(1234, m("d/xacl"));
	set_acl(s("d/xacl"), 0, 1234, 4);
	e = as_uid(1234, m("d/xacl"));
	e2 = as_uid(1235, m("d/xacl"));
	check(e0 == 0 && e == EACCES && e2 == 0 &&
	      cnt("d/xacl", FUSE_GETXATTR) == 0,
	      "perm_stale_acl (GETXATTR in the mask): uid 1234 opens d/xacl: %s; after setting user:1234:--- on the backing file: %s (uid 1235: %s), GETXATTR %u",
	      strerror(e0), strerror(e), strerror(e2),
	      cnt("d/xacl", FUSE_GETXATTR));

	/* chmod through the mount changes the ACL mask of the backing file */
	if (supported(OP(SETATTR), "ACL mask after chmod")) {
		e0 = as_uid(1234, m("d/aclc"));
		e = chmod(m("d/aclc"), 0600) ? errno : 0;
		e2 = as_uid(1234, m("d/aclc"));
		r = getxattr(m("d/aclc"), "system.posix_acl_access", buf,
			     sizeof(buf));
		r2 = getxattr(s("d/aclc"), "system.posix_acl_access", bbuf,
			      sizeof(bbuf));
		check(e0 == 0 && e == 0 && e2 == EACCES && r > 0 && r == r2 &&
		      !memcmp(buf, bbuf, r),
		      "acl_mask_after_chmod: uid 1234 (user:1234:r--) opens d/aclc: %s; chmod 600: %s; then: %s; ACL through the mount = backing ACL",
		      strerror(e0), strerror(e), strerror(e2));
	}

	/* trusted.* is not listed to callers without CAP_SYS_ADMIN */
	if (supported(OP(LISTXATTR), "LISTXATTR of trusted.*")) {
		e0 = lists_xattr(0, m("d/f1"), "trusted.hidden");
		e = lists_xattr(65534, m("d/f1"), "trusted.hidden");
		e2 = lists_xattr(65534, s("d/f1"), "trusted.hidden");
		check(e0 == 1 && e == 0 && e2 == 0,
		      "listxattr_trusted: trusted.hidden of d/f1 listed to root: %d, to uid 65534: %d (on the backing file: %d)",
		      e0, e, e2);
	}
}

/*
 * Locks on a file that the kernel opened without FUSE_OPEN stay in the
 * kernel: the server never sees a RELEASE or FLUSH for such a file.
 */
static void check_locks(void)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int fd, ok, status, sv[2];
	pid_t pid;
	char c = 0;

	if (!supported(OP(OPEN), "locks with OPEN passed through"))
		return;
	fd = open(m("d/lck"), O_RDWR);
	ok = fd >= 0 && fcntl(fd, F_SETLK, &fl) == 0 && flock(fd, LOCK_SH) == 0;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		return;
	pid = fork();
	if (pid == 0) {
		struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
		int cfd, res = 0;

		/* the parent's open file (and its flock) is not ours */
		if (fd >= 0)
			close(fd);
		cfd = open(m("d/lck"), O_RDWR);

		/* conflict while the parent holds the locks */
		if (cfd < 0 || fcntl(cfd, F_GETLK, &q) || q.l_type != F_WRLCK ||
		    q.l_pid != getppid())
			res |= 1;
		if (flock(cfd, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
			res |= 2;
		/* and none once the parent closed its file */
		if (write(sv[1], "x", 1) != 1 || read(sv[1], &c, 1) != 1)
			res |= 4;
		q.l_type = F_WRLCK;
		if (fcntl(cfd, F_SETLK, &q) || flock(cfd, LOCK_EX | LOCK_NB))
			res |= 8;
		_exit(res);
	}
	if (read(sv[0], &c, 1) != 1)
		ok = 0;
	if (fd >= 0)
		close(fd);
	if (write(sv[0], "x", 1) != 1)
		ok = 0;
	waitpid(pid, &status, 0);
	close(sv[0]);
	close(sv[1]);
	check(ok && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
	      cnt("d/lck", FUSE_GETLK) == 0 && cnt("d/lck", FUSE_SETLK) == 0 &&
	      cnt("d/lck", FUSE_SETLKW) == 0 && cnt("d/lck", FUSE_OPEN) == 0,
	      "locks_in_kernel: POSIX and flock locks on d/lck (OPEN passed through) conflict and go with the close (child status %d), GETLK %u, SETLK %u, SETLKW %u at the server",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1,
	      cnt("d/lck", FUSE_GETLK), cnt("d/lck", FUSE_SETLK),
	      cnt("d/lck", FUSE_SETLKW));
}

/*
 * A backing file for I/O offered for an inode that has cached opens cannot
 * be attached: the inode stays without one, the LOOKUP does not fail.
 */
static void check_busy(void)
{
	struct stat st;
	char buf[64];
	unsigned int g1, g2;
	int fd, e, ok;

	if (!supported(OP(READ) | OP(WRITE), "attach to an open inode"))
		return;
	fd = open(m("d/busy"), O_RDONLY);	/* cached: no backing yet */
	e = stat(m("d/busy"), &st) ? errno : 0;	/* LOOKUP offers one */
	ok = fd >= 0 && pread(fd, buf, 4, 0) == 4;
	check(e == 0 && ok && nid_of("d/busy") > 0 &&
	      sh->nodes[nid_of("d/busy")].backing_id,
	      "busy_attach_falls_back: stat of the open d/busy whose LOOKUP offers a backing file for I/O: %s",
	      strerror(e));
	if (fd >= 0)
		close(fd);
	/* once closed, the next LOOKUP attaches it */
	e = stat(m("d/busy"), &st) ? errno : 0;
	g1 = cnt("d/busy", FUSE_GETATTR);
	stat(m("d/busy"), &st);
	g2 = cnt("d/busy", FUSE_GETATTR);
	check(e == 0 && g1 == g2,
	      "busy_attach_falls_back: after the close the backing file is attached: %s, GETATTR %u then %u",
	      strerror(e), g1, g2);
}

static long atime_of(const char *path)
{
	struct stat st;

	return stat(path, &st) ? -1 : (long)st.st_atim.tv_sec;
}

/* remount the fuse mount with the per-mount @flags */
static int remount(unsigned long flags)
{
	return mount(NULL, mntdir, NULL,
		     MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | flags, NULL);
}

/* read d/atime, whose backing atime is 2 days old; was it updated? */
static int atime_updated(void)
{
	struct timespec ts[2] = { { time(NULL) - 2 * 86400, 0 },
				  { 0, UTIME_OMIT } };
	char buf[64];
	long before;

	utimensat(AT_FDCWD, s("d/atime"), ts, 0);
	before = atime_of(s("d/atime"));
	if (read_file(m("d/atime"), buf, sizeof(buf)) <= 0)
		return -1;
	return atime_of(s("d/atime")) != before;
}

/* noatime and read-only mounts reach the passed-through reads */
static void check_atime(void)
{
	int a_noatime, a_ro, a_rw, e1, e2;

	if (!supported(OP(OPEN) | OP(READ), "atime"))
		return;
	/* a remount keeps the atime flags that it does not name */
	e1 = remount(MS_NOATIME) ? errno : 0;
	a_noatime = atime_updated();
	e2 = remount(MS_RDONLY | MS_RELATIME) ? errno : 0;
	a_ro = atime_updated();
	e1 |= remount(MS_RELATIME) ? errno : 0;
	a_rw = atime_updated();
	check(!e1 && !e2 && a_noatime == 0 && a_ro == 0 && a_rw == 1,
	      "atime_mount_flags: reading d/atime updates the backing atime on a noatime mount: %d, read-only: %d, relatime: %d",
	      a_noatime, a_ro, a_rw);
}

/* After an abort, nothing is served from the backing files any more */
static void check_abort(void)
{
	char path[128];
	struct stat st;
	int fd, dfd, e1, e2, e3, e4;

	/* instantiate d/f1 again (after check_release()), open d */
	if (stat(mntdir, &st) || stat(m("d/f1"), &st) || stat(m("d/f1"), &st))
		return;
	dfd = open(m("d"), O_RDONLY | O_DIRECTORY);
	if (stat(mntdir, &st))
		return;
	mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, NULL);
	snprintf(path, sizeof(path), "/sys/fs/fuse/connections/%u/abort",
		 minor(st.st_dev));
	fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, "1", 1) != 1) {
		check(0, "abort the connection with %s: %s", path,
		      strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	e1 = stat(m("d/f1"), &st) ? errno : 0;
	fd = open(m("d/f1"), O_RDONLY);
	e2 = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	e3 = getxattr(m("d/f1"), "user.pt", path, sizeof(path)) < 0 ? errno : 0;
	e4 = dfd < 0 ? EBADF :
	     syscall(SYS_getdents64, dfd, path, sizeof(path)) < 0 ? errno : 0;
	if (dfd >= 0)
		close(dfd);
	check(e1 == ENOTCONN && e2 == ENOTCONN && e3 == ENOTCONN &&
	      e4 == ENOTCONN,
	      "abort_stops_passthrough: after an abort stat d/f1: %s, open: %s, getxattr: %s, getdents of d opened before: %s",
	      strerror(e1), strerror(e2), strerror(e3), strerror(e4));
}

static void client_ino(void)
{
	struct stat st, bst;
	struct statx stx, bstx;
	char buf[512], bbuf[512];
	unsigned int before;
	ssize_t r, r2;
	int ok, fd, e;

	check(sh->kernel_minor >= 47, "kernel speaks FUSE 7.%u (>= 7.47)",
	      sh->kernel_minor);
	check(sh->kernel_offers_ino, "kernel offers FUSE_PASSTHROUGH_OPS");
	if (!sh->kernel_offers_ino)
		return;
	printf("INFO: ops_mask bits the kernel accepts: 0x%llx (opcodes",
	       (unsigned long long)sh->supported);
	for (e = 1; e <= 64; e++)
		if (sh->supported & FUSE_PASSTHROUGH_OP(e))
			printf(" %d", e);
	printf(")\n");
	check(sh->unknown_bit_errno == EOPNOTSUPP,
	      "BACKING_OPEN with an unsupported op bit (RENAME2) fails with EOPNOTSUPP (got %s)",
	      strerror(sh->unknown_bit_errno));
	check(sh->high_bit_errno == EINVAL,
	      "BACKING_OPEN with bit 63 (no such opcode) fails with EINVAL (got %s)",
	      strerror(sh->high_bit_errno));
	check(sh->no_getattr_errno == EINVAL,
	      "BACKING_OPEN with GETXATTR but without GETATTR fails with EINVAL (got %s)",
	      strerror(sh->no_getattr_errno));

	/* --- GETATTR / STATX */
	if (supported(OP(GETATTR), "GETATTR")) {
		static const char * const paths[] = {
			"d", "d/f1", "d/f3", "d/f4", "d/sub",
		};
		unsigned int i;

		for (i = 0; i < 5; i++) {
			ok = stat(m(paths[i]), &st) == 0 &&
			     lstat(s(paths[i]), &bst) == 0 &&
			     same_stat(&st, &bst);
			ok = ok && stat(m(paths[i]), &st) == 0;
			check(ok && cnt(paths[i], FUSE_GETATTR) == 0,
			      "stat %s (twice) matches the backing file, GETATTR at the server: %u",
			      paths[i], cnt(paths[i], FUSE_GETATTR));
		}
		chmod(s("d/f1"), 0604);
		ok = stat(m("d/f1"), &st) == 0;
		check(ok && (st.st_mode & 07777) == 0604 &&
		      cnt("d/f1", FUSE_GETATTR) == 0,
		      "a chmod of the backing file is seen at once by stat d/f1 (mode %o), GETATTR %u",
		      st.st_mode & 07777, cnt("d/f1", FUSE_GETATTR));
		chmod(s("d/f1"), 0644);
	}
	ok = stat(m("d/plain"), &st) == 0;
	check(ok && cnt("d/plain", FUSE_GETATTR) > 0,
	      "stat d/plain (no backing file) reached the server: GETATTR %u",
	      cnt("d/plain", FUSE_GETATTR));
	if (supported(OP(STATX), "STATX")) {
		memset(&stx, 0, sizeof(stx));
		r = statx(AT_FDCWD, m("d/f1"), 0,
			  STATX_BASIC_STATS | STATX_BTIME, &stx);
		statx(AT_FDCWD, s("d/f1"), 0, STATX_BASIC_STATS | STATX_BTIME,
		      &bstx);
		ok = r == 0 && (stx.stx_mask & STATX_BTIME) &&
		     stx.stx_btime.tv_sec == bstx.stx_btime.tv_sec &&
		     stx.stx_btime.tv_nsec == bstx.stx_btime.tv_nsec;
		check(ok && cnt("d/f1", FUSE_STATX) == 0 &&
		      cnt("d/f1", FUSE_GETATTR) == 0,
		      "statx(STATX_BTIME) d/f1 gives the backing btime: STATX %u, GETATTR %u at the server",
		      cnt("d/f1", FUSE_STATX), cnt("d/f1", FUSE_GETATTR));
	}

	/* --- GETXATTR / LISTXATTR */
	if (supported(OP(GETXATTR) | OP(LISTXATTR), "GETXATTR/LISTXATTR")) {
		r = getxattr(m("d/f1"), "user.pt", buf, sizeof(buf));
		ok = r == 6 && !memcmp(buf, "file1", 6);
		check(ok && cnt("d/f1", FUSE_GETXATTR) == 0,
		      "getxattr d/f1 user.pt = \"file1\", GETXATTR at the server: %u",
		      cnt("d/f1", FUSE_GETXATTR));
		r = getxattr(m("d"), "user.pt", buf, sizeof(buf));
		ok = r == 4 && !memcmp(buf, "dir", 4);
		check(ok && cnt("d", FUSE_GETXATTR) == 0,
		      "getxattr d user.pt = \"dir\", GETXATTR at the server: %u",
		      cnt("d", FUSE_GETXATTR));
		r = getxattr(m("d/f1"), "user.none", buf, sizeof(buf));
		e = r < 0 ? errno : 0;
		check(e == ENODATA && cnt("d/f1", FUSE_GETXATTR) == 0,
		      "getxattr d/f1 user.none fails with ENODATA (%s), GETXATTR at the server: %u",
		      strerror(e), cnt("d/f1", FUSE_GETXATTR));
		r = getxattr(m("d/f1"), "user.pt", NULL, 0);
		check(r == 6 && cnt("d/f1", FUSE_GETXATTR) == 0,
		      "getxattr d/f1 user.pt size query = %zd", r);
		r = listxattr(m("d/f1"), buf, sizeof(buf));
		r2 = listxattr(s("d/f1"), bbuf, sizeof(bbuf));
		ok = r > 0 && r == r2 && !memcmp(buf, bbuf, r);
		check(ok && cnt("d/f1", FUSE_LISTXATTR) == 0,
		      "listxattr d/f1 matches the backing file, LISTXATTR at the server: %u",
		      cnt("d/f1", FUSE_LISTXATTR));
		r = listxattr(m("d"), buf, sizeof(buf));
		ok = r > 0 && memmem(buf, r, "user.pt", 8);
		check(ok && cnt("d", FUSE_LISTXATTR) == 0,
		      "listxattr d lists user.pt, LISTXATTR at the server: %u",
		      cnt("d", FUSE_LISTXATTR));
		r = getxattr(m("d/acl"), "system.posix_acl_access", buf,
			     sizeof(buf));
		r2 = getxattr(s("d/acl"), "system.posix_acl_access", bbuf,
			      sizeof(bbuf));
		ok = r > 0 && r == r2 && !memcmp(buf, bbuf, r);
		check(ok && cnt("d/acl", FUSE_GETXATTR) == 0,
		      "getxattr d/acl system.posix_acl_access = the backing ACL (%zd bytes), GETXATTR at the server: %u",
		      r, cnt("d/acl", FUSE_GETXATTR));
		e = as_uid(1234, m("d/acl"));
		check(e == 0,
		      "uid 1234 may open d/acl (mode 0640 root:root, ACL user:1234:r--): %s",
		      strerror(e));
		e = as_uid(1235, m("d/acl"));
		check(e == EACCES, "uid 1235 may not open d/acl: %s",
		      strerror(e));
		check(cnt("d/acl", FUSE_GETXATTR) == 0,
		      "the ACL permission checks did not reach the server: GETXATTR %u",
		      cnt("d/acl", FUSE_GETXATTR));
	}
	r = getxattr(m("d/f4"), "user.pt", buf, sizeof(buf));
	ok = r == 6 && !memcmp(buf, "file4", 6);
	check(ok && cnt("d/f4", FUSE_GETXATTR) > 0,
	      "getxattr d/f4 (GETXATTR not in its mask) reached the server: GETXATTR %u",
	      cnt("d/f4", FUSE_GETXATTR));

	/* --- READDIR, and OPEN of a directory */
	if (supported(OP(READDIR) | OP(OPEN), "READDIR")) {
		DIR *d;
		struct dirent *de;
		long pos = -1;
		char name[256] = "", again[256] = "";
		int n1, n2, i = 0;

		n1 = dir_names(m("d"), buf, sizeof(buf));
		n2 = dir_names(s("d"), bbuf, sizeof(bbuf));
		check(n1 > 2 && n1 == n2 && !strcmp(buf, bbuf),
		      "readdir d lists the backing directory: %s", buf);
		check(cnt("d", FUSE_OPENDIR) == 0 && cnt("d", FUSE_READDIR) == 0 &&
		      cnt("d", FUSE_READDIRPLUS) == 0 &&
		      cnt("d", FUSE_RELEASEDIR) == 0,
		      "readdir d: OPENDIR %u, READDIR %u, READDIRPLUS %u, RELEASEDIR %u at the server",
		      cnt("d", FUSE_OPENDIR), cnt("d", FUSE_READDIR),
		      cnt("d", FUSE_READDIRPLUS), cnt("d", FUSE_RELEASEDIR));

		/* telldir/seekdir/rewinddir on a passthrough directory */
		d = opendir(m("d"));
		while (d && (de = readdir(d))) {
			if (i++ == 2) {
				pos = telldir(d);
				de = readdir(d);
				if (de)
					snprintf(name, sizeof(name), "%s",
						 de->d_name);
				break;
			}
		}
		if (d && pos >= 0) {
			rewinddir(d);
			readdir(d);
			seekdir(d, pos);
			de = readdir(d);
			if (de)
				snprintf(again, sizeof(again), "%s",
					 de->d_name);
		}
		if (d)
			closedir(d);
		check(name[0] && !strcmp(name, again),
		      "telldir/rewinddir/seekdir on d: \"%s\" == \"%s\"", name,
		      again);

		/*
		 * d_ino comes from the backing directory: it agrees with
		 * st_ino because this server gives entries their backing
		 * inode numbers, which the design document requires.
		 */
		d = opendir(m("d"));
		ok = d != NULL;
		i = 0;
		while (d && (de = readdir(d))) {
			/* their lookups are counted by other checks */
			if (de->d_name[0] == '.' || !strcmp(de->d_name, "dup") ||
			    !strcmp(de->d_name, "legacy") ||
			    !strcmp(de->d_name, "busy"))
				continue;
			if (snprintf(name, sizeof(name), "d/%s", de->d_name) >=
			    (int)sizeof(name) ||
			    lstat(m(name), &st) || st.st_ino != de->d_ino)
				ok = 0;
			i++;
		}
		if (d)
			closedir(d);
		check(ok && i > 2,
		      "readdir_dino: d_ino of the %d entries of d equals their st_ino through the mount",
		      i);
	}
	ok = dir_names(m("d/sub"), buf, sizeof(buf)) == 3;
	check(ok && cnt("d/sub", FUSE_OPENDIR) > 0 &&
	      cnt("d/sub", FUSE_READDIR) > 0,
	      "readdir d/sub (READDIR not in its mask) reached the server: OPENDIR %u, READDIR %u",
	      cnt("d/sub", FUSE_OPENDIR), cnt("d/sub", FUSE_READDIR));

	/* --- OPEN, READ, WRITE */
	open_read("d/f4", "content of f4\n");
	check(cnt("d/f4", FUSE_OPEN) > 0 && cnt("d/f4", FUSE_READ) > 0,
	      "d/f4 (metadata-only backing, plain OPEN reply) is read through the server: OPEN %u, READ %u",
	      cnt("d/f4", FUSE_OPEN), cnt("d/f4", FUSE_READ));
	if (supported(OP(OPEN) | OP(READ) | OP(WRITE), "OPEN/READ/WRITE")) {
		void *p;

		open_read("d/f1", "content of f1\n");
		check(cnt("d/f1", FUSE_OPEN) == 0 && cnt("d/f1", FUSE_READ) == 0 &&
		      cnt("d/f1", FUSE_RELEASE) == 0 &&
		      cnt("d/f1", FUSE_FLUSH) == 0,
		      "d/f1 (OPEN|READ|WRITE): OPEN %u, READ %u, FLUSH %u, RELEASE %u at the server",
		      cnt("d/f1", FUSE_OPEN), cnt("d/f1", FUSE_READ),
		      cnt("d/f1", FUSE_FLUSH), cnt("d/f1", FUSE_RELEASE));
		fd = open(m("d/f1"), O_RDWR);
		ok = fd >= 0 && pwrite(fd, "CONTENT", 7, 0) == 7;
		if (fd >= 0)
			close(fd);
		ok = ok && read_file(s("d/f1"), bbuf, sizeof(bbuf)) > 0 &&
		     !strcmp(bbuf, "CONTENT of f1\n");
		check(ok && cnt("d/f1", FUSE_WRITE) == 0 &&
		      cnt("d/f1", FUSE_OPEN) == 0,
		      "write d/f1 lands in the backing file: WRITE %u, OPEN %u at the server",
		      cnt("d/f1", FUSE_WRITE), cnt("d/f1", FUSE_OPEN));
		fd = open(m("d/f1"), O_RDONLY);
		p = fd >= 0 ? mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) :
			      MAP_FAILED;
		check(p != MAP_FAILED && !memcmp(p, "CONTENT", 7),
		      "mmap d/f1 maps the backing file");
		if (p != MAP_FAILED)
			munmap(p, 4096);
		if (fd >= 0)
			close(fd);

		open_read("d/f2", "content of f2\n");
		check(cnt("d/f2", FUSE_OPEN) == 0 && cnt("d/f2", FUSE_READ) > 0,
		      "d/f2 (OPEN without READ): OPEN %u, READ %u (fh 0) at the server",
		      cnt("d/f2", FUSE_OPEN), cnt("d/f2", FUSE_READ));
		open_read("d/f3", "content of f3\n");
		check(cnt("d/f3", FUSE_OPEN) > 0 && cnt("d/f3", FUSE_READ) == 0,
		      "d/f3 (READ|WRITE; OPEN reply FOPEN_PASSTHROUGH, backing_id 0): OPEN %u, READ %u at the server",
		      cnt("d/f3", FUSE_OPEN), cnt("d/f3", FUSE_READ));
		open_read("d/f5", "content of f5\n");
		check(cnt("d/f5", FUSE_OPEN) > 0 && cnt("d/f5", FUSE_READ) == 0,
		      "d/f5 (READ|WRITE; OPEN reply FOPEN_PASSTHROUGH, own backing_id): OPEN %u, READ %u at the server",
		      cnt("d/f5", FUSE_OPEN), cnt("d/f5", FUSE_READ));
		fd = open(m("d/ro"), O_RDWR);
		ok = fd >= 0 && pwrite(fd, "CONTENT", 7, 0) == 7 &&
		     pread(fd, buf, 14, 0) == 14 &&
		     !memcmp(buf, "CONTENT of ro\n", 14);
		if (fd >= 0)
			close(fd);
		check(ok && cnt("d/ro", FUSE_OPEN) == 0 &&
		      cnt("d/ro", FUSE_READ) == 0 &&
		      cnt("d/ro", FUSE_WRITE) == 1,
		      "d/ro (READ without WRITE): the write reached the server, the read did not: OPEN %u, READ %u, WRITE %u",
		      cnt("d/ro", FUSE_OPEN), cnt("d/ro", FUSE_READ),
		      cnt("d/ro", FUSE_WRITE));
		before = cnt("d/sub/g", FUSE_OPEN);
		open_read("d/sub/g", "content of g\n");
		check(cnt("d/sub/g", FUSE_OPEN) == before &&
		      cnt("d/sub/g", FUSE_READ) == 0,
		      "d/sub/g below a directory without READDIR: OPEN %u, READ %u at the server",
		      cnt("d/sub/g", FUSE_OPEN), cnt("d/sub/g", FUSE_READ));
	}

	/* --- SETATTR left out of the mask, and passed through */
	ok = chmod(m("d/f1"), 0640) == 0 && stat(s("d/f1"), &bst) == 0 &&
	     (bst.st_mode & 07777) == 0640 && stat(m("d/f1"), &st) == 0 &&
	     (st.st_mode & 07777) == 0640;
	check(ok && cnt("d/f1", FUSE_SETATTR) > 0,
	      "chmod d/f1 (SETATTR not in its mask) reached the server: SETATTR %u",
	      cnt("d/f1", FUSE_SETATTR));
	if (supported(OP(SETATTR), "SETATTR")) {
		struct timespec ts[2] = { { 1000000, 0 }, { 2000000, 5 } };
		pid_t pid;
		int status;

		ok = chmod(m("d/setf"), 0600) == 0 &&
		     truncate(m("d/setf"), 3) == 0 &&
		     utimensat(AT_FDCWD, m("d/setf"), ts, 0) == 0 &&
		     stat(s("d/setf"), &bst) == 0 &&
		     (bst.st_mode & 07777) == 0600 && bst.st_size == 3 &&
		     bst.st_mtim.tv_sec == 2000000 &&
		     bst.st_mtim.tv_nsec == 5 &&
		     stat(m("d/setf"), &st) == 0 && same_stat(&st, &bst);
		check(ok && cnt("d/setf", FUSE_SETATTR) == 0,
		      "chmod/truncate/utimensat d/setf change the backing file, SETATTR at the server: %u",
		      cnt("d/setf", FUSE_SETATTR));
		fd = open(m("d/setf"), O_WRONLY | O_TRUNC);
		ok = fd >= 0 && fstat(fd, &st) == 0 && st.st_size == 0 &&
		     stat(s("d/setf"), &bst) == 0 && bst.st_size == 0;
		if (fd >= 0)
			close(fd);
		check(ok && cnt("d/setf", FUSE_SETATTR) == 0 &&
		      cnt("d/setf", FUSE_OPEN) == 0,
		      "open(O_TRUNC) d/setf truncates the backing file: SETATTR %u, OPEN %u at the server",
		      cnt("d/setf", FUSE_SETATTR), cnt("d/setf", FUSE_OPEN));
		e = as_uid(1234, m("d/setf"));
		check(e == EACCES, "uid 1234 may not open d/setf (mode 0600): %s",
		      strerror(e));
		pid = fork();
		if (pid == 0) {
			if (setresuid(1234, 1234, 1234))
				_exit(100);
			_exit(chmod(m("d/setf"), 0666) ? errno : 0);
		}
		waitpid(pid, &status, 0);
		e = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		ok = stat(s("d/setf"), &bst) == 0 &&
		     (bst.st_mode & 07777) == 0600;
		check(e == EPERM && ok,
		      "uid 1234 may not chmod d/setf, which it does not own: %s",
		      strerror(e));
	}

	/* --- a second, different backing file for an inode is refused */
	if (supported(OP(GETATTR), "a second backing file")) {
		int e1, e2, e3;

		e1 = stat(m("d/dup"), &st) ? errno : 0;
		e2 = stat(m("d/dup"), &st) ? errno : 0;
		e3 = stat(m("d/dup"), &st) ? errno : 0;
		check(e1 == 0 && e2 == EIO && e3 == 0 &&
		      sh->nodes[nid_of("d/dup")].dup_sent,
		      "a LOOKUP reply naming another backing file for d/dup fails: %s, then %s, then %s",
		      strerror(e1), strerror(e2), strerror(e3));
		e1 = stat(m("d/legacy"), &st) ? errno : 0;
		check(e1 == EIO,
		      "a LOOKUP reply naming a backing id registered with ops_mask 0 fails: %s",
		      strerror(e1));
	}

	check_permissions();
	check_locks();
	check_busy();
	check_atime();

	/* --- release: after FORGET the server can close its ids */
	check_release();
	e = nid_of("d/legacy");
	check(e > 0 && sh->nodes[e].forgotten,
	      "the refused LOOKUP of d/legacy was given back with a FORGET");

	check_abort();
}

/*
 * A cold walk of w (readdir, then lstat of every entry) reaches the server as
 * READDIRPLUS only: the backing files arrive with the entries, the attributes
 * come from them, and no entry is looked up or asked for its attributes.
 */
static void client_walk(void)
{
	unsigned int lookups, getattrs = 0, linked = 0, same = 0, names = 0;
	struct dirent *de;
	struct stat a, b;
	int i, bad = -1;
	ino_t bad_ino = 0;
	DIR *d;

	check(sh->kernel_offers_dirplus && sh->dirplus,
	      "kernel offers FUSE_PASSTHROUGH_DIRENTPLUS (offered %d, negotiated %d)",
	      sh->kernel_offers_dirplus, sh->dirplus);
	d = opendir(m("w"));
	if (!d) {
		check(0, "opendir w: %s", strerror(errno));
		return;
	}
	while ((de = readdir(d))) {
		char rel[64];

		if (de->d_name[0] == '.')
			continue;
		names++;
		snprintf(rel, sizeof(rel), "w/%.32s", de->d_name);
		if (!lstat(m(rel), &a) && !lstat(s(rel), &b) &&
		    same_stat(&a, &b) && a.st_ino == b.st_ino)
			same++;
	}
	closedir(d);
	if (!lstat(s("w/bad"), &b))
		bad_ino = b.st_ino;
	lookups = cnt("w", FUSE_LOOKUP);
	for (i = 2; i < MAXNODE; i++) {
		struct node *n = &sh->nodes[i];

		if (!n->used || n->pol < 0 ||
		    strcmp(policies[n->pol].path, "w/*"))
			continue;
		linked++;
		if (n->ino == bad_ino) {
			bad = i;
			continue;
		}
		getattrs += sh->count[i][FUSE_GETATTR] +
			    sh->count[i][FUSE_STATX];
	}
	check(names == 21 && same == names,
	      "cold walk of w: %u names, %u lstat equal to the source", names,
	      same);
	check(cnt("w", FUSE_READDIRPLUS) > 0 && lookups == 0 && getattrs == 0 &&
	      linked == names,
	      "cold walk of w: READDIRPLUS %u, LOOKUP %u, GETATTR/STATX %u of 20 entries with a backing id, %u entries linked",
	      cnt("w", FUSE_READDIRPLUS), lookups, getattrs, linked);
	check(bad > 0 && sh->count[bad][FUSE_GETATTR] > 0,
	      "entry with an invalid backing id (w/bad): linked without a backing file, GETATTR %u at the server",
	      bad > 0 ? sh->count[bad][FUSE_GETATTR] : 0);
}

/*
 * v passes READDIR through.  A listing that does not look names up (find)
 * is served from the backing directory: no READDIR, READDIRPLUS or LOOKUP.
 * A listing that lstats each name (ls -l) looks up the first batch's names,
 * then goes on with READDIRPLUS, whose entries come with their backing ids.
 */
static void client_walk_dir(void)
{
	unsigned int names = 0, same = 0, linked = 0, getattrs = 0;
	unsigned int plus, lookups;
	struct dirent *de;
	struct stat a, b;
	int i;
	DIR *d;

	d = opendir(m("v"));
	if (!d) {
		check(0, "opendir v: %s", strerror(errno));
		return;
	}
	while ((de = readdir(d)))
		names += de->d_name[0] != '.';
	check(names == 40 && cnt("v", FUSE_READDIR) == 0 &&
	      cnt("v", FUSE_READDIRPLUS) == 0 && cnt("v", FUSE_LOOKUP) == 0,
	      "listing v without lookups: %u names, READDIR %u, READDIRPLUS %u, LOOKUP %u",
	      names, cnt("v", FUSE_READDIR), cnt("v", FUSE_READDIRPLUS),
	      cnt("v", FUSE_LOOKUP));

	rewinddir(d);
	names = 0;
	while ((de = readdir(d))) {
		char rel[64];

		if (de->d_name[0] == '.')
			continue;
		names++;
		snprintf(rel, sizeof(rel), "v/%.32s", de->d_name);
		if (!lstat(m(rel), &a) && !lstat(s(rel), &b) &&
		    same_stat(&a, &b) && a.st_ino == b.st_ino)
			same++;
	}
	closedir(d);
	plus = cnt("v", FUSE_READDIRPLUS);
	lookups = cnt("v", FUSE_LOOKUP);
	for (i = 2; i < MAXNODE; i++) {
		struct node *n = &sh->nodes[i];

		if (!n->used || n->pol < 0 ||
		    strcmp(policies[n->pol].path, "v/*"))
			continue;
		linked++;
		getattrs += sh->count[i][FUSE_GETATTR] +
			    sh->count[i][FUSE_STATX];
	}
	check(names == 40 && same == names,
	      "listing v with lstat: %u names, %u lstat equal to the source",
	      names, same);
	check(plus > 0 && lookups > 0 && lookups <= 6 && linked == names &&
	      getattrs == 0,
	      "listing v with lstat: LOOKUP %u (at most 6), then READDIRPLUS %u; %u entries linked, GETATTR/STATX %u",
	      lookups, plus, linked, getattrs);
	check(cnt("v", FUSE_READDIR) == 0,
	      "listing v never sends READDIR (%u)", cnt("v", FUSE_READDIR));

	/* warm: the entries are cached, v is listed from its backing dir */
	d = opendir(m("v"));
	names = 0;
	while (d && (de = readdir(d))) {
		char rel[64];

		if (de->d_name[0] == '.')
			continue;
		snprintf(rel, sizeof(rel), "v/%.32s", de->d_name);
		names += !lstat(m(rel), &a);
	}
	if (d)
		closedir(d);
	check(names == 40 && cnt("v", FUSE_READDIRPLUS) == plus &&
	      cnt("v", FUSE_LOOKUP) == lookups,
	      "listing v with lstat again (warm): %u names, READDIRPLUS %u, LOOKUP %u more",
	      names, cnt("v", FUSE_READDIRPLUS) - plus,
	      cnt("v", FUSE_LOOKUP) - lookups);
}

/* Lists DIR whole, then lstats each name; the names equal to the source */
static unsigned int list_then_stat(const char *dir)
{
	char names[32][32], rel[80];
	unsigned int n = 0, i, same = 0;
	struct dirent *de;
	struct stat a, b;
	DIR *d = opendir(m(dir));

	if (!d)
		return 0;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.' && n < 32)
			snprintf(names[n++], sizeof(names[0]), "%.31s",
				 de->d_name);
	closedir(d);
	for (i = 0; i < n; i++) {
		snprintf(rel, sizeof(rel), "%.8s/%.31s", dir, names[i]);
		if (!lstat(m(rel), &a) && !lstat(s(rel), &b) &&
		    same_stat(&a, &b) && a.st_ino == b.st_ino)
			same++;
	}
	return same == n ? n : 0;
}

/*
 * A walk that lists a whole directory before it looks any name up gets
 * no READDIRPLUS for it (LOOKUP per name), but the files it looked up mark
 * the parent: the next sibling directory is listed with READDIRPLUS.
 */
static void client_walk_siblings(void)
{
	unsigned int n1, n2;

	n1 = list_then_stat("x/a");
	n2 = list_then_stat("x/b");
	check(n1 == 20 && n2 == 20,
	      "x/a, x/b listed whole, then lstat of each: %u and %u names equal to the source",
	      n1, n2);
	check(cnt("x/a", FUSE_LOOKUP) == 20 &&
	      cnt("x/a", FUSE_READDIRPLUS) == 0,
	      "x/a (the first directory of such a walk): LOOKUP %u, READDIRPLUS %u",
	      cnt("x/a", FUSE_LOOKUP), cnt("x/a", FUSE_READDIRPLUS));
	check(cnt("x/b", FUSE_LOOKUP) == 0 && cnt("x/b", FUSE_READDIRPLUS) > 0,
	      "x/b (its sibling, listed next): LOOKUP %u, READDIRPLUS %u",
	      cnt("x/b", FUSE_LOOKUP), cnt("x/b", FUSE_READDIRPLUS));
}

static void put(const char *rel, const char *content);
static void remove_tree(const char *dir);

/* The server's node for the backing inode of REL, or -1 */
static int nid_of_src(const char *rel)
{
	struct stat st;
	int i;

	if (lstat(s(rel), &st))
		return -1;
	for (i = 2; i < MAXNODE; i++)
		if (sh->nodes[i].used && !sh->nodes[i].forgotten &&
		    sh->nodes[i].ino == st.st_ino)
			return i;
	return -1;
}

static unsigned int server_nodes_below(const char *pol)
{
	unsigned int i, n = 0;

	for (i = 2; i < MAXNODE; i++)
		if (sh->nodes[i].used && sh->nodes[i].pol >= 0 &&
		    !strcmp(policies[sh->nodes[i].pol].path, pol))
			n++;
	return n;
}

/* lstat every entry of DIR (and of its subdirectories) via the mount */
static unsigned int stat_walk(const char *dir, unsigned int *same)
{
	unsigned int names = 0;
	struct dirent *de;
	struct stat a, b;
	char rel[128];
	DIR *d = opendir(m(dir));

	while (d && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		names++;
		snprintf(rel, sizeof(rel), "%.60s/%.60s", dir, de->d_name);
		if (!lstat(m(rel), &a) && !lstat(s(rel), &b) &&
		    same_stat(&a, &b) && a.st_ino == b.st_ino)
			(*same)++;
		if (de->d_type == DT_DIR)
			names += stat_walk(rel, same);
	}
	if (d)
		closedir(d);
	return names;
}

static int wait_forgotten(int nid)
{
	int i;

	for (i = 0; i < 300 && !sh->nodes[nid].forgotten; i++)
		usleep(10000);
	return sh->nodes[nid].forgotten;
}

/*
 * Patch 0015: l and e have LOOKUP in their masks.  The kernel resolves
 * their names in the backing directory: no LOOKUP per entry at the server,
 * which only hears of an entry when an operation outside the mask needs it.
 */
static void client_lookup(void)
{
	unsigned int names, same = 0, lookups, nodes;
	char buf[64];
	struct stat a, b;
	int nid, sub, fd1, fd2, ok, e1, e2;
	ssize_t r;

	check(sh->supported & OP(LOOKUP),
	      "BACKING_OPEN accepts LOOKUP in the mask of a directory");

	/* a cold stat walk of l: readdir, lstat of every entry, recursively */
	names = stat_walk("l", &same);
	lookups = cnt("l", FUSE_LOOKUP);
	check(names == 28 && same == names,
	      "lookup_walk: %u names below l, %u lstat equal to the source",
	      names, same);
	check(lookups == 1 && server_nodes_below("l/*") == 1 &&
	      cnt("l", FUSE_READDIR) == 0 && cnt("l", FUSE_READDIRPLUS) == 0,
	      "lookup_walk: the server got LOOKUP %u in l (the symlink only), knows %u entries below l, READDIR %u, READDIRPLUS %u",
	      lookups, server_nodes_below("l/*"), cnt("l", FUSE_READDIR),
	      cnt("l", FUSE_READDIRPLUS));
	check(!lstat(m("l/link"), &a) && S_ISLNK(a.st_mode) &&
	      nid_of_src("l/link") > 0,
	      "lookup_symlink_falls_back: l/link is a symlink, looked up at the server");

	/* hard links share one fuse inode: their flocks conflict */
	fd1 = open(m("l/f00"), O_RDONLY);
	fd2 = open(m("l/hl"), O_RDONLY);
	ok = fd1 >= 0 && fd2 >= 0 && !flock(fd1, LOCK_EX) &&
	     flock(fd2, LOCK_EX | LOCK_NB) && errno == EWOULDBLOCK;
	check(ok && !fstat(fd1, &a) && !fstat(fd2, &b) &&
	      a.st_ino == b.st_ino && a.st_nlink == 2,
	      "lookup_hardlink: l/f00 and l/hl are one inode (flock conflict, st_ino, nlink 2)");
	if (fd1 >= 0)
		close(fd1);
	if (fd2 >= 0)
		close(fd2);

	/* an op outside the mask: one LOOKUP resolves the inode first */
	lookups = cnt("l", FUSE_LOOKUP);
	r = getxattr(m("l/f01"), "user.pt", buf, sizeof(buf));
	nid = nid_of_src("l/f01");
	check(r == 6 && !memcmp(buf, "file1", 6) && nid > 0 &&
	      cnt("l", FUSE_LOOKUP) == lookups + 1 &&
	      sh->count[nid][FUSE_GETXATTR] == 1,
	      "lookup_resolve: getxattr of l/f01 (not in the mask) sent LOOKUP %u, then GETXATTR %u with the server's nodeid",
	      cnt("l", FUSE_LOOKUP) - lookups,
	      nid > 0 ? sh->count[nid][FUSE_GETXATTR] : 0);
	r = getxattr(m("l/f01"), "user.pt", buf, sizeof(buf));
	check(r == 6 && cnt("l", FUSE_LOOKUP) == lookups + 1 && nid > 0 &&
	      sh->count[nid][FUSE_GETXATTR] == 2,
	      "lookup_resolve: a second getxattr sends no LOOKUP (%u more)",
	      cnt("l", FUSE_LOOKUP) - lookups - 1);

	/* two levels: l/sub, then l/sub/g0, each looked up once */
	lookups = cnt("l", FUSE_LOOKUP);
	r = getxattr(m("l/sub/g0"), "user.pt", buf, sizeof(buf));
	sub = nid_of_src("l/sub");
	nid = nid_of_src("l/sub/g0");
	check(r == 3 && sub > 0 && nid > 0 &&
	      cnt("l", FUSE_LOOKUP) == lookups + 1 &&
	      sh->count[sub][FUSE_LOOKUP] == 1 &&
	      sh->count[nid][FUSE_GETXATTR] == 1,
	      "lookup_resolve_parent: getxattr of l/sub/g0 looked up l/sub (%u) and g0 (%u), from the top",
	      cnt("l", FUSE_LOOKUP) - lookups,
	      sub > 0 ? sh->count[sub][FUSE_LOOKUP] : 0);

	/* eviction: FORGET for the resolved inodes only */
	nid = nid_of_src("l/f01");
	nodes = server_nodes_below("l/*");
	sync();
	fd1 = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd1 < 0 || write(fd1, "2", 1) != 1)
		check(0, "drop_caches: %s", strerror(errno));
	if (fd1 >= 0)
		close(fd1);
	check(nid > 0 && wait_forgotten(nid) && nodes == 4,
	      "lookup_forget: l/f01 forgotten by the server after eviction (%u entries below l known to it: link, f01, sub, sub/g0)",
	      nodes);

	/* e's entries expire with e's (one second): the backing is seen */
	e1 = lstat(m("e/new"), &a) ? errno : 0;
	put("e/new", "new\n");
	usleep(1300000);
	e2 = lstat(m("e/new"), &a) ? errno : 0;
	check(e1 == ENOENT && e2 == 0 && S_ISREG(a.st_mode),
	      "lookup_expiry: e/new created in the source behind the mount: %s before, %s after the entry expired",
	      strerror(e1), strerror(e2));
	unlink(s("e/new"));
	usleep(1300000);
	e2 = lstat(m("e/new"), &a) ? errno : 0;
	check(e2 == ENOENT && cnt("e", FUSE_LOOKUP) == 0,
	      "lookup_expiry: e/new removed behind the mount: %s after expiry; LOOKUP %u in e at the server",
	      strerror(e2), cnt("e", FUSE_LOOKUP));

	check(__atomic_load_n(&sh->kernel_nodeids, __ATOMIC_SEQ_CST) == 0,
	      "no request or FORGET named a kernel nodeid (%u)",
	      sh->kernel_nodeids);

	/* after an abort nothing is looked up in the backing directory */
	if (stat(mntdir, &a) || stat(m("l"), &a))
		return;
	{
		char path[128];
		int fd;

		mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, NULL);
		snprintf(path, sizeof(path),
			 "/sys/fs/fuse/connections/%u/abort", minor(a.st_dev));
		fd = open(path, O_WRONLY);
		if (fd < 0 || write(fd, "1", 1) != 1) {
			check(0, "abort the connection: %s", strerror(errno));
			return;
		}
		close(fd);
	}
	e1 = lstat(m("l/f19"), &a) ? errno : 0;
	e2 = lstat(m("l/f18"), &a) ? errno : 0;
	check(e1 == ENOTCONN && e2 == ENOTCONN,
	      "lookup_abort: after an abort lstat of l/f19 (looked up before): %s, of l/f18: %s",
	      strerror(e1), strerror(e2));
}

/*
 * nodp mode: a connection without default_permissions, where the kernel still
 * checks the inodes with a backing file itself (patch 0006) and the server
 * carries out what the kernel allowed.  may_delete() reads the sticky bit in
 * the directory's i_mode after its permission check, which copies the
 * backing mode in; an attribute update must not strip it in between.
 */

/* is the connection mounted without default_permissions? */
static int mounted_without_default_permissions(void)
{
	char line[1024], want[300];
	FILE *f = fopen("/proc/self/mounts", "r");
	int found = -1;

	if (!f)
		return -1;
	snprintf(want, sizeof(want), " %s fuse.ptino ", mntdir);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, want))
			found = !strstr(line, "default_permissions");
	fclose(f);
	return found;
}

/* uid @uid unlinks @path in a child; returns its errno (0 = success) */
static int unlink_as(uid_t uid, const char *path)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		if (setresgid(uid, uid, uid) || setresuid(uid, uid, uid))
			_exit(100);
		_exit(unlink(path) ? errno : 0);
	}
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 101;
}

/*
 * Uid 65534 tries @n times to unlink DIR/victim, a file of root's in the
 * sticky directory DIR (root's, 1777), while another process stats DIR in a
 * loop.  A removed victim is put back in the backing directory; the loop
 * ends early after @max_ok removals.  Counts in sh->race.
 */
static void unlink_race(const char *dir, unsigned int n, unsigned int max_ok)
{
	char path[600], c;
	int req[2], ack[2];
	pid_t st, un;
	unsigned int i;

	memset(&sh->race, 0, sizeof(sh->race));
	snprintf(path, sizeof(path), "%s/victim", dir);
	st = fork();
	if (st == 0) {
		struct stat sb;

		while (!__atomic_load_n(&sh->race.stop, __ATOMIC_SEQ_CST)) {
			stat(dir, &sb);
			sh->race.stats++;
		}
		_exit(0);
	}
	/* after the fork of the stat loop, which must not hold req[1] */
	if (pipe(req) || pipe(ack))
		die("pipe");
	un = fork();
	if (un == 0) {
		close(req[0]);
		close(ack[1]);
		if (setresgid(65534, 65534, 65534) ||
		    setresuid(65534, 65534, 65534))
			_exit(100);
		for (i = 0; i < n && sh->race.ok < max_ok; i++) {
			sh->race.attempts++;
			if (!unlink(path)) {
				sh->race.ok++;
				/* root puts it back */
				if (write(req[1], "u", 1) != 1 ||
				    read(ack[0], &c, 1) != 1)
					_exit(101);
			} else if (errno == EPERM) {
				sh->race.eperm++;
			} else {
				sh->race.other++;
				sh->race.other_errno = errno;
			}
		}
		_exit(0);
	}
	close(req[1]);
	close(ack[0]);
	while (read(req[0], &c, 1) == 1) {
		put("k/t/victim", "victim\n");
		if (write(ack[1], "p", 1) != 1)
			break;
	}
	close(req[0]);
	close(ack[1]);
	waitpid(un, NULL, 0);
	__atomic_store_n(&sh->race.stop, 1, __ATOMIC_SEQ_CST);
	waitpid(st, NULL, 0);
}

/*
 * Overlayfs with @lower as its lower layer copies the mode of the lower
 * inode of t into its own inode when it looks t up, and checks the sticky
 * bit there: whatever the fuse inode's i_mode holds after a stat (with
 * @prestat) is what the overlay enforces.  Returns the errno of uid 65534's
 * unlink of @dir/victim through the overlay, or -errno of the mount.
 */
static int overlay_unlink(const char *lower, const char *tag, const char *dir,
			  int prestat)
{
	char base[300], up[320], wk[320], mnt[320], opts[1200], path[400];
	struct stat st;
	int e;

	snprintf(base, sizeof(base), "%s/../ovl-%s", srcdir, tag);
	snprintf(up, sizeof(up), "%s/up", base);
	snprintf(wk, sizeof(wk), "%s/work", base);
	snprintf(mnt, sizeof(mnt), "%s/mnt", base);
	remove_tree(base);
	if (mkdir(base, 0755) || mkdir(up, 0755) || mkdir(wk, 0755) ||
	    mkdir(mnt, 0755))
		die("mkdir %s", base);
	snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s",
		 lower, up, wk);
	/* the fuse inode of t as a stat leaves it */
	snprintf(path, sizeof(path), "k/%s", dir);
	if (prestat)
		stat(m(path), &st);
	if (mount("overlay", mnt, "overlay", 0, opts)) {
		e = -errno;
		remove_tree(base);
		return e;
	}
	snprintf(path, sizeof(path), "%s/%s", mnt, dir);
	stat(path, &st);
	snprintf(path, sizeof(path), "%s/%s/victim", mnt, dir);
	e = unlink_as(65534, path);
	if (umount2(mnt, 0) && umount2(mnt, MNT_DETACH))
		fprintf(stderr, "ptino_test: umount %s: %s\n", mnt,
			strerror(errno));
	remove_tree(base);
	return e;
}

static void client_nodp(void)
{
	struct stat st;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int e, e2, nid;

	check(sh->kernel_offers_ino, "kernel offers FUSE_PASSTHROUGH_OPS");
	if (!sh->kernel_offers_ino)
		return;
	check(mounted_without_default_permissions() == 1,
	      "the connection is mounted without default_permissions (/proc/self/mounts)");
	e = stat(m("k/t"), &st) ? errno : 0;
	check(!e && (st.st_mode & 07777) == 01777 && st.st_uid == 0 &&
	      cnt("k/t", FUSE_GETATTR) == 0,
	      "stat k/t: %s, mode %o uid %u, GETATTR at the server %u",
	      strerror(e), st.st_mode & 07777, st.st_uid,
	      cnt("k/t", FUSE_GETATTR));

	/* deterministic: overlayfs copies the fuse inode's mode at lookup */
	e = overlay_unlink(s("k"), "native", "t", 1);
	e2 = overlay_unlink(m("k"), "fuse", "t", 1);
	check(e == EPERM && e2 == EPERM,
	      "sticky_overlay: uid 65534 unlinks root's t/victim through an overlay on the backing k: %s, on the fuse k after a stat of k/t: %s",
	      e < 0 ? strerror(-e) : strerror(e),
	      e2 < 0 ? strerror(-e2) : strerror(e2));

	/*
	 * u gets its backing file at its second LOOKUP, the revalidation of
	 * the overlay's lookup, after its first attributes were set without
	 * one: the sticky bit stripped then must be back when the overlay
	 * copies the mode.
	 */
	e = stat(m("k/u"), &st) ? errno : 0;
	nid = nid_of("k/u");
	check(!e && (st.st_mode & 07777) == 01777 && nid > 0 &&
	      sh->nodes[nid].nlookup == 1 && !sh->nodes[nid].backing_id &&
	      cnt("k/u", FUSE_GETATTR) == 1,
	      "stat k/u (first LOOKUP without a backing file): %s, mode %o, %llu LOOKUPs, GETATTR %u at the server",
	      strerror(e), st.st_mode & 07777,
	      nid > 0 ? (unsigned long long)sh->nodes[nid].nlookup : 0ULL,
	      cnt("k/u", FUSE_GETATTR));
	e = overlay_unlink(m("k"), "late", "u", 0);
	check(e == EPERM && nid > 0 && sh->nodes[nid].nlookup >= 2 &&
	      sh->nodes[nid].backing_id && cnt("k/u", FUSE_GETATTR) == 1,
	      "sticky_late_attach: uid 65534 unlinks root's u/victim through an overlay on the fuse k, u attached at the overlay's lookup: %s (%llu LOOKUPs, GETATTR %u at the server)",
	      e < 0 ? strerror(-e) : strerror(e),
	      nid > 0 ? (unsigned long long)sh->nodes[nid].nlookup : 0ULL,
	      cnt("k/u", FUSE_GETATTR));

	/* natively, and then through the mount */
	unlink_race(s("k/t"), 2000, 10);
	check(sh->race.attempts == 2000 && sh->race.eperm == 2000,
	      "sticky_race_native: uid 65534 unlinks root's k/t/victim in the backing k/t, 1777, while root stats k/t: %u attempts, %u EPERM, %u removed, %u other errors (%s), %u stats",
	      sh->race.attempts, sh->race.eperm, sh->race.ok, sh->race.other,
	      strerror(sh->race.other_errno), sh->race.stats);
	unlink_race(m("k/t"), 20000, 10);
	printf("INFO: %ld CPU(s) online%s\n", cpus,
	       cpus > 1 ? "" : ": the stat cannot run between may_delete()'s permission and sticky checks (no preemption there)");
	check(sh->race.attempts == 20000 && sh->race.eperm == 20000,
	      "sticky_race: uid 65534 unlinks root's k/t/victim through the mount while root stats k/t: %u attempts, %u EPERM, %u removed, %u other errors (%s), %u stats",
	      sh->race.attempts, sh->race.eperm, sh->race.ok, sh->race.other,
	      strerror(sh->race.other_errno), sh->race.stats);
}

/*
 * stress mode: processes pinned to every CPU race on the passthrough files
 * of s (looked up by the server, READDIR passed through) and q (looked up
 * by the kernel, patch 0015).  Readers stat, open, read and getxattr
 * n0..n7 and fixed (a getxattr in q reaches the server, translated); a
 * lister lists both directories and stats each entry; a mutator
 * unlinks, renames, writes, chmods and truncates n0..n7 through the mount
 * and re-creates missing names in the backing directory; a setattr worker
 * chmods and truncates fixed (which only it changes) and checks each
 * change in a stat, an fstat and the backing file; a dropper drops the
 * dentry and inode caches, so inodes are forgotten and their backing
 * files attached again.  The native results are the reference: ENOENT is
 * the only error a name can give (and ESTALE for a translated request in
 * q, counted), every mode is 644 or 600, every size 9 or 4096, every
 * content "stressNN\n", no user.stress xattr.
 */
#define NNAMES 8
static const char *const stress_dirs[] = { "s", "q" };

static void stress_bump(unsigned long *c)
{
	__atomic_add_fetch(c, 1, __ATOMIC_RELAXED);
}

static int stress_stopped(void)
{
	return __atomic_load_n(&sh->st.stop, __ATOMIC_SEQ_CST);
}

/* counts a failure and keeps the first messages */
static void stress_bad(unsigned long *c, const char *fmt, ...)
{
	va_list ap;
	int i;

	stress_bump(c);
	i = __atomic_fetch_add(&sh->st.nmsg, 1, __ATOMIC_SEQ_CST);
	if (i >= 8)
		return;
	va_start(ap, fmt);
	vsnprintf(sh->st.msg[i], sizeof(sh->st.msg[i]), fmt, ap);
	va_end(ap);
}

static int stress_attr_ok(const struct stat *st)
{
	return S_ISREG(st->st_mode) &&
	       ((st->st_mode & 07777) == 0644 || (st->st_mode & 07777) == 0600) &&
	       st->st_uid == 0 && st->st_gid == 0 &&
	       (st->st_size == 9 || st->st_size == 4096) && st->st_nlink <= 1;
}

static void stress_check_attr(const char *what, const char *path,
			      const struct stat *st)
{
	if (!stress_attr_ok(st))
		stress_bad(&sh->st.bad_attr,
			   "%s %s: mode %o uid %u gid %u size %lld nlink %lu",
			   what, path, st->st_mode, st->st_uid, st->st_gid,
			   (long long)st->st_size, (unsigned long)st->st_nlink);
}

/* an error that the native filesystem gives too: a name that went away */
static void stress_errno(const char *what, const char *path, int e,
			 int may_vanish)
{
	if (e == ENOENT && may_vanish)
		return;
	stress_bad(&sh->st.bad_errno, "%s %s: %s", what, path, strerror(e));
}

static void stress_pin(int cpu)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(n > 0 ? cpu % n : 0, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static void stress_read_one(const char *path, int may_vanish)
{
	struct stat st;
	char buf[16];
	ssize_t r;
	int fd;

	if (stat(path, &st)) {
		stress_errno("stat", path, errno, may_vanish);
		return;
	}
	stress_bump(&sh->st.stats);
	stress_check_attr("stat", path, &st);
	fd = open(path, O_RDONLY);
	if (fd < 0) {
		stress_errno("open", path, errno, may_vanish);
		return;
	}
	r = pread(fd, buf, 9, 0);
	if (r < 0)
		stress_errno("read", path, errno, 0);
	else if (r != 9 || memcmp(buf, "stress", 6) || buf[6] < '0' ||
		 buf[6] > '9' || buf[7] < '0' || buf[7] > '9' || buf[8] != '\n')
		stress_bad(&sh->st.bad_content, "read %s: %zd bytes \"%.*s\"",
			   path, r, (int)(r > 0 ? r : 0), buf);
	else
		stress_bump(&sh->st.reads);
	if (fstat(fd, &st))
		stress_errno("fstat", path, errno, 0);
	else
		stress_check_attr("fstat", path, &st);
	close(fd);

	/*
	 * Not in q's mask: sent to the server, for an inode with a kernel
	 * nodeid after a LOOKUP of its name there, which fails with ESTALE
	 * (documented) when the name went to another inode meanwhile
	 */
	if (getxattr(path, "user.stress", buf, sizeof(buf)) >= 0)
		stress_bad(&sh->st.bad_content, "getxattr %s: found", path);
	else if (errno == ESTALE && may_vanish && path[strlen(mntdir) + 1] == 'q')
		stress_bump(&sh->st.estale);
	else if (errno != ENODATA)
		stress_errno("getxattr", path, errno, may_vanish);
	else
		stress_bump(&sh->st.getxattrs);
}

static void stress_reader(int cpu)
{
	char rel[32];
	size_t d;
	int k;

	stress_pin(cpu);
	while (!stress_stopped()) {
		for (d = 0; d < 2; d++) {
			for (k = 0; k < NNAMES; k++) {
				snprintf(rel, sizeof(rel), "%s/n%d",
					 stress_dirs[d], k);
				stress_read_one(m(rel), 1);
			}
			snprintf(rel, sizeof(rel), "%s/fixed", stress_dirs[d]);
			stress_read_one(m(rel), 0);
		}
	}
	_exit(0);
}

static void stress_lister(int cpu)
{
	struct dirent *de;
	struct stat st;
	size_t d;
	DIR *dir;
	int k;

	stress_pin(cpu);
	while (!stress_stopped()) {
		for (d = 0; d < 2; d++) {
			const char *path = m(stress_dirs[d]);

			dir = opendir(path);
			if (!dir) {
				stress_errno("opendir", path, errno, 0);
				continue;
			}
			while ((de = readdir(dir))) {
				if (!strcmp(de->d_name, ".") ||
				    !strcmp(de->d_name, ".."))
					continue;
				if (strcmp(de->d_name, "fixed") &&
				    (de->d_name[0] != 'n' ||
				     sscanf(de->d_name + 1, "%d", &k) != 1 ||
				     k < 0 || k >= NNAMES))
					stress_bad(&sh->st.bad_names,
						   "readdir %s: \"%s\"", path,
						   de->d_name);
				if (fstatat(dirfd(dir), de->d_name, &st,
					    AT_SYMLINK_NOFOLLOW))
					stress_errno("fstatat", de->d_name,
						     errno,
						     strcmp(de->d_name, "fixed"));
				else
					stress_check_attr("fstatat", de->d_name,
							  &st);
			}
			closedir(dir);
			stress_bump(&sh->st.lists);
		}
	}
	_exit(0);
}

/* puts back the missing names of DIR in the backing directory */
static void stress_refill(const char *dir)
{
	char rel[32], tmp[32], content[16];
	int k;

	for (k = 0; k < NNAMES; k++) {
		snprintf(rel, sizeof(rel), "%s/n%d", dir, k);
		if (!access(s(rel), F_OK))
			continue;
		snprintf(tmp, sizeof(tmp), "stmp/%s%d", dir, k);
		snprintf(content, sizeof(content), "stress%02d\n", k);
		put(tmp, content);
		if (syscall(SYS_renameat2, AT_FDCWD, s(tmp), AT_FDCWD, s(rel),
			    1 /* RENAME_NOREPLACE */)) {
			unlink(s(tmp));
			continue;
		}
		stress_bump(&sh->st.refills);
	}
}

static void stress_mutator(int cpu)
{
	unsigned int seed = 1;
	char a[32], b[32], content[16];
	const char *d;
	int fd, k;

	stress_pin(cpu);
	while (!stress_stopped()) {
		d = stress_dirs[rand_r(&seed) % 2];
		k = rand_r(&seed) % NNAMES;
		snprintf(a, sizeof(a), "%s/n%d", d, k);
		snprintf(b, sizeof(b), "%s/n%d", d,
			 (k + 1 + rand_r(&seed) % (NNAMES - 1)) % NNAMES);
		switch (rand_r(&seed) % 6) {
		case 0:
			if (unlink(m(a)))
				stress_errno("unlink", m(a), errno, 1);
			else
				stress_bump(&sh->st.unlinks);
			break;
		case 1:
			if (rename(m(a), m(b)))
				stress_errno("rename", m(a), errno, 1);
			else
				stress_bump(&sh->st.renames);
			break;
		case 2:
			fd = open(m(a), O_WRONLY);
			if (fd < 0) {
				stress_errno("open for writing", m(a), errno, 1);
				break;
			}
			snprintf(content, sizeof(content), "stress%02d\n", k);
			if (pwrite(fd, content, 9, 0) != 9)
				stress_errno("write", m(a), errno, 0);
			else
				stress_bump(&sh->st.writes);
			close(fd);
			break;
		case 3:
			if (chmod(m(a), rand_r(&seed) % 2 ? 0600 : 0644))
				stress_errno("chmod", m(a), errno, 1);
			else if (truncate(m(a), rand_r(&seed) % 2 ? 9 : 4096))
				stress_errno("truncate", m(a), errno, 1);
			else
				stress_bump(&sh->st.chmods);
			break;
		default:
			stress_refill(d);
			break;
		}
	}
	_exit(0);
}

/* fixed is changed by this worker only: every change must show at once */
static void stress_setattr(int cpu)
{
	struct stat st, bst, fst;
	char rel[32];
	unsigned int i = 0;
	mode_t mode;
	off_t size;
	size_t d;
	int fd;

	stress_pin(cpu);
	while (!stress_stopped()) {
		for (d = 0; d < 2; d++, i++) {
			snprintf(rel, sizeof(rel), "%s/fixed", stress_dirs[d]);
			mode = i % 4 < 2 ? 0600 : 0644;
			size = i % 3 ? 4096 : 9;
			if (chmod(m(rel), mode) || truncate(m(rel), size)) {
				stress_errno("setattr", m(rel), errno, 0);
				continue;
			}
			fd = open(m(rel), O_RDONLY);
			if (fd < 0 || stat(m(rel), &st) || fstat(fd, &fst) ||
			    stat(s(rel), &bst)) {
				stress_errno("stat after setattr", m(rel),
					     errno, 0);
				if (fd >= 0)
					close(fd);
				continue;
			}
			close(fd);
			if ((st.st_mode & 07777) != mode || st.st_size != size ||
			    (fst.st_mode & 07777) != mode ||
			    fst.st_size != size ||
			    (bst.st_mode & 07777) != mode ||
			    bst.st_size != size)
				stress_bad(&sh->st.bad_setattr,
					   "%s: set %o size %lld, stat %o %lld, fstat %o %lld, backing %o %lld",
					   rel, mode, (long long)size,
					   st.st_mode & 07777,
					   (long long)st.st_size,
					   fst.st_mode & 07777,
					   (long long)fst.st_size,
					   bst.st_mode & 07777,
					   (long long)bst.st_size);
			else
				stress_bump(&sh->st.setattrs);
		}
	}
	_exit(0);
}

static int drop_caches(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	int ok;

	if (fd < 0)
		return -1;
	ok = write(fd, "2", 1) == 1;
	close(fd);
	return ok ? 0 : -1;
}

static void stress_dropper(int cpu)
{
	stress_pin(cpu);
	while (!stress_stopped()) {
		if (!drop_caches())
			stress_bump(&sh->st.drops);
		usleep(20000);
	}
	_exit(0);
}

/* nodes the kernel still holds a lookup count of (the root's aside) */
static unsigned int stress_nodes_held(void)
{
	unsigned int i, held = 0;

	for (i = 2; i < MAXNODE; i++)
		if (sh->nodes[i].used && !sh->nodes[i].forgotten)
			held++;
	return held;
}

/* requests the server got for the nodes of policy @path */
static unsigned int pcnt(const char *path, int op)
{
	size_t i;

	for (i = 0; i < NPOL; i++)
		if (!strcmp(policies[i].path, path))
			return __atomic_load_n(&sh->pcount[i][op],
					       __ATOMIC_SEQ_CST);
	return 0;
}

static void client_stress(void)
{
	static void (*const workers[])(int) = {
		stress_reader, stress_reader, stress_lister, stress_mutator,
		stress_setattr, stress_dropper,
	};
	const char *env = getenv("PTINO_STRESS_SECONDS");
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned int secs = env ? strtoul(env, NULL, 10) : 20;
	pid_t pids[sizeof(workers) / sizeof(workers[0])];
	unsigned int i, held, opens_before;
	int status, crashed = 0;

	check(sh->kernel_offers_ino && sh->dirplus,
	      "kernel offers FUSE_PASSTHROUGH_OPS and FUSE_PASSTHROUGH_DIRENTPLUS");
	if (!sh->kernel_offers_ino)
		return;
	printf("INFO: %ld CPU(s) online, %zu workers for %u s\n", cpus,
	       sizeof(workers) / sizeof(workers[0]), secs);
	opens_before = sh->bk_open;
	for (i = 0; i < sizeof(workers) / sizeof(workers[0]); i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork");
		if (pids[i] == 0)
			workers[i](i);
	}
	sleep(secs);
	__atomic_store_n(&sh->st.stop, 1, __ATOMIC_SEQ_CST);
	for (i = 0; i < sizeof(workers) / sizeof(workers[0]); i++) {
		waitpid(pids[i], &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			crashed++;
	}
	for (i = 0; i < 8 && i < (unsigned int)sh->st.nmsg; i++)
		printf("INFO: failure %u: %s\n", i + 1, sh->st.msg[i]);
	/* what reached the server for the two directories' names */
	printf("INFO: at the server: in s %u LOOKUP, %u READDIR, %u READDIRPLUS, %u UNLINK, %u RENAME, for its files %u GETXATTR; in q %u LOOKUP, %u READDIR, %u READDIRPLUS, %u UNLINK, %u RENAME, for its files %u GETXATTR\n",
	       pcnt("s", FUSE_LOOKUP), pcnt("s", FUSE_READDIR),
	       pcnt("s", FUSE_READDIRPLUS), pcnt("s", FUSE_UNLINK),
	       pcnt("s", FUSE_RENAME) + pcnt("s", FUSE_RENAME2),
	       pcnt("s/*", FUSE_GETXATTR),
	       pcnt("q", FUSE_LOOKUP), pcnt("q", FUSE_READDIR),
	       pcnt("q", FUSE_READDIRPLUS), pcnt("q", FUSE_UNLINK),
	       pcnt("q", FUSE_RENAME) + pcnt("q", FUSE_RENAME2),
	       pcnt("q/*", FUSE_GETXATTR));
	check(!crashed, "stress workers exited normally: %d did not", crashed);
	check(sh->st.stats && sh->st.reads && sh->st.getxattrs &&
	      sh->st.lists && sh->st.unlinks &&
	      sh->st.renames && sh->st.refills && sh->st.writes &&
	      sh->st.chmods && sh->st.setattrs && sh->st.drops &&
	      sh->forgets && sh->bk_open - opens_before > 2 * 2 * NNAMES,
	      "stress_ran: %lu stats, %lu reads, %lu getxattrs (%lu ESTALE in q), %lu listings, %lu unlinks, %lu renames, %lu re-creations, %lu writes, %lu chmod+truncate, %lu checked setattrs, %lu cache drops; %u FORGETs, %u backing files registered",
	      sh->st.stats, sh->st.reads, sh->st.getxattrs, sh->st.estale,
	      sh->st.lists, sh->st.unlinks,
	      sh->st.renames, sh->st.refills, sh->st.writes, sh->st.chmods,
	      sh->st.setattrs, sh->st.drops, sh->forgets,
	      sh->bk_open - opens_before);
	check(!sh->st.bad_errno,
	      "stress_errors: no error but ENOENT for a name that can go away: %lu",
	      sh->st.bad_errno);
	check(!sh->st.bad_attr,
	      "stress_attrs: every stat a mode, owner, size and link count the files can have: %lu wrong",
	      sh->st.bad_attr);
	check(!sh->st.bad_content && !sh->st.bad_names,
	      "stress_content: reads and listings as in the backing directories: %lu wrong contents, %lu wrong names",
	      sh->st.bad_content, sh->st.bad_names);
	check(!sh->st.bad_setattr,
	      "stress_setattr: a chmod or truncate shows at once in stat, fstat and the backing file: %lu wrong",
	      sh->st.bad_setattr);
	check(!sh->kernel_nodeids,
	      "stress_nodeids: no request named a kernel nodeid: %u did",
	      sh->kernel_nodeids);

	/* nothing in use any more: every inode must go, and its backing */
	for (i = 0; i < 500 && (held = stress_nodes_held()); i++) {
		drop_caches();
		usleep(10000);
	}
	check(!held && !sh->close_fail && sh->bk_open == sh->bk_close,
	      "stress_forget: after dropping the caches %u nodes still looked up, %u backing ids not closed exactly once at FORGET, %u registered and %u closed",
	      held, sh->close_fail, sh->bk_open, sh->bk_close);
}

static void client(void)
{
	wait_for(&sh->init_done);
	/* the first access waits for INIT; the probe runs right after it */
	access(mntdir, F_OK);
	wait_for(&sh->probe_done);
	if (sh->stress_mode) {
		client_stress();
	} else if (sh->nodp_mode) {
		client_nodp();
	} else if (sh->lookup_mode) {
		client_lookup();
	} else if (sh->walk_mode) {
		client_walk();
		client_walk_dir();
		client_walk_siblings();
	} else if (sh->ino_mode) {
		client_ino();
	} else {
		client_plain();
		check_release();
	}
	printf("RESULT: %s mode: %d checks, %d failed, %d skipped\n",
	       sh->stress_mode ? "stress" :
	       sh->nodp_mode ? "nodp" : sh->lookup_mode ? "lookup" :
	       sh->walk_mode ? "walk" : sh->ino_mode ? "ino" :
	       sh->stock ? "stock" : "plain", checks,
	       failures, skips);
	fflush(stdout);
	exit(failures || (skips && !allow_missing) ? 1 : 0);
}

/* ------------------------------------------------------------------ setup */

static void put(const char *rel, const char *content)
{
	int fd = open(s(rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || write(fd, content, strlen(content)) < 0)
		die("create %s", rel);
	close(fd);
}

/* Files PREFIX0..PREFIX(N-1), numbers WIDTH digits wide at least */
static void put_numbered(const char *prefix, size_t n, int width,
			 const char *content)
{
	char rel[32];
	size_t i;

	for (i = 0; i < n; i++) {
		snprintf(rel, sizeof(rel), "%s%0*zu", prefix, width, i);
		put(rel, content);
	}
}

static void make_tree(void)
{
	/* system.posix_acl_access: owner rw, user 1234 r, group -, mask r */
	static const uint32_t acl[] = {
		2,			/* POSIX_ACL_XATTR_VERSION */
		0x01 | (6 << 16), 0xffffffff,	/* USER_OBJ rw- */
		0x02 | (4 << 16), 1234,		/* USER 1234 r-- */
		0x04 | (0 << 16), 0xffffffff,	/* GROUP_OBJ --- */
		0x10 | (4 << 16), 0xffffffff,	/* MASK r-- */
		0x20 | (0 << 16), 0xffffffff,	/* OTHER --- */
	};
	char buf[sizeof(acl)];
	size_t i, off = 4;

	if (mkdir(srcdir, 0755) && errno != EEXIST)
		die("mkdir %s", srcdir);
	mkdir(s("d"), 0755);
	mkdir(s("d/sub"), 0755);
	put("d/f1", "content of f1\n");
	put("d/f2", "content of f2\n");
	put("d/f3", "content of f3\n");
	put("d/f4", "content of f4\n");
	put("d/f5", "content of f5\n");
	put("d/ro", "content of ro\n");
	put("d/setf", "content of setf\n");
	put("d/acl", "content of acl\n");
	put("d/plain", "content of plain\n");
	put("d/dup", "content of dup\n");
	put("d/legacy", "content of legacy\n");
	put("d/sub/g", "content of g\n");
	put("d/pstale", "content of pstale\n");
	put("d/nacl", "content of nacl\n");
	put("d/xacl", "content of xacl\n");
	put("d/aclc", "content of aclc\n");
	put("d/lck", "content of lck\n");
	put("d/busy", "content of busy\n");
	put("d/atime", "content of atime\n");
	mkdir(s("w"), 0755);
	put_numbered("w/e", 20, 2, "walk\n");
	put("w/bad", "walk\n");
	mkdir(s("v"), 0755);
	put_numbered("v/f", 40, 2, "walk\n");
	mkdir(s("x"), 0755);
	mkdir(s("x/a"), 0755);
	mkdir(s("x/b"), 0755);
	for (i = 0; i < 20; i++) {
		char rel[16];

		snprintf(rel, sizeof(rel), "x/a/f%02zu", i);
		put(rel, "walk\n");
		snprintf(rel, sizeof(rel), "x/b/f%02zu", i);
		put(rel, "walk\n");
	}
	/* l: 20 files, a hard link, a symlink, sub with 5 files; e empty */
	mkdir(s("l"), 0755);
	mkdir(s("l/sub"), 0755);
	put_numbered("l/f", 20, 2, "look\n");
	put_numbered("l/sub/g", 5, 1, "look\n");
	if (link(s("l/f00"), s("l/hl")) || symlink("f00", s("l/link")))
		die("link/symlink in l");
	if (setxattr(s("l/f01"), "user.pt", "file1", 6, 0) ||
	    setxattr(s("l/sub/g0"), "user.pt", "g0", 3, 0))
		die("setxattr in l");
	mkdir(s("e"), 0755);
	if (sh->stress_mode) {
		mkdir(s("s"), 0755);
		mkdir(s("q"), 0755);
		mkdir(s("stmp"), 0755);
		put_numbered("s/n", NNAMES, 1, "stress00\n");
		put_numbered("q/n", NNAMES, 1, "stress00\n");
		put("s/fixed", "stress99\n");
		put("q/fixed", "stress99\n");
	}
	if (sh->nodp_mode) {
		mkdir(s("k"), 0755);
		mkdir(s("k/t"), 0755);
		chmod(s("k/t"), 01777);
		put("k/t/victim", "victim\n");
		mkdir(s("k/u"), 0755);
		chmod(s("k/u"), 01777);
		put("k/u/victim", "victim\n");
	}
	if (set_acl(s("d/aclc"), 4, 1234, 4))
		die("set ACL of d/aclc");
	chmod(s("d/aclc"), 0640);
	if (setxattr(s("d/f1"), "trusted.hidden", "h", 1, 0))
		die("setxattr trusted.hidden");
	if (setxattr(s("d"), "user.pt", "dir", 4, 0) ||
	    setxattr(s("d/f1"), "user.pt", "file1", 6, 0) ||
	    setxattr(s("d/f1"), "user.other", "x", 1, 0) ||
	    setxattr(s("d/f4"), "user.pt", "file4", 6, 0))
		die("setxattr (user xattrs needed on %s)", srcdir);
	/* struct posix_acl_xattr_entry: le16 tag, le16 perm, le32 id */
	memcpy(buf, acl, 4);
	for (i = 1; i < sizeof(acl) / 4; i += 2, off += 8) {
		uint16_t tag = acl[i] & 0xffff, perm = acl[i] >> 16;

		memcpy(buf + off, &tag, 2);
		memcpy(buf + off + 2, &perm, 2);
		memcpy(buf + off + 4, &acl[i + 1], 4);
	}
	chmod(s("d/acl"), 0600);
	if (setxattr(s("d/acl"), "system.posix_acl_access", buf, off, 0))
		die("set ACL (POSIX ACLs needed on %s)", srcdir);
	chmod(s("d/acl"), 0640);	/* group class = ACL mask r-- */
}

static void remove_tree(const char *dir)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd))
		fprintf(stderr, "ptino_test: cleanup of %s failed\n", dir);
}

int main(int argc, char **argv)
{
	const char *work = argc > 2 ? argv[2] : "/tmp/ptino";
	char opts[256];
	pid_t pid;
	int status, rootfd;

	if (argc < 2 || (strcmp(argv[1], "ino") && strcmp(argv[1], "plain") &&
			 strcmp(argv[1], "stock") && strcmp(argv[1], "walk") &&
			 strcmp(argv[1], "lookup") && strcmp(argv[1], "nodp") &&
			 strcmp(argv[1], "stress"))) {
		fprintf(stderr, "usage: %s ino|plain|stock|walk|lookup|nodp|stress [WORKDIR]\n",
			argv[0]);
		return 2;
	}
	allow_missing = getenv("PTINO_ALLOW_MISSING") != NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die("mmap");
	sh->walk_mode = !strcmp(argv[1], "walk");
	sh->lookup_mode = !strcmp(argv[1], "lookup");
	sh->nodp_mode = !strcmp(argv[1], "nodp");
	sh->stress_mode = !strcmp(argv[1], "stress");
	sh->ino_mode = !strcmp(argv[1], "ino") || sh->walk_mode ||
		       sh->lookup_mode || sh->nodp_mode || sh->stress_mode;
	sh->stock = !strcmp(argv[1], "stock");

	if (mkdir(work, 0755) && errno != EEXIST)
		die("mkdir %s", work);
	snprintf(srcdir, sizeof(srcdir), "%s/src-%s", work, argv[1]);
	snprintf(mntdir, sizeof(mntdir), "%s/mnt-%s", work, argv[1]);
	remove_tree(srcdir);
	/*
	 * stress mode: a tmpfs of its own, which cannot be unmounted at the
	 * end while the kernel still holds a backing file in it
	 */
	if (sh->stress_mode && (mkdir(srcdir, 0755) ||
				mount("tmpfs", srcdir, "tmpfs", 0, "mode=755")))
		die("tmpfs on %s", srcdir);
	make_tree();
	if (mkdir(mntdir, 0755) && errno != EEXIST)
		die("mkdir %s", mntdir);

	rootfd = open(srcdir, O_PATH | O_CLOEXEC);
	if (rootfd < 0)
		die("open %s", srcdir);
	sh->nodes[1].used = 1;
	sh->nodes[1].fd = rootfd;
	sh->nodes[1].pol = -1;
	sh->nodes[1].nlookup = 1;
	sh->nodes[1].ro_fd = -1;

	fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fuse_fd < 0)
		die("open /dev/fuse");
	snprintf(opts, sizeof(opts),
		 "fd=%d,rootmode=40755,user_id=0,group_id=0,allow_other",
		 fuse_fd);
	if (mount("ptino", mntdir, "fuse.ptino", MS_NOSUID | MS_NODEV, opts))
		die("mount %s", mntdir);

	{
		struct utsname u;

		uname(&u);
		printf("ptino_test %s mode on Linux %s\n", argv[1], u.release);
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(fuse_fd);
		client();
	}
	serve(pid);
	status = sh->client_status;

	if (umount2(mntdir, 0) && umount2(mntdir, MNT_DETACH))
		fprintf(stderr, "ptino_test: umount %s: %s\n", mntdir,
			strerror(errno));
	close(fuse_fd);
	rmdir(mntdir);
	if (sh->stress_mode) {
		int i, e = 0;

		for (i = 1; i < MAXNODE; i++) {
			if (sh->nodes[i].used)
				close(sh->nodes[i].fd);
			if (sh->nodes[i].used && sh->nodes[i].ro_fd >= 0)
				close(sh->nodes[i].ro_fd);
			sh->nodes[i].used = 0;
		}
		/* a file put last is released at once, a fput may be deferred */
		for (i = 0; i < 200; i++) {
			e = umount2(srcdir, 0) ? errno : 0;
			if (e != EBUSY)
				break;
			usleep(10000);
		}
		printf("%s: stress_leak: the backing tmpfs unmounts once the fuse mount is gone: %s\n",
		       e ? "FAIL" : "PASS", strerror(e));
		if (e) {
			status = 1;
			umount2(srcdir, MNT_DETACH);
		}
	}
	remove_tree(srcdir);
	if (sh->server_errors) {
		printf("FAIL: the server saw %d errors\n", sh->server_errors);
		status = 1;
	}
	return status;
}
