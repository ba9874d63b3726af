// SPDX-License-Identifier: Apache-2.0
/* Attach the empty program (argv[1]: its object), print "ready", hold it until stdin closes. */
#include <bpf/libbpf.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj))
		return 1;
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "empty_get_pages");
	if (!prog || !bpf_program__attach(prog))
		return 1;
	puts("ready");
	fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
