// SPDX-License-Identifier: Apache-2.0
/* An empty program on the tracepoint the file-read sensor counts reads on: what the hook itself costs
 * a reader (the kernel's dispatch to a program), the floor under any program there. bench/files.py. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tp_btf/mm_filemap_get_pages")
int empty_get_pages(void *ctx)
{
	return 0;
}
