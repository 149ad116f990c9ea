/* A fast SMTP responder for the health-check benchmark: one epoll loop, many listeners.
 *
 * Usage: smtp_responder PORT ADDR...
 * Listens on every ADDR:PORT.  Each connection gets "220 " at once, EHLO/HELO get
 * 250, QUIT gets 221 and the connection is closed (RFC 5321 sections 4.1.1.1 and
 * 4.1.1.10).  Python under emulation would itself be the bottleneck at 500
 * connections a second; this costs a few per cent of one CPU.
 *
 * Control (one command per line on stdin, one reply line on stdout):
 *   down I    close listener I: new connections are refused (RST)
 *   hang I    listener I accepts but never greets (a hung server)
 *   up I      listener I open and answering normally
 *   reset     zero the counters; the window starts now
 *   stats     "stats SECONDS ACCEPTED QUIT HUNG c:g c:g ..." since reset: per listener
 *             the connections accepted and the longest gap between two (ms, -1 if <2)
 * Exits on EOF on stdin.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXL 4096
#define BUF 1024

enum { NORMAL, HANG, DOWN };

struct listener { struct in_addr addr; int fd; int mode; long count; double last, maxgap; };
struct conn { int fd; int hung; size_t len; char buf[BUF]; };

static struct listener L[MAXL];
static int nl, port, ep;
static long accepted, quits, hung;
static double t_reset;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Tags in epoll data: listeners are 0..MAXL-1, stdin is MAXL, connections are pointers. */
#define TAG_STDIN ((uint64_t)MAXL)

static int open_listener(int i)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = L[i].addr };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
		perror("bind/listen");
		close(fd);
		return -1;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)i };
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	L[i].fd = fd;
	return 0;
}

static void close_conn(struct conn *c)
{
	close(c->fd); /* also removes it from the epoll set */
	free(c);
}

static void say(struct conn *c, const char *s)
{
	/* Replies are tiny and the socket buffer empty: a short write would be a bug worth seeing. */
	ssize_t n = write(c->fd, s, strlen(s));
	(void)n;
}

static void on_accept(int i)
{
	for (;;) {
		int fd = accept4(L[i].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		double t = now();
		if (L[i].count > 0 && t - L[i].last > L[i].maxgap)
			L[i].maxgap = t - L[i].last;
		L[i].count++;
		L[i].last = t;
		accepted++;
		struct conn *c = calloc(1, sizeof *c);
		c->fd = fd;
		c->hung = L[i].mode == HANG;
		if (c->hung)
			hung++;
		else
			say(c, "220 bench.example ESMTP benchmark responder\r\n");
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
		epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	}
}

/* Returns 0 when the connection was closed. */
static int on_line(struct conn *c, char *line)
{
	if (!strncasecmp(line, "EHLO", 4)) {
		say(c, "250-bench.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
	} else if (!strncasecmp(line, "HELO", 4)) {
		say(c, "250 bench.example\r\n");
	} else if (!strncasecmp(line, "QUIT", 4)) {
		say(c, "221 2.0.0 bye\r\n");
		quits++;
		close_conn(c);
		return 0;
	} else if (!strncasecmp(line, "NOOP", 4) || !strncasecmp(line, "RSET", 4)) {
		say(c, "250 2.0.0 ok\r\n");
	} else {
		say(c, "502 5.5.2 not implemented\r\n");
	}
	return 1;
}

static void on_data(struct conn *c)
{
	char tmp[BUF];
	ssize_t n = read(c->fd, tmp, sizeof tmp);
	if (n <= 0) {
		if (n < 0 && errno == EAGAIN)
			return;
		close_conn(c);
		return;
	}
	if (c->hung)
		return; /* a hung server reads and never answers */
	for (ssize_t k = 0; k < n; k++) {
		if (c->len < BUF - 1)
			c->buf[c->len++] = tmp[k];
		if (tmp[k] == '\n') {
			c->buf[c->len] = 0;
			c->len = 0;
			if (!on_line(c, c->buf))
				return;
		}
	}
}

static void stats(void)
{
	double t = now();
	printf("stats %.3f %ld %ld %ld", t - t_reset, accepted, quits, hung);
	for (int i = 0; i < nl; i++)
		printf(" %ld:%.0f", L[i].count, L[i].count > 1 ? L[i].maxgap * 1e3 : -1.0);
	printf("\n");
}

static void command(char *line)
{
	int i = -1;
	char verb[16] = "";
	sscanf(line, "%15s %d", verb, &i);
	if (!strcmp(verb, "reset")) {
		accepted = quits = hung = 0;
		for (int k = 0; k < nl; k++)
			L[k].count = 0, L[k].maxgap = 0;
		t_reset = now();
		printf("ok\n");
	} else if (!strcmp(verb, "stats")) {
		stats();
	} else if (i < 0 || i >= nl) {
		printf("error bad command: %s\n", line);
	} else if (!strcmp(verb, "down")) {
		if (L[i].fd >= 0)
			close(L[i].fd);
		L[i].fd = -1;
		L[i].mode = DOWN;
		printf("ok\n");
	} else if (!strcmp(verb, "up") || !strcmp(verb, "hang")) {
		if (L[i].fd < 0 && open_listener(i) < 0) {
			printf("error cannot listen\n");
		} else {
			L[i].mode = strcmp(verb, "up") ? HANG : NORMAL;
			printf("ok\n");
		}
	} else {
		printf("error bad command: %s\n", line);
	}
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc - 2 > MAXL) {
		fprintf(stderr, "usage: %s PORT ADDR... (at most %d addresses)\n", argv[0], MAXL);
		return 2;
	}
	port = atoi(argv[1]);
	ep = epoll_create1(EPOLL_CLOEXEC);
	nl = argc - 2;
	for (int i = 0; i < nl; i++) {
		if (inet_pton(AF_INET, argv[i + 2], &L[i].addr) != 1) {
			fprintf(stderr, "bad address %s\n", argv[i + 2]);
			return 2;
		}
		if (open_listener(i) < 0)
			return 1;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_STDIN };
	epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
	t_reset = now();
	printf("ready %d\n", nl);
	fflush(stdout);

	char cmd[256];
	size_t clen = 0;
	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int k = 0; k < n; k++) {
			uint64_t tag = evs[k].data.u64;
			if (tag == TAG_STDIN) {
				char ch;
				ssize_t r;
				while ((r = read(0, &ch, 1)) == 1) {
					if (ch == '\n' || clen == sizeof cmd - 1) {
						cmd[clen] = 0;
						clen = 0;
						command(cmd);
						break;
					}
					cmd[clen++] = ch;
				}
				if (r == 0)
					return 0;
			} else if (tag < MAXL) {
				if (L[tag].fd >= 0)
					on_accept((int)tag);
			} else {
				on_data(evs[k].data.ptr);
			}
		}
	}
}
