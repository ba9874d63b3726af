/* What both sensors' loaders (attribution/ebpf/bpf/loader.c, files/ebpf/bpf/loader.c) share: frames on
 * stdout, which weightwarden/agent/ebpf/process.py reads (a __u32 type and length, then the payload;
 * types 1 and 2 are READY and ERROR for both, the rest each sensor's own), a fatal error said as an
 * ERROR frame, and libbpf's messages kept for the refusal the agent reports. Included by each loader.c
 * (build-sensor.sh puts this folder on the include path). */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/libbpf.h>
#include <linux/types.h>

enum { T_READY = 1, T_ERROR = 2 };

static int out_fd = 1;

static void write_all(const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(out_fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			exit(0); /* the agent is gone: exit (the kernel detaches all but pinned links) */
		p += n;
		len -= (size_t)n;
	}
}

static void frame(__u32 type, const void *payload, __u32 len)
{
	__u32 hdr[2] = { type, len };
	write_all(hdr, sizeof(hdr));
	if (len)
		write_all(payload, len);
}

static void fail(const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	frame(T_ERROR, buf, n < 0 ? 0 : (__u32)(n < (int)sizeof(buf) ? n : (int)sizeof(buf) - 1));
	exit(1);
}

/* libbpf's messages (not its debug ones): the verifier's words for a program it refused. */
static char libbpf_msgs[1 << 18];

static int on_libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	size_t used = strlen(libbpf_msgs);
	if (used > sizeof(libbpf_msgs) * 3 / 4) { /* keep the tail: the refusal is at the end */
		size_t keep = sizeof(libbpf_msgs) / 4;
		memmove(libbpf_msgs, libbpf_msgs + used - keep, keep);
		libbpf_msgs[keep] = 0;
		used = keep;
	}
	vsnprintf(libbpf_msgs + used, sizeof(libbpf_msgs) - used, fmt, ap);
	return 0;
}
