/* A packet-socket sender for the tests: hand-built Ethernet frames on AF_PACKET, optionally with
 * PACKET_QDISC_BYPASS (what an exfiltration past every qdisc, netfilter hook and cgroup program does).
 *   rawsend IFNAME FRAMES FRAME_BYTES BYPASS(0|1) [SOCK_DGRAM(0|1)]
 * Prints its pid, waits for a line on stdin, sends, prints "sent N" (bytes the kernel took). */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 5)
		return 2;
	int frames = atoi(argv[2]), size = atoi(argv[3]), bypass = atoi(argv[4]);
	int dgram = argc > 5 && atoi(argv[5]);
	int s = socket(AF_PACKET, dgram ? SOCK_DGRAM : SOCK_RAW, htons(0x88b5));
	if (s < 0) {
		perror("socket");
		return 1;
	}
	int one = 1;
	if (bypass && setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one))) {
		perror("PACKET_QDISC_BYPASS");
		return 1;
	}
	struct sockaddr_ll sll;
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(0x88b5);
	sll.sll_ifindex = (int)if_nametoindex(argv[1]);
	sll.sll_halen = 6;
	memset(sll.sll_addr, 0xff, 6);
	if (bind(s, (struct sockaddr *)&sll, sizeof(sll))) {
		perror("bind");
		return 1;
	}
	printf("%d\n", getpid());
	fflush(stdout);
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	char *frame = calloc(1, (size_t)size);
	memset(frame, 0xff, 6);                     /* broadcast */
	memcpy(frame + 6, "\x02\x00\x00\x00\x00\x01", 6);
	frame[12] = (char)0x88, frame[13] = (char)0xb5; /* local experimental ethertype */
	long long sent = 0;
	for (int i = 0; i < frames; i++) {
		ssize_t n = dgram ? sendto(s, frame, (size_t)size, 0, (struct sockaddr *)&sll, sizeof(sll))
				  : send(s, frame, (size_t)size, 0);
		if (n < 0) {
			usleep(200); /* the device queue is full: wait, as a patient exfiltration would */
			i--;
			continue;
		}
		sent += n;
	}
	printf("sent %lld\n", sent);
	return 0;
}
