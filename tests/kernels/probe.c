// SPDX-License-Identifier: Apache-2.0
/* ww-probe OBJECT: loads each program of a BPF object alone (the others' autoload off) and prints one
 * JSON line per program: whether this kernel's verifier accepted it and, if not, why, in the kernel's
 * and libbpf's own words. The loader stops at the first refusal; the kernel matrix wants every verdict.
 * Maps are created for each attempt and freed with it; nothing is attached. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <bpf/libbpf.h>

/* libbpf's messages for the current attempt; a verifier log can run to megabytes and its last lines
 * say why, so the tail is kept. */
#define KEEP (1 << 20)
static char msgs[KEEP + 1];
static size_t used;

static int on_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	va_list again;
	va_copy(again, ap);
	int need = vsnprintf(NULL, 0, fmt, again);
	va_end(again);
	if (need <= 0)
		return 0;
	char *text = malloc((size_t)need + 1);
	if (!text)
		return 0;
	vsnprintf(text, (size_t)need + 1, fmt, ap);
	const char *from = text;
	size_t n = (size_t)need;
	if (n > KEEP) {
		from += n - KEEP;
		n = KEEP;
	}
	if (used + n > KEEP) { /* drop the oldest */
		size_t drop = used + n - KEEP;
		memmove(msgs, msgs + drop, used - drop);
		used -= drop;
	}
	memcpy(msgs + used, from, n);
	used += n;
	msgs[used] = 0;
	free(text);
	return 0;
}

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\t')
			fputs("\\t", stdout);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: ww-probe OBJECT.bpf.o\n");
		return 2;
	}
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
	setrlimit(RLIMIT_MEMLOCK, &unlimited); /* kernels before 5.11 charge maps to memlock */
	libbpf_set_print(on_log);
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		fprintf(stderr, "ww-probe: opening %s: %s\n%s", argv[1], strerror(errno), msgs);
		return 1;
	}
	int n = 0;
	struct bpf_program *p;
	bpf_object__for_each_program(p, obj) n++;
	bpf_object__close(obj);
	int refused = 0;
	for (int i = 0; i < n; i++) {
		msgs[0] = 0;
		used = 0;
		obj = bpf_object__open_file(argv[1], NULL);
		if (!obj) {
			fprintf(stderr, "ww-probe: opening %s: %s\n", argv[1], strerror(errno));
			return 1;
		}
		int j = 0;
		struct bpf_program *mine = NULL;
		bpf_object__for_each_program(p, obj) {
			bpf_program__set_autoload(p, j == i);
			if (j++ == i)
				mine = p;
		}
		int err = bpf_object__load(obj);
		printf("{\"program\":");
		json_string(bpf_program__name(mine));
		printf(",\"section\":");
		json_string(bpf_program__section_name(mine));
		printf(",\"loaded\":%s,\"error\":", err ? "false" : "true");
		json_string(err ? strerror(-err) : "");
		printf(",\"log\":");
		json_string(err ? msgs : "");
		printf("}\n");
		fflush(stdout);
		refused += err != 0;
		bpf_object__close(obj);
	}
	return refused ? 3 : 0;
}
